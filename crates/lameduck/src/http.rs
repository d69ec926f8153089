//! HTTP on top of the tokio server (feature `http`): serve any `tower::Service` — an axum
//! `Router` included — over HTTP/1.1 and HTTP/2 (cleartext), with the server's connection
//! limit, lame duck, drain and deadline, and the timeouts a public server needs.
//!
//! Replacing `axum::serve(listener, app).await` is one line:
//!
//! ```no_run
//! # async fn run(app: axum::Router) -> Result<(), lameduck::Error> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await.map_err(lameduck::Error::Io)?;
//! let report = lameduck::http::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! How a drain goes, connection by connection:
//! - a request in flight completes; on HTTP/1 its response carries `Connection: close`, and
//!   the connection closes after it;
//! - an idle HTTP/1 keep-alive connection is not closed the instant the drain starts (its
//!   client may be sending the next request right then): for a short grace (default 1 s) a
//!   new request is still answered, with `Connection: close`; then the connection closes;
//! - an HTTP/2 connection gets GOAWAY at once, and its open streams finish;
//! - long-lived responses can watch the request's [`Connection`] extension
//!   (`conn.draining().await`) and end cleanly; whatever still runs at the deadline is cut.
//!
//! Timeouts: a client must send a complete request head within the header timeout (default
//! 10 s, counted from the connection's start or from the first byte of the next request),
//! an idle keep-alive connection is closed after the idle timeout (default 60 s), and a client
//! that stops reading while the server writes is cut after the write timeout (default 60 s).

use std::error::Error as StdError;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONNECTION, HeaderValue};
use http::{Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::connection::Connection;
use crate::error::Error;
use crate::report::Report;
use crate::server::{IntoListener, Overload, Server};
use crate::shutdown::{Phase, Shutdown};
use crate::tracker::Tracker;

type BoxError = Box<dyn StdError + Send + Sync>;

/// Default time a client has to send a complete request head.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time an idle keep-alive connection is kept open.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time a write may stall (the client not reading) before the connection is cut.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default grace an idle HTTP/1 keep-alive connection gets when the drain starts.
pub const DEFAULT_KEEP_ALIVE_GRACE: Duration = Duration::from_secs(1);
/// Default largest request head (request line and headers), in bytes.
pub const DEFAULT_MAX_HEADER_SIZE: usize = 64 * 1024;

/// The answer a shed connection gets under [`Overload::Shed`].
const SHED_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 20\r\nConnection: close\r\n\r\nserver at capacity.\n";

/// Serves `service` on `listener` until shutdown; see [`Serve`] for the options.
///
/// Await the returned value (or call [`Serve::run`]) to run the server. When the service
/// returns an error for a request, that connection is closed (as hyper does); others go on.
/// An axum `Router` never returns one.
pub fn serve<S>(listener: impl IntoListener, service: S) -> Serve<S> {
    Serve {
        server: Server::new()
            .listener(listener)
            .shed_response(SHED_RESPONSE),
        service,
        timeouts: Timeouts {
            header: Some(DEFAULT_HEADER_TIMEOUT),
            idle: Some(DEFAULT_IDLE_TIMEOUT),
            write: Some(DEFAULT_WRITE_TIMEOUT),
        },
        keep_alive_grace: DEFAULT_KEEP_ALIVE_GRACE,
        max_header_size: DEFAULT_MAX_HEADER_SIZE,
    }
}

/// An HTTP server under construction; await it to run it.
#[must_use = "a server does nothing until it is awaited"]
pub struct Serve<S> {
    server: Server,
    service: S,
    timeouts: Timeouts,
    keep_alive_grace: Duration,
    max_header_size: usize,
}

impl<S> fmt::Debug for Serve<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serve")
            .field("server", &self.server)
            .field("timeouts", &self.timeouts)
            .field("keep_alive_grace", &self.keep_alive_grace)
            .field("max_header_size", &self.max_header_size)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug)]
struct Timeouts {
    header: Option<Duration>,
    idle: Option<Duration>,
    write: Option<Duration>,
}

impl<S> Serve<S> {
    /// Adds another listener.
    pub fn listener(mut self, listener: impl IntoListener) -> Self {
        self.server = self.server.listener(listener);
        self
    }

    /// At most `n` connections at once; what happens past it is the [`overload`] policy.
    ///
    /// [`overload`]: Self::overload
    pub fn max_connections(mut self, n: usize) -> Self {
        self.server = self.server.max_connections(n);
        self
    }

    /// [`Overload::Wait`] (default: extra clients wait in the kernel backlog) or
    /// [`Overload::Shed`] (they get `503 Service Unavailable` with `Retry-After` at once).
    pub fn overload(mut self, policy: Overload) -> Self {
        self.server = self.server.overload(policy);
        self
    }

    /// How long the drain may last before remaining connections are cut.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.server = self.server.drain_timeout(timeout);
        self
    }

    /// How long to keep accepting and serving after shutdown is triggered, while
    /// [`Readiness`] already says not ready.
    pub fn lame_duck(mut self, period: Duration) -> Self {
        self.server = self.server.lame_duck(period);
        self
    }

    /// Time a client has to send a complete request head (`None`: no limit).
    pub fn header_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.timeouts.header = timeout.into();
        self
    }

    /// Time an idle keep-alive connection is kept (`None`: no limit).
    pub fn idle_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.timeouts.idle = timeout.into();
        self
    }

    /// Time a write may stall on a client that does not read (`None`: no limit).
    pub fn write_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.timeouts.write = timeout.into();
        self
    }

    /// Grace an idle HTTP/1 keep-alive connection gets when the drain starts.
    pub fn keep_alive_grace(mut self, grace: Duration) -> Self {
        self.keep_alive_grace = grace;
        self
    }

    /// Largest request head in bytes (at least 8 KiB); larger ones get `431`.
    pub fn max_header_size(mut self, bytes: usize) -> Self {
        self.max_header_size = bytes.max(8 * 1024);
        self
    }

    /// Uses `shutdown` as the server's handle.
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.server = self.server.with_shutdown(shutdown);
        self
    }

    /// The handle that triggers and observes the shutdown.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.server.shutdown_handle()
    }

    /// What a `/ready` route should report: ready until the lame-duck period begins.
    pub fn readiness(&self) -> Readiness {
        Readiness {
            shutdown: self.server.shutdown_handle(),
        }
    }

    /// The server's connection counts.
    pub fn tracker(&self) -> Tracker {
        self.server.tracker()
    }

    /// The server's admission limit (and count of shed connections).
    pub fn admission(&self) -> crate::Admission {
        self.server.admission()
    }
}

impl<S, B> Serve<S>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    /// Serves until shutdown, drains, and returns the report.
    ///
    /// # Errors
    /// As [`Server::serve`]: only set-up failures, never a client's.
    pub async fn run(self) -> Result<Report, Error> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // Our own header and idle timeouts (in `TimedIo`) replace hyper's header timer,
            // which would otherwise also close idle keep-alive connections after 30 s.
            .header_read_timeout(None)
            .max_buf_size(self.max_header_size);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.max_header_size).unwrap_or(u32::MAX));
        let shared = Arc::new(Shared {
            builder,
            timeouts: self.timeouts,
            keep_alive_grace: self.keep_alive_grace,
        });
        let service = self.service;
        self.server
            .serve(move |stream, conn| {
                serve_connection(stream, conn, service.clone(), Arc::clone(&shared))
            })
            .await
    }
}

impl<S, B> IntoFuture for Serve<S>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Report, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

/// Whether the server should receive new traffic: `true` while running, `false` from the
/// lame-duck period on. Expose it in a readiness route so load balancers stop sending traffic
/// before the server stops accepting.
#[derive(Clone, Debug)]
pub struct Readiness {
    shutdown: Shutdown,
}

impl Readiness {
    /// A readiness view of `shutdown`.
    pub fn new(shutdown: Shutdown) -> Self {
        Readiness { shutdown }
    }

    /// `true` while the server is running and not yet in lame duck.
    pub fn is_ready(&self) -> bool {
        self.shutdown.phase() == Phase::Running
    }
}

struct Shared {
    builder: auto::Builder<TokioExecutor>,
    timeouts: Timeouts,
    keep_alive_grace: Duration,
}

/// One connection: hyper over the timed I/O, with the drain choreography around it.
async fn serve_connection<S, B>(
    stream: TcpStream,
    conn: Connection,
    service: S,
    shared: Arc<Shared>,
) -> Result<(), BoxError>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let state = Arc::new(ConnState::new(shared.timeouts));
    let io = TokioIo::new(TimedIo::new(
        stream,
        Arc::clone(&state),
        shared.timeouts.write,
    ));
    let service = LifecycleService {
        inner: service,
        conn: conn.clone(),
        state: Arc::clone(&state),
    };
    let mut connection = pin!(shared.builder.serve_connection_with_upgrades(io, service));
    let mut draining = pin!(conn.draining());
    let mut drain_seen = false;
    // Created only when the drain starts: an idle connection should cost as little as possible.
    let mut grace: Option<Pin<Box<Sleep>>> = None;
    loop {
        tokio::select! {
            result = connection.as_mut() => return result,
            _ = &mut draining, if !drain_seen => {
                drain_seen = true;
                if state.is_h2.load(Ordering::Relaxed) {
                    // GOAWAY now; open streams finish.
                    connection.as_mut().graceful_shutdown();
                } else {
                    // An idle HTTP/1 client may be sending its next request right now: give
                    // it a moment (answered with `Connection: close`) before closing.
                    grace = Some(Box::pin(tokio::time::sleep(shared.keep_alive_grace)));
                }
            }
            _ = async { grace.as_mut().expect("guarded by is_some").await }, if grace.is_some() => {
                grace = None;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// What the timed I/O and the service share about one connection.
struct ConnState {
    /// Reference point for the millisecond stamps below.
    start: Instant,
    /// Requests whose responses are not finished.
    in_flight: AtomicUsize,
    /// When the current request head started arriving (ms since `start`), or `NONE`.
    head_started_ms: AtomicU64,
    /// When the connection last finished a response (ms since `start`).
    idle_since_ms: AtomicU64,
    /// The connection speaks HTTP/2 (no header timeout between streams).
    is_h2: AtomicBool,
    timeouts: Timeouts,
}

const NONE: u64 = u64::MAX;

impl ConnState {
    fn new(timeouts: Timeouts) -> Self {
        ConnState {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            // The first request's head is due from the moment the connection is accepted.
            head_started_ms: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            is_h2: AtomicBool::new(false),
            timeouts,
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    // Relaxed throughout: each field is a self-contained value. On HTTP/1 everything runs in
    // the connection's task; on HTTP/2 response bodies are polled on stream tasks, where a
    // momentarily stale value only shifts a timeout by that moment.

    /// Bytes arrived: if the connection was idle, a new request head has started.
    fn on_read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && !self.is_h2.load(Ordering::Relaxed)
            && self.head_started_ms.load(Ordering::Relaxed) == NONE
        {
            self.head_started_ms.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    fn request_started(self: &Arc<Self>, version: Version) -> InFlight {
        if version == Version::HTTP_2 {
            self.is_h2.store(true, Ordering::Relaxed);
        }
        self.head_started_ms.store(NONE, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// When the reader must next look at the clock: `(when, Some(which timeout))` for a real
    /// deadline, or `(when, None)` for a re-check while requests are in flight (the reader is
    /// not woken when the last response finishes, so it checks back after at most one idle
    /// period instead).
    fn read_deadline(&self) -> Option<(Instant, Option<&'static str>)> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return self.timeouts.idle.map(|d| (Instant::now() + d, None));
        }
        let at = |ms: u64, d: Duration| self.start + Duration::from_millis(ms) + d;
        match self.head_started_ms.load(Ordering::Relaxed) {
            NONE => self.timeouts.idle.map(|d| {
                (
                    at(self.idle_since_ms.load(Ordering::Relaxed), d),
                    Some("idle timeout"),
                )
            }),
            started => self
                .timeouts
                .header
                .map(|d| (at(started, d), Some("header timeout"))),
        }
    }
}

/// One request in flight; dropped when its response body is finished (or abandoned).
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let state = &self.0;
        state.idle_since_ms.store(state.now_ms(), Ordering::Relaxed);
        state.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The application's service, with the connection context added to each request, and
/// `Connection: close` added to HTTP/1 responses made while the server drains.
struct LifecycleService<S> {
    inner: S,
    conn: Connection,
    state: Arc<ConnState>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for LifecycleService<S>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        let version = request.version();
        let in_flight = self.state.request_started(version);
        request.extensions_mut().insert(self.conn.clone());
        let shutdown = self.conn.shutdown().clone();
        let mut inner = self.inner.clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
            let mut response = inner.call(request).await?;
            if version <= Version::HTTP_11 && shutdown.is_draining() {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response.map(|body| TrackedBody {
                inner: body,
                _in_flight: in_flight,
            }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that marks its request finished when it is dropped.
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        _in_flight: InFlight,
    }
}

impl<B> fmt::Debug for TrackedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackedBody").finish_non_exhaustive()
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, with the header, idle and write timeouts enforced where hyper reads and
/// writes.
struct TimedIo {
    inner: TcpStream,
    state: Arc<ConnState>,
    read_timer: Pin<Box<Sleep>>,
    read_timer_at: Option<Instant>,
    write_timeout: Option<Duration>,
    /// Set while a write is stalled; created on the first stall.
    write_timer: Option<Pin<Box<Sleep>>>,
    write_stalled: bool,
}

impl TimedIo {
    fn new(inner: TcpStream, state: Arc<ConnState>, write_timeout: Option<Duration>) -> Self {
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
        TimedIo {
            inner,
            state,
            read_timer: Box::pin(tokio::time::sleep_until(far)),
            read_timer_at: None,
            write_timeout,
            write_timer: None,
            write_stalled: false,
        }
    }

    /// Called when a read is pending: fails once the applicable read deadline has passed.
    ///
    /// The timer is moved only when the deadline comes *earlier* than where it is set; when
    /// it fires for a deadline that has since moved later (every keep-alive request moves
    /// the idle deadline), it is set again then. That keeps timer-wheel updates off the
    /// per-request path.
    fn poll_read_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            let Some((deadline, what)) = self.state.read_deadline() else {
                return Poll::Pending;
            };
            if let Some(what) = what {
                if Instant::now() >= deadline {
                    return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, what));
                }
            }
            if self.read_timer_at.is_none_or(|at| deadline < at) {
                self.read_timer.as_mut().reset(deadline.into());
                self.read_timer_at = Some(deadline);
            }
            ready!(self.read_timer.as_mut().poll(cx));
            // Fired: look at the state again (the deadline may have moved, or passed).
            self.read_timer_at = None;
        }
    }

    /// Wraps one write-side poll: a write that stays pending past the write timeout fails.
    fn poll_write_side<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                self.write_stalled = false;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let Some(timeout) = self.write_timeout else {
                    return Poll::Pending;
                };
                let at = tokio::time::Instant::now() + timeout;
                let timer = self
                    .write_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                if !self.write_stalled {
                    self.write_stalled = true;
                    timer.as_mut().reset(at);
                }
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "write timeout",
                )))
            }
        }
    }
}

impl AsyncRead for TimedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.state.on_read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_read_deadline(cx).map(Err),
        }
    }
}

impl AsyncWrite for TimedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.poll_write_side(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.poll_write_side(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.poll_write_side(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.poll_write_side(cx, poll)
    }
}
