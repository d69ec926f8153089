"""What the scenarios share: the peers and how to start them, wrk, /proc readers, idle
keep-alive connections held open, and a bounded wait for a process to exit.

Every server is started in its own session on a free loopback port (`benchlib.free_port`) and
stopped with `benchlib.stop` (SIGTERM to its process group, SIGKILL past a bound)."""

import contextlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(BENCH)
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

from benchlib import free_port, stop, tree, wait_listening  # noqa: E402
import static  # noqa: E402  (its starters: start_lameduck, start_nginx, start_caddy, start_sws)
from idle_conns import open_idle  # noqa: E402,F401  (used by the scenarios through this module)

SMALL = b"<!DOCTYPE html><html><body><h1>Hello</h1><p>A small static file.</p></body></html>\n"


def raise_nofile():
    """Soft open-files limit up to the hard one (thousands of idle connections are held)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Context:
    """Where the binaries are (per cargo profile), a scratch directory and a small site."""

    def __init__(self, profile="release", quick=False):
        self.profile = profile
        self.quick = quick
        out = "release" if profile == "release" else "debug"
        self.target = os.path.join(ROOT, "target", out)
        self.lameduck = os.path.join(self.target, "lameduck")
        self.hello = os.path.join(self.target, "http_hello")
        self.drain_client = os.path.join(self.target, "drain_client")
        self.book = os.path.join(self.target, "book_server")
        self.blocking = os.path.join(self.target, "examples", "blocking_http")
        self.actix = os.path.join(ROOT, "target", "bench-actix", out, "actix_hello")
        self.sws = static.sws_binary()
        # static.py's starters read their binaries from module globals.
        static.LAMEDUCK, static.HELLO = self.lameduck, self.hello
        self.tmp = tempfile.mkdtemp(prefix="lameduck-run-")
        os.chmod(self.tmp, 0o755)
        self.www = os.path.join(self.tmp, "www")
        os.makedirs(self.www)
        with open(os.path.join(self.www, "index.html"), "wb") as f:
            f.write(SMALL)
        for p in (self.www, os.path.join(self.www, "index.html")):
            os.chmod(p, 0o755 if os.path.isdir(p) else 0o644)

    def scratch(self):
        d = tempfile.mkdtemp(dir=self.tmp)
        os.chmod(d, 0o755)
        return d

    def close(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


class Running:
    """A started server: its process, its port, the path to ask for."""

    def __init__(self, peer, proc, port):
        self.peer, self.proc, self.port = peer, proc, port

    @property
    def pid(self):
        return self.proc.pid

    def url(self):
        return f"http://127.0.0.1:{self.port}{self.peer.path}"

    def stop(self):
        stop(self.proc, timeout=15)


class Peer:
    """One server in the comparison. `group` is hello, static or blocking; `graceful` is the
    signal that asks it for a graceful stop (nginx: SIGQUIT, the others: SIGTERM)."""

    def __init__(self, name, group, start, path="/", graceful=signal.SIGTERM, available=True,
                 why_missing=""):
        self.name, self.group, self._start, self.path = name, group, start, path
        self.graceful, self.available, self.why_missing = graceful, available, why_missing

    @property
    def is_lameduck(self):
        return self.name.startswith("lameduck") or self.name == "blocking_http"

    def start(self, ctx):
        return self._start(self, ctx)


def _command(argv_of_port):
    def start(peer, ctx):
        port = free_port()
        proc = subprocess.Popen(argv_of_port(ctx, port), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_listening(port, proc)
        except BaseException:
            stop(proc, timeout=5)
            raise
        return Running(peer, proc, port)
    return start


def _static(starter):
    def start(peer, ctx):
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            server = starter(ctx.www, ctx.scratch())
        return Running(peer, server.proc, server.port)
    return start


def _supervised(ctx, port):
    return [ctx.lameduck, "serve", ctx.www, "--listen", f"127.0.0.1:{port}", "--log-level", "warn"]


def peers(ctx):
    """Every peer, lameduck first in each group."""
    have = lambda tool: shutil.which(tool) is not None  # noqa: E731
    return [
        Peer("lameduck::http", "hello", _command(lambda c, p: [c.hello, "lameduck", f"127.0.0.1:{p}"])),
        Peer("axum", "hello", _command(lambda c, p: [c.hello, "axum", f"127.0.0.1:{p}"])),
        Peer("actix-web", "hello", _command(lambda c, p: [c.actix, f"127.0.0.1:{p}"]),
             available=os.path.exists(ctx.actix), why_missing="bench/actix not built"),
        Peer("hyper", "hello", _command(lambda c, p: [c.hello, "hyper", f"127.0.0.1:{p}"])),
        Peer("lameduck serve", "static", _static(static.start_lameduck), path="/index.html"),
        Peer("nginx", "static", _static(static.start_nginx), path="/index.html",
             graceful=signal.SIGQUIT, available=have("nginx"), why_missing="nginx not installed"),
        Peer("caddy", "static", _static(static.start_caddy), path="/index.html",
             available=have("caddy"), why_missing="caddy not installed"),
        Peer("static-web-server", "static", _static(static.start_sws), path="/index.html",
             available=ctx.sws is not None, why_missing="static-web-server not installed"),
        Peer("blocking_http", "blocking",
             _command(lambda c, p: [c.blocking, "--listen", f"127.0.0.1:{p}", "--threads", "4"])),
        Peer("book_server", "blocking", _command(lambda c, p: [c.book, f"127.0.0.1:{p}"])),
    ]


def supervised_peer():
    """`lameduck serve` as it runs by default: a supervisor holding the socket, one worker."""
    return Peer("lameduck serve (supervised)", "static", _command(_supervised), path="/index.html")


def select(all_peers, groups, skipped):
    """The available peers of `groups`; the missing ones are named in `skipped`."""
    out = []
    for p in all_peers:
        if p.group not in groups:
            continue
        if p.available:
            out.append(p)
        elif p.name not in skipped:
            skipped[p.name] = p.why_missing
    return out


def to_ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url, duration, close=False, connections=50, threads=2):
    """One wrk run: requests/s, p50 and p99 in ms, and errors (socket errors + non-2xx/3xx)."""
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"]
    if close:
        cmd += ["-H", "Connection: close"]
    res = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=duration + 60)
    out = res.stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if res.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed on {url}: {res.stderr.strip() or out.strip()}")
    lat = {q: re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M) for q in ("50", "99")}
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    n_err = (sum(int(x) for x in errors.groups()) if errors else 0) + (int(non2xx.group(1)) if non2xx else 0)
    return {"rps": float(m.group(1)),
            "p50_ms": to_ms(*lat["50"].groups()) if lat["50"] else None,
            "p99_ms": to_ms(*lat["99"].groups()) if lat["99"] else None,
            "errors": n_err}


def fds(pid):
    """Open descriptors of pid and its descendants."""
    n = 0
    for p in tree(pid):
        try:
            n += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            pass
    return n


def cpu_and_switches(pid):
    """(CPU ticks, context switches, threads) of pid and its descendants: utime+stime from
    /proc/PID/stat, voluntary+involuntary switches summed over /proc/PID/task/*/status (what
    bench/idle.sh reads)."""
    ticks = switches = threads = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
            for t in os.listdir(f"/proc/{p}/task"):
                threads += 1
                with open(f"/proc/{p}/task/{t}/status") as f:
                    for line in f:
                        if "ctxt_switches" in line:
                            switches += int(line.split()[1])
        except OSError:
            pass
    return ticks, switches, threads


def wait_exit(proc, bound):
    """Seconds until `proc` exits, or None past `bound` seconds."""
    t0 = time.monotonic()
    try:
        proc.wait(timeout=bound)
    except subprocess.TimeoutExpired:
        return None
    return time.monotonic() - t0


def kill_tree(proc):
    """SIGKILL to the process group (a server that did not exit within its bound)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def log(*a):
    print(*a, file=sys.stderr, flush=True)
