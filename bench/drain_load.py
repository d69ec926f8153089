#!/usr/bin/env python3
"""How many requests fail when a drain starts under load.

For each server: start it, put it under keep-alive load with `drain_client` (a bench binary:
wrk cannot tell a request that failed on an open connection from a connection refused after
the listener closed), send SIGTERM part-way through, and count. Refused connections after the
listener closes are unavoidable without a supervisor (nothing listens any more) and are
counted apart; what matters is requests that were sent on an open connection and then got
no complete 200 response. Rounds are interleaved across servers.

    bench/drain_load.py --rounds 3 \
        --server 'lameduck|target/release/http_hello lameduck 127.0.0.1:{port}' \
        --server 'axum|target/release/http_hello axum 127.0.0.1:{port}'
"""

import argparse
import os
import pathlib
import shlex
import signal
import statistics
import subprocess
import sys

from benchlib import free_port, wait_listening

# The load client; a caller running debug builds may point it elsewhere.
CLIENT = str(pathlib.Path(__file__).resolve().parent.parent / "target/release/drain_client")


def one_run(command, args):
    port = free_port()
    proc = subprocess.Popen(shlex.split(command.format(port=port)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_listening(port)
        out = subprocess.run([CLIENT, f"127.0.0.1:{port}", str(args.connections), str(args.duration),
                              str(proc.pid), str(int(args.signal_after * 1000))],
                             capture_output=True, text=True, timeout=args.duration + 60).stdout
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    counts = dict(kv.split("=") for kv in out.split())
    return {"requests": int(counts["requests"]), "failed": int(counts["failed"]),
            "connect": int(counts["refused"]), "exit": code}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", action="append", required=True, help="NAME|COMMAND")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--signal-after", type=float, default=2.0)
    ap.add_argument("--connections", type=int, default=50)
    args = ap.parse_args()
    servers = [dict(zip(("name", "command"), s.split("|", 1)), runs=[]) for s in args.server]
    for r in range(args.rounds):
        for s in servers:
            res = one_run(s["command"], args)
            s["runs"].append(res)
            print(f"round {r + 1}: {s['name']:<12} {res}", file=sys.stderr)
    print(f"\ndrain_client, {args.connections} keep-alive connections, {args.duration}s, SIGTERM after {args.signal_after}s, "
          f"{args.rounds} interleaved rounds (medians)")
    print(f"{'server':<12} {'requests':>9} {'failed in flight':>17} {'refused after close':>20} {'exit codes':>11}")
    for s in servers:
        med = lambda k: statistics.median(x[k] for x in s["runs"])
        codes = ",".join(str(x["exit"]) for x in s["runs"])
        print(f"{s['name']:<12} {med('requests'):>9.0f} {med('failed'):>17.0f} {med('connect'):>20.0f} {codes:>11}")


if __name__ == "__main__":
    main()
