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
//!
//! A server that answers many requests from bytes it prepared ahead (a static-file server's
//! cache) can answer the plainest HTTP/1.1 ones itself, before hyper is involved, with a
//! [`Shortcut`] ([`Serve::shortcut`]); everything else is the service's.

use std::error::Error as StdError;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::io::{self, Read as _, Write as _};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::connection::Connection;
use crate::error::Error;
use crate::lifecycle::lifecycle_methods;
use crate::report::Report;
use crate::server::{IntoListener, Overload, Server, Slot};
use crate::shutdown::{Phase, Shutdown, instant_after};

#[cfg(target_os = "linux")]
mod cork;
#[cfg(target_os = "linux")]
mod sendfile;
mod shortcut;
#[cfg(target_os = "linux")]
pub use sendfile::{MAX_CHUNK as SENDFILE_MAX_CHUNK, SendFile};
pub use shortcut::{ShortAnswer, ShortRequest, Shortcut};

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
/// Default most HTTP/2 streams open at once on one connection (nginx's figure).
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 128;
/// Most bytes hyper buffers for one HTTP/2 stream beyond what the client's window lets out.
const MAX_SEND_BUF: usize = 128 * 1024;

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
            upgraded_idle: None,
        },
        keep_alive_grace: DEFAULT_KEEP_ALIVE_GRACE,
        max_header_size: DEFAULT_MAX_HEADER_SIZE,
        max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
        close_idle_at_limit: true,
        sendfile: false,
        shortcut: None,
        tls: None,
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
    max_concurrent_streams: u32,
    close_idle_at_limit: bool,
    sendfile: bool,
    shortcut: Option<Arc<dyn Shortcut>>,
    tls: Option<TlsSetup>,
}

impl<S> fmt::Debug for Serve<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serve")
            .field("server", &self.server)
            .field("timeouts", &self.timeouts)
            .field("keep_alive_grace", &self.keep_alive_grace)
            .field("max_header_size", &self.max_header_size)
            .field("max_concurrent_streams", &self.max_concurrent_streams)
            .field("close_idle_at_limit", &self.close_idle_at_limit)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug)]
struct Timeouts {
    header: Option<Duration>,
    idle: Option<Duration>,
    write: Option<Duration>,
    upgraded_idle: Option<Duration>,
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

    lifecycle_methods!(server.lifecycle);

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

    /// Time a write may stall on a client that does not read (`None`: no limit). On HTTP/2 it
    /// also bounds how long one stream's response may wait for the client's flow-control
    /// window: past it the stream is reset.
    pub fn write_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.timeouts.write = timeout.into();
        self
    }

    /// Time an upgraded connection (a WebSocket) may go without receiving a byte (`None`, the
    /// default: no limit; WebSocket protocols keep themselves alive with pings). The header
    /// timeout never applies after the `101 Switching Protocols`.
    pub fn upgraded_idle_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.timeouts.upgraded_idle = timeout.into();
        self
    }

    /// Most HTTP/2 streams a client may have open at once on one connection (default 128).
    /// With the write timeout, which resets a stream whose response cannot move (the client
    /// keeps its flow-control window shut), it bounds what one connection can hold.
    pub fn max_concurrent_streams(mut self, n: u32) -> Self {
        self.max_concurrent_streams = n.max(1);
        self
    }

    /// Whether idle keep-alive connections are closed when the server is at its connection
    /// limit and clients are waiting (default `true`, as nginx does). Without it, a client
    /// holding idle connections can keep everyone else waiting for the idle timeout.
    pub fn close_idle_at_limit(mut self, on: bool) -> Self {
        self.close_idle_at_limit = on;
        self
    }

    /// Offers the [`SendFile`] extension on plain-TCP HTTP/1 requests (Linux; default off),
    /// so response bodies can have the kernel send file ranges with `sendfile(2)`. Off, no
    /// request pays for the extension.
    pub fn sendfile(mut self, on: bool) -> Self {
        self.sendfile = on;
        self
    }

    /// Answers the plainest HTTP/1.1 requests (`GET` or `HEAD`, no body, complete in one
    /// read) with `shortcut` when it has an answer, before hyper and the service are
    /// involved: for answers prepared ahead (a cached file's bytes and headers), most of what
    /// a request costs. Every other request, and each one it declines, is the service's; see
    /// [`Shortcut`] for which requests it is offered. After a request it declines, the
    /// connection comes back to it (after eight in a row, the rest of the connection is
    /// hyper's); after one it is not offered (a body, HTTP/1.0, a header it cannot vouch
    /// for), the rest of the connection is hyper's. Default: none.
    pub fn shortcut(mut self, shortcut: impl Shortcut) -> Self {
        self.shortcut = Some(Arc::new(shortcut));
        self
    }

    /// Serves HTTPS with `config` (from [`crate::tls::server_config`], or your own; ALPN
    /// `h2` and `http/1.1` are set when it names none). The handshake runs inside each
    /// connection's lifecycle: under its permit, bounded by the header timeout, cut at the
    /// drain deadline; a failed one closes that connection only and is counted in
    /// [`tls_stats`](Self::tls_stats). A graceful close sends `close_notify`.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        let config = if config.alpn_protocols.is_empty() {
            let mut c = (*config).clone();
            c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Arc::new(c)
        } else {
            config
        };
        self.tls = Some(TlsSetup {
            acceptor: tokio_rustls::TlsAcceptor::from(config),
            stats: crate::tls::TlsStats::default(),
        });
        self
    }

    /// Handshake counts (all zero without [`tls`](Self::tls)).
    #[cfg(feature = "tls")]
    pub fn tls_stats(&self) -> crate::tls::TlsStats {
        match &self.tls {
            Some(tls) => tls.stats.clone(),
            None => crate::tls::TlsStats::default(),
        }
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

    /// Triggers the shutdown when `signal` resolves, as axum's `with_graceful_shutdown`:
    ///
    /// ```no_run
    /// # async fn run(app: axum::Router, listener: tokio::net::TcpListener) -> Result<(), lameduck::Error> {
    /// lameduck::http::serve(listener, app)
    ///     .with_graceful_shutdown(async { tokio::signal::ctrl_c().await.ok(); })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn with_graceful_shutdown(
        mut self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        self.server = self.server.with_graceful_shutdown(signal);
        self
    }

    /// What a `/ready` route should report: ready until the lame-duck period begins.
    pub fn readiness(&self) -> Readiness {
        Readiness {
            shutdown: self.server.shutdown_handle(),
        }
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
    ///
    /// # Cancel safety
    /// As [`Server::serve`]: dropping the future forces, then stops, and counts the cut
    /// connections as forced.
    pub async fn run(mut self) -> Result<Report, Error> {
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            // Our own header and idle timeouts (in `TimedIo`) replace hyper's header timer,
            // which would otherwise also close idle keep-alive connections after 30 s.
            .header_read_timeout(None)
            .max_buf_size(self.max_header_size);
        let mut http2 = hyper::server::conn::http2::Builder::new(TrackedExecutor {
            stall_timeout: self.timeouts.write,
        });
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_send_buf_size(MAX_SEND_BUF)
            .max_header_list_size(u32::try_from(self.max_header_size).unwrap_or(u32::MAX));
        let shared = Arc::new(Shared {
            http1,
            http2,
            tls: self.tls,
            timeouts: self.timeouts,
            // `TCP_NODELAY` is set by the connection's socket wrapper, not by the accept loop:
            // just before the second write (the first cannot be held back by Nagle, nothing
            // of the connection's is in flight yet), so a connection that answers once and
            // closes makes one system call fewer.
            nodelay: std::mem::replace(&mut self.server.lifecycle.nodelay, false),
            keep_alive_grace: self.keep_alive_grace,
            admission: self.server.admission(),
            close_idle_at_limit: self.close_idle_at_limit,
            sendfile: self.sendfile,
            shortcut: self.shortcut,
        });
        let service = self.service;
        self.server
            .serve_with_slot(move |stream, conn, slot| {
                serve_connection(stream, conn, service.clone(), Arc::clone(&shared), slot)
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
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TrackedExecutor>,
    tls: Option<TlsSetup>,
    timeouts: Timeouts,
    /// Whether connections get `TCP_NODELAY` (set by [`TimedIo`], not at the accept).
    nodelay: bool,
    keep_alive_grace: Duration,
    admission: crate::Admission,
    close_idle_at_limit: bool,
    sendfile: bool,
    shortcut: Option<Arc<dyn Shortcut>>,
}

tokio::task_local! {
    /// The connection whose hyper state machine is being polled: HTTP/2 stream tasks spawned
    /// from inside it (through [`TrackedExecutor`]) take a share of its slot.
    static CONN: ConnCtx;
    /// The HTTP/2 stream a response body belongs to, for the stall watchdog.
    static STREAM: Arc<StreamState>;
}

#[derive(Clone)]
struct ConnCtx {
    /// Held, never read: while any clone lives (the socket, a stream task) the connection
    /// keeps its tracker entry and its permit.
    _slot: Arc<Slot>,
    shutdown: Shutdown,
}

/// One connection: hyper over the timed I/O, with the drain choreography around it.
async fn serve_connection<S, B>(
    stream: TcpStream,
    conn: Connection,
    service: S,
    shared: Arc<Shared>,
    slot: Arc<Slot>,
) -> Result<(), BoxError>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let state = Arc::new(ConnState::new(shared.timeouts, &stream));
    let ctx = ConnCtx {
        _slot: slot,
        shutdown: conn.shutdown().clone(),
    };
    let timed = TimedIo::new(
        stream,
        Arc::clone(&state),
        shared.timeouts.write,
        ctx.clone(),
        shared.close_idle_at_limit.then(|| shared.admission.clone()),
        shared.nodelay,
    );
    let mut service = LifecycleService {
        inner: service,
        conn: conn.clone(),
        state: Arc::clone(&state),
        sendfile: shared.sendfile && shared.tls.is_none(),
    };
    CONN.scope(ctx, async move {
        // The TLS handshake, if any, runs here: under the connection's permit, counted, cut
        // by the header timeout (its bytes are read through the timed socket, whose request-
        // head deadline runs from the accept) and by the drain deadline, like any request.
        let io = match &shared.tls {
            None => Io::Plain(timed),
            #[cfg(not(feature = "tls"))]
            Some(never) => match *never {},
            #[cfg(feature = "tls")]
            // Boxed: the handshake's state is large, and inline it would size every
            // connection's future, plain ones included.
            Some(tls) => match Box::pin(accept_tls(tls, timed, &conn, shared.keep_alive_grace)).await {
                Ok(stream) => {
                    tls.stats.record(true);
                    Io::Tls(Box::new(stream))
                }
                Err(e) => {
                    tls.stats.record(false);
                    tracing::debug!(conn = conn.id(), peer = %conn.peer_addr(), error = %e, "TLS handshake failed");
                    return Ok(());
                }
            },
        };
        // Which protocol: from ALPN on TLS, otherwise from the first bytes (the HTTP/2
        // preface or not). Those bytes are read into a buffer large enough for a whole
        // ordinary request head, which hyper is then given first: one read, not two.
        let mut draining = pin!(conn.draining());
        let mut drain_seen = false;
        // Created only when the drain starts: an idle connection should cost as little as
        // possible.
        let mut grace: Option<Pin<Box<Sleep>>> = None;
        let mut io = ConnIo::new(io);
        // Requests answered by the shortcut so far: after one, the connection is HTTP/1.
        let mut answered = false;
        // Requests in a row that the shortcut declined and hyper answered alone.
        let mut declined = 0;
        let proto = match io.negotiated() {
            Some(proto) if proto == Proto::Http2 || shared.shortcut.is_none() => proto,
            negotiated => loop {
                tokio::select! {
                    sniffed = std::future::poll_fn(|cx| if negotiated.is_some() || answered {
                        io.poll_head(cx).map_ok(|()| Proto::Http1)
                    } else {
                        io.poll_sniff(cx)
                    }) => match (sniffed, shared.shortcut.as_deref()) {
                        (Ok(Proto::Http1), Some(shortcut)) => {
                            let draining = drain_seen || conn.shutdown().is_draining();
                            match shortcut::run(&mut io, shortcut, &state, draining).await {
                                Ok(shortcut::Outcome::Answered) => {
                                    answered = true;
                                    declined = 0;
                                }
                                // A connection whose requests the shortcut keeps declining (a
                                // client fetching ranges, say) is hyper's: one hyper connection
                                // for the rest costs less than one per request.
                                Ok(shortcut::Outcome::Alone { .. }) if declined == ALONE_IN_A_ROW => break Proto::Http1,
                                Ok(shortcut::Outcome::Alone { used }) => {
                                    declined += 1;
                                    // Boxed: inline, hyper's connection state would size
                                    // every connection's future, the shortcut's included.
                                    match Box::pin(answer_alone(&shared.http1, io, used, service, &state)).await? {
                                        Some((back, served)) => (io, service) = (back, served),
                                        // The last response, or the client gone.
                                        None => return Ok(()),
                                    }
                                    answered = true;
                                }
                                Ok(shortcut::Outcome::Declined) => break Proto::Http1,
                                // The last response, or the client gone.
                                Ok(shortcut::Outcome::Closed) | Err(_) => return Ok(()),
                            }
                        }
                        (Ok(proto), _) => break proto,
                        // Closed, timed out or failed before a request began.
                        (Err(_), _) => return Ok(()),
                    },
                    _ = &mut draining, if !drain_seen => {
                        drain_seen = true;
                        grace = Some(Box::pin(tokio::time::sleep(shared.keep_alive_grace)));
                    }
                    // Draining, and still no request after the grace: nothing is lost.
                    _ = async { grace.as_mut().expect("guarded by is_some").await }, if grace.is_some() => return Ok(()),
                }
            },
        };
        let io = TokioIo::new(io);
        let mut connection = match proto {
            Proto::Http1 => Conn::Http1(Box::pin(
                shared.http1.serve_connection(io, service).with_upgrades(),
            )),
            Proto::Http2 => {
                state.is_h2.store(true, Ordering::Relaxed);
                Conn::Http2(Box::pin(shared.http2.serve_connection(io, service)))
            }
        };
        if drain_seen && proto == Proto::Http2 {
            // GOAWAY now; open streams finish.
            connection.graceful_shutdown();
            grace = None;
        }
        loop {
            tokio::select! {
                result = std::future::poll_fn(|cx| {
                    let poll = Pin::new(&mut connection).poll(cx);
                    // Waiting (on the body, the client, the send buffer): nothing written may
                    // stay corked meanwhile.
                    #[cfg(target_os = "linux")]
                    if poll.is_pending() {
                        state.cork.release();
                    }
                    poll
                }) => return result,
                _ = &mut draining, if !drain_seen => {
                    drain_seen = true;
                    if proto == Proto::Http2 {
                        // GOAWAY now; open streams finish.
                        connection.graceful_shutdown();
                    } else {
                        // An idle HTTP/1 client may be sending its next request right now:
                        // give it a moment (answered with `Connection: close`) before closing.
                        grace = Some(Box::pin(tokio::time::sleep(shared.keep_alive_grace)));
                    }
                }
                _ = async { grace.as_mut().expect("guarded by is_some").await }, if grace.is_some() => {
                    grace = None;
                    connection.graceful_shutdown();
                }
            }
        }
    })
    .await
}

/// Answers the request at the start of `io`'s buffer (`used` bytes, a plain HTTP/1.1 `GET`
/// or `HEAD` that the shortcut had no answer for) with hyper and the service, alone: hyper
/// is given that request's bytes and nothing more, and is asked to stop once its response
/// head is made (so the head is the one hyper makes for a kept-alive connection), which it
/// does when the response is written and flushed. The connection and the service are
/// handed back for the next request; `None` if that was the connection's last response
/// (the connection is then shut down, as hyper would have), or a `101`.
///
/// A connection stays with the shortcut this way through a request it does not answer (a
/// file not cached yet, too large to cache, a range): handing hyper the rest of the
/// connection would make every later request on it pay hyper's way.
async fn answer_alone<S, B>(
    http1: &hyper::server::conn::http1::Builder,
    mut io: ConnIo,
    used: usize,
    service: LifecycleService<S>,
    state: &Arc<ConnState>,
) -> Result<Option<(ConnIo, LifecycleService<S>)>, BoxError>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let request = io.head.split_to(used);
    if io.head.is_empty() {
        io.head = BytesMut::new();
    }
    state.alone_writing.store(false, Ordering::Relaxed);
    let alone = Alone {
        io,
        request,
        state: Arc::clone(state),
    };
    let mut connection = http1.serve_connection(TokioIo::new(alone), service);
    let mut stop_asked = false;
    std::future::poll_fn(|cx| {
        loop {
            let poll = connection.poll_without_shutdown(cx);
            if poll.is_ready() {
                return poll;
            }
            // Waiting (on the body, the client, the send buffer): nothing written may stay
            // corked meanwhile.
            #[cfg(target_os = "linux")]
            state.cork.release();
            if stop_asked || !state.alone_writing.load(Ordering::Relaxed) {
                return Poll::Pending;
            }
            // The head is made: from here, keep-alive off only means stopping after this
            // response. If hyper is idle already (all written), it stops at the next poll.
            stop_asked = true;
            Pin::new(&mut connection).graceful_shutdown();
        }
    })
    .await?;
    let parts = connection.into_parts();
    let Alone {
        io: mut back,
        request,
        ..
    } = parts.io.into_inner();
    // hyper was given the request alone and takes all of it: nothing is left over, but
    // whatever were would be the next request's.
    let mut left = BytesMut::from(&parts.read_buf[..]);
    left.extend_from_slice(&request);
    if !left.is_empty() {
        left.extend_from_slice(&back.head);
        back.head = left;
    }
    if state.upgraded.load(Ordering::Relaxed) || state.last_response.load(Ordering::Relaxed) {
        std::future::poll_fn(|cx| Pin::new(&mut back).poll_shutdown(cx)).await?;
        return Ok(None);
    }
    Ok(Some((back, parts.service)))
}

/// The connection as hyper sees it for one request alone: it reads that request's bytes and
/// then nothing (no read of the socket: the next request is the shortcut's), and writes to
/// the connection, noting that it began to.
struct Alone {
    io: ConnIo,
    request: BytesMut,
    state: Arc<ConnState>,
}

impl AsyncRead for Alone {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.request.is_empty() {
            // hyper is woken by its service, its body or its writes, never by this read.
            return Poll::Pending;
        }
        let n = this.request.len().min(buf.remaining());
        buf.put_slice(&this.request.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl Alone {
    fn writing(&mut self) -> Pin<&mut ConnIo> {
        self.state.alone_writing.store(true, Ordering::Relaxed);
        Pin::new(&mut self.io)
    }
}

impl AsyncWrite for Alone {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().writing().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().writing().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Spawns hyper's background tasks (HTTP/2 streams, upgrades) on tokio, each holding a share
/// of its connection's slot, so the connection stays counted, limited and drained until its
/// last stream ends; each is cut when the drain deadline forces, and an HTTP/2 stream whose
/// response cannot move for the write timeout (the client's flow-control window stays shut)
/// is reset.
#[derive(Clone, Copy, Debug)]
struct TrackedExecutor {
    stall_timeout: Option<Duration>,
}

impl<F> hyper::rt::Executor<F> for TrackedExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let Ok(ctx) = CONN.try_with(ConnCtx::clone) else {
            // Not spawned from a connection of ours: nothing to track it by.
            tokio::spawn(fut);
            return;
        };
        let stall_timeout = self.stall_timeout;
        tokio::spawn(async move {
            let stream = Arc::new(StreamState::new());
            let work = STREAM.scope(Arc::clone(&stream), fut);
            let forced = ctx.shutdown.reached(Phase::Forced);
            tokio::select! {
                biased;
                _ = work => {}
                _ = forced => {}
                _ = stalled(&stream, stall_timeout) => {
                    // Dropping the stream's task resets the stream (RST_STREAM) and frees what
                    // it held: its body, its buffered data, its file.
                    tracing::debug!(timeout = ?stall_timeout, "HTTP/2 stream made no progress: reset");
                }
            }
            drop(ctx);
        });
    }
}

/// What the stall watchdog knows of one HTTP/2 stream's response body.
struct StreamState {
    start: Instant,
    /// Since when (ms since `start`) the body has handed data over and not been asked for
    /// more, or `NONE` while the body itself is producing (an idle event stream is not the
    /// client's fault). Before the first poll it counts from the stream's start.
    waiting_since_ms: AtomicU64,
}

impl StreamState {
    fn new() -> Self {
        StreamState {
            start: Instant::now(),
            // Not waiting until the response exists: a slow handler is not a stalled client.
            waiting_since_ms: AtomicU64::new(NONE),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn set_waiting(&self, waiting: bool) {
        let v = if waiting { self.now_ms() } else { NONE };
        // Relaxed: a self-contained stamp, read by the watchdog in the same task.
        self.waiting_since_ms.store(v, Ordering::Relaxed);
    }
}

/// Resolves once the stream has waited on the client for `timeout` (never with `None`).
async fn stalled(stream: &StreamState, timeout: Option<Duration>) {
    let Some(timeout) = timeout else {
        return std::future::pending().await;
    };
    let timeout_ms = timeout.as_millis().min(u128::from(u64::MAX / 2)) as u64;
    loop {
        let since = stream.waiting_since_ms.load(Ordering::Relaxed);
        let now = stream.now_ms();
        let wait_ms = if since == NONE {
            timeout_ms
        } else if now.saturating_sub(since) >= timeout_ms {
            return;
        } else {
            timeout_ms - (now - since)
        };
        tokio::time::sleep(Duration::from_millis(wait_ms.max(1))).await;
    }
}

/// TLS for every connection of a server.
#[cfg(feature = "tls")]
#[derive(Clone)]
struct TlsSetup {
    acceptor: tokio_rustls::TlsAcceptor,
    stats: crate::tls::TlsStats,
}

/// The TLS handshake, cut if the drain starts before it ends (after the keep-alive grace: a
/// client in the middle of a handshake is about to send a request, as an idle keep-alive
/// client may be).
#[cfg(feature = "tls")]
async fn accept_tls(
    tls: &TlsSetup,
    io: TimedIo,
    conn: &Connection,
    grace: Duration,
) -> io::Result<tokio_rustls::server::TlsStream<TimedIo>> {
    let draining = conn.draining();
    tokio::select! {
        result = tls.acceptor.accept(io) => result,
        _ = async move {
            draining.await;
            tokio::time::sleep(grace).await;
        } => Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the server is draining: handshake cut",
        )),
    }
}

/// Without the `tls` feature there is never TLS to set up.
#[cfg(not(feature = "tls"))]
#[derive(Clone)]
enum TlsSetup {}

/// The protocol a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Http1,
    Http2,
}

/// The client connection preface of HTTP/2 (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Most requests in a row that the shortcut declines and hyper answers alone, each with a
/// hyper connection of its own ([`answer_alone`]); the next one declined in a row gets hyper
/// for the rest of the connection.
const ALONE_IN_A_ROW: u32 = 8;

/// How many bytes the first read takes while the protocol is sniffed: enough for a whole
/// ordinary request head, so that hyper parses it without a read of its own.
const SNIFF_READ: usize = 2048;

/// hyper's connection for the protocol chosen, boxed alone: an idle HTTP/1 connection does
/// not carry the room of an HTTP/2 one, as an enum of both inline would.
enum Conn<I, S, E>
where
    S: hyper::service::HttpService<Incoming>,
{
    Http1(Pin<Box<hyper::server::conn::http1::UpgradeableConnection<I, S>>>),
    Http2(Pin<Box<hyper::server::conn::http2::Connection<I, S, E>>>),
}

impl<I, S, E, B> Conn<I, S, E>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(&mut self) {
        match self {
            Conn::Http1(c) => c.as_mut().graceful_shutdown(),
            Conn::Http2(c) => c.as_mut().graceful_shutdown(),
        }
    }
}

impl<I, S, E, B> Future for Conn<I, S, E>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Conn::Http1(c) => c.as_mut().poll(cx).map_err(Into::into),
            Conn::Http2(c) => c.as_mut().poll(cx).map_err(Into::into),
        }
    }
}

/// The connection's stream as hyper sees it: the bytes read while the protocol was sniffed
/// come first, then the stream itself.
struct ConnIo {
    inner: Io,
    /// What the sniffing read and hyper has not taken yet; freed once it has all of it.
    head: BytesMut,
}

impl ConnIo {
    fn new(inner: Io) -> Self {
        ConnIo {
            inner,
            head: BytesMut::new(),
        }
    }

    /// The protocol agreed by ALPN in the TLS handshake, if any.
    fn negotiated(&self) -> Option<Proto> {
        match &self.inner {
            Io::Plain(_) => None,
            #[cfg(feature = "tls")]
            Io::Tls(tls) => match tls.get_ref().1.alpn_protocol() {
                Some(b"h2") => Some(Proto::Http2),
                Some(_) => Some(Proto::Http1),
                None => None,
            },
        }
    }

    /// Reads unless bytes are waiting in `head` already. Cancel safe.
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.head.is_empty() {
            return Poll::Ready(Ok(()));
        }
        self.poll_fill(cx)
    }

    /// One read appended to `head` (up to [`SNIFF_READ`] in all); end of stream is an error,
    /// since no request has begun. Cancel safe: what was read stays in `head`.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let filled = self.head.len();
        self.head.resize(SNIFF_READ, 0);
        let mut buf = ReadBuf::new(&mut self.head[filled..]);
        let poll = Pin::new(&mut self.inner).poll_read(cx, &mut buf);
        let got = buf.filled().len();
        self.head.truncate(filled + got);
        ready!(poll)?;
        if got == 0 {
            return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
        }
        Poll::Ready(Ok(()))
    }

    /// Reads until the first bytes tell HTTP/2's preface from anything else (HTTP/1).
    /// Cancel safe: what was read stays in `head`.
    fn poll_sniff(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Proto>> {
        loop {
            let n = self.head.len().min(H2_PREFACE.len());
            if self.head[..n] != H2_PREFACE[..n] {
                return Poll::Ready(Ok(Proto::Http1));
            }
            if n == H2_PREFACE.len() {
                return Poll::Ready(Ok(Proto::Http2));
            }
            ready!(self.poll_fill(cx))?;
        }
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.head.is_empty() {
            let n = this.head.len().min(buf.remaining());
            buf.put_slice(&this.head.split_to(n));
            if this.head.is_empty() {
                // Give the buffer back: an idle connection keeps none.
                this.head = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A connection's stream: the timed socket, or TLS over it.
enum Io {
    Plain(TimedIo),
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::server::TlsStream<TimedIo>>),
}

macro_rules! io_delegate {
    ($self:ident, $io:ident => $e:expr) => {
        match $self.get_mut() {
            Io::Plain($io) => {
                let $io = Pin::new($io);
                $e
            }
            #[cfg(feature = "tls")]
            Io::Tls($io) => {
                let $io = Pin::new(&mut **$io);
                $e
            }
        }
    };
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        io_delegate!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        io_delegate!(self, io => io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        io_delegate!(self, io => io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(io) => io.is_write_vectored(),
            #[cfg(feature = "tls")]
            Io::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        io_delegate!(self, io => io.poll_flush(cx))
    }

    /// On TLS this sends `close_notify` first: a graceful close says so.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        io_delegate!(self, io => io.poll_shutdown(cx))
    }
}

/// Whether a `Connection` header lists `token` (case-insensitive), as hyper reads it.
fn connection_has(headers: &http::HeaderMap, token: &str) -> bool {
    headers.get_all(CONNECTION).iter().any(|value| {
        value.to_str().is_ok_and(|list| {
            list.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    })
}

/// What the timed I/O and the service share about one connection.
struct ConnState {
    /// Reference point for the millisecond stamps below.
    start: Instant,
    /// Requests whose responses are not finished.
    in_flight: AtomicUsize,
    /// When the current request head started arriving (ms since `start`), or `NONE`.
    head_started_ms: AtomicU64,
    /// When the connection last finished a response (ms since `start`); after an upgrade,
    /// when bytes last arrived.
    idle_since_ms: AtomicU64,
    /// The connection speaks HTTP/2 (no header timeout between streams).
    is_h2: AtomicBool,
    /// A `101 Switching Protocols` was sent: the socket belongs to the application now.
    upgraded: AtomicBool,
    /// The client has sent at least one byte.
    heard: AtomicBool,
    /// The response being written is the connection's last: hyper closes after it.
    last_response: AtomicBool,
    /// A request given to hyper alone ([`answer_alone`]): hyper has begun writing its
    /// response, so its head is made.
    alone_writing: AtomicBool,
    timeouts: Timeouts,
    /// File ranges to send in place of stand-in chunks ([`SendFile`]).
    #[cfg(target_os = "linux")]
    sendfile: sendfile::Queue,
    /// Holds the last response's tail for the FIN ([`cork`]).
    #[cfg(target_os = "linux")]
    cork: cork::Cork,
}

const NONE: u64 = u64::MAX;

/// How long a connection that has sent nothing must have been open to count as idle.
const SILENT_IS_IDLE: Duration = Duration::from_secs(1);

impl ConnState {
    fn new(timeouts: Timeouts, _socket: &TcpStream) -> Self {
        ConnState {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            // The first request's head is due from the moment the connection is accepted.
            head_started_ms: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            is_h2: AtomicBool::new(false),
            upgraded: AtomicBool::new(false),
            heard: AtomicBool::new(false),
            last_response: AtomicBool::new(false),
            alone_writing: AtomicBool::new(false),
            timeouts,
            #[cfg(target_os = "linux")]
            sendfile: sendfile::Queue::default(),
            #[cfg(target_os = "linux")]
            cork: cork::Cork::new(_socket),
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
        if !self.heard.load(Ordering::Relaxed) {
            self.heard.store(true, Ordering::Relaxed);
        }
        if self.upgraded.load(Ordering::Relaxed) {
            self.idle_since_ms.store(self.now_ms(), Ordering::Relaxed);
            return;
        }
        if self.in_flight.load(Ordering::Relaxed) == 0
            && !self.is_h2.load(Ordering::Relaxed)
            && self.head_started_ms.load(Ordering::Relaxed) == NONE
        {
            self.head_started_ms.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// No request in flight and none arriving: between keep-alive requests, or silent for
    /// [`SILENT_IS_IDLE`] since the accept. Closing it to make room loses nothing. (A
    /// connection accepted a moment ago has most likely just not been read yet: closing it
    /// would throw away the request on its way.)
    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
            && !self.upgraded.load(Ordering::Relaxed)
            && (self.head_started_ms.load(Ordering::Relaxed) == NONE
                || (!self.heard.load(Ordering::Relaxed) && self.start.elapsed() >= SILENT_IS_IDLE))
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
        let at = |ms: u64, d: Duration| instant_after(self.start + Duration::from_millis(ms), d);
        if self.upgraded.load(Ordering::Relaxed) {
            // The request-head timer means nothing on a WebSocket: only the (optional) idle
            // timeout for upgraded connections applies.
            return self.timeouts.upgraded_idle.map(|d| {
                (
                    at(self.idle_since_ms.load(Ordering::Relaxed), d),
                    Some("upgraded connection idle timeout"),
                )
            });
        }
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return self.timeouts.idle.map(|d| (after(d), None));
        }
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

/// A point in time far enough away to mean "never".
fn far_future() -> Instant {
    after(Duration::MAX)
}

/// `now + d`, saturated: `Duration::MAX` and its kin mean "never", not an overflow.
fn after(d: Duration) -> Instant {
    instant_after(Instant::now(), d)
}

/// Runs the write `io` on `socket` once tokio sees it writable, again after each
/// `WouldBlock` (which clears that readiness), and returns its result.
#[cfg(target_os = "linux")]
fn poll_when_writable<T>(
    socket: &TcpStream,
    cx: &mut Context<'_>,
    mut io: impl FnMut() -> io::Result<T>,
) -> Poll<io::Result<T>> {
    loop {
        ready!(socket.poll_write_ready(cx))?;
        match socket.try_io(tokio::io::Interest::WRITABLE, &mut io) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            result => return Poll::Ready(result),
        }
    }
}

/// One request in flight; dropped when its response body is finished (or abandoned).
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let state = &self.0;
        if !state.upgraded.load(Ordering::Relaxed) {
            state.idle_since_ms.store(state.now_ms(), Ordering::Relaxed);
        }
        state.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The application's service, with the connection context added to each request,
/// `Connection: close` added to HTTP/1 responses made while the server drains, and requests
/// that RFC 9112 says must be refused (an HTTP/1.1 request with no `Host`, any with two)
/// answered `400` before the application sees them.
struct LifecycleService<S> {
    inner: S,
    conn: Connection,
    state: Arc<ConnState>,
    /// Plain TCP: HTTP/1 requests get the [`SendFile`] extension.
    sendfile: bool,
}

// Nothing of the service is ever pinned (each call clones `inner`), so it may move whatever
// `S` is: hyper's connection then is `Unpin`, as [`answer_alone`] needs it.
impl<S> Unpin for LifecycleService<S> {}

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
        // hyper closes the connection after this response, unless it hands the socket over
        // (an upgrade asked for, a `CONNECT`: then it never shuts it down, whatever the answer).
        let hands_over = request.method() == http::Method::CONNECT
            || (version == Version::HTTP_11
                && request.headers().contains_key(http::header::UPGRADE));
        let last = !hands_over
            && match version {
                Version::HTTP_11 => connection_has(request.headers(), "close"),
                Version::HTTP_10 | Version::HTTP_09 => {
                    !connection_has(request.headers(), "keep-alive")
                }
                _ => false,
            };
        let hosts = request.headers().get_all(HOST).iter().count();
        if hosts > 1 || (hosts == 0 && version == Version::HTTP_11) {
            let why: &'static str = if hosts > 1 {
                "bad request: more than one Host header\n"
            } else {
                "bad request: HTTP/1.1 requires a Host header\n"
            };
            let mut response = Response::new(TrackedBody {
                inner: Inner::Fixed {
                    bytes: Some(Bytes::from_static(why.as_bytes())),
                },
                stream: None,
                _in_flight: in_flight,
            });
            *response.status_mut() = StatusCode::BAD_REQUEST;
            let h = response.headers_mut();
            h.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            h.insert(CONTENT_LENGTH, HeaderValue::from(why.len()));
            if version <= Version::HTTP_11 {
                h.insert(CONNECTION, HeaderValue::from_static("close"));
                self.state.last_response.store(true, Ordering::Relaxed);
                #[cfg(target_os = "linux")]
                if !hands_over {
                    self.state.cork.want();
                }
            }
            return Box::pin(async move { Ok(response) });
        }
        request.extensions_mut().insert(self.conn.clone());
        #[cfg(target_os = "linux")]
        if self.sendfile && version <= Version::HTTP_11 {
            request
                .extensions_mut()
                .insert(SendFile::new(Arc::clone(&self.state)));
        }
        // What axum's `ConnectInfo<SocketAddr>` extractor looks for (axum's own `serve` adds
        // it through `into_make_service_with_connect_info`).
        #[cfg(feature = "axum")]
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(self.conn.peer_addr()));
        let shutdown = self.conn.shutdown().clone();
        let state = Arc::clone(&self.state);
        let mut inner = self.inner.clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
            let mut response = inner.call(request).await?;
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                // From here the socket is the application's (a WebSocket, say): no request-head
                // timer, and the connection stays counted until the upgraded socket is dropped.
                state.upgraded.store(true, Ordering::Relaxed);
                state.idle_since_ms.store(state.now_ms(), Ordering::Relaxed);
            } else if version <= Version::HTTP_11 {
                let last = if shutdown.is_draining() {
                    response
                        .headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                    !hands_over
                } else {
                    last || (!hands_over && connection_has(response.headers(), "close"))
                };
                if last {
                    state.last_response.store(true, Ordering::Relaxed);
                    // The bytes are written after this returns: cork before the first of them.
                    #[cfg(target_os = "linux")]
                    state.cork.want();
                }
            }
            // On HTTP/2 this runs on the stream's task: the body reports its progress there.
            let stream = STREAM.try_with(Arc::clone).ok();
            if let Some(stream) = &stream {
                // The head goes out now; from here a body that is not asked for data is
                // waiting on the client's window.
                stream.set_waiting(true);
            }
            Ok(response.map(|body| TrackedBody {
                inner: Inner::App { body },
                stream,
                _in_flight: in_flight,
            }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that marks its request finished when it is dropped, and on HTTP/2
    /// tells the stall watchdog whether it is waiting on the client.
    pub struct TrackedBody<B> {
        #[pin]
        inner: Inner<B>,
        stream: Option<Arc<StreamState>>,
        _in_flight: InFlight,
    }
}

pin_project_lite::pin_project! {
    #[project = InnerProj]
    enum Inner<B> {
        App { #[pin] body: B },
        Fixed { bytes: Option<Bytes> },
    }
}

impl<B> fmt::Debug for TrackedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackedBody").finish_non_exhaustive()
    }
}

impl<B: Body<Data = Bytes>> Body for TrackedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let Some(stream) = this.stream {
            stream.set_waiting(false);
        }
        let poll = match this.inner.project() {
            InnerProj::App { body } => body.poll_frame(cx),
            InnerProj::Fixed { bytes } => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        };
        if let (Some(stream), Poll::Ready(Some(Ok(_)))) = (this.stream, &poll) {
            // Handed over; until hyper asks again, the client's window holds it up.
            stream.set_waiting(true);
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::App { body } => body.is_end_stream(),
            Inner::Fixed { bytes } => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::App { body } => body.size_hint(),
            Inner::Fixed { bytes } => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// The socket, with the header, idle and write timeouts enforced where hyper reads and
/// writes. It holds a share of the connection's slot, so after an upgrade (hyper hands this
/// very object to the application) the connection stays counted and limited until the
/// application drops it; and then the drain deadline still cuts it.
struct TimedIo {
    inner: TcpStream,
    state: Arc<ConnState>,
    read_timer: Pin<Box<Sleep>>,
    read_timer_at: Option<Instant>,
    write_timeout: Option<Duration>,
    /// Set while a write is stalled; created on the first stall.
    write_timer: Option<Pin<Box<Sleep>>>,
    write_stalled: bool,
    ctx: ConnCtx,
    /// After an upgrade: resolve when the drain deadline forces, one per direction (a split
    /// WebSocket polls reads and writes from different tasks).
    forced_read: Option<Pin<Box<dyn Future<Output = Phase> + Send>>>,
    forced_write: Option<Pin<Box<dyn Future<Output = Phase> + Send>>>,
    /// With `close_idle_at_limit`: the server's admission, to hear when the acceptor waits
    /// at the limit, and the listener for that, registered while the connection sits idle.
    room: Option<crate::Admission>,
    room_listener: Option<event_listener::EventListener>,
    /// Reads, then writes, go straight to the socket until the first one would block; from
    /// then on through tokio's readiness. See [`TimedIo::optimistic`].
    optimistic_read: bool,
    optimistic_write: bool,
    nodelay: Nodelay,
}

/// Where a connection is on its way to `TCP_NODELAY`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Nodelay {
    /// Wanted, and set just before the second write.
    BeforeSecondWrite,
    /// Wanted, and set before the next write.
    BeforeNextWrite,
    /// Nothing left to do: not wanted, or set (or tried: a failure is not fatal, the
    /// connection works without it).
    Settled,
}

#[cfg(target_os = "linux")]
impl Drop for TimedIo {
    fn drop(&mut self) {
        // Dropped with the last response written but not shut down (an error, the drain
        // deadline): the FIN goes now, before the close can reset what is held.
        if self.state.cork.take_for_shutdown() {
            let _ = socket2::SockRef::from(&self.inner).shutdown(std::net::Shutdown::Write);
        }
    }
}

impl TimedIo {
    fn new(
        inner: TcpStream,
        state: Arc<ConnState>,
        write_timeout: Option<Duration>,
        ctx: ConnCtx,
        room: Option<crate::Admission>,
        nodelay: bool,
    ) -> Self {
        TimedIo {
            inner,
            state,
            read_timer: Box::pin(tokio::time::sleep_until(far_future().into())),
            read_timer_at: None,
            write_timeout,
            write_timer: None,
            write_stalled: false,
            ctx,
            forced_read: None,
            forced_write: None,
            room,
            room_listener: None,
            optimistic_read: true,
            optimistic_write: true,
            nodelay: if nodelay {
                Nodelay::BeforeSecondWrite
            } else {
                Nodelay::Settled
            },
        }
    }

    /// Called before every write: moves toward `TCP_NODELAY`, setting it before the second.
    fn before_write(&mut self) {
        #[cfg(target_os = "linux")]
        self.state.cork.before_write(&self.inner);
        match self.nodelay {
            Nodelay::Settled => {}
            Nodelay::BeforeSecondWrite => self.nodelay = Nodelay::BeforeNextWrite,
            // Setting it pushes out what the cork holds: it waits until the cork is pulled
            // (Nagle cannot hold anything meanwhile either).
            #[cfg(target_os = "linux")]
            Nodelay::BeforeNextWrite if self.state.cork.is_corked() => {}
            Nodelay::BeforeNextWrite => {
                let _ = self.inner.set_nodelay(true);
                self.nodelay = Nodelay::Settled;
            }
        }
    }

    /// One system call straight on the socket, before tokio has heard from epoll about it.
    ///
    /// A socket just accepted is registered with epoll, but tokio knows it as neither readable
    /// nor writable until the driver has polled it: the first read would wait a trip through
    /// `epoll_wait` (and often a wake of another worker) even when the request is already
    /// in the socket, as it is for most clients, and so would the first write into an empty
    /// send buffer. Trying the call first saves that trip per connection; the first
    /// `WouldBlock` ends it for that direction (`None`), and tokio's readiness takes over. A
    /// readiness tokio holds from before is then at worst stale: one call that finds
    /// nothing, and tokio waits for the next edge.
    fn optimistic<T>(
        flag: &mut bool,
        mut call: impl FnMut() -> io::Result<T>,
    ) -> Option<io::Result<T>> {
        while *flag {
            match call() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => *flag = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                result => return Some(result),
            }
        }
        None
    }

    /// Called when a read is pending: fails (so the connection closes) if the connection is
    /// idle while the acceptor waits at the connection limit with clients behind it. The
    /// server then gives the slot to a waiting client, as nginx does with idle keep-alive
    /// connections when it runs out.
    fn poll_room_wanted(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let room = self.room.as_ref()?;
        if self.state.upgraded.load(Ordering::Relaxed)
            || self.state.in_flight.load(Ordering::Relaxed) > 0
        {
            return None;
        }
        loop {
            // Listen first, then look at the level: a request made in between is not lost.
            // Registered even while not idle yet (a connection accepted a moment ago): the
            // acceptor asks again while it waits, and by then it may be.
            let listener = self.room_listener.get_or_insert_with(|| room.room_wanted());
            if room.room_is_wanted() && self.state.is_idle() {
                self.room_listener = None;
                return Some(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "idle connection closed to make room at the connection limit",
                ));
            }
            match Pin::new(listener).poll(cx) {
                Poll::Pending => return None,
                // Notified: look at the level again, with a fresh listener.
                Poll::Ready(()) => self.room_listener = None,
            }
        }
    }

    /// After an upgrade, the error to return if the server has already been forced: an
    /// application that only ever writes must be cut as well.
    fn forced_now(&mut self) -> Option<io::Error> {
        if self.state.upgraded.load(Ordering::Relaxed) && self.ctx.shutdown.phase() >= Phase::Forced
        {
            return Some(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the server's drain deadline closed this connection",
            ));
        }
        None
    }

    /// After an upgrade, fails once the drain deadline has forced the server (and counts the
    /// connection as forced); before it, the connection's task is cut instead.
    fn poll_forced(&mut self, cx: &mut Context<'_>, read: bool) -> Option<io::Error> {
        if !self.state.upgraded.load(Ordering::Relaxed) {
            return None;
        }
        let shutdown = &self.ctx.shutdown;
        let slot = if read {
            &mut self.forced_read
        } else {
            &mut self.forced_write
        };
        let fired = shutdown.phase() >= Phase::Forced
            || slot
                .get_or_insert_with(|| Box::pin(shutdown.reached(Phase::Forced)))
                .as_mut()
                .poll(cx)
                .is_ready();
        if !fired {
            return None;
        }
        Some(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the server's drain deadline closed this connection",
        ))
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

    /// Sends the file range queued for the stand-in chunk at the front of hyper's buffer.
    #[cfg(target_os = "linux")]
    fn poll_sendfile(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<usize>> {
        let (inner, queue) = (&self.inner, &self.state.sendfile);
        poll_when_writable(inner, cx, || queue.send(inner, len))
    }

    /// Writes what precedes a stand-in (a response head, and whatever hyper queued before
    /// it) with `MSG_MORE`, then starts on the stand-in's file range in the same poll.
    ///
    /// Written on its own, the head would leave as a segment of its own: the client wakes
    /// for a few hundred bytes, and then again for the file's. Held back by `MSG_MORE`, it
    /// goes out with the file's first bytes. Measured with wrk against a 512 KiB file, that
    /// halves the client's CPU time per response. Whatever stops the file range here (a
    /// full send buffer, an error) the next poll meets again, as it starts at the stand-in.
    #[cfg(target_os = "linux")]
    fn poll_head_then_sendfile(
        &mut self,
        cx: &mut Context<'_>,
        head: &[io::IoSlice<'_>],
        len: usize,
    ) -> Poll<io::Result<usize>> {
        let want: usize = head.iter().map(|b| b.len()).sum();
        let inner = &self.inner;
        let written = match Self::optimistic(&mut self.optimistic_write, || {
            sendfile::send_more(inner, head)
        }) {
            Some(result) => result?,
            None => ready!(poll_when_writable(inner, cx, || sendfile::send_more(
                inner, head
            )))?,
        };
        if written < want {
            return Poll::Ready(Ok(written));
        }
        let (inner, queue) = (&self.inner, &self.state.sendfile);
        let sent = match Self::optimistic(&mut self.optimistic_write, || queue.send(inner, len)) {
            Some(result) => result,
            // tokio's readiness: `try_io` finds the socket not writable (`WouldBlock`)
            // without a call when tokio has not seen it so.
            None => inner.try_io(tokio::io::Interest::WRITABLE, || queue.send(inner, len)),
        };
        Poll::Ready(Ok(written + sent.unwrap_or(0)))
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
                if let Some(e) = self.poll_forced(cx, false) {
                    return Poll::Ready(Err(e));
                }
                let Some(timeout) = self.write_timeout else {
                    return Poll::Pending;
                };
                let at = after(timeout);
                let timer = self
                    .write_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at.into())));
                if !self.write_stalled {
                    self.write_stalled = true;
                    timer.as_mut().reset(at.into());
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
        if let Some(e) = this.forced_now() {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let sock = socket2::SockRef::from(&this.inner);
        let direct = Self::optimistic(&mut this.optimistic_read, || {
            (&*sock).read(buf.initialize_unfilled())
        });
        let poll = match direct {
            Some(result) => Poll::Ready(result.map(|n| {
                // A short read drained the socket, as far as anyone can tell: the next read
                // waits for tokio's readiness rather than finding nothing (tokio's rule too).
                if n < buf.remaining() {
                    this.optimistic_read = false;
                }
                buf.advance(n);
            })),
            None => Pin::new(&mut this.inner).poll_read(cx, buf),
        };
        match poll {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.state.on_read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if let Some(e) = this.poll_forced(cx, true) {
                    return Poll::Ready(Err(e));
                }
                if let Some(e) = this.poll_room_wanted(cx) {
                    return Poll::Ready(Err(e));
                }
                this.poll_read_deadline(cx).map(Err)
            }
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
        if let Some(e) = this.forced_now() {
            return Poll::Ready(Err(e));
        }
        this.before_write();
        #[cfg(target_os = "linux")]
        if sendfile::is_stand_in(buf) {
            let poll = this.poll_sendfile(cx, buf.len());
            return this.poll_write_side(cx, poll);
        }
        let sock = socket2::SockRef::from(&this.inner);
        if let Some(result) = Self::optimistic(&mut this.optimistic_write, || (&*sock).write(buf)) {
            return Poll::Ready(result);
        }
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.poll_write_side(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.forced_now() {
            return Poll::Ready(Err(e));
        }
        this.before_write();
        // Stand-ins go out by `sendfile`; what comes before the first of them by `sendmsg`
        // with `MSG_MORE`, followed at once by the stand-in's range. hyper polls again for
        // the rest.
        #[cfg(target_os = "linux")]
        if let Some(at) = bufs.iter().position(|b| sendfile::is_stand_in(b)) {
            let poll = if at == 0 {
                this.poll_sendfile(cx, bufs[0].len())
            } else {
                this.poll_head_then_sendfile(cx, &bufs[..at], bufs[at].len())
            };
            return this.poll_write_side(cx, poll);
        }
        let sock = socket2::SockRef::from(&this.inner);
        if let Some(result) =
            Self::optimistic(&mut this.optimistic_write, || (&*sock).write_vectored(bufs))
        {
            return Poll::Ready(result);
        }
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
        // hyper shuts the write side down just before it drops the connection, and closing
        // the socket (the only descriptor for it) sends the same FIN after the same bytes: one
        // system call fewer per connection. An upgraded socket is the application's, which
        // may half-close and go on reading: that one is shut down for real. So is a socket
        // that sent a last response (corked, or with its cork pulled): what it holds goes out
        // with the FIN now, not at the close, which would discard it if the client had sent
        // more than was read.
        #[cfg(target_os = "linux")]
        let corked = this.state.cork.take_for_shutdown();
        #[cfg(not(target_os = "linux"))]
        let corked = false;
        if !corked && !this.state.upgraded.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        let poll = match Pin::new(&mut this.inner).poll_shutdown(cx) {
            // The peer is gone already (it reset the connection): nothing left to send, and
            // no error, as when the close does it.
            Poll::Ready(Err(e)) if corked && e.kind() == io::ErrorKind::NotConnected => {
                Poll::Ready(Ok(()))
            }
            poll => poll,
        };
        this.poll_write_side(cx, poll)
    }
}
