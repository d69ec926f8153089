"""Markdown for bench/run's results: every table with ratios against lameduck (the first row
of each group), a sentence under a table where lameduck is behind saying why (from `REASONS`,
printed only when the figures say lameduck is behind), the headline table for README.md, and
the SVG plots."""

import os

import plot

# Why lameduck can be behind, per scenario: printed under a table only when it is.
REASONS = {
    ("throughput", "hello", "keep-alive"):
        "each lameduck::http connection holds a counted slot with its header, idle and write "
        "timeouts, and each response passes the drain check (it must carry `Connection: close` "
        "once a drain starts); raw hyper does none of this, and is the ceiling rather than a peer "
        "with a lifecycle.",
    ("throughput", "hello", "close"):
        "with `Connection: close` a request costs a connection: accept, an epoll registration "
        "and its removal, a task, the close; about three quarters of the server's CPU is then in "
        "the kernel (`perf record -g`). lameduck runs its accept loop on a runtime worker and "
        "makes a connection's first read and write without waiting for epoll; axum::serve and "
        "the raw hyper loop here accept on the thread in `block_on`, which costs them a "
        "cross-thread wake-up per connection. What is left between them is within the "
        "run-to-run noise.",
    ("throughput", "static", "keep-alive"):
        "no cause recorded for this one: profile it (`perf record -g` on `lameduck serve` under "
        "the same wrk command).",
    ("throughput", "static", "close"):
        "measured per request (server CPU over wrk's count), lameduck serve and nginx both take "
        "31 to 41 µs, three quarters of it in the kernel. lameduck makes about 8 system calls per "
        "connection (accept, epoll_ctl add and delete, one read that finds the request, one that "
        "finds nothing while the answer is made, the write, the close, and a wake-up of the "
        "other worker every few connections); nginx makes about 11 (it opens, "
        "stats, sends and closes the file each time) but no thread ever wakes another. At equal "
        "cost per connection the ratio is decided by the run-to-run noise.",
    ("throughput", "blocking", "keep-alive"):
        "blocking_http serves a connection on one of its 4 worker threads for up to 100 "
        "requests: with 50 wrk connections, 46 wait in the backlog at any time.",
    ("throughput", "blocking", "close"):
        "blocking_http parses requests with httparse and checks its drain state per request; "
        "the book's server reads one request line and answers.",
    ("shutdown", "refused"):
        "a server without a graceful stop (raw hyper, whose SIGTERM is the default action) "
        "loses its listener the instant it dies, and every request in flight with it; the time "
        "to the first refused connect is then the time the kernel takes to reap it.",
    ("shutdown", "exit_idle"):
        "lameduck gives each idle keep-alive connection a grace of one second in which a "
        "request already on the wire is still answered (with `Connection: close`) instead of "
        "being reset, so with idle connections open it exits about a second after the signal; "
        "a server that exits sooner closes idle connections at once (racing the client's next "
        "request) or simply dies.",
    ("drain",):
        "no cause recorded: a failed request during a lameduck drain is a bug; rerun "
        "bench/drain_load.py and look at the server's log.",
    ("idle",):
        "lameduck's runtime keeps timers for its connections and its drain ticker; the peers "
        "counted lower keep fewer threads or none awake.",
    ("memory",):
        "valgrind's massif, per idle lameduck serve connection: hyper's read buffer (8 KiB) and "
        "header write buffer (8 KiB), allocated at the connection's start and only partly "
        "touched, the response header map hyper keeps for reuse (1.2 KB), hyper's HTTP/1 state "
        "(0.9 KB) and write queue (0.3 KB), lameduck's connection future (1.0 KB), its state, "
        "timer and drain listener (0.4 KB), the task (0.4 KB). hyper's buffers cannot be set "
        "below 8 KiB.",
    ("memory", "nginx"):
        "nginx allocates its connection table for `worker_connections` (16384 per worker here) "
        "at start, so its idle RSS already holds it and only buffers count per connection.",

    ("tls",):
        "rustls (ring) against OpenSSL in nginx: handshakes in particular cost more CPU in rustls "
        "with ring than in OpenSSL's assembly.",
    ("reload",):
        "no cause recorded: compare the time to a new worker with `--ready-timeout` and the "
        "worker's start-up log.",
}


def fmt(v, unit="", digits=0):
    if v is None:
        return "n/a"
    if isinstance(v, float) and v != v:
        return "n/a"
    return f"{v:,.{digits}f}{unit}"


def ratio(v, base):
    if v is None or not base:
        return "n/a"
    return f"{v / base:.2f}"


def behind(values, base, higher_better, tolerance=0.05, floor=0.0):
    """Whether some peer in `values` beats `base` by more than `tolerance` (and by more than
    `floor` in absolute terms)."""
    if base is None:
        return False
    for v in values:
        if v is None:
            continue
        if higher_better and v > base * (1 + tolerance) and v - base > floor:
            return True
        if not higher_better and v < base * (1 - tolerance) and base - v > floor:
            return True
    return False


# Set by markdown(): with a debug build of the Rust servers, nothing is compared.
DEBUG = False


def reason(key, ahead=()):
    """The sentence under a table where lameduck is behind (empty for debug builds)."""
    if DEBUG:
        return ""
    who = f" ({', '.join(ahead)} ahead)" if ahead else ""
    return f"\nWhere lameduck is behind here{who}: {REASONS.get(key, REASONS.get(key[:1], 'no cause recorded.'))}\n"


def ahead_of(rows, key, base, higher_better, tolerance=0.05, floor=0.0):
    """Names of the rows whose `key` beats `base`."""
    return [r["peer"] for r in rows if behind([r[key]], base, higher_better, tolerance, floor)]


def throughput(res):
    out = [f"### Throughput and latency\n\n`{res['wrk']} -d{res['duration_s']}s`, {res['rounds']} "
           "interleaved rounds, medians; ratio is the peer's requests/s over lameduck's "
           "(above 1.00: the peer is faster).\n"]
    titles = {"hello": "Hello route", "static": "Small static file (90 B)",
              "blocking": "Blocking example against the Rust book's server"}
    for group in ("hello", "static", "blocking"):
        rows = [r for r in res["rows"] if r["group"] == group]
        if not rows:
            continue
        out.append(f"\n{titles[group]}\n")
        out.append("| server | keep-alive req/s (ratio) | p50 | p99 | `Connection: close` req/s (ratio) | p50 | p99 | errors |")
        out.append("|---|---|---|---|---|---|---|---|")
        by = {(r["peer"], r["mode"]): r for r in rows}
        peers = list(dict.fromkeys(r["peer"] for r in rows))
        base = {m: by[(peers[0], m)]["rps"] for m in ("keep-alive", "close")}
        for p in peers:
            ka, cl = by[(p, "keep-alive")], by[(p, "close")]
            out.append(f"| {p} | {fmt(ka['rps'])} ({ratio(ka['rps'], base['keep-alive'])}) | "
                       f"{fmt(ka['p50_ms'], ' ms', 2)} | {fmt(ka['p99_ms'], ' ms', 2)} | "
                       f"{fmt(cl['rps'])} ({ratio(cl['rps'], base['close'])}) | "
                       f"{fmt(cl['p50_ms'], ' ms', 2)} | {fmt(cl['p99_ms'], ' ms', 2)} | "
                       f"{ka['errors'] + cl['errors']} |")
        for mode in ("keep-alive", "close"):
            ahead = ahead_of([by[(p, mode)] for p in peers[1:]], "rps", base[mode], True)
            if ahead:
                out.append(reason(("throughput", group, mode), ahead).rstrip("\n")
                           .replace("behind here (", f"behind here, {mode} (", 1))
        out.append("")
    return "\n".join(out)


def shutdown(res):
    n = res["idle_connections"]
    out = [f"### Shutdown\n\nTime from the graceful-stop signal to the first refused connect (idle "
           f"server, median of {res['trials']} trials, a fresh server each), and to the process's "
           f"exit with no client and with {n} idle keep-alive connections open (median of "
           f"{res['idle_trials']}; bound {res['bound_s']:.0f} s, past it the server is killed). "
           "Ratios: the peer's time over lameduck's (below 1.00: the peer is quicker).\n",
           f"| server | signal | to first refused connect | exit, no client | exit with {n} idle connections (ratio) |",
           "|---|---|---|---|---|"]
    for group in ("hello", "static"):
        rows = [r for r in res["rows"] if r["group"] == group]
        if not rows:
            continue
        b = rows[0]
        for r in rows:
            refused = (fmt(r["refused_ms"], " ms", 1) + f" ({ratio(r['refused_ms'], b['refused_ms'])})"
                       if r["refused_ms"] is not None else "never")
            if r["never_refused"]:
                refused += f", never in {r['never_refused']} trials"
            exit_c = (fmt(r["exit_idle_conns_s"], " s", 2) + f" ({ratio(r['exit_idle_conns_s'], b['exit_idle_conns_s'])})"
                      if r["exit_idle_conns_s"] is not None else f"> {res['bound_s']:.0f} s (killed)")
            if r["exit_idle_conns_timeouts"] and r["exit_idle_conns_s"] is not None:
                exit_c += f", killed in {r['exit_idle_conns_timeouts']} trials"
            out.append(f"| {r['peer']} | {r['signal']} | {refused} | {fmt(r['exit_idle_server_s'], ' s', 2)} | {exit_c} |")
    notes = {}
    for group in ("hello", "static"):
        rows = [r for r in res["rows"] if r["group"] == group]
        if not rows:
            continue
        notes.setdefault("refused", []).extend(
            ahead_of(rows[1:], "refused_ms", rows[0]["refused_ms"], False, floor=1.0))
        notes.setdefault("exit_idle", []).extend(
            ahead_of(rows[1:], "exit_idle_conns_s", rows[0]["exit_idle_conns_s"], False, floor=0.05))
    for key, ahead in notes.items():
        if ahead:
            out.append(reason(("shutdown", key), ahead).rstrip("\n"))
    return "\n".join(out) + "\n"


def drain(res):
    out = [f"### Drain under load\n\n`drain_client`, {res['connections']} keep-alive connections for "
           f"{res['duration_s']} s, SIGTERM after {res['signal_after_s']} s, {res['rounds']} interleaved "
           "rounds (medians). Failed: sent on an open connection and not answered 200. Refused: "
           "connects after the listener closed (nothing listens any more without a supervisor).\n",
           "| server | requests (ratio) | failed in flight (max) | refused after close | exit codes |",
           "|---|---|---|---|---|"]
    rows = res["rows"]
    for r in rows:
        out.append(f"| {r['peer']} | {fmt(r['requests'])} ({ratio(r['requests'], rows[0]['requests'])}) | "
                   f"{fmt(r['failed'])} ({r['failed_max']}) | {fmt(r['refused'])} | "
                   f"{', '.join(str(c) for c in r['exit_codes'])} |")
    if rows and any(r["failed"] < rows[0]["failed"] for r in rows[1:]):
        out.append(reason(("drain",)).rstrip("\n"))
    return "\n".join(out) + "\n"


def idle(res):
    out = [f"### Idle cost\n\nCPU ticks (1 tick = 10 ms) and context switches over {res['window_s']} s with "
           "no client, summed over the server's processes and threads (as bench/idle.sh counts).\n",
           "| server | threads | CPU ticks | context switches (ratio) |", "|---|---|---|---|"]
    groups = {}
    for r in res["rows"]:
        groups.setdefault(r["group"], []).append(r)
    notes = []
    for rows in groups.values():
        b = rows[0]
        for r in rows:
            out.append(f"| {r['peer']} | {r['threads']} | {r['cpu_ticks']} | {r['context_switches']} "
                       f"({ratio(r['context_switches'], b['context_switches'])}) |")
        notes += ahead_of(rows[1:], "context_switches", b["context_switches"], False, 0.5, 20)
    if notes:
        out.append(reason(("idle",), notes).rstrip("\n"))
    return "\n".join(out) + "\n"


def memory(res):
    c = res["connections"]
    held = " and ".join(f"{n:,}" for n in c[1:])
    out = [f"### Memory\n\nRSS (summed over the server's processes) with no connection and holding "
           f"{held} idle keep-alive connections (each after one answered request); ratio: the "
           "peer's bytes per connection over lameduck's.\n",
           "| server | RSS idle | " + " | ".join(f"RSS, {n:,} connections" for n in c[1:])
           + " | per connection (ratio) |",
           "|---|---|" + "---|" * len(c[1:]) + "---|"]
    notes = []
    for group in ("hello", "static"):
        rows = [r for r in res["rows"] if r["group"] == group]
        if not rows:
            continue
        b = rows[0]
        for r in rows:
            k = r["rss_kib"]
            out.append(f"| {r['peer']} | " + " | ".join(f"{k[str(n)] / 1024:.1f} MB" for n in c)
                       + f" | {fmt(r['per_conn_bytes'])} B ({ratio(r['per_conn_bytes'], b['per_conn_bytes'])}) |")
        notes += ahead_of(rows[1:], "per_conn_bytes", b["per_conn_bytes"], False, 0.10, 512)
    if notes:
        out.append(reason(("memory",), notes).rstrip("\n"))
        for p in notes:
            if ("memory", p) in REASONS and not DEBUG:
                out.append(f"\n{p}: {REASONS[('memory', p)]}")
    return "\n".join(out) + "\n"


def burst(res):
    out = [f"### Connection burst\n\n{res['clients']:,} clients connect at once, one `Connection: close` "
           "request each. Listen-queue overflows: `TcpExtListenOverflows` delta (machine-wide).\n",
           "| server | all served in | failed | listen overflows | open descriptors: before, peak | RSS: before, peak |",
           "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        out.append(f"| {r['peer']} | {r['served_s']:.2f} s | {r['failed']} | {r['listen_overflows']} | "
                   f"{r['fds_before']}, {r['peak_fds']} | {r['rss_before_kib'] / 1024:.1f} MB, "
                   f"{r['peak_rss_kib'] / 1024:.1f} MB |")
    return "\n".join(out) + "\n"


def reload(res):
    out = [f"### Reloads under load\n\n{res['reloads']} reloads, {res['connections']} keep-alive clients "
           f"(`drain_client`, refused connects retried), one every {res['interval_s']} s (bench/reload.py).\n",
           "| server | requests | failed requests | refused connects | reload to new worker (median) |",
           "|---|---|---|---|---|"]
    for r in res["rows"]:
        out.append(f"| {r['peer']} | {fmt(r['requests'])} | {r['failed']} | {r['refused']} | {r['reload_ms']:.0f} ms |")
    rows = res["rows"]
    if rows and any(r["failed"] + r["refused"] < rows[0]["failed"] + rows[0]["refused"] for r in rows[1:]):
        out.append(reason(("reload",)).rstrip("\n"))
    return "\n".join(out) + "\n"


def tls(res):
    out = [f"### TLS\n\n`{res['command']}`: the same certificate for both; ratio against lameduck.\n",
           "| server | keep-alive req/s (ratio) | new handshakes/s (ratio) |", "|---|---|---|"]
    rows = res["rows"]
    for r in rows:
        out.append(f"| {r['peer']} | {fmt(r['keepalive_rps'])} ({ratio(r['keepalive_rps'], rows[0]['keepalive_rps'])}) | "
                   f"{fmt(r['handshakes_per_s'])} ({ratio(r['handshakes_per_s'], rows[0]['handshakes_per_s'])}) |")
    if res.get("memory"):
        out.append("\n| lameduck serve | RSS before | RSS after | per idle connection |\n|---|---|---|---|")
        for m in res["memory"]:
            out.append(f"| {m['kind']} | {m['before']} | {m['after']} | {m['per_connection']} |")
    ahead = list(dict.fromkeys(ahead_of(rows[1:], "keepalive_rps", rows[0]["keepalive_rps"], True)
                               + ahead_of(rows[1:], "handshakes_per_s", rows[0]["handshakes_per_s"], True)))
    if ahead:
        out.append(reason(("tls",), ahead).rstrip("\n"))
    return "\n".join(out) + "\n"


def rolling_notes(rows):
    """Sentences the rolling-restart figures support, and only those."""
    notes = []
    ld = [r for r in rows if r["backend"].startswith("lameduck") and not r["backend"].endswith(" 0s")]
    reuse = sum(r["haproxy_server_errors"].get("reuse") or 0 for r in ld)
    if ld and reuse:
        notes.append("HAProxy keeps its server-side keep-alive connections and reuses them "
                     f"({reuse:,} reuses over {len(ld)} runs with lameduck backends).")
        variants = sorted({r["variant"] for r in ld})
        if all(r["failed"] == 0 for r in ld):
            which = (f"with each of {', '.join(f'`{v}`' for v in variants)}" if len(variants) > 1
                     else "with HAProxy's defaults")
            notes.append(f"With lameduck backends nothing failed, {which}: during the lame duck `/ready` says 503 while requests are still "
                         "served, so HAProxy marks the backend down before it closes anything, and "
                         "the idle keep-alive connections it then closes had a second's grace in "
                         "which a request racing the close is still answered. No HAProxy option "
                         "was needed beyond the health check.")
    zero = [r for r in rows if r["backend"].endswith("--lame-duck 0s")]
    for r in zero:
        e = r["haproxy_server_errors"]
        notes.append(f"Without a lame duck (`--lame-duck 0s`), {r['failed']} requests failed, "
                     f"{e['econ']} of them connect errors: HAProxy opened connections to the backend "
                     "between the moment its listener closed and the next health check. A lame "
                     "duck longer than the check interval is what makes the restart clean.")
    ax = [r for r in rows if r["backend"] == "axum" and r["failed"]]
    if ax:
        econ = sum(r["haproxy_server_errors"]["econ"] for r in ax)
        eresp = sum(r["haproxy_server_errors"]["eresp"] for r in ax)
        notes.append(f"axum's failures are connects refused once its listener closed ({econ}), "
                     f"and responses lost on reused connections it closed at once ({eresp}).")
    return [" ".join(notes) + "\n"] if notes else []


def reliability(res):
    out = ["### Reliability\n"]
    rr = res.get("rolling_restart") or []
    if rr:
        out.append("Rolling restart behind HAProxy 2.6 (`mode http`, `retries 0`, no `option redispatch`, "
                   "checks `inter 100ms fall 1 rise 1`): two backends restarted one after the other "
                   "(SIGTERM, wait for the exit, start again on the same port, wait until HAProxy marks "
                   "it up) under 16 keep-alive clients. lameduck serve: `--lame-duck` longer than the "
                   "check interval, checks on the admin endpoint's `/ready`; axum: TCP checks on the "
                   "main port (it has no readiness endpoint). Failed: answered other than 200 (HAProxy "
                   "answers 502/503 when its backend fails it) or not answered.\n")
        out.append("| backends | HAProxy option | restarts | requests | failed | HAProxy 5xx | backend connect errors | backend response errors | backend connections opened, reused |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for r in rr:
            e = r["haproxy_server_errors"]
            late = "" if r["restarts_within_load"] else " (the load ended before the last restart)"
            out.append(f"| {r['backend']} | {r['variant']} | {r['restarts']}{late} | {fmt(r['requests'])} | "
                       f"{r['failed']} | {r['haproxy_5xx']} | {e['econ']} | {e['eresp']} | "
                       f"{fmt(e.get('connect'))}, {fmt(e.get('reuse'))} |")
        out.append("")
        out.extend(rolling_notes(rr))
    sl = res.get("slowloris") or []
    if sl:
        out.append("Slow clients against `lameduck serve`: real clients (a new connection per request, "
                   "one after the other) quiet, then while the slow clients hold connections.\n")
        out.append("| slow clients | how many (still open at the end) | real requests failed | p50 quiet → attacked (ratio) | p99 quiet → attacked |")
        out.append("|---|---|---|---|---|")
        for r in sl:
            q, a = r["quiet"], r["attacked"]
            out.append(f"| {r['kind']} | {r['slow_clients']} ({r['slow_clients_open_at_end']}) | "
                       f"{q['failed'] + a['failed']} of {q['requests'] + a['requests']} | "
                       f"{fmt(q['p50_ms'], ' ms', 2)} → {fmt(a['p50_ms'], ' ms', 2)} ({ratio(a['p50_ms'], q['p50_ms'])}) | "
                       f"{fmt(q['p99_ms'], ' ms', 2)} → {fmt(a['p99_ms'], ' ms', 2)} |")
        out.append("")
    m = res.get("malformed")
    if m:
        out.append(f"Malformed requests in bulk: {m['cases']} kinds × {m['per_case']} "
                   f"({m['requests']} connections, 16 at a time), `--header-timeout 1s`. Outcomes: "
                   + ", ".join(f"{k}: {v}" for k, v in sorted(m["outcomes"].items()))
                   + f". Server alive after: {'yes' if m['server_alive'] else 'NO'}, serving: "
                   f"{'yes' if m['served_after'] else 'NO'}; RSS {m['rss_kib'][0] / 1024:.1f} → "
                   f"{m['rss_kib'][1] / 1024:.1f} MB, descriptors {m['fds'][0]} → {m['fds'][1]}.\n")
        out.append("| kind | outcomes |\n|---|---|")
        for k, v in m["per_case_outcomes"].items():
            out.append(f"| {k} | " + ", ".join(f"{a}: {b}" for a, b in sorted(v.items())) + " |")
        out.append("")
    f = res.get("fd_exhaustion")
    if f:
        out.append(f"Descriptor exhaustion: `lameduck serve` with `RLIMIT_NOFILE` {f['rlimit_nofile']}, "
                   f"{f['clients']} clients each asking for a file: "
                   + ", ".join(f"{k}: {v}" for k, v in sorted(f["outcomes"].items()))
                   + f"; peak descriptors {f['peak_fds']}; alive after: {'yes' if f['server_alive'] else 'NO'}, "
                   f"serving once they left: {'yes' if f['served_after'] else 'NO'} "
                   "(tests/hostile.rs `out_of_descriptors_an_existing_file_is_503_not_404` asserts the 503).\n")
    k = res.get("kill9")
    if k:
        out.append(f"kill -9 of the supervised worker under load ({k['connections']} keep-alive clients, "
                   f"{k['kills']} kills): {fmt(k['requests'])} requests, {k['failed']} failed (in flight on "
                   f"the killed worker), {k['refused']} refused connects, new worker answering after "
                   f"{k['new_worker_ms']:.0f} ms (median); tests/supervisor.rs "
                   "`kill_9_of_the_worker_is_replaced_at_once_and_no_connect_is_refused` asserts it.\n")
    return "\n".join(out)


SECTIONS = [("throughput", throughput), ("shutdown", shutdown), ("drain", drain), ("idle", idle),
            ("memory", memory), ("burst", burst), ("reload", reload), ("tls", tls),
            ("reliability", reliability)]


def headline(results):
    """The README's table: one row per measure, lameduck and its peers (ratio)."""
    rows = []

    def add(measure, pairs, unit, digits=0):
        pairs = [(n, v) for n, v in pairs if v is not None]
        if not pairs:
            return
        base = pairs[0][1]
        peers = ", ".join(f"{n} {fmt(v, unit, digits)} ({ratio(v, base)})" for n, v in pairs[1:])
        rows.append(f"| {measure} | {fmt(base, unit, digits)} | {peers} |")

    t = results.get("throughput")
    if t:
        for group, label in (("hello", "hello route"), ("static", "90 B file")):
            for mode in ("keep-alive", "close"):
                pairs = [(r["peer"], r["rps"]) for r in t["rows"] if r["group"] == group and r["mode"] == mode]
                add(f"{label}, {'keep-alive' if mode == 'keep-alive' else '`Connection: close`'}, req/s", pairs, "")
    s = results.get("shutdown")
    if s:
        add("signal → first refused connect (hello route)", [(r["peer"], r["refused_ms"]) for r in s["rows"]
                                               if r["group"] == "hello"], " ms", 1)
        add(f"signal → exit, {s['idle_connections']:,} idle connections (static)",
            [(r["peer"], r["exit_idle_conns_s"]) for r in s["rows"] if r["group"] == "static"], " s", 2)
    d = results.get("drain")
    if d:
        add("failed requests, SIGTERM under load (hello route)", [(r["peer"], r["failed"]) for r in d["rows"]], "")
    m = results.get("memory")
    if m:
        add("bytes per idle connection (static)", [(r["peer"], r["per_conn_bytes"]) for r in m["rows"]
                                          if r["group"] == "static"], " B")
    rel = results.get("reliability") or {}
    rr = [r for r in rel.get("rolling_restart") or []
          if r["variant"] == "default" and not r["backend"].endswith("--lame-duck 0s")]
    if rr:
        add("failed requests, rolling restart behind HAProxy", [(f"{r['backend']}", r["failed"]) for r in rr], "")
    if not rows:
        return ""
    return "| measure | lameduck | peers (ratio to lameduck) |\n|---|---|---|\n" + "\n".join(rows) + "\n"


def markdown(results, meta):
    global DEBUG
    DEBUG = meta["profile"] != "release"
    out = ["# lameduck benchmark results\n",
           f"Written by `{meta['command']}` on {meta['date']}, on {meta['machine']} "
           f"(cargo profile `{meta['profile']}`). The machine is shared and noisy: read the ratios, "
           "measured in the same run, rather than the absolute figures. Raw figures: "
           f"[`results/`](results/) (JSON), plots: [throughput](results/throughput.svg), "
           "[RSS against idle connections](results/rss.svg).\n"]
    if DEBUG:
        out.append("**Debug builds of lameduck and the Rust peers** (against release builds of "
                   "nginx, caddy and static-web-server): these figures show that every scenario "
                   "runs, not how fast anything is.\n")
    if meta.get("skipped"):
        out.append("Skipped: " + "; ".join(f"{k} ({v})" for k, v in meta["skipped"].items()) + ".\n")
    if meta.get("failed"):
        out.append("**Scenarios that could not run:** " + "; ".join(f"{k}: {v}" for k, v in meta["failed"].items()) + "\n")
    h = headline(results)
    if h:
        out.append("## Headline\n\n" + h)
    out.append("## Tables\n")
    for key, fn in SECTIONS:
        if key in results:
            out.append(fn(results[key]))
    if results.get("static_py"):
        out.append("### Static files in depth (bench/static.py)\n\n" + results["static_py"]["text"]
                   .replace("### Static files:", "Static files:") + "\n")
    return "\n".join(out)


def plots(results, outdir):
    """throughput.svg and rss.svg in `outdir`; returns the paths written."""
    written = []
    t = results.get("throughput")
    if t:
        charts = []
        for group, title in (("hello", "Hello route"), ("static", "90 B static file"),
                             ("blocking", "Blocking servers")):
            rows = [r for r in t["rows"] if r["group"] == group]
            if not rows:
                continue
            peers = list(dict.fromkeys(r["peer"] for r in rows))
            by = {(r["peer"], r["mode"]): r["rps"] for r in rows}
            charts.append(plot.bars(f"{title}: requests/s (wrk -t2 -c50)", peers,
                                    [("keep-alive", [by[(p, "keep-alive")] for p in peers]),
                                     ("Connection: close", [by[(p, "close")] for p in peers])], "requests/s"))
        path = os.path.join(outdir, "throughput.svg")
        plot.write(path, *charts)
        written.append(path)
    m = results.get("memory")
    if m:
        series = {r["peer"]: [(int(n), r["rss_kib"][str(n)] / 1024) for n in m["connections"]] for r in m["rows"]}
        path = os.path.join(outdir, "rss.svg")
        plot.write(path, plot.lines("RSS against idle keep-alive connections", series,
                                    "idle keep-alive connections", "RSS (MB)"))
        written.append(path)
    return written
