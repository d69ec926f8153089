//! HTTP corners of `lameduck serve`, checked against RFC 9110/9112 and what nginx does, over
//! real sockets with the real binary.

mod util;

use util::{Lameduck, TempDir, get, raw_request, request};

fn site(name: &str) -> (TempDir, Lameduck) {
    let dir = TempDir::new(&format!("rfc-{name}"));
    dir.write("index.html", b"<h1>home</h1>\n");
    dir.write("file.txt", b"0123456789");
    dir.write("empty.txt", b"");
    dir.write("sub/page.txt", b"in sub\n");
    dir.write("listed/a.txt", b"a\n");
    dir.write("app.js", b"console.log('plain');\n");
    dir.write("app.js.gz", b"gzip bytes");
    dir.write("app.js.br", b"brotli bytes");
    let server = Lameduck::serve(&[dir.arg(), "--list-dirs"], false);
    (dir, server)
}

#[test]
fn a_path_starting_with_two_slashes_never_redirects_to_another_host() {
    let (_dir, server) = site("t1");
    for path in ["//sub", "///sub", "//sub?x=1"] {
        let resp = get(server.addr, path, &[]);
        assert_eq!(resp.status, 301, "{path}");
        let location = resp.header("location").unwrap();
        assert!(
            location.starts_with('/') && !location.starts_with("//"),
            "{path} redirected to {location}"
        );
        assert!(location.starts_with("/sub/"), "{path} -> {location}");
    }
    assert_eq!(
        get(server.addr, "/sub", &[]).header("location"),
        Some("/sub/")
    );
}

#[test]
fn http11_without_host_or_with_two_is_400() {
    let (_dir, server) = site("t2");
    let none = raw_request(server.addr, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(none.status, 400);
    let two = raw_request(
        server.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(two.status, 400);
    // HTTP/1.0 has no Host requirement.
    let old = raw_request(server.addr, b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(old.status, 200);
    // And the server goes on.
    assert_eq!(get(server.addr, "/", &[]).status, 200);
}

#[test]
fn head_carries_the_headers_get_would() {
    let (_dir, server) = site("t3");
    for (path, headers) in [
        ("/file.txt", vec![]),
        ("/missing", vec![]),
        ("/sub", vec![]),
        ("/listed/", vec![]),
        ("/file.txt", vec![("If-Match", "\"nope\"")]),
        ("/file.txt", vec![("Range", "bytes=50-")]),
        ("/file.txt", vec![("Range", "bytes=2-4")]),
        ("/%2e%2e/x", vec![]),
    ] {
        let get_resp = request(server.addr, "GET", path, &headers);
        let head_resp = request(server.addr, "HEAD", path, &headers);
        assert_eq!(get_resp.status, head_resp.status, "{path}");
        for name in [
            "content-length",
            "content-type",
            "location",
            "etag",
            "last-modified",
            "content-range",
        ] {
            assert_eq!(
                get_resp.header(name),
                head_resp.header(name),
                "{name} of HEAD {path} {headers:?}"
            );
        }
        assert!(head_resp.body.is_empty());
        assert_eq!(
            get_resp.header("content-length"),
            Some(get_resp.body.len().to_string().as_str()),
            "GET {path} has a true Content-Length"
        );
    }
}

#[test]
fn failed_preconditions_are_412_and_future_dates_are_ignored() {
    let (_dir, server) = site("t4");
    let first = get(server.addr, "/file.txt", &[]);
    let etag = first.header("etag").unwrap().to_owned();
    let last_modified = first.header("last-modified").unwrap().to_owned();

    assert_eq!(
        get(server.addr, "/file.txt", &[("If-Match", &etag)]).status,
        200
    );
    assert_eq!(
        get(server.addr, "/file.txt", &[("If-Match", "*")]).status,
        200
    );
    let failed = get(server.addr, "/file.txt", &[("If-Match", "\"other\"")]);
    assert_eq!(failed.status, 412);
    // A weak tag never matches If-Match (strong comparison).
    let weak = format!("W/{etag}");
    assert_eq!(
        get(server.addr, "/file.txt", &[("If-Match", &weak)]).status,
        412
    );

    let long_ago = "Mon, 01 Jan 1990 00:00:00 GMT";
    assert_eq!(
        get(
            server.addr,
            "/file.txt",
            &[("If-Unmodified-Since", long_ago)]
        )
        .status,
        412
    );
    assert_eq!(
        get(
            server.addr,
            "/file.txt",
            &[("If-Unmodified-Since", &last_modified)]
        )
        .status,
        200
    );
    // If-Modified-Since in the future: ignored, the file is sent.
    let future = "Fri, 01 Jan 2100 00:00:00 GMT";
    assert_eq!(
        get(server.addr, "/file.txt", &[("If-Modified-Since", future)]).status,
        200
    );
    assert_eq!(
        get(
            server.addr,
            "/file.txt",
            &[("If-Modified-Since", &last_modified)]
        )
        .status,
        304
    );
}

#[test]
fn accept_encoding_weights_are_honoured() {
    let (_dir, server) = site("t5");
    let enc = |v: &str| {
        let resp = get(server.addr, "/app.js", &[("Accept-Encoding", v)]);
        assert_eq!(resp.status, 200);
        resp.header("content-encoding").map(str::to_owned)
    };
    assert_eq!(enc("br;q=0.1, gzip;q=1").as_deref(), Some("gzip"));
    assert_eq!(enc("gzip, br").as_deref(), Some("br"));
    assert_eq!(enc("GZIP;Q=1").as_deref(), Some("gzip"));
    assert_eq!(enc("br;Q=0, gzip;q=0.5").as_deref(), Some("gzip"));
    assert_eq!(enc("gzip;q=abc"), None);
    assert_eq!(enc("br;q=2"), None);
    assert_eq!(enc("identity"), None);
    let body = get(
        server.addr,
        "/app.js",
        &[("Accept-Encoding", "br;q=0.1, gzip;q=1")],
    )
    .body;
    assert_eq!(body, b"gzip bytes");
}

#[test]
fn invalid_ranges_are_ignored_and_units_are_case_insensitive() {
    let (_dir, server) = site("t6");
    let plus = get(server.addr, "/file.txt", &[("Range", "bytes=+1-2")]);
    assert_eq!(plus.status, 200);
    assert_eq!(plus.body, b"0123456789");
    let empty = get(server.addr, "/empty.txt", &[("Range", "bytes=-1")]);
    assert_eq!(empty.status, 200);
    assert!(empty.body.is_empty());
    let upper = get(server.addr, "/file.txt", &[("Range", "Bytes=1-2")]);
    assert_eq!(upper.status, 206);
    assert_eq!(upper.body, b"12");
    assert_eq!(upper.header("content-range"), Some("bytes 1-2/10"));
}

#[test]
fn a_file_has_one_url() {
    let (_dir, server) = site("t7");
    assert_eq!(get(server.addr, "/file.txt", &[]).status, 200);
    assert_eq!(get(server.addr, "/file.txt/", &[]).status, 404);
    assert_eq!(get(server.addr, "/sub/page.txt/", &[]).status, 404);
}
