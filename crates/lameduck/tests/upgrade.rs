//! Upgraded connections (WebSockets in an axum `Router`) and HTTP/2 stream tasks stay inside
//! the lifecycle: counted while open, past the header timeout, told of the drain, waited for,
//! and cut at the deadline. Driven by a real WebSocket client (tokio-tungstenite) and hyper's
//! HTTP/2 client.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::Extension;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use hyper::body::Frame;
use lameduck::{Report, Shutdown, Tracker};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite;

const WAIT: Duration = Duration::from_secs(10);

/// Echoes text messages; when the server starts draining, sends a close frame (unless told
/// to ignore the drain) and ends.
fn ws(
    upgrade: WebSocketUpgrade,
    Extension(conn): Extension<lameduck::Connection>,
    ignore_drain: bool,
) -> Response {
    upgrade.on_upgrade(move |mut socket: WebSocket| async move {
        let draining = conn.draining();
        tokio::pin!(draining);
        loop {
            tokio::select! {
                _ = &mut draining, if !ignore_drain => {
                    let _ = socket
                        .send(Message::Close(Some(CloseFrame {
                            code: close_code::AWAY,
                            reason: "server draining".into(),
                        })))
                        .await;
                    // Wait for the client's close reply, then end.
                    while let Some(Ok(msg)) = socket.recv().await {
                        if matches!(msg, Message::Close(_)) {
                            break;
                        }
                    }
                    return;
                }
                msg = socket.recv() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        if socket.send(Message::Text(t)).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => {}
                }
            }
        }
    })
}

/// An endless HTTP/2 body that records that it was dropped.
struct Endless {
    dropped: Arc<AtomicBool>,
    tick: tokio::time::Interval,
}

impl http_body::Body for Endless {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::task::ready!(self.tick.poll_tick(cx));
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"tick\n")))))
    }
}

impl Drop for Endless {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

struct Running {
    addr: SocketAddr,
    shutdown: Shutdown,
    tracker: Tracker,
    task: JoinHandle<Result<Report, lameduck::Error>>,
}

fn start(
    configure: impl FnOnce(lameduck::http::Serve<Router>) -> lameduck::http::Serve<Router>,
    dropped: Arc<AtomicBool>,
) -> Running {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = std_listener.local_addr().unwrap();
    let app =
        Router::new()
            .route(
                "/ws",
                get(
                    |u: WebSocketUpgrade, c: Extension<lameduck::Connection>| async move {
                        ws(u, c, false)
                    },
                ),
            )
            .route(
                "/ws-stubborn",
                get(
                    |u: WebSocketUpgrade, c: Extension<lameduck::Connection>| async move {
                        ws(u, c, true)
                    },
                ),
            )
            .route(
                "/endless",
                get(move || {
                    let dropped = Arc::clone(&dropped);
                    async move {
                        axum::body::Body::new(Endless {
                            dropped,
                            tick: tokio::time::interval(Duration::from_millis(50)),
                        })
                    }
                }),
            );
    let serve = configure(lameduck::http::serve(std_listener, app));
    let shutdown = serve.shutdown_handle();
    let tracker = serve.tracker();
    let task = tokio::spawn(serve.into_future());
    Running {
        addr,
        shutdown,
        tracker,
        task,
    }
}

use std::future::IntoFuture as _;

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn open_ws(addr: SocketAddr, query: &str) -> Ws {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (ws, resp) = timeout(
        WAIT,
        tokio_tungstenite::client_async(format!("ws://{addr}/ws{query}"), tcp),
    )
    .await
    .expect("handshake in time")
    .expect("websocket handshake");
    assert_eq!(resp.status(), 101);
    ws
}

async fn echo(ws: &mut Ws, text: &str) {
    ws.send(tungstenite::Message::text(text)).await.unwrap();
    let got = timeout(WAIT, ws.next()).await.expect("echo in time");
    match got {
        Some(Ok(tungstenite::Message::Text(t))) => assert_eq!(t.as_str(), text),
        other => panic!("expected an echo, got {other:?}"),
    }
}

async fn wait_active(tracker: &Tracker, n: usize) {
    let end = Instant::now() + WAIT;
    while tracker.active() != n {
        assert!(
            Instant::now() < end,
            "active stayed {} (want {n})",
            tracker.active()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_lives_past_the_header_timeout_and_is_counted_while_open() {
    let server = start(
        |s| s.header_timeout(Duration::from_millis(300)),
        Arc::default(),
    );
    let mut ws = open_ws(server.addr, "").await;
    echo(&mut ws, "one").await;
    // Well past the header timeout, with frames sent in between (each used to start a
    // "request head" timer).
    for i in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        echo(&mut ws, &format!("again {i}")).await;
    }
    assert_eq!(
        server.tracker.active(),
        1,
        "the upgraded connection is counted"
    );
    ws.close(None).await.unwrap();
    drop(ws);
    wait_active(&server.tracker, 0).await;
    server.shutdown.trigger();
    let report = timeout(WAIT, server.task).await.unwrap().unwrap().unwrap();
    assert_eq!(
        (report.accepted, report.completed, report.forced),
        (1, 1, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_gets_a_close_frame_when_the_drain_starts_and_serve_waits_for_it() {
    let server = start(|s| s.drain_timeout(Duration::from_secs(30)), Arc::default());
    let mut ws = open_ws(server.addr, "").await;
    echo(&mut ws, "hello").await;
    server.shutdown.trigger();
    let msg = timeout(WAIT, ws.next()).await.expect("close frame in time");
    match msg {
        Some(Ok(tungstenite::Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 1001);
            assert_eq!(frame.reason.as_str(), "server draining");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    // The server is still draining: it waits for this connection.
    assert!(!server.task.is_finished());
    assert_eq!(server.tracker.active(), 1);
    // The client answers the close; the connection ends; the drain is clean.
    let _ = ws.close(None).await;
    while let Ok(Some(_)) = timeout(WAIT, ws.next()).await {}
    let report = timeout(WAIT, server.task).await.unwrap().unwrap().unwrap();
    assert_eq!(
        (report.accepted, report.completed, report.forced),
        (1, 1, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_ignoring_the_drain_is_cut_at_the_deadline_and_counted() {
    let server = start(
        |s| s.drain_timeout(Duration::from_millis(500)),
        Arc::default(),
    );
    let mut ws = open_ws(server.addr, "-stubborn").await;
    echo(&mut ws, "hello").await;
    let triggered = Instant::now();
    server.shutdown.trigger();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Still open, still counted, and serve has not returned.
    echo(&mut ws, "still here").await;
    assert!(!server.task.is_finished());
    assert_eq!(server.tracker.active(), 1);
    // At the deadline the server cuts it.
    let end = timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(tungstenite::Message::Text(_))) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the connection is cut");
    assert!(
        !matches!(end, Some(Ok(tungstenite::Message::Close(Some(_))))),
        "it was cut, not closed by the app: {end:?}"
    );
    let report = timeout(WAIT, server.task).await.unwrap().unwrap().unwrap();
    assert!(triggered.elapsed() >= Duration::from_millis(500));
    assert_eq!((report.accepted, report.forced, report.stuck), (1, 1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_idle_timeout_applies_only_when_set() {
    let server = start(
        |s| s.upgraded_idle_timeout(Duration::from_millis(300)),
        Arc::default(),
    );
    let mut ws = open_ws(server.addr, "").await;
    echo(&mut ws, "hello").await;
    let silent = Instant::now();
    let end = timeout(WAIT, ws.next())
        .await
        .expect("cut by the idle timeout");
    assert!(!matches!(end, Some(Ok(tungstenite::Message::Text(_)))));
    assert!(silent.elapsed() >= Duration::from_millis(250));
    wait_active(&server.tracker, 0).await;
    server.shutdown.trigger();
    timeout(WAIT, server.task).await.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_stream_tasks_are_tracked_and_cut_before_serve_returns() {
    let dropped = Arc::new(AtomicBool::new(false));
    let server = start(
        |s| s.drain_timeout(Duration::from_millis(300)),
        Arc::clone(&dropped),
    );
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut client, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/endless", server.addr))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = client.send_request(req).await.unwrap();
    let mut body = resp.into_body();
    use http_body_util::BodyExt as _;
    let first = timeout(WAIT, body.frame()).await.unwrap().unwrap().unwrap();
    assert!(first.is_data());
    assert_eq!(server.tracker.active(), 1);
    server.shutdown.trigger();
    let report = timeout(WAIT, server.task).await.unwrap().unwrap().unwrap();
    // The stream's task (where the body lives) was cut and gone before serve returned.
    assert!(
        dropped.load(Ordering::SeqCst),
        "the stream's body outlived serve"
    );
    assert_eq!((report.accepted, report.forced, report.stuck), (1, 1, 0));
    assert_eq!(server.tracker.active(), 0);
}
