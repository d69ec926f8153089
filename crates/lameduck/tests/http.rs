//! The HTTP layer over real sockets: an axum `Router` served by `lameduck::http`, driven with
//! raw HTTP/1.1 where a client library would hide the behaviour (headers, closes, timing of
//! requests) and with hyper's HTTP/2 client for GOAWAY.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::routing::get;
use http_body_util::{BodyExt, Empty};
use hyper::body::Frame;
use lameduck::http::Readiness;
use lameduck::{Overload, Phase, Report, Shutdown};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

/// A started/release pair for holding a request open. Release is a level, not an edge: a
/// handler that starts waiting after the release still sees it.
struct Gate {
    started: mpsc::UnboundedSender<()>,
    release: watch::Sender<bool>,
}

impl Gate {
    fn open(&self) {
        self.release.send_replace(true);
    }
}

async fn hold(State(gate): State<Arc<Gate>>) -> &'static str {
    let mut released = gate.release.subscribe();
    let _ = gate.started.send(());
    let _ = released.wait_for(|r| *r).await;
    "released\n"
}

/// An endless body: `chunk` every `every` (or as fast as the client takes it).
struct Endless {
    chunk: Bytes,
    every: Option<tokio::time::Interval>,
}

impl http_body::Body for Endless {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(every) = self.every.as_mut() {
            std::task::ready!(every.poll_tick(cx));
        }
        Poll::Ready(Some(Ok(Frame::data(self.chunk.clone()))))
    }
}

fn app(gate: Arc<Gate>, readiness: Readiness) -> Router {
    Router::new()
        .route("/", get(|| async { "hello\n" }))
        .route("/hold", get(hold))
        .route(
            "/until-drain",
            get(
                |axum::Extension(conn): axum::Extension<lameduck::Connection>| async move {
                    conn.draining().await;
                    format!("drained, draining={}\n", conn.is_draining())
                },
            ),
        )
        .route(
            "/ticks",
            get(|| async {
                Body::new(Endless {
                    chunk: Bytes::from_static(b"tick\n"),
                    every: Some(tokio::time::interval(Duration::from_millis(50))),
                })
            }),
        )
        .route(
            "/flood",
            get(|| async {
                Body::new(Endless {
                    chunk: Bytes::from(vec![b'x'; 64 * 1024]),
                    every: None,
                })
            }),
        )
        .route(
            "/ready",
            get(move || {
                let ready = readiness.is_ready();
                async move { if ready { "ready" } else { "not ready" } }
            }),
        )
        .with_state(gate)
}

struct Running {
    addr: SocketAddr,
    shutdown: Shutdown,
    gate: Arc<Gate>,
    started: mpsc::UnboundedReceiver<()>,
    tracker: lameduck::Tracker,
    admission: lameduck::Admission,
    task: tokio::task::JoinHandle<Result<Report, lameduck::Error>>,
}

impl Running {
    async fn report(mut self) -> Report {
        timeout(WAIT, &mut self.task)
            .await
            .expect("server did not stop in time")
            .expect("server task panicked")
            .expect("server failed")
    }

    async fn wait_started(&mut self) {
        timeout(WAIT, self.started.recv())
            .await
            .expect("request never started");
    }

    async fn wait_phase(&self, phase: Phase) {
        timeout(WAIT, self.shutdown.reached(phase))
            .await
            .unwrap_or_else(|_| panic!("phase {phase} not reached"));
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.expect("connect")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.force();
        self.gate.open();
    }
}

fn start(
    configure: impl FnOnce(lameduck::http::Serve<Router>) -> lameduck::http::Serve<Router>,
) -> Running {
    let listener = lameduck::listen::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, started) = mpsc::unbounded_channel();
    let gate = Arc::new(Gate {
        started: tx,
        release: watch::channel(false).0,
    });
    let shutdown = Shutdown::new();
    let serve = lameduck::http::serve(
        listener,
        app(Arc::clone(&gate), Readiness::new(shutdown.clone())),
    )
    .with_shutdown(shutdown.clone());
    let serve = configure(serve);
    let tracker = serve.tracker();
    let admission = serve.admission();
    let task = tokio::spawn(serve.into_future());
    Running {
        addr,
        shutdown,
        gate,
        started,
        tracker,
        admission,
        task,
    }
}

use std::future::IntoFuture;

/// One parsed HTTP/1 response.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn send(stream: &mut TcpStream, path: &str) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .expect("send request");
}

/// Reads one response with a Content-Length body.
async fn read_response(stream: &mut TcpStream) -> Resp {
    timeout(WAIT, async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head) = resp.parse(&buf).expect("a valid response") {
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
                let status = resp.code.unwrap();
                let len: usize = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |(_, v)| v.parse().unwrap());
                while buf.len() < head + len {
                    let n = stream.read(&mut chunk).await.expect("read body");
                    assert!(n > 0, "connection closed in the body");
                    buf.extend_from_slice(&chunk[..n]);
                }
                return Resp {
                    status,
                    headers,
                    body: buf[head..head + len].to_vec(),
                };
            }
            let n = stream.read(&mut chunk).await.expect("read head");
            assert!(
                n > 0,
                "connection closed before a response; got {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("no response in time")
}

/// Expects the server to close the connection (EOF or reset) within the bound.
async fn expect_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 65536];
    timeout(WAIT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the server did not close the connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_request_completes_with_connection_close() {
    let mut server = start(|s| s);
    let mut client = server.connect().await;
    send(&mut client, "/hold").await;
    server.wait_started().await;
    server.shutdown.trigger();
    server.wait_phase(Phase::Draining).await;
    server.gate.open();
    let resp = read_response(&mut client).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"released\n");
    assert_eq!(resp.header("connection"), Some("close"));
    expect_closed(&mut client).await;
    let report = server.report().await;
    assert_eq!(
        (report.accepted, report.completed, report.forced),
        (1, 1, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_client_sending_just_after_the_drain_starts_is_answered() {
    let server = start(|s| s.keep_alive_grace(Duration::from_secs(2)));
    let mut client = server.connect().await;
    send(&mut client, "/").await;
    let first = read_response(&mut client).await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("connection"),
        None,
        "keep-alive before the drain"
    );
    server.shutdown.trigger();
    server.wait_phase(Phase::Draining).await;
    // The client did not know: a moment later (well inside the 2 s grace) it reuses its
    // idle connection.
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(&mut client, "/").await;
    let second = read_response(&mut client).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.body, b"hello\n");
    assert_eq!(second.header("connection"), Some("close"));
    expect_closed(&mut client).await;
    let report = server.report().await;
    assert_eq!((report.completed, report.forced), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connection_is_closed_after_the_grace() {
    let server = start(|s| s.keep_alive_grace(Duration::from_millis(200)));
    let mut client = server.connect().await;
    send(&mut client, "/").await;
    assert_eq!(read_response(&mut client).await.status, 200);
    server.shutdown.trigger();
    let closing = Instant::now();
    expect_closed(&mut client).await;
    assert!(
        closing.elapsed() >= Duration::from_millis(200),
        "closed before the grace"
    );
    assert!(server.report().await.is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_gets_goaway_and_its_open_stream_completes() {
    let mut server = start(|s| s);
    let io = hyper_util::rt::TokioIo::new(server.connect().await);
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .expect("h2 handshake");
    let conn_task = tokio::spawn(conn);
    let req = hyper::Request::get(format!("http://{}/hold", server.addr))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let in_flight = sender.send_request(req);
    let in_flight = tokio::spawn(in_flight);
    server.wait_started().await;
    server.shutdown.trigger();
    server.wait_phase(Phase::Draining).await;
    // GOAWAY: the client may open no new stream on this connection.
    let refused = timeout(WAIT, async {
        loop {
            let req = hyper::Request::get(format!("http://{}/", server.addr))
                .body(Empty::<Bytes>::new())
                .unwrap();
            match sender.send_request(req).await {
                Err(_) => return,
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    assert!(
        refused.is_ok(),
        "new streams were still accepted after GOAWAY"
    );
    server.gate.open();
    let resp = timeout(WAIT, in_flight)
        .await
        .unwrap()
        .unwrap()
        .expect("the open stream failed");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"released\n");
    timeout(WAIT, conn_task)
        .await
        .expect("h2 connection did not end")
        .unwrap()
        .expect("h2 connection failed");
    let report = server.report().await;
    assert_eq!((report.completed, report.forced), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_stream_is_cut_at_the_deadline() {
    let server = start(|s| s.drain_timeout(Duration::from_millis(300)));
    let mut client = server.connect().await;
    send(&mut client, "/ticks").await;
    let mut buf = [0u8; 1024];
    let n = timeout(WAIT, client.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    server.shutdown.trigger();
    expect_closed(&mut client).await;
    let report = server.report().await;
    assert_eq!((report.completed, report.forced), (0, 1));
    assert!(report.drain_duration >= Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_by_the_header_timeout_while_others_are_served() {
    let server = start(|s| s.header_timeout(Duration::from_millis(500)));
    let mut slow = server.connect().await;
    slow.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n")
        .await
        .unwrap();
    let began = Instant::now();
    let trickle = async {
        // One header byte every 100 ms, never finishing the head.
        loop {
            if slow.write_all(b"X").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut probe = [0u8; 1];
            match timeout(Duration::from_millis(1), slow.read(&mut probe)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                _ => {}
            }
        }
    };
    let others = async {
        for _ in 0..3 {
            let mut c = server.connect().await;
            send(&mut c, "/").await;
            assert_eq!(read_response(&mut c).await.status, 200);
        }
    };
    let (cut, ()) = tokio::join!(timeout(WAIT, trickle), others);
    assert!(cut.is_ok(), "the slowloris connection was never cut");
    assert!(began.elapsed() >= Duration::from_millis(500));
    server.shutdown.trigger();
    server.report().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_is_cut_by_the_header_timeout() {
    let server = start(|s| s.header_timeout(Duration::from_millis(300)));
    let mut silent = server.connect().await;
    expect_closed(&mut silent).await;
    server.shutdown.trigger();
    server.report().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let server = start(|s| {
        s.idle_timeout(Duration::from_millis(300))
            .header_timeout(Duration::from_secs(30))
    });
    let mut client = server.connect().await;
    send(&mut client, "/").await;
    assert_eq!(read_response(&mut client).await.status, 200);
    let idle_from = Instant::now();
    expect_closed(&mut client).await;
    // The server starts counting when it finishes the response, a moment before the client
    // has read it; the bound only shows the close was not immediate.
    assert!(idle_from.elapsed() >= Duration::from_millis(100));
    server.shutdown.trigger();
    server.report().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_stops_reading_is_cut_by_the_write_timeout() {
    let server = start(|s| s.write_timeout(Duration::from_millis(300)));
    let mut client = server.connect().await;
    send(&mut client, "/flood").await;
    // Never read: the socket buffers fill and the server's writes stall.
    timeout(WAIT, async {
        while server.tracker.accepted() == 0 || server.tracker.active() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the stalled connection was never cut");
    drop(client);
    server.shutdown.trigger();
    let report = server.report().await;
    assert_eq!((report.accepted, report.forced), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shed_answers_503_with_retry_after_at_the_limit() {
    let mut server = start(|s| s.max_connections(1).overload(Overload::Shed));
    let mut holder = server.connect().await;
    send(&mut holder, "/hold").await;
    server.wait_started().await;
    let mut extra = server.connect().await;
    send(&mut extra, "/").await;
    let resp = read_response(&mut extra).await;
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("retry-after"), Some("1"));
    assert_eq!(server.admission.rejected(), 1);
    server.gate.open();
    assert_eq!(read_response(&mut holder).await.status, 200);
    drop(holder);
    server.shutdown.trigger();
    let report = server.report().await;
    assert_eq!(
        report.accepted, 1,
        "the shed connection is not counted as served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_policy_keeps_extra_clients_in_the_backlog() {
    let mut server = start(|s| s.max_connections(1));
    let mut holder = server.connect().await;
    send(&mut holder, "/hold").await;
    server.wait_started().await;
    let mut extra = server.connect().await;
    send(&mut extra, "/").await;
    let mut buf = [0u8; 1];
    assert!(
        timeout(Duration::from_millis(300), extra.read(&mut buf))
            .await
            .is_err(),
        "the extra client was answered past the limit"
    );
    // Not accepted and held either: it waits in the kernel backlog.
    assert_eq!(
        server.tracker.accepted(),
        1,
        "the extra client was accepted"
    );
    assert_eq!(server.admission.in_use(), 1);
    server.gate.open();
    assert_eq!(read_response(&mut holder).await.status, 200);
    drop(holder);
    assert_eq!(read_response(&mut extra).await.status, 200);
    server.shutdown.trigger();
    drop(extra);
    assert_eq!(server.report().await.accepted, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_flips_before_accepting_stops() {
    let server = start(|s| s.lame_duck(Duration::from_millis(500)));
    let get = |path: &'static str| {
        let addr = server.addr;
        async move {
            let mut c = TcpStream::connect(addr).await?;
            send(&mut c, path).await;
            Ok::<_, std::io::Error>(read_response(&mut c).await)
        }
    };
    assert_eq!(get("/ready").await.unwrap().body, b"ready");
    server.shutdown.trigger();
    // Lame duck: not ready, but still accepting and serving.
    assert_eq!(get("/ready").await.unwrap().body, b"not ready");
    assert_eq!(get("/").await.unwrap().status, 200);
    server.wait_phase(Phase::Draining).await;
    let refused = TcpStream::connect(server.addr).await;
    assert!(
        refused.is_err(),
        "still accepting after the lame-duck period"
    );
    server.report().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_head_gets_431() {
    let server = start(|s| s.max_header_size(16 * 1024));
    let mut client = server.connect().await;
    let big = "a".repeat(32 * 1024);
    let req = format!("GET / HTTP/1.1\r\nHost: test\r\nX-Big: {big}\r\n\r\n");
    // The server may stop reading before the whole head is written.
    let _ = client.write_all(req.as_bytes()).await;
    let resp = read_response(&mut client).await;
    assert_eq!(resp.status, 431);
    server.shutdown.trigger();
    server.report().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_gets_400_and_others_are_served() {
    let server = start(|s| s);
    let mut bad = server.connect().await;
    bad.write_all(b"NOT HTTP AT ALL\x01\r\n\r\n").await.unwrap();
    let resp = read_response(&mut bad).await;
    assert_eq!(resp.status, 400);
    let mut good = server.connect().await;
    send(&mut good, "/").await;
    assert_eq!(read_response(&mut good).await.status, 200);
    server.shutdown.trigger();
    drop(good);
    server.report().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_learn_of_the_drain_through_the_request_extension() {
    let server = start(|s| s);
    let mut client = server.connect().await;
    send(&mut client, "/until-drain").await;
    let mut probe = [0u8; 1];
    assert!(
        timeout(Duration::from_millis(200), client.read(&mut probe))
            .await
            .is_err(),
        "answered before the drain"
    );
    server.shutdown.trigger();
    let resp = read_response(&mut client).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"drained, draining=true\n");
    assert_eq!(resp.header("connection"), Some("close"));
    let report = server.report().await;
    assert_eq!((report.completed, report.forced), (1, 0));
}

/// A plain tower service (not axum) whose calls can fail.
#[derive(Clone)]
struct Fallible;

impl tower_service::Service<hyper::Request<hyper::body::Incoming>> for Fallible {
    type Response = hyper::Response<http_body_util::Full<Bytes>>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        std::future::ready(if req.uri().path() == "/fail" {
            Err(std::io::Error::other("the service failed"))
        } else {
            Ok(hyper::Response::new(http_body_util::Full::new(
                Bytes::from_static(b"ok\n"),
            )))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_tower_service_with_errors_is_served() {
    let listener = lameduck::listen::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let serve = lameduck::http::serve(listener, Fallible);
    let shutdown = serve.shutdown_handle();
    let task = tokio::spawn(serve.into_future());
    let mut failing = TcpStream::connect(addr).await.unwrap();
    send(&mut failing, "/fail").await;
    expect_closed(&mut failing).await;
    let mut fine = TcpStream::connect(addr).await.unwrap();
    send(&mut fine, "/").await;
    let resp = read_response(&mut fine).await;
    assert_eq!((resp.status, &resp.body[..]), (200, &b"ok\n"[..]));
    drop(fine);
    shutdown.trigger();
    let report = timeout(WAIT, task).await.unwrap().unwrap().unwrap();
    assert_eq!(report.accepted, 2);
}
