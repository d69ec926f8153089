//! The library's edges, each over real sockets: a dropped `serve()` future, panics in the
//! synchronous part of a handler or in a service's `clone`, `Duration::MAX` as "no limit",
//! several servers sharing one shutdown handle, and the blocking drain's single grace.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use lameduck::{Phase, Shutdown};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

fn listener() -> (std::net::TcpListener, SocketAddr) {
    let l = lameduck::listen::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

/// A line echo, as a tokio handler.
async fn echo(stream: TcpStream) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        write.write_all(format!("{line}\n").as_bytes()).await?;
    }
    Ok(())
}

async fn say(stream: &mut BufReader<TcpStream>, line: &str) -> String {
    stream
        .get_mut()
        .write_all(format!("{line}\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    timeout(WAIT, stream.read_line(&mut out))
        .await
        .expect("answer in time")
        .unwrap();
    out
}

/// A raw HTTP/1.1 GET with `Connection: close`; returns the status line and the rest.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = timeout(WAIT, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_serve_forces_then_stops_and_counts_the_cut_connections() {
    let (l, addr) = listener();
    let server = lameduck::Server::new().listener(l);
    let shutdown = server.shutdown_handle();
    let tracker = server.tracker();
    let stopped = tokio::spawn(shutdown.reached(Phase::Stopped));
    let (connected_tx, connected) = tokio::sync::oneshot::channel();
    let client = tokio::spawn(async move {
        let mut s = BufReader::new(TcpStream::connect(addr).await.unwrap());
        assert_eq!(say(&mut s, "hi").await, "hi\n");
        let _ = connected_tx.send(());
        // The server goes away under this connection.
        let mut rest = String::new();
        let n = timeout(WAIT, s.read_line(&mut rest))
            .await
            .expect("closed in time");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?} {rest:?}");
    });
    tokio::select! {
        r = server.serve(|s, _| echo(s)) => panic!("serve ended on its own: {r:?}"),
        _ = connected => {}
    }
    // The serve future is dropped here, as `select!` picked the other branch.
    assert_eq!(shutdown.phase(), Phase::Stopped);
    let phases: Vec<Phase> = shutdown.history().into_iter().map(|(p, _)| p).collect();
    assert_eq!(phases, [Phase::Running, Phase::Forced, Phase::Stopped]);
    timeout(WAIT, stopped)
        .await
        .expect("waiters released")
        .unwrap();
    timeout(WAIT, client).await.unwrap().unwrap();
    let end = Instant::now() + WAIT;
    while tracker.active() > 0 {
        assert!(Instant::now() < end, "the connection was never released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!((tracker.forced(), tracker.completed()), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_graceful_shutdown_drains_when_the_future_resolves() {
    let (l, addr) = listener();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let app = Router::new().route("/", get(|| async { "hello\n" }));
    let serve = lameduck::http::serve(l, app).with_graceful_shutdown(async move {
        let _ = rx.await;
    });
    let shutdown = serve.shutdown_handle();
    let task = tokio::spawn(serve.into_future());
    assert!(http_get(addr, "/").await.starts_with("HTTP/1.1 200"));
    assert_eq!(shutdown.phase(), Phase::Running);
    tx.send(()).unwrap();
    let report = timeout(WAIT, task).await.unwrap().unwrap().unwrap();
    assert!(report.is_clean());
    assert_eq!(shutdown.phase(), Phase::Stopped);
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

use std::future::IntoFuture as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_synchronous_part_of_a_handler_costs_one_connection() {
    let (l, addr) = listener();
    let server = lameduck::Server::new().listener(l);
    let shutdown = server.shutdown_handle();
    let task = tokio::spawn(server.serve(|stream, conn| {
        // Before any future exists: this runs where the connection is accepted.
        assert!(conn.id() != 0, "the first connection's handler panics");
        echo(stream)
    }));
    // The first connection is closed; the server goes on.
    let mut first = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 8];
    let n = timeout(WAIT, first.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)));
    let mut second = BufReader::new(TcpStream::connect(addr).await.unwrap());
    assert_eq!(say(&mut second, "still here").await, "still here\n");
    drop(second);
    shutdown.trigger();
    let report = timeout(WAIT, task).await.unwrap().unwrap().unwrap();
    assert_eq!(report.panicked, 1);
    assert_eq!(report.accepted, 2);
}

/// A tower service whose `clone` panics once when armed.
struct Fragile {
    armed: Arc<AtomicBool>,
}

impl Clone for Fragile {
    fn clone(&self) -> Self {
        if self.armed.swap(false, Ordering::SeqCst) {
            panic!("clone panicked");
        }
        Fragile {
            armed: Arc::clone(&self.armed),
        }
    }
}

impl<B> tower_service::Service<http::Request<B>> for Fragile {
    type Response = http::Response<String>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: http::Request<B>) -> Self::Future {
        std::future::ready(Ok(http::Response::new("ok\n".to_owned())))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_service_clone_costs_one_connection() {
    let (l, addr) = listener();
    let armed = Arc::new(AtomicBool::new(false));
    let serve = lameduck::http::serve(
        l,
        Fragile {
            armed: Arc::clone(&armed),
        },
    );
    let shutdown = serve.shutdown_handle();
    let task = tokio::spawn(serve.into_future());
    assert!(http_get(addr, "/").await.starts_with("HTTP/1.1 200"));
    armed.store(true, Ordering::SeqCst);
    let broken = http_get(addr, "/").await;
    assert!(!broken.starts_with("HTTP/1.1 200"), "{broken}");
    assert!(http_get(addr, "/").await.starts_with("HTTP/1.1 200"));
    shutdown.trigger();
    let report = timeout(WAIT, task).await.unwrap().unwrap().unwrap();
    assert_eq!(report.panicked, 1);
    assert_eq!(report.accepted, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_max_means_no_limit() {
    // The drain: Duration::MAX must not force at once.
    let (l, addr) = listener();
    let server = lameduck::Server::new()
        .listener(l)
        .drain_timeout(Duration::MAX)
        .lame_duck(Duration::ZERO);
    let shutdown = server.shutdown_handle();
    let task = tokio::spawn(server.serve(|s, _| echo(s)));
    let mut s = BufReader::new(TcpStream::connect(addr).await.unwrap());
    assert_eq!(say(&mut s, "one").await, "one\n");
    shutdown.trigger();
    timeout(WAIT, shutdown.reached(Phase::Draining))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(shutdown.phase(), Phase::Draining);
    assert_eq!(say(&mut s, "two").await, "two\n");
    drop(s);
    let report = timeout(WAIT, task).await.unwrap().unwrap().unwrap();
    assert_eq!((report.completed, report.forced), (1, 0));

    // Every HTTP timeout and period at Duration::MAX: no overflow panic, requests served.
    let (l, addr) = listener();
    let app = Router::new().route("/", get(|| async { "hello\n" }));
    let serve = lameduck::http::serve(l, app)
        .drain_timeout(Duration::MAX)
        .lame_duck(Duration::MAX)
        .header_timeout(Duration::MAX)
        .idle_timeout(Duration::MAX)
        .write_timeout(Duration::MAX)
        .upgraded_idle_timeout(Duration::MAX)
        .keep_alive_grace(Duration::MAX);
    let shutdown = serve.shutdown_handle();
    let task = tokio::spawn(serve.into_future());
    for _ in 0..3 {
        assert!(http_get(addr, "/").await.starts_with("HTTP/1.1 200"));
    }
    shutdown.trigger();
    // Lame duck forever: still serving.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(http_get(addr, "/").await.starts_with("HTTP/1.1 200"));
    assert!(!task.is_finished());
    // A second trigger forces.
    shutdown.trigger();
    let report = timeout(WAIT, task).await.unwrap().unwrap().unwrap();
    assert_eq!(report.accepted, 4);

    // The blocking flavour: lame duck, drain and grace at Duration::MAX.
    let (l, addr) = listener();
    let server = lameduck::blocking::Server::new()
        .listener(l)
        .threads(2)
        .lame_duck(Duration::MAX)
        .drain_timeout(Duration::MAX)
        .force_grace(Duration::MAX)
        .read_timeout(Some(Duration::MAX))
        .write_timeout(Some(Duration::MAX));
    let shutdown = server.shutdown_handle();
    let run = std::thread::spawn(move || {
        server.run(|stream, _| {
            use std::io::{BufRead, Write};
            let mut w = stream.try_clone()?;
            for line in std::io::BufReader::new(stream).lines() {
                writeln!(w, "{}", line?)?;
            }
            Ok::<_, std::io::Error>(())
        })
    });
    let mut s = BufReader::new(TcpStream::connect(addr).await.unwrap());
    assert_eq!(say(&mut s, "blocking").await, "blocking\n");
    shutdown.trigger();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(shutdown.phase(), Phase::LameDuck, "lame duck forever");
    assert_eq!(say(&mut s, "still").await, "still\n");
    drop(s);
    shutdown.trigger();
    let report = tokio::task::spawn_blocking(move || run.join().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.accepted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_and_its_admin_server_share_one_lifecycle() {
    let shared = Shutdown::new();
    // The app: a slow route, a long drain.
    let (app_l, app_addr) = listener();
    let app = Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            "done\n"
        }),
    );
    let app_serve = lameduck::http::serve(app_l, app)
        .with_shutdown(shared.clone())
        .drain_timeout(Duration::from_secs(20));
    // The admin endpoint: an endless route, a short drain.
    let (admin_l, admin_addr) = listener();
    let admin = Router::new().route(
        "/watch",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            "never\n"
        }),
    );
    let admin_serve = lameduck::http::serve(admin_l, admin)
        .with_shutdown(shared.clone())
        .drain_timeout(Duration::from_millis(200));
    let app_task = tokio::spawn(app_serve.into_future());
    let admin_task = tokio::spawn(admin_serve.into_future());

    let slow = tokio::spawn(async move { http_get(app_addr, "/slow").await });
    let watch = tokio::spawn(async move { http_get(admin_addr, "/watch").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    shared.trigger();

    // The admin server is cut at its own deadline and stops first...
    let admin_report = timeout(WAIT, admin_task).await.unwrap().unwrap().unwrap();
    assert_eq!(admin_report.forced, 1);
    let _ = watch.await;
    // ...without touching the app's request in flight, nor stopping the shared lifecycle.
    assert_ne!(shared.phase(), Phase::Stopped);
    assert!(shared.phase() < Phase::Forced, "{}", shared.phase());
    let answer = timeout(WAIT, slow).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("done\n"), "{answer}");
    let app_report = timeout(WAIT, app_task).await.unwrap().unwrap().unwrap();
    assert_eq!((app_report.completed, app_report.forced), (1, 0));
    // Both stopped: so has the shared handle.
    assert_eq!(shared.phase(), Phase::Stopped);
    let phases: Vec<Phase> = shared.history().into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        phases,
        [
            Phase::Running,
            Phase::LameDuck,
            Phase::Draining,
            Phase::Stopped
        ]
    );
}

#[test]
fn the_blocking_drain_waits_one_grace_not_two() {
    let (l, addr) = listener();
    let drain = Duration::from_millis(100);
    let grace = Duration::from_millis(1000);
    let server = lameduck::blocking::Server::new()
        .listener(l)
        .threads(2)
        .drain_timeout(drain)
        .force_grace(grace);
    let shutdown = server.shutdown_handle();
    let (started_tx, started) = std::sync::mpsc::channel();
    let run = std::thread::spawn(move || {
        server.run(move |_stream, _| {
            let _ = started_tx.send(());
            // Stuck in something that is not I/O: only the grace ends the wait for it.
            std::thread::sleep(Duration::from_secs(5));
            Ok::<_, std::io::Error>(())
        })
    });
    let _client = std::net::TcpStream::connect(addr).unwrap();
    started.recv_timeout(WAIT).expect("handler started");
    let triggered = Instant::now();
    shutdown.trigger();
    let report = run.join().unwrap().unwrap();
    let took = triggered.elapsed();
    assert_eq!(report.stuck, 1);
    // Deadline + one grace (1.1 s); two graces would be 2.1 s.
    assert!(took >= drain + grace, "{took:?}");
    assert!(
        took < drain + grace + Duration::from_millis(700),
        "{took:?}"
    );
}

/// Two listeners, the first of which breaks (shut down under the server: every accept on it
/// fails with EINVAL while the poller keeps reporting it): the second is served throughout.
fn broken_listener_pair() -> (
    std::net::TcpListener,
    std::net::TcpListener,
    std::net::TcpListener,
    SocketAddr,
) {
    let (broken, _) = listener();
    let (good, good_addr) = listener();
    let handle = broken.try_clone().unwrap();
    (broken, good, handle, good_addr)
}

fn break_listener(handle: &std::net::TcpListener) {
    socket2::SockRef::from(handle)
        .shutdown(std::net::Shutdown::Both)
        .unwrap();
}

#[test]
fn a_failing_listener_does_not_starve_the_others_blocking() {
    let (broken, good, handle, good_addr) = broken_listener_pair();
    let server = lameduck::blocking::Server::new()
        .listener(broken)
        .listener(good)
        .threads(4);
    let shutdown = server.shutdown_handle();
    let run = std::thread::spawn(move || {
        server.run(|stream, _| {
            use std::io::{BufRead, Write};
            let mut w = stream.try_clone()?;
            for line in std::io::BufReader::new(stream).lines() {
                writeln!(w, "{}", line?)?;
            }
            Ok::<_, std::io::Error>(())
        })
    });
    std::thread::sleep(Duration::from_millis(100));
    break_listener(&handle);
    for i in 0..5 {
        use std::io::{BufRead, Write};
        let mut s = std::net::TcpStream::connect(good_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        writeln!(s, "hello {i}").unwrap();
        let mut line = String::new();
        std::io::BufReader::new(&s)
            .read_line(&mut line)
            .expect("the good listener is served");
        assert_eq!(line, format!("hello {i}\n"));
    }
    shutdown.trigger();
    let report = run.join().unwrap().unwrap();
    assert_eq!(report.accepted, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_listener_does_not_starve_the_others_tokio() {
    let (broken, good, handle, good_addr) = broken_listener_pair();
    let server = lameduck::Server::new().listener(broken).listener(good);
    let shutdown = server.shutdown_handle();
    let task = tokio::spawn(server.serve(|s, _| echo(s)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    break_listener(&handle);
    for i in 0..5 {
        let mut s = BufReader::new(TcpStream::connect(good_addr).await.unwrap());
        let line = format!("hello {i}");
        assert_eq!(say(&mut s, &line).await, format!("{line}\n"));
    }
    shutdown.trigger();
    let report = timeout(WAIT, task).await.unwrap().unwrap().unwrap();
    assert_eq!(report.accepted, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_local_addr_is_the_accepted_sockets_not_the_wildcard() {
    let l = lameduck::listen::bind("0.0.0.0:0".parse().unwrap()).unwrap();
    let port = l.local_addr().unwrap().port();
    let server = lameduck::Server::new().listener(l);
    let shutdown = server.shutdown_handle();
    let task = tokio::spawn(server.serve(|mut s, conn| async move {
        s.write_all(format!("{}\n", conn.local_addr()).as_bytes())
            .await
    }));
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut out = String::new();
    timeout(WAIT, s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out, format!("127.0.0.1:{port}\n"));
    shutdown.trigger();
    timeout(WAIT, task).await.unwrap().unwrap().unwrap();

    // The blocking flavour too.
    let l = lameduck::listen::bind("0.0.0.0:0".parse().unwrap()).unwrap();
    let port = l.local_addr().unwrap().port();
    let server = lameduck::blocking::Server::new().listener(l).threads(1);
    let shutdown = server.shutdown_handle();
    let run = std::thread::spawn(move || {
        server.run(|mut s, conn| {
            use std::io::Write;
            writeln!(s, "{}", conn.local_addr())
        })
    });
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut out = String::new();
    timeout(WAIT, s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out, format!("127.0.0.1:{port}\n"));
    shutdown.trigger();
    tokio::task::spawn_blocking(move || run.join().unwrap().unwrap())
        .await
        .unwrap();
}
