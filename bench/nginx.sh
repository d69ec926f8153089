#!/usr/bin/env bash
# Runs nginx in the foreground serving ROOT on 127.0.0.1:PORT, with a configuration close to
# lameduck serve's defaults (two workers, keep-alive, sendfile, no access log).
# Usage: bench/nginx.sh PORT ROOT
set -euo pipefail
port=$1 root=$2
dir=$(mktemp -d /tmp/lameduck-nginx.XXXXXX)
trap 'rm -rf "$dir"' EXIT
cat > "$dir/nginx.conf" <<CONF
worker_processes 2;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_timeout 60s;
  keepalive_requests 1000000;
  client_body_temp_path $dir;
  proxy_temp_path $dir;
  fastcgi_temp_path $dir;
  uwsgi_temp_path $dir;
  scgi_temp_path $dir;
  types { text/html html; text/plain txt; }
  server {
    listen 127.0.0.1:$port;
    root $root;
  }
}
CONF
nginx -e "$dir/error.log" -c "$dir/nginx.conf" -g 'daemon off;' &
pid=$!
trap 'kill -QUIT $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT TERM INT
wait $pid
