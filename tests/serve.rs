//! `lameduck serve`, tested by running the built binary over real sockets and sending it real
//! signals.
#![cfg(unix)]

mod util;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use util::{Lameduck, TempDir, WAIT, get, raw_request, request, run_to_end};

const SIGTERM: i32 = libc::SIGTERM;

/// Deterministic, incompressible-looking content.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Sends `GET path` on a connection with a small receive buffer, so that a large response
/// stays in flight for as long as the caller reads slowly.
fn start_slow_download(
    addr: std::net::SocketAddr,
    path: &str,
    recv_buffer: usize,
) -> std::net::TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(recv_buffer).unwrap();
    socket.connect_timeout(&addr.into(), WAIT).unwrap();
    let mut stream: std::net::TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .unwrap();
    stream
}

#[test]
fn serves_the_built_in_page_without_a_directory() {
    let server = Lameduck::serve(&[], false);
    let resp = server.get("/");
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(resp.text().contains("lameduck"));
    assert_eq!(server.get("/elsewhere").status, 404);
}

#[test]
fn slow_download_in_flight_at_sigterm_completes_byte_for_byte_and_exit_is_0() {
    let site = TempDir::new("download");
    let content = pattern(8 * 1024 * 1024);
    site.write("big.bin", &content);
    let mut server = Lameduck::serve(&[site.arg(), "--drain-timeout", "30s"], true);

    // A small receive buffer, read slowly: the server is still writing when SIGTERM comes.
    let mut stream = start_slow_download(server.addr, "/big.bin", 64 * 1024);
    let mut received = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let n = stream.read(&mut chunk).unwrap();
    received.extend_from_slice(&chunk[..n]);

    server.signal(SIGTERM);
    server.wait_phase("draining");
    let status = server.admin_get("/status").text();
    assert!(status.contains("\"active_connections\":1"), "{status}");
    let refused = std::net::TcpStream::connect_timeout(&server.addr, WAIT);
    assert!(refused.is_err(), "a connect after SIGTERM was accepted");

    let end = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < end, "download did not finish");
        let n = stream.read(&mut chunk).unwrap();
        if n == 0 {
            break;
        }
        received.extend_from_slice(&chunk[..n]);
        std::thread::sleep(Duration::from_millis(2));
    }
    let head_end = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&received[..head_end]).to_ascii_lowercase();
    // The head went out before the signal; the connection is closed once the body is done.
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        received[head_end..] == content[..],
        "body differs from the file"
    );
    let exit = server.wait_exit();
    assert_eq!(exit.code(), Some(0));
    let log = server.drain_log();
    let last = log.last().unwrap();
    assert!(
        last.contains("lameduck stopped") && last.contains("forced=0"),
        "{last}"
    );
}

#[test]
fn second_sigterm_forces_and_exit_code_says_so() {
    let site = TempDir::new("force");
    site.write("big.bin", &pattern(8 * 1024 * 1024));
    let mut server = Lameduck::serve(&[site.arg(), "--drain-timeout", "1h"], true);
    let mut stream = start_slow_download(server.addr, "/big.bin", 16 * 1024);
    let mut first = [0u8; 1024];
    let _ = stream.read(&mut first).unwrap();
    server.signal(SIGTERM);
    server.wait_phase("draining");
    // While draining, the log says once a second how many connections are left and how long
    // until the deadline.
    let progress = server.wait_log("deadline_in=");
    assert!(progress.contains("active=1"), "{progress}");
    server.signal(SIGTERM);
    let exit = server.wait_exit();
    assert_eq!(exit.code(), Some(3), "a forced drain must not exit 0");
    let log = server.drain_log().join("\n");
    assert!(log.contains("second signal: forcing shutdown"), "{log}");
    assert!(log.contains("forced=1"), "{log}");
}

#[test]
fn path_escapes_never_return_content_from_outside() {
    let base = TempDir::new("escape");
    base.write("secret.txt", b"TOP SECRET outside the root");
    base.write("root/index.html", b"inside");
    base.write("root/sub/page.txt", b"sub page");
    base.write("root/.env", b"TOP SECRET dotfile");
    std::os::unix::fs::symlink(
        base.path().join("secret.txt"),
        base.path().join("root/link"),
    )
    .unwrap();
    std::os::unix::fs::symlink(base.path(), base.path().join("root/dirlink")).unwrap();
    let root = base.path().join("root");
    let server = Lameduck::serve(&[root.to_str().unwrap()], false);
    let attempts: &[&[u8]] = &[
        b"GET /../secret.txt HTTP/1.1\r\n",
        b"GET /sub/../../secret.txt HTTP/1.1\r\n",
        b"GET /./../secret.txt HTTP/1.1\r\n",
        b"GET /%2e%2e/secret.txt HTTP/1.1\r\n",
        b"GET /%2E%2E/secret.txt HTTP/1.1\r\n",
        b"GET /.%2e/secret.txt HTTP/1.1\r\n",
        b"GET /%2e%2e%2fsecret.txt HTTP/1.1\r\n",
        b"GET /..%2fsecret.txt HTTP/1.1\r\n",
        b"GET /sub%2f..%2f..%2fsecret.txt HTTP/1.1\r\n",
        b"GET /..%5csecret.txt HTTP/1.1\r\n",
        b"GET /sub\\..\\..\\secret.txt HTTP/1.1\r\n",
        b"GET /%252e%252e/secret.txt HTTP/1.1\r\n",
        b"GET /%252e%252e%252fsecret.txt HTTP/1.1\r\n",
        b"GET /%c0%ae%c0%ae/secret.txt HTTP/1.1\r\n",
        b"GET /secret.txt%00.html HTTP/1.1\r\n",
        b"GET /%00/../secret.txt HTTP/1.1\r\n",
        b"GET //../secret.txt HTTP/1.1\r\n",
        b"GET /link HTTP/1.1\r\n",
        b"GET /dirlink/secret.txt HTTP/1.1\r\n",
        b"GET /.env HTTP/1.1\r\n",
        b"GET /%2eenv HTTP/1.1\r\n",
        b"GET http://test/../secret.txt HTTP/1.1\r\n",
    ];
    for attempt in attempts {
        let mut req = attempt.to_vec();
        req.extend_from_slice(b"Host: test\r\nConnection: close\r\n\r\n");
        let mut s = util::connect(server.addr);
        s.write_all(&req).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        assert!(
            !text.contains("TOP SECRET"),
            "{:?} leaked: {text}",
            String::from_utf8_lossy(attempt)
        );
        assert!(
            !text.starts_with("HTTP/1.1 200"),
            "{:?} answered 200: {text}",
            String::from_utf8_lossy(attempt)
        );
    }
    // The server is unharmed and still serves what is inside.
    assert_eq!(server.get("/sub/page.txt").text(), "sub page");
    assert_eq!(server.get("/").text(), "inside");
}

#[test]
fn dotfiles_are_served_only_when_asked() {
    let site = TempDir::new("dotfiles");
    site.write(".well-known/hello.txt", b"hi");
    let server = Lameduck::serve(&[site.arg(), "--dotfiles"], false);
    assert_eq!(server.get("/.well-known/hello.txt").text(), "hi");
}

#[test]
fn conditional_and_range_requests() {
    let site = TempDir::new("conditional");
    let content = pattern(10_000);
    site.write("data.bin", &content);
    site.write("style.css", b"body { color: red }\n");
    site.write("app.js", b"console.log('plain')\n");
    site.write("app.js.gz", b"pretend-gzip-bytes");
    site.write("app.js.br", b"pretend-brotli-bytes");
    site.write("docs/index.html", b"docs index");
    site.write("empty/file.txt", b"x");
    let server = Lameduck::serve(&[site.arg()], false);
    let addr = server.addr;

    let full = get(addr, "/data.bin", &[]);
    assert_eq!(full.status, 200);
    assert_eq!(full.body, content);
    assert_eq!(full.header("content-length"), Some("10000"));
    assert_eq!(full.header("accept-ranges"), Some("bytes"));
    assert_eq!(
        full.header("content-type"),
        Some("application/octet-stream")
    );
    let etag = full.header("etag").expect("etag").to_owned();
    let last_modified = full
        .header("last-modified")
        .expect("last-modified")
        .to_owned();
    assert_eq!(
        get(addr, "/style.css", &[]).header("content-type"),
        Some("text/css; charset=utf-8")
    );

    let head = request(addr, "HEAD", "/data.bin", &[]);
    assert_eq!(
        (head.status, head.header("content-length")),
        (200, Some("10000"))
    );
    assert!(head.body.is_empty());

    let cached = get(addr, "/data.bin", &[("If-None-Match", &etag)]);
    assert_eq!(cached.status, 304);
    assert!(cached.body.is_empty());
    assert_eq!(
        get(addr, "/data.bin", &[("If-None-Match", "\"other\"")]).status,
        200
    );
    assert_eq!(
        get(addr, "/data.bin", &[("If-Modified-Since", &last_modified)]).status,
        304
    );
    assert_eq!(
        get(
            addr,
            "/data.bin",
            &[("If-Modified-Since", "Thu, 01 Jan 1970 00:00:00 GMT")]
        )
        .status,
        200
    );

    let part = get(addr, "/data.bin", &[("Range", "bytes=100-199")]);
    assert_eq!(part.status, 206);
    assert_eq!(part.header("content-range"), Some("bytes 100-199/10000"));
    assert_eq!(part.body, content[100..200]);
    let tail = get(addr, "/data.bin", &[("Range", "bytes=-10")]);
    assert_eq!((tail.status, &tail.body[..]), (206, &content[9990..]));
    let open = get(addr, "/data.bin", &[("Range", "bytes=9995-")]);
    assert_eq!(open.body, content[9995..]);
    let bad = get(addr, "/data.bin", &[("Range", "bytes=20000-")]);
    assert_eq!(bad.status, 416);
    assert_eq!(bad.header("content-range"), Some("bytes */10000"));
    let stale = get(
        addr,
        "/data.bin",
        &[("Range", "bytes=0-9"), ("If-Range", "\"stale\"")],
    );
    assert_eq!(
        stale.status, 200,
        "If-Range with a stale tag gets the whole file"
    );
    let fresh = get(
        addr,
        "/data.bin",
        &[("Range", "bytes=0-9"), ("If-Range", &etag)],
    );
    assert_eq!(fresh.status, 206);

    let br = get(addr, "/app.js", &[("Accept-Encoding", "gzip, br")]);
    assert_eq!(br.header("content-encoding"), Some("br"));
    assert_eq!(br.header("vary"), Some("accept-encoding"));
    assert_eq!(br.body, b"pretend-brotli-bytes");
    let gz = get(addr, "/app.js", &[("Accept-Encoding", "gzip, br;q=0")]);
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert_eq!(
        gz.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(gz.body, b"pretend-gzip-bytes");
    let plain = get(addr, "/app.js", &[]);
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.body, b"console.log('plain')\n");

    let dir = get(addr, "/docs", &[]);
    assert_eq!((dir.status, dir.header("location")), (301, Some("/docs/")));
    assert_eq!(get(addr, "/docs/", &[]).text(), "docs index");
    assert_eq!(
        get(addr, "/empty/", &[]).status,
        404,
        "no listing unless --list-dirs"
    );
    assert_eq!(request(addr, "POST", "/data.bin", &[]).status, 405);
}

#[test]
fn directory_listing_when_enabled() {
    let site = TempDir::new("listing");
    site.write("files/a <b>.txt", b"a");
    site.write("files/sub/c.txt", b"c");
    site.write("files/.hidden", b"h");
    let server = Lameduck::serve(&[site.arg(), "--list-dirs"], false);
    let page = server.get("/files/").text();
    assert!(page.contains("a &lt;b&gt;.txt"), "{page}");
    assert!(page.contains("href=\"a%20%3Cb%3E.txt\""), "{page}");
    assert!(page.contains("sub/"));
    assert!(!page.contains(".hidden"));
}

#[test]
fn admin_endpoints_and_lame_duck() {
    let mut server = Lameduck::serve(&["--lame-duck", "2s", "--max-connections", "77"], true);
    assert_eq!(server.admin_get("/live").status, 200);
    assert_eq!(server.admin_get("/ready").status, 200);
    assert_eq!(server.get("/").status, 200);
    let status = server.admin_get("/status");
    assert_eq!(status.header("content-type"), Some("application/json"));
    let json = status.text();
    for field in [
        "\"phase\":\"running\"",
        "\"pid\":",
        "\"active_connections\":",
        "\"accepted_connections\":",
        "\"max_connections\":77",
        "\"uptime_s\":",
    ] {
        assert!(json.contains(field), "{field} missing from {json}");
    }
    // Supervised by default: `pid` is the worker's, `supervisor_pid` the process started.
    assert!(json.contains(&format!("\"supervisor_pid\":{}", server.child.id())));
    assert!(!json.contains(&format!("\"pid\":{},", server.child.id())));
    let metrics = server.admin_get("/metrics").text();
    for series in [
        "lameduck_connections_active ",
        "lameduck_connections_accepted_total ",
        "lameduck_connections_rejected_total ",
        "lameduck_connections_forced_total ",
        "lameduck_requests_total{class=\"2xx\"} ",
        "lameduck_drain_seconds ",
    ] {
        assert!(metrics.contains(series), "{series} missing from\n{metrics}");
    }
    assert!(
        metrics.contains("lameduck_requests_total{class=\"2xx\"} 1"),
        "{metrics}"
    );

    server.signal(SIGTERM);
    // Lame duck: /ready fails at once, but the server still accepts and serves.
    server.wait_phase("lame_duck");
    assert_eq!(server.admin_get("/ready").status, 503);
    assert_eq!(server.admin_get("/live").status, 200);
    assert_eq!(server.get("/").status, 200);
    assert_eq!(server.wait_exit().code(), Some(0));
}

#[test]
fn shed_policy_answers_503() {
    let server = Lameduck::serve(&["--max-connections", "1", "--overload", "shed"], true);
    // Hold the only slot with an idle keep-alive connection.
    let mut holder = util::connect(server.addr);
    holder
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    let _ = holder.read(&mut buf).unwrap();
    let shed = server.get("/");
    assert_eq!(shed.status, 503);
    assert_eq!(shed.header("retry-after"), Some("1"));
    let metrics = server.admin_get("/metrics").text();
    assert!(
        metrics.contains("lameduck_connections_rejected_total 1"),
        "{metrics}"
    );
}

#[test]
fn malformed_request_gets_400_and_the_server_carries_on() {
    let server = Lameduck::serve(&[], false);
    let resp = raw_request(server.addr, b"\x16\x03\x01garbage\r\n\r\n");
    assert_eq!(resp.status, 400);
    assert_eq!(server.get("/").status, 200);
}

#[test]
fn port_in_use_is_one_clear_line_and_exit_1() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (status, stderr) = run_to_end(&["serve", "--listen", &addr]);
    assert_eq!(status.code(), Some(1));
    assert_eq!(
        stderr.trim(),
        format!("lameduck: cannot listen on {addr}: address already in use")
    );
}

#[test]
fn missing_directory_is_one_clear_line_and_exit_1() {
    let (status, stderr) = run_to_end(&[
        "serve",
        "/nonexistent/lameduck-site",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(status.code(), Some(1));
    assert_eq!(
        stderr.trim(),
        "lameduck: cannot serve /nonexistent/lameduck-site: no such directory"
    );

    let dir = TempDir::new("notadir");
    let file = dir.write("file.txt", b"x");
    let file = file.to_str().unwrap();
    let (status, stderr) = run_to_end(&["serve", file, "--listen", "127.0.0.1:0"]);
    assert_eq!(status.code(), Some(1));
    assert_eq!(
        stderr.trim(),
        format!("lameduck: cannot serve {file}: not a directory")
    );

    let (status, stderr) =
        run_to_end(&["serve", "--listen", "127.0.0.1:0", "--log-level", "loud=="]);
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.starts_with("lameduck: invalid --log-level") && stderr.trim().lines().count() == 1,
        "{stderr}"
    );
}

#[test]
fn a_pid_file_names_the_server_alone_or_supervised_and_an_unwritable_one_is_exit_1() {
    // Alone: written once the server is up, removed when it stops.
    let dir = TempDir::new("pidfile-alone");
    let pid_file = dir.path().join("lameduck.pid");
    let mut server = Lameduck::serve(
        &["--no-supervisor", "--pid-file", pid_file.to_str().unwrap()],
        false,
    );
    assert!(
        util::eventually(WAIT, || pid_file.exists()),
        "no pid file written"
    );
    let written: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(written, server.child.id());
    server.signal(SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0));
    assert!(!pid_file.exists(), "the pid file outlived the server");

    // A pid file that cannot be written is one clear line, in either mode.
    for mode in [&["--no-supervisor"][..], &[][..]] {
        let mut args = vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--pid-file",
            "/nonexistent/lameduck.pid",
        ];
        args.extend_from_slice(mode);
        let (status, stderr) = run_to_end(&args);
        assert_eq!(status.code(), Some(1), "{mode:?}: {stderr}");
        assert_eq!(
            stderr.trim().lines().last(),
            Some(
                "lameduck: cannot write the pid file /nonexistent/lameduck.pid: no such file or directory"
            ),
            "{mode:?}: {stderr}"
        );
        assert!(
            !stderr.contains("worker"),
            "{mode:?}: a worker started: {stderr}"
        );
    }
}

#[test]
fn a_sighup_with_nothing_to_reload_is_logged_and_ignored_alone_or_in_a_worker() {
    let site = TempDir::new("hup-ignored");
    site.write("index.html", b"still here\n");
    // Alone: no supervisor to start a new process, no certificate to re-read. The default
    // action of SIGHUP would end the server.
    let mut alone = Lameduck::serve(&[site.arg(), "--no-supervisor"], true);
    for n in 1..=2 {
        alone.signal(libc::SIGHUP);
        let lines = alone.wait_log_count("SIGHUP ignored", n);
        assert!(lines[n - 1].contains("--no-supervisor"), "{lines:?}");
        assert_eq!(alone.get("/").text(), "still here\n");
    }
    alone.signal(SIGTERM);
    assert_eq!(
        alone.wait_exit().code(),
        Some(0),
        "a clean drain after the SIGHUPs"
    );
    // Supervised, a SIGHUP sent to the worker itself (`pkill -HUP lameduck` reaches both
    // processes) leaves it serving; the supervisor has nothing to restart.
    let mut supervised = Lameduck::serve(&[site.arg()], true);
    let worker = util::status_field(&supervised.admin_get("/status").text(), "pid")
        .expect("the worker's pid in /status");
    util::send_signal(worker as u32, libc::SIGHUP);
    let line = supervised.wait_log("SIGHUP ignored");
    assert!(line.contains("supervisor"), "{line}");
    assert_eq!(supervised.get("/").text(), "still here\n");
    let status = supervised.admin_get("/status").text();
    assert_eq!(util::status_field(&status, "pid"), Some(worker), "{status}");
    assert_eq!(
        util::status_field(&status, "generation"),
        Some(0),
        "{status}"
    );
    assert!(util::alive(worker as u32));
    supervised.signal(SIGTERM);
    assert_eq!(supervised.wait_exit().code(), Some(0));
}

#[test]
fn defer_accept_leaves_a_silent_client_in_the_kernel_and_answers_one_that_speaks() {
    let site = TempDir::new("defer-accept");
    site.write("index.html", b"spoken to\n");
    // Without it, a client that connects and says nothing is accepted (it holds a slot).
    let plain = Lameduck::serve(&[site.arg(), "--no-supervisor"], true);
    let before = plain.metric("lameduck_connections_accepted_total");
    let _silent = util::connect(plain.addr);
    assert!(
        util::eventually(WAIT, || plain.metric("lameduck_connections_accepted_total")
            > before),
        "a silent connection is accepted without --defer-accept"
    );
    // With it (supervised, so the supervisor's socket carries the option to the worker),
    // the silent client is not accepted; once it speaks, it is, and answered.
    let deferred = Lameduck::serve(&[site.arg(), "--defer-accept"], true);
    let before = deferred.metric("lameduck_connections_accepted_total");
    let mut silent = util::connect(deferred.addr);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        deferred.metric("lameduck_connections_accepted_total"),
        before,
        "a silent connection waits in the kernel"
    );
    assert_eq!(deferred.metric("lameduck_connections_active"), 0);
    silent
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    silent.read_to_end(&mut buf).unwrap();
    let resp = util::parse(&buf, false);
    assert_eq!((resp.status, resp.text()), (200, "spoken to\n".to_owned()));
    assert_eq!(
        deferred.metric("lameduck_connections_accepted_total"),
        before + 1
    );
    assert_eq!(deferred.get("/").text(), "spoken to\n");
}

#[test]
fn bad_duration_and_bad_config_are_one_line_and_exit_1() {
    let (status, stderr) = run_to_end(&["serve", "--drain-timeout", "soon"]);
    assert_eq!(status.code(), Some(1));
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--drain-timeout"), "{stderr}");

    let dir = TempDir::new("badconfig");
    let file = dir.write("lameduck.toml", b"drain-timeout = 5\n");
    let (status, stderr) = run_to_end(&["serve", "--config", file.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1));
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("lameduck: cannot read config"),
        "{stderr}"
    );

    let (status, stderr) = run_to_end(&["serve", "--config", "/nonexistent/lameduck.toml"]);
    assert_eq!(status.code(), Some(1));
    assert_eq!(
        stderr.trim(),
        "lameduck: cannot read config /nonexistent/lameduck.toml: no such file or directory"
    );
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"));
}

#[test]
fn config_file_sets_flags_and_flags_win() {
    let dir = TempDir::new("config");
    dir.write("site/hello.txt", b"from the config's dir");
    let conf = format!(
        "dir = \"{}\"\nlisten = \"127.0.0.1:0\"\nmax-connections = 5\nlame-duck = \"0s\"\n",
        dir.path().join("site").display()
    );
    let file = dir.write("lameduck.toml", conf.as_bytes());
    let server = Lameduck::serve(
        &["--config", file.to_str().unwrap(), "--max-connections", "9"],
        true,
    );
    assert_eq!(server.get("/hello.txt").text(), "from the config's dir");
    assert!(
        server
            .admin_get("/status")
            .text()
            .contains("\"max_connections\":9")
    );
}

#[test]
fn help_and_version_exit_0() {
    let (status, _) = run_to_end(&["--version"]);
    assert_eq!(status.code(), Some(0));
    let out = std::process::Command::new(util::bin())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--max-connections",
        "--overload",
        "--drain-timeout",
        "--lame-duck",
        "--header-timeout",
        "--idle-timeout",
        "--admin",
        "--log-format",
        "--log-level",
        "--config",
        "--list-dirs",
        "--dotfiles",
        "--no-supervisor",
        "--pid-file",
        "--ready-timeout",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    let mut server = Lameduck::serve(&["--log-format", "json"], false);
    server.signal(SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0));
    let log = server.drain_log();
    assert!(log.len() >= 3);
    for line in &log {
        assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
    }
    assert!(log.last().unwrap().contains("lameduck stopped"));
}

#[test]
fn adopts_an_inherited_listening_socket() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;

    // The socket a supervisor or systemd would hold open; the client can connect before the
    // server even starts (the kernel queues it), and is served once it does.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let early = std::net::TcpStream::connect(addr).unwrap();
    let fd = listener.as_raw_fd();
    let mut cmd = std::process::Command::new("/bin/sh");
    // `exec` keeps the shell's pid, so LISTEN_PID=$$ names the lameduck process.
    cmd.args([
        "-c",
        "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" serve --listen 127.0.0.1:1 --log-level warn",
        util::bin(),
    ])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    #[allow(unsafe_code)]
    // SAFETY: between fork and exec only dup2 and fcntl run, which are async-signal-safe;
    // they put the listener at descriptor 3 without close-on-exec, as LISTEN_FDS wants.
    // (dup2 onto itself would keep close-on-exec, hence fcntl when it already is 3.)
    unsafe {
        cmd.pre_exec(move || {
            let rc = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if rc == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn lameduck through sh");
    drop(listener);
    let mut early = early;
    early.set_read_timeout(Some(WAIT)).unwrap();
    early
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = early.read_to_end(&mut buf);
    let resp = util::parse(&buf, false);
    assert_eq!(
        resp.status, 200,
        "the connection made before the server started was not served"
    );
    assert!(resp.text().contains("lameduck"));
    util::send_signal(child.id(), SIGTERM);
    let status = util::wait_exit(&mut child, WAIT).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("lameduck did not exit");
    });
    assert_eq!(status.code(), Some(0));
}

#[test]
fn listens_on_every_address_given() {
    let mut server = Lameduck::serve(&["--listen", "127.0.0.1:0"], false);
    let lines = server.wait_log_count("max_connections=", 2);
    let addrs: Vec<std::net::SocketAddr> = lines.iter().map(|l| util::field_addr(l)).collect();
    assert_ne!(addrs[0], addrs[1]);
    for addr in addrs {
        assert_eq!(get(addr, "/", &[]).status, 200);
    }
}

#[test]
fn header_and_idle_timeouts_are_applied() {
    // Far apart, so that when a connection closes says which timeout fired.
    let server = Lameduck::serve(
        &["--header-timeout", "300ms", "--idle-timeout", "3s"],
        false,
    );
    /// Reads until the server closes; a read that times out (10 s, far past both timeouts)
    /// means it never did.
    fn until_closed(stream: &mut std::net::TcpStream) -> Vec<u8> {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
                Err(e) => panic!("the server did not close the connection: {e}"),
            }
        }
    }
    // A client that never sends a request head is cut by the header timeout, long before
    // the idle timeout could have fired…
    let mut silent = util::connect(server.addr);
    let started = std::time::Instant::now();
    assert!(until_closed(&mut silent).is_empty());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(2500),
        "silent connection closed after {took:?}"
    );
    // …and a keep-alive connection left idle after a response, by the idle timeout: not by
    // the header timeout, which does not run between requests.
    let mut idle = util::connect(server.addr);
    idle.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let started = std::time::Instant::now();
    let response = until_closed(&mut idle);
    let took = started.elapsed();
    assert!(
        response.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&response)
    );
    assert!(
        took >= Duration::from_millis(2500),
        "the idle connection closed after {took:?}, before the idle timeout"
    );
}
