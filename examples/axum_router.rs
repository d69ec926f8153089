//! An axum `Router` served by lameduck instead of `axum::serve`: the same router, plus a drain
//! deadline, a lame-duck period with a readiness route, header/idle/write timeouts and a report.
//!
//! ```text
//! cargo run --release --example axum_router -- --listen 127.0.0.1:3000 --drain-timeout 10s --lame-duck 2s
//! ```
//!
//! Routes:
//! - `/`: hello;
//! - `/slow?ms=N`: answers after N milliseconds;
//! - `/stream`: a chunk every 100 ms, forever (the drain deadline cuts it);
//! - `/events`: server-sent events, a tick every 100 ms until the server drains, then `bye`
//!   and the end of the stream (it watches the request's `lameduck::Connection`);
//! - `/ws`: a WebSocket echo; when the server starts draining it sends a close frame (1001,
//!   "server draining") and ends once the client answers. It stays counted, limited and
//!   drained like any connection, and the deadline cuts it if the client never answers;
//! - `/whoami`: the client's address, through axum's `ConnectInfo` extractor (lameduck's
//!   `axum` feature supplies it);
//! - `/ready`: 200 while running, 503 once the lame-duck period begins.
//!
//! SIGINT/SIGTERM: lame duck (still serving, `/ready` says 503), then drain (listeners closed,
//! requests in flight finish), then exit 0; 3 if the deadline had to cut connections.
//!
//! It adopts a socket handed over by `LISTEN_FDS` and says `READY=1` by sd_notify, so it runs
//! under `lameduck run --listen ADDR -- axum_router` (SIGHUP then replaces it with no refused
//! client) or as a systemd `Type=notify` service with socket activation.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{ConnectInfo, Extension, Query};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Parser;
use http_body::Frame;
use lameduck::http::Readiness;

/// An axum Router with a graceful, bounded lifecycle.
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// How long requests in flight may take after a shutdown signal (e.g. 500ms, 10s).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Time a client has to send its request head.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    header_timeout: Duration,
    /// Keep serving this long after a shutdown signal while `/ready` says 503.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    lame_duck: Duration,
}

async fn hello() -> &'static str {
    "Hello from axum, served by lameduck.\n"
}

async fn slow(
    Query(q): Query<HashMap<String, String>>,
) -> Result<String, (StatusCode, &'static str)> {
    let ms = match q.get("ms") {
        None => 1000,
        Some(v) => v
            .parse::<u64>()
            .map_err(|_| (StatusCode::BAD_REQUEST, "ms must be a whole number\n"))?,
    }
    .min(600_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(format!("slept {ms} ms\n"))
}

/// A body that yields a chunk every 100 ms; with `until` set, it ends with `bye` once that
/// future resolves.
struct Ticker {
    interval: tokio::time::Interval,
    n: u64,
    sse: bool,
    until: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    done: bool,
}

impl http_body::Body for Ticker {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(until) = self.until.as_mut() {
            if until.as_mut().poll(cx).is_ready() {
                self.done = true;
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"data: bye\n\n")))));
            }
        }
        ready!(self.interval.poll_tick(cx));
        self.n += 1;
        let chunk = if self.sse {
            format!("data: tick {}\n\n", self.n)
        } else {
            format!("chunk {}\n", self.n)
        };
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }
}

fn ticker(sse: bool, until: Option<Pin<Box<dyn Future<Output = ()> + Send>>>) -> Ticker {
    Ticker {
        interval: tokio::time::interval(Duration::from_millis(100)),
        n: 0,
        sse,
        until,
        done: false,
    }
}

async fn stream() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::new(ticker(false, None)),
    )
        .into_response()
}

async fn events(Extension(conn): Extension<lameduck::Connection>) -> Response {
    let body = Body::new(ticker(true, Some(Box::pin(conn.draining()))));
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}

/// Echoes text and binary messages until the client closes; when the drain starts, says so
/// with a close frame and waits (bounded by the drain deadline) for the client's reply.
async fn ws(
    upgrade: WebSocketUpgrade,
    Extension(conn): Extension<lameduck::Connection>,
) -> Response {
    upgrade.on_upgrade(move |socket| echo(socket, conn))
}

async fn echo(mut socket: WebSocket, conn: lameduck::Connection) {
    let draining = conn.draining();
    tokio::pin!(draining);
    loop {
        tokio::select! {
            _ = &mut draining => {
                let bye = Message::Close(Some(CloseFrame {
                    code: close_code::AWAY,
                    reason: "server draining".into(),
                }));
                if socket.send(bye).await.is_err() {
                    return;
                }
                // The closing handshake: the client's close frame ends it.
                while let Some(Ok(msg)) = socket.recv().await {
                    if matches!(msg, Message::Close(_)) {
                        return;
                    }
                }
                return;
            }
            msg = socket.recv() => match msg {
                Some(Ok(msg @ (Message::Text(_) | Message::Binary(_)))) => {
                    if socket.send(msg).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            }
        }
    }
}

fn app(readiness: Readiness) -> Router {
    Router::new()
        .route("/", get(hello))
        .route("/ws", get(ws))
        .route(
            "/whoami",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { format!("{peer}\n") }),
        )
        .route("/slow", get(slow))
        .route("/stream", get(stream))
        .route("/events", get(events))
        .route(
            "/ready",
            get(move || {
                let ready = readiness.is_ready();
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
                    }
                }
            }),
        )
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(report) => report.exit_code(),
        Err(e) => {
            eprintln!("axum_router: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: Args) -> Result<lameduck::Report, Box<dyn std::error::Error>> {
    // Under `lameduck run` (or systemd socket activation) the socket is handed over and
    // --listen is ignored: it stays open across restarts, so no client is refused.
    #[cfg(unix)]
    let inherited = lameduck::listen::inherited()?.into_iter().next();
    #[cfg(not(unix))]
    let inherited = None;
    let listener = match inherited {
        Some(listener) => listener,
        None => lameduck::listen::bind(args.listen)?,
    };
    let shutdown = lameduck::Shutdown::new();
    let _signals = lameduck::signals::install(&shutdown)?;
    let app = app(Readiness::new(shutdown.clone()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let serve = lameduck::http::serve(listener, app)
        .with_shutdown(shutdown)
        .drain_timeout(args.drain_timeout)
        .header_timeout(args.header_timeout)
        .lame_duck(args.lame_duck);
    let report = runtime.block_on(async move {
        // Tell a supervisor (lameduck run, or systemd with Type=notify) that we serve.
        #[cfg(unix)]
        lameduck::notify::ready()?;
        serve
            .run()
            .await
            .map_err(Box::<dyn std::error::Error>::from)
    })?;
    Ok(report)
}
