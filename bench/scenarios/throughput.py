"""Requests/s and p50/p99 latency with wrk (`-t2 -c50`), keep-alive and `Connection: close`:
the hello route (lameduck::http, axum, actix-web, hyper), a 90 B static file (lameduck serve,
nginx, caddy, static-web-server), and the blocking example against the Rust book's server.
All servers run at once; every round measures each in turn (interleaved), medians reported."""

from .common import log, median, select, wrk

GROUPS = ("hello", "static", "blocking")


def run(ctx, peers, skipped):
    rounds, duration = (1, 1) if ctx.quick else (ctx.rounds, ctx.duration)
    chosen = select(peers, GROUPS, skipped)
    running = []
    samples = {}
    try:
        for p in chosen:
            running.append(p.start(ctx))
        for r in range(rounds):
            for close in (False, True):
                for s in running:
                    res = wrk(s.url(), duration, close)
                    samples.setdefault((s.peer.name, close), []).append(res)
                    log(f"throughput round {r + 1}: {s.peer.name:<20} {'close' if close else 'keep-alive':<10} "
                        f"{res['rps']:>9.0f} req/s p99 {res['p99_ms']} ms errors {res['errors']}")
    finally:
        for s in running:
            s.stop()
    rows = []
    for p in chosen:
        for close in (False, True):
            xs = samples[(p.name, close)]
            rows.append({"peer": p.name, "group": p.group, "mode": "close" if close else "keep-alive",
                         "rps": median(x["rps"] for x in xs),
                         "p50_ms": median(x["p50_ms"] for x in xs),
                         "p99_ms": median(x["p99_ms"] for x in xs),
                         "errors": sum(x["errors"] for x in xs)})
    return {"rounds": rounds, "duration_s": duration, "wrk": "wrk -t2 -c50 --latency", "rows": rows}
