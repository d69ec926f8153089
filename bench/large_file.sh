#!/usr/bin/env bash
# Download speed of one large file from lameduck serve and from nginx, alternating, with curl.
# Needs: cargo build --release; apt-get install -y nginx curl
set -euo pipefail
cd "$(dirname "$0")/.."
size_mb=${SIZE_MB:-200} rounds=${ROUNDS:-5}
site=$(mktemp -d /tmp/lameduck-large.XXXXXX)
chmod 755 "$site"
head -c "$((size_mb * 1000000))" /dev/urandom > "$site/big.bin"
chmod 644 "$site/big.bin"
target/release/lameduck serve "$site" --listen 127.0.0.1:18391 --log-level warn & ld=$!
setsid bench/nginx.sh 18392 "$site" & ngx=$!
trap 'kill -TERM $ld 2>/dev/null; kill -TERM -- -$ngx 2>/dev/null; wait 2>/dev/null; rm -rf "$site"' EXIT
sleep 1
for _ in $(seq "$rounds"); do
  for port in 18391 18392; do
    curl -s -o /dev/null -w "$port %{speed_download}\n" "http://127.0.0.1:$port/big.bin"
  done
done | python3 -c '
import statistics, sys
speeds = {}
for line in sys.stdin:
    port, speed = line.split()
    speeds.setdefault(port, []).append(float(speed) / 1e6)
ld, ngx = statistics.median(speeds["18391"]), statistics.median(speeds["18392"])
print(f"{sys.argv[1]} MB file, {sys.argv[2]} alternating curl downloads each (medians)")
print(f"lameduck serve {ld:8.0f} MB/s")
print(f"nginx          {ngx:8.0f} MB/s  ({ngx / ld:.2f}x)")
' "$size_mb" "$rounds"
