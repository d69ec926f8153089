"""Helpers shared by the benchmark scripts: free ports, waiting for a server, stopping it, and
reading a server's process tree from /proc."""

import os
import signal
import socket
import subprocess
import time


def free_port():
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc=None, timeout=20.0):
    """Waits until something accepts on 127.0.0.1:port; fails if `proc` exits first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"server exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on port {port} after {timeout}s")


def stop(proc, timeout=40):
    """SIGTERM to the server's process group, then SIGKILL if it does not exit in time."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def nginx_conf(d, servers, types="text/html html; application/octet-stream bin;"):
    """An nginx.conf in directory `d` close to lameduck serve's defaults (two workers,
    keep-alive, sendfile, no access log), with `servers` (the `server { ... }` blocks);
    returns its path."""
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_timeout 60s;
  keepalive_requests 1000000;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};
  uwsgi_temp_path {d}; scgi_temp_path {d};
  types {{ {types} }}
  {servers}
}}
""")
    return conf


def start_nginx(d, servers, port):
    """Runs nginx in the foreground with `nginx_conf(d, servers)`; waits for `port`."""
    conf = nginx_conf(d, servers)
    proc = subprocess.Popen(["nginx", "-e", f"{d}/error.log", "-c", conf, "-g", "daemon off;"],
                            start_new_session=True)
    wait_listening(port, proc)
    return proc, conf


def tree(pid):
    """pid and its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def cpu_ticks(pid):
    """CPU time (user + system, in clock ticks) of pid and its descendants."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total
