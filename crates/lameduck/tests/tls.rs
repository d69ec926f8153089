//! HTTPS through `lameduck::http::serve(...).tls(config)`, with certificates made at test time
//! (rcgen) and real TLS clients (tokio-rustls under hyper's HTTP/1 and HTTP/2 clients): both
//! protocols by ALPN, the drain choreography over TLS with `close_notify`, hostile clients
//! (plaintext, random bytes, a handshake that stops half-way, clients that never say hello),
//! and a certificate swapped while serving.

use std::future::IntoFuture as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use lameduck::tls::{CertResolver, TlsStats, server_config};
use lameduck::{Report, Shutdown, Tracker};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_rustls::rustls;

const WAIT: Duration = Duration::from_secs(10);

/// A CA, and leaf certificates for `localhost` signed by it.
struct Pki {
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new() -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "lameduck test CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        Pki { ca, ca_key }
    }

    /// A leaf for localhost, as rustls wants it.
    fn leaf(&self, name: &str) -> Arc<rustls::sign::CertifiedKey> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = rustls::crypto::ring::sign::any_supported_type(&der).unwrap();
        Arc::new(rustls::sign::CertifiedKey::new(
            vec![cert.der().clone()],
            signing,
        ))
    }

    fn connector(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

struct Running {
    addr: SocketAddr,
    shutdown: Shutdown,
    tracker: Tracker,
    stats: TlsStats,
    resolver: CertResolver,
    task: JoinHandle<Result<Report, lameduck::Error>>,
}

fn start(
    pki: &Pki,
    configure: impl FnOnce(lameduck::http::Serve<Router>) -> lameduck::http::Serve<Router>,
) -> Running {
    let listener = lameduck::listen::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/", get(|| async { "hello over tls\n" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(600)).await;
                "slow over tls\n"
            }),
        );
    let resolver = CertResolver::new(pki.leaf("first"));
    let serve = configure(
        lameduck::http::serve(listener, app).tls(server_config(resolver.clone()).unwrap()),
    );
    let shutdown = serve.shutdown_handle();
    let tracker = serve.tracker();
    let stats = serve.tls_stats();
    let task = tokio::spawn(serve.into_future());
    Running {
        addr,
        shutdown,
        tracker,
        stats,
        resolver,
        task,
    }
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn tls_connect(pki: &Pki, addr: SocketAddr, alpn: &[&[u8]]) -> Tls {
    let tcp = TcpStream::connect(addr).await.unwrap();
    timeout(
        WAIT,
        pki.connector(alpn)
            .connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .expect("handshake in time")
    .expect("TLS handshake")
}

/// The common name of the certificate the server presented.
fn presented(stream: &Tls) -> String {
    let der: &CertificateDer = &stream.get_ref().1.peer_certificates().unwrap()[0];
    let text = String::from_utf8_lossy(der.as_ref()).into_owned();
    for name in ["first", "second"] {
        if text.contains(name) {
            return name.into();
        }
    }
    "unknown".into()
}

async fn h1_get(stream: Tls, path: &str) -> (u16, Option<String>, String) {
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = timeout(WAIT, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let connection = resp
        .headers()
        .get("connection")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        connection,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_http2_over_tls_by_alpn() {
    let pki = Pki::new();
    let server = start(&pki, |s| s);
    // HTTP/1.1.
    let stream = tls_connect(&pki, server.addr, &[b"http/1.1"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (status, _, body) = h1_get(stream, "/").await;
    assert_eq!((status, body.as_str()), (200, "hello over tls\n"));
    // HTTP/2.
    let stream = tls_connect(&pki, server.addr, &[b"h2", b"http/1.1"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("https://localhost/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello over tls\n");
    assert_eq!((server.stats.handshakes(), server.stats.failures()), (2, 0));
    server.shutdown.trigger();
    let report = timeout(WAIT, server.task).await.unwrap().unwrap().unwrap();
    assert_eq!(report.accepted, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_over_tls_finishes_in_flight_requests_and_sends_close_notify() {
    let pki = Pki::new();
    let server = start(&pki, |s| s.drain_timeout(Duration::from_secs(10)));
    let mut stream = tls_connect(&pki, server.addr, &[b"http/1.1"]).await;
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.shutdown.trigger();
    // The response in flight arrives, with Connection: close; then the server closes with
    // close_notify, which rustls reports as a clean end (a bare TCP close would be an
    // UnexpectedEof error).
    let mut all = Vec::new();
    let read = timeout(WAIT, stream.read_to_end(&mut all)).await.unwrap();
    assert!(read.is_ok(), "no close_notify: {read:?}");
    let text = String::from_utf8_lossy(&all).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    assert!(text.ends_with("slow over tls\n"), "{text}");
    let report = timeout(WAIT, server.task).await.unwrap().unwrap().unwrap();
    assert_eq!((report.completed, report.forced), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_gets_goaway_and_its_open_stream_completes() {
    let pki = Pki::new();
    let server = start(&pki, |s| s.drain_timeout(Duration::from_secs(10)));
    let stream = tls_connect(&pki, server.addr, &[b"h2"]).await;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get("https://localhost/slow")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let in_flight = tokio::spawn(sender.send_request(req));
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.shutdown.trigger();
    let resp = timeout(WAIT, in_flight).await.unwrap().unwrap().unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"slow over tls\n");
    // GOAWAY: the connection ends, and no new stream is taken.
    let _ = timeout(WAIT, conn)
        .await
        .expect("the connection ends after GOAWAY");
    let report = timeout(WAIT, server.task).await.unwrap().unwrap().unwrap();
    assert_eq!(report.forced, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_are_cut_and_counted_while_others_are_served() {
    let pki = Pki::new();
    let server = start(&pki, |s| s.header_timeout(Duration::from_millis(500)));
    // Plaintext HTTP sent to the TLS port.
    let mut plain = TcpStream::connect(server.addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Random bytes.
    let mut noise = TcpStream::connect(server.addr).await.unwrap();
    noise
        .write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0xde, 0xad, 0xbe, 0xef])
        .await
        .unwrap();
    // A handshake that stops half-way: the first bytes of a ClientHello record.
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc])
        .await
        .unwrap();
    // 200 clients that open TCP and never say hello.
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // Others are served meanwhile.
    for _ in 0..3 {
        let stream = tls_connect(&pki, server.addr, &[b"http/1.1"]).await;
        assert_eq!(h1_get(stream, "/").await.0, 200);
    }
    // Every hostile one is cut, by a failed handshake or by the header timeout.
    let mut cut = 0;
    for mut s in [plain, noise, half].into_iter().chain(silent) {
        let mut buf = [0u8; 256];
        let r = timeout(WAIT, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        if r.is_ok() {
            cut += 1;
        }
    }
    assert_eq!(cut, 203, "some hostile connection was never cut");
    let end = std::time::Instant::now() + WAIT;
    while server.stats.failures() < 203 {
        assert!(
            std::time::Instant::now() < end,
            "failures counted: {}",
            server.stats.failures()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.stats.handshakes(), 3);
    assert_eq!(server.tracker.active(), 0);
    server.shutdown.trigger();
    timeout(WAIT, server.task).await.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_certificate_serves_new_handshakes_and_open_connections_stay() {
    let pki = Pki::new();
    let server = start(&pki, |s| s);
    let before = tls_connect(&pki, server.addr, &[b"http/1.1"]).await;
    assert_eq!(presented(&before), "first");
    let (mut old, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(before))
            .await
            .unwrap();
    tokio::spawn(conn);
    server.resolver.set(pki.leaf("second"));
    let after = tls_connect(&pki, server.addr, &[b"http/1.1"]).await;
    assert_eq!(presented(&after), "second");
    // The connection opened before the swap goes on.
    let req = http::Request::get("/")
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(old.send_request(req).await.unwrap().status(), 200);
    drop(old);
    drop(after);
    server.shutdown.trigger();
    timeout(WAIT, server.task).await.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raw_server_runs_a_tls_acceptor_in_its_handler() {
    let pki = Pki::new();
    let listener = lameduck::listen::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(
        server_config(CertResolver::new(pki.leaf("first"))).unwrap(),
    );
    let stats = TlsStats::default();
    let server = lameduck::Server::new().listener(listener);
    let shutdown = server.shutdown_handle();
    let handler_stats = stats.clone();
    let task = tokio::spawn(server.serve(move |stream, _conn| {
        let acceptor = acceptor.clone();
        let stats = handler_stats.clone();
        async move {
            let mut tls =
                lameduck::tls::accept(&acceptor, stream, Duration::from_secs(5), &stats).await?;
            let mut buf = [0u8; 64];
            let n = tls.read(&mut buf).await?;
            tls.write_all(&buf[..n]).await?;
            tls.shutdown().await
        }
    }));
    let mut stream = tls_connect(&pki, addr, &[]).await;
    stream.write_all(b"echo me").await.unwrap();
    let mut back = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, b"echo me");
    assert_eq!(stats.handshakes(), 1);
    shutdown.trigger();
    timeout(WAIT, task).await.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_still_going_when_the_drain_starts_is_cut_after_the_grace() {
    let pki = Pki::new();
    let server = start(&pki, |s| {
        s.header_timeout(Duration::from_secs(60))
            .keep_alive_grace(Duration::from_millis(200))
    });
    let _silent = TcpStream::connect(server.addr).await.unwrap();
    let end = std::time::Instant::now() + WAIT;
    while server.tracker.active() == 0 {
        assert!(std::time::Instant::now() < end);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let triggered = std::time::Instant::now();
    server.shutdown.trigger();
    let report = timeout(WAIT, server.task).await.unwrap().unwrap().unwrap();
    assert!(
        triggered.elapsed() < Duration::from_secs(5),
        "{:?}",
        triggered.elapsed()
    );
    assert_eq!((report.completed, report.forced), (1, 0));
    assert_eq!(server.stats.failures(), 1);
}

/// Answers `/short` and counts its answers.
struct Short(Arc<std::sync::atomic::AtomicUsize>);

impl lameduck::http::Shortcut for Short {
    fn answer(
        &self,
        request: &lameduck::http::ShortRequest<'_>,
    ) -> Option<lameduck::http::ShortAnswer> {
        (request.path() == "/short").then(|| {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            lameduck::http::ShortAnswer::new(
                Bytes::from_static(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n"),
                Bytes::from_static(b"short\n"),
            )
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shortcut_answers_over_tls_on_http1_and_never_on_http2() {
    let pki = Pki::new();
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let short = Short(Arc::clone(&answered));
    let server = start(&pki, move |s| s.shortcut(short));
    let count = || answered.load(std::sync::atomic::Ordering::Relaxed);
    // HTTP/1.1 by ALPN, one connection: the shortcut twice, the service (a request the
    // shortcut declines, answered alone), the shortcut again, then a request the shortcut is
    // never offered (a body), after which the connection is hyper's.
    let stream = tls_connect(&pki, server.addr, &[b"http/1.1"]).await;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    for (path, with_body, body, shortcut_answers) in [
        ("/short", false, "short\n", 1),
        ("/short", false, "short\n", 2),
        ("/", false, "hello over tls\n", 2),
        ("/short", false, "short\n", 3),
        ("/", true, "hello over tls\n", 3),
        ("/short", false, "", 3),
    ] {
        // The client's connection takes the next request once it has seen the last one end.
        timeout(WAIT, sender.ready())
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{path}: the connection closed: {e}"));
        let mut req = http::Request::get(path)
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap();
        if with_body {
            req.headers_mut()
                .insert("content-length", http::HeaderValue::from_static("0"));
        }
        let resp = timeout(WAIT, sender.send_request(req))
            .await
            .unwrap()
            .unwrap();
        let status = resp.status().as_u16();
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        if body.is_empty() {
            // The service has no `/short` route: hyper's path, not the shortcut's.
            assert_eq!(status, 404, "{path}");
        } else {
            assert_eq!((status, &got[..]), (200, body.as_bytes()), "{path}");
        }
        assert_eq!(count(), shortcut_answers, "{path}");
    }
    drop(sender);
    // HTTP/2 by ALPN: never offered to the shortcut.
    let stream = tls_connect(&pki, server.addr, &[b"h2"]).await;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("https://localhost/short")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = timeout(WAIT, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    assert_eq!(count(), 3);
    drop(sender);
    server.shutdown.trigger();
    let report = timeout(WAIT, server.task).await.unwrap().unwrap().unwrap();
    assert_eq!((report.accepted, report.forced), (2, 0));
}
