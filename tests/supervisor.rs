//! Zero-downtime reloads with the real binary: `lameduck serve` supervised (the default) and
//! `lameduck run`, under continuous keep-alive load from real clients counting every request,
//! with real signals. Every wait is bounded; every process started is killed on the way out.
#![cfg(unix)]

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use libc::{SIGHUP, SIGKILL, SIGTERM};
use util::{Lameduck, Load, TempDir, WAIT, alive, send_signal, status_field, status_text};

/// The admin `/status` of a supervised server.
fn status(server: &Lameduck) -> String {
    server.admin_get("/status").text()
}

/// Polls `/status` until `f` holds; returns that status.
fn wait_status(server: &Lameduck, what: &str, f: impl Fn(&str) -> bool) -> String {
    let end = Instant::now() + WAIT;
    loop {
        let s = status(server);
        if f(&s) {
            return s;
        }
        assert!(Instant::now() < end, "never saw {what}: {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn worker_pid(s: &str) -> u64 {
    status_field(s, "pid").expect("pid in /status")
}

/// Reloads once and waits for the new worker to be the one answering.
fn reload(server: &Lameduck, generation: u64) -> u64 {
    let before = worker_pid(&status(server));
    server.signal(SIGHUP);
    let s = wait_status(server, "the new worker", |s| {
        status_field(s, "generation") == Some(generation) && worker_pid(s) != before
    });
    assert_eq!(status_text(&s, "last_reload").as_deref(), Some("ok"));
    worker_pid(&s)
}

#[test]
fn ten_reloads_under_load_fail_no_request_and_refuse_no_connection() {
    let dir = TempDir::new("sup-reload");
    dir.write("index.html", b"hello from a worker\n");
    let mut server = Lameduck::serve(&[dir.arg()], true);
    let supervisor = server.child.id();
    let first = worker_pid(&status(&server));
    assert_ne!(first, u64::from(supervisor), "the server runs in a worker");
    let load = Load::start(server.addr, "/", 16);
    std::thread::sleep(Duration::from_millis(300));
    let mut pids = vec![first];
    for generation in 1..=10 {
        pids.push(reload(&server, generation));
        std::thread::sleep(Duration::from_millis(150));
    }
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failed, refused) = load.stop();
    println!(
        "10 reloads under load: {ok} requests answered, {failed} failed, {refused} refused connects"
    );
    assert_eq!(
        (failed, refused),
        (0, 0),
        "requests failed or connects refused"
    );
    assert!(ok > 100, "the load barely ran: {ok}");
    let mut unique = pids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 11, "a new worker each time: {pids:?}");
    let s = status(&server);
    assert_eq!(
        status_field(&s, "supervisor_pid"),
        Some(u64::from(supervisor))
    );
    server.signal(SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0));
    for pid in pids {
        assert!(!alive(pid as u32), "worker {pid} is still running");
    }
}

#[test]
fn a_reload_with_a_broken_config_keeps_the_old_worker_serving() {
    let dir = TempDir::new("sup-config");
    dir.write("www/index.html", b"hello\n");
    let config = dir.write(
        "lameduck.toml",
        format!("dir = \"{}\"\n", dir.path().join("www").display()).as_bytes(),
    );
    let mut server = Lameduck::serve(&["--config", config.to_str().unwrap()], true);
    let first = worker_pid(&status(&server));
    let load = Load::start(server.addr, "/", 8);
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(&config, "drain-timeout = \"whenever\"\n").unwrap();
    server.signal(SIGHUP);
    let s = wait_status(&server, "the failed reload", |s| {
        status_text(s, "last_reload").is_some_and(|r| r.starts_with("failed"))
    });
    assert_eq!(worker_pid(&s), first, "the old worker keeps serving");
    assert_eq!(status_field(&s, "generation"), Some(0));
    server.wait_log("reload failed");
    server.wait_log("invalid duration");
    std::thread::sleep(Duration::from_millis(200));
    // Fixed: the next reload works.
    std::fs::write(
        &config,
        format!("dir = \"{}\"\n", dir.path().join("www").display()),
    )
    .unwrap();
    reload(&server, 1);
    std::thread::sleep(Duration::from_millis(200));
    let (ok, failed, refused) = load.stop();
    println!("broken-config reload under load: {ok} answered, {failed} failed, {refused} refused");
    assert_eq!((failed, refused), (0, 0));
    server.signal(SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0));
}

/// A copy of the binary in a directory of its own, so the test can replace it on disk.
fn copy_of_the_binary(dir: &TempDir) -> PathBuf {
    let path = dir.path().join("bin/lameduck");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::copy(util::bin(), &path).unwrap();
    path
}

/// Replaces `path` with a shell script, by rename, as a package upgrade would.
fn replace_with_script(path: &Path, script: &str) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn a_worker_never_ready_is_killed_and_a_replaced_binary_is_what_the_next_reload_runs() {
    let dir = TempDir::new("sup-binary");
    dir.write("www/index.html", b"hello\n");
    let exe = copy_of_the_binary(&dir);
    let mut cmd = Command::new(&exe);
    cmd.args([
        "serve",
        dir.path().join("www").to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--ready-timeout",
        "1s",
    ]);
    let mut server = Lameduck::spawn(cmd, true);
    let first = worker_pid(&status(&server));
    let load = Load::start(server.addr, "/", 8);
    std::thread::sleep(Duration::from_millis(200));

    // A new version that never becomes ready.
    let hung = dir.path().join("hung.pid");
    replace_with_script(
        &exe,
        &format!("echo $$ > {}\nexec sleep 30", hung.display()),
    );
    server.signal(SIGHUP);
    let s = wait_status(&server, "the reload to time out", |s| {
        status_text(s, "last_reload").is_some_and(|r| r.contains("not ready within"))
    });
    assert_eq!(worker_pid(&s), first, "the old worker keeps serving");
    server.wait_log("reload failed");
    let hung_pid: u32 = std::fs::read_to_string(&hung)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        util::eventually(WAIT, || !alive(hung_pid)),
        "the worker that never became ready was not killed"
    );

    // The next version is a wrapper that says it ran, then runs the real binary.
    let marker = dir.path().join("v2-ran");
    replace_with_script(
        &exe,
        &format!(
            "echo v2 > {}\nexec {} \"$@\"",
            marker.display(),
            util::bin()
        ),
    );
    let second = reload(&server, 1);
    assert_ne!(second, first);
    assert!(
        marker.exists(),
        "the reload did not run the replaced binary"
    );
    std::thread::sleep(Duration::from_millis(200));
    let (ok, failed, refused) = load.stop();
    println!(
        "never-ready reload and binary swap under load: {ok} answered, {failed} failed, {refused} refused"
    );
    assert_eq!((failed, refused), (0, 0));
    server.signal(SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0));
}

#[test]
fn kill_9_of_the_worker_is_replaced_at_once_and_no_connect_is_refused() {
    let dir = TempDir::new("sup-kill");
    dir.write("index.html", b"hello\n");
    let mut server = Lameduck::serve(&[dir.arg()], true);
    let first = worker_pid(&status(&server));
    let load = Load::start(server.addr, "/", 8);
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    send_signal(first as u32, SIGKILL);
    let s = wait_status(&server, "a new worker", |s| worker_pid(s) != first);
    let replaced = killed.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failed, refused) = load.stop();
    println!(
        "kill -9 under load: new worker answering after {replaced:?}; {ok} answered, {failed} failed (in flight on the killed worker), {refused} refused"
    );
    assert_eq!(
        refused, 0,
        "a connect was refused while the worker was down"
    );
    assert!(
        replaced < Duration::from_secs(3),
        "replaced after {replaced:?}"
    );
    assert!(
        failed <= 8,
        "more failures than requests in flight: {failed}"
    );
    assert_ne!(worker_pid(&s), first);
    server.wait_log("worker died");
    server.signal(SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0));
}

#[test]
fn sigterm_drains_and_exits_0_and_leaves_no_process() {
    let mut server = Lameduck::serve(&[], true);
    let worker = worker_pid(&status(&server)) as u32;
    assert_eq!(server.get("/").status, 200);
    server.signal(SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0));
    assert!(
        util::eventually(WAIT, || !alive(worker)),
        "the worker outlived the supervisor"
    );
    // The sockets are closed with it: connects are refused.
    assert!(std::net::TcpStream::connect(server.addr).is_err());
}

/// A supervisor killed with SIGKILL cannot remove its status directory (status file, notify
/// sockets); the next supervisor to start removes it: one whose lock file nobody holds. One
/// whose lock is held (a live supervisor, whatever its pid means here) and one without a lock
/// file are left alone. A clean stop removes its own.
#[test]
fn a_killed_supervisors_status_dir_is_removed_by_the_next_one() {
    let tmp = std::env::temp_dir();
    let me = std::process::id();
    let stale = tmp.join(format!("lameduck-supervisor-{me}-1"));
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("status"), "").unwrap();
    std::fs::write(stale.join("lock"), "").unwrap();
    let held = tmp.join(format!("lameduck-supervisor-{me}-2"));
    std::fs::create_dir_all(&held).unwrap();
    let lock = std::fs::File::create(held.join("lock")).unwrap();
    assert!(flock(&lock), "the test's own lock");
    let unlocked = tmp.join(format!("lameduck-supervisor-{me}-3"));
    std::fs::create_dir_all(&unlocked).unwrap();

    let mut server = Lameduck::serve(&[], true);
    let own = status_dir_of(server.child.id());
    assert_eq!(
        own.len(),
        1,
        "the supervisor's own status directory: {own:?}"
    );
    assert!(!stale.exists(), "a dead supervisor's directory was left");
    assert!(held.exists(), "a live supervisor's directory was removed");
    assert!(
        unlocked.exists(),
        "a directory without a lock file was removed"
    );
    drop(lock);
    std::fs::remove_dir_all(&held).unwrap();
    std::fs::remove_dir_all(&unlocked).unwrap();
    server.signal(SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0));
    assert!(!own[0].exists(), "a clean stop leaves its directory");
}

/// An exclusive `flock` on `file`, without waiting.
#[allow(unsafe_code)]
fn flock(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd as _;
    // SAFETY: flock(2) on a descriptor borrowed for the call.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// The status directories in the temporary directory that belong to `pid`.
fn status_dir_of(pid: u32) -> Vec<PathBuf> {
    let prefix = format!("lameduck-supervisor-{pid}-");
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

#[test]
fn a_second_sigterm_forces_and_exits_3() {
    let dir = TempDir::new("sup-force");
    dir.write("big.bin", &vec![7u8; 32 << 20]);
    let mut server = Lameduck::serve(&[dir.arg(), "--drain-timeout", "30s"], true);
    let worker = worker_pid(&status(&server)) as u32;
    // A download that takes its time: the drain waits for it.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    sock.connect(&server.addr.into()).unwrap();
    let mut slow: std::net::TcpStream = sock.into();
    use std::io::{Read, Write};
    slow.write_all(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 1024];
    let _ = slow.read(&mut first).unwrap();
    server.signal(SIGTERM);
    server.wait_log("draining");
    server.signal(SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(3));
    assert!(util::eventually(WAIT, || !alive(worker)));
    drop(slow);
}

#[test]
fn pid_file_names_the_supervisor_and_hup_through_it_reloads() {
    let dir = TempDir::new("sup-pidfile");
    let pid_file = dir.path().join("lameduck.pid");
    let mut cmd = Command::new(util::bin());
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--pid-file",
        pid_file.to_str().unwrap(),
    ]);
    let mut server = Lameduck::spawn_waiting(cmd, "supervisor: listening");
    // SIGHUP the moment the pid file names someone: the supervisor handles signals before
    // it writes the file (a HUP then must not kill it), and a HUP while its first worker
    // starts is kept for once that worker is ready.
    assert!(
        util::eventually(WAIT, || pid_file.exists()),
        "no pid file written"
    );
    let written: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(written, server.child.id());
    send_signal(written, SIGHUP);
    let line = server.wait_log("admin endpoint");
    server.admin = Some(util::field_addr(&line));
    let s = wait_status(&server, "the reload", |s| {
        status_field(s, "generation") == Some(1)
    });
    assert_eq!(status_text(&s, "last_reload").as_deref(), Some("ok"));
    assert!(alive(written), "the supervisor did not outlive the SIGHUP");
    server.signal(SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0));
    assert!(!pid_file.exists(), "the pid file outlived the supervisor");
}

#[test]
fn a_sighup_while_the_first_worker_starts_is_applied_once_it_is_ready() {
    let dir = TempDir::new("sup-early-hup");
    let script = python_server(&dir);
    let mut cmd = Command::new(util::bin());
    cmd.args([
        "run",
        "--listen",
        "127.0.0.1:0",
        "--ready-delay",
        "1s",
        "--",
        "python3",
    ])
    .arg(&script);
    let mut server = Lameduck::spawn_waiting(cmd, "supervisor: listening");
    server.wait_log("supervisor: worker started");
    server.signal(SIGHUP);
    server.wait_log("SIGHUP during a reload; queued");
    server.wait_log("supervisor: worker ready");
    // The HUP asked for a worker started after it: that one takes over.
    server.wait_log("new worker ready");
    server.signal(SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0));
}

/// The built example `name`.
fn example(name: &str) -> PathBuf {
    Path::new(util::bin())
        .parent()
        .unwrap()
        .join("examples")
        .join(name)
}

#[test]
fn lameduck_run_reloads_and_stops_an_axum_program() {
    let app = example("axum_router");
    assert!(app.exists(), "{} is not built", app.display());
    let mut cmd = Command::new(util::bin());
    cmd.args([
        "run",
        "--listen",
        "127.0.0.1:0",
        "--ready-timeout",
        "10s",
        "--",
    ])
    .arg(&app);
    let mut server = Lameduck::spawn_waiting(cmd, "supervisor: listening");
    server.wait_log("worker ready");
    let load = Load::start(server.addr, "/", 8);
    std::thread::sleep(Duration::from_millis(300));
    for n in 1..=3 {
        server.signal(SIGHUP);
        server.wait_log_count("new worker ready", n);
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, failed, refused) = load.stop();
    println!(
        "lameduck run + axum_router, 3 reloads under load: {ok} answered, {failed} failed, {refused} refused"
    );
    assert_eq!((failed, refused), (0, 0));
    assert!(ok > 50);
    server.signal(SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0));
}

#[test]
fn the_supervisor_speaks_sd_notify_to_systemd() {
    use std::os::unix::net::UnixDatagram;
    let dir = TempDir::new("sup-notify");
    let socket_path = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&socket_path).unwrap();
    systemd.set_read_timeout(Some(WAIT)).unwrap();
    let mut messages = Vec::new();
    let next = |what: &str, messages: &mut Vec<String>| -> String {
        loop {
            let mut buf = [0u8; 4096];
            let n = systemd
                .recv(&mut buf)
                .unwrap_or_else(|_| panic!("no {what} on NOTIFY_SOCKET; got {messages:?}"));
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            messages.push(msg.clone());
            if msg.contains(what) {
                return msg;
            }
        }
    };
    let mut cmd = Command::new(util::bin());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &socket_path);
    let mut server = Lameduck::spawn(cmd, true);
    let ready = next("READY=1", &mut messages);
    assert!(ready.contains("STATUS="), "{ready}");
    server.signal(SIGHUP);
    let reloading = next("RELOADING=1", &mut messages);
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("MONOTONIC_USEC with RELOADING=1")
        .parse()
        .unwrap();
    assert!(usec > 0);
    next("READY=1", &mut messages);
    server.signal(SIGTERM);
    next("STOPPING=1", &mut messages);
    assert_eq!(server.wait_exit().code(), Some(0));
    // The workers spoke to the supervisor, not to systemd: one READY per supervisor event.
    let readies = messages.iter().filter(|m| m.contains("READY=1")).count();
    assert_eq!(readies, 2, "{messages:?}");
}

/// A download of `path` that reads nothing after its first bytes: the worker serving it
/// stays busy (draining, after a reload) until it is cut or the client goes.
fn stalled_download(addr: std::net::SocketAddr, path: &str) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut s: std::net::TcpStream = sock.into();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    let mut first = [0u8; 1024];
    assert!(s.read(&mut first).unwrap() > 0);
    s
}

#[test]
fn old_workers_draining_at_once_are_bounded() {
    let dir = TempDir::new("sup-draining");
    dir.write("big.bin", &vec![7u8; 32 << 20]);
    let mut server = Lameduck::serve(&[dir.arg(), "--drain-timeout", "60s"], true);
    let mut downloads = Vec::new();
    let mut old = Vec::new();
    for generation in 1..=6 {
        downloads.push(stalled_download(server.addr, "/big.bin"));
        old.push(worker_pid(&status(&server)) as u32);
        reload(&server, generation);
    }
    // Six old workers would be draining; at most four may: the two oldest were forced.
    server.wait_log_count("too many workers draining; forcing the oldest", 2);
    assert!(util::eventually(WAIT, || !alive(old[0]) && !alive(old[1])));
    assert!(
        old[2..].iter().all(|&pid| alive(pid)),
        "a newer draining worker was cut"
    );
    drop(downloads);
    server.signal(SIGTERM);
    let code = server.wait_exit().code();
    assert_eq!(code, Some(0));
}

#[test]
fn lameduck_run_takes_a_program_that_never_notifies_as_ready_after_the_delay() {
    // A server that knows LISTEN_FDS but not sd_notify: Python's http.server on fd 3.
    let dir = TempDir::new("sup-delay");
    let script = python_server(&dir);
    let mut cmd = Command::new(util::bin());
    cmd.args([
        "run",
        "--listen",
        "127.0.0.1:0",
        // Long enough for Python to start and take the socket on a loaded machine (300 ms
        // was not, now and then): until it does, the old worker is still the one serving.
        "--ready-delay",
        "1s",
        "--",
        "python3",
    ])
    .arg(&script);
    let mut server = Lameduck::spawn_waiting(cmd, "supervisor: listening");
    server.wait_log("worker ready");
    // Python's http.server, now and then under a loaded test run, ends a connection after the
    // response head (seen once in CI: a 200 with no body). That is the helper, not lameduck
    // (which only hands it the socket): a second request on a new connection must then work.
    let hello = |server: &Lameduck| (0..3).any(|_| server.get("/").text() == "hello from python\n");
    assert!(hello(&server), "the Python worker never answered");
    server.signal(SIGHUP);
    server.wait_log("new worker ready");
    assert!(hello(&server), "the new Python worker never answered");
    server.signal(SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0));
}

/// A server that knows LISTEN_FDS but not sd_notify: Python's http.server on fd 3, which
/// stops on SIGTERM.
fn python_server(dir: &TempDir) -> PathBuf {
    dir.write(
        "server.py",
        br#"import http.server, os, signal, socket, sys, threading
assert os.environ["LISTEN_PID"] == str(os.getpid())
sock = socket.socket(fileno=3)
# Old and new workers share the listening socket: both wake for a connection and one gets
# it. A blocking accept would hold the other in accept() for good (deaf to SIGTERM's
# shutdown); non-blocking, socketserver shrugs the miss off.
sock.setblocking(False)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"hello from python\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H, bind_and_activate=False)
srv.socket.close()
srv.socket = sock
signal.signal(signal.SIGTERM, lambda *a: threading.Thread(target=srv.shutdown).start())
srv.serve_forever()
sys.exit(0)
"#,
    )
}

/// Children of `pid` (from /proc), with their state letters.
fn children_states(pid: u32) -> Vec<(u32, char)> {
    let list =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    list.split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let state = stat.rsplit(')').next()?.trim_start().chars().next()?;
            Some((p, state))
        })
        .collect()
}

#[test]
fn as_pid_1_the_supervisor_reaps_orphans() {
    if Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        eprintln!("no PID namespaces here (unshare failed): skipped");
        return;
    }
    let dir = TempDir::new("sup-pid1");
    let script = python_server(&dir);
    // The worker leaves an orphan behind: a `sleep` whose parent exits at once, so it is
    // handed to PID 1, the supervisor, which must reap it when it ends.
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc"])
        .arg(util::bin())
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--ready-delay",
            "200ms",
            "--",
            "sh",
            "-c",
        ])
        .arg(format!("(sleep 0.3 &); exec python3 {}", script.display()));
    let mut server = Lameduck::spawn_waiting(cmd, "supervisor: listening");
    server.wait_log("worker ready");
    let unshare = server.child.id();
    let supervisor = children_states(unshare)
        .first()
        .map(|(p, _)| *p)
        .expect("the supervisor under unshare");
    // The orphan appears as the supervisor's child, and is gone (reaped, not a zombie) once
    // it has ended.
    assert!(
        util::eventually(WAIT, || children_states(supervisor).len() >= 2),
        "the orphan never reached PID 1: {:?}",
        children_states(supervisor)
    );
    std::thread::sleep(Duration::from_millis(800));
    let left = children_states(supervisor);
    assert!(
        left.iter().all(|(_, state)| *state != 'Z'),
        "zombies under PID 1: {left:?}"
    );
    assert_eq!(left.len(), 1, "only the worker is left: {left:?}");
    assert_eq!(server.get("/").text(), "hello from python\n");
    // To the supervisor itself (unshare passes no signal on); unshare exits with it.
    send_signal(supervisor, SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0));
}
