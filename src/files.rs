//! Static files as an operator expects: content types, `HEAD`, `ETag` and `Last-Modified` with
//! conditional requests, byte ranges, `index.html`, optional directory listings, precompressed
//! `.br`/`.gz` siblings, and files streamed in chunks. Nothing outside the served directory is
//! ever read: paths with `.`/`..` segments, encoded slashes, backslashes or NUL are refused,
//! and symbolic links are followed only while they stay inside the directory.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use percent_encoding::percent_decode_str;
use std::io::{Read as _, Seek as _};

use crate::metrics::Metrics;

/// The page served when no directory is given.
const BUILTIN_PAGE: &str = include_str!("../assets/index.html");
/// Bytes read from a file per chunk.
const CHUNK: usize = 128 * 1024;
/// Files up to this size are read whole and sent from memory; larger ones are streamed.
const SMALL_FILE: u64 = 256 * 1024;

/// What `serve` serves: a directory, or the built-in page.
#[derive(Debug)]
pub(crate) struct Files {
    /// The canonical root directory, or `None` for the built-in page.
    root: Option<PathBuf>,
    list_dirs: bool,
    dotfiles: bool,
}

impl Files {
    /// Serves `dir` (which must exist and be a directory), or the built-in page.
    pub(crate) fn new(dir: Option<&Path>, list_dirs: bool, dotfiles: bool) -> io::Result<Files> {
        let root = match dir {
            Some(dir) => {
                let root = std::fs::canonicalize(dir)?;
                if !std::fs::metadata(&root)?.is_dir() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotADirectory,
                        "not a directory",
                    ));
                }
                Some(root)
            }
            None => None,
        };
        Ok(Files {
            root,
            list_dirs,
            dotfiles,
        })
    }

    /// Answers one request.
    pub(crate) fn respond(&self, req: Parts) -> Response<Body> {
        if req.method != Method::GET && req.method != Method::HEAD {
            let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return resp;
        }
        let head = req.method == Method::HEAD;
        let mut resp = match &self.root {
            None => self.builtin(&req),
            // The file-system work of one request (resolving links, metadata, opening, reading
            // a small file) is a handful of system calls answered from the page cache in
            // microseconds, so it runs right here, as nginx does on its event loop. Sending it
            // to the blocking pool cost a thread hand-off per request and halved throughput.
            // Large files are read the same way, a chunk at a time as the client takes them.
            // The price: on a cold, slow disk a read holds up this worker thread.
            Some(_) => self.serve_dir(&req),
        };
        if head {
            *resp.body_mut() = Body::Empty;
        }
        resp
    }

    fn builtin(&self, req: &Parts) -> Response<Body> {
        match req.uri.path() {
            "/" | "/index.html" => {
                let mut resp =
                    Response::new(Body::Full(Bytes::from_static(BUILTIN_PAGE.as_bytes())));
                let h = resp.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                h.insert(
                    header::CONTENT_LENGTH,
                    HeaderValue::from(BUILTIN_PAGE.len()),
                );
                resp
            }
            _ => not_found(),
        }
    }

    /// Synchronous file-system work; see `respond`.
    fn serve_dir(&self, req: &Parts) -> Response<Body> {
        let Some(root) = self.root.as_deref() else {
            return not_found();
        };
        let uri_path = req.uri.path();
        let relative = match self.relative_path(uri_path) {
            Ok(p) => p,
            Err(status) => return text(status, status.canonical_reason().unwrap_or("refused")),
        };
        let Some((path, meta)) = self.inside(root, &root.join(&relative)) else {
            return not_found();
        };
        if meta.is_dir() {
            if !uri_path.ends_with('/') {
                // Relative links in the directory's page need the trailing slash.
                let mut location = format!("{uri_path}/");
                if let Some(q) = req.uri.query() {
                    let _ = write!(location, "?{q}");
                }
                let mut resp = text(StatusCode::MOVED_PERMANENTLY, "moved\n");
                if let Ok(v) = HeaderValue::from_str(&location) {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                return resp;
            }
            if let Some((index, meta)) = self.inside(root, &path.join("index.html")) {
                if meta.is_file() {
                    return self.file(root, &index, meta, &req.headers);
                }
            }
            if self.list_dirs {
                return self.listing(&path, uri_path);
            }
            return not_found();
        }
        if !meta.is_file() {
            return not_found();
        }
        self.file(root, &path, meta, &req.headers)
    }

    /// The request path as a relative file path, or why it is refused.
    fn relative_path(&self, uri_path: &str) -> Result<PathBuf, StatusCode> {
        let mut out = PathBuf::new();
        for raw in uri_path.split('/') {
            if raw.is_empty() {
                continue;
            }
            let decoded = percent_decode_str(raw)
                .decode_utf8()
                .map_err(|_| StatusCode::BAD_REQUEST)?;
            // Decoded once, never twice: "%252e" is the literal name "%2e", not "." .
            if decoded.contains(['/', '\\', '\0']) || decoded == "." || decoded == ".." {
                return Err(StatusCode::BAD_REQUEST);
            }
            if decoded.starts_with('.') && !self.dotfiles {
                return Err(StatusCode::NOT_FOUND);
            }
            // On Windows a segment such as "C:" would make the join absolute.
            if Path::new(decoded.as_ref())
                .components()
                .any(|c| !matches!(c, Component::Normal(_)))
            {
                return Err(StatusCode::BAD_REQUEST);
            }
            out.push(decoded.as_ref());
        }
        Ok(out)
    }

    /// `path` (under `root`) and its metadata, with every symbolic link resolved, if that
    /// stays inside `root` and, unless dotfiles are served, passes through no hidden name.
    ///
    /// The usual case, no link on the way, costs one `lstat` per component below the root
    /// (the last one doubles as the metadata); only a path with a link in it is resolved
    /// whole with `canonicalize` and checked against the root.
    fn inside(&self, root: &Path, path: &Path) -> Option<(PathBuf, std::fs::Metadata)> {
        let rel = path.strip_prefix(root).ok()?;
        let mut current = root.to_path_buf();
        let mut meta = None;
        for component in rel.components() {
            current.push(component);
            let m = std::fs::symlink_metadata(&current).ok()?;
            if m.file_type().is_symlink() {
                return self.inside_resolved(root, path);
            }
            meta = Some(m);
        }
        let meta = match meta {
            Some(m) => m,
            None => std::fs::metadata(root).ok()?,
        };
        Some((current, meta))
    }

    /// The slow path of [`inside`](Self::inside), for paths with symbolic links in them.
    fn inside_resolved(&self, root: &Path, path: &Path) -> Option<(PathBuf, std::fs::Metadata)> {
        let real = std::fs::canonicalize(path).ok()?;
        let rest = real.strip_prefix(root).ok()?;
        if !self.dotfiles
            && rest
                .components()
                .any(|c| matches!(c, Component::Normal(n) if n.to_string_lossy().starts_with('.')))
        {
            return None;
        }
        let meta = std::fs::metadata(&real).ok()?;
        Some((real, meta))
    }

    fn file(
        &self,
        root: &Path,
        path: &Path,
        meta: std::fs::Metadata,
        headers: &HeaderMap,
    ) -> Response<Body> {
        let content_type = content_type(path);
        // A precompressed sibling, if the client takes it and it exists inside the root.
        let mut chosen = (path.to_path_buf(), meta, None);
        for (encoding, ext) in [("br", "br"), ("gzip", "gz")] {
            if !accepts(headers, encoding) {
                continue;
            }
            let mut sibling = path.as_os_str().to_owned();
            sibling.push(".");
            sibling.push(ext);
            if let Some((sibling, m)) = self.inside(root, Path::new(&sibling)) {
                if m.is_file() {
                    chosen = (sibling, m, Some(encoding));
                    break;
                }
            }
        }
        let (path, meta, encoding) = chosen;
        let len = meta.len();
        let modified = meta.modified().ok();
        let etag = etag(len, modified, encoding);
        let last_modified = modified.map(httpdate::fmt_http_date);

        let mut base = HeaderMap::new();
        base.insert(
            header::ETAG,
            HeaderValue::from_str(&etag).expect("an etag is ASCII"),
        );
        if let Some(lm) = &last_modified {
            base.insert(
                header::LAST_MODIFIED,
                HeaderValue::from_str(lm).expect("an HTTP date is ASCII"),
            );
        }
        base.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        base.insert(header::VARY, HeaderValue::from_static("accept-encoding"));

        if not_modified(headers, &etag, modified) {
            let mut resp = Response::new(Body::Empty);
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            *resp.headers_mut() = base;
            return resp;
        }

        let range = match range_wanted(headers, &etag, last_modified.as_deref()) {
            None => None,
            Some(spec) => match parse_range(spec, len) {
                RangeSpec::Whole => None,
                RangeSpec::Part(start, end) => Some((start, end)),
                RangeSpec::Unsatisfiable => {
                    let mut resp =
                        text(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
                    resp.headers_mut().insert(
                        header::CONTENT_RANGE,
                        HeaderValue::from_str(&format!("bytes */{len}")).expect("ASCII"),
                    );
                    return resp;
                }
            },
        };
        let (start, end) = range.unwrap_or((0, len.saturating_sub(1)));
        let count = if len == 0 { 0 } else { end - start + 1 };

        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return text(StatusCode::FORBIDDEN, "forbidden\n");
            }
            Err(_) => return not_found(),
        };
        if start > 0 && file.seek(io::SeekFrom::Start(start)).is_err() {
            return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the file\n");
        }
        let body = if count <= SMALL_FILE {
            // Small: read it here, while on the blocking pool anyway.
            let mut buf = Vec::with_capacity(count as usize);
            if (&mut file).take(count).read_to_end(&mut buf).is_err() || buf.len() as u64 != count {
                return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the file\n");
            }
            Body::Full(Bytes::from(buf))
        } else {
            Body::File(FileStream {
                file,
                remaining: count,
            })
        };
        let mut resp = Response::new(body);
        *resp.headers_mut() = base;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, content_type);
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
        if let Some(encoding) = encoding {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
        }
        if range.is_some() {
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")).expect("ASCII"),
            );
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        }
        resp
    }

    fn listing(&self, dir: &Path, uri_path: &str) -> Response<Body> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return not_found();
        };
        let mut names = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && !self.dotfiles {
                continue;
            }
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            names.push(if is_dir { format!("{name}/") } else { name });
        }
        names.sort();
        let title = escape_html(uri_path);
        let mut page = format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>Index of {title}</title></head>\n<body>\n<h1>Index of {title}</h1>\n<ul>\n"
        );
        if uri_path != "/" {
            page.push_str("<li><a href=\"../\">../</a></li>\n");
        }
        for name in names {
            let href: String = percent_encoding::utf8_percent_encode(&name, PATH_SEGMENT).collect();
            let _ = writeln!(
                page,
                "<li><a href=\"{href}\">{}</a></li>",
                escape_html(&name)
            );
        }
        page.push_str("</ul>\n</body>\n</html>\n");
        let mut resp = Response::new(Body::Full(Bytes::from(page)));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        resp
    }
}

/// Characters escaped in a listing's links (a trailing `/` on directories is kept).
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn content_type(path: &Path) -> HeaderValue {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let value = if mime.type_() == mime_guess::mime::TEXT
        || mime == mime_guess::mime::APPLICATION_JAVASCRIPT
        || mime == mime_guess::mime::APPLICATION_JSON
    {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_string()
    };
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("application/octet-stream"))
}

/// Whether `Accept-Encoding` allows `coding` (with a non-zero quality).
fn accepts(headers: &HeaderMap, coding: &str) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            let zero = parts.any(|p| {
                p.strip_prefix("q=")
                    .is_some_and(|q| q.parse::<f32>().is_ok_and(|q| q == 0.0))
            });
            name.eq_ignore_ascii_case(coding) && !zero
        })
}

fn etag(len: u64, modified: Option<SystemTime>, encoding: Option<&str>) -> String {
    let nanos = modified
        .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    match encoding {
        Some(enc) => format!("\"{len:x}-{nanos:x}-{enc}\""),
        None => format!("\"{len:x}-{nanos:x}\""),
    }
}

/// `If-None-Match` (weak comparison) first; `If-Modified-Since` only without it.
fn not_modified(headers: &HeaderMap, etag: &str, modified: Option<SystemTime>) -> bool {
    if let Some(inm) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        return inm
            .split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag);
    }
    match (
        headers
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok()),
        modified,
    ) {
        (Some(since), Some(modified)) => {
            let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            secs(modified) <= secs(since)
        }
        _ => false,
    }
}

/// The `Range` header to honour, unless `If-Range` says the representation changed.
fn range_wanted<'a>(
    headers: &'a HeaderMap,
    etag: &str,
    last_modified: Option<&str>,
) -> Option<&'a str> {
    let range = headers.get(header::RANGE)?.to_str().ok()?;
    if let Some(if_range) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        let still = if_range == etag || Some(if_range) == last_modified;
        if !still {
            return None;
        }
    }
    Some(range)
}

#[derive(Debug, PartialEq, Eq)]
enum RangeSpec {
    /// Serve the whole file (no usable range: malformed, or several ranges).
    Whole,
    /// Inclusive byte positions.
    Part(u64, u64),
    Unsatisfiable,
}

fn parse_range(spec: &str, len: u64) -> RangeSpec {
    let Some(set) = spec.trim().strip_prefix("bytes=") else {
        return RangeSpec::Whole;
    };
    if set.contains(',') {
        return RangeSpec::Whole;
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return RangeSpec::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let parsed = match (first.is_empty(), last.is_empty()) {
        // "-N": the last N bytes.
        (true, false) => match last.parse::<u64>() {
            Ok(0) => return RangeSpec::Unsatisfiable,
            Ok(n) if len == 0 => {
                return if n > 0 {
                    RangeSpec::Unsatisfiable
                } else {
                    RangeSpec::Whole
                };
            }
            Ok(n) => (len.saturating_sub(n), len - 1),
            Err(_) => return RangeSpec::Whole,
        },
        // "N-": from N to the end.
        (false, true) => match first.parse::<u64>() {
            Ok(start) if start < len => (start, len - 1),
            Ok(_) => return RangeSpec::Unsatisfiable,
            Err(_) => return RangeSpec::Whole,
        },
        (false, false) => match (first.parse::<u64>(), last.parse::<u64>()) {
            (Ok(start), Ok(end)) if start <= end => {
                if start >= len {
                    return RangeSpec::Unsatisfiable;
                }
                (start, end.min(len - 1))
            }
            _ => return RangeSpec::Whole,
        },
        (true, true) => return RangeSpec::Whole,
    };
    RangeSpec::Part(parsed.0, parsed.1)
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Body::Full(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn not_found() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "not found\n")
}

/// A response body: nothing, bytes in memory, or a file streamed in chunks.
#[derive(Debug)]
pub(crate) enum Body {
    Empty,
    Full(Bytes),
    File(FileStream),
}

/// The bytes of a file, read `CHUNK` at a time.
#[derive(Debug)]
pub(crate) struct FileStream {
    file: std::fs::File,
    remaining: u64,
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(bytes) => {
                if bytes.is_empty() {
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Ok(Frame::data(std::mem::take(bytes)))))
            }
            Body::File(f) => {
                if f.remaining == 0 {
                    return Poll::Ready(None);
                }
                let want = f.remaining.min(CHUNK as u64) as usize;
                // Read right here, like the lookups in `respond`: a chunk from the page cache
                // is a memory copy of microseconds, where a trip to the blocking pool per
                // chunk (`tokio::fs`) halved the transfer rate.
                let mut chunk = BytesMut::zeroed(want);
                let n = loop {
                    match f.file.read(&mut chunk) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        other => break other?,
                    }
                };
                if n == 0 {
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shrank while being sent",
                    ))));
                }
                chunk.truncate(n);
                f.remaining -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(chunk.freeze()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(b) => b.is_empty(),
            Body::File(f) => f.remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(b) => SizeHint::with_exact(b.len() as u64),
            Body::File(f) => SizeHint::with_exact(f.remaining),
        }
    }
}

/// The static-file service handed to `lameduck::http::serve`; counts responses by class.
#[derive(Clone, Debug)]
pub(crate) struct StaticService {
    pub(crate) files: Arc<Files>,
    pub(crate) metrics: Arc<Metrics>,
}

impl<B: Send + 'static> tower_service::Service<Request<B>> for StaticService {
    type Response = Response<Body>;
    type Error = Infallible;
    /// The answer is computed in `call` (see `Files::respond`), so the future is ready at
    /// once: no allocation per request.
    type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Only the head is needed; the body (never read for GET and HEAD) is dropped here.
        let (parts, _body) = req.into_parts();
        let resp = self.files.respond(parts);
        self.metrics.count_response(resp.status());
        std::future::ready(Ok(resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeSpec::Part(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), RangeSpec::Part(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), RangeSpec::Part(90, 99));
        assert_eq!(parse_range("bytes=-200", 100), RangeSpec::Part(0, 99));
        assert_eq!(parse_range("bytes=50-500", 100), RangeSpec::Part(50, 99));
        assert_eq!(parse_range("bytes=100-", 100), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=100-200", 100), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeSpec::Whole);
        assert_eq!(parse_range("bytes=9-0", 100), RangeSpec::Whole);
        assert_eq!(parse_range("items=0-1", 100), RangeSpec::Whole);
    }

    #[test]
    fn refuses_escaping_paths() {
        let f = Files {
            root: None,
            list_dirs: false,
            dotfiles: false,
        };
        for bad in [
            "/../x",
            "/a/../../x",
            "/%2e%2e/x",
            "/%2E%2E/x",
            "/a%2f..%2f..%2fx",
            "/a%5c..%5cx",
            "/a%00b",
            "/./x",
            "/%ff",
        ] {
            assert!(f.relative_path(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(f.relative_path("/.env"), Err(StatusCode::NOT_FOUND));
        assert_eq!(
            f.relative_path("/a//b/c.txt"),
            Ok(PathBuf::from("a/b/c.txt"))
        );
        assert_eq!(
            f.relative_path("/%252e%252e/x"),
            Ok(PathBuf::from("%2e%2e/x"))
        );
        assert_eq!(
            f.relative_path("/sp%20ace.txt"),
            Ok(PathBuf::from("sp ace.txt"))
        );
    }

    #[test]
    fn accept_encoding() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip, deflate, br;q=0"),
        );
        assert!(accepts(&h, "gzip"));
        assert!(!accepts(&h, "br"));
    }
}
