"""Failed requests when the graceful-stop signal arrives under keep-alive load, for every
hello peer: `drain_client` (bench/src/bin, as bench/drain_load.py runs it) keeps 50
connections busy, sends SIGTERM part-way, and counts requests answered, requests that failed
on an open connection (sent, then no complete 200 response) and connects refused after the
listener closed (unavoidable without a supervisor). Rounds interleaved across peers."""

import subprocess

from .common import kill_tree, log, median, select, wait_exit

GROUPS = ("hello",)


def one_run(ctx, peer, connections, duration, signal_after):
    s = peer.start(ctx)
    try:
        out = subprocess.run([ctx.drain_client, f"127.0.0.1:{s.port}", str(connections), str(duration),
                              str(s.pid), str(int(signal_after * 1000))],
                             capture_output=True, text=True, timeout=duration + 60, check=True).stdout
        waited = wait_exit(s.proc, 30)
        code = s.proc.returncode if waited is not None else "killed"
    finally:
        kill_tree(s.proc)
    counts = {k: int(v) for k, v in (kv.split("=") for kv in out.split())}
    return {"requests": counts["requests"], "failed": counts["failed"], "refused": counts["refused"],
            "exit": code}


def run(ctx, peers, skipped):
    rounds, duration, after = (1, 2, 1.0) if ctx.quick else (max(3, ctx.rounds), 4, 2.0)
    connections = 50
    chosen = select(peers, GROUPS, skipped)
    runs = {}
    for r in range(rounds):
        for p in chosen:
            res = one_run(ctx, p, connections, duration, after)
            runs.setdefault(p.name, []).append(res)
            log(f"drain round {r + 1}: {p.name:<16} {res}")
    rows = []
    for p in chosen:
        xs = runs[p.name]
        rows.append({"peer": p.name, "requests": median(x["requests"] for x in xs),
                     "failed": median(x["failed"] for x in xs),
                     "failed_max": max(x["failed"] for x in xs),
                     "refused": median(x["refused"] for x in xs),
                     "exit_codes": [x["exit"] for x in xs]})
    return {"rounds": rounds, "connections": connections, "duration_s": duration,
            "signal_after_s": after, "rows": rows}
