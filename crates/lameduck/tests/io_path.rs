//! The per-connection path that skips work: the accept loop moved onto a runtime worker when
//! `serve` is awaited from `block_on`, the first read and write made straight on the socket
//! before tokio has heard from epoll, and hyper's write-side shutdown left to the close. Each
//! shortcut must not change what a client sees: requests arriving in pieces or pipelined, a
//! keep-alive client coming back after a pause, `Connection: close` ending in a clean EOF, an
//! upgraded socket that half-closes, and a dropped `serve` future that stops the server at once.
//! On Linux a connection's last response is corked so that its tail and the FIN share a
//! segment (a response under way when draining begins included): the cork must never hold a
//! keep-alive response or a paused body, and bytes the client sent that were never read must
//! not cost it the response.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::{self, ThreadId};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use axum::routing::get;
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use lameduck::Phase;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[cfg(target_os = "linux")]
#[path = "support/tcp_info.rs"]
mod tcp_info;
const WAIT: Duration = Duration::from_secs(10);

fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

fn client(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// Reads one response with a `content-length` body; returns the head and the body.
fn read_response(s: &mut TcpStream, pending: &mut Vec<u8>) -> (String, String) {
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().unwrap())
                })
                .expect("content-length");
            while pending.len() < end + 4 + len {
                read_more(s, pending);
            }
            let body = String::from_utf8_lossy(&pending[end + 4..end + 4 + len]).into_owned();
            pending.drain(..end + 4 + len);
            return (head, body);
        }
        read_more(s, pending);
    }
}

fn read_more(s: &mut TcpStream, pending: &mut Vec<u8>) {
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).expect("an answer in time");
    assert!(
        n > 0,
        "closed early; got {:?}",
        String::from_utf8_lossy(pending)
    );
    pending.extend_from_slice(&buf[..n]);
}

/// A `lameduck::http` server running in a task of its own.
struct Running {
    shutdown: lameduck::Shutdown,
    task: tokio::task::JoinHandle<Result<lameduck::Report, lameduck::Error>>,
}

impl Running {
    fn start(serve: lameduck::http::Serve<Router>) -> Running {
        Running {
            shutdown: serve.shutdown_handle(),
            task: tokio::spawn(serve.into_future()),
        }
    }

    /// Triggers the shutdown and waits (bounded) for the report.
    async fn stop(self) -> lameduck::Report {
        self.shutdown.trigger();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("stopped in time")
            .unwrap()
            .unwrap()
    }
}

fn app() -> Router {
    Router::new()
        .route("/", get(|| async { "root" }))
        .route("/a", get(|| async { "aaa" }))
        .route("/b", get(|| async { "bbb" }))
        .route("/upgrade", get(upgrade))
}

/// Switches protocols; the upgraded socket then says "bye", shuts its write side down and
/// reads on: whatever the client sends after seeing the EOF is echoed to the test.
async fn upgrade(mut req: Request) -> Response {
    let heard = req
        .extensions()
        .get::<Heard>()
        .cloned()
        .expect("the test's channel");
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let mut io = TokioIo::new(on.await.expect("upgraded"));
        io.write_all(b"bye").await.unwrap();
        io.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(WAIT, io.read_to_end(&mut rest)).await;
        let _ = heard.0.send(rest);
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "test")
        .body(Body::empty())
        .unwrap()
}

#[derive(Clone)]
struct Heard(tokio::sync::mpsc::UnboundedSender<Vec<u8>>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pieces_pipelining_pauses_and_close_are_answered_as_before() {
    let (l, addr) = listener();
    let server = Running::start(lameduck::http::serve(l, app()));

    let checks = tokio::task::spawn_blocking(move || {
        // The request line in two pieces, the second after the server has had time to read
        // the first: the first read is short, and the rest comes through tokio's readiness.
        let mut s = client(addr);
        let mut pending = Vec::new();
        s.write_all(b"GET / HT").unwrap();
        thread::sleep(Duration::from_millis(100));
        s.write_all(b"TP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let (head, body) = read_response(&mut s, &mut pending);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, "root");

        // Two requests in one write: both answered, in order.
        s.write_all(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut s, &mut pending).1, "aaa");
        assert_eq!(read_response(&mut s, &mut pending).1, "bbb");

        // A pause, then the next request on the same connection: it must wake the server.
        thread::sleep(Duration::from_millis(300));
        s.write_all(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut s, &mut pending).1, "aaa");

        // `Connection: close`, sent whole at once: the answer, then a clean EOF (no reset).
        for _ in 0..20 {
            let mut s = client(addr);
            s.write_all(b"GET /b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).expect("EOF, not a reset");
            let text = String::from_utf8_lossy(&all);
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            assert!(text.ends_with("\r\n\r\nbbb"), "{text}");
        }
    });
    tokio::time::timeout(WAIT * 3, checks)
        .await
        .expect("checks in time")
        .unwrap();
    let report = server.stop().await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.accepted, 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_socket_still_half_closes() {
    let (l, addr) = listener();
    let (tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    let app = app().layer(axum::Extension(Heard(tx)));
    let server = Running::start(lameduck::http::serve(l, app));

    let client = tokio::task::spawn_blocking(move || {
        let mut s = client(addr);
        s.write_all(
            b"GET /upgrade HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: test\r\n\r\n",
        )
        .unwrap();
        let mut all = Vec::new();
        // The application's shutdown reaches us as an EOF while the socket is still open...
        s.read_to_end(&mut all).expect("EOF from the half-close");
        let text = String::from_utf8_lossy(&all);
        assert!(text.starts_with("HTTP/1.1 101"), "{text}");
        assert!(text.ends_with("bye"), "{text}");
        // ...and its read side still takes what we send.
        s.write_all(b"after the half-close").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
    });
    tokio::time::timeout(WAIT, client)
        .await
        .expect("client in time")
        .unwrap();
    let rest = tokio::time::timeout(WAIT, heard.recv())
        .await
        .expect("the application read on")
        .unwrap();
    assert_eq!(rest, b"after the half-close");
    server.stop().await;
}

/// The thread a handler was called on: its id and name.
type Caller = (ThreadId, Option<String>);

/// `#[tokio::main]`'s shape: `serve` awaited by `block_on` on a multi-thread runtime. The
/// accept loop (where `Server::serve`'s handler is called) runs on a worker, not on the
/// thread in `block_on`; and dropping the future still stops the server before the drop
/// returns.
#[test]
fn served_from_block_on_the_accept_loop_runs_on_a_worker() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("test-worker")
        .enable_all()
        .build()
        .unwrap();
    let main = thread::current().id();
    let callers: Arc<Mutex<Vec<Caller>>> = Arc::default();
    let (l, addr) = listener();
    let server = lameduck::Server::new().listener(l);
    let shutdown = server.shutdown_handle();
    let (done_tx, done) = tokio::sync::oneshot::channel::<()>();
    let clients = thread::spawn(move || {
        for _ in 0..5 {
            let mut s = client(addr);
            s.write_all(b"ping").unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"ping");
        }
        let _ = done_tx.send(());
    });
    let recorded = Arc::clone(&callers);
    runtime.block_on(async move {
        let serve = server.serve(move |mut stream, _conn| {
            let t = thread::current();
            recorded
                .lock()
                .unwrap()
                .push((t.id(), t.name().map(str::to_owned)));
            async move {
                let mut buf = [0u8; 4];
                stream.read_exact(&mut buf).await?;
                stream.write_all(&buf).await
            }
        });
        tokio::select! {
            r = serve => panic!("serve ended on its own: {r:?}"),
            r = tokio::time::timeout(WAIT, done) => r.expect("clients in time").unwrap(),
        }
        // Dropped by `select!`: stopped already, as documented.
        assert_eq!(shutdown.phase(), Phase::Stopped);
    });
    clients.join().unwrap();
    let callers = callers.lock().unwrap();
    assert_eq!(callers.len(), 5);
    for (id, name) in callers.iter() {
        assert_ne!(*id, main, "the accept loop ran on the block_on thread");
        assert_eq!(name.as_deref(), Some("test-worker"));
    }
    // And the listener is gone soon after (the task is dropped on a worker).
    drop(runtime);
    assert!(
        TcpStream::connect(addr).is_err(),
        "the listener outlived the server"
    );
}

/// `TCP_NODELAY` of the server's end of the connection whose client end is `client`.
fn server_nodelay(client: &TcpStream) -> bool {
    server_socket(client, |sock| sock.tcp_nodelay().unwrap())
}

/// Calls `f` with the server's end of the connection whose client end is `client`: the
/// server runs in this process, so its socket is one of this process's descriptors.
#[allow(unsafe_code)]
fn server_socket<T>(client: &TcpStream, f: impl FnOnce(socket2::SockRef<'_>) -> T) -> T {
    use std::os::fd::BorrowedFd;
    let peer = client.local_addr().unwrap();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let Ok(fd) = entry.unwrap().file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // SAFETY: the descriptor is only borrowed for these two calls; one closed meanwhile
        // (another test's) makes them fail, which is skipped.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&fd);
        let Ok(addr) = sock.peer_addr() else { continue };
        if addr.as_socket() == Some(peer) {
            return f(sock);
        }
    }
    panic!("no server socket for {peer}");
}

/// The first write of a connection goes out without `TCP_NODELAY` (Nagle cannot hold it:
/// nothing of the connection's is in flight); it is set before the second, so no later write
/// waits for an acknowledgement. `nodelay(false)` leaves it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_nodelay_is_set_before_the_second_write() {
    for wanted in [true, false] {
        let (l, addr) = listener();
        let server = Running::start(lameduck::http::serve(l, app()).nodelay(wanted));
        tokio::task::spawn_blocking(move || {
            let mut s = client(addr);
            let mut pending = Vec::new();
            s.write_all(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            assert_eq!(read_response(&mut s, &mut pending).1, "aaa");
            assert!(!server_nodelay(&s), "set before the first write was done");
            s.write_all(b"GET /b HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            assert_eq!(read_response(&mut s, &mut pending).1, "bbb");
            assert_eq!(server_nodelay(&s), wanted);
        })
        .await
        .unwrap();
        server.stop().await;
    }
}

/// Segments the client end of a connection has received so far (`tcpi_segs_in`).
#[cfg(target_os = "linux")]
fn segments_in(s: &TcpStream) -> u32 {
    tcp_info::tcp_info(s).tcpi_segs_in
}

/// A response that ends its connection (`Connection: close` on HTTP/1.1, HTTP/1.0 without
/// keep-alive) reaches the client in as many segments as the same response kept alive: its
/// tail and the FIN travel together. A keep-alive response is never left corked.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_response_and_its_fin_share_a_segment() {
    let (l, addr) = listener();
    let body = "x".repeat(4096);
    let big = body.clone();
    let app = app().route("/4k", get(move || async move { big }));
    let server = Running::start(lameduck::http::serve(l, app));
    tokio::task::spawn_blocking(move || {
        for (path, expected) in [("/a", "aaa"), ("/4k", body.as_str())] {
            // Kept alive: the response, then nothing held on the server's side.
            let mut s = client(addr);
            let mut pending = Vec::new();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
                .unwrap();
            assert_eq!(read_response(&mut s, &mut pending).1, expected);
            let kept_alive = segments_in(&s);
            assert!(
                !server_socket(&s, |sock| sock.tcp_cork().unwrap()),
                "a keep-alive response left corked"
            );
            drop(s);

            for request in [
                format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
                format!("GET {path} HTTP/1.0\r\nHost: t\r\n\r\n"),
            ] {
                let mut s = client(addr);
                s.write_all(request.as_bytes()).unwrap();
                let mut all = Vec::new();
                s.read_to_end(&mut all).expect("EOF, not a reset");
                let text = String::from_utf8_lossy(&all);
                assert!(
                    text.ends_with(&format!("\r\n\r\n{expected}")),
                    "{request:?}"
                );
                // Without the cork: one more, the FIN on its own.
                assert_eq!(
                    segments_in(&s),
                    kept_alive,
                    "{request:?}: segments received, closed vs kept alive"
                );
            }
        }
    })
    .await
    .unwrap();
    server.stop().await;
}

/// A body that pauses on a connection's last response is not held back by the cork: what
/// was sent is on the wire (the cork pulled) while the body waits.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_last_response_is_not_held() {
    let (l, addr) = listener();
    let go_on = Arc::new(tokio::sync::Notify::new());
    let notify = Arc::clone(&go_on);
    let app = app().route(
        "/pause",
        get(move || {
            let notify = Arc::clone(&notify);
            async move {
                let chunks = futures_util::stream::unfold(0, move |n| {
                    let notify = Arc::clone(&notify);
                    async move {
                        match n {
                            0 => Some((Ok::<_, std::io::Error>("one;"), 1)),
                            1 => {
                                notify.notified().await;
                                Some((Ok("two"), 2))
                            }
                            _ => None,
                        }
                    }
                });
                Body::from_stream(chunks)
            }
        }),
    );
    let server = Running::start(lameduck::http::serve(l, app));
    let checks = tokio::task::spawn_blocking(move || {
        let mut s = client(addr);
        s.write_all(b"GET /pause HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut all = Vec::new();
        while !String::from_utf8_lossy(&all).contains("one;") {
            read_more(&mut s, &mut all);
        }
        assert!(
            !server_socket(&s, |sock| sock.tcp_cork().unwrap()),
            "the socket stayed corked while its body waited"
        );
        go_on.notify_one();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).expect("EOF, not a reset");
        all.extend_from_slice(&rest);
        let text = String::from_utf8_lossy(&all);
        assert!(
            text.contains("one;") && text.ends_with("two\r\n0\r\n\r\n"),
            "{text}"
        );
    });
    tokio::time::timeout(WAIT, checks)
        .await
        .expect("checks in time")
        .unwrap();
    server.stop().await;
}

/// Bytes the client sent that the server never read make closing the socket a reset, which
/// throws away whatever the socket still holds: the corked tail of a last response must be
/// on its way before that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_bytes_do_not_cost_a_last_response() {
    let (l, addr) = listener();
    let server = Running::start(lameduck::http::serve(l, app()));
    let checks = tokio::task::spawn_blocking(move || {
        // The second asks for an upgrade it does not get: hyper then hands the socket over
        // instead of shutting it down.
        let heads: [&[u8]; 2] = [
            b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: close, upgrade\r\nUpgrade: websocket\r\n\r\n",
        ];
        for head in heads.iter().cycle().take(20) {
            let mut s = client(addr);
            // A request, then far more than one read takes: the rest stays unread.
            let mut request = head.to_vec();
            request.extend(std::iter::repeat_n(b'z', 256 * 1024));
            // The server may reset the connection before all of it is written.
            let _ = s.write_all(&request);
            let mut all = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => all.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&all);
            assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
            assert!(text.ends_with("\r\n\r\naaa"), "{text:?}");
        }
    });
    tokio::time::timeout(WAIT * 3, checks)
        .await
        .expect("checks in time")
        .unwrap();
    server.stop().await;
}

/// A response that was under way when draining began is the connection's last (it says
/// `Connection: close`), and its tail travels with the FIN as on a `Connection: close`
/// request: as many segments reach the client as for the same response kept alive.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_under_way_when_draining_begins_is_corked() {
    let (l, addr) = listener();
    let go_on = Arc::new(tokio::sync::Notify::new());
    let notify = Arc::clone(&go_on);
    let app = app().route(
        "/held",
        get(move || {
            let notify = Arc::clone(&notify);
            async move {
                notify.notified().await;
                "held"
            }
        }),
    );
    let server = Running::start(lameduck::http::serve(l, app));
    let shutdown = server.shutdown.clone();
    let checks = tokio::task::spawn_blocking(move || {
        // The same response kept alive, held as long before it is answered (so both
        // connections see the same acknowledgement of the request).
        let mut s = client(addr);
        let mut pending = Vec::new();
        s.write_all(b"GET /held HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        thread::sleep(Duration::from_millis(100));
        go_on.notify_one();
        let (head, body) = read_response(&mut s, &mut pending);
        assert_eq!(body, "held");
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
        let kept_alive = segments_in(&s);
        drop(s);

        let mut s = client(addr);
        s.write_all(b"GET /held HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        thread::sleep(Duration::from_millis(50));
        shutdown.trigger();
        let since = std::time::Instant::now();
        while !shutdown.is_draining() {
            assert!(since.elapsed() < WAIT, "draining never began");
            thread::sleep(Duration::from_millis(5));
        }
        thread::sleep(Duration::from_millis(50));
        go_on.notify_one();
        let mut all = Vec::new();
        s.read_to_end(&mut all).expect("EOF, not a reset");
        let text = String::from_utf8_lossy(&all);
        assert!(
            text.to_ascii_lowercase()
                .contains("\r\nconnection: close\r\n"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\nheld"), "{text}");
        // Without the cork: one more, the FIN on its own.
        assert_eq!(
            segments_in(&s),
            kept_alive,
            "segments received, the drained response vs kept alive"
        );
    });
    tokio::time::timeout(WAIT * 2, checks)
        .await
        .expect("checks in time")
        .unwrap();
    server.stop().await;
}
