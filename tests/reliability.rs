//! Reliability against abuse, with the real `lameduck serve` binary: malformed requests in
//! bulk (each answered 4xx or closed, the process unharmed, its memory and descriptors back
//! where they started), TLS handshakes that never finish while real HTTPS clients are served,
//! and a connection burst far past `--max-connections` (everyone served, descriptors bounded).
//!
//! Behaviour only, never timing: the figures (latency under attack, failed requests in a
//! rolling restart behind HAProxy, kill -9 under load) are counted by `bench/run`. Related
//! tests elsewhere: plain slowloris and slow readers, descriptor exhaustion (503, not 404) in
//! `tests/hostile.rs`; kill -9 of a supervised worker in `tests/supervisor.rs`.
//!
//! Every wait is bounded; every server is killed when its handle drops.
#![cfg(unix)]

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use util::{Lameduck, TempDir, connect, eventually, fd_count, get, rss_kb};

/// A small deterministic generator (xorshift64*), so the random cases are the same each run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| (self.next() >> 32) as u8).collect()
    }
}

/// What a malformed request may get.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// A 4xx response, or the connection closed without one.
    Refused,
    /// At most one response, then the connection closed: a request smuggled after the first
    /// must never be answered.
    OneThenClose,
}

fn cases() -> Vec<(&'static str, Vec<u8>, Expect)> {
    use Expect::{OneThenClose, Refused};
    let host = "Host: x\r\n";
    let mut rng = Rng(0x5EED_1A3E_D0C4);
    let mut v: Vec<(&'static str, Vec<u8>, Expect)> = vec![
        (
            "oversized head",
            format!("GET / HTTP/1.1\r\n{host}X-a: {}\r\n\r\n", "a".repeat(200_000)).into_bytes(),
            Refused,
        ),
        (
            "2000 headers",
            format!("GET / HTTP/1.1\r\n{host}{}\r\n", "X-a: b\r\n".repeat(2000)).into_bytes(),
            Refused,
        ),
        (
            "100 KiB URI",
            format!("GET /{} HTTP/1.1\r\n{host}\r\n", "a".repeat(100_000)).into_bytes(),
            Refused,
        ),
        (
            "invalid method",
            format!("G@T / HTTP/1.1\r\n{host}\r\n").into_bytes(),
            Refused,
        ),
        (
            "method too long",
            format!("{} / HTTP/1.1\r\n{host}\r\n", "A".repeat(10_000)).into_bytes(),
            Refused,
        ),
        ("HTTP/0.9", b"GET /\r\n".to_vec(), Refused),
        (
            "HTTP/9.9",
            format!("GET / HTTP/9.9\r\n{host}\r\n").into_bytes(),
            Refused,
        ),
        (
            "NUL in the path",
            format!("GET /\0 HTTP/1.1\r\n{host}\r\n").into_bytes(),
            Refused,
        ),
        (
            "header without a colon",
            format!("GET / HTTP/1.1\r\n{host}Bad\r\n\r\n").into_bytes(),
            Refused,
        ),
        (
            "obs-fold",
            format!("GET / HTTP/1.1\r\n{host}X-a: b\r\n c\r\n\r\n").into_bytes(),
            Refused,
        ),
        (
            "space before the colon",
            b"GET / HTTP/1.1\r\nHost : x\r\n\r\n".to_vec(),
            Refused,
        ),
        (
            "broken chunked body",
            format!("POST / HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n")
                .into_bytes(),
            Refused,
        ),
        (
            "chunk size overflow",
            format!(
                "POST / HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFF\r\nabc\r\n"
            )
            .into_bytes(),
            Refused,
        ),
        (
            "unknown transfer coding",
            format!("POST / HTTP/1.1\r\n{host}Transfer-Encoding: gzip\r\n\r\nabc").into_bytes(),
            Refused,
        ),
        (
            "duplicated Content-Length",
            format!("GET / HTTP/1.1\r\n{host}Content-Length: 5\r\nContent-Length: 6\r\n\r\nabcde")
                .into_bytes(),
            Refused,
        ),
        (
            "Content-Length and Transfer-Encoding, POST",
            format!(
                "POST / HTTP/1.1\r\n{host}Content-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            .into_bytes(),
            OneThenClose,
        ),
        (
            "Content-Length and Transfer-Encoding, GET",
            format!(
                "GET / HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            .into_bytes(),
            OneThenClose,
        ),
        (
            "broken chunked body after a GET",
            format!(
                "GET / HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\nzz\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            .into_bytes(),
            OneThenClose,
        ),
        ("truncated head", b"GET / HTTP/1.1\r\nHo".to_vec(), Refused),
    ];
    for _ in 0..20 {
        let len = 1 + (rng.next() % 4096) as usize;
        v.push(("random bytes", rng.bytes(len), Refused));
    }
    v
}

/// Everything the server sends on one connection after `payload`, until it closes (bounded:
/// `--header-timeout 1s --idle-timeout 1s` close every connection within a second or so).
fn exchange(addr: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut s = connect(addr);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The server may answer and close before it has read everything (431 on a huge head):
    // a failed write is a close.
    let _ = s.write_all(payload);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return buf,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return buf,
            Err(e) => panic!(
                "connection still open after 5 s ({e}); got {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
    }
}

/// Status codes of the responses in `buf` (status lines found at the start of responses).
fn statuses(buf: &[u8]) -> Vec<u16> {
    let mut out = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(rest) {
            Ok(httparse::Status::Complete(head)) => {
                out.push(resp.code.unwrap_or(0));
                let len: usize = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                    .unwrap_or(0);
                rest = &rest[(head + len).min(rest.len())..];
            }
            _ => {
                out.push(0);
                break;
            }
        }
    }
    out
}

#[test]
fn malformed_requests_in_bulk_get_4xx_or_a_close_and_resources_come_back() {
    let dir = TempDir::new("reliability-malformed");
    dir.write("index.html", b"hello\n");
    let mut server = Lameduck::serve(
        &[
            dir.arg(),
            "--no-supervisor",
            "--header-timeout",
            "1s",
            "--idle-timeout",
            "1s",
        ],
        false,
    );
    let pid = server.child.id();
    let addr = server.addr;
    assert_eq!(get(addr, "/", &[]).status, 200);
    std::thread::sleep(Duration::from_millis(200));
    let (rss0, fds0) = (rss_kb(pid), fd_count(pid));

    // Every case 10 times, 16 connections at a time.
    let jobs: Vec<(&'static str, Vec<u8>, Expect)> = cases()
        .into_iter()
        .flat_map(|c| std::iter::repeat_n(c, 10))
        .collect();
    let jobs = Arc::new(jobs);
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (jobs, next) = (Arc::clone(&jobs), Arc::clone(&next));
            std::thread::spawn(move || {
                let mut bad = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some((name, payload, expect)) = jobs.get(i) else {
                        return bad;
                    };
                    let got = statuses(&exchange(addr, payload));
                    let ok = match expect {
                        Expect::Refused => got.first().is_none_or(|s| (400..500).contains(s)),
                        Expect::OneThenClose => got.len() <= 1 && got.iter().all(|s| *s != 0),
                    };
                    if !ok {
                        bad.push(format!("{name}: {got:?}"));
                    }
                }
            })
        })
        .collect();
    let bad: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("a client thread panicked"))
        .collect();
    assert!(bad.is_empty(), "answered wrongly: {bad:#?}");
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "lameduck exited"
    );
    assert_eq!(get(addr, "/", &[]).status, 200);
    assert!(
        eventually(Duration::from_secs(10), || fd_count(pid) <= fds0 + 2),
        "descriptors did not come back: {fds0} -> {}",
        fd_count(pid)
    );
    let rss1 = rss_kb(pid);
    println!(
        "{} malformed requests: RSS {rss0} KiB -> {rss1} KiB, descriptors {fds0} -> {}",
        jobs.len(),
        fd_count(pid)
    );
    assert!(rss1 < rss0 + 16 * 1024, "RSS {rss0} KiB -> {rss1} KiB");
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0), "a clean drain exits 0");
    let log = server.drain_log();
    assert!(
        log.iter().any(|l| l.contains("panicked=0"))
            && !log.iter().any(|l| l.contains("panicked at")),
        "a connection task panicked: {log:#?}"
    );
}

/// A CA and a leaf certificate for localhost (rcgen), written as PEM files in `dir`;
/// returns the CA's DER and the paths of the leaf's certificate and key.
fn pki(dir: &TempDir) -> (rustls_pki_types::CertificateDer<'static>, String, String) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let cert = dir.write("cert.pem", leaf.pem().as_bytes());
    let key = dir.write("key.pem", leaf_key.serialize_pem().as_bytes());
    (
        ca.der().clone(),
        cert.to_str().unwrap().to_owned(),
        key.to_str().unwrap().to_owned(),
    )
}

/// One HTTPS `GET /` on a new connection (full handshake); its status, or the error.
fn https_get(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> Result<u16, Box<dyn std::error::Error>> {
    let name = rustls_pki_types::ServerName::try_from("localhost")?;
    let conn = rustls::ClientConnection::new(Arc::clone(config), name)?;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    match tls.read_to_end(&mut buf) {
        Ok(_) => {}
        // A peer that closes without close_notify: what was read is still the answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => {}
        Err(e) => return Err(e.into()),
    }
    Ok(statuses(&buf).first().copied().unwrap_or(0))
}

#[test]
fn tls_handshakes_that_never_finish_do_not_stop_real_clients() {
    let dir = TempDir::new("reliability-tls-loris");
    dir.write("www/index.html", b"hello over TLS\n");
    let (ca, cert, key) = pki(&dir);
    let www = dir.path().join("www");
    let server = Lameduck::serve(
        &[
            www.to_str().unwrap(),
            "--no-supervisor",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
        false,
    );
    let addr = server.addr;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    assert_eq!(https_get(addr, &config).unwrap(), 200);

    // 300 clients that never finish a handshake: a third say nothing after the TCP
    // handshake, the others start a ClientHello record (512 bytes announced) and trickle it a
    // byte at a time.
    let mut loris: Vec<TcpStream> = Vec::new();
    for i in 0..300 {
        let mut s = connect(addr);
        if i % 3 != 0 {
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
        }
        loris.push(s);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let trickler = {
        let stop = Arc::clone(&stop);
        let mut socks: Vec<TcpStream> = loris.iter().map(|s| s.try_clone().unwrap()).collect();
        std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::SeqCst) && Instant::now() < end {
                for (i, s) in socks.iter_mut().enumerate() {
                    if i % 3 != 0 {
                        let _ = s.write_all(&[0]);
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    // Meanwhile every real client is served.
    let mut failures = Vec::new();
    for _ in 0..40 {
        match https_get(addr, &config) {
            Ok(200) => {}
            other => failures.push(format!("{other:?}")),
        }
    }
    stop.store(true, Ordering::SeqCst);
    trickler.join().unwrap();
    // The slow clients were really held (the header timeout, 10 s, had not cut them).
    let open = loris
        .iter()
        .filter(|s| {
            s.set_nonblocking(true).unwrap();
            let mut b = [0u8; 1];
            matches!(s.peek(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    println!("40 HTTPS requests while {open} of 300 handshakes hung: {failures:?}");
    assert!(failures.is_empty(), "real clients failed: {failures:?}");
    assert!(open >= 250, "only {open} slow handshakes were still held");
    drop(loris);
    assert_eq!(https_get(addr, &config).unwrap(), 200);
}

#[test]
fn a_burst_past_the_connection_limit_is_all_served_and_descriptors_stay_bounded() {
    let dir = TempDir::new("reliability-burst");
    dir.write("index.html", b"hello\n");
    let limit = 50;
    let server = Lameduck::serve(
        &[
            dir.arg(),
            "--no-supervisor",
            "--max-connections",
            &limit.to_string(),
        ],
        false,
    );
    let pid = server.child.id();
    let addr = server.addr;
    assert_eq!(get(addr, "/", &[]).status, 200);
    let fds0 = fd_count(pid);
    // Sample the server's descriptors while 400 clients connect at once.
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (stop, peak) = (Arc::clone(&stop), Arc::clone(&peak));
        std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::SeqCst) && Instant::now() < end {
                if let Ok(d) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
                    peak.fetch_max(d.count(), Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let mut clients: Vec<TcpStream> = (0..400).map(|_| connect(addr)).collect();
    for c in clients.iter_mut() {
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
    }
    let mut served = 0;
    for c in clients.iter_mut() {
        let mut buf = Vec::new();
        let _ = c.read_to_end(&mut buf);
        if statuses(&buf).first() == Some(&200) {
            served += 1;
        }
    }
    stop.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::SeqCst);
    println!(
        "400 clients at once, --max-connections {limit}: {served} served, descriptors {fds0} -> peak {peak}"
    );
    assert_eq!(served, 400, "every client must be served");
    // The connections held never exceed the limit: the rest wait in the kernel's backlog.
    assert!(
        peak <= fds0 + limit + 8,
        "descriptors peaked at {peak} with a limit of {limit} (started at {fds0})"
    );
}
