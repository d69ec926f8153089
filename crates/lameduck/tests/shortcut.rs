//! `Serve::shortcut` over real sockets: which requests it answers and which go to the
//! service, on the same connection and across it (keep-alive, pipelining, a request split
//! over two writes), and that the connection's lifecycle is the same on it: `Connection:
//! close`, the drain (its `Connection: close` and the idle grace), the idle, header and write
//! timeouts.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::routing::get;
use lameduck::http::{ShortAnswer, ShortRequest, Shortcut};
use lameduck::{Report, Shutdown};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

#[cfg(target_os = "linux")]
#[path = "support/tcp_info.rs"]
mod tcp_info;

const WAIT: Duration = Duration::from_secs(10);
const FAST_BODY: &[u8] = b"fast\n";
/// Larger than any socket buffer: its write stalls on a client that does not read.
const BIG: usize = 16 * 1024 * 1024;

/// Answers `/fast` and `/big`, as the service does, and counts its answers.
struct Fast {
    answered: Arc<AtomicUsize>,
    big: Bytes,
}

impl Shortcut for Fast {
    fn answer(&self, request: &ShortRequest<'_>) -> Option<ShortAnswer> {
        let body = match request.path() {
            "/fast" => Bytes::from_static(FAST_BODY),
            "/big" => self.big.clone(),
            _ => return None,
        };
        self.answered.fetch_add(1, Ordering::Relaxed);
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n",
            body.len()
        );
        Some(ShortAnswer::new(Bytes::from(head), body))
    }
}

struct Running {
    addr: SocketAddr,
    shutdown: Shutdown,
    /// Requests the shortcut answered.
    short: Arc<AtomicUsize>,
    /// Requests the service answered.
    service: Arc<AtomicUsize>,
    tracker: lameduck::Tracker,
    task: tokio::task::JoinHandle<Result<Report, lameduck::Error>>,
}

impl Running {
    async fn connect(&self) -> Conn {
        Conn {
            stream: TcpStream::connect(self.addr).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    fn counts(&self) -> (usize, usize) {
        (
            self.short.load(Ordering::Relaxed),
            self.service.load(Ordering::Relaxed),
        )
    }

    async fn report(mut self) -> Report {
        timeout(WAIT, &mut self.task)
            .await
            .expect("server did not stop in time")
            .expect("server task panicked")
            .expect("server failed")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.force();
    }
}

fn start(
    configure: impl FnOnce(lameduck::http::Serve<Router>) -> lameduck::http::Serve<Router>,
) -> Running {
    let listener = lameduck::listen::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let short = Arc::new(AtomicUsize::new(0));
    let service = Arc::new(AtomicUsize::new(0));
    let big = Bytes::from(vec![b'b'; BIG]);
    let counted = |service: &Arc<AtomicUsize>, body: Bytes| {
        let service = Arc::clone(service);
        move || {
            service.fetch_add(1, Ordering::Relaxed);
            let body = body.clone();
            async move { ([("content-type", "text/plain; charset=utf-8")], body) }
        }
    };
    let app = Router::new()
        .route(
            "/fast",
            get(counted(&service, Bytes::from_static(FAST_BODY))),
        )
        .route("/big", get(counted(&service, big.clone())))
        .route("/big-service", get(counted(&service, big.clone())))
        .route("/slow", get(slow(Arc::clone(&service))))
        .route("/stream", get(stream(Arc::clone(&service))))
        .route("/bye", get(bye(Arc::clone(&service))))
        .route(
            "/other",
            get(counted(&service, Bytes::from_static(b"other\n"))),
        );
    let shutdown = Shutdown::new();
    let serve = lameduck::http::serve(listener, app)
        .with_shutdown(shutdown.clone())
        .shortcut(Fast {
            answered: Arc::clone(&short),
            big,
        });
    let serve = configure(serve);
    let tracker = serve.tracker();
    let task = tokio::spawn(serve.into_future());
    Running {
        addr,
        shutdown,
        short,
        service,
        tracker,
        task,
    }
}

/// `/slow`: the service's answer after 500 ms.
fn slow(
    service: Arc<AtomicUsize>,
) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = &'static str> + Send>> + Clone {
    move || {
        service.fetch_add(1, Ordering::Relaxed);
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            "slow\n"
        })
    }
}

/// `/stream`: a body of unknown length (chunked), in three parts 50 ms apart.
fn stream(service: Arc<AtomicUsize>) -> impl Fn() -> std::future::Ready<axum::body::Body> + Clone {
    move || {
        service.fetch_add(1, Ordering::Relaxed);
        let parts = futures_util::stream::unfold(0, |i| async move {
            if i == 3 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            Some((
                Ok::<_, std::io::Error>(Bytes::from(format!("part {i}\n"))),
                i + 1,
            ))
        });
        std::future::ready(axum::body::Body::from_stream(parts))
    }
}

/// `/bye`: the service's answer says `Connection: close` of its own accord.
fn bye(
    service: Arc<AtomicUsize>,
) -> impl Fn() -> std::future::Ready<([(&'static str, &'static str); 1], &'static str)> + Clone {
    move || {
        service.fetch_add(1, Ordering::Relaxed);
        std::future::ready(([("connection", "close")], "bye\n"))
    }
}

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

/// A client connection that keeps what it read beyond one response for the next.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn send(&mut self, raw: &str) {
        self.stream
            .write_all(raw.as_bytes())
            .await
            .expect("send request");
    }

    async fn get(&mut self, path: &str) {
        self.send(&format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n"))
            .await;
    }

    /// Reads one response (`head`: to a `HEAD`, so no body whatever the length says).
    async fn response(&mut self, head: bool) -> Resp {
        timeout(WAIT, async {
            loop {
                let mut headers = [httparse::EMPTY_HEADER; 32];
                let mut resp = httparse::Response::new(&mut headers);
                if let httparse::Status::Complete(n) =
                    resp.parse(&self.buf).expect("a valid response")
                {
                    let headers: Vec<(String, String)> = resp
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    let status = resp.code.expect("a status");
                    let chunked = headers
                        .iter()
                        .any(|(k, v)| k == "transfer-encoding" && v == "chunked");
                    if chunked && !head {
                        self.buf.drain(..n);
                        let body = self.chunked().await;
                        return Resp {
                            status,
                            headers,
                            body,
                        };
                    }
                    let len: usize = if head {
                        0
                    } else {
                        headers
                            .iter()
                            .find(|(k, _)| k == "content-length")
                            .map_or(0, |(_, v)| v.parse().expect("a length"))
                    };
                    while self.buf.len() < n + len {
                        self.fill().await;
                    }
                    let body = self.buf[n..n + len].to_vec();
                    self.buf.drain(..n + len);
                    return Resp {
                        status,
                        headers,
                        body,
                    };
                }
                self.fill().await;
            }
        })
        .await
        .expect("no response in time")
    }

    /// A chunked body at the start of the buffer, decoded (no trailers).
    async fn chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line = loop {
                if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break at;
                }
                self.fill().await;
            };
            let size = std::str::from_utf8(&self.buf[..line]).expect("a chunk size");
            let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
            while self.buf.len() < line + 2 + size + 2 {
                self.fill().await;
            }
            body.extend_from_slice(&self.buf[line + 2..line + 2 + size]);
            assert_eq!(&self.buf[line + 2 + size..line + 4 + size], b"\r\n");
            self.buf.drain(..line + 4 + size);
            if size == 0 {
                return body;
            }
        }
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 64 * 1024];
        let n = self.stream.read(&mut chunk).await.expect("read");
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// The server closes the connection (EOF) within `within`, with nothing more sent.
    async fn expect_eof(&mut self, within: Duration) {
        let mut rest = Vec::new();
        let read = timeout(within, self.stream.read_to_end(&mut rest))
            .await
            .expect("the connection was not closed in time");
        // A reset after the last response counts as closed too.
        if read.is_ok() {
            assert!(rest.is_empty(), "unexpected bytes: {rest:?}");
        }
        assert!(self.buf.is_empty(), "unread bytes: {:?}", self.buf);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_gets_are_the_shortcuts_and_everything_else_the_services() {
    let server = start(|s| s);
    let mut conn = server.connect().await;
    // Keep-alive: the shortcut's, three times.
    for _ in 0..3 {
        conn.get("/fast").await;
        let resp = conn.response(false).await;
        assert_eq!((resp.status, &resp.body[..]), (200, FAST_BODY));
        assert!(resp.header("date").is_some_and(|d| d.ends_with(" GMT")));
        assert_eq!(resp.header("connection"), None);
    }
    assert_eq!(server.counts(), (3, 0));
    // HEAD: the length, no body.
    conn.send("HEAD /fast HTTP/1.1\r\nHost: test\r\n\r\n").await;
    let resp = conn.response(true).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-length"), Some("5"));
    // A path the shortcut declines: the service answers it, and the next request is the
    // shortcut's again.
    conn.get("/other").await;
    let other = conn.response(false).await;
    assert_eq!(other.body, b"other\n");
    assert_eq!(
        other.header("connection"),
        None,
        "kept alive, as hyper keeps it"
    );
    conn.get("/fast").await;
    assert_eq!(conn.response(false).await.body, FAST_BODY);
    assert_eq!(server.counts(), (5, 1));
    // A request the shortcut is never offered (HTTP/1.0): hyper takes it and the rest of the
    // connection.
    conn.send("GET /fast HTTP/1.0\r\nHost: test\r\nConnection: keep-alive\r\n\r\n")
        .await;
    assert_eq!(conn.response(false).await.body, FAST_BODY);
    conn.get("/fast").await;
    let from_service = conn.response(false).await;
    assert_eq!(server.counts(), (5, 3));
    // The same answer either way.
    assert_eq!(
        (from_service.status, &from_service.body[..]),
        (200, FAST_BODY)
    );
    assert_eq!(
        from_service.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    // Requests the shortcut is never offered, each on its own connection.
    for (i, raw) in [
        "GET /fast HTTP/1.0\r\nHost: test\r\nConnection: keep-alive\r\n\r\n",
        "GET /fast HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n",
        "GET /fast HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\n\r\n",
        "GET /fast HTTP/1.1\r\nHost: test\r\nConnection: keep-alive, x-other\r\n\r\n",
        "GET http://test/fast HTTP/1.1\r\nHost: test\r\n\r\n",
    ]
    .into_iter()
    .enumerate()
    {
        let mut conn = server.connect().await;
        conn.send(raw).await;
        let resp = conn.response(false).await;
        assert_eq!((resp.status, &resp.body[..]), (200, FAST_BODY), "{raw:?}");
        assert_eq!(server.counts(), (5, 4 + i), "{raw:?}");
    }
    // Refused by the server itself, not by the shortcut: no Host, two Hosts.
    for raw in [
        "GET /fast HTTP/1.1\r\n\r\n",
        "GET /fast HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ] {
        let mut conn = server.connect().await;
        conn.send(raw).await;
        assert_eq!(conn.response(false).await.status, 400, "{raw:?}");
    }
    // Neither reached the service.
    assert_eq!(server.counts(), (5, 8));
    drop(conn);
    server.shutdown.trigger();
    let report = server.report().await;
    assert_eq!(report.forced, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_and_split_requests_are_answered_in_order() {
    let server = start(|s| s);
    let mut conn = server.connect().await;
    // In one write: two the shortcut's, one it declines (the service's, alone), one more of
    // the shortcut's, one declined with a 16 MiB answer, one of the shortcut's, then one
    // it is never offered (after which hyper answers the rest).
    conn.send(concat!(
        "GET /fast HTTP/1.1\r\nHost: test\r\n\r\n",
        "GET /fast HTTP/1.1\r\nHost: test\r\n\r\n",
        "GET /other HTTP/1.1\r\nHost: test\r\n\r\n",
        "GET /fast HTTP/1.1\r\nHost: test\r\n\r\n",
        "GET /big-service HTTP/1.1\r\nHost: test\r\n\r\n",
        "GET /fast HTTP/1.1\r\nHost: test\r\n\r\n",
        "GET /fast HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n",
        "GET /fast HTTP/1.1\r\nHost: test\r\n\r\n",
    ))
    .await;
    let big = vec![b'b'; BIG];
    let bodies = [
        FAST_BODY,
        FAST_BODY,
        &b"other\n"[..],
        FAST_BODY,
        &big[..],
        FAST_BODY,
        FAST_BODY,
        FAST_BODY,
    ];
    for (i, body) in bodies.into_iter().enumerate() {
        let resp = conn.response(false).await;
        assert_eq!(resp.status, 200, "response {i}");
        assert!(resp.body == body, "response {i}: {} bytes", resp.body.len());
    }
    assert_eq!(server.counts(), (4, 4));
    // A request head in two writes: not complete in the first read, so the service's.
    let mut split = server.connect().await;
    split.send("GET /fast HTTP/1.1\r\nHo").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    split.send("st: test\r\n\r\n").await;
    assert_eq!(split.response(false).await.body, FAST_BODY);
    assert_eq!(server.counts(), (4, 5));
    drop((conn, split));
    server.shutdown.trigger();
    server.report().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_ends_the_connection_after_the_answer() {
    let server = start(|s| s);
    let mut conn = server.connect().await;
    conn.send("GET /fast HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await;
    let resp = conn.response(false).await;
    assert_eq!(resp.body, FAST_BODY);
    assert_eq!(resp.header("connection"), Some("close"));
    conn.expect_eof(WAIT).await;
    assert_eq!(server.counts(), (1, 0));
    server.shutdown.trigger();
    assert_eq!(server.report().await.forced, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_draining_answers_say_close_and_idle_connections_end_after_the_grace() {
    let grace = Duration::from_millis(1500);
    let server = start(|s| s.keep_alive_grace(grace));
    let mut busy = server.connect().await;
    let mut idle = server.connect().await;
    for conn in [&mut busy, &mut idle] {
        conn.get("/fast").await;
        assert_eq!(conn.response(false).await.body, FAST_BODY);
    }
    server.shutdown.trigger();
    let began = Instant::now();
    timeout(WAIT, async {
        while !server.shutdown.is_draining() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the drain never began");
    // Within the grace: answered, with `Connection: close`, then closed.
    busy.get("/fast").await;
    let resp = busy.response(false).await;
    assert_eq!(resp.body, FAST_BODY);
    assert_eq!(resp.header("connection"), Some("close"));
    busy.expect_eof(WAIT).await;
    assert_eq!(server.counts(), (3, 0));
    // The idle one is closed once the grace is over, not before.
    idle.expect_eof(grace + WAIT).await;
    assert!(
        began.elapsed() >= grace - Duration::from_millis(100),
        "closed after {:?}, before the grace",
        began.elapsed()
    );
    let report = server.report().await;
    assert_eq!((report.accepted, report.forced), (2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_header_timeouts_apply_after_a_shortcut_answer() {
    let server = start(|s| {
        s.idle_timeout(Duration::from_millis(300))
            .header_timeout(Duration::from_millis(300))
    });
    // Idle after an answer: closed by the idle timeout.
    let mut idle = server.connect().await;
    idle.get("/fast").await;
    assert_eq!(idle.response(false).await.body, FAST_BODY);
    let answered = Instant::now();
    idle.expect_eof(WAIT).await;
    assert!(answered.elapsed() >= Duration::from_millis(250));
    // Half a request head after an answer: cut by the header timeout.
    let mut slow = server.connect().await;
    slow.get("/fast").await;
    assert_eq!(slow.response(false).await.body, FAST_BODY);
    slow.send("GET /fast HTTP/1.1\r\n").await;
    let sent = Instant::now();
    let mut rest = Vec::new();
    let _ = timeout(WAIT, slow.stream.read_to_end(&mut rest))
        .await
        .expect("the half-sent head was never cut");
    assert!(sent.elapsed() >= Duration::from_millis(250));
    assert!(
        rest.is_empty() || rest.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
    assert_eq!(server.counts(), (2, 0));
    server.shutdown.trigger();
    assert_eq!(server.report().await.forced, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_shortcut_answer_is_cut_by_the_write_timeout() {
    let server = start(|s| s.write_timeout(Duration::from_millis(300)));
    let mut conn = server.connect().await;
    conn.get("/big").await;
    // Never read: the socket buffers fill and the server's write stalls.
    timeout(WAIT, async {
        while server.tracker.accepted() == 0 || server.tracker.active() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the stalled connection was never cut");
    assert_eq!(server.counts(), (1, 0));
    drop(conn);
    server.shutdown.trigger();
    let report = server.report().await;
    assert_eq!((report.accepted, report.forced), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_answer_arrives_whole() {
    let server = start(|s| s);
    let mut conn = server.connect().await;
    for _ in 0..2 {
        conn.get("/big").await;
        let resp = conn.response(false).await;
        assert_eq!(resp.body.len(), BIG);
        assert!(resp.body.iter().all(|&b| b == b'b'));
    }
    assert_eq!(server.counts(), (2, 0));
    drop(conn);
    server.shutdown.trigger();
    server.report().await;
}

/// A shortcut answer that ends its connection reaches the client in as many segments as the
/// same answer kept alive: its tail and the FIN travel together (the cork).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_shortcut_answer_and_its_fin_share_a_segment() {
    let server = start(|s| s);
    let mut kept = server.connect().await;
    kept.get("/fast").await;
    assert_eq!(kept.response(false).await.body, FAST_BODY);
    let kept_alive = tcp_info::tcp_info(&kept.stream).tcpi_segs_in;
    let mut last = server.connect().await;
    last.send("GET /fast HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(last.response(false).await.body, FAST_BODY);
    last.expect_eof(WAIT).await;
    // Without the cork: one more, the FIN on its own.
    assert_eq!(
        tcp_info::tcp_info(&last.stream).tcpi_segs_in,
        kept_alive,
        "segments received, closed vs kept alive"
    );
    assert_eq!(server.counts(), (2, 0));
    drop(kept);
    server.shutdown.trigger();
    server.report().await;
}

/// At the connection limit, a connection idle after a shortcut answer is closed to make room,
/// as one idle after hyper's answer is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_limit_a_connection_idle_after_a_shortcut_answer_makes_room() {
    // Timeouts far beyond the wait below: only making room can free the slot in time.
    let server = start(|s| {
        s.max_connections(1)
            .header_timeout(Duration::from_secs(60))
            .idle_timeout(Duration::from_secs(60))
    });
    let mut idle = server.connect().await;
    idle.get("/fast").await;
    assert_eq!(idle.response(false).await.body, FAST_BODY);
    // Bounded: `response` gives up after WAIT.
    let mut next = server.connect().await;
    next.get("/fast").await;
    assert_eq!(next.response(false).await.body, FAST_BODY);
    idle.expect_eof(WAIT).await;
    assert_eq!(server.counts(), (2, 0));
    drop(next);
    server.shutdown.trigger();
    let report = server.report().await;
    assert_eq!((report.accepted, report.forced), (2, 0));
}

/// A request the shortcut declines is answered by the service alone, and the connection comes
/// back to the shortcut after it, whatever the service's body: a streamed (chunked) one, one
/// that waits, one of 16 MiB. The service's `Connection: close` still ends the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_request_the_shortcut_declines_the_connection_comes_back_to_it() {
    let server = start(|s| s);
    let mut conn = server.connect().await;
    let mut expected = (0, 0);
    for (path, body) in [
        ("/stream", &b"part 0\npart 1\npart 2\n"[..]),
        ("/slow", b"slow\n"),
        ("/big-service", &vec![b'b'; BIG][..]),
    ] {
        conn.get(path).await;
        let resp = conn.response(false).await;
        assert_eq!(resp.status, 200, "{path}");
        assert!(resp.body == body, "{path}: {} bytes", resp.body.len());
        assert_eq!(resp.header("connection"), None, "{path}");
        expected.1 += 1;
        // HEAD of the same, then the shortcut's.
        conn.send(&format!("HEAD {path} HTTP/1.1\r\nHost: test\r\n\r\n"))
            .await;
        assert_eq!(conn.response(true).await.status, 200, "HEAD {path}");
        expected.1 += 1;
        for _ in 0..2 {
            conn.get("/fast").await;
            assert_eq!(conn.response(false).await.body, FAST_BODY, "after {path}");
            expected.0 += 1;
        }
        assert_eq!(server.counts(), expected, "after {path}");
    }
    // The service says close: the connection ends after its answer.
    conn.get("/bye").await;
    let resp = conn.response(false).await;
    assert_eq!((resp.status, &resp.body[..]), (200, &b"bye\n"[..]));
    assert_eq!(resp.header("connection"), Some("close"));
    conn.expect_eof(WAIT).await;
    // The client says close on a request the shortcut declines: the same.
    let mut closing = server.connect().await;
    closing
        .send("GET /other HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await;
    let resp = closing.response(false).await;
    assert_eq!(resp.body, b"other\n");
    assert_eq!(resp.header("connection"), Some("close"));
    closing.expect_eof(WAIT).await;
    server.shutdown.trigger();
    let report = server.report().await;
    assert_eq!((report.accepted, report.forced), (2, 0));
}

/// A drain that begins while the service answers a declined request alone: that answer says
/// `Connection: close`, and the connection ends after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_during_a_declined_request_closes_the_connection_after_its_answer() {
    let server = start(|s| s.keep_alive_grace(Duration::from_secs(5)));
    let mut conn = server.connect().await;
    conn.get("/fast").await;
    assert_eq!(conn.response(false).await.body, FAST_BODY);
    conn.get("/slow").await;
    // The service has it (and sleeps 500 ms) before the drain begins.
    timeout(WAIT, async {
        while server.counts().1 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the service never got the request");
    let began = Instant::now();
    server.shutdown.trigger();
    let resp = conn.response(false).await;
    assert_eq!(resp.body, b"slow\n");
    assert_eq!(resp.header("connection"), Some("close"));
    conn.expect_eof(WAIT).await;
    assert!(
        began.elapsed() < Duration::from_secs(4),
        "closed after {:?}: it waited for the keep-alive grace",
        began.elapsed()
    );
    let report = server.report().await;
    assert_eq!((report.accepted, report.forced), (1, 0));
}

/// Eight requests in a row that the shortcut declines are each answered alone, and the
/// connection comes back to the shortcut after them; a ninth in a row hands hyper the rest of
/// the connection (one hyper connection then, not one per request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_requests_the_shortcut_keeps_declining_becomes_hypers() {
    let server = start(|s| s);
    let mut conn = server.connect().await;
    for _ in 0..8 {
        conn.get("/other").await;
        assert_eq!(conn.response(false).await.body, b"other\n");
    }
    conn.get("/fast").await;
    assert_eq!(conn.response(false).await.body, FAST_BODY);
    assert_eq!(
        server.counts(),
        (1, 8),
        "back to the shortcut after eight in a row"
    );
    for _ in 0..9 {
        conn.get("/other").await;
        assert_eq!(conn.response(false).await.body, b"other\n");
    }
    conn.get("/fast").await;
    assert_eq!(conn.response(false).await.body, FAST_BODY);
    assert_eq!(server.counts(), (1, 18), "hyper's after nine in a row");
    drop(conn);
    server.shutdown.trigger();
    assert_eq!(server.report().await.forced, 0);
}
