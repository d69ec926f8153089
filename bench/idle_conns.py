#!/usr/bin/env python3
"""Resident memory of servers holding many idle keep-alive connections.

Each server is started, its RSS read (summed over its processes), then N connections are
opened, each sends one request and reads the answer (so it is an idle keep-alive connection
from then on), and the RSS is read again. Needs: ulimit -n above N for this script (it raises
its own soft limit to the hard one).

    bench/idle_conns.py --connections 5000 \
        --server 'lameduck|target/release/lameduck serve --listen 127.0.0.1:{port} --log-level warn'
"""

import argparse
import resource
import shlex
import socket
import subprocess
import time

from benchlib import free_port, stop, tree, wait_listening


def rss_kib(pid):
    """RSS of pid and its descendants, in KiB."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def open_idle(port, n, path="/", wrap=None, timeout=10.0):
    """`n` keep-alive connections to 127.0.0.1:port, each after one answered request for
    `path` (so each is idle from then on); the caller closes them. `wrap(socket)` may turn a
    socket into a TLS one. Bounded by `timeout` per connection."""
    req = f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
            if wrap is not None:
                s = wrap(s)
            s.sendall(req)
            socks.append(s)
        for s in socks:
            got = b""
            while b"\r\n\r\n" not in got:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def idle_rss(pid, port, n, path="/", wrap=None):
    """RSS (KiB) of `pid` and its children before, and while holding, `n` idle keep-alive
    connections to 127.0.0.1:port (see `open_idle`)."""
    time.sleep(0.5)
    before = rss_kib(pid)
    socks = open_idle(port, n, path, wrap)
    try:
        time.sleep(1.0)
        return before, rss_kib(pid)
    finally:
        for s in socks:
            s.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", action="append", required=True, help="NAME|COMMAND ({port} is replaced)")
    ap.add_argument("--connections", type=int, default=5000)
    ap.add_argument("--path", default="/")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"{'server':<16} {'RSS idle KiB':>13} {'RSS with conns KiB':>19} {'per conn B':>11}")
    for spec in args.server:
        name, command = spec.split("|", 1)
        port = free_port()
        proc = subprocess.Popen(shlex.split(command.format(port=port)), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard)))
        try:
            wait_listening(port, proc)
            before, after = idle_rss(proc.pid, port, args.connections, args.path)
            per = (after - before) * 1024 / max(args.connections, 1)
            print(f"{name:<16} {before:>13} {after:>19} {per:>11.0f}")
        finally:
            stop(proc)


if __name__ == "__main__":
    main()
