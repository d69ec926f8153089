//! The small-file cache of `lameduck serve` stays right when the disk changes: a file
//! rewritten, replaced by rename, deleted, a directory swapped for a symbolic link leading out
//! of the root. The promise: a change is served within 200 ms. Checked by changing files in a
//! loop while requesting them, with the real binary.
#![cfg(unix)]

mod util;

use std::time::{Duration, Instant};

use util::{Lameduck, TempDir, get};

/// The freshness bound the server promises, plus room for a slow machine to answer.
const FRESH: Duration = Duration::from_millis(200 + 100);

#[test]
fn changes_on_disk_are_served_within_the_freshness_bound() {
    let site = TempDir::new("cache-fresh");
    let outside = TempDir::new("cache-outside");
    outside.write("secret.txt", b"outside the root\n");
    site.write("page.txt", b"version 0\n");
    site.write("dir/inner.txt", b"inner 0\n");
    let server = Lameduck::serve(&[site.arg()], true);
    let addr = server.addr;
    // Hot: many requests, answered from memory.
    for _ in 0..50 {
        assert_eq!(get(addr, "/page.txt", &[]).text(), "version 0\n");
    }
    assert!(server.metric("lameduck_cache_hits_total") >= 40);
    let mut worst = Duration::ZERO;
    for i in 1..=10 {
        // Rewritten in place (the same length, so only the bytes and the time change).
        let body = format!("version {i}\n");
        std::fs::write(site.path().join("page.txt"), &body).unwrap();
        let changed = Instant::now();
        // Requests keep the entry hot meanwhile; once the bound has passed, the new bytes.
        while changed.elapsed() < FRESH {
            let _ = get(addr, "/page.txt", &[]);
        }
        assert_eq!(get(addr, "/page.txt", &[]).text(), body, "rewrite {i}");
        // Replaced by rename.
        let body = format!("renamed {i}\n");
        let tmp = site.path().join("page.tmp");
        std::fs::write(&tmp, &body).unwrap();
        std::fs::rename(&tmp, site.path().join("page.txt")).unwrap();
        let changed = Instant::now();
        let mut seen = None;
        while changed.elapsed() < FRESH * 2 {
            if get(addr, "/page.txt", &[]).text() == body {
                seen.get_or_insert(changed.elapsed());
            }
        }
        let took = seen.unwrap_or_else(|| panic!("rename {i} never served"));
        worst = worst.max(took);
        assert!(took <= FRESH, "rename {i} served after {took:?}");
    }
    // Deleted: 404 within the bound.
    assert_eq!(get(addr, "/dir/inner.txt", &[]).status, 200);
    std::fs::remove_file(site.path().join("page.txt")).unwrap();
    std::thread::sleep(FRESH);
    assert_eq!(get(addr, "/page.txt", &[]).status, 404);
    // A directory swapped for a symbolic link that leads out of the root: never the outside
    // file, and the old inner file is gone within the bound.
    std::fs::write(outside.path().join("inner.txt"), b"outside the root\n").unwrap();
    std::fs::rename(site.path().join("dir"), site.path().join("dir.old")).unwrap();
    std::os::unix::fs::symlink(outside.path(), site.path().join("dir")).unwrap();
    std::thread::sleep(FRESH);
    for _ in 0..20 {
        let resp = get(addr, "/dir/inner.txt", &[]);
        assert_eq!(resp.status, 404);
        assert!(!resp.text().contains("outside"));
    }
    println!("worst time to serve a renamed file: {worst:?} (bound {FRESH:?})");
}

#[test]
fn cache_size_0_turns_it_off_and_the_cache_is_bounded() {
    let site = TempDir::new("cache-size");
    for i in 0..20 {
        site.write(&format!("f{i}.bin"), &vec![b'x'; 100 * 1024]);
    }
    // 1 MiB holds about 9 of the twenty 100 KiB files.
    let server = Lameduck::serve(&[site.arg(), "--cache-size", "1MiB"], true);
    for _ in 0..3 {
        for i in 0..20 {
            assert_eq!(
                get(server.addr, &format!("/f{i}.bin"), &[]).body.len(),
                100 * 1024
            );
        }
    }
    let used = server.metric("lameduck_cache_bytes");
    assert!(used <= 1 << 20, "the cache holds {used} bytes");
    assert!(server.metric("lameduck_cache_entries") >= 5);
    assert_eq!(server.metric("lameduck_cache_capacity_bytes"), 1 << 20);

    let off = Lameduck::serve(&[site.arg(), "--cache-size", "0"], true);
    assert_eq!(get(off.addr, "/f1.bin", &[]).status, 200);
    let text = off.admin_get("/metrics").text();
    assert!(!text.contains("lameduck_cache_hits_total"), "{text}");
}

/// The headers of `resp` but `Date`, sorted: what two answers to the same request share.
fn headers_but_date(resp: &util::Resp) -> Vec<(String, String)> {
    let mut headers: Vec<_> = resp
        .headers
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case("date"))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
        .collect();
    headers.sort();
    headers
}

/// One `GET path` on `conn` (keep-alive), read to the end of its body.
fn get_on(conn: &mut std::net::TcpStream, path: &str) -> util::Resp {
    get_on_with(conn, path, &[])
}

/// One `GET path` with `headers` on `conn` (keep-alive), read to the end of its body (none
/// for a 304).
fn get_on_with(conn: &mut std::net::TcpStream, path: &str, headers: &[(&str, &str)]) -> util::Resp {
    use std::io::{Read, Write};
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: t\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    conn.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let resp = util::parse(&buf[..end + 4], true);
            let len: usize = match resp.status {
                304 => 0,
                _ => resp.header("content-length").unwrap().parse().unwrap(),
            };
            if buf.len() >= end + 4 + len {
                return util::parse(&buf, false);
            }
        }
        let n = conn.read(&mut chunk).unwrap();
        assert!(n > 0, "the server closed a keep-alive connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn a_hot_file_asked_for_on_one_connection_is_refreshed_before_it_goes_stale() {
    let site = TempDir::new("cache-refresh");
    site.write("hot.txt", b"hot\n");
    let server = Lameduck::serve(&[site.arg()], true);
    // The first connection's first request fills the cache (the service answers it); after
    // it, both connections' requests go to the shortcut.
    let mut by_service = util::connect(server.addr);
    assert_eq!(get_on(&mut by_service, "/hot.txt").body, b"hot\n");
    let mut by_shortcut = util::connect(server.addr);
    let misses = server.metric("lameduck_cache_misses_total");
    let pool = server.metric("lameduck_file_lookups_total{at=\"pool\"}");
    // Seven times the validity: an entry left to go stale would be missed (and its request
    // would wait on the disk) about once per 200 ms; refreshed in the background from half
    // its validity on, it never is.
    let end = Instant::now() + Duration::from_millis(1_500);
    let mut asked = 0;
    while Instant::now() < end {
        for conn in [&mut by_service, &mut by_shortcut] {
            let resp = get_on(conn, "/hot.txt");
            assert_eq!((resp.status, resp.body.as_slice()), (200, &b"hot\n"[..]));
            asked += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let missed = server.metric("lameduck_cache_misses_total") - misses;
    let waited = server.metric("lameduck_file_lookups_total{at=\"pool\"}") - pool;
    // Room for one refresh that a loaded machine ran late.
    assert!(
        missed <= 1 && waited <= 1,
        "{asked} requests: {missed} cache misses, {waited} waited on the blocking pool"
    );
    // And a change is still seen within the bound: the refreshes read the disk.
    site.write("hot.txt", b"new\n");
    let changed = Instant::now();
    while get_on(&mut by_shortcut, "/hot.txt").body != b"new\n" {
        assert!(
            changed.elapsed() < FRESH,
            "the change was not served in time"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Requests the shortcut declines (a file not cached yet, one too large to cache, a range, a
/// missing file) are the service's, and on the same connection the next plain request of a
/// cached file is the shortcut's again.
#[test]
fn a_connection_comes_back_to_the_shortcut_after_a_request_it_declines() {
    let site = TempDir::new("cache-back");
    site.write("small.txt", b"a small file\n");
    let big: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
    site.write("big.bin", &big);
    let server = Lameduck::serve(&[site.arg()], true);
    let shortcut = || server.metric("lameduck_cache_shortcut_total");
    let mut conn = util::connect(server.addr);
    // Not cached yet: the service's, and it caches the file.
    let before = shortcut();
    assert_eq!(get_on(&mut conn, "/small.txt").body, b"a small file\n");
    assert_eq!(shortcut(), before, "a file not cached yet is the service's");
    let back_to_the_shortcut = |conn: &mut std::net::TcpStream, after: &str| {
        // An entry a slow machine let go stale is declined too: ask again, on this connection.
        for _ in 0..20 {
            let before = shortcut();
            let resp = get_on(conn, "/small.txt");
            assert_eq!((resp.status, &resp.body[..]), (200, &b"a small file\n"[..]));
            if shortcut() == before + 1 {
                return;
            }
        }
        panic!("after {after}, the shortcut never answered on the same connection");
    };
    back_to_the_shortcut(&mut conn, "a file not cached yet");
    let before = shortcut();
    let resp = get_on(&mut conn, "/big.bin");
    assert_eq!(resp.status, 200);
    assert!(resp.body == big, "big.bin: {} bytes", resp.body.len());
    assert_eq!(
        shortcut(),
        before,
        "a file too large to cache is the service's"
    );
    back_to_the_shortcut(&mut conn, "a file too large to cache");
    let before = shortcut();
    let part = get_on_with(&mut conn, "/small.txt", &[("Range", "bytes=2-6")]);
    assert_eq!((part.status, &part.body[..]), (206, &b"small"[..]));
    assert_eq!(shortcut(), before, "a range is the service's");
    back_to_the_shortcut(&mut conn, "a range");
    assert_eq!(get_on(&mut conn, "/missing.txt").status, 404);
    back_to_the_shortcut(&mut conn, "a missing file");
}

#[test]
fn a_cached_file_is_answered_alike_by_the_shortcut_and_by_the_service() {
    let site = TempDir::new("cache-shortcut");
    site.write("page.html", b"<p>a page</p>\n");
    site.write("style.css", b"p { color: red }\n");
    site.write(
        "style.css.gz",
        b"not really gzip, but what the sibling holds\n",
    );
    let server = Lameduck::serve(&[site.arg()], true);
    let addr = server.addr;
    // The first request reads the disk and fills the cache; the second is a plain GET of a
    // fresh entry (the shortcut's); the third is a revalidation with an ETag that does not
    // match, a 200 from the same entry.
    let from_disk = get(addr, "/page.html", &[]);
    let hits = server.metric("lameduck_cache_hits_total");
    let misses = server.metric("lameduck_cache_misses_total");
    let answered = server.metric("lameduck_requests_total{class=\"2xx\"}");
    let short = get(addr, "/page.html", &[]);
    assert_eq!(
        server.metric("lameduck_cache_hits_total"),
        hits + 1,
        "a shortcut answer counts one hit"
    );
    assert_eq!(
        server.metric("lameduck_requests_total{class=\"2xx\"}"),
        answered + 1,
        "a shortcut answer is counted as a response"
    );
    let conditional = get(addr, "/page.html", &[("If-None-Match", "\"another\"")]);
    assert_eq!(server.metric("lameduck_cache_hits_total"), hits + 2);
    assert_eq!(server.metric("lameduck_cache_misses_total"), misses);
    for resp in [&from_disk, &short, &conditional] {
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, b"<p>a page</p>\n");
        assert!(resp.header("date").is_some());
    }
    assert_eq!(headers_but_date(&short), headers_but_date(&from_disk));
    assert_eq!(headers_but_date(&short), headers_but_date(&conditional));
    // HEAD: the same headers, no body.
    let head = util::request(addr, "HEAD", "/page.html", &[]);
    assert_eq!(headers_but_date(&head), headers_but_date(&short));
    assert!(head.body.is_empty());
    // The ETag still validates: a matching If-None-Match is 304.
    let etag = short.header("etag").expect("an etag").to_owned();
    assert_eq!(
        get(addr, "/page.html", &[("If-None-Match", &etag)]).status,
        304
    );
    // A file with a precompressed sibling: the file itself without Accept-Encoding, the
    // sibling when it is accepted.
    for _ in 0..2 {
        let plain = get(addr, "/style.css", &[]);
        assert_eq!(plain.body, b"p { color: red }\n");
        assert_eq!(plain.header("content-encoding"), None);
        assert_eq!(plain.header("vary"), Some("accept-encoding"));
        let gzip = get(addr, "/style.css", &[("Accept-Encoding", "gzip")]);
        assert_eq!(gzip.body, b"not really gzip, but what the sibling holds\n");
        assert_eq!(gzip.header("content-encoding"), Some("gzip"));
    }
    // A range of a cached file: the service's 206.
    let part = get(addr, "/page.html", &[("Range", "bytes=0-2")]);
    assert_eq!((part.status, &part.body[..]), (206, &b"<p>"[..]));
}

/// `GET path` with `headers` until the shortcut answers it (an entry a slow machine let go
/// stale is declined, and the service answers): that answer.
fn by_shortcut(
    server: &Lameduck,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> util::Resp {
    for _ in 0..20 {
        let before = server.metric("lameduck_cache_shortcut_total");
        let resp = util::request(server.addr, method, path, headers);
        if server.metric("lameduck_cache_shortcut_total") == before + 1 {
            return resp;
        }
    }
    panic!("the shortcut never answered {method} {path} {headers:?}");
}

#[test]
fn a_revalidation_is_answered_by_the_shortcut_as_the_service_answers_it() {
    let site = TempDir::new("cache-revalidate");
    site.write("page.html", b"<p>a page</p>\n");
    // A file with a precompressed sibling: the shortcut answers for the file itself, or for
    // the sibling when Accept-Encoding takes it, with its Vary.
    site.write("style.css", b"p { color: red }\n");
    site.write("style.css.gz", b"what the sibling holds\n");
    // Both siblings: brotli wins a tie.
    site.write("app.js", b"let a = 1;\n");
    site.write("app.js.gz", b"app.js as gzip\n");
    site.write("app.js.br", b"app.js as brotli\n");
    let server = Lameduck::serve(&[site.arg()], true);
    let gzip = [("Accept-Encoding", "gzip")];
    let br = [("Accept-Encoding", "br")];
    let br_first = [("Accept-Encoding", "br, gzip;q=0.5")];
    let gzip_first = [("Accept-Encoding", "gzip;q=1, br;q=0.5")];
    let browser = [("Accept-Encoding", "gzip, deflate, br")];
    let any = [("Accept-Encoding", "*")];
    let no_identity = [("Accept-Encoding", "identity;q=0")];
    let identity = [("Accept-Encoding", "gzip;q=0, identity")];
    // (path, Accept-Encoding sent, the Content-Encoding of its 200)
    type Accept<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<&'a str>);
    let accepts: [Accept<'_>; 14] = [
        ("/page.html", &[], None),
        ("/page.html", &gzip, None),
        ("/style.css", &[], None),
        ("/style.css", &gzip, Some("gzip")),
        ("/style.css", &br_first, Some("gzip")),
        ("/style.css", &identity, None),
        // Only an encoding the file lacks: the file itself.
        ("/style.css", &br, None),
        ("/app.js", &browser, Some("br")),
        ("/app.js", &any, Some("br")),
        ("/app.js", &gzip_first, Some("gzip")),
        ("/app.js", &br_first, Some("br")),
        ("/app.js", &no_identity, None),
        ("/app.js", &identity, None),
        ("/app.js", &[], None),
    ];
    for (path, accept, encoding) in accepts {
        let first = get(server.addr, path, accept);
        assert_eq!(
            first.header("content-encoding"),
            encoding,
            "{path} {accept:?}"
        );
        let etag = first.header("etag").expect("an etag").to_owned();
        let modified = first.header("last-modified").expect("a date").to_owned();
        let weak = format!("W/{etag}");
        let listed = format!("\"other\", {etag}");
        let old = "Thu, 01 Jan 1998 00:00:00 GMT";
        // (request headers, the status both must answer)
        let cases: [(&[(&str, &str)], u16); 12] = [
            (&[("If-None-Match", &etag)], 304),
            (&[("If-None-Match", &weak)], 304),
            (&[("If-None-Match", &listed)], 304),
            (&[("If-None-Match", "*")], 304),
            (&[("If-None-Match", "\"other\"")], 200),
            // Two header lines are one list.
            (
                &[("If-None-Match", "\"other\""), ("If-None-Match", &etag)],
                304,
            ),
            (&[("If-Modified-Since", &modified)], 304),
            (&[("If-Modified-Since", old)], 200),
            // If-None-Match decides when both are sent (a browser's revalidation), even empty.
            (
                &[
                    ("If-None-Match", "\"other\""),
                    ("If-Modified-Since", &modified),
                ],
                200,
            ),
            (
                &[("If-None-Match", ""), ("If-Modified-Since", &modified)],
                200,
            ),
            (&[("If-None-Match", &etag), ("If-Modified-Since", old)], 304),
            (&[("If-Modified-Since", "not a date")], 200),
        ];
        for (headers, status) in cases {
            let headers: Vec<(&str, &str)> = accept.iter().chain(headers).copied().collect();
            let headers = headers.as_slice();
            for method in ["GET", "HEAD"] {
                let short = by_shortcut(&server, method, path, headers);
                // `If-Match: *` (the file exists, so it holds) sends the same request to the
                // service.
                let mut to_service = headers.to_vec();
                to_service.push(("If-Match", "*"));
                let shortcut_answers = server.metric("lameduck_cache_shortcut_total");
                let service = util::request(server.addr, method, path, &to_service);
                assert_eq!(
                    server.metric("lameduck_cache_shortcut_total"),
                    shortcut_answers,
                    "If-Match goes to the service"
                );
                let what = format!("{method} {path} {headers:?}");
                assert_eq!((short.status, service.status), (status, status), "{what}");
                assert_eq!(
                    headers_but_date(&short),
                    headers_but_date(&service),
                    "{what}"
                );
                assert_eq!(short.body, service.body, "{what}");
                assert_eq!(short.header("etag"), Some(etag.as_str()), "{what}");
                assert_eq!(short.header("vary"), Some("accept-encoding"), "{what}");
                if status == 200 {
                    assert_eq!(short.header("content-encoding"), encoding, "{what}");
                }
                if status == 304 {
                    assert!(short.body.is_empty(), "{what}");
                    assert_eq!(short.header("content-length"), None, "{what}");
                }
            }
        }
    }
    // A keep-alive connection: 304s (no body, no length) and 200s one after the other, all
    // the shortcut's (a connection whose first request found the entry stale, on a slow
    // machine, is the service's: another is tried).
    let etag = get(server.addr, "/page.html", &[])
        .header("etag")
        .unwrap()
        .to_owned();
    let mut on_the_shortcut = false;
    for _ in 0..20 {
        let before = server.metric("lameduck_cache_shortcut_total");
        let mut conn = util::connect(server.addr);
        for i in 0..6 {
            let conditional = if i % 2 == 0 {
                etag.as_str()
            } else {
                "\"other\""
            };
            let resp = get_on_with(&mut conn, "/page.html", &[("If-None-Match", conditional)]);
            let want: (u16, &[u8]) = if i % 2 == 0 {
                (304, b"")
            } else {
                (200, b"<p>a page</p>\n")
            };
            assert_eq!(
                (resp.status, resp.body.as_slice()),
                want,
                "request {i} on one connection"
            );
        }
        if server.metric("lameduck_cache_shortcut_total") == before + 6 {
            on_the_shortcut = true;
            break;
        }
    }
    assert!(
        on_the_shortcut,
        "no connection stayed on the shortcut for six requests"
    );
    // The file changes (replaced by rename, so no request reads it half written): the old
    // ETag no longer matches, within the freshness bound.
    let tmp = site.write("page.tmp", b"<p>a longer page</p>\n");
    std::fs::rename(&tmp, site.path().join("page.html")).unwrap();
    let changed = Instant::now();
    loop {
        let asked = changed.elapsed();
        let resp = get(server.addr, "/page.html", &[("If-None-Match", &etag)]);
        if resp.status == 200 {
            assert_eq!(resp.body, b"<p>a longer page</p>\n");
            break;
        }
        assert!(
            asked < FRESH,
            "a changed file still answered 304 {asked:?} after the change"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_sibling_too_large_to_cache_is_still_served_as_with_the_cache_off() {
    let site = TempDir::new("cache-large-sibling");
    site.write("big.css", b"p { margin: 0 }\n");
    // Past the cache's per-file limit (256 KiB).
    let large: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
    site.write("big.css.gz", &large);
    let cached = Lameduck::serve(&[site.arg()], true);
    let uncached = Lameduck::serve(&[site.arg(), "--cache-size", "0"], true);
    for round in 0..3 {
        for server in [&cached, &uncached] {
            let gz = get(server.addr, "/big.css", &[("Accept-Encoding", "gzip")]);
            assert_eq!(gz.header("content-encoding"), Some("gzip"), "round {round}");
            assert!(gz.body == large, "round {round}: not the sibling's bytes");
            let plain = get(server.addr, "/big.css", &[]);
            assert_eq!(plain.body, b"p { margin: 0 }\n", "round {round}");
        }
    }
    // Never cached, so never answered by the shortcut either.
    assert_eq!(cached.metric("lameduck_cache_entries"), 0);
}
