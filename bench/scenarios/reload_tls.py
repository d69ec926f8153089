"""The reload and TLS rows, from bench/reload.py and bench/tls.py (used as they are: their
functions for reloads, their printed tables for TLS)."""

import argparse
import contextlib
import io
import os
import re
import shutil
import statistics
import sys
import tempfile

import reload as reload_mod
import tls as tls_mod

from .common import log


def run_reload(ctx, peers, skipped):
    reload_mod.LAMEDUCK, reload_mod.CLIENT = ctx.lameduck, ctx.drain_client
    args = argparse.Namespace(reloads=2, interval=0.5, connections=32) if ctx.quick else \
        argparse.Namespace(reloads=10, interval=1.0, connections=32)
    kinds = [reload_mod.Lameduck]
    for tool, kind in (("nginx", reload_mod.Nginx), ("caddy", reload_mod.Caddy)):
        (kinds.append(kind) if shutil.which(tool) else skipped.setdefault(tool, f"{tool} not installed"))
    tmp = tempfile.mkdtemp(prefix="lameduck-reload-", dir=ctx.tmp)
    os.chmod(tmp, 0o755)
    www = os.path.join(tmp, "www")
    os.makedirs(www)
    with open(os.path.join(www, "index.html"), "w") as f:
        f.write("<h1>hello</h1>\n")
    rows = []
    for kind in kinds:
        with contextlib.redirect_stdout(sys.stderr):
            counts, times = reload_mod.run_one(kind, www, tmp, args)
        rows.append({"peer": kind.name, "requests": counts["requests"], "failed": counts["failed"],
                     "refused": counts["refused"], "reload_ms": statistics.median(times) * 1000})
        log(f"reload: {rows[-1]}")
    return {"reloads": args.reloads, "interval_s": args.interval, "connections": args.connections,
            "rows": rows}


def _table_rows(text, header_start):
    """The rows of the markdown table whose header line starts with `header_start`."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(header_start):
            out = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                out.append([c.strip() for c in row.strip().strip("|").split("|")])
            return out
    return []


def _num(cell):
    m = re.match(r"([\d,.]+)", cell)
    return float(m.group(1).replace(",", "")) if m else None


def run_tls(ctx, peers, skipped):
    tls_mod.LAMEDUCK = ctx.lameduck
    argv = ["tls.py", "--quick"] if ctx.quick else ["tls.py", "--rounds", str(ctx.rounds)]
    buf = io.StringIO()
    old = sys.argv
    try:
        sys.argv = argv
        with contextlib.redirect_stdout(buf):
            tls_mod.main()
    finally:
        sys.argv = old
    text = buf.getvalue()
    log(text)
    rows = [{"peer": r[0], "keepalive_rps": _num(r[1]), "handshakes_per_s": _num(r[2])}
            for r in _table_rows(text, "| server | keep-alive")]
    mem = [{"kind": r[0], "before": r[1], "after": r[2], "per_connection": r[3]}
           for r in _table_rows(text, "| | before")]
    if not rows:
        raise RuntimeError(f"bench/tls.py printed no table:\n{text}")
    return {"command": " ".join(["bench/tls.py"] + argv[1:]), "rows": rows, "memory": mem,
            "text": text.strip()}
