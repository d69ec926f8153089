//! The tokio flavour: one accept loop over already-bound listeners, one tracked task per
//! connection, and the lifecycle (lame duck, drain, deadline) around them.
//!
//! The loop takes an admission permit *before* it polls the listeners, so at the limit the
//! listeners are not polled and new clients wait in the kernel backlog (with
//! [`Overload::Shed`] it accepts anyway and answers them with a short canned response). Each
//! accepted
//! connection is registered with the tracker before its task is spawned. When shutdown is
//! triggered the loop keeps serving for the lame-duck period, then closes the listeners and
//! drains; at the drain deadline the remaining tasks are told to stop, and `serve` returns
//! only once every task it spawned has ended.

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinError, JoinSet};

use crate::accept::{AcceptBackoff, accepted_on};
use crate::admission::{Admission, Permit};
use crate::connection::Connection;
use crate::error::Error;
use crate::lifecycle::{Lifecycle, lifecycle_methods};
use crate::report::Report;
use crate::shutdown::{Phase, Shutdown};
use crate::tracker::ConnectionGuard;

/// While the acceptor waits at the connection limit, how often it asks idle connections
/// again to make room.
const ASK_AGAIN: Duration = Duration::from_millis(250);

/// How long tasks get to end after they were told to stop, before they are aborted.
const FORCE_GRACE: Duration = Duration::from_secs(1);
/// How far ahead the accept loop keeps a timer of its own while connections arrive (see
/// `wake_plan` in `run`): shorter than any connection's first deadline.
const WAKE_PLAN: Duration = Duration::from_secs(1);

/// A listener the tokio server can accept on: a std or a tokio `TcpListener`.
pub trait IntoListener: sealed::Sealed {
    /// Converts into a std listener in non-blocking mode.
    #[doc(hidden)]
    fn into_std_nonblocking(self) -> io::Result<std::net::TcpListener>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for std::net::TcpListener {}
    impl Sealed for tokio::net::TcpListener {}
}

impl IntoListener for std::net::TcpListener {
    fn into_std_nonblocking(self) -> io::Result<std::net::TcpListener> {
        self.set_nonblocking(true)?;
        Ok(self)
    }
}

impl IntoListener for tokio::net::TcpListener {
    fn into_std_nonblocking(self) -> io::Result<std::net::TcpListener> {
        // `into_std` leaves the socket non-blocking.
        self.into_std()
    }
}

/// A TCP server on tokio with a connection limit, a lame-duck period and a drain deadline.
///
/// ```no_run
/// # async fn run() -> Result<(), lameduck::Error> {
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// let listener = lameduck::listen::bind("127.0.0.1:7878".parse().unwrap())?;
/// let report = lameduck::Server::new()
///     .listener(listener)
///     .max_connections(100)
///     .serve(|mut stream: tokio::net::TcpStream, _conn| async move {
///         let mut buf = [0; 1024];
///         loop {
///             let n = stream.read(&mut buf).await?;
///             if n == 0 {
///                 return Ok::<_, std::io::Error>(());
///             }
///             stream.write_all(&buf[..n]).await?;
///         }
///     })
///     .await?;
/// println!("{report}");
/// # Ok(()) }
/// ```
#[must_use = "a server does nothing until `serve` is awaited"]
pub struct Server {
    listeners: Vec<Result<std::net::TcpListener, io::Error>>,
    pub(crate) lifecycle: Lifecycle,
    admission: Admission,
    overload: Overload,
    shed_response: Arc<[u8]>,
    signal: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

/// What the server does with a client that arrives when `max_connections` are already open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Overload {
    /// Do not accept: the client waits in the kernel backlog until a slot frees (TCP
    /// backpressure). The default.
    #[default]
    Wait,
    /// Accept, answer at once with the shed response (for HTTP, `503` with `Retry-After`),
    /// and close. Clients learn quickly that they should retry elsewhere.
    Shed,
}

/// Most shed connections being answered at once; past it, extra ones are closed at once.
const MAX_SHEDDING: usize = 256;
/// How long a shed connection may take to receive its answer and close.
const SHED_TIMEOUT: Duration = Duration::from_secs(1);

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("listeners", &self.listeners.len())
            .field("lifecycle", &self.lifecycle)
            .field("max_connections", &self.admission.limit())
            .finish()
    }
}

impl Default for Server {
    fn default() -> Self {
        Self::new()
    }
}

impl Server {
    /// A server with no listener yet, no connection limit, a 30 s drain timeout and no
    /// lame-duck period.
    pub fn new() -> Self {
        Server {
            listeners: Vec::new(),
            lifecycle: Lifecycle::default(),
            admission: Admission::unlimited(),
            overload: Overload::Wait,
            shed_response: Arc::from(&b""[..]),
            signal: None,
        }
    }

    /// Adds an already-bound listener (std or tokio). Call it once per listener.
    pub fn listener(mut self, listener: impl IntoListener) -> Self {
        self.listeners.push(listener.into_std_nonblocking());
        self
    }

    lifecycle_methods!(lifecycle);

    /// At most `n` connections at once; further clients wait in the kernel backlog.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.admission = Admission::new(n);
        self
    }

    /// What to do with clients past `max_connections` (default [`Overload::Wait`]).
    pub fn overload(mut self, policy: Overload) -> Self {
        self.overload = policy;
        self
    }

    /// The bytes written to a shed client before its connection is closed (default: none,
    /// the connection is just closed). Only used with [`Overload::Shed`].
    pub fn shed_response(mut self, response: impl Into<Vec<u8>>) -> Self {
        self.shed_response = Arc::from(response.into());
        self
    }

    /// Triggers the shutdown when `signal` resolves, as axum's `with_graceful_shutdown`
    /// does: `serve(...).with_graceful_shutdown(async { ctrl_c().await.ok(); })`. The
    /// server's handle is triggered (lame duck first, if set, then the drain); a future that
    /// never resolves changes nothing.
    pub fn with_graceful_shutdown(
        mut self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        self.signal = Some(Box::pin(signal));
        self
    }

    /// The server's admission limit.
    pub fn admission(&self) -> Admission {
        self.admission.clone()
    }

    /// Accepts and serves until shutdown, then drains; returns once every connection task
    /// has ended.
    ///
    /// `handler` runs once per connection on its own task, with the stream and its
    /// [`Connection`] context. An `Err` it returns is logged at debug level.
    ///
    /// A panic in the handler, whether in its synchronous part or in its future, costs that
    /// connection only; it is logged and counted in [`Report::panicked`].
    ///
    /// # Errors
    /// Fails before serving anything if there is no listener or one cannot be registered
    /// with tokio. Accept errors while serving are logged and never end the server.
    ///
    /// # Cancel safety
    /// Dropping the future (a `select!` that picked another branch) stops the server at once
    /// and leaves a truthful state: the listeners close, the lifecycle moves to
    /// [`Phase::Forced`] then [`Phase::Stopped`] (so whatever waits for either is released),
    /// and every connection task is aborted and counted as forced. Nothing drains; to drain
    /// on your own signal, use [`with_graceful_shutdown`](Self::with_graceful_shutdown) and
    /// keep awaiting.
    ///
    /// # Where it runs
    /// Awaited inside a task, the server runs in that task. Awaited by `block_on` on a
    /// multi-thread runtime (the body of `#[tokio::main]`), it runs as a task of its own, so
    /// that its accept loop is on a runtime worker rather than on the thread in `block_on`
    /// (which would cost two cross-thread wake-ups per connection). Dropping the future then
    /// still moves the lifecycle to Forced and Stopped before the drop returns; the listeners
    /// close, and the connection tasks are aborted, moments later on a worker.
    pub async fn serve<H, Fut, E>(self, handler: H) -> Result<Report, Error>
    where
        H: Fn(TcpStream, Connection) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        self.serve_with_slot(move |stream, conn, _slot| handler(stream, conn))
            .await
    }

    /// [`serve`](Self::serve), with the connection's [`Slot`] handed to the handler, so that
    /// what outlives the handler's future for that connection (an upgraded socket, HTTP/2
    /// stream tasks) keeps the connection counted, limited and drained.
    pub(crate) async fn serve_with_slot<H, Fut, E>(self, handler: H) -> Result<Report, Error>
    where
        H: Fn(TcpStream, Connection, Arc<Slot>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        // This server's own member of the (possibly shared) lifecycle handle.
        let member = self.lifecycle.shutdown.member();
        let run = self.run(member.clone(), move |stream, conn, slot| {
            // The handler is called here, in the accept loop; only its future goes to the task.
            // A panic in that call (or in a service's `clone`) is caught and counted, and
            // costs that connection only.
            // Boxed once: moved by value through the wrappers below, a large future (a hyper
            // connection is several KiB) would be stored again at every layer that awaits it.
            let id = conn.id();
            let peer = conn.peer_addr();
            let work = std::panic::catch_unwind(AssertUnwindSafe(|| {
                Box::pin(handler(stream, conn, slot))
            }))
            .ok()?;
            Some(async move {
                if let Err(e) = work.await {
                    tracing::debug!(conn = id, %peer, error = %e, "connection ended with an error");
                }
            })
        });
        on_worker(run, move || {
            // What the run's own drop does, done here at once: the task is dropped moments
            // later, on a worker.
            member.force();
            member.finish();
        })
        .await
    }

    async fn run<S, Fut>(self, shutdown: Shutdown, spawn_one: S) -> Result<Report, Error>
    where
        S: Fn(TcpStream, Connection, Arc<Slot>) -> Option<Fut>,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if self.listeners.is_empty() {
            return Err(Error::NoListener);
        }
        let mut listeners = Vec::with_capacity(self.listeners.len());
        for listener in self.listeners {
            let listener = listener
                .and_then(TcpListener::from_std)
                .map_err(Error::Listener)?;
            let addr = listener.local_addr().map_err(Error::Listener)?;
            tracing::info!(%addr, "listening");
            listeners.push((listener, addr));
        }

        // This server's own lifecycle, on the (possibly shared) handle it was given.
        let lifecycle = self.lifecycle;
        let tracker = &lifecycle.tracker;
        let group = lifecycle.shutdown.clone();
        let mut run = RunState {
            shutdown: shutdown.clone(),
            tasks: JoinSet::new(),
            finished: false,
        };
        let tasks = &mut run.tasks;
        let mut panicked = 0u64;
        let conn_panics = Arc::new(AtomicU64::new(0));

        // Ends when accepting must stop: the lame-duck period after a trigger is over, or
        // someone else moved the phase to draining or beyond.
        let stop_accepting = {
            let shutdown = shutdown.clone();
            let lame_duck = lifecycle.lame_duck;
            let signal = self.signal;
            async move {
                let on_signal = async {
                    match signal {
                        Some(signal) => {
                            signal.await;
                            tracing::info!("graceful shutdown signal received");
                            group.trigger();
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = shutdown.reached(Phase::LameDuck) => {}
                    _ = on_signal => {}
                }
                shutdown.reached(Phase::LameDuck).await;
                if shutdown.phase() == Phase::LameDuck && !lame_duck.is_zero() {
                    tracing::info!(phase = %Phase::LameDuck, period = ?lame_duck, "lame duck: not ready, still serving");
                    tokio::select! {
                        _ = tokio::time::sleep(lame_duck) => {}
                        _ = shutdown.reached(Phase::Draining) => {}
                    }
                }
            }
        };
        let mut stop_accepting = pin!(stop_accepting);

        let mut backoff = AcceptBackoff::new(listeners.len());
        let shedding = Admission::new(MAX_SHEDDING);
        let wait_for_permit = self.overload == Overload::Wait;
        let mut permit = None;
        let mut next_listener = 0usize;
        let mut asked_for_room = false;
        // A timer of this loop's own, due within WAKE_PLAN of the last accepted connection.
        // tokio's time driver wakes the thread waiting in it (a `write` to the runtime's
        // event descriptor, and a wake-up of that thread, often on another CPU) whenever a
        // timer is armed earlier than the wake-up it has planned, or when it has none
        // planned. Each connection arms its header timeout as it starts; with short
        // connections no timer is left when the driver goes to sleep, so each new
        // connection's deadline was the earliest. Measured with one request per connection:
        // such a wake-up for one connection in four; with this timer, one in twenty-five.
        // Armed only while connections arrive: an idle server has no timer and never wakes.
        let mut wake_plan = pin!(tokio::time::sleep(Duration::ZERO));
        let mut wake_plan_armed = false;
        loop {
            if permit.is_none() && wait_for_permit {
                permit = self.admission.try_acquire();
                if permit.is_none() && !asked_for_room {
                    // At the limit: idle keep-alive connections are asked to make room.
                    asked_for_room = true;
                    self.admission.ask_for_room();
                }
            }
            if permit.is_some() && asked_for_room {
                asked_for_room = false;
                self.admission.room_made();
            }
            let now = Instant::now();
            let resume = backoff.next_resume(now);
            let want_resources = backoff.waiting_for_resources(now);
            tokio::select! {
                biased;
                _ = &mut stop_accepting => break,
                Some(result) = tasks.join_next(), if !tasks.is_empty() => {
                    panicked += reap(result);
                }
                p = self.admission.acquire(), if permit.is_none() && wait_for_permit => permit = Some(p),
                // Still at the limit: ask again, for connections that were not idle yet (a
                // silent one younger than a second, a response still going out).
                _ = tokio::time::sleep(ASK_AGAIN), if asked_for_room && permit.is_none() && wait_for_permit => {
                    self.admission.ask_for_room();
                }
                // A paused listener's turn comes again.
                _ = sleep_until_opt(resume), if resume.is_some() => {}
                _ = &mut wake_plan, if wake_plan_armed => wake_plan_armed = false,
                // A returned permit is a closed socket: a descriptor is free.
                _ = self.admission.released(), if want_resources => backoff.resources_freed(),
                (idx, result) = accept_any(&listeners, &mut next_listener, &backoff, now), if permit.is_some() || !wait_for_permit => {
                    match result {
                        Ok((stream, peer)) => {
                            backoff.accepted(idx);
                            if !wake_plan_armed {
                                wake_plan_armed = true;
                                wake_plan.as_mut().reset(tokio::time::Instant::now() + WAKE_PLAN);
                            }
                            if permit.is_none() {
                                permit = self.admission.try_acquire();
                            }
                            if permit.is_none() {
                                self.admission.record_rejected();
                                tracing::debug!(%peer, "at the connection limit: shedding");
                                if let Some(slot) = shedding.try_acquire() {
                                    tasks.spawn(shed(stream, Arc::clone(&self.shed_response), slot));
                                }
                                continue;
                            }
                            if lifecycle.nodelay {
                                // Not fatal: the connection works without it.
                                let _ = stream.set_nodelay(true);
                            }
                            // Registered here, before the task exists, so that counting and
                            // waiting cannot race.
                            let guard = tracker.track();
                            let local = accepted_on(listeners[idx].1, || stream.local_addr());
                            let conn = Connection::new(guard.id(), peer, local, shutdown.clone());
                            let slot = Arc::new(Slot {
                                guard,
                                _permit: permit.take(),
                                shutdown: shutdown.clone(),
                            });
                            let Some(work) = spawn_one(stream, conn, Arc::clone(&slot)) else {
                                tracing::error!("connection handler panicked before its future started");
                                panicked += 1;
                                continue;
                            };
                            let forced = shutdown.reached(Phase::Forced);
                            // A plain task, not one in the JoinSet: the JoinSet would wake this
                            // loop (on another thread, often) every time a connection ends, which
                            // with one request per connection was a wake-up per request. The
                            // tracker already says when every connection is gone, the `forced`
                            // branch ends the task at the deadline, and panics are counted here.
                            tokio::spawn(CatchPanic {
                                inner: async move {
                                    tokio::select! {
                                        biased;
                                        _ = work => {}
                                        _ = forced => {}
                                    }
                                    drop(slot);
                                },
                                panicked: Arc::clone(&conn_panics),
                            });
                        }
                        Err(e) => backoff.failed(idx, listeners[idx].1, &e, tracker.active(), Instant::now()),
                    }
                }
            }
        }

        // Closing the listeners refuses new connections; only then is the phase Draining.
        drop(listeners);
        drop(permit);
        let (drain_start, deadline) = lifecycle.begin_drain(&shutdown);

        let mut progress = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(1),
            Duration::from_secs(1),
        );
        let mut forced_early = pin!(shutdown.reached(Phase::Forced));
        let mut deadline_timer = pin!(tokio::time::sleep_until(deadline.into()));
        let clean = loop {
            // Tasks first; then what outlives them (upgraded sockets, HTTP/2 stream tasks),
            // which holds its connection's slot until it is gone.
            if tasks.is_empty() && tracker.active() == 0 {
                break true;
            }
            tokio::select! {
                biased;
                Some(result) = tasks.join_next(), if !tasks.is_empty() => panicked += reap(result),
                _ = tracker.idle(), if tasks.is_empty() => {}
                _ = &mut forced_early => break false,
                _ = &mut deadline_timer => break false,
                _ = progress.tick() => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    tracing::info!(active = tracker.active(), deadline_in = ?left, "draining");
                }
            }
        };
        if !clean {
            shutdown.force();
            tracing::warn!(phase = %Phase::Forced, active = tracker.active(), "closing remaining connections");
            let grace = tokio::time::sleep(FORCE_GRACE);
            let mut grace = pin!(grace);
            loop {
                if tasks.is_empty() && tracker.active() == 0 {
                    break;
                }
                tokio::select! {
                    biased;
                    Some(result) = tasks.join_next(), if !tasks.is_empty() => panicked += reap(result),
                    _ = tracker.idle(), if tasks.is_empty() => {}
                    _ = &mut grace => {
                        tracing::warn!(tasks = tasks.len(), "tasks did not stop; aborting them");
                        tasks.abort_all();
                        while let Some(result) = tasks.join_next().await {
                            panicked += reap(result);
                        }
                        break;
                    }
                }
            }
        }
        run.finished = true;
        // Held by something the server cannot cut: an upgraded socket whose application no
        // longer polls it.
        let stuck = tracker.active() as u64;
        let panicked = panicked + conn_panics.load(Ordering::Relaxed);
        let report = lifecycle.finish(&shutdown, drain_start, panicked, stuck);
        Ok(report)
    }
}

/// One admitted connection's hold on the server: its tracker guard and its admission permit.
///
/// Shared between the connection's task and whatever outlives that task for the same
/// connection (an upgraded socket handed to the application, HTTP/2 stream tasks), so the
/// connection counts as open, holds its slot under the limit, and is waited for by the drain
/// until the last of them is gone.
pub(crate) struct Slot {
    guard: ConnectionGuard,
    _permit: Option<Permit>,
    /// The server's own lifecycle: a connection still open once it is forced was cut, and
    /// counts as forced when its slot is released.
    shutdown: Shutdown,
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("id", &self.guard.id())
            .finish()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Whoever held it last (the task, an upgraded socket, an HTTP/2 stream) was cut if
        // the server had been forced by then: at the deadline, on a second trigger, or because
        // its future was dropped.
        if self.shutdown.phase() >= Phase::Forced {
            self.guard.mark_forced();
        }
    }
}

/// Awaits `fut` in place when this is a task, and as a task of its own when it is awaited
/// by `block_on` on a multi-thread runtime (`#[tokio::main]`'s `main`).
///
/// The accept loop wakes for every connection. On the `block_on` thread, which is not one of
/// the runtime's workers, each of those wakes goes from a worker's I/O driver to that thread
/// and each connection task it spawns goes back through the runtime's shared queue: two
/// cross-thread wake-ups and context switches per connection. On a worker, the connection task
/// starts in the same worker's queue. Measured with `Connection: close` clients, that was
/// a third of the server's CPU time per connection.
///
/// Dropping the returned future calls `on_drop` (which moves the lifecycle on as the run's
/// own drop would) and aborts the task; the task itself, with the listeners and the connection
/// tasks it owns, is dropped moments later on a worker.
async fn on_worker<F>(fut: F, on_drop: impl FnOnce()) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let in_block_on = tokio::task::try_id().is_none()
        && tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if !in_block_on {
        return fut.await;
    }
    struct AbortOnDrop<T, D: FnOnce()>(tokio::task::JoinHandle<T>, Option<D>);
    impl<T, D: FnOnce()> Drop for AbortOnDrop<T, D> {
        fn drop(&mut self) {
            if let Some(on_drop) = self.1.take() {
                if !self.0.is_finished() {
                    on_drop();
                }
            }
            self.0.abort();
        }
    }
    let mut task = AbortOnDrop(tokio::spawn(fut), Some(on_drop));
    match (&mut task.0).await {
        Ok(output) => output,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Only our drop aborts the task; the runtime cancels it only when shutting down,
            // and then nothing is left to return to.
            Err(e) => panic!("the server's task was cancelled: {e}"),
        },
    }
}

/// What `run` must leave truthful even if its future is dropped half-way (a `select!` that
/// picked another branch): the lifecycle ends Forced then Stopped, so nothing waits forever;
/// the connection tasks end at their next poll (each watches for Forced) and count as
/// forced; the shed tasks are aborted.
struct RunState {
    shutdown: Shutdown,
    tasks: JoinSet<()>,
    finished: bool,
}

impl Drop for RunState {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        tracing::warn!(
            active = self.tasks.len(),
            "server dropped before it finished: connections cut"
        );
        self.shutdown.force();
        self.tasks.abort_all();
        self.shutdown.finish();
    }
}

/// Answers a client turned away at the limit: writes `response`, stops sending, then drains
/// what the client sent for a moment (closing with unread data would reset the connection and
/// could destroy the answer before the client reads it). Bounded by [`SHED_TIMEOUT`].
async fn shed(mut stream: TcpStream, response: Arc<[u8]>, _slot: crate::admission::Permit) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let answer = async {
        if !response.is_empty() {
            stream.write_all(&response).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 1024];
            while stream.read(&mut sink).await? > 0 {}
        }
        Ok::<_, io::Error>(())
    };
    // Either outcome ends with the socket closed; a failure only means the client left.
    let _ = tokio::time::timeout(SHED_TIMEOUT, answer).await;
}

pin_project_lite::pin_project! {
    /// A connection's task, with a panic in it caught, logged and counted instead of lost.
    struct CatchPanic<F> {
        #[pin]
        inner: F,
        panicked: Arc<AtomicU64>,
    }
}

impl<F: Future<Output = ()>> Future for CatchPanic<F> {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let this = self.project();
        let inner = this.inner;
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(poll) => poll,
            Err(_) => {
                // Relaxed: a statistic, read once every connection is gone.
                this.panicked.fetch_add(1, Ordering::Relaxed);
                tracing::error!("connection handler panicked");
                Poll::Ready(())
            }
        }
    }
}

/// Logs a finished task's failure; returns 1 if it panicked.
fn reap(result: Result<(), JoinError>) -> u64 {
    match result {
        Ok(()) => 0,
        Err(e) if e.is_panic() => {
            tracing::error!(error = %e, "connection handler panicked");
            1
        }
        Err(_) => 0,
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Accepts from whichever listener is ready first, starting the scan after the one that
/// accepted last, so no listener starves the others; listeners paused after a failure are
/// skipped.
///
/// # Cancel safety
/// Cancel safe: `poll_accept` takes a connection only when it returns it.
fn accept_any<'a>(
    listeners: &'a [(TcpListener, SocketAddr)],
    next: &'a mut usize,
    backoff: &'a AcceptBackoff,
    now: Instant,
) -> impl Future<Output = (usize, io::Result<(TcpStream, SocketAddr)>)> + 'a {
    poll_fn(move |cx| {
        let n = listeners.len();
        for i in 0..n {
            let idx = (*next + i) % n;
            if !backoff.may_accept(idx, now) {
                continue;
            }
            if let Poll::Ready(result) = listeners[idx].0.poll_accept(cx) {
                *next = (idx + 1) % n;
                return Poll::Ready((idx, result));
            }
        }
        Poll::Pending
    })
}
