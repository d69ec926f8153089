"""A connection burst: 5,000 clients (--quick: 1,000) connect at once, each sends one
`Connection: close` request for a 90 B file and reads the answer, against `lameduck serve
--max-connections 1000` (--quick: 200), against `lameduck serve` at its default limit, and
against nginx (two workers, its benchlib configuration) for reference.

Counted: time until every client is served, clients that failed, listen-queue overflows (the
`TcpExtListenOverflows` delta that `nstat -az TcpExtListenOverflows` shows, read from
/proc/net/netstat; machine-wide, so other traffic on the machine would count too), and the
peak of the server's open descriptors and RSS (/proc sampled every 10 ms)."""

import asyncio
import os
import shutil
import subprocess
import threading
import time

from idle_conns import rss_kib

from .common import Peer, Running, fds, free_port, log, stop, wait_listening
import static


def listen_overflows():
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            row = dict(zip(names.split()[1:], values.split()[1:]))
            return int(row.get("ListenOverflows", 0))
    return 0


async def one_client(port, req, deadline):
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), deadline)
        try:
            w.write(req)
            await w.drain()
            data = await asyncio.wait_for(r.read(), deadline)
        finally:
            w.close()
        return data.startswith(b"HTTP/1.1 200")
    except (OSError, asyncio.TimeoutError):
        return False


async def burst(port, n, deadline):
    req = b"GET /index.html HTTP/1.1\r\nHost: burst\r\nConnection: close\r\n\r\n"
    t0 = time.monotonic()
    results = await asyncio.gather(*(one_client(port, req, deadline) for _ in range(n)))
    return time.monotonic() - t0, sum(1 for ok in results if not ok)


class Sampler(threading.Thread):
    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.stop_flag, self.peak_fds, self.peak_rss = pid, threading.Event(), 0, 0

    def run(self):
        while not self.stop_flag.is_set():
            self.peak_fds = max(self.peak_fds, fds(self.pid))
            self.peak_rss = max(self.peak_rss, rss_kib(self.pid))
            self.stop_flag.wait(0.01)


def start_lameduck(ctx, limit):
    def start(peer, c):
        port = free_port()
        cmd = [c.lameduck, "serve", c.www, "--no-supervisor", "--listen", f"127.0.0.1:{port}",
               "--log-level", "error"]
        if limit:
            cmd += ["--max-connections", str(limit)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        wait_listening(port, proc)
        return Running(peer, proc, port)
    return start


def run(ctx, peers, skipped):
    n, limit = (1000, 200) if ctx.quick else (5000, 1000)
    deadline = 30.0 if ctx.quick else 60.0
    targets = [Peer(f"lameduck serve --max-connections {limit}", "static", start_lameduck(ctx, limit)),
               Peer("lameduck serve (default limit 10000)", "static", start_lameduck(ctx, None))]
    if shutil.which("nginx"):
        targets.append(Peer("nginx", "static", lambda p, c: _nginx(p, c)))
    else:
        skipped.setdefault("nginx", "nginx not installed")
    rows = []
    for p in targets:
        s = p.start(ctx)
        try:
            time.sleep(0.5)
            base_fds, base_rss = fds(s.pid), rss_kib(s.pid)
            sampler = Sampler(s.pid)
            sampler.start()
            o0 = listen_overflows()
            took, failed = asyncio.run(burst(s.port, n, deadline))
            o1 = listen_overflows()
            sampler.stop_flag.set()
            sampler.join()
        finally:
            s.stop()
        rows.append({"peer": p.name, "clients": n, "served_s": took, "failed": failed,
                     "listen_overflows": o1 - o0, "fds_before": base_fds, "peak_fds": sampler.peak_fds,
                     "rss_before_kib": base_rss, "peak_rss_kib": sampler.peak_rss})
        log(f"burst: {rows[-1]}")
    return {"clients": n, "limit": limit, "rows": rows}


def _nginx(peer, ctx):
    server = static.start_nginx(ctx.www, ctx.scratch())
    return Running(peer, server.proc, server.port)
