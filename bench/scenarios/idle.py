"""Idle cost: CPU ticks (1 tick = 10 ms) and context switches of every peer (summed over its
processes and threads, as bench/idle.sh counts them) over a quiet window with no client. All
peers run at once; nothing talks to them during the window."""

import time

from .common import cpu_and_switches, log, select

GROUPS = ("hello", "static", "blocking")


def run(ctx, peers, skipped):
    window = 2 if ctx.quick else 10
    chosen = select(peers, GROUPS, skipped)
    running = []
    try:
        for p in chosen:
            running.append(p.start(ctx))
        time.sleep(1.0)
        before = {s.peer.name: cpu_and_switches(s.pid) for s in running}
        time.sleep(window)
        after = {s.peer.name: cpu_and_switches(s.pid) for s in running}
    finally:
        for s in running:
            s.stop()
    rows = []
    for s in running:
        b, a = before[s.peer.name], after[s.peer.name]
        rows.append({"peer": s.peer.name, "group": s.peer.group, "threads": a[2],
                     "cpu_ticks": a[0] - b[0], "context_switches": a[1] - b[1]})
        log(f"idle {window}s: {rows[-1]}")
    return {"window_s": window, "rows": rows}
