"""Reliability scenarios that abuse the server, each reporting what it counted:

- rolling restart behind HAProxy (two backends, active health checks, `retries 0`, no
  redispatch) under continuous keep-alive load: `lameduck serve` (checks on the admin
  endpoint's /ready, SIGTERM with --lame-duck) against `http_hello axum` (TCP checks);
- slowloris: hundreds of clients trickling headers (plain) and TLS handshakes that never
  finish (`--tls-cert/--tls-key`, a self-signed openssl certificate), latency of real clients
  against the quiet figure;
- malformed requests in bulk: how each is answered (4xx, closed, other) and the server's
  RSS and descriptors before and after;
- descriptor exhaustion (`lameduck serve` started with a small RLIMIT_NOFILE);
- kill -9 of the supervised worker under load: failed requests, refused connects, time to
  the new worker.

The deterministic parts of these are asserted by tests/reliability.rs; here they are counted.
"""

import json
import os
import random
import resource
import socket
import ssl
import subprocess
import threading
import time
import urllib.request

from idle_conns import rss_kib

from .common import fds, free_port, kill_tree, log, median, stop, wait_exit, wait_listening


# ---------------------------------------------------------------- HAProxy rolling restart

HAPROXY_VARIANTS = {
    "default": "",
    "http-reuse always": "http-reuse always",
    "http-reuse never": "http-reuse never",
    "option http-server-close": "option http-server-close",
}


def haproxy_conf(d, port, backends, checks, variant):
    lines = [
        "global",
        "  maxconn 4000",
        f"  stats socket {d}/haproxy.sock mode 600 level admin",
        "defaults",
        "  mode http",
        "  timeout connect 2s",
        "  timeout client 30s",
        "  timeout server 30s",
        "  timeout http-keep-alive 10s",
        "  retries 0",
        "frontend fe",
        f"  bind 127.0.0.1:{port}",
        "  default_backend be",
        "backend be",
        "  balance roundrobin",
    ]
    if checks == "ready":
        lines.append("  option httpchk GET /ready")
    if HAPROXY_VARIANTS[variant]:
        lines.append("  " + HAPROXY_VARIANTS[variant])
    for i, (p, admin) in enumerate(backends):
        check = f"check port {admin} inter 100ms fall 1 rise 1" if admin else "check inter 100ms fall 1 rise 1"
        lines.append(f"  server s{i} 127.0.0.1:{p} {check}")
    conf = os.path.join(d, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write("\n".join(lines) + "\n")
    return conf


def haproxy_stat(d):
    """{server name: row} from `show stat` on the stats socket ('FRONTEND' and 'BACKEND' too)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        s.connect(f"{d}/haproxy.sock")
        s.sendall(b"show stat\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    lines = data.decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    return {r[1]: dict(zip(header, r)) for r in (l.split(",") for l in lines[1:] if l)}


def wait_server_state(d, name, up, bound=10.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < bound:
        st = haproxy_stat(d).get(name, {}).get("status", "")
        if st.startswith("UP") == up and not st.startswith("NOLB"):
            return time.monotonic() - t0
        time.sleep(0.02)
    raise RuntimeError(f"haproxy never marked {name} {'UP' if up else 'DOWN'}")


class Backend:
    def __init__(self, ctx, kind, lame_duck):
        self.ctx, self.kind, self.lame_duck = ctx, kind, lame_duck
        self.port = free_port()
        self.admin = free_port() if kind == "lameduck" else None
        self.proc = None

    def start(self):
        if self.kind == "lameduck":
            cmd = [self.ctx.lameduck, "serve", self.ctx.www, "--no-supervisor",
                   "--listen", f"127.0.0.1:{self.port}", "--admin", f"127.0.0.1:{self.admin}",
                   "--lame-duck", self.lame_duck, "--log-level", "warn"]
        else:
            cmd = [self.ctx.hello, "axum", f"127.0.0.1:{self.port}"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_listening(self.port, self.proc)

    def restart(self, bound=30.0):
        os.kill(self.proc.pid, 15)
        if wait_exit(self.proc, bound) is None:
            kill_tree(self.proc)
            raise RuntimeError(f"{self.kind} backend did not exit within {bound}s")
        self.start()

    def kill(self):
        if self.proc:
            kill_tree(self.proc)


def rolling_restart(ctx, kind, variant="default", passes=1, lame_duck=None):
    if lame_duck is None:
        lame_duck = "500ms" if ctx.quick else "1s"
    d = ctx.scratch()
    port = free_port()
    backends = [Backend(ctx, kind, lame_duck) for _ in range(2)]
    haproxy = client = None
    try:
        for b in backends:
            b.start()
        conf = haproxy_conf(d, port, [(b.port, b.admin) for b in backends],
                            "ready" if kind == "lameduck" else "tcp", variant)
        haproxy = subprocess.Popen(["haproxy", "-db", "-f", conf], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        wait_listening(port, haproxy)
        for i in range(2):
            wait_server_state(d, f"s{i}", True)
        # Load long enough for every restart: lameduck's takes the lame duck, then the drain
        # (idle keep-alive connections get a second), axum's a moment.
        per_restart = ((0.5 if ctx.quick else 1.0) + 2.0) if kind == "lameduck" else 1.0
        seconds = int(2 + passes * 2 * per_restart + 1.5)
        client = subprocess.Popen([ctx.drain_client, f"127.0.0.1:{port}", "16", str(seconds)],
                                  stdout=subprocess.PIPE, text=True,
                                  env=dict(os.environ, RETRY_REFUSED="1"))
        t_start = time.monotonic()
        time.sleep(1.0)
        ups = []
        for _ in range(passes):
            for i, b in enumerate(backends):
                b.restart()
                ups.append(wait_server_state(d, f"s{i}", True))
                time.sleep(0.5)
        finished_in_time = time.monotonic() - t_start < seconds - 0.5
        out, _ = client.communicate(timeout=seconds + 30)
        counts = {k: int(v) for k, v in (kv.split("=") for kv in out.split())}
        st = haproxy_stat(d)
        errs = {k: sum(int(st[f"s{i}"].get(k) or 0) for i in range(2))
                for k in ("econ", "eresp", "wretr", "wredis", "connect", "reuse")}
        five = int(st["FRONTEND"].get("hrsp_5xx") or 0)
        name = kind if kind != "lameduck" else f"lameduck serve --lame-duck {lame_duck}"
        return {"backend": name, "variant": variant, "restarts": 2 * passes,
                "requests": counts["requests"], "failed": counts["failed"], "refused": counts["refused"],
                "haproxy_5xx": five, "haproxy_server_errors": errs,
                "restarts_within_load": finished_in_time,
                "back_up_after_s": median(ups)}
    finally:
        if client and client.poll() is None:
            client.kill()
            client.wait()
        if haproxy:
            stop(haproxy, timeout=5)
        for b in backends:
            b.kill()


# ---------------------------------------------------------------------------- slowloris

def make_cert(d):
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "30", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cert, key


def timed_get(port, tls_ctx, timeout=5.0):
    """Seconds for one request on a new connection (TLS handshake included), or None."""
    t0 = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
            s = tls_ctx.wrap_socket(raw, server_hostname="localhost") if tls_ctx else raw
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            if not data.startswith(b"HTTP/1.1 200"):
                return None
    except (OSError, ssl.SSLError):
        return None
    return time.monotonic() - t0


def probe(port, tls_ctx, n, min_s=0.0):
    """At least `n` timed requests, one after the other, for at least `min_s` seconds
    (bounded: at most 20 n)."""
    t0, times = time.monotonic(), []
    while (len(times) < n or time.monotonic() - t0 < min_s) and len(times) < 20 * n:
        times.append(timed_get(port, tls_ctx))
    ok = sorted(t for t in times if t is not None)
    p = lambda q: ok[min(len(ok) - 1, int(q * len(ok)))] * 1000 if ok else None  # noqa: E731
    return {"requests": len(times), "failed": len(times) - len(ok), "p50_ms": p(0.5), "p99_ms": p(0.99)}


def _open(s):
    """Whether the server has not closed socket `s`."""
    try:
        s.setblocking(False)
        return s.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def slowloris(ctx, tls):
    n_loris = 100 if ctx.quick else 500
    n_probe = 50 if ctx.quick else 400
    d = ctx.scratch()
    port = free_port()
    cmd = [ctx.lameduck, "serve", ctx.www, "--no-supervisor", "--listen", f"127.0.0.1:{port}",
           "--log-level", "error"]
    tls_ctx = None
    if tls:
        cert, key = make_cert(d)
        cmd += ["--tls-cert", cert, "--tls-key", key]
        tls_ctx = ssl.create_default_context(cafile=cert)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    loris = []
    try:
        wait_listening(port, proc)
        quiet = probe(port, tls_ctx, n_probe)
        for _ in range(n_loris):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            # TLS: half a ClientHello record header, then nothing; plain: a head never finished.
            s.sendall(b"\x16\x03\x01\x02\x00\x01" if tls else b"GET / HTTP/1.1\r\nHost: localhost\r\nX-a: ")
            loris.append(s)
        stop_flag = threading.Event()

        def trickle():
            while not stop_flag.is_set():
                for s in loris:
                    try:
                        s.sendall(b"\x00" if tls else b"a")
                    except OSError:
                        pass
                stop_flag.wait(0.5)
        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        try:
            attacked = probe(port, tls_ctx, n_probe, 1.0 if ctx.quick else 5.0)
        finally:
            stop_flag.set()
            t.join()
        still_open = sum(1 for s in loris if _open(s))
        alive = proc.poll() is None
    finally:
        for s in loris:
            s.close()
        stop(proc, timeout=10)
    ratio = (attacked["p50_ms"] / quiet["p50_ms"]) if quiet["p50_ms"] and attacked["p50_ms"] else None
    return {"kind": "TLS handshakes never finished" if tls else "headers trickled",
            "slow_clients": n_loris, "slow_clients_open_at_end": still_open, "quiet": quiet, "attacked": attacked, "p50_ratio": ratio,
            "server_alive": alive}


# ------------------------------------------------------------------- malformed requests

def malformed_cases(rng):
    host = b"Host: x\r\n"
    return {
        "random bytes": lambda: bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 4096))),
        "oversized head (200 KiB header)": lambda: b"GET / HTTP/1.1\r\n" + host + b"X-a: " + b"a" * 200_000 + b"\r\n\r\n",
        "2,000 headers": lambda: b"GET / HTTP/1.1\r\n" + host + b"X-a: b\r\n" * 2000 + b"\r\n",
        "100 KiB URI": lambda: b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n" + host + b"\r\n",
        "invalid method": lambda: b"G@T / HTTP/1.1\r\n" + host + b"\r\n",
        "HTTP/0.9": lambda: b"GET /\r\n",
        "HTTP/9.9": lambda: b"GET / HTTP/9.9\r\n" + host + b"\r\n",
        "NUL in path": lambda: b"GET /\x00 HTTP/1.1\r\n" + host + b"\r\n",
        "header without colon": lambda: b"GET / HTTP/1.1\r\n" + host + b"Bad\r\n\r\n",
        "obs-fold": lambda: b"GET / HTTP/1.1\r\n" + host + b"X-a: b\r\n c\r\n\r\n",
        "space before colon": lambda: b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        "broken chunked body": lambda: b"POST / HTTP/1.1\r\n" + host + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
        "chunk size overflow": lambda: b"POST / HTTP/1.1\r\n" + host + b"Transfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFF\r\nabc\r\n",
        "Content-Length + Transfer-Encoding": lambda: b"POST / HTTP/1.1\r\n" + host + b"Content-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        "duplicated Content-Length": lambda: b"GET / HTTP/1.1\r\n" + host + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nabcde",
        "unknown Transfer-Encoding": lambda: b"POST / HTTP/1.1\r\n" + host + b"Transfer-Encoding: gzip\r\n\r\nabc",
        "truncated head": lambda: b"GET / HTTP/1.1\r\nHo",
    }


def classify(port, payload, timeout):
    """'4xx' / '2xx' / '5xx' (first response's class), 'closed' (no response), 'held' (still
    open at the timeout, no response)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            try:
                s.sendall(payload)
            except OSError:
                return "closed"
            data = b""
            while b"\r\n" not in data:
                try:
                    chunk = s.recv(4096)
                except socket.timeout:
                    return "held"
                except OSError:
                    return "closed"
                if not chunk:
                    break
                data += chunk
            if not data.startswith(b"HTTP/1."):
                return "closed" if not data else "garbage"
            return data[9:10].decode() + "xx"
    except OSError:
        return "connect failed"


def malformed(ctx):
    reps = 5 if ctx.quick else 50
    port, admin = free_port(), free_port()
    proc = subprocess.Popen([ctx.lameduck, "serve", ctx.www, "--no-supervisor", "--listen", f"127.0.0.1:{port}",
                             "--admin", f"127.0.0.1:{admin}", "--header-timeout", "1s", "--log-level", "error"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_listening(port, proc)
        time.sleep(0.3)
        rss0, fds0 = rss_kib(proc.pid), fds(proc.pid)
        rng = random.Random(20261201)
        cases = malformed_cases(rng)
        counts = {}
        lock = threading.Lock()
        jobs = [(name, make()) for name, make in cases.items() for _ in range(reps)]

        def worker(chunk):
            for name, payload in chunk:
                c = classify(port, payload, 3.0)
                with lock:
                    counts.setdefault(name, {}).setdefault(c, 0)
                    counts[name][c] += 1
        threads = [threading.Thread(target=worker, args=(jobs[i::16],)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        alive = proc.poll() is None
        end = time.monotonic() + 10
        while fds(proc.pid) > fds0 + 2 and time.monotonic() < end:
            time.sleep(0.1)
        rss1, fds1 = rss_kib(proc.pid), fds(proc.pid)
        served = timed_get(port, None) is not None
    finally:
        stop(proc, timeout=10)
    total = {}
    for per in counts.values():
        for k, v in per.items():
            total[k] = total.get(k, 0) + v
    return {"cases": len(cases), "per_case": reps, "requests": len(jobs), "outcomes": total,
            "per_case_outcomes": counts, "server_alive": alive, "served_after": served,
            "rss_kib": [rss0, rss1], "fds": [fds0, fds1]}


# ----------------------------------------------------------------- descriptor exhaustion

def fd_exhaustion(ctx):
    limit, clients = 64, (150 if ctx.quick else 400)
    port = free_port()

    def lower():
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    proc = subprocess.Popen([ctx.lameduck, "serve", ctx.www, "--no-supervisor", "--listen", f"127.0.0.1:{port}",
                             "--log-level", "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=lower)
    held = []
    try:
        wait_listening(port, proc)
        for _ in range(clients):
            try:
                held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            except OSError:
                break
        for s in held:
            try:
                s.sendall(b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n")
            except OSError:
                pass
        time.sleep(1.0)
        peak = fds(proc.pid)
        outcome = {}
        for s in held:
            s.setblocking(False)
            try:
                data = s.recv(4096)
                k = (data[9:12].decode() if data.startswith(b"HTTP/1.1") else "closed")
            except BlockingIOError:
                k = "waiting (backlog)"
            except OSError:
                k = "closed"
            outcome[k] = outcome.get(k, 0) + 1
        for s in held:
            s.close()
        held = []
        end = time.monotonic() + 10
        served = False
        while time.monotonic() < end and not served:
            served = timed_get(port, None) is not None
            time.sleep(0.05)
        alive = proc.poll() is None
    finally:
        for s in held:
            s.close()
        stop(proc, timeout=10)
    return {"rlimit_nofile": limit, "clients": clients, "peak_fds": peak, "outcomes": outcome,
            "server_alive": alive, "served_after": served}


# ------------------------------------------------------------------- kill -9 of a worker

def admin_pid(admin):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=1) as r:
        return json.load(r)["pid"]


def kill9(ctx):
    kills = 1 if ctx.quick else 5
    interval = 1.5
    port, admin = free_port(), free_port()
    proc = subprocess.Popen([ctx.lameduck, "serve", ctx.www, "--listen", f"127.0.0.1:{port}",
                             "--admin", f"127.0.0.1:{admin}", "--log-level", "error"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    client = None
    try:
        wait_listening(port, proc)
        wait_listening(admin, proc)
        seconds = int(1 + kills * interval + 2)
        client = subprocess.Popen([ctx.drain_client, f"127.0.0.1:{port}", "16", str(seconds)],
                                  stdout=subprocess.PIPE, text=True, env=dict(os.environ, RETRY_REFUSED="1"))
        time.sleep(1.0)
        replaced = []
        for _ in range(kills):
            old = admin_pid(admin)
            t0 = time.monotonic()
            os.kill(old, 9)
            while True:
                try:
                    if admin_pid(admin) != old:
                        break
                except OSError:
                    pass
                if time.monotonic() - t0 > 10:
                    raise RuntimeError("no new worker 10 s after kill -9")
                time.sleep(0.005)
            replaced.append(time.monotonic() - t0)
            time.sleep(max(0.0, interval - replaced[-1]))
        out, _ = client.communicate(timeout=seconds + 30)
        counts = {k: int(v) for k, v in (kv.split("=") for kv in out.split())}
    finally:
        if client and client.poll() is None:
            client.kill()
            client.wait()
        stop(proc, timeout=15)
    return {"kills": kills, "connections": 16, **counts, "new_worker_ms": median(replaced) * 1000}


def run(ctx, peers, skipped):
    import shutil
    out = {"rolling_restart": []}
    if shutil.which("haproxy"):
        variants = ["default"] if ctx.quick else list(HAPROXY_VARIANTS)
        for variant in variants:
            for kind in ("lameduck", "axum"):
                r = rolling_restart(ctx, kind, variant, passes=1 if ctx.quick else 2)
                out["rolling_restart"].append(r)
                log(f"rolling restart: {r}")
        if not ctx.quick:
            # Without a lame duck: /ready says 503 only as the listener closes.
            r = rolling_restart(ctx, "lameduck", "default", passes=2, lame_duck="0s")
            out["rolling_restart"].append(r)
            log(f"rolling restart: {r}")
    else:
        skipped.setdefault("haproxy", "haproxy not installed")
    out["slowloris"] = [slowloris(ctx, False), slowloris(ctx, True)]
    for r in out["slowloris"]:
        log(f"slowloris: {r}")
    out["malformed"] = malformed(ctx)
    log(f"malformed: {out['malformed']['outcomes']} alive={out['malformed']['server_alive']}")
    out["fd_exhaustion"] = fd_exhaustion(ctx)
    log(f"fd exhaustion: {out['fd_exhaustion']}")
    out["kill9"] = kill9(ctx)
    log(f"kill -9: {out['kill9']}")
    return out
