#!/usr/bin/env bash
# lameduck serve against nginx on the same small file, in one interleaved wrk run.
# Needs: cargo build --release; apt-get install -y wrk nginx
set -euo pipefail
cd "$(dirname "$0")/.."
site=$(mktemp -d /tmp/lameduck-site.XXXXXX)
trap 'rm -rf "$site"' EXIT
chmod 755 "$site"
printf '<!DOCTYPE html><html><body><h1>Hello</h1><p>A small static file.</p></body></html>\n' > "$site/index.html"
bench/compare.py --rounds "${ROUNDS:-5}" --duration "${DURATION:-5}" --connections "${CONNECTIONS:-50}" \
  --server "lameduck serve|target/release/lameduck serve $site --listen 127.0.0.1:{port} --log-level warn|/index.html" \
  --server "nginx|bench/nginx.sh {port} $site|/index.html"
