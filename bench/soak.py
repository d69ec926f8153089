#!/usr/bin/env python3
"""A soak of `lameduck serve` (supervised, the default) under mixed load for N minutes, with
RSS, descriptors and latency sampled every second and plotted (SVG).

The load, all at once: wrk keep-alive on a 90 B file (`wrk -t1 -c16`), a client asking for a
64 KiB file with `Connection: close` in a loop, 20 slowloris clients (reconnecting when the
header timeout cuts them), a malformed request every 100 ms, a reload (SIGHUP) every 30 s,
and once a second a timed probe request on a new connection. Counted: wrk's requests and
errors, the close client's and the probe's failures, malformed requests not answered 4xx or
closed, reloads; and whether RSS and descriptors drift (first minute against last).

Usage: bench/soak.py --minutes 30 [--profile release] [--out DIR]   (not in CI)
       bench/soak.py --quick                                       (an 8-second smoke)
Needs target/<profile>/lameduck and wrk. Writes DIR/soak.json and DIR/soak.svg (default
bench/results/, --quick: target/bench-quick/results/).
"""

import argparse
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scenarios import common  # noqa: E402
from scenarios.common import fds, free_port, log, stop, wait_listening  # noqa: E402
from scenarios.reliability import classify, malformed_cases, timed_get  # noqa: E402
from idle_conns import rss_kib  # noqa: E402
import plot  # noqa: E402


def run(ctx, seconds, outdir):
    with open(os.path.join(ctx.www, "64k.bin"), "wb") as f:
        f.write(os.urandom(65536))
    os.chmod(os.path.join(ctx.www, "64k.bin"), 0o644)
    port, admin = free_port(), free_port()
    proc = subprocess.Popen([ctx.lameduck, "serve", ctx.www, "--listen", f"127.0.0.1:{port}",
                             "--admin", f"127.0.0.1:{admin}", "--header-timeout", "5s",
                             "--log-level", "error"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    stop_flag = threading.Event()
    counts = {"close_ok": 0, "close_failed": 0, "malformed": 0, "malformed_bad": 0,
              "loris_connects": 0, "reloads": 0, "probe_failed": 0}
    lock = threading.Lock()
    threads, wrk = [], None

    def bump(k, n=1):
        with lock:
            counts[k] += n

    def closer():
        req = b"GET /64k.bin HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n"
        while not stop_flag.is_set():
            ok = False
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.sendall(req)
                    data = b""
                    while True:
                        c = s.recv(65536)
                        if not c:
                            break
                        data += c
                    ok = data.startswith(b"HTTP/1.1 200") and len(data) > 65536
            except OSError:
                pass
            bump("close_ok" if ok else "close_failed")

    def loris():
        socks = []
        while not stop_flag.is_set():
            while len(socks) < 20:
                try:
                    s = socket.create_connection(("127.0.0.1", port), timeout=5)
                    s.sendall(b"GET / HTTP/1.1\r\nHost: soak\r\nX-a: ")
                    socks.append(s)
                    bump("loris_connects")
                except OSError:
                    break
            alive = []
            for s in socks:
                try:
                    s.sendall(b"a")
                    alive.append(s)
                except OSError:
                    s.close()
            socks = alive
            stop_flag.wait(0.5)
        for s in socks:
            s.close()

    def bad():
        rng = random.Random(7)
        cases = list(malformed_cases(rng).items())
        while not stop_flag.is_set():
            name, make = cases[rng.randrange(len(cases))]
            outcome = classify(port, make(), 3.0)
            bump("malformed")
            if outcome not in ("4xx", "closed") and not (name == "truncated head" and outcome == "held"):
                bump("malformed_bad")
            stop_flag.wait(0.1)

    samples = []
    try:
        wait_listening(port, proc)
        wait_listening(admin, proc)
        wrk = subprocess.Popen(["wrk", "-t1", "-c16", f"-d{int(seconds)}s", "--latency",
                                f"http://127.0.0.1:{port}/index.html"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for fn in (closer, loris, bad):
            t = threading.Thread(target=fn, daemon=True)
            t.start()
            threads.append(t)
        t0 = time.monotonic()
        next_reload = 30.0 if seconds > 40 else seconds / 2
        while time.monotonic() - t0 < seconds:
            now = time.monotonic() - t0
            lat = timed_get(port, None)
            if lat is None:
                bump("probe_failed")
            samples.append({"t": now, "rss_kib": rss_kib(proc.pid), "fds": fds(proc.pid),
                            "probe_ms": None if lat is None else lat * 1000})
            if now >= next_reload:
                os.kill(proc.pid, signal.SIGHUP)
                bump("reloads")
                next_reload += 30.0 if seconds > 40 else seconds
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0 - now)))
        stop_flag.set()
        for t in threads:
            t.join(timeout=10)
        out, _ = wrk.communicate(timeout=60)
        alive = proc.poll() is None
    finally:
        stop_flag.set()
        if wrk and wrk.poll() is None:
            wrk.kill()
            wrk.wait()
        stop(proc, timeout=40)
    m = re.search(r"(\d+) requests in", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    minute = [s for s in samples if s["t"] < min(60, seconds / 4 + 1)]
    last = [s for s in samples if s["t"] >= seconds - min(60, seconds / 4 + 1)]
    avg = lambda xs, k: sum(x[k] for x in xs) / len(xs) if xs else None  # noqa: E731
    result = {"seconds": seconds, "server_alive": alive, **counts,
              "wrk_requests": int(m.group(1)) if m else None,
              # What wrk said, when its count could not be read from it.
              "wrk_output": None if m else out[-2000:],
              "wrk_errors": (sum(int(x) for x in errs.groups()) if errs else 0) + (int(non2xx.group(1)) if non2xx else 0),
              "rss_kib_first": avg(minute, "rss_kib"), "rss_kib_last": avg(last, "rss_kib"),
              "fds_first": avg(minute, "fds"), "fds_last": avg(last, "fds"),
              "probe_p50_ms": common.median(s["probe_ms"] for s in samples),
              "samples": samples}
    os.makedirs(outdir, exist_ok=True)
    import json
    with open(os.path.join(outdir, "soak.json"), "w") as f:
        json.dump(result, f, indent=1)
    pts = lambda k, scale=1.0: [(s["t"], None if s[k] is None else s[k] * scale) for s in samples]  # noqa: E731
    plot.write(os.path.join(outdir, "soak.svg"),
               plot.lines(f"Soak, {seconds:.0f} s: RSS (supervisor and workers)", {"lameduck serve": pts("rss_kib", 1 / 1024)},
                          "seconds", "RSS (MB)", height=240),
               plot.lines("open descriptors (supervisor and workers)", {"lameduck serve": pts("fds")},
                          "seconds", "descriptors", height=240),
               plot.lines("probe latency (new connection, one request)", {"probe": pts("probe_ms")},
                          "seconds", "ms", height=240))
    return result


def table(r):
    drift = lambda a, b: "n/a" if a is None or b is None else f"{a / 1024:.1f} → {b / 1024:.1f} MB"  # noqa: E731
    return "\n".join([
        f"Soak, {r['seconds']:.0f} s of mixed load (bench/soak.py): server alive at the end: "
        f"{'yes' if r['server_alive'] else 'NO'}.\n",
        "| what | count |", "|---|---|",
        f"| wrk keep-alive requests (errors) | {r['wrk_requests']} ({r['wrk_errors']}) |",
        f"| `Connection: close` 64 KiB downloads (failed) | {r['close_ok'] + r['close_failed']} ({r['close_failed']}) |",
        f"| malformed requests (answered other than 4xx or close) | {r['malformed']} ({r['malformed_bad']}) |",
        f"| slowloris connections opened | {r['loris_connects']} |",
        f"| reloads | {r['reloads']} |",
        f"| probe requests failed | {r['probe_failed']} of {len(r['samples'])} |",
        f"| RSS, first minute → last minute | {drift(r['rss_kib_first'], r['rss_kib_last'])} |",
        f"| descriptors, first minute → last minute | {r['fds_first'] or 0:.0f} → {r['fds_last'] or 0:.0f} |",
        f"| probe p50 | {r['probe_p50_ms'] or 0:.2f} ms |",
    ]) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--quick", action="store_true", help="an 8-second smoke")
    p.add_argument("--profile", default="release", choices=["release", "dev"])
    p.add_argument("--out", default=None)
    args = p.parse_args()
    common.raise_nofile()
    seconds = 8 if args.quick else args.minutes * 60
    outdir = args.out or os.path.join(common.ROOT, "target/bench-quick/results" if args.quick else "bench/results")
    ctx = common.Context(args.profile, quick=args.quick)
    try:
        r = run(ctx, seconds, outdir)
    finally:
        ctx.close()
    print(table(r))
    log(f"written: {outdir}/soak.json, {outdir}/soak.svg")
    bad = not r["server_alive"] or r["malformed_bad"] or r["probe_failed"]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
