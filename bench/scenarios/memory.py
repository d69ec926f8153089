"""Memory: RSS (summed over the server's processes) idle with no connection, then holding
1,000 and 5,000 idle keep-alive connections, each after one answered request (the same
probe as bench/idle_conns.idle_rss). Hello and static peers; the blocking ones hold a thread
per connection and are left out."""

from idle_conns import idle_rss

from .common import log, select

GROUPS = ("hello", "static")


def run(ctx, peers, skipped):
    counts = [300] if ctx.quick else [1000, 5000]
    chosen = select(peers, GROUPS, skipped)
    rows = []
    for p in chosen:
        s = p.start(ctx)
        try:
            rss = {}
            for n in counts:
                before, after = idle_rss(s.pid, s.port, n, p.path)
                rss.setdefault(0, before)
                rss[n] = after
        finally:
            s.stop()
        per = (rss[counts[-1]] - rss[0]) * 1024 / counts[-1]
        rows.append({"peer": p.name, "group": p.group, "rss_kib": {str(k): v for k, v in rss.items()},
                     "per_conn_bytes": per})
        log(f"memory: {p.name}: {rows[-1]['rss_kib']} KiB, {per:.0f} B per connection")
    return {"connections": [0] + counts, "rows": rows}
