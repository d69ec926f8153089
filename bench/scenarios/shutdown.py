"""Shutdown, for every hello and static peer (and `lameduck serve` under its supervisor):

- time from the graceful-stop signal (SIGTERM; nginx: SIGQUIT) to the first refused connect,
  an idle server, median over trials (a fresh server each trial, peers interleaved);
- time from that signal to the process's exit while 1,000 idle keep-alive connections (each
  after one answered request) are open; bounded, a server still running past the bound is
  killed and reported as such."""

import os
import socket
import time

from .common import kill_tree, log, median, open_idle, select, supervised_peer, wait_exit

GROUPS = ("hello", "static")


def until_refused(port, bound):
    """Seconds until a connect to 127.0.0.1:port is refused (or None past `bound`)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < bound:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                pass
        except ConnectionRefusedError:
            return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.0005)
    return None


def refused_trial(peer, ctx, bound):
    s = peer.start(ctx)
    try:
        time.sleep(0.2)
        t0 = time.monotonic()
        os.kill(s.pid, peer.graceful)
        refused = until_refused(s.port, bound)
        left = max(0.1, bound - (time.monotonic() - t0))
        exited = wait_exit(s.proc, left)
        return refused, (time.monotonic() - t0 if exited is not None else None)
    finally:
        kill_tree(s.proc)


def idle_exit_trial(peer, ctx, n, bound):
    s = peer.start(ctx)
    socks = []
    try:
        socks = open_idle(s.port, n, peer.path)
        time.sleep(0.3)
        os.kill(s.pid, peer.graceful)
        return wait_exit(s.proc, bound)
    finally:
        kill_tree(s.proc)
        for c in socks:
            c.close()


def run(ctx, peers, skipped):
    trials = 2 if ctx.quick else max(20, ctx.shutdown_trials)
    idle_trials = 1 if ctx.quick else 3
    n_idle = 200 if ctx.quick else 1000
    bound = 10.0 if ctx.quick else 40.0
    chosen = select(peers, GROUPS, skipped)
    chosen.insert(next(i for i, p in enumerate(chosen) if p.group == "static") + 1, supervised_peer())
    refused, exit_idle_server, exit_idle_conns = {}, {}, {}
    for t in range(trials):
        for p in chosen:
            r, e = refused_trial(p, ctx, bound)
            refused.setdefault(p.name, []).append(r)
            exit_idle_server.setdefault(p.name, []).append(e)
        log(f"shutdown trial {t + 1}/{trials}: " + ", ".join(
            f"{p.name} {refused[p.name][-1] * 1000:.1f} ms" if refused[p.name][-1] is not None
            else f"{p.name} never refused" for p in chosen))
    for t in range(idle_trials):
        for p in chosen:
            e = idle_exit_trial(p, ctx, n_idle, bound)
            exit_idle_conns.setdefault(p.name, []).append(e)
            log(f"exit with {n_idle} idle connections, trial {t + 1}: {p.name}: "
                + (f"{e:.2f} s" if e is not None else f"still running after {bound:.0f} s (killed)"))
    rows = []
    for p in chosen:
        rs, es, cs = refused[p.name], exit_idle_server[p.name], exit_idle_conns[p.name]
        rows.append({
            "peer": p.name, "group": p.group, "signal": "SIGQUIT" if p.graceful != 15 else "SIGTERM",
            "refused_ms": None if median(rs) is None else median(rs) * 1000,
            "never_refused": sum(1 for x in rs if x is None),
            "exit_idle_server_s": median(es),
            "exit_idle_conns_s": median(cs),
            "exit_idle_conns_timeouts": sum(1 for x in cs if x is None),
        })
    return {"trials": trials, "idle_trials": idle_trials, "idle_connections": n_idle,
            "bound_s": bound, "rows": rows}
