#!/usr/bin/env python3
"""Side-by-side HTTP throughput of several servers, measured with wrk in one interleaved run.

Each server is started on its own free loopback port; then every round runs wrk against each
server in turn, so a noisy moment on a shared machine hits all of them alike. The table gives
medians over the rounds and each server's ratio to the first one named.

    bench/compare.py --rounds 5 --duration 5 \
        --server 'lameduck|target/release/examples/blocking_http --listen 127.0.0.1:{port}|/' \
        --server 'book|target/release/book_server 127.0.0.1:{port}|/'

A server is NAME|COMMAND|PATH; {port} in COMMAND is replaced by its port, and {dir} by a
scratch directory. Needs wrk (apt-get install wrk).
"""

import argparse
import re
import shlex
import statistics
import subprocess
import sys
import tempfile

from benchlib import free_port, stop, wait_listening


def to_ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(url, args):
    cmd = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s", "--latency"]
    for h in args.header:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=args.duration + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    n_err = sum(int(x) for x in errors.groups()) if errors else 0
    return rps, to_ms(*p99.groups()) if p99 else float("nan"), n_err + (int(non2xx.group(1)) if non2xx else 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", action="append", required=True, help="NAME|COMMAND|PATH")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--header", action="append", default=[], help="extra request header for wrk")
    args = ap.parse_args()

    scratch = tempfile.mkdtemp(prefix="lameduck-bench-")
    servers = []
    try:
        for spec in args.server:
            name, command, path = spec.split("|", 2)
            port = free_port()
            cmd = command.format(port=port, dir=scratch)
            proc = subprocess.Popen(shlex.split(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
            servers.append({"name": name, "proc": proc, "url": f"http://127.0.0.1:{port}{path}", "rps": [], "p99": [], "err": 0})
        for s in servers:
            wait_listening(int(s["url"].split(":")[2].split("/")[0]), s["proc"])
        for r in range(args.rounds):
            for s in servers:
                rps, p99, err = run_wrk(s["url"], args)
                s["rps"].append(rps)
                s["p99"].append(p99)
                s["err"] += err
                print(f"round {r + 1}: {s['name']:<24} {rps:>10.0f} req/s  p99 {p99:>8.2f} ms  errors {err}", file=sys.stderr)
        base = statistics.median(servers[0]["rps"])
        print(f"\nwrk -t{args.threads} -c{args.connections} -d{args.duration}s, {args.rounds} interleaved rounds"
              + "".join(f", -H '{h}'" for h in args.header))
        print(f"{'server':<24} {'median req/s':>13} {'ratio':>7} {'median p99 ms':>14} {'errors':>7}")
        for s in servers:
            med = statistics.median(s["rps"])
            print(f"{s['name']:<24} {med:>13.0f} {med / base:>7.2f} {statistics.median(s['p99']):>14.2f} {s['err']:>7}")
    finally:
        for s in servers:
            stop(s["proc"], timeout=15)

if __name__ == "__main__":
    main()
