#!/usr/bin/env python3
"""HTTPS side by side: lameduck serve and nginx with the same certificate (ECDSA P-256) and
the protocol versions left at their defaults (both negotiate TLS 1.3 with
TLS_AES_256_GCM_SHA384 and X25519 against wrk's OpenSSL), in one interleaved run.

- requests/s over TLS with keep-alive: `wrk -t2 -c50`;
- new TLS handshakes per second: the same with `Connection: close` (one request, so one full
  handshake, per connection);
- memory: RSS holding N idle TLS keep-alive connections (each after one request), against the
  same server over plain HTTP, to tell what TLS adds per connection.

Usage: bench/tls.py [--rounds 3] [--duration 4] [--connections 2000] [--quick]
Needs target/release/lameduck, wrk, nginx and openssl (apt-get install -y wrk nginx openssl).
"""

import argparse
import os
import re
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
from benchlib import free_port, stop, wait_listening  # noqa: E402
from idle_conns import idle_rss  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAMEDUCK = os.path.join(ROOT, "target/release/lameduck")


def make_cert(d):
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "30", "-subj", "/CN=localhost"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cert, key


def start_lameduck(www, port, cert=None, key=None):
    cmd = [LAMEDUCK, "serve", www, "--no-supervisor", "--listen", f"127.0.0.1:{port}",
           "--log-level", "warn"]
    if cert:
        cmd += ["--tls-cert", cert, "--tls-key", key]
    p = subprocess.Popen(cmd, start_new_session=True)
    wait_listening(port, p)
    return p


def start_nginx(www, port, d, cert, key):
    p, _ = benchlib.start_nginx(d, f"""server {{
    listen 127.0.0.1:{port} ssl http2;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    root {www};
  }}""", port)
    return p


def wrk(url, duration, close):
    cmd = ["wrk", "-t2", "-c50", f"-d{duration}s", "--latency"]
    if close:
        cmd += ["-H", "Connection: close"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def idle_tls_rss(pid, port, n, tls):
    """RSS (KiB) before and after holding `n` idle keep-alive connections, TLS or plain."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    wrap = (lambda s: ctx.wrap_socket(s, server_hostname="localhost")) if tls else None
    return idle_rss(pid, port, n, "/", wrap)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=4)
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--quick", action="store_true", help="one short round, for CI")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.duration, args.connections = 1, 1, 100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    d = tempfile.mkdtemp(prefix="lameduck-tls-")
    os.chmod(d, 0o755)
    procs = []
    try:
        www = os.path.join(d, "www")
        os.makedirs(www)
        with open(os.path.join(www, "index.html"), "w") as f:
            f.write("<!DOCTYPE html><title>hello</title><p>hello over TLS</p>\n")
        cert, key = make_cert(d)
        lp, np_, plain = free_port(), free_port(), free_port()
        lameduck = start_lameduck(www, lp, cert, key)
        procs.append(lameduck)
        have_nginx = shutil.which("nginx") is not None
        if have_nginx:
            procs.append(start_nginx(www, np_, d, cert, key))
        servers = [("lameduck serve", f"https://127.0.0.1:{lp}/")]
        if have_nginx:
            servers.append(("nginx", f"https://127.0.0.1:{np_}/"))
        results = {(name, close): [] for name, _ in servers for close in (False, True)}
        for _ in range(args.rounds):
            for close in (False, True):
                for name, url in servers:
                    results[(name, close)].append(wrk(url, args.duration, close))
        print(f"\nwrk -t2 -c50 -d{args.duration}s over TLS, {args.rounds} interleaved rounds (medians)\n")
        print("| server | keep-alive req/s | new handshakes/s (Connection: close) |")
        print("|---|---|---|")
        base = {}
        for name, _ in servers:
            ka = statistics.median(results[(name, False)])
            hs = statistics.median(results[(name, True)])
            base.setdefault("ka", ka)
            base.setdefault("hs", hs)
            print(f"| {name} | {ka:,.0f} ({ka / base['ka']:.2f}) | {hs:,.0f} ({hs / base['hs']:.2f}) |")

        n = args.connections
        b_tls, a_tls = idle_tls_rss(lameduck.pid, lp, n, True)
        plain_proc = start_lameduck(www, plain)
        procs.append(plain_proc)
        b_plain, a_plain = idle_tls_rss(plain_proc.pid, plain, n, False)
        per_tls = (a_tls - b_tls) / n
        per_plain = (a_plain - b_plain) / n
        print(f"\nRSS holding {n} idle keep-alive connections (lameduck serve, one process)\n")
        print("| | before | after | per connection |")
        print("|---|---|---|---|")
        print(f"| HTTPS | {b_tls / 1024:.1f} MB | {a_tls / 1024:.1f} MB | {per_tls:.1f} KiB |")
        print(f"| plain HTTP | {b_plain / 1024:.1f} MB | {a_plain / 1024:.1f} MB | {per_plain:.1f} KiB |")
        print(f"\nTLS adds about {per_tls - per_plain:.1f} KiB per idle connection.")
    finally:
        for proc in procs:
            stop(proc)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
