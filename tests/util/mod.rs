//! Helpers for tests that run the built `lameduck` binary: start it, find its addresses in its
//! log, talk HTTP to it over raw sockets, signal it, and never leave it running.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Bound on every wait; reaching it fails the test.
pub const WAIT: Duration = Duration::from_secs(15);

/// A running `lameduck` process; killed on drop.
pub struct Lameduck {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    lines: mpsc::Receiver<String>,
    pub log: Vec<String>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_lameduck")
}

/// Runs `lameduck ARGS` to completion (bounded); returns its exit status and stderr.
pub fn run_to_end(args: &[&str]) -> (ExitStatus, String) {
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lameduck");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = wait_exit(&mut child, WAIT).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("lameduck {args:?} did not exit");
    });
    (status, reader.join().unwrap())
}

pub fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Lameduck {
    /// Starts `lameduck serve ARGS --listen 127.0.0.1:0` (plus `--admin 127.0.0.1:0` when
    /// `admin`), and waits until it says where it listens.
    pub fn serve(args: &[&str], admin: bool) -> Lameduck {
        let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
        if admin {
            all.extend(["--admin", "127.0.0.1:0"]);
        }
        all.extend_from_slice(args);
        let mut cmd = Command::new(bin());
        cmd.args(&all);
        Lameduck::spawn(cmd, admin)
    }

    /// Starts `cmd` (a `lameduck serve` command line) with stderr captured, and waits until it
    /// says where it listens (and where its admin endpoint is, when `admin`).
    pub fn spawn(cmd: Command, admin: bool) -> Lameduck {
        let mut me = Lameduck::spawn_waiting(cmd, "serving");
        if admin {
            let line = me.wait_log("admin endpoint");
            me.admin = Some(field_addr(&line));
        }
        me
    }

    /// Starts `cmd` with stderr captured, and takes its address from the first log line
    /// that contains `needle`.
    pub fn spawn_waiting(mut cmd: Command, needle: &str) -> Lameduck {
        let mut child = cmd
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lameduck");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut me = Lameduck {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            admin: None,
            lines,
            log: Vec::new(),
        };
        let serving = me.wait_log(needle);
        me.addr = field_addr(&serving);
        me
    }

    /// Waits for a log line containing `needle`; returns it.
    pub fn wait_log(&mut self, needle: &str) -> String {
        if let Some(line) = self.log.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let end = Instant::now() + WAIT;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "lameduck never logged {needle:?}; log so far:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    /// Waits until `n` log lines contain `needle`; returns them.
    pub fn wait_log_count(&mut self, needle: &str, n: usize) -> Vec<String> {
        let end = Instant::now() + WAIT;
        loop {
            let found: Vec<String> = self
                .log
                .iter()
                .filter(|l| l.contains(needle))
                .cloned()
                .collect();
            if found.len() >= n {
                return found;
            }
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.log.push(line),
                Err(_) => panic!(
                    "fewer than {n} lines with {needle:?}; log:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    /// Everything logged until the process closed its stderr.
    pub fn drain_log(&mut self) -> Vec<String> {
        while let Ok(line) = self.lines.recv_timeout(WAIT) {
            self.log.push(line);
        }
        self.log.clone()
    }

    pub fn signal(&self, signal: i32) {
        send_signal(self.child.id(), signal);
    }

    pub fn wait_exit(&mut self) -> ExitStatus {
        wait_exit(&mut self.child, WAIT).expect("lameduck did not exit in time")
    }

    pub fn get(&self, path: &str) -> Resp {
        get(self.addr, path, &[])
    }

    pub fn admin_get(&self, path: &str) -> Resp {
        get(self.admin.expect("started with --admin"), path, &[])
    }

    /// A counter or gauge (with its labels, if any, in `name`) from the admin `/metrics`.
    pub fn metric(&self, name: &str) -> u64 {
        let text = self.admin_get("/metrics").text();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing: {text}"))
    }

    /// Polls the admin `/status` until its phase is `phase`.
    pub fn wait_phase(&self, phase: &str) {
        let needle = format!("\"phase\":\"{phase}\"");
        let end = Instant::now() + WAIT;
        loop {
            let status = self.admin_get("/status");
            if String::from_utf8_lossy(&status.body).contains(&needle) {
                return;
            }
            assert!(
                Instant::now() < end,
                "phase {phase} never reached: {}",
                String::from_utf8_lossy(&status.body)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Lameduck {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[allow(unsafe_code)]
pub fn send_signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own child's.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill failed: {}", std::io::Error::last_os_error());
}

/// The `addr` field of a text (`addr=…`) or JSON (`"addr":"…"`) log line.
pub fn field_addr(line: &str) -> SocketAddr {
    let start = line
        .find("addr=")
        .map(|i| i + 5)
        .or_else(|| line.find("\"addr\":\"").map(|i| i + 8))
        .unwrap_or_else(|| panic!("no addr in {line:?}"));
    let rest = &line[start..];
    let end = rest.find([' ', '"']).unwrap_or(rest.len());
    rest[..end]
        .trim_matches('"')
        .parse()
        .unwrap_or_else(|_| panic!("bad address in {line:?}"))
}

/// One HTTP/1.1 response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s
}

/// Sends `raw` (a whole request, bytes as they are) and reads the response to EOF.
pub fn raw_request(addr: SocketAddr, raw: &[u8]) -> Resp {
    let mut s = connect(addr);
    s.write_all(raw).expect("send");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse(&buf, raw.starts_with(b"HEAD"))
}

/// `GET path` with `Connection: close` and extra headers.
pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    request(addr, "GET", path, headers)
}

pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    raw_request(addr, req.as_bytes())
}

pub fn parse(buf: &[u8], head_only: bool) -> Resp {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!(
            "no complete response ({other:?}): {:?}",
            String::from_utf8_lossy(buf)
        ),
    };
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    Resp {
        status: resp.code.unwrap(),
        headers,
        body: if head_only {
            Vec::new()
        } else {
            buf[head..].to_vec()
        },
    }
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("lameduck-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, rel: &str, content: &[u8]) -> PathBuf {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        p
    }

    pub fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Resident set size of process `pid`, in KiB (`VmRSS` in `/proc/PID/status`).
pub fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Open file descriptors of process `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .count()
}

/// Polls `f` every 50 ms until it returns true or `within` passes; returns its last answer.
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Continuous keep-alive load from real clients, counting every request: `clients` threads,
/// each sending `GET path` back to back on one connection, reconnecting when the server
/// closes it (after a `Connection: close` answer, or between requests).
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    pub counts: std::sync::Arc<LoadCounts>,
}

/// What a [`Load`] saw.
#[derive(Debug, Default)]
pub struct LoadCounts {
    /// Requests answered 200.
    pub ok: std::sync::atomic::AtomicU64,
    /// Requests sent and not answered (reset, closed, timed out) or answered other than 200.
    pub failed: std::sync::atomic::AtomicU64,
    /// Connection attempts refused (or failed to connect at all).
    pub refused: std::sync::atomic::AtomicU64,
    /// Connections closed by the server between two requests, before the next was sent.
    pub closed_between: std::sync::atomic::AtomicU64,
}

impl LoadCounts {
    pub fn get(&self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering::SeqCst;
        (
            self.ok.load(SeqCst),
            self.failed.load(SeqCst),
            self.refused.load(SeqCst),
        )
    }
}

impl Load {
    pub fn start(addr: SocketAddr, path: &str, clients: usize) -> Load {
        use std::sync::Arc;
        use std::sync::atomic::AtomicBool;
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(LoadCounts::default());
        let threads = (0..clients)
            .map(|_| {
                let stop = Arc::clone(&stop);
                let counts = Arc::clone(&counts);
                let request = format!("GET {path} HTTP/1.1\r\nHost: load\r\n\r\n");
                std::thread::spawn(move || load_client(addr, &request, &stop, &counts))
            })
            .collect();
        Load {
            stop,
            threads,
            counts,
        }
    }

    /// Stops the clients (each finishes the request it is on) and returns the counts.
    pub fn stop(self) -> (u64, u64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in self.threads {
            t.join().expect("a load client panicked");
        }
        self.counts.get()
    }
}

fn load_client(
    addr: SocketAddr,
    request: &str,
    stop: &std::sync::atomic::AtomicBool,
    counts: &LoadCounts,
) {
    use std::sync::atomic::Ordering::SeqCst;
    while !stop.load(SeqCst) {
        let stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => s,
            Err(_) => {
                counts.refused.fetch_add(1, SeqCst);
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        let mut first = true;
        while !stop.load(SeqCst) {
            if !first {
                // The server may close an idle keep-alive connection between requests: that
                // is not a failed request, the client reconnects. Only a request that was
                // sent and not answered counts as failed.
                let mut probe = [0u8; 1];
                writer.set_nonblocking(true).unwrap();
                let closed = match std::io::Read::read(&mut reader.get_mut(), &mut probe) {
                    Ok(0) => true,
                    Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                    Ok(_) => false,
                };
                writer.set_nonblocking(false).unwrap();
                if closed {
                    counts.closed_between.fetch_add(1, SeqCst);
                    break;
                }
            }
            first = false;
            if writer.write_all(request.as_bytes()).is_err() {
                counts.failed.fetch_add(1, SeqCst);
                break;
            }
            match read_one_response(&mut reader) {
                Some((200, close)) => {
                    counts.ok.fetch_add(1, SeqCst);
                    if close {
                        break;
                    }
                }
                Some((_, _)) | None => {
                    counts.failed.fetch_add(1, SeqCst);
                    break;
                }
            }
        }
    }
}

/// Reads one HTTP/1.1 response with a Content-Length body: `(status, connection: close)`.
fn read_one_response(reader: &mut BufReader<TcpStream>) -> Option<(u16, bool)> {
    let mut status_line = String::new();
    if reader.read_line(&mut status_line).ok()? == 0 {
        return None;
    }
    let status: u16 = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let mut length = 0usize;
    let mut close = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse().ok()?;
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.trim().eq_ignore_ascii_case("close");
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    Some((status, close))
}

/// Whether process `pid` is alive (and not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// A numeric field of the admin endpoint's `/status` JSON.
pub fn status_field(json: &str, key: &str) -> Option<u64> {
    let needle = format!("\"{key}\":");
    let start = json.find(&needle)? + needle.len();
    let rest = &json[start..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

/// A string field of the admin endpoint's `/status` JSON.
pub fn status_text(json: &str, key: &str) -> Option<String> {
    let needle = format!("\"{key}\":\"");
    let start = json.find(&needle)? + needle.len();
    let rest = &json[start..];
    Some(rest[..rest.find('"')?].to_owned())
}
