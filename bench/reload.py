#!/usr/bin/env python3
"""Reloads under load, side by side: lameduck serve (SIGHUP to its supervisor), nginx
(`nginx -s reload`, i.e. SIGHUP to its master) and caddy (`caddy reload --force`).

For each server: serve a small page, run `drain_client` (keep-alive clients that count failed
requests and refused connects, retrying refused ones) for the whole run, reload N times at an
even pace, and time each reload from the signal to the first answer from a new worker
(lameduck: the admin /status shows a new pid; nginx: a new worker process exists; caddy: the
reload command returns, which it does once the new config serves).

Usage: bench/reload.py [--reloads 10] [--interval 1.0] [--connections 32] [--quick]
Needs: target/release/lameduck and target/release/drain_client built; nginx and caddy
installed (`apt-get install -y nginx caddy`).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
from benchlib import free_port, stop, wait_listening  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAMEDUCK = os.path.join(ROOT, "target/release/lameduck")
CLIENT = os.path.join(ROOT, "target/release/drain_client")


def children(pid):
    """Child pids of `pid`."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return set(int(p) for p in f.read().split())
    except OSError:
        return set()


class Lameduck:
    name = "lameduck serve"

    def __init__(self, www, tmp):
        self.port, self.admin = free_port(), free_port()
        self.proc = subprocess.Popen(
            [LAMEDUCK, "serve", www, "--listen", f"127.0.0.1:{self.port}",
             "--admin", f"127.0.0.1:{self.admin}", "--log-level", "warn"],
            start_new_session=True)
        wait_listening(self.port, self.proc)
        self.pid_now()

    def pid_now(self):
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/status", timeout=1) as r:
                    return json.load(r)["pid"]
            except OSError:
                time.sleep(0.02)
        raise SystemExit("lameduck's admin endpoint never answered")

    def reload(self):
        before = self.pid_now()
        t0 = time.monotonic()
        os.kill(self.proc.pid, 1)
        while self.pid_now() == before:
            if time.monotonic() - t0 > 30:
                raise SystemExit("lameduck never switched to a new worker")
            time.sleep(0.002)
        return time.monotonic() - t0

    def stop(self):
        stop(self.proc)


class Nginx:
    name = "nginx -s reload"

    def __init__(self, www, tmp):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(dir=tmp)
        self.proc, self.conf = benchlib.start_nginx(
            self.dir, f"server {{ listen 127.0.0.1:{self.port}; root {www}; }}", self.port)

    def reload(self):
        before = children(self.proc.pid)
        t0 = time.monotonic()
        subprocess.run(["nginx", "-e", f"{self.dir}/error.log", "-c", self.conf, "-s", "reload"],
                       check=True)
        while not (children(self.proc.pid) - before):
            if time.monotonic() - t0 > 30:
                raise SystemExit("nginx never started new workers")
            time.sleep(0.002)
        return time.monotonic() - t0

    def stop(self):
        stop(self.proc)


class Caddy:
    name = "caddy reload"

    def __init__(self, www, tmp):
        self.port, self.admin = free_port(), free_port()
        self.dir = tempfile.mkdtemp(dir=tmp)
        self.conf = os.path.join(self.dir, "Caddyfile")
        with open(self.conf, "w") as f:
            f.write(f"""{{
  admin 127.0.0.1:{self.admin}
  auto_https off
}}
http://127.0.0.1:{self.port} {{
  root * {www}
  file_server
}}
""")
        env = dict(os.environ, XDG_DATA_HOME=self.dir, XDG_CONFIG_HOME=self.dir, HOME=self.dir)
        self.env = env
        self.proc = subprocess.Popen(
            ["caddy", "run", "--config", self.conf, "--adapter", "caddyfile"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
            start_new_session=True)
        wait_listening(self.port, self.proc)

    def reload(self):
        t0 = time.monotonic()
        subprocess.run(["caddy", "reload", "--force", "--config", self.conf, "--adapter",
                        "caddyfile", "--address", f"127.0.0.1:{self.admin}"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env=self.env)
        return time.monotonic() - t0

    def stop(self):
        stop(self.proc)


def run_one(kind, www, tmp, args):
    server = kind(www, tmp)
    try:
        seconds = int(args.reloads * args.interval + 2)
        client = subprocess.Popen(
            [CLIENT, f"127.0.0.1:{server.port}", str(args.connections), str(seconds)],
            stdout=subprocess.PIPE, text=True, env=dict(os.environ, RETRY_REFUSED="1"))
        time.sleep(1.0)
        times = []
        for _ in range(args.reloads):
            times.append(server.reload())
            time.sleep(max(0.0, args.interval - times[-1]))
        out, _ = client.communicate(timeout=seconds + 30)
        counts = dict(kv.split("=") for kv in out.split())
        return {k: int(v) for k, v in counts.items()}, times
    finally:
        server.stop()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reloads", type=int, default=10)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--quick", action="store_true", help="two reloads each, for CI")
    args = p.parse_args()
    if args.quick:
        args.reloads, args.interval = 2, 0.5
    kinds = [Lameduck]
    for tool, kind in (("nginx", Nginx), ("caddy", Caddy)):
        if shutil.which(tool):
            kinds.append(kind)
        else:
            print(f"({tool} not installed: skipped)")
    tmp = tempfile.mkdtemp(prefix="lameduck-reload-")
    try:
        www = os.path.join(tmp, "www")
        os.makedirs(www)
        with open(os.path.join(www, "index.html"), "w") as f:
            f.write("<h1>hello</h1>\n")
        os.chmod(tmp, 0o755)
        rows = []
        for kind in kinds:
            counts, times = run_one(kind, www, tmp, args)
            rows.append((kind.name, counts, times))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{args.reloads} reloads, {args.connections} keep-alive clients, one every {args.interval}s\n")
    print("| server | requests | failed requests | refused connects | reload to new worker (median) |")
    print("|---|---|---|---|---|")
    for name, c, times in rows:
        print(f"| {name} | {c['requests']} | {c['failed']} | {c['refused']} | "
              f"{statistics.median(times) * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
