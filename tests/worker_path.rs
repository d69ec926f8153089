//! Files answered on the async workers, without the blocking pool (`openat2` with
//! `RESOLVE_CACHED`, reads with `RWF_NOWAIT`), keep every rule of the blocking path. With
//! `--cache-size 0` every file takes that path first (with the cache on, only files too
//! large for it); links, directories and names the kernel has not cached fall back to the
//! blocking pool. An HTTP/2 file body reopens its file for each chunk there too, and a file
//! replaced or rewritten midway ends the stream: no byte of the new file follows the old
//! one's. Real binary, real sockets.
#![cfg(unix)]

mod util;

use std::time::Duration;

use util::{Lameduck, TempDir, get, request};

/// Bytes that differ from position to position, so a wrong offset shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// The site every case below is served from, and a directory outside it.
fn site(name: &str) -> (TempDir, TempDir) {
    let site = TempDir::new(name);
    let outside = TempDir::new(&format!("{name}-outside"));
    outside.write("secret.txt", b"outside the root\n");
    site.write("small.txt", b"small file\n");
    site.write("mid.bin", &pattern(64 * 1024));
    site.write("large.bin", &pattern(300 * 1024 + 7));
    site.write("page.html", b"<p>plain</p>\n");
    site.write("page.html.gz", b"pretend gzip bytes");
    site.write(".env", b"SECRET=1\n");
    site.write("dir/index.html", b"index\n");
    site.write("dir/.hidden/x.txt", b"hidden\n");
    std::os::unix::fs::symlink(
        site.path().join("small.txt"),
        site.path().join("link-inside.txt"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret.txt"),
        site.path().join("link-out.txt"),
    )
    .unwrap();
    std::os::unix::fs::symlink(outside.path(), site.path().join("dir-out")).unwrap();
    (site, outside)
}

/// `lameduck_file_lookups_total{at="worker"}` or `{at="pool"}`.
fn lookups(server: &Lameduck, at: &str) -> u64 {
    let text = server.admin_get("/metrics").text();
    let name = format!("lameduck_file_lookups_total{{at=\"{at}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&name))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing: {text}"))
}

fn check_rules(server: &Lameduck, site: &TempDir) {
    let addr = server.addr;
    // The worker path runs at all: a file too large for the cache, asked for three times,
    // is answered on the worker at least the last two (the first lookup of a name may find
    // the dentry cache cold and go to the pool).
    let before = lookups(server, "worker");
    for _ in 0..3 {
        assert!(get(addr, "/large.bin", &[]).body == pattern(300 * 1024 + 7));
    }
    let on_worker = lookups(server, "worker") - before;
    assert!(on_worker >= 2, "{on_worker} of 3 answered on the worker");
    // Files of every size, whole and in part.
    assert_eq!(get(addr, "/small.txt", &[]).text(), "small file\n");
    for (name, len) in [("mid.bin", 64 * 1024), ("large.bin", 300 * 1024 + 7)] {
        let resp = get(addr, &format!("/{name}"), &[]);
        assert_eq!(resp.status, 200, "{name}");
        assert!(resp.body == pattern(len), "{name}: the bytes differ");
        let resp = get(addr, &format!("/{name}"), &[("Range", "bytes=1000-1999")]);
        assert_eq!(resp.status, 206, "{name}");
        assert!(
            resp.body == pattern(len)[1000..2000],
            "{name}: the range differs"
        );
    }
    let head = request(addr, "HEAD", "/large.bin", &[]);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("307207"));
    assert!(head.body.is_empty());
    // A precompressed sibling, with the original's type.
    let resp = get(addr, "/page.html", &[("Accept-Encoding", "gzip")]);
    assert_eq!(resp.header("content-encoding"), Some("gzip"));
    assert_eq!(
        resp.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(resp.text(), "pretend gzip bytes");
    let resp = get(addr, "/page.html", &[]);
    assert_eq!(resp.header("content-encoding"), None);
    assert_eq!(resp.text(), "<p>plain</p>\n");
    // Absent, and a file used as a directory.
    assert_eq!(get(addr, "/nope.txt", &[]).status, 404);
    assert_eq!(get(addr, "/small.txt/more", &[]).status, 404);
    assert_eq!(get(addr, "/small.txt/", &[]).status, 404);
    // Hidden names.
    for _ in 0..3 {
        assert_eq!(get(addr, "/.env", &[]).status, 404);
        assert_eq!(get(addr, "/dir/.hidden/x.txt", &[]).status, 404);
    }
    // Links: inside the root followed, out of it never. Each asked for more than once: the
    // first lookup of a name may fall back to the blocking pool (the dentry cache has not
    // seen it yet) and leave it cached for the next, which the workers answer.
    for _ in 0..3 {
        assert_eq!(get(addr, "/link-inside.txt", &[]).text(), "small file\n");
        for path in ["/link-out.txt", "/dir-out/secret.txt"] {
            let resp = get(addr, path, &[]);
            assert_eq!(resp.status, 404, "{path}");
            assert!(!resp.text().contains("outside"), "{path}");
        }
    }
    // Directories: the redirect and the index page.
    let resp = get(addr, "/dir", &[]);
    assert_eq!(resp.status, 301);
    assert_eq!(resp.header("location"), Some("/dir/"));
    assert_eq!(get(addr, "/dir/", &[]).text(), "index\n");
    // Not a regular file: a FIFO is refused, and never opened for reading (that would
    // release a writer waiting in `open`, and answer it with a hang-up).
    let fifo = site.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    #[allow(unsafe_code)]
    // SAFETY: `c` is a NUL-terminated path, alive for the call.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
    assert_eq!(rc, 0, "mkfifo");
    let (opened_tx, opened) = std::sync::mpsc::channel();
    let writer_path = fifo.clone();
    std::thread::spawn(move || {
        // Blocks until some process opens the FIFO for reading.
        let writer = std::fs::OpenOptions::new().write(true).open(&writer_path);
        let _ = opened_tx.send(writer.is_ok());
    });
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..3 {
        assert_eq!(get(addr, "/fifo", &[]).status, 404);
    }
    assert!(
        opened.recv_timeout(Duration::from_millis(300)).is_err(),
        "the server opened the FIFO for reading"
    );
    // Release the writer: a reader of our own.
    let reader = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap()
    };
    assert_eq!(opened.recv_timeout(Duration::from_secs(10)), Ok(true));
    drop(reader);
    assert_eq!(get(addr, "/small.txt", &[]).status, 200);
    std::fs::remove_file(&fifo).unwrap();
}

#[test]
fn with_the_cache_off_files_answered_on_the_workers_keep_every_rule() {
    let (site, _outside) = site("worker-path-uncached");
    let server = Lameduck::serve(&[site.arg(), "--cache-size", "0"], true);
    check_rules(&server, &site);
    // Always fresh without a cache: a rewrite and a rename are served at once.
    site.write("large.bin", b"rewritten\n");
    assert_eq!(get(server.addr, "/large.bin", &[]).text(), "rewritten\n");
    let tmp = site.write("new.tmp", b"renamed\n");
    std::fs::rename(tmp, site.path().join("small.txt")).unwrap();
    assert_eq!(get(server.addr, "/small.txt", &[]).text(), "renamed\n");
    std::fs::remove_file(site.path().join("small.txt")).unwrap();
    assert_eq!(get(server.addr, "/small.txt", &[]).status, 404);
}

#[test]
fn with_the_cache_on_the_same_rules_hold() {
    let (site, _outside) = site("worker-path-cached");
    let server = Lameduck::serve(&[site.arg()], true);
    check_rules(&server, &site);
}

/// One HTTP/2 download of `path` whose client window starts at 16 KiB: the server sends the
/// body's first chunks and waits. `change` runs then; the window is opened, and the rest is
/// read. Returns the bytes that came and whether the stream ended cleanly.
fn h2_download_changed_midway(
    addr: std::net::SocketAddr,
    path: &str,
    change: impl FnOnce(),
) -> (Vec<u8>, bool) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (client, connection) = h2::client::Builder::new()
            .initial_window_size(16 * 1024)
            .handshake::<_, bytes::Bytes>(tcp)
            .await
            .expect("h2 handshake");
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut client = client.ready().await.expect("ready");
        let req = http::Request::get(format!("http://{addr}{path}"))
            .body(())
            .unwrap();
        let (response, _) = client.send_request(req, true).expect("send");
        let resp = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .expect("response in time")
            .expect("response");
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut got = Vec::new();
        // The first window's worth, read without giving capacity back: the server stops.
        while got.len() < 16 * 1024 {
            match tokio::time::timeout(Duration::from_secs(10), body.data()).await {
                Ok(Some(Ok(data))) => got.extend_from_slice(&data),
                other => panic!("the first 16 KiB did not come: {other:?}"),
            }
        }
        change();
        let _ = body.flow_control().release_capacity(got.len());
        let clean = loop {
            match tokio::time::timeout(Duration::from_secs(10), body.data()).await {
                Ok(Some(Ok(data))) => {
                    let _ = body.flow_control().release_capacity(data.len());
                    got.extend_from_slice(&data);
                }
                Ok(Some(Err(_))) => break false,
                Ok(None) => break true,
                Err(_) => panic!("the download stalled after the window was opened"),
            }
        };
        driver.abort();
        (got, clean)
    })
}

#[test]
fn an_http2_download_never_mixes_bytes_from_a_file_replaced_or_rewritten_midway() {
    let dir = TempDir::new("h2-reopen");
    let old = pattern(1 << 20);
    let new: Vec<u8> = old.iter().map(|b| b.wrapping_add(1)).collect();
    dir.write("big.bin", &old);
    let server = Lameduck::serve(&[dir.arg()], false);
    let addr = server.addr;

    // Unchanged: every byte, in order (each chunk reopens the file).
    let (got, clean) = h2_download_changed_midway(addr, "/big.bin", || {});
    assert!(clean, "an unchanged download ends cleanly");
    assert!(
        got == old,
        "{} bytes, not the file's {}",
        got.len(),
        old.len()
    );

    let check = |what: &str, got: &[u8], clean: bool| {
        assert!(
            !clean,
            "{what}: the stream must not end as if the file were whole"
        );
        assert!(got.len() < old.len(), "{what}: {} bytes came", got.len());
        assert!(
            got == &old[..got.len()],
            "{what}: bytes of the new file were sent after the old one's"
        );
    };

    // Replaced by rename: another inode, and the download must not go on with it.
    let path = dir.path().join("big.bin");
    let (got, clean) = h2_download_changed_midway(addr, "/big.bin", || {
        let tmp = dir.write("big.bin.tmp", &new);
        std::fs::rename(&tmp, &path).unwrap();
    });
    check("replaced", &got, clean);

    // Rewritten in place, the same length: the same inode, a new modification time.
    dir.write("big.bin", &old);
    let (got, clean) = h2_download_changed_midway(addr, "/big.bin", || {
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&path, &new).unwrap();
    });
    check("rewritten", &got, clean);

    // And the new file is what the next download gets.
    let (got, clean) = h2_download_changed_midway(addr, "/big.bin", || {});
    assert!(
        clean && got == new,
        "the next download is the new file whole"
    );
}
