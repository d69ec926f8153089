//! The blocking flavour: an acceptor that waits on "a listener is readable OR the lifecycle
//! changed" through one poller with a waker, and a bounded pool of worker threads.
//!
//! No accept timeout, no dummy self-connection, no non-blocking spin: the acceptor sleeps in
//! the poller until a client arrives, a permit comes back, or the shutdown handle changes
//! phase. Each connection takes a worker; the worker count is also the admission limit, so at
//! the limit the listeners are not polled and clients wait in the kernel backlog. A worker that
//! finishes a connection keeps its slot and takes the next waiting client itself, if there is
//! one, without a round trip through the acceptor.
//!
//! At the drain deadline the server shuts down (both directions) a clone it kept of every
//! open stream, which makes blocked reads and writes return, so the workers can be joined. A
//! handler stuck in something that is not I/O is reported and left behind after a short
//! grace, so [`Server::run`] never blocks past the deadline plus that grace.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{Shutdown as Direction, SocketAddr, TcpListener, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token, Waker};

use crate::accept::AcceptBackoff;
use crate::admission::{Admission, Permit};
use crate::connection::Connection;
use crate::error::Error;
use crate::lifecycle::{Lifecycle, lifecycle_methods};
use crate::report::Report;
use crate::shutdown::{Phase, Shutdown, instant_after};
use crate::tracker::{ConnectionGuard, Tracker};

/// Default number of worker threads.
pub const DEFAULT_THREADS: usize = 8;
/// Default per-connection read and write timeout.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time handlers get to return after their sockets were shut down at the deadline.
pub const DEFAULT_FORCE_GRACE: Duration = Duration::from_secs(1);

const WAKER: Token = Token(usize::MAX);

/// A blocking TCP server: one acceptor (the thread that calls [`run`](Self::run)) and a
/// bounded pool of worker threads, with a lame-duck period and a drain deadline.
///
/// ```no_run
/// use std::io::{BufRead, BufReader, Write};
///
/// let listener = lameduck::listen::bind("127.0.0.1:7878".parse().unwrap())?;
/// let server = lameduck::blocking::Server::new().listener(listener).threads(4);
/// let shutdown = server.shutdown_handle(); // trigger it from anywhere
/// let report = server.run(|stream, _conn| {
///     let mut writer = stream.try_clone()?;
///     for line in BufReader::new(stream).lines() {
///         writeln!(writer, "{}", line?)?;
///     }
///     Ok::<_, std::io::Error>(())
/// })?;
/// println!("{report}");
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a server does nothing until `run` is called"]
pub struct Server {
    listeners: Vec<TcpListener>,
    lifecycle: Lifecycle,
    threads: usize,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    force_grace: Duration,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("listeners", &self.listeners.len())
            .field("threads", &self.threads)
            .field("lifecycle", &self.lifecycle)
            .finish_non_exhaustive()
    }
}

impl Default for Server {
    fn default() -> Self {
        Self::new()
    }
}

impl Server {
    /// A server with no listener yet, [`DEFAULT_THREADS`] workers, 60 s read and write
    /// timeouts, a 30 s drain timeout and no lame-duck period.
    pub fn new() -> Self {
        Server {
            listeners: Vec::new(),
            lifecycle: Lifecycle::default(),
            threads: DEFAULT_THREADS,
            read_timeout: Some(DEFAULT_IO_TIMEOUT),
            write_timeout: Some(DEFAULT_IO_TIMEOUT),
            force_grace: DEFAULT_FORCE_GRACE,
        }
    }

    /// Adds an already-bound listener. Call it once per listener.
    pub fn listener(mut self, listener: TcpListener) -> Self {
        self.listeners.push(listener);
        self
    }

    lifecycle_methods!(lifecycle);

    /// The number of worker threads, which is also the most connections held at once
    /// (at least 1).
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n.max(1);
        self
    }

    /// Same as [`threads`](Self::threads): each connection occupies one worker.
    pub fn max_connections(self, n: usize) -> Self {
        self.threads(n)
    }

    /// Read timeout on each connection (`None`: wait forever).
    pub fn read_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// Write timeout on each connection (`None`: wait forever).
    pub fn write_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// How long handlers get to return after the deadline shut their sockets down, before
    /// they are reported as stuck and left behind.
    pub fn force_grace(mut self, grace: Duration) -> Self {
        self.force_grace = grace;
        self
    }

    /// Accepts and serves on the calling thread until shutdown, then drains; returns once
    /// every worker has been joined (or, past the deadline and grace, reported as stuck).
    ///
    /// `handler` runs on a worker thread once per connection. An `Err` it returns is logged
    /// at debug level; a panic is caught, counted in the report and logged, and the worker
    /// goes on serving.
    ///
    /// # Errors
    /// Fails before serving anything if there is no listener, a listener cannot be
    /// registered with the poller, or a worker thread cannot be spawned.
    pub fn run<H, E>(self, handler: H) -> Result<Report, Error>
    where
        H: Fn(TcpStream, Connection) -> Result<(), E> + Send + Sync + 'static,
        E: fmt::Display,
    {
        if self.listeners.is_empty() {
            return Err(Error::NoListener);
        }
        let mut poll = Poll::new().map_err(Error::Io)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(Error::Io)?);
        let mut listeners = Vec::with_capacity(self.listeners.len());
        for (i, listener) in self.listeners.into_iter().enumerate() {
            listener.set_nonblocking(true).map_err(Error::Listener)?;
            let addr = listener.local_addr().map_err(Error::Listener)?;
            let mut listener = mio::net::TcpListener::from_std(listener);
            poll.registry()
                .register(&mut listener, Token(i), Interest::READABLE)
                .map_err(Error::Listener)?;
            tracing::info!(%addr, "listening");
            listeners.push((listener, addr));
        }
        // This server's own lifecycle, on the (possibly shared) handle it was given.
        let lifecycle = self.lifecycle;
        let shutdown = lifecycle.shutdown.member();
        let shared = Arc::new(Shared {
            shutdown: shutdown.clone(),
            tracker: lifecycle.tracker.clone(),
            open: Mutex::new(HashMap::new()),
            listeners: RwLock::new(Some(listeners)),
            next_listener: AtomicUsize::new(0),
            read_timeout: self.read_timeout,
            write_timeout: self.write_timeout,
            nodelay: lifecycle.nodelay,
        });

        let admission = Admission::new(self.threads);
        // A failed wake means the poller is gone, and so is the acceptor: nothing to do.
        let _on_change = shutdown.on_change({
            let waker = Arc::clone(&waker);
            Arc::new(move || drop(waker.wake()))
        });
        // Returned permits wake the acceptor only while it waits for one (or for a freed
        // descriptor, or for the drain): otherwise every closed connection would cost the
        // acceptor a wake-up for nothing.
        let wake_on_release = Arc::new(AtomicBool::new(false));
        let _on_release = admission.on_release({
            let waker = Arc::clone(&waker);
            let wanted = Arc::clone(&wake_on_release);
            // The releasing side of the handshake in `AcceptCtx::accept_loop`: the permit count
            // was just decremented (in `Permit::drop`); the fence orders that write before this
            // read of the flag, as the acceptor's fence orders its flag write before its read
            // of the count. So a release is either seen by the acceptor's retry or wakes it.
            Arc::new(move || {
                fence(Ordering::SeqCst);
                if wanted.load(Ordering::SeqCst) {
                    drop(waker.wake());
                }
            })
        });

        let panicked = Arc::new(AtomicU64::new(0));
        let pool = Pool::start(
            self.threads,
            Arc::new(handler),
            Arc::clone(&shared),
            Arc::clone(&panicked),
        )?;

        let ctx = AcceptCtx {
            shared: &shared,
            admission: &admission,
            pool: &pool,
            lame_duck: lifecycle.lame_duck,
            wake_on_release: &wake_on_release,
        };
        ctx.accept_loop(&mut poll);
        wake_on_release.store(true, Ordering::SeqCst);
        let mut pool = pool;
        // No job is queued after the acceptor stops: idle workers may end now, so that joining
        // them later costs nothing of the grace.
        pool.close();

        // Closing the listeners refuses new connections; only then is the phase Draining.
        // Workers take the read lock to accept, so none can accept after this.
        let closed = shared
            .listeners
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        for (mut listener, _) in closed.into_iter().flatten() {
            // Deregistering a socket we are about to close cannot matter if it fails.
            let _ = poll.registry().deregister(&mut listener);
        }
        let (drain_start, deadline) = lifecycle.begin_drain(&shutdown);
        let clean = drain(&mut poll, &shutdown, &lifecycle.tracker, deadline);
        // One grace, shared by the handlers' return and the workers' join: `run` never takes
        // longer than the deadline plus one grace.
        let grace_end = if clean {
            // Nothing is running: the workers only have to notice the closed queue.
            instant_after(Instant::now(), self.force_grace)
        } else {
            shutdown.force();
            let streams: Vec<TcpStream> = lock(&shared.open).drain().map(|(_, s)| s).collect();
            tracing::warn!(phase = %Phase::Forced, active = streams.len(), "shutting down remaining connections");
            for stream in &streams {
                // The peer may have closed already; either way the socket ends up shut.
                let _ = stream.shutdown(Direction::Both);
            }
            drop(streams);
            let grace_end = instant_after(Instant::now(), self.force_grace);
            lifecycle.tracker.wait_idle_deadline(grace_end);
            grace_end
        };
        let stuck = pool.stop(grace_end);
        let report = lifecycle.finish(
            &shutdown,
            drain_start,
            panicked.load(Ordering::Relaxed),
            stuck,
        );
        Ok(report)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps and queues behind these locks are updated in single calls that cannot panic
    // half-way, so a poisoned lock still guards consistent data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

type Listeners = Vec<(mio::net::TcpListener, SocketAddr)>;

/// What the acceptor and the workers share.
struct Shared {
    shutdown: Shutdown,
    tracker: Tracker,
    /// A clone of every open stream, by connection id, for the deadline to shut down.
    open: Mutex<HashMap<u64, TcpStream>>,
    /// The listeners while accepting; `None` once they are closed.
    listeners: RwLock<Option<Listeners>>,
    /// Where the next worker-side accept starts its scan.
    next_listener: AtomicUsize,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    nodelay: bool,
}

impl Shared {
    /// Turns an accepted connection into a job: registered with the tracker (before any
    /// handler runs, so counting and waiting cannot race), socket options set, a clone kept
    /// for the deadline.
    fn prepare(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        local: SocketAddr,
        permit: Option<Permit>,
    ) -> Option<Job> {
        let guard = self.tracker.track();
        // On Linux `accept4` never passes the listener's non-blocking mode on; elsewhere it
        // may, and the handler wants a blocking socket.
        #[cfg(target_os = "linux")]
        let blocking = Ok(());
        #[cfg(not(target_os = "linux"))]
        let blocking = stream.set_nonblocking(false);
        let setup = blocking
            .and_then(|()| stream.set_read_timeout(self.read_timeout))
            .and_then(|()| stream.set_write_timeout(self.write_timeout))
            .and_then(|()| {
                if self.nodelay {
                    stream.set_nodelay(true)
                } else {
                    Ok(())
                }
            });
        if let Err(e) = setup {
            tracing::warn!(error = %e, %peer, "cannot set up accepted connection; closing it");
            return None;
        }
        // The clone lets the deadline shut the socket down under a blocked handler. Without
        // it (out of descriptors right now) the connection is still served rather than
        // dropped; its read and write timeouts then bound it instead.
        let kept = match stream.try_clone() {
            Ok(clone) => {
                lock(&self.open).insert(guard.id(), clone);
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, %peer, "cannot keep a clone of the connection for the deadline");
                false
            }
        };
        let local = crate::accept::accepted_on(local, || stream.local_addr());
        let conn = Connection::new(guard.id(), peer, local, self.shutdown.clone());
        Some(Job {
            stream,
            conn,
            guard,
            permit,
            kept,
        })
    }

    /// A worker that just finished a connection keeps its permit and takes the next waiting
    /// connection itself, if there is one, sparing the hand-off through the acceptor. With
    /// none waiting (or the listeners closed), the permit is returned.
    fn accept_next(&self, permit: Option<Permit>) -> Option<Job> {
        let permit = permit?;
        let listeners = self
            .listeners
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let listeners = listeners.as_ref()?;
        let n = listeners.len();
        // Rotate the starting listener, so none starves the others.
        // Relaxed: a hint for fairness, ordering nothing.
        let start = self.next_listener.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let (listener, local) = &listeners[(start + i) % n];
            // Any error (none waiting, or out of descriptors) is left to the acceptor, which
            // sorts errors and backs off.
            if let Ok((stream, peer)) = accept(listener) {
                return self.prepare(stream, peer, *local, Some(permit));
            }
        }
        None
    }
}

/// Accepts one connection as a std stream. On unix through socket2 rather than mio, whose
/// accepted sockets come out non-blocking and would cost a system call each to switch back.
#[cfg(unix)]
fn accept(listener: &mio::net::TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
    let (socket, addr) = socket2::SockRef::from(listener).accept()?;
    let peer = addr
        .as_socket()
        .ok_or_else(|| io::Error::other("accepted a connection that is not IPv4 or IPv6"))?;
    Ok((socket.into(), peer))
}

/// Accepts one connection as a std stream. On Windows mio must see the `WouldBlock` itself
/// to re-arm its readiness (it polls through AFD, not epoll), so the accept goes through mio;
/// `Shared::prepare` makes the socket blocking again.
#[cfg(not(unix))]
fn accept(listener: &mio::net::TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
    let (stream, peer) = listener.accept()?;
    Ok((stream.into(), peer))
}

struct AcceptCtx<'a> {
    shared: &'a Shared,
    admission: &'a Admission,
    pool: &'a Pool,
    lame_duck: Duration,
    wake_on_release: &'a AtomicBool,
}

impl AcceptCtx<'_> {
    /// When accepting must stop: `None` while running, the end of the lame-duck period after
    /// a trigger, or now once someone moved the phase further.
    fn stop_at(&self, now: Instant) -> Option<Instant> {
        match self.shared.shutdown.phase() {
            Phase::Running => None,
            Phase::LameDuck => {
                let since = self
                    .shared
                    .shutdown
                    .history()
                    .iter()
                    .find(|(p, _)| *p == Phase::LameDuck)
                    .map_or_else(Instant::now, |(_, at)| *at);
                Some(instant_after(since, self.lame_duck))
            }
            // `now`, not a fresh reading: the caller stops when `at <= now`, and a later
            // clock reading would never be, leaving the acceptor spinning past a force.
            _ => Some(now),
        }
    }

    fn accept_loop(&self, poll: &mut Poll) {
        let guard = self
            .shared
            .listeners
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(listeners) = guard.as_ref() else {
            return;
        };
        let mut events = Events::with_capacity(64);
        // Edge-triggered readiness: a listener stays "ready" until accept says WouldBlock.
        let mut ready = vec![true; listeners.len()];
        let mut next = 0usize;
        let mut permit: Option<Permit> = None;
        let mut backoff = AcceptBackoff::new(listeners.len());
        let mut announced_lame_duck = false;
        loop {
            let now = Instant::now();
            let stop_at = self.stop_at(now);
            if let Some(at) = stop_at {
                if at <= now {
                    return;
                }
                if !announced_lame_duck {
                    announced_lame_duck = true;
                    tracing::info!(phase = %Phase::LameDuck, period = ?self.lame_duck, "lame duck: not ready, still serving");
                }
            }
            if permit.is_none() {
                permit = self.admission.try_acquire();
            }
            if permit.is_some() {
                let n = listeners.len();
                // Start after the listener tried last, so none starves the others.
                if let Some(idx) = (0..n)
                    .map(|i| (next + i) % n)
                    .find(|&i| ready[i] && backoff.may_accept(i, now))
                {
                    next = (idx + 1) % n;
                    match accept(&listeners[idx].0) {
                        Ok((stream, peer)) => {
                            backoff.accepted(idx);
                            if let Some(job) =
                                self.shared
                                    .prepare(stream, peer, listeners[idx].1, permit.take())
                            {
                                self.pool.send(job);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready[idx] = false,
                        Err(e) => backoff.failed(
                            idx,
                            listeners[idx].1,
                            &e,
                            self.shared.tracker.active(),
                            now,
                        ),
                    }
                    continue;
                }
            }
            // A returned permit (a closed connection) wakes the poller, and ends a back-off
            // for lack of descriptors early.
            let want_release = permit.is_none() || backoff.waiting_for_resources(now);
            self.wake_on_release.store(want_release, Ordering::SeqCst);
            // Store-buffering handshake with the release hook in `Server::run`: each side
            // writes its own variable, then reads the other's. Without a SeqCst fence between
            // the write and the read on *both* sides, each may read a stale value (on a weakly
            // ordered CPU the permit count below is read with Relaxed ordering inside
            // `try_acquire`, which a SeqCst store alone does not order after it): the acceptor
            // would sleep while a permit is free, and the releaser would not wake it. With the
            // fences, either this retry sees the returned permit, or the releaser sees the flag.
            fence(Ordering::SeqCst);
            if permit.is_none() {
                permit = self.admission.try_acquire();
                if permit.is_some() {
                    continue;
                }
            }
            // Nothing to do until a listener, the waker, or a timer says otherwise.
            let timeout = [stop_at, backoff.next_resume(now)]
                .into_iter()
                .flatten()
                .min()
                .map(|at| at.saturating_duration_since(now));
            if let Err(e) = poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "poller failed; stopping the acceptor");
                    return;
                }
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => {
                        // A permit came back: a descriptor was freed, retry at once.
                        backoff.resources_freed();
                    }
                    Token(i) => ready[i] = true,
                }
            }
        }
    }
}

/// Waits for the drain to finish, logging progress each second; `false` if the deadline
/// passed or the shutdown was forced first.
fn drain(poll: &mut Poll, shutdown: &Shutdown, tracker: &Tracker, deadline: Instant) -> bool {
    let mut events = Events::with_capacity(8);
    let mut next_log = Instant::now() + Duration::from_secs(1);
    loop {
        if tracker.active() == 0 {
            return true;
        }
        let now = Instant::now();
        if now >= deadline || shutdown.phase() >= Phase::Forced {
            return false;
        }
        if now >= next_log {
            tracing::info!(active = tracker.active(), deadline_in = ?deadline - now, "draining");
            next_log += Duration::from_secs(1);
        }
        // Woken by every finished connection (its permit's return) and every phase change.
        let timeout = deadline.min(next_log).saturating_duration_since(now);
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                // Without the poller, fall back to waiting on the tracker alone.
                return tracker.wait_idle_deadline(deadline);
            }
        }
    }
}

struct Job {
    stream: TcpStream,
    conn: Connection,
    guard: ConnectionGuard,
    permit: Option<Permit>,
    /// Whether a clone of the stream is in the open-streams map.
    kept: bool,
}

/// Runs one connection's handler on the calling worker; returns the connection's permit,
/// after its guard is dropped (so that whoever the permit's return wakes sees it done).
fn run_job<H, E>(job: Job, handler: &H, shared: &Shared, panicked: &AtomicU64) -> Option<Permit>
where
    H: Fn(TcpStream, Connection) -> Result<(), E>,
    E: fmt::Display,
{
    let Job {
        stream,
        conn,
        mut guard,
        permit,
        kept,
    } = job;
    let id = conn.id();
    let peer = conn.peer_addr();
    match catch_unwind(AssertUnwindSafe(|| handler(stream, conn))) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(conn = id, %peer, error = %e, "connection ended with an error")
        }
        Err(_) => {
            // Relaxed: a statistic read after the workers are joined.
            panicked.fetch_add(1, Ordering::Relaxed);
            tracing::error!(conn = id, %peer, "connection handler panicked; the worker goes on");
        }
    }
    // If the deadline already took the clone, this finds nothing.
    if kept && lock(&shared.open).remove(&id).is_none() {
        guard.mark_forced();
    }
    drop(guard);
    permit
}

/// The worker pool: the Rust book's `ThreadPool`, with panics caught and a bounded stop.
struct Pool {
    sender: Option<mpsc::Sender<Job>>,
    workers: Vec<Option<JoinHandle<()>>>,
    done: mpsc::Receiver<usize>,
}

impl Pool {
    fn start<H, E>(
        threads: usize,
        handler: Arc<H>,
        shared: Arc<Shared>,
        panicked: Arc<AtomicU64>,
    ) -> Result<Pool, Error>
    where
        H: Fn(TcpStream, Connection) -> Result<(), E> + Send + Sync + 'static,
        E: fmt::Display,
    {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let (done_tx, done) = mpsc::channel();
        let mut workers = Vec::with_capacity(threads);
        for index in 0..threads {
            let receiver = Arc::clone(&receiver);
            let handler = Arc::clone(&handler);
            let shared = Arc::clone(&shared);
            let panicked = Arc::clone(&panicked);
            let done_tx = done_tx.clone();
            let worker = thread::Builder::new()
                .name(format!("lameduck-worker-{index}"))
                .spawn(move || {
                    loop {
                        // The guard is a temporary: the lock is released as soon as a job
                        // (or the closed channel) comes out.
                        let job = lock(&receiver).recv();
                        let Ok(mut job) = job else { break };
                        loop {
                            let permit = run_job(job, &*handler, &shared, &panicked);
                            match shared.accept_next(permit) {
                                Some(next) => job = next,
                                None => break,
                            }
                        }
                    }
                    // The receiver may be gone if `run` already returned; nothing to tell.
                    let _ = done_tx.send(index);
                })
                .map_err(Error::Io)?;
            workers.push(Some(worker));
        }
        Ok(Pool {
            sender: Some(sender),
            workers,
            done,
        })
    }

    fn send(&self, job: Job) {
        if let Some(sender) = &self.sender {
            // Workers only stop once the sender is dropped, so a send cannot fail here.
            let _ = sender.send(job);
        }
    }

    /// Closes the queue: idle workers end, busy ones end after their connection.
    fn close(&mut self) {
        drop(self.sender.take());
    }

    /// Closes the queue and joins every worker that finishes by `deadline`; returns how many
    /// did not (their threads are left behind, detached).
    fn stop(mut self, deadline: Instant) -> u64 {
        self.close();
        let mut remaining = self.workers.iter().filter(|w| w.is_some()).count();
        while remaining > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.done.recv_timeout(left) {
                Ok(index) => {
                    if let Some(worker) = self.workers[index].take() {
                        // A worker's loop catches handler panics, so it cannot have panicked.
                        let _ = worker.join();
                    }
                    remaining -= 1;
                }
                Err(_) => break,
            }
        }
        if remaining > 0 {
            tracing::error!(
                threads = remaining,
                "handlers still running after the deadline and grace; leaving them behind"
            );
        }
        remaining as u64
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.workers.len())
            .finish()
    }
}
