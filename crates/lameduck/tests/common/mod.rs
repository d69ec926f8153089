//! Shared helpers for the behavioural tests: start a real server of either flavour on
//! `127.0.0.1:0` running a line-echo handler, talk to it over real sockets, and stop it.
#![allow(dead_code, unreachable_pub)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lameduck::{Connection, Phase, Report, Shutdown, Tracker};

/// Bound on every wait in these tests; reaching it fails the test.
pub const WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    Tokio,
    Blocking,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub max_connections: usize,
    pub drain_timeout: Duration,
    pub lame_duck: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_connections: 16,
            drain_timeout: Duration::from_secs(30),
            lame_duck: Duration::ZERO,
        }
    }
}

/// Counts handlers running at once.
#[derive(Debug, Default)]
pub struct Probe {
    pub active: AtomicUsize,
    pub max: AtomicUsize,
}

pub struct ProbeGuard(Arc<Probe>);

impl Probe {
    fn enter(self: &Arc<Self>) -> ProbeGuard {
        let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        ProbeGuard(Arc::clone(self))
    }
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the echo handler does with one line: `panic` panics, `drain?` answers whether the
/// server is draining, `wait-drain` answers `bye` once the server drains and closes, anything
/// else is echoed.
enum Reply {
    Echo,
    Panic,
    Draining,
    WaitDrain,
}

fn reply_for(line: &str) -> Reply {
    match line.trim_end() {
        "panic" => Reply::Panic,
        "drain?" => Reply::Draining,
        "wait-drain" => Reply::WaitDrain,
        _ => Reply::Echo,
    }
}

async fn echo_async(
    stream: tokio::net::TcpStream,
    conn: Connection,
    probe: Arc<Probe>,
) -> io::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let _active = probe.enter();
    let (read, mut write) = stream.into_split();
    let mut read = tokio::io::BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        if read.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        match reply_for(&line) {
            Reply::Echo => write.write_all(line.as_bytes()).await?,
            Reply::Panic => panic!("handler told to panic"),
            Reply::Draining => {
                write
                    .write_all(format!("{}\n", conn.is_draining()).as_bytes())
                    .await?
            }
            Reply::WaitDrain => {
                conn.draining().await;
                write.write_all(b"bye\n").await?;
                return Ok(());
            }
        }
    }
}

fn echo_blocking(
    stream: std::net::TcpStream,
    conn: Connection,
    probe: Arc<Probe>,
) -> io::Result<()> {
    let _active = probe.enter();
    let mut write = stream.try_clone()?;
    let mut read = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if read.read_line(&mut line)? == 0 {
            return Ok(());
        }
        match reply_for(&line) {
            Reply::Echo => write.write_all(line.as_bytes())?,
            Reply::Panic => panic!("handler told to panic"),
            Reply::Draining => write.write_all(format!("{}\n", conn.is_draining()).as_bytes())?,
            Reply::WaitDrain => {
                if !conn.wait_draining_deadline(Instant::now() + WAIT) {
                    return Err(io::Error::other("drain never came"));
                }
                write.write_all(b"bye\n")?;
                return Ok(());
            }
        }
    }
}

/// A server running on its own thread.
pub struct Running {
    pub addr: SocketAddr,
    pub shutdown: Shutdown,
    pub tracker: Tracker,
    pub probe: Arc<Probe>,
    result: mpsc::Receiver<Result<Report, lameduck::Error>>,
    thread: Option<JoinHandle<()>>,
}

pub fn start(flavour: Flavour, opts: Options) -> Running {
    let listener =
        lameduck::listen::bind("127.0.0.1:0".parse().unwrap()).expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().unwrap();
    let probe = Arc::new(Probe::default());
    let (tx, result) = mpsc::channel();
    let (shutdown, tracker, thread) = match flavour {
        Flavour::Tokio => {
            let server = lameduck::Server::new()
                .listener(listener)
                .max_connections(opts.max_connections)
                .drain_timeout(opts.drain_timeout)
                .lame_duck(opts.lame_duck);
            let (shutdown, tracker) = (server.shutdown_handle(), server.tracker());
            let probe = Arc::clone(&probe);
            let thread = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                let report =
                    rt.block_on(server.serve(move |s, c| echo_async(s, c, Arc::clone(&probe))));
                let _ = tx.send(report);
            });
            (shutdown, tracker, thread)
        }
        Flavour::Blocking => {
            let server = lameduck::blocking::Server::new()
                .listener(listener)
                .threads(opts.max_connections)
                .drain_timeout(opts.drain_timeout)
                .lame_duck(opts.lame_duck)
                .force_grace(Duration::from_secs(2));
            let (shutdown, tracker) = (server.shutdown_handle(), server.tracker());
            let probe = Arc::clone(&probe);
            let thread = std::thread::spawn(move || {
                let report = server.run(move |s, c| echo_blocking(s, c, Arc::clone(&probe)));
                let _ = tx.send(report);
            });
            (shutdown, tracker, thread)
        }
    };
    Running {
        addr,
        shutdown,
        tracker,
        probe,
        result,
        thread: Some(thread),
    }
}

impl Running {
    /// Waits for `run`/`serve` to return, and for its thread to end.
    pub fn report(&mut self) -> Report {
        let report = self
            .result
            .recv_timeout(WAIT)
            .expect("server did not stop in time")
            .expect("server failed");
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread panicked");
        }
        report
    }

    pub fn wait_phase(&self, phase: Phase) -> Phase {
        self.shutdown
            .wait_for_deadline(phase, Instant::now() + WAIT)
            .unwrap_or_else(|| panic!("phase {phase} not reached; at {}", self.shutdown.phase()))
    }

    /// Waits until the server has accepted `n` connections in all.
    pub fn wait_accepted(&self, n: u64) {
        wait_until(
            || self.tracker.accepted() >= n,
            "connections to be accepted",
        );
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Never leave a server behind: force it and wait (bounded) for its thread.
        self.shutdown.force();
        if self.thread.is_some() {
            let _ = self.result.recv_timeout(WAIT);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// Joins `thread`, failing the test if it has not finished within [`WAIT`].
pub fn join_within<T>(thread: JoinHandle<T>, what: &str) -> T {
    wait_until(|| thread.is_finished(), what);
    thread
        .join()
        .unwrap_or_else(|_| panic!("{what}: the thread panicked"))
}

/// Polls `cond` every 5 ms until it holds; panics after [`WAIT`].
pub fn wait_until(mut cond: impl FnMut() -> bool, what: &str) {
    let end = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A line-oriented client over a real socket, every read bounded.
pub struct Client {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Self::try_connect(addr).expect("connect")
    }

    pub fn try_connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, WAIT)?;
        stream.set_read_timeout(Some(WAIT))?;
        stream.set_write_timeout(Some(WAIT))?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Client { stream, reader })
    }

    pub fn send(&mut self, line: &str) {
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .expect("send");
    }

    pub fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read a line");
        line.trim_end().to_owned()
    }

    /// Sends `line` and expects it back.
    pub fn echo(&mut self, line: &str) {
        self.send(line);
        assert_eq!(self.read_line(), line);
    }

    /// Expects no data for `within` (the server has not taken this connection).
    pub fn expect_silence(&mut self, within: Duration) {
        self.stream.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 1];
        match self.reader.read(&mut buf) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            other => panic!("expected silence, got {other:?}"),
        }
        self.stream.set_read_timeout(Some(WAIT)).unwrap();
    }

    /// Expects the server to close the connection (EOF or reset).
    pub fn expect_closed(&mut self) {
        let mut buf = [0u8; 64];
        match self.reader.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            other => panic!("expected the server to close, got {other:?}"),
        }
    }
}
