#!/usr/bin/env python3
"""`lameduck serve` against the static servers people pick instead, in one interleaved run:
nginx, caddy (`caddy file-server`) and static-web-server (when installed).

Measures, as medians over interleaved rounds (each group of runs starting with the next server
in turn), with ratios against lameduck:
- small files (90 B, 4 KiB, 64 KiB) and a 1 MiB one (above the cache limit):
  `wrk -t2 -c50` requests/s and p99, keep-alive and with `Connection: close`, the server's
  CPU time per request and the machine's idle share in the same runs, with
  `lameduck serve --cache-size 0` as a column of its own (it opens each file per request,
  as nginx without `open_file_cache` does);
- a browser's revalidation of the 90 B file (`If-None-Match` with its ETag, or
  `If-Modified-Since` from a server that sends no ETag; answered 304), and a browser's GET
  of a script with a precompressed sibling (`app.js` and `app.js.gz`, `Accept-Encoding:
  gzip, deflate, br`; nginx with `gzip_static`, caddy with `precompressed`,
  static-web-server with `--compression-static`), keep-alive, `wrk -t2 -c50`;
- HTTP/2 cleartext (prior knowledge) on the 90 B file: `h2load -c 20 -m 10`;
- a large file (200 MB by default): curl downloads, MB/s;
- memory per idle keep-alive connection (after one request), with raw hyper as the Rust
  floor (`http_hello hyper`).

Prints the tables; `bench/run` puts them in bench/RESULTS.md with the other scenarios, and
`--write FILE` writes them to FILE (with the date, the machine and this command). Usage:

    bench/static.py [--rounds 3] [--duration 4] [--large-mb 200] [--idle 5000] [--quick]

Needs target/release/{lameduck,http_hello}; wrk, h2load (nghttp2-client), curl, nginx, caddy;
static-web-server on PATH or in /tmp/sws/bin (`cargo install static-web-server --root
/tmp/sws`, never a dependency of the workspace).
"""

import argparse
import base64
import datetime
import gzip
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
from benchlib import cpu_ticks, free_port, stop, wait_listening  # noqa: E402
from idle_conns import idle_rss  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAMEDUCK = os.path.join(ROOT, "target/release/lameduck")
HELLO = os.path.join(ROOT, "target/release/http_hello")


def sws_binary():
    return shutil.which("static-web-server") or (
        "/tmp/sws/bin/static-web-server" if os.path.exists("/tmp/sws/bin/static-web-server") else None)


class Server:
    """A running server: `port` for HTTP/1.1, `h2_port` for h2c prior knowledge (or None)."""

    def __init__(self, name, proc, port, h2_port):
        self.name, self.proc, self.port, self.h2_port = name, proc, port, h2_port
        # Only in the wrk tables (not the HTTP/2, large-file and memory ones).
        self.wrk_only = False


def start_lameduck(www, _d, extra=()):
    port = free_port()
    p = subprocess.Popen([LAMEDUCK, "serve", www, "--no-supervisor", "--listen",
                          f"127.0.0.1:{port}", "--log-level", "warn", *extra],
                         start_new_session=True)
    wait_listening(port, p)
    return Server("lameduck serve", p, port, port)


def start_lameduck_uncached(www, d):
    """`lameduck serve --cache-size 0`: every request opens its file, as nginx's do (nginx
    without `open_file_cache`, its default). Measured in the wrk tables only."""
    s = start_lameduck(www, d, ("--cache-size", "0"))
    s.name, s.h2_port, s.wrk_only = "lameduck, no cache", None, True
    return s


def start_nginx(www, d):
    port, h2 = free_port(), free_port()
    # gzip_static: precompressed siblings, as lameduck serves them (where nginx has it).
    built = subprocess.run(["nginx", "-V"], capture_output=True, text=True).stderr
    static_gz = "gzip_static on;" if "http_gzip_static_module" in built else ""
    p, _ = benchlib.start_nginx(d, f"""{static_gz}
  server {{ listen 127.0.0.1:{port}; root {www}; }}
  server {{ listen 127.0.0.1:{h2} http2; root {www}; }}""", port)
    return Server("nginx", p, port, h2)


def start_caddy(www, d):
    port, admin = free_port(), free_port()
    conf = os.path.join(d, "Caddyfile")
    with open(conf, "w") as f:
        f.write(f"""{{
  admin 127.0.0.1:{admin}
  auto_https off
  servers {{
    protocols h1 h2c
  }}
}}
http://127.0.0.1:{port} {{
  root * {www}
  file_server {{
    precompressed gzip
  }}
}}
""")
    env = dict(os.environ, XDG_DATA_HOME=d, XDG_CONFIG_HOME=d, HOME=d)
    p = subprocess.Popen(["caddy", "run", "--config", conf, "--adapter", "caddyfile"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                         start_new_session=True)
    wait_listening(port, p)
    return Server("caddy", p, port, port)


def start_sws(www, _d):
    port = free_port()
    usage = subprocess.run([sws_binary(), "--help"], capture_output=True, text=True).stdout
    static_gz = ["--compression-static", "true"] if "--compression-static" in usage else []
    p = subprocess.Popen([sws_binary(), "--host", "127.0.0.1", "--port", str(port), "--root", www,
                          "--log-level", "error", "--threads-multiplier", "1", *static_gz],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    wait_listening(port, p)
    return Server("static-web-server", p, port, None)


def to_ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def machine_ticks():
    """(idle, steal, all) clock ticks of the machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return v[3] + v[4], v[7], sum(v)


def wrk(url, duration, close, pid, headers=()):
    """requests/s, p99 (ms), and what the run cost: the server's CPU time per request (µs,
    pid and its descendants) and the machine's idle and stolen shares of the run."""
    cmd = ["wrk", "-t2", "-c50", f"-d{duration}s", "--latency"]
    if close:
        cmd += ["-H", "Connection: close"]
    for h in headers:
        cmd += ["-H", h]
    # One request first, as wrk will send it: a server that caches (lameduck, caddy) starts
    # the run warm, as it is in use, instead of from an entry that expired since its last run.
    warm = ["curl", "-s", "-o", "/dev/null", url]
    for h in headers:
        warm += ["-H", h]
    subprocess.run(warm, check=False)
    cpu0, (idle0, steal0, all0) = cpu_ticks(pid), machine_ticks()
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    cpu1, (idle1, steal1, all1) = cpu_ticks(pid), machine_ticks()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    span = max(all1 - all0, 1)
    cost = ((cpu1 - cpu0) * tick_us / max(requests, 1),
            100.0 * (idle1 - idle0) / span, 100.0 * (steal1 - steal0) / span)
    return rps, to_ms(*m.groups()) if m else float("nan"), cost


def revalidation(url):
    """The revalidation header that `url` answers with a 304 (`If-None-Match` with its ETag,
    else `If-Modified-Since` with its Last-Modified, as a browser sends them), or None."""
    head = subprocess.run(["curl", "-sI", url], capture_output=True, text=True).stdout
    etag = re.search(r"(?im)^etag:\s*(.+?)\s*$", head)
    modified = re.search(r"(?im)^last-modified:\s*(.+?)\s*$", head)
    if etag:
        header = f"If-None-Match: {etag.group(1)}"
    elif modified:
        header = f"If-Modified-Since: {modified.group(1)}"
    else:
        return None
    code = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", header,
                           url], capture_output=True, text=True).stdout
    return header if code == "304" else None


BROWSER_AE = "Accept-Encoding: gzip, deflate, br"


def serves_precompressed(url, sibling):
    """Whether `url` answers a browser's Accept-Encoding with the bytes of `sibling`, its
    gzip file (with a Content-Length or chunked)."""
    out = subprocess.run(["curl", "-s", "-H", BROWSER_AE, url], capture_output=True).stdout
    with open(sibling, "rb") as f:
        return out == f.read()


def h2load(url, requests):
    out = subprocess.run(["h2load", "-c", "20", "-m", "10", "-n", str(requests), url],
                         capture_output=True, text=True).stdout
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    ok = re.search(r"(\d+) succeeded", out)
    if not m or not ok or int(ok.group(1)) < requests * 0.99:
        return float("nan")
    return float(m.group(1))


def download(url):
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{speed_download}", url],
                         capture_output=True, text=True, check=True).stdout
    return float(out) / 1e6


def idle_per_conn(port, n, pid):
    before, after = idle_rss(pid, port, n)
    return (after - before) * 1024 / n


def rotated(seq, k):
    """`seq` starting at its `k`th item (modulo its length), the rest in order after it."""
    k %= max(len(seq), 1)
    return seq[k:] + seq[:k]


def ratio(value, base):
    return f"{value / base:.2f}" if base and value == value else "n/a"


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=4)
    ap.add_argument("--large-mb", type=int, default=200)
    ap.add_argument("--idle", type=int, default=5000)
    ap.add_argument("--quick", action="store_true", help="one short round of everything, for CI")
    ap.add_argument("--write", metavar="FILE", help="also write the tables to FILE")
    ap.add_argument("--no-write", action="store_true", help="print only (the default)")
    args = ap.parse_args()
    # Checked before the runs, not after them: the idle row needs raw hyper.
    missing = [b for b in (LAMEDUCK, HELLO) if not os.path.exists(b)]
    if missing:
        raise SystemExit(f"bench/static.py: missing {', '.join(missing)}: build them with "
                         "`cargo build --release --workspace --bins --examples`")
    if args.quick:
        args.rounds, args.duration, args.large_mb, args.idle = 1, 1, 20, 200
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    d = tempfile.mkdtemp(prefix="lameduck-static-")
    os.chmod(d, 0o755)
    www = os.path.join(d, "www")
    os.makedirs(www)
    files = {
        "90 B": ("/index.html", b"<!DOCTYPE html><html><body><h1>Hello</h1><p>A small static file.</p></body></html>\n"),
        "4 KiB": ("/4k.bin", os.urandom(4096)),
        "64 KiB": ("/64k.bin", os.urandom(65536)),
        # Above lameduck's cache limit (256 KiB): opened for every request, sent by sendfile.
        "1 MiB": ("/1m.bin", os.urandom(1 << 20)),
    }
    for path, data in files.values():
        with open(os.path.join(www, path.lstrip("/")), "wb") as f:
            f.write(data)
    # A script and its gzip sibling, for the precompressed row (not in `files`).
    script = base64.b64encode(os.urandom(3000))
    with open(os.path.join(www, "app.js"), "wb") as f:
        f.write(script)
    with open(os.path.join(www, "app.js.gz"), "wb") as f:
        f.write(gzip.compress(script, 9))
    with open(os.path.join(www, "large.bin"), "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(args.large_mb):
            f.write(chunk)
    for root, dirs, names in os.walk(d):
        for n in dirs:
            os.chmod(os.path.join(root, n), 0o755)
        for n in names:
            os.chmod(os.path.join(root, n), 0o644)

    starters = [start_lameduck, start_lameduck_uncached]
    skipped = []
    for tool, starter in (("nginx", start_nginx), ("caddy", start_caddy)):
        (starters.append(starter) if shutil.which(tool) else skipped.append(tool))
    (starters.append(start_sws) if sws_binary() else skipped.append("static-web-server"))
    servers = []
    try:
        for starter in starters:
            sub = tempfile.mkdtemp(dir=d)
            os.chmod(sub, 0o755)
            servers.append(starter(www, sub))
        rps = {}
        p99 = {}
        cost = {}
        h2 = {}
        large = {}
        revalidated = {}
        conditional = {s.name: revalidation(f"http://127.0.0.1:{s.port}/index.html")
                       for s in servers}
        gz_size = os.path.getsize(os.path.join(www, "app.js.gz"))
        precompressed = {s.name: serves_precompressed(f"http://127.0.0.1:{s.port}/app.js",
                                                      os.path.join(www, "app.js.gz"))
                         for s in servers}
        compressed = {}
        # Each group of runs starts with the next server: no server always runs first, or
        # always right after another's `Connection: close` run (its TIME_WAIT sockets).
        turn = 0
        for _ in range(args.rounds):
            for size, (path, _) in files.items():
                for close in (False, True):
                    turn += 1
                    for s in rotated(servers, turn):
                        r, p, c = wrk(f"http://127.0.0.1:{s.port}{path}", args.duration, close,
                                      s.proc.pid)
                        rps.setdefault((size, close, s.name), []).append(r)
                        p99.setdefault((size, close, s.name), []).append(p)
                        cost.setdefault((size, close, s.name), []).append(c)
            turn += 1
            for s in rotated(servers, turn):
                if conditional[s.name]:
                    r, p, c = wrk(f"http://127.0.0.1:{s.port}/index.html", args.duration, False,
                                  s.proc.pid, [conditional[s.name]])
                    revalidated.setdefault(s.name, []).append((r, p, c[0]))
            for s in rotated(servers, turn):
                if precompressed[s.name]:
                    r, p, c = wrk(f"http://127.0.0.1:{s.port}/app.js", args.duration, False,
                                  s.proc.pid, [BROWSER_AE])
                    compressed.setdefault(s.name, []).append((r, p, c[0]))
            for s in rotated(servers, turn):
                if s.h2_port:
                    h2.setdefault(s.name, []).append(
                        h2load(f"http://127.0.0.1:{s.h2_port}/index.html",
                               20000 if args.quick else 400000))
            # A single download swings by 2x from one try to the next here, so each round
            # takes several per server, in a rotated order, and keeps their median.
            full = [s for s in servers if not s.wrk_only]
            tries = {s.name: [] for s in full}
            for t in range(1 if args.quick else 5):
                for s in rotated(full, t):
                    tries[s.name].append(download(f"http://127.0.0.1:{s.port}/large.bin"))
            for name, got in tries.items():
                large.setdefault(name, []).append(statistics.median(got))
        # Idle memory: lameduck, raw hyper, nginx.
        idle = {}
        idle["lameduck serve"] = idle_per_conn(servers[0].port, args.idle, servers[0].proc.pid)
        hport = free_port()
        hyper = subprocess.Popen([HELLO, "hyper", f"127.0.0.1:{hport}"], start_new_session=True,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_listening(hport, hyper)
            idle["raw hyper"] = idle_per_conn(hport, args.idle, hyper.pid)
        finally:
            stop(hyper)
        for s in servers[1:]:
            if s.name == "nginx":
                idle["nginx"] = idle_per_conn(s.port, args.idle, s.proc.pid)
    finally:
        for s in servers:
            stop(s.proc)
        shutil.rmtree(d, ignore_errors=True)

    med = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
    names = [s.name for s in servers]
    out = []
    wrk_names = names
    names = [s.name for s in servers if not s.wrk_only]
    out.append(f"### Static files: `lameduck serve` against {', '.join(names[1:]) or 'no peer'}\n")
    out.append(f"{args.rounds} interleaved rounds, medians; ratios are the peer's figure over "
               "lameduck's (below 1.00: lameduck is ahead).\n")
    for close in (False, True):
        mode = "`Connection: close`" if close else "keep-alive"
        out.append(f"\n`wrk -t2 -c50 -d{args.duration}s`, {mode}: requests/s (ratio), p99\n")
        out.append("| file | " + " | ".join(wrk_names) + " |")
        out.append("|---|" + "---|" * len(wrk_names))
        for size in files:
            base = med(rps[(size, close, names[0])])
            cells = []
            for n in wrk_names:
                r, p = med(rps[(size, close, n)]), med(p99[(size, close, n)])
                cells.append(f"{r:,.0f} ({ratio(r, base)}), {p:.2f} ms")
            out.append(f"| {size} | " + " | ".join(cells) + " |")
        out.append(f"\nThe same runs, {mode}: the server's CPU time per request in µs (its "
                   "processes and threads, from /proc), and the machine's idle / stolen share "
                   "of the run. wrk shares the two cores: where a server leaves them idle, it "
                   "is not the server's CPU that bounds requests/s\n")
        out.append("| file | " + " | ".join(wrk_names) + " |")
        out.append("|---|" + "---|" * len(wrk_names))
        for size in files:
            cells = []
            for n in wrk_names:
                runs = cost[(size, close, n)]
                cells.append(f"{med([c[0] for c in runs]):.1f} µs, "
                             f"{med([c[1] for c in runs]):.0f}% / {med([c[2] for c in runs]):.0f}%")
            out.append(f"| {size} | " + " | ".join(cells) + " |")
        if "nginx" in wrk_names and "lameduck, no cache" in wrk_names:
            pairs = ", ".join(
                f"{size} {ratio(med(rps[(size, close, 'nginx')]), med(rps[(size, close, 'lameduck, no cache')]))}"
                for size in files)
            out.append(f"\nnginx over `lameduck serve --cache-size 0` (neither caches): {pairs}")
    browser_rows = (
        (revalidated, "Revalidation of the 90 B file (`If-None-Match` with its ETag, or "
                      "`If-Modified-Since` where no ETag is sent: 304)", "n/a (no 304)"),
        (compressed, f"A browser's GET of a script with a precompressed sibling ({gz_size} B "
                     f"`app.js.gz`, `{BROWSER_AE}`)", "n/a (not precompressed)"),
    )
    for runs_by_name, what, missing in browser_rows:
        out.append(f"\n{what}, keep-alive, `wrk -t2 -c50 -d{args.duration}s`: requests/s "
                   "(ratio), p99, server CPU per request\n")
        out.append("| " + " | ".join(wrk_names) + " |")
        out.append("|" + "---|" * len(wrk_names))
        base = med([r[0] for r in runs_by_name.get(wrk_names[0], [])])
        cells = []
        for n in wrk_names:
            runs = runs_by_name.get(n)
            if not runs:
                cells.append(missing)
                continue
            r = med([x[0] for x in runs])
            cells.append(f"{r:,.0f} ({ratio(r, base)}), {med([x[1] for x in runs]):.2f} ms, "
                         f"{med([x[2] for x in runs]):.1f} µs")
        out.append("| " + " | ".join(cells) + " |")
    out.append("\nHTTP/2 cleartext, `h2load -c 20 -m 10`, 90 B file: requests/s (ratio)\n")
    out.append("| " + " | ".join(names) + " |")
    out.append("|" + "---|" * len(names))
    base = med(h2.get(names[0], []))
    out.append("| " + " | ".join(
        (f"{med(h2[n]):,.0f} ({ratio(med(h2[n]), base)})" if n in h2 else "n/a (no h2c)")
        for n in names) + " |")
    out.append(f"\n{args.large_mb} MB file, curl (median of {1 if args.quick else 5} downloads a "
               "round): MB/s (ratio)\n")
    out.append("| " + " | ".join(names) + " |")
    out.append("|" + "---|" * len(names))
    base = med(large[names[0]])
    out.append("| " + " | ".join(f"{med(large[n]):,.0f} ({ratio(med(large[n]), base)})"
                                  for n in names) + " |")
    out.append(f"\nMemory per idle keep-alive connection ({args.idle} connections, after one "
               "request each): bytes\n")
    out.append("| " + " | ".join(idle) + " |")
    out.append("|" + "---|" * len(idle))
    out.append("| " + " | ".join(f"{v:,.0f}" for v in idle.values()) + " |")
    if skipped:
        out.append(f"\n(not installed, skipped: {', '.join(skipped)})")
    table = "\n".join(out)
    print(table)
    if args.write and not args.no_write:
        cmd = "bench/static.py " + " ".join(sys.argv[1:])
        header = (f"# lameduck serve against the static servers\n\nWritten by `{cmd.strip()}` on "
                  f"{datetime.date.today().isoformat()}, on {machine()}. The machine is shared "
                  "and noisy: read the ratios, measured in the same run, rather than the "
                  "absolute figures.\n\n")
        with open(args.write, "w") as f:
            f.write(header + table + "\n")
        print(f"\nwritten to {args.write}")


if __name__ == "__main__":
    main()
