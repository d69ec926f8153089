"""A connection burst: 5,000 clients (--quick: 1,000) connect at once, each sends one
`Connection: close` request for a 90 B file and reads the answer, against `lameduck serve
--max-connections 1000` (--quick: 200), against `lameduck serve` at its default limit, and
against nginx (two workers, its benchlib configuration) for reference.

Counted: time until every client is served, clients that failed, listen-queue overflows (the
`TcpExtListenOverflows` delta that `nstat -az TcpExtListenOverflows` shows, read from
/proc/net/netstat; machine-wide, so other traffic on the machine would count too), and the
peak of the server's open descriptors and RSS (/proc sampled every 10 ms)."""

import errno
import selectors
import socket
import shutil
import subprocess
import threading
import time

from idle_conns import rss_kib

from .common import Peer, Running, fds, free_port, log, wait_listening
import static


def listen_overflows():
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            row = dict(zip(names.split()[1:], values.split()[1:]))
            return int(row.get("ListenOverflows", 0))
    return 0


def burst(port, n, deadline):
    """`n` clients, each connecting and sending its request the moment its connect completes
    (non-blocking sockets, one selector), then reading its answer to the end. Returns (seconds
    until every client was served or gave up, clients that failed)."""
    req = b"GET /index.html HTTP/1.1\r\nHost: burst\r\nConnection: close\r\n\r\n"
    sel = selectors.DefaultSelector()
    state = {}
    failed = 0
    t0 = time.monotonic()
    try:
        for _ in range(n):
            s = socket.socket()
            s.setblocking(False)
            err = s.connect_ex(("127.0.0.1", port))
            if err not in (0, errno.EINPROGRESS):
                s.close()
                failed += 1
                continue
            state[s] = {"sent": False, "data": b""}
            sel.register(s, selectors.EVENT_WRITE)
        while state and time.monotonic() - t0 < deadline:
            for key, events in sel.select(timeout=0.5):
                s, st = key.fileobj, state[key.fileobj]
                try:
                    if not st["sent"]:
                        if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                            raise OSError("connect failed")
                        s.send(req)
                        st["sent"] = True
                        sel.modify(s, selectors.EVENT_READ)
                        continue
                    chunk = s.recv(65536)
                    if chunk:
                        st["data"] += chunk
                        continue
                    ok = st["data"].startswith(b"HTTP/1.1 200")
                except OSError:
                    ok = False
                failed += 0 if ok else 1
                sel.unregister(s)
                s.close()
                del state[s]
        failed += len(state)
        return time.monotonic() - t0, failed
    finally:
        for s in state:
            s.close()
        sel.close()


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
            took, failed = burst(s.port, n, deadline)
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
