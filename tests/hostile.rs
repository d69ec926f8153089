//! A hostile client against the real `lameduck serve` binary: HTTP/2 streams stalled by flow
//! control, descriptor exhaustion, clients holding the admin endpoint's connections, slowloris,
//! slow readers, HTTP/2 rapid reset and CONTINUATION floods. Each test checks that other
//! clients are served meanwhile and that memory and descriptors come back.
//!
//! Every wait is bounded; the server is killed when its handle drops.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use std::time::{Duration, Instant};

use util::{Lameduck, TempDir, connect, eventually, fd_count, get, rss_kb};

/// A tokio runtime for the HTTP/2 clients.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// One HTTP/2 connection whose client keeps every stream's window at 0: it opens as many
/// streams as the server allows (up to `streams`) for `path`, and keeps the responses.
struct StalledConn {
    _client: h2::client::SendRequest<bytes::Bytes>,
    bodies: Vec<h2::RecvStream>,
    driver: tokio::task::JoinHandle<()>,
}

async fn stalled_conn(
    addr: SocketAddr,
    path: &str,
    range: Option<&str>,
    streams: usize,
) -> StalledConn {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .expect("h2 handshake");
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut pending = Vec::new();
    for _ in 0..streams {
        // `ready` waits while the server's stream limit is reached: stop there.
        let Ok(Ok(mut ready)) =
            tokio::time::timeout(Duration::from_millis(500), client.clone().ready()).await
        else {
            break;
        };
        let mut req = http::Request::get(format!("http://{addr}{path}"));
        if let Some(range) = range {
            req = req.header("range", range);
        }
        let Ok((response, _)) = ready.send_request(req.body(()).unwrap(), true) else {
            break;
        };
        pending.push(response);
    }
    // Only the answers that come while every stream is stalled count: the server's write
    // timeout (4 s) resets stalled streams, and a client that has the server's SETTINGS
    // (as h2's does when they arrive before it has sent every request) holds the requests
    // over the limit itself and sends them as streams are reset, so over the connection's
    // life more than 128 are answered, never more than 128 at once.
    let stalled_until = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut bodies = Vec::new();
    for response in pending {
        if let Ok(Ok(resp)) = tokio::time::timeout_at(stalled_until, response).await {
            bodies.push(resp.into_body());
        }
    }
    StalledConn {
        _client: client,
        bodies,
        driver,
    }
}

#[test]
fn http2_streams_stalled_by_flow_control_are_bounded_and_reset() {
    let dir = TempDir::new("h2stall");
    dir.write("big.bin", &vec![7u8; 1 << 20]);
    dir.write("index.html", b"hello\n");
    let write_timeout = Duration::from_secs(4);
    // One process, so that its memory and descriptors are the server's own.
    let server = Lameduck::serve(
        &[dir.arg(), "--write-timeout", "4s", "--no-supervisor"],
        false,
    );
    let pid = server.child.id();
    let addr = server.addr;
    assert_eq!(get(addr, "/", &[]).status, 200);
    let (rss0, fds0) = (rss_kb(pid), fd_count(pid));

    let rt = runtime();
    let conns = rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..20 {
            // Half ask for a 256 KiB range (memory), half for the whole 1 MiB file
            // (a file over 256 KiB was streamed from an open descriptor).
            let range = (i % 2 == 0).then_some("bytes=0-262143");
            tasks.push(tokio::spawn(stalled_conn(addr, "/big.bin", range, 200)));
        }
        let mut conns = Vec::new();
        for t in tasks {
            conns.push(t.await.expect("client task"));
        }
        conns
    });
    let stalled_at = Instant::now();
    let streams: usize = conns.iter().map(|c| c.bodies.len()).sum();
    std::thread::sleep(Duration::from_millis(300));
    let (rss1, fds1) = (rss_kb(pid), fd_count(pid));
    // Others are served meanwhile.
    let other = get(addr, "/", &[]);
    println!(
        "stalled streams: {streams} on 20 connections; RSS {rss0} KiB -> {rss1} KiB (+{} KiB); descriptors {fds0} -> {fds1}",
        rss1.saturating_sub(rss0)
    );
    assert_eq!(
        other.status, 200,
        "another client is served while streams stall"
    );
    assert!(
        streams >= 20 * 100,
        "the server should accept at least 100 streams per connection, got {streams}"
    );
    assert!(
        streams <= 20 * 128,
        "at most 128 concurrent streams per connection, got {streams}"
    );
    assert!(
        rss1.saturating_sub(rss0) < 64 * 1024,
        "RSS grew by {} KiB with {streams} stalled streams",
        rss1 - rss0
    );
    assert!(
        fds1 <= fds0 + 20 + 8,
        "descriptors grew from {fds0} to {fds1}: stalled streams hold files"
    );

    // Every stalled stream is reset within the write timeout (plus slack for a busy machine).
    let (reset, elapsed) = rt.block_on(async {
        let mut reset = 0usize;
        let mut waits = Vec::new();
        let mut conns = conns;
        for conn in conns.iter_mut() {
            for mut body in conn.bodies.drain(..) {
                waits.push(tokio::spawn(async move {
                    matches!(
                        tokio::time::timeout(Duration::from_secs(20), body.data()).await,
                        Ok(Some(Err(_)))
                    )
                }));
            }
        }
        for w in waits {
            if w.await.unwrap_or(false) {
                reset += 1;
            }
        }
        for conn in conns {
            conn.driver.abort();
        }
        (reset, stalled_at.elapsed())
    });
    println!(
        "reset {reset} of {streams} stalled streams within {elapsed:?} (write timeout {write_timeout:?})"
    );
    assert_eq!(reset, streams, "every stalled stream is reset");
    assert!(
        elapsed < write_timeout + Duration::from_secs(6),
        "stalled streams lived {elapsed:?}"
    );
    drop(rt);
    assert!(
        eventually(Duration::from_secs(10), || fd_count(pid) <= fds0 + 2),
        "descriptors back to {fds0}: now {}",
        fd_count(pid)
    );
    assert_eq!(get(addr, "/", &[]).status, 200);
}

/// Runs `lameduck serve` with its open-files limit (soft and hard) set to `limit`.
#[allow(unsafe_code)]
fn serve_with_fd_limit(dir: &TempDir, limit: u64) -> Lameduck {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = std::process::Command::new(util::bin());
    // SAFETY: `pre_exec` runs in the forked child before exec; setrlimit is async-signal-safe
    // and touches only the struct on this closure's stack.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.args([
        "serve",
        "--no-supervisor",
        dir.arg(),
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ]);
    Lameduck::spawn(cmd, true)
}

#[test]
fn out_of_descriptors_an_existing_file_is_503_not_404() {
    let dir = TempDir::new("emfile503");
    dir.write("index.html", b"hello\n");
    dir.write("file.txt", b"a file that exists\n");
    let mut server = serve_with_fd_limit(&dir, 48);
    let pid = server.child.id();
    // Fill the table: connections are accepted until the server runs out of descriptors.
    let mut held = Vec::new();
    for _ in 0..80 {
        held.push(connect(server.addr));
    }
    assert!(
        eventually(Duration::from_secs(5), || fd_count(pid) >= 47),
        "the server never filled its descriptor table ({} open)",
        fd_count(pid)
    );
    // Every connection the server holds asks for a file that exists.
    let mut statuses = Vec::new();
    for s in held.iter_mut() {
        let _ = s.write_all(b"GET /file.txt HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    // The ones the server holds answer at once; the others are still in the backlog.
    std::thread::sleep(Duration::from_millis(500));
    for s in held.iter_mut() {
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 1024];
        if let Ok(n) = s.read(&mut buf) {
            if n > 0 {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                statuses.push(text);
            }
        }
    }
    let answered: Vec<&String> = statuses
        .iter()
        .filter(|t| t.starts_with("HTTP/1.1"))
        .collect();
    assert!(!answered.is_empty(), "no connection was answered");
    assert!(
        answered.iter().all(|t| !t.starts_with("HTTP/1.1 404")),
        "a file that exists was answered 404: {answered:?}"
    );
    let unavailable = answered
        .iter()
        .filter(|t| {
            t.starts_with("HTTP/1.1 503") && t.to_ascii_lowercase().contains("retry-after: 1")
        })
        .count();
    assert!(
        unavailable > 0,
        "no 503 with Retry-After among {answered:?}"
    );
    server.wait_log("answering 503");
    // Once descriptors are free again, the file is served.
    drop(held);
    assert!(eventually(Duration::from_secs(10), || {
        get(server.addr, "/file.txt", &[]).status == 200
    }));
    // And the failures were counted.
    let metrics = server.admin_get("/metrics").text();
    let counted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("lameduck_file_errors_total{kind=\"unavailable\"} "))
        .and_then(|v| v.trim().parse().ok())
        .expect("lameduck_file_errors_total in /metrics");
    // At least the ones seen here (the retries above may have met a full table too).
    assert!(
        counted as usize >= unavailable,
        "{counted} < {unavailable}: {metrics}"
    );
}

#[test]
fn admin_answers_probes_while_clients_hold_its_connections() {
    let server = Lameduck::serve(&[], true);
    let admin = server.admin.unwrap();
    // 100 connections, more than the admin endpoint's limit: half never say anything, half
    // send a request and then sit on the connection as idle keep-alive clients.
    let mut held = Vec::new();
    for i in 0..100 {
        let mut s = connect(admin);
        if i >= 50 {
            s.write_all(b"GET /live HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
        }
        held.push(s);
    }
    for path in ["/live", "/ready"] {
        let started = Instant::now();
        let resp = get(admin, path, &[]);
        assert_eq!(resp.status, 200, "{path}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{path} took {:?} while connections were held",
            started.elapsed()
        );
    }
    drop(held);
}

#[test]
fn slowloris_and_slow_readers_do_not_hold_up_others_and_resources_come_back() {
    let dir = TempDir::new("slow");
    dir.write("index.html", b"hello\n");
    dir.write("big.bin", &vec![1u8; 4 << 20]);
    let server = Lameduck::serve(
        &[
            dir.arg(),
            "--header-timeout",
            "2s",
            "--write-timeout",
            "2s",
            "--no-supervisor",
        ],
        false,
    );
    let pid = server.child.id();
    let addr = server.addr;
    assert_eq!(get(addr, "/", &[]).status, 200);
    std::thread::sleep(Duration::from_millis(200));
    let (rss0, fds0) = (rss_kb(pid), fd_count(pid));

    // 200 slowloris clients trickle a header byte now and then and never finish.
    let mut loris = Vec::new();
    for _ in 0..200 {
        let mut s = connect(addr);
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-a: ");
        loris.push(s);
    }
    // 20 slow readers ask for 4 MiB and never read.
    let mut readers = Vec::new();
    for _ in 0..20 {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        sock.connect(&addr.into()).unwrap();
        let mut s: TcpStream = sock.into();
        s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        readers.push(s);
    }
    // Meanwhile others are served, quickly.
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(get(addr, "/", &[]).status, 200);
        assert!(started.elapsed() < Duration::from_secs(1));
        for s in loris.iter_mut() {
            let _ = s.write_all(b"a");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The header and write timeouts cut them all: descriptors and memory come back.
    assert!(
        eventually(Duration::from_secs(10), || fd_count(pid) <= fds0 + 2),
        "descriptors did not come back: {fds0} -> {}",
        fd_count(pid)
    );
    let rss1 = rss_kb(pid);
    println!("slowloris + slow readers: RSS {rss0} KiB -> {rss1} KiB after they were cut");
    assert!(rss1 < rss0 + 16 * 1024, "RSS {rss0} KiB -> {rss1} KiB");
    drop((loris, readers));
    assert_eq!(get(addr, "/", &[]).status, 200);
}

/// An HTTP/2 frame: 9-byte header and payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// HPACK for `GET / http` with `:authority t`: indexed fields, and a literal authority.
fn get_root_block() -> Vec<u8> {
    vec![0x82, 0x86, 0x84, 0x01, 0x01, b't']
}

#[test]
fn http2_rapid_reset_and_continuation_flood_leave_others_served() {
    let dir = TempDir::new("h2flood");
    dir.write("index.html", b"hello\n");
    let server = Lameduck::serve(&[dir.arg(), "--no-supervisor"], false);
    let pid = server.child.id();
    let addr = server.addr;
    assert_eq!(get(addr, "/", &[]).status, 200);
    std::thread::sleep(Duration::from_millis(200));
    let (rss0, fds0) = (rss_kb(pid), fd_count(pid));

    let flood = |payload: Vec<u8>| {
        std::thread::spawn(move || {
            let mut s = connect(addr);
            s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = s.write_all(&payload);
            // Read until the server closes (GOAWAY and close), bounded by the read timeout.
            let mut sink = [0u8; 16384];
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end {
                match s.read(&mut sink) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
    };

    // Rapid reset: 20,000 streams opened and reset at once, on 4 connections.
    let mut floods = Vec::new();
    for _ in 0..4 {
        let mut p = PREFACE.to_vec();
        p.extend(frame(SETTINGS, 0, 0, &[]));
        for i in 0..5_000u32 {
            let id = 1 + 2 * i;
            p.extend(frame(
                HEADERS,
                END_STREAM | END_HEADERS,
                id,
                &get_root_block(),
            ));
            p.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
        }
        floods.push(flood(p));
    }
    // CONTINUATION flood: one header block that never ends, 16 MiB of it, on 4 connections.
    for _ in 0..4 {
        let mut p = PREFACE.to_vec();
        p.extend(frame(SETTINGS, 0, 0, &[]));
        p.extend(frame(HEADERS, END_STREAM, 1, &get_root_block()));
        // Literal header `x: aaaa…` fragments, never END_HEADERS.
        let mut chunk = vec![0x00, 0x01, b'x', 0x7f, 0x81, 0x7f];
        chunk.resize(4096, b'a');
        for _ in 0..4096 {
            p.extend(frame(CONTINUATION, 0, 1, &chunk));
        }
        floods.push(flood(p));
    }
    // Others are served throughout.
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(get(addr, "/", &[]).status, 200);
        assert!(started.elapsed() < Duration::from_secs(2));
        std::thread::sleep(Duration::from_millis(25));
    }
    for f in floods {
        f.join().unwrap();
    }
    assert!(
        eventually(Duration::from_secs(10), || fd_count(pid) <= fds0 + 2),
        "descriptors did not come back: {fds0} -> {}",
        fd_count(pid)
    );
    let rss1 = rss_kb(pid);
    println!("rapid reset + CONTINUATION flood: RSS {rss0} KiB -> {rss1} KiB");
    assert!(rss1 < rss0 + 32 * 1024, "RSS {rss0} KiB -> {rss1} KiB");
    assert_eq!(get(addr, "/", &[]).status, 200);
}
