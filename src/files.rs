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

use crate::cache::{Entry, FileCache, Variant};
use crate::metrics::{FileError, Lookup, Metrics};

/// The page served when no directory is given.
const BUILTIN_PAGE: &str = include_str!("../assets/index.html");
/// Bytes read from a file per chunk.
const CHUNK: usize = 128 * 1024;
/// Files up to this size are read whole and sent from memory; larger ones are streamed.
const SMALL_FILE: u64 = 256 * 1024;
/// Files from this size on go out by `sendfile` where it is offered, even below
/// [`SMALL_FILE`]: about where `sendfile` starts to beat a read and a write (see `send`).
const SENDFILE_FROM: u64 = 48 * 1024;
/// On HTTP/2, the first chunk of a streamed file, and the largest file read whole: what a
/// stream stalled by its client's flow-control window holds.
const FIRST_CHUNK_H2: usize = 4 * 1024;

/// What `serve` serves: a directory, or the built-in page.
#[derive(Debug)]
pub(crate) struct Files {
    /// The canonical root directory, or `None` for the built-in page.
    root: Option<PathBuf>,
    list_dirs: bool,
    dotfiles: bool,
    metrics: Arc<Metrics>,
    /// Small files in memory; `None` with `--cache-size 0`.
    pub(crate) cache: Option<FileCache>,
    /// Whether files may be opened on the async workers (see `serve_nowait`): the root is
    /// on a local file system.
    nowait_open: bool,
}

impl Files {
    /// Serves `dir` (which must exist and be a directory), or the built-in page.
    pub(crate) fn new(
        dir: Option<&Path>,
        list_dirs: bool,
        dotfiles: bool,
        metrics: Arc<Metrics>,
        cache_size: usize,
    ) -> io::Result<Files> {
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
        // `RWF_NOWAIT` reads (see `read_nowait`) and `openat2` are there on Linux with glibc.
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        let nowait_open = root.as_deref().is_some_and(opens_without_waiting);
        #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
        let nowait_open = false;
        Ok(Files {
            root,
            list_dirs,
            dotfiles,
            metrics,
            cache: FileCache::new(cache_size),
            nowait_open,
        })
    }

    /// Answers one request, with whatever file-system work it takes (run it where blocking
    /// is allowed: see `StaticService`).
    pub(crate) fn respond(self: &Arc<Self>, req: Parts) -> Response<Body> {
        let resp = self.respond_with(&req, true);
        resp.expect("with the disk, every request has an answer")
    }

    /// Reads the file behind the URL path `path` into the cache again, as a request finding
    /// its entry stale would (the whole path walked and checked, the bytes read): run in
    /// the blocking pool, ahead of the entry's expiry (see `refresh_ahead`).
    fn refresh(&self, path: &str) {
        let Ok(uri) = http::Uri::try_from(path) else {
            return;
        };
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.uri = uri;
        // The response is nobody's: the cache entry it leaves is what was wanted.
        drop(self.serve_dir(&parts));
    }

    /// Answers one request if that needs no waiting on the disk: a fresh cache entry, the
    /// built-in page, a refused method, or a file whose path and bytes the kernel's caches
    /// hold (see [`serve_nowait`](Self::serve_nowait)). `None` when it does: then
    /// [`respond`](Self::respond), in the blocking pool.
    pub(crate) fn respond_without_waiting(self: &Arc<Self>, req: &Parts) -> Option<Response<Body>> {
        self.respond_with(req, false)
    }

    fn respond_with(self: &Arc<Self>, req: &Parts, disk: bool) -> Option<Response<Body>> {
        if req.method != Method::GET && req.method != Method::HEAD {
            let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return Some(resp);
        }
        let head = req.method == Method::HEAD;
        let mut resp = match &self.root {
            None => self.builtin(req),
            Some(_) => match self.cached(req) {
                Some(resp) => resp,
                None if !disk => {
                    let resp = self.serve_nowait(req)?;
                    self.metrics.count_lookup(Lookup::Worker);
                    resp
                }
                // The file-system work of one request: resolving links, metadata, opening,
                // reading a small file.
                None => {
                    self.metrics.count_lookup(Lookup::Pool);
                    self.serve_dir(req)
                }
            },
        };
        if head {
            // HEAD carries the headers GET would, Content-Length included (RFC 9110 9.3.2).
            let status = resp.status();
            if !resp.headers().contains_key(header::CONTENT_LENGTH)
                && status != StatusCode::NOT_MODIFIED
                && status != StatusCode::NO_CONTENT
                && !status.is_informational()
            {
                if let Some(n) = http_body::Body::size_hint(resp.body()).exact() {
                    resp.headers_mut()
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
                }
            }
            *resp.body_mut() = Body::Empty;
        }
        Some(resp)
    }

    /// The answer from a fresh cache entry, if there is one.
    fn cached(self: &Arc<Self>, req: &Parts) -> Option<Response<Body>> {
        let entry = self.cache.as_ref()?.get(req.uri.path())?;
        if entry.claim_refresh() {
            self.refresh_ahead(req.uri.path());
        }
        Some(respond_cached(&entry, &req.headers))
    }

    /// Refreshes the cache entry of the URL path `path` in the blocking pool, so a hot file
    /// never goes stale under its requests: a stale entry makes a request wait for the disk,
    /// and makes the shortcut decline it, which hands the rest of its connection to hyper
    /// (see [`FileShortcut`]). Without a runtime, nothing: the entry expires as usual.
    fn refresh_ahead(self: &Arc<Self>, path: &str) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let files = Arc::clone(self);
        let path = path.to_owned();
        drop(runtime.spawn_blocking(move || files.refresh(&path)));
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
        let (path, meta) = match self.inside(root, &root.join(&relative)) {
            Ok(Some(found)) => found,
            Ok(None) => return not_found(),
            Err(e) => return self.failure(&e, &relative),
        };
        let http2 = req.version == http::Version::HTTP_2;
        if meta.is_dir() {
            if !uri_path.ends_with('/') {
                // Relative links in the directory's page need the trailing slash. The
                // location is the path with its leading slashes folded into one: `//sub`
                // must not become `//sub/`, which a browser reads as another host.
                let mut location = format!("/{}/", uri_path.trim_start_matches(['/', '\\']));
                if let Some(q) = req.uri.query() {
                    let _ = write!(location, "?{q}");
                }
                let mut resp = text(StatusCode::MOVED_PERMANENTLY, "moved\n");
                if let Ok(v) = HeaderValue::from_str(&location) {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                return resp;
            }
            match self.inside(root, &path.join("index.html")) {
                Ok(Some((index, meta))) if meta.is_file() => {
                    return self.file(root, &index, meta, req, http2);
                }
                Ok(_) => {}
                Err(e) => return self.failure(&e, &relative),
            }
            if self.list_dirs {
                return self.listing(&path, uri_path);
            }
            return not_found();
        }
        // A file has one URL: `/file.txt/` is not a second one for it.
        if !meta.is_file() || uri_path.ends_with('/') {
            return not_found();
        }
        self.file(root, &path, meta, req, http2)
    }

    /// A file answered on an async worker, when nothing in it has to wait for the disk:
    /// the path resolved from the kernel's dentry cache alone (`openat2` with
    /// `RESOLVE_CACHED`), a small file's bytes from the page cache (`RWF_NOWAIT`), a large
    /// one's streamed as ever (each chunk from the page cache or the blocking pool). That is
    /// the hand-off to the blocking pool and back saved, two thread wake-ups per request.
    ///
    /// The rules are the blocking path's, kept by the kernel: `RESOLVE_NO_SYMLINKS` (the
    /// request path has no `..`, so without links nothing leads out of the root, nor to a
    /// hidden name). `None`, and the request goes to the blocking pool, for anything else:
    /// a link on the way, a name not in the dentry cache, a mount point crossed below the
    /// root, a directory (redirects, index pages, listings), a file the cache is to hold (it
    /// is filled there), a root not on a local file system (see `opens_without_waiting`), a
    /// kernel without `openat2`. A name the dentry cache knows to be absent is a `404` here.
    fn serve_nowait(&self, req: &Parts) -> Option<Response<Body>> {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            let root = self.root.as_deref()?;
            let uri_path = req.uri.path();
            if !self.nowait_open || uri_path.ends_with('/') {
                return None;
            }
            let relative = self.relative_path(uri_path).ok()?;
            let dir = open_root_cached(root).ok()?;
            // Checked again for every request: the root's path may have been mounted over.
            if !local_fs(&dir) {
                return None;
            }
            let absent =
                |e: &io::Error| matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR));
            let (file, meta) = match open_regular_cached(&dir, &relative) {
                Ok(Some(found)) => found,
                // A directory, a FIFO, a device: the blocking path decides.
                Ok(None) => return None,
                Err(e) if absent(&e) => return Some(not_found()),
                Err(_) => return None,
            };
            if self.cache.is_some() && meta.len() <= crate::cache::MAX_FILE {
                return None;
            }
            let path = root.join(&relative);
            let content_type = content_type(&path);
            let mut chosen = (file, path, meta, None);
            for (encoding, ext) in preferred_encodings(&req.headers) {
                let mut sibling = relative.as_os_str().to_owned();
                sibling.push(".");
                sibling.push(ext);
                let sibling = PathBuf::from(sibling);
                match open_regular_cached(&dir, &sibling) {
                    Ok(Some((f, m))) => {
                        chosen = (f, root.join(sibling), m, Some(encoding));
                        break;
                    }
                    // Not a regular file: the blocking path skips it too.
                    Ok(None) => {}
                    Err(e) if absent(&e) => {}
                    Err(_) => return None,
                }
            }
            let (file, path, meta, encoding) = chosen;
            let http2 = req.version == http::Version::HTTP_2;
            self.send(
                Some(file),
                path,
                &meta,
                content_type,
                encoding,
                req,
                http2,
                true,
            )
        }
        #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
        {
            let _ = req;
            None
        }
    }

    /// The answer when the file system fails: `404` when the file is not there, `403` when it
    /// may not be read, `503` with `Retry-After` when the process is out of descriptors or
    /// memory (a momentary state: a CDN must not cache a 404 for a file that exists), `500`
    /// for any other error. The last two are logged and counted.
    fn failure(&self, e: &io::Error, what: &Path) -> Response<Body> {
        match classify(e) {
            Failure::NotFound => not_found(),
            Failure::Forbidden => text(StatusCode::FORBIDDEN, "forbidden\n"),
            Failure::Unavailable => {
                tracing::warn!(path = %what.display(), error = %e, "cannot open a file: out of resources; answering 503");
                self.metrics.count_file_error(FileError::Unavailable);
                let mut resp = text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily unable to open the file\n",
                );
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                resp
            }
            Failure::Io => {
                tracing::error!(path = %what.display(), error = %e, "cannot read a file; answering 500");
                self.metrics.count_file_error(FileError::Io);
                text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the file\n")
            }
        }
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
    ///
    /// `Ok(None)` when the path does not exist or is not to be served; `Err` for a failure
    /// that says nothing about the file (out of descriptors or memory, an I/O error).
    fn inside(&self, root: &Path, path: &Path) -> io::Result<Option<(PathBuf, std::fs::Metadata)>> {
        let Ok(rel) = path.strip_prefix(root) else {
            return Ok(None);
        };
        let mut current = root.to_path_buf();
        let mut meta = None;
        for component in rel.components() {
            current.push(component);
            let m = match absent(std::fs::symlink_metadata(&current))? {
                Some(m) => m,
                None => return Ok(None),
            };
            if m.file_type().is_symlink() {
                return self.inside_resolved(root, path);
            }
            meta = Some(m);
        }
        let meta = match meta {
            Some(m) => m,
            None => std::fs::metadata(root)?,
        };
        Ok(Some((current, meta)))
    }

    /// The slow path of [`inside`](Self::inside), for paths with symbolic links in them.
    fn inside_resolved(
        &self,
        root: &Path,
        path: &Path,
    ) -> io::Result<Option<(PathBuf, std::fs::Metadata)>> {
        let Some(real) = absent(std::fs::canonicalize(path))? else {
            return Ok(None);
        };
        let Ok(rest) = real.strip_prefix(root) else {
            return Ok(None);
        };
        if !self.dotfiles
            && rest
                .components()
                .any(|c| matches!(c, Component::Normal(n) if n.to_string_lossy().starts_with('.')))
        {
            return Ok(None);
        }
        Ok(absent(std::fs::metadata(&real))?.map(|meta| (real, meta)))
    }

    fn file(
        &self,
        root: &Path,
        path: &Path,
        meta: std::fs::Metadata,
        req: &Parts,
        http2: bool,
    ) -> Response<Body> {
        let headers = &req.headers;
        let content_type = content_type(path);
        if let Some(cache) = &self.cache {
            if meta.len() <= crate::cache::MAX_FILE {
                match self.cache_entry(root, path, &meta, content_type.clone()) {
                    Ok(Some(entry)) => {
                        let entry = Arc::new(entry);
                        cache.insert(req.uri.path(), Arc::clone(&entry));
                        return respond_cached(&entry, headers);
                    }
                    // Served from the disk below.
                    Ok(None) => cache.remove(req.uri.path()),
                    Err(resp) => {
                        cache.remove(req.uri.path());
                        return *resp;
                    }
                }
            }
        }
        // A precompressed sibling, in the client's order of preference, if it exists inside
        // the root.
        let mut chosen = (path.to_path_buf(), meta, None);
        for (encoding, ext) in preferred_encodings(headers) {
            let mut sibling = path.as_os_str().to_owned();
            sibling.push(".");
            sibling.push(ext);
            match self.inside(root, Path::new(&sibling)) {
                Ok(Some((sibling, m))) if m.is_file() => {
                    chosen = (sibling, m, Some(encoding));
                    break;
                }
                Ok(_) => {}
                Err(e) => return self.failure(&e, path),
            }
        }
        let (path, meta, encoding) = chosen;
        self.send(None, path, &meta, content_type, encoding, req, http2, false)
            .expect("a blocking send always answers")
    }

    /// The response for the file at `path` (already `opened`, or opened here): the
    /// representation `encoding` of a file of type `content_type`. With `nowait` this runs
    /// on an async worker: a small file read whole must come from the page cache, or there
    /// is no answer (`None`) and the request goes to the blocking pool.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        opened: Option<std::fs::File>,
        path: PathBuf,
        meta: &std::fs::Metadata,
        content_type: HeaderValue,
        encoding: Option<&'static str>,
        req: &Parts,
        http2: bool,
        nowait: bool,
    ) -> Option<Response<Body>> {
        let headers = &req.headers;
        let len = meta.len();
        let modified = meta.modified().ok();
        let etag = etag(len, modified, encoding);
        let last_modified = modified.map(httpdate::fmt_http_date);
        let base = base_headers(&etag, last_modified.as_deref());
        let range = match conditional_range(
            headers,
            &etag,
            modified,
            last_modified.as_deref(),
            len,
            &base,
        ) {
            Ok(range) => range,
            Err(resp) => return Some(*resp),
        };
        let (start, end) = range.unwrap_or((0, len.saturating_sub(1)));
        let count = if len == 0 { 0 } else { end - start + 1 };

        // Opened here, before any header goes out, so that a failure still gets a status
        // that says what happened (503 when out of descriptors, not 404).
        let mut file = match opened.map_or_else(|| std::fs::File::open(&path), Ok) {
            Ok(f) => f,
            Err(e) => return Some(self.failure(&e, &path)),
        };
        // `sendfile` beats a read and a write from about 48 KiB on. With `--cache-size 0`,
        // keep-alive, requests/s as a fraction of nginx's in one interleaved run, read and
        // written / by `sendfile`: 16 KiB 0.76 / 0.69, 32 KiB 0.75 / 0.73, 48 KiB 0.78 / 0.81,
        // 64 KiB 0.76 / 0.93.
        #[cfg(target_os = "linux")]
        let by_sendfile =
            count >= SENDFILE_FROM && req.extensions.get::<lameduck::http::SendFile>().is_some();
        #[cfg(not(target_os = "linux"))]
        let by_sendfile = false;
        let body = if count <= SMALL_FILE
            && !by_sendfile
            && (!http2 || count <= FIRST_CHUNK_H2 as u64)
        {
            // Small: read it whole now (with `nowait`, only from the page cache).
            if nowait {
                match read_whole_nowait(&file, start, count as usize) {
                    Ok(Some(bytes)) => Body::Full(bytes),
                    Ok(None) => return None,
                    Err(e) => return Some(self.failure(&e, &path)),
                }
            } else {
                let mut buf = Vec::with_capacity(count as usize);
                if start > 0 {
                    if let Err(e) = file.seek(io::SeekFrom::Start(start)) {
                        return Some(self.failure(&e, &path));
                    }
                }
                match (&mut file).take(count).read_to_end(&mut buf) {
                    Ok(_) if buf.len() as u64 == count => {}
                    Ok(_) => {
                        return Some(self.failure(
                            &io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while read"),
                            &path,
                        ));
                    }
                    Err(e) => return Some(self.failure(&e, &path)),
                }
                Body::Full(Bytes::from(buf))
            }
        } else if http2 {
            // On HTTP/2 one connection carries up to 128 responses at once, each of which the
            // client may hold back with its flow-control window. So the body keeps no file
            // open between chunks (it reopens the same file, checked by identity, for each
            // one) and starts with a small chunk that grows as the client keeps up: a stalled
            // stream holds one small buffer and no descriptor.
            // Each reopen happens on the async worker only where it cannot wait: a file on a
            // local file system, its path in the dentry cache. Anywhere else (FUSE, NFS) an
            // `open` is a request to a daemon or a server, and it goes to the blocking pool
            // with the read.
            let on_worker = self.nowait_open && local_fs(&file);
            match FileIdentity::of(&file) {
                Ok(identity) => Body::File(FileStream::new(
                    Source::Reopen {
                        path,
                        identity: Arc::new(identity),
                        on_worker,
                    },
                    start,
                    count,
                    FIRST_CHUNK_H2,
                )),
                Err(e) => return Some(self.failure(&e, &path)),
            }
        } else {
            let file = Arc::new(file);
            // Plain HTTP/1 on Linux: the kernel sends the file from the page cache
            // (`sendfile`), with no copy through this process.
            #[cfg(target_os = "linux")]
            let sent = req.extensions.get::<lameduck::http::SendFile>().map(|sf| {
                let source = Source::SendFile {
                    file: Arc::clone(&file),
                    sf: sf.clone(),
                    ahead: None,
                };
                (source, lameduck::http::SENDFILE_MAX_CHUNK)
            });
            #[cfg(not(target_os = "linux"))]
            let sent = None;
            // Otherwise read at its offset: no seek needed.
            let (source, chunk) = sent.unwrap_or((Source::Open(file), CHUNK));
            Body::File(FileStream::new(source, start, count, chunk))
        };
        Some(file_response(
            body,
            base,
            content_type,
            encoding,
            range,
            len,
        ))
    }

    /// Reads `path` and its precompressed siblings into a cache entry; on failure to read
    /// `path`, the response that says why. `None` when a sibling is there but cannot be
    /// cached (too large, unreadable): the file is then served from the disk, as with the
    /// cache off, so that the cache never changes which representation a client gets, nor
    /// fails a request that a sibling's fault does not concern.
    fn cache_entry(
        &self,
        root: &Path,
        path: &Path,
        meta: &std::fs::Metadata,
        content_type: HeaderValue,
    ) -> Result<Option<Entry>, Box<Response<Body>>> {
        // The siblings' metadata first: a file that will not be cached (a sibling too large)
        // is then not read for nothing, on every request for it.
        let mut siblings = Vec::new();
        for (encoding, ext) in [("br", "br"), ("gzip", "gz")] {
            let mut sibling = path.as_os_str().to_owned();
            sibling.push(".");
            sibling.push(ext);
            match self.inside(root, Path::new(&sibling)) {
                Ok(Some((sibling, m))) if m.is_file() => {
                    if m.len() > crate::cache::MAX_FILE {
                        return Ok(None);
                    }
                    siblings.push((sibling, m, encoding));
                }
                Ok(_) => {}
                Err(_) => return Ok(None),
            }
        }
        let mut variants = vec![self.read_variant(path, meta, None)?];
        for (sibling, m, encoding) in siblings {
            match self.read_variant(&sibling, &m, Some(encoding)) {
                Ok(variant) => variants.push(variant),
                Err(_) => {
                    tracing::debug!(sibling = %sibling.display(), "a precompressed sibling cannot be read; not cached");
                    return Ok(None);
                }
            }
        }
        Ok(Some(Entry::new(content_type, variants)))
    }

    fn read_variant(
        &self,
        path: &Path,
        meta: &std::fs::Metadata,
        encoding: Option<&'static str>,
    ) -> Result<Variant, Box<Response<Body>>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => return Err(Box::new(self.failure(&e, path))),
        };
        // The metadata read before the bytes, and the bytes: if the file changed in between,
        // the length tells (most of the time); the next revalidation catches the rest.
        let modified = meta.modified().ok();
        let len = bytes.len() as u64;
        Ok(Variant {
            encoding,
            etag: etag(len, modified, encoding),
            last_modified: modified.map(httpdate::fmt_http_date),
            modified,
            bytes: Bytes::from(bytes),
            heads: Default::default(),
        })
    }

    fn listing(&self, dir: &Path, uri_path: &str) -> Response<Body> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => return self.failure(&e, dir),
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
        let len = page.len();
        let mut resp = Response::new(Body::Full(Bytes::from(page)));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        resp
    }
}

/// The headers every file response carries.
fn base_headers(etag: &str, last_modified: Option<&str>) -> HeaderMap {
    let mut base = HeaderMap::with_capacity(8);
    base.insert(
        header::ETAG,
        HeaderValue::from_str(etag).expect("an etag is ASCII"),
    );
    if let Some(lm) = last_modified {
        base.insert(
            header::LAST_MODIFIED,
            HeaderValue::from_str(lm).expect("an HTTP date is ASCII"),
        );
    }
    base.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    base.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    base
}

/// The conditional headers and `Range`: either the range to send (`None`: all of it), or the
/// answer that ends the request here (304, 412, 416).
fn conditional_range(
    headers: &HeaderMap,
    etag: &str,
    modified: Option<SystemTime>,
    last_modified: Option<&str>,
    len: u64,
    base: &HeaderMap,
) -> Result<Option<(u64, u64)>, Box<Response<Body>>> {
    match preconditions(headers, etag, modified, SystemTime::now()) {
        Precondition::Proceed => {}
        Precondition::NotModified => {
            let mut resp = Response::new(Body::Empty);
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            *resp.headers_mut() = base.clone();
            return Err(Box::new(resp));
        }
        Precondition::Failed => {
            let mut resp = text(StatusCode::PRECONDITION_FAILED, "precondition failed\n");
            resp.headers_mut().extend(base.clone());
            return Err(Box::new(resp));
        }
    }
    match range_wanted(headers, etag, last_modified) {
        None => Ok(None),
        Some(spec) => match parse_range(spec, len) {
            RangeSpec::Whole => Ok(None),
            RangeSpec::Part(start, end) => Ok(Some((start, end))),
            RangeSpec::Unsatisfiable => {
                let mut resp = text(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
                resp.headers_mut().insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{len}")).expect("ASCII"),
                );
                Err(Box::new(resp))
            }
        },
    }
}

/// A 200 or 206 with `body` and the file's headers.
fn file_response(
    body: Body,
    base: HeaderMap,
    content_type: HeaderValue,
    encoding: Option<&'static str>,
    range: Option<(u64, u64)>,
    len: u64,
) -> Response<Body> {
    let count = http_body::Body::size_hint(&body).exact().unwrap_or(0);
    let mut resp = Response::new(body);
    *resp.headers_mut() = base;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if let Some(encoding) = encoding {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
    }
    if let Some((start, end)) = range {
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")).expect("ASCII"),
        );
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    resp
}

/// Answers from a cache entry: the client's preferred representation, then the same
/// conditional and range handling as from the disk.
fn respond_cached(entry: &Entry, headers: &HeaderMap) -> Response<Body> {
    let variant = choose_variant(entry, headers);
    let len = variant.bytes.len() as u64;
    let base = base_headers(&variant.etag, variant.last_modified.as_deref());
    let range = match conditional_range(
        headers,
        &variant.etag,
        variant.modified,
        variant.last_modified.as_deref(),
        len,
        &base,
    ) {
        Ok(range) => range,
        Err(resp) => return *resp,
    };
    let bytes = match range {
        Some((start, end)) => variant.bytes.slice(start as usize..=end as usize),
        None => variant.bytes.clone(),
    };
    file_response(
        Body::Full(bytes),
        base,
        entry.content_type.clone(),
        variant.encoding,
        range,
        len,
    )
}

/// The representation of `entry` that `headers` (their `Accept-Encoding`) prefer.
fn choose_variant<'a>(entry: &'a Entry, headers: &HeaderMap) -> &'a Variant {
    preferred_encodings(headers)
        .into_iter()
        .find_map(|(encoding, _)| entry.variant(Some(encoding)))
        .or_else(|| entry.variant(None))
        .expect("an entry holds the file itself")
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

/// The precompressed variants the client takes, best first, as `(coding, file extension)`.
///
/// RFC 9110 12.5.3: each coding's weight is its own entry's `q`, else the `*` entry's, else
/// 0 (not acceptable). Parameter names are case-insensitive; a q-value that is not valid
/// (`q=abc`, `q=1.5`) is not acceptance. On equal weights brotli comes first. A coding the
/// client weighs below `identity` is not chosen.
fn preferred_encodings(headers: &HeaderMap) -> Vec<(&'static str, &'static str)> {
    let mut weights: Vec<(String, u16)> = Vec::new();
    for item in headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim();
        if name.is_empty() {
            continue;
        }
        let mut q = 1000;
        for param in parts {
            if let Some((k, v)) = param.split_once('=') {
                if k.trim().eq_ignore_ascii_case("q") {
                    q = parse_qvalue(v.trim()).unwrap_or(0);
                }
            }
        }
        weights.push((name.to_ascii_lowercase(), q));
    }
    let weight = |coding: &str| -> Option<u16> {
        weights
            .iter()
            .filter(|(n, _)| n == coding)
            .map(|(_, q)| *q)
            .max()
    };
    let star = weight("*");
    let identity = weight("identity").unwrap_or(0);
    let mut out: Vec<(&'static str, &'static str, u16)> = [("br", "br"), ("gzip", "gz")]
        .into_iter()
        .filter_map(|(coding, ext)| {
            let q = weight(coding).or(star).unwrap_or(0);
            (q > 0 && q >= identity).then_some((coding, ext, q))
        })
        .collect();
    // Stable: brotli stays ahead of gzip on a tie.
    out.sort_by_key(|e| std::cmp::Reverse(e.2));
    out.into_iter().map(|(c, e, _)| (c, e)).collect()
}

/// A q-value (RFC 9110 12.4.2) in thousandths: `0`, `0.5`, `1`, `1.000`; `None` if invalid.
fn parse_qvalue(v: &str) -> Option<u16> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_value = format!("{frac:0<3}").parse::<u16>().ok()?;
    match int {
        "0" => Some(frac_value),
        "1" if frac_value == 0 => Some(1000),
        _ => None,
    }
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

/// What the conditional headers make of a `GET` or `HEAD`.
#[derive(Debug, PartialEq, Eq)]
enum Precondition {
    Proceed,
    /// `304 Not Modified`.
    NotModified,
    /// `412 Precondition Failed`.
    Failed,
}

/// RFC 9110 13.2.2, in its order: `If-Match` (strong comparison), else
/// `If-Unmodified-Since`; then `If-None-Match` (weak comparison), else `If-Modified-Since`.
/// A date that cannot be parsed is ignored, and so is an `If-Modified-Since` later than
/// `now` (the client's clock is wrong; trusting it would answer 304 for a file that changed).
fn preconditions(
    headers: &HeaderMap,
    etag: &str,
    modified: Option<SystemTime>,
    now: SystemTime,
) -> Precondition {
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let date = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
    };
    let tags = |name: header::HeaderName| -> Option<Vec<String>> {
        let mut all = Vec::new();
        let mut seen = false;
        for v in headers.get_all(name).iter() {
            seen = true;
            let v = v.to_str().ok()?;
            all.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned),
            );
        }
        seen.then_some(all)
    };
    if let Some(if_match) = tags(header::IF_MATCH) {
        // Strong comparison: a weak tag never matches.
        if !if_match.iter().any(|t| t == "*" || t == etag) {
            return Precondition::Failed;
        }
    } else if let (Some(since), Some(modified)) = (date(header::IF_UNMODIFIED_SINCE), modified) {
        if secs(modified) > secs(since) {
            return Precondition::Failed;
        }
    }
    if let Some(if_none_match) = tags(header::IF_NONE_MATCH) {
        if if_none_match
            .iter()
            .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
        {
            return Precondition::NotModified;
        }
        return Precondition::Proceed;
    }
    if let (Some(since), Some(modified)) = (date(header::IF_MODIFIED_SINCE), modified) {
        if since <= now && secs(modified) <= secs(since) {
            return Precondition::NotModified;
        }
    }
    Precondition::Proceed
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

/// One `Range` header (RFC 9110 14.1.2). The unit is case-insensitive; positions are ASCII
/// digits only (`+1` is not a number here, though Rust's parser would take it). Anything
/// invalid, and several ranges, are ignored: the whole file is sent, as RFC 9110 allows.
fn parse_range(spec: &str, len: u64) -> RangeSpec {
    let Some((unit, set)) = spec.split_once('=') else {
        return RangeSpec::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') {
        return RangeSpec::Whole;
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return RangeSpec::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    // A run of digits; too large for u64 saturates (it is past any file's end).
    let number = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().unwrap_or(u64::MAX))
    };
    match (first.is_empty(), last.is_empty()) {
        // "-N": the last N bytes.
        (true, false) => match number(last) {
            None => RangeSpec::Whole,
            Some(0) => RangeSpec::Unsatisfiable,
            // Nothing to cut a part from: the (empty) whole.
            Some(_) if len == 0 => RangeSpec::Whole,
            Some(n) => RangeSpec::Part(len.saturating_sub(n), len - 1),
        },
        // "N-": from N to the end.
        (false, true) => match number(first) {
            None => RangeSpec::Whole,
            Some(start) if start < len => RangeSpec::Part(start, len - 1),
            Some(_) => RangeSpec::Unsatisfiable,
        },
        (false, false) => match (number(first), number(last)) {
            (Some(start), Some(end)) if start <= end => {
                if start >= len {
                    RangeSpec::Unsatisfiable
                } else {
                    RangeSpec::Part(start, end.min(len - 1))
                }
            }
            _ => RangeSpec::Whole,
        },
        (true, true) => RangeSpec::Whole,
    }
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

/// The bytes of a file, read a chunk at a time as the connection asks for them.
///
/// A chunk is read right here, on the connection's worker thread, when the page cache holds
/// it (`preadv2` with `RWF_NOWAIT` says so without waiting); otherwise the read goes to the
/// blocking pool and the body waits for it, so a cold or slow disk holds up this one
/// response, never the worker and every other connection on it.
#[derive(Debug)]
pub(crate) struct FileStream {
    source: Source,
    /// Where the next chunk starts.
    offset: u64,
    remaining: u64,
    /// Size of the next chunk.
    chunk: usize,
    /// A read (or, for `sendfile`, a warm-up of the page cache) running in the blocking pool.
    pending: Option<tokio::task::JoinHandle<io::Result<Option<Bytes>>>>,
}

/// Where a file body reads from.
#[derive(Debug)]
enum Source {
    /// A file kept open (HTTP/1: one response at a time per connection, and a client that
    /// stops reading is cut by the write timeout).
    Open(Arc<std::fs::File>),
    /// A path reopened for each chunk and checked to be the same file (HTTP/2, where a
    /// connection holds many responses that its client may stall).
    Reopen {
        path: PathBuf,
        /// Shared with the reads in the blocking pool, and kept out of line: inline, it
        /// would make every response body larger.
        identity: Arc<FileIdentity>,
        /// Whether the reopen may be tried on the async worker (see [`reopen_cached`]);
        /// otherwise it runs in the blocking pool, with the read.
        on_worker: bool,
    },
    /// Sent by the kernel (`sendfile`) on plain HTTP/1: the body yields stand-in chunks
    /// that the connection's socket replaces with the file's bytes.
    #[cfg(target_os = "linux")]
    SendFile {
        file: Arc<std::fs::File>,
        sf: lameduck::http::SendFile,
        /// What was found of the next chunk when the one before it went out: cached, or
        /// its warm-up running in the blocking pool (the disk reads one chunk ahead while
        /// the socket sends).
        ahead: Option<Ahead>,
    },
}

/// The next chunk of a `sendfile` body, looked at ahead.
#[cfg(target_os = "linux")]
#[derive(Debug)]
struct Ahead {
    /// Where the chunk starts.
    at: u64,
    /// Its warm-up, or `None`: its pages were cached already.
    warming: Option<tokio::task::JoinHandle<io::Result<Option<Bytes>>>>,
}

/// What makes "the same file, unchanged": the inode, its size and its modification time.
#[derive(Debug, PartialEq, Eq)]
struct FileIdentity {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl FileIdentity {
    fn of(file: &std::fs::File) -> io::Result<FileIdentity> {
        let meta = file.metadata()?;
        #[cfg(unix)]
        let (dev, ino) = {
            use std::os::unix::fs::MetadataExt as _;
            (meta.dev(), meta.ino())
        };
        #[cfg(not(unix))]
        let (dev, ino) = (0, 0);
        Ok(FileIdentity {
            dev,
            ino,
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }
}

/// The file a chunk comes from: open, or reopened by path and checked.
fn open_checked(path: &Path, identity: &FileIdentity) -> io::Result<std::fs::File> {
    let file = std::fs::File::open(path)?;
    if FileIdentity::of(&file)? != *identity {
        return Err(io::Error::other("file changed while being sent"));
    }
    Ok(file)
}

/// The file at `path` (a canonical path: no symbolic link on the way), reopened from the
/// dentry cache alone and still the file `identity` describes; `None` if that cannot be done
/// without waiting (a name not cached, a link that appeared on the way, no `openat2`) or
/// the file changed: then the blocking pool opens it ([`open_checked`], which reports a
/// change).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn reopen_cached(path: &Path, identity: &FileIdentity) -> Option<std::fs::File> {
    let fd = openat2(
        None,
        path,
        libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
        libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    )
    .ok()?;
    let file = std::fs::File::from(fd);
    (FileIdentity::of(&file).ok()? == *identity).then_some(file)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn reopen_cached(_path: &Path, _identity: &FileIdentity) -> Option<std::fs::File> {
    None
}

/// Whether `openat2` with `RESOLVE_CACHED` works here (Linux 5.12 and later); cleared by
/// the first call that finds it missing.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
static OPENAT2_CACHED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Whether `dir` lies on a local file system whose `open` and `fstat` of a cached name never
/// wait: a FUSE or network file system may (its `open` is a request to a daemon or a
/// server), so there every file request goes to the blocking pool.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn opens_without_waiting(dir: &Path) -> bool {
    std::fs::File::open(dir).is_ok_and(|d| local_fs(&d))
}

/// ext2/3/4, XFS, Btrfs, F2FS, tmpfs, overlayfs (as container images are: its layers are
/// taken to be local too).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(clippy::unnecessary_cast)] // `f_type`'s type differs between targets
fn local_fs_type(fs: &libc::statfs) -> bool {
    let kind = fs.f_type as i64;
    [
        libc::EXT4_SUPER_MAGIC as i64, // ext2, ext3 and ext4 alike
        libc::XFS_SUPER_MAGIC as i64,
        libc::BTRFS_SUPER_MAGIC as i64,
        libc::F2FS_SUPER_MAGIC as i64,
        libc::TMPFS_MAGIC as i64,
        libc::OVERLAYFS_SUPER_MAGIC as i64,
    ]
    .contains(&kind)
}

/// `openat2(2)` of `path` (relative to `dir`, or to the working directory) with `how`:
/// `ENOSYS` where `openat2` or `RESOLVE_CACHED` is missing.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn openat2(
    dir: Option<&std::os::fd::OwnedFd>,
    path: &Path,
    flags: libc::c_int,
    resolve: u64,
) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _};
    use std::os::unix::ffi::OsStrExt as _;
    use std::sync::atomic::Ordering;
    if !OPENAT2_CACHED.load(Ordering::Relaxed) {
        return Err(io::Error::from_raw_os_error(libc::ENOSYS));
    }
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: an all-zero `open_how` is valid; the fields are set below.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = resolve | libc::RESOLVE_CACHED;
    let dir = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: `dir` is open (borrowed) or `AT_FDCWD`; `path` is a NUL-terminated string and
    // `how` an `open_how`, both alive for the call; the size passed is `how`'s.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            path.as_ptr(),
            &raw const how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        // `ENOSYS`: no `openat2` (before 5.6); `EINVAL`: no `RESOLVE_CACHED` (before 5.12).
        if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)) {
            OPENAT2_CACHED.store(false, Ordering::Relaxed);
            return Err(io::Error::from_raw_os_error(libc::ENOSYS));
        }
        return Err(e);
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as std::os::fd::RawFd) })
}

/// The root directory, looked up by its path now (a root swapped for another directory is
/// the new one at once, as on the blocking path), from the dentry cache alone.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn open_root_cached(root: &Path) -> io::Result<std::os::fd::OwnedFd> {
    openat2(None, root, libc::O_PATH | libc::O_DIRECTORY, 0)
}

/// The regular file `rel` under `root`, open for reading, and its metadata; `Ok(None)` for
/// anything else (a directory, a FIFO, a device), which is not opened for reading: opening
/// one can act (a FIFO's waiting writer is released, a device's driver runs).
///
/// Looked up from the dentry cache alone (`EAGAIN` if a name on the way is not cached),
/// through no symbolic link (`ELOOP`), within the root's mount (`EXDEV`: what is mounted
/// below the root may be a file system whose `open` waits): first as an `O_PATH` descriptor,
/// whose `fstat` says what it is; a regular file is then opened for reading by the same
/// path, and must be the same inode (`Ok(None)` if it is not). Reopening through
/// `/proc/self/fd` would leave no gap between the two at all, but costs twice as much: a
/// FIFO swapped in for the file in that gap (by someone who may write into the root) is
/// opened, non-blocking, and closed at once.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn open_regular_cached(
    root: &std::os::fd::OwnedFd,
    rel: &Path,
) -> io::Result<Option<(std::fs::File, std::fs::Metadata)>> {
    use std::os::unix::fs::MetadataExt as _;
    let resolve = libc::RESOLVE_BENEATH
        | libc::RESOLVE_NO_SYMLINKS
        | libc::RESOLVE_NO_MAGICLINKS
        | libc::RESOLVE_NO_XDEV;
    let found = std::fs::File::from(openat2(Some(root), rel, libc::O_PATH, resolve)?);
    let meta = found.metadata()?;
    if !meta.is_file() {
        return Ok(None);
    }
    let file = std::fs::File::from(openat2(
        Some(root),
        rel,
        libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
        resolve,
    )?);
    let now = file.metadata()?;
    if (now.dev(), now.ino()) != (meta.dev(), meta.ino()) {
        return Ok(None);
    }
    Ok(Some((file, now)))
}

/// Whether the file system `dir` (or a file) is on is one [`opens_without_waiting`] trusts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn local_fs(dir: &impl std::os::fd::AsRawFd) -> bool {
    // SAFETY: an all-zero `statfs` is valid; the call fills it; `dir` is open.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(dir.as_raw_fd(), &mut fs) } != 0 {
        return false;
    }
    local_fs_type(&fs)
}

/// Elsewhere, no file system is trusted so.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn local_fs<T>(_: &T) -> bool {
    false
}

/// `count` bytes at `start`, all from the page cache: `Ok(None)` as soon as any of them
/// would have to wait for the disk (or the file system cannot tell).
fn read_whole_nowait(file: &std::fs::File, start: u64, count: usize) -> io::Result<Option<Bytes>> {
    let mut buf = BytesMut::zeroed(count);
    let mut got = 0;
    while got < count {
        match read_nowait(file, &mut buf[got..], start + got as u64) {
            None => return Ok(None),
            Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Some(Err(e)) => return Err(e),
            Some(Ok(0)) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shrank while read",
                ));
            }
            Some(Ok(n)) => got += n,
        }
    }
    Ok(Some(buf.freeze()))
}

/// Reads at most `want` bytes at `offset`; with `nowait`, only what the page cache holds
/// (`Ok(None)`: it would have to wait for the disk).
fn read_at(
    file: &std::fs::File,
    offset: u64,
    want: usize,
    nowait: bool,
) -> io::Result<Option<Bytes>> {
    let mut chunk = BytesMut::zeroed(want);
    let n = loop {
        let result = if nowait {
            match read_nowait(file, &mut chunk, offset) {
                Some(result) => result,
                None => return Ok(None),
            }
        } else {
            read_blocking(file, &mut chunk, offset)
        };
        match result {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if nowait && e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            other => break other?,
        }
    };
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "file shrank while being sent",
        ));
    }
    chunk.truncate(n);
    Ok(Some(chunk.freeze()))
}

#[cfg(unix)]
fn read_blocking(file: &std::fs::File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

#[cfg(not(unix))]
fn read_blocking(file: &std::fs::File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut file = file;
    file.seek(io::SeekFrom::Start(offset))?;
    file.read(buf)
}

/// `preadv2(RWF_NOWAIT)`: the read only if the page cache can answer it now. `None` where
/// the file system (or the platform) cannot tell, so the caller reads in the blocking pool.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn read_nowait(file: &std::fs::File, buf: &mut [u8], offset: u64) -> Option<io::Result<usize>> {
    use std::os::fd::AsRawFd as _;
    let offset = libc::off_t::try_from(offset).ok()?;
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `iov` describes `buf`, which is valid for writes of its length for the whole
    // call; the descriptor is `file`'s, open for the whole call.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    if n >= 0 {
        return Some(Ok(n as usize));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) => Some(Err(e)),
        // Not supported here (FUSE, some network file systems): no way to tell.
        Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS) => None,
        _ => Some(Err(e)),
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn read_nowait(_file: &std::fs::File, _buf: &mut [u8], _offset: u64) -> Option<io::Result<usize>> {
    None
}

/// Whether every page of `len` bytes of `file` at `offset` is in the page cache, by
/// `cachestat(2)` (Linux 6.5 and later): it counts the range's cached pages without reading
/// or starting any I/O. `None` where the kernel has no `cachestat` (remembered, as for
/// `openat2`), and the caller probes single bytes instead.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn range_cached(file: &std::fs::File, offset: u64, len: usize) -> Option<bool> {
    use std::os::fd::AsRawFd as _;
    use std::sync::atomic::{AtomicBool, Ordering};
    /// The same number on every architecture (system calls added since Linux 5.1 share
    /// one numbering); the libc crate does not name it for x86_64.
    const SYS_CACHESTAT: libc::c_long = 451;
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    static MISSING: AtomicBool = AtomicBool::new(false);
    if len == 0 || MISSING.load(Ordering::Relaxed) {
        return None;
    }
    let range = Range {
        off: offset,
        len: len as u64,
    };
    let mut stat = Stat::default();
    // SAFETY: `file` is open for the call; `range` and `stat` are live locals laid out as
    // the kernel's `struct cachestat_range` and `struct cachestat`.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &raw const range,
            &raw mut stat,
            0u32,
        )
    };
    if r != 0 {
        if io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
            MISSING.store(true, Ordering::Relaxed);
        }
        return None;
    }
    // SAFETY: `sysconf` has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
    let pages = (offset + len as u64 - 1) / page - offset / page + 1;
    Some(stat.nr_cache >= pages)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn range_cached(_file: &std::fs::File, _offset: u64, _len: usize) -> Option<bool> {
    None
}

/// Whether `len` bytes of `file` at `offset` are in the page cache, so that a `sendfile` of
/// them on an async worker does not wait for the disk. A file read in part before (a range,
/// pages evicted) may have some of them cached and not the rest. The first byte's
/// `RWF_NOWAIT` read says whether the file system can tell without waiting (FUSE and network
/// file systems cannot: their chunks are always warmed); then `cachestat` counts the whole
/// range's pages, or, on kernels without it, the last byte stands for the rest.
#[cfg(target_os = "linux")]
fn cached_nowait(file: &std::fs::File, offset: u64, len: usize) -> bool {
    let mut probe = [0u8; 1];
    let last = offset + len.saturating_sub(1) as u64;
    matches!(read_nowait(file, &mut probe, offset), Some(Ok(_)))
        && (last == offset
            || range_cached(file, offset, len)
                .unwrap_or_else(|| matches!(read_nowait(file, &mut probe, last), Some(Ok(_)))))
}

/// [`warm`] in the blocking pool; its result is `Ok(None)`, as a [`FileStream`]'s pending
/// read that brought no bytes.
#[cfg(target_os = "linux")]
fn warm_in_pool(
    file: &Arc<std::fs::File>,
    offset: u64,
    len: usize,
) -> tokio::task::JoinHandle<io::Result<Option<Bytes>>> {
    let file = Arc::clone(file);
    tokio::task::spawn_blocking(move || warm(&file, offset, len).map(|()| None))
}

/// Brings `len` bytes at `offset` into the page cache (a `sendfile` of them then does not
/// wait for the disk on the connection's thread). Runs in the blocking pool.
#[cfg(target_os = "linux")]
fn warm(file: &std::fs::File, offset: u64, len: usize) -> io::Result<()> {
    let mut scratch = vec![0u8; len.min(64 * 1024)];
    let mut at = offset;
    let end = offset + len as u64;
    while at < end {
        let want = scratch.len().min((end - at) as usize);
        match read_blocking(file, &mut scratch[..want], at) {
            Ok(0) => break,
            Ok(n) => at += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl FileStream {
    fn new(source: Source, offset: u64, remaining: u64, chunk: usize) -> FileStream {
        FileStream {
            source,
            offset,
            remaining,
            chunk,
            pending: None,
        }
    }

    /// The next chunk (at most `want` bytes): from the page cache here, or from the blocking
    /// pool.
    fn poll_chunk(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<Bytes>> {
        loop {
            if let Some(task) = &mut self.pending {
                let done = std::task::ready!(Pin::new(task).poll(cx));
                self.pending = None;
                let got =
                    done.map_err(|e| io::Error::other(format!("file read failed: {e}")))??;
                match got {
                    Some(bytes) => return Poll::Ready(Ok(self.advance(bytes))),
                    // A warm-up finished: the stand-in goes out now.
                    None => return Poll::Ready(Ok(self.stand_in(want))),
                }
            }
            let file = match &mut self.source {
                Source::Open(file) => Arc::clone(file),
                Source::Reopen {
                    path,
                    identity,
                    on_worker,
                } => match on_worker.then(|| reopen_cached(path, identity)).flatten() {
                    Some(file) => Arc::new(file),
                    None => {
                        let (path, identity, offset) =
                            (path.clone(), Arc::clone(identity), self.offset);
                        self.pending = Some(tokio::task::spawn_blocking(move || {
                            read_at(&open_checked(&path, &identity)?, offset, want, false)
                        }));
                        continue;
                    }
                },
                #[cfg(target_os = "linux")]
                Source::SendFile { file, ahead, .. } => {
                    // This chunk, looked at when the last one went out: its warm-up to wait
                    // for, or its pages found cached then (not asked about again).
                    if let Some(ahead) = ahead.take()
                        && ahead.at == self.offset
                    {
                        match ahead.warming {
                            Some(warming) => {
                                self.pending = Some(warming);
                                continue;
                            }
                            None => return Poll::Ready(Ok(self.stand_in(want))),
                        }
                    }
                    if cached_nowait(file, self.offset, want) {
                        return Poll::Ready(Ok(self.stand_in(want)));
                    }
                    self.pending = Some(warm_in_pool(file, self.offset, want));
                    continue;
                }
            };
            if let Some(bytes) = read_at(&file, self.offset, want, true)? {
                return Poll::Ready(Ok(self.advance(bytes)));
            }
            let offset = self.offset;
            self.pending = Some(tokio::task::spawn_blocking(move || {
                read_at(&file, offset, want, false)
            }));
        }
    }

    fn advance(&mut self, bytes: Bytes) -> Bytes {
        self.offset += bytes.len() as u64;
        self.remaining -= bytes.len() as u64;
        bytes
    }

    /// The stand-in for the next `want` bytes, whose pages are cached; and a look at the
    /// chunk after it, whose warm-up, if it is not cached, starts in the blocking pool
    /// meanwhile.
    #[cfg(target_os = "linux")]
    fn stand_in(&mut self, want: usize) -> Bytes {
        let Source::SendFile { file, sf, ahead } = &mut self.source else {
            unreachable!("only sendfile bodies warm up");
        };
        let chunk = sf.chunk(file, self.offset, want);
        let (at, rest) = (
            self.offset + chunk.len() as u64,
            self.remaining - chunk.len() as u64,
        );
        let next = rest.min(self.chunk as u64) as usize;
        *ahead = (next > 0).then(|| Ahead {
            at,
            warming: (!cached_nowait(file, at, next)).then(|| warm_in_pool(file, at, next)),
        });
        self.advance(chunk)
    }

    #[cfg(not(target_os = "linux"))]
    fn stand_in(&mut self, _want: usize) -> Bytes {
        unreachable!("only sendfile bodies warm up")
    }
}

/// How a failed file-system call is answered.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    NotFound,
    Forbidden,
    /// Out of descriptors or memory: a passing state.
    Unavailable,
    Io,
}

fn classify(e: &io::Error) -> Failure {
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => return Failure::NotFound,
        io::ErrorKind::PermissionDenied => return Failure::Forbidden,
        io::ErrorKind::OutOfMemory => return Failure::Unavailable,
        _ => {}
    }
    #[cfg(unix)]
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM) => return Failure::Unavailable,
        Some(libc::ELOOP | libc::ENAMETOOLONG | libc::ENOTDIR) => return Failure::NotFound,
        _ => {}
    }
    Failure::Io
}

/// `Ok(None)` for errors that mean "no such file", so lookups can tell them from failures.
fn absent<T>(result: io::Result<T>) -> io::Result<Option<T>> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if classify(&e) == Failure::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
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
                let want = f.remaining.min(f.chunk as u64) as usize;
                let chunk = std::task::ready!(f.poll_chunk(cx, want))?;
                // A client that keeps asking gets bigger chunks.
                f.chunk = f.chunk.max((f.chunk * 2).min(CHUNK));
                Poll::Ready(Some(Ok(Frame::data(chunk))))
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
    type Future = Answer;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Only the head is needed; the body (never read for GET and HEAD) is dropped here.
        let (parts, _body) = req.into_parts();
        // A hot file is answered right here: from memory (no system call), or from the
        // kernel's caches; either way no hand-off to another thread.
        if let Some(resp) = self.files.respond_without_waiting(&parts) {
            self.metrics.count_response(resp.status());
            return Answer::Ready(Some(resp));
        }
        // Anything that may wait on the disk runs in the blocking pool: a cold or slow disk
        // then holds up the requests that need it, never a worker thread and the connections
        // on it. (The pool is bounded: see `serve_here`.)
        let files = Arc::clone(&self.files);
        let metrics = Arc::clone(&self.metrics);
        Answer::Disk(tokio::task::spawn_blocking(move || {
            let resp = files.respond(parts);
            metrics.count_response(resp.status());
            resp
        }))
    }
}

/// The request headers after which the shortcut leaves a request to [`StaticService`]:
/// the preconditions that can fail (`412`) and ranges. `If-None-Match` and
/// `If-Modified-Since`, a browser's revalidation, are the shortcut's: they only choose
/// between the file's `200` and its `304`.
const NOT_SHORT: [&str; 4] = ["if-match", "if-unmodified-since", "if-range", "range"];

/// The fast road for the commonest requests of all: a plain `GET` or `HEAD` of a file in the
/// cache, fresh, with no range and no precondition but a revalidation (`If-None-Match`,
/// `If-Modified-Since`), as a browser asks for a page, a style sheet or a script. The
/// representation (the file or a precompressed sibling) is chosen by the service's own
/// `choose_variant` from `Accept-Encoding`, and the `200` or `304` by its own
/// `preconditions`; the answer is that representation's cached bytes behind a head prepared
/// once per representation from the very response [`StaticService`] makes for a request
/// that chooses it (`respond_cached`), so the two cannot differ. Every other request is
/// declined and goes to the service.
#[derive(Clone, Debug)]
pub(crate) struct FileShortcut {
    pub(crate) files: Arc<Files>,
    pub(crate) metrics: Arc<Metrics>,
}

impl lameduck::http::Shortcut for FileShortcut {
    fn answer(
        &self,
        request: &lameduck::http::ShortRequest<'_>,
    ) -> Option<lameduck::http::ShortAnswer> {
        let cache = self.files.cache.as_ref()?;
        // One pass over the headers, keeping those that choose the answer: the revalidation,
        // and the encodings accepted.
        let mut choosing: Option<HeaderMap> = None;
        let mut revalidates = false;
        for (name, value) in request.headers() {
            let kept = if name.eq_ignore_ascii_case("if-none-match") {
                revalidates = true;
                header::IF_NONE_MATCH
            } else if name.eq_ignore_ascii_case("if-modified-since") {
                revalidates = true;
                header::IF_MODIFIED_SINCE
            } else if name.eq_ignore_ascii_case("accept-encoding") {
                header::ACCEPT_ENCODING
            } else if NOT_SHORT.iter().any(|h| name.eq_ignore_ascii_case(h)) {
                return None;
            } else {
                continue;
            };
            let value = HeaderValue::from_bytes(value).ok()?;
            choosing
                .get_or_insert_with(HeaderMap::new)
                .append(kept, value);
        }
        let entry = cache.get_if(request.path(), |_| true)?;
        // A hot file's entry is refreshed in the background before it expires: a stale entry
        // would be declined, and a declined request waits on the disk in the service.
        if entry.claim_refresh() {
            self.files.refresh_ahead(request.path());
        }
        let choosing = choosing.unwrap_or_default();
        // The representation and the precondition as the service decides them.
        let variant = choose_variant(&entry, &choosing);
        let not_modified = revalidates
            && preconditions(
                &choosing,
                &variant.etag,
                variant.modified,
                SystemTime::now(),
            ) == Precondition::NotModified;
        // A head depends on the representation alone: it is made once, from the service's
        // answer to a request that chooses that representation.
        let canonical = || {
            let mut headers = HeaderMap::new();
            if let Some(encoding) = variant.encoding {
                headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(encoding));
            }
            headers
        };
        let answer = if not_modified {
            let head = variant.not_modified_head(|| {
                // Any request the ETag matches gets the same 304.
                let mut matching = canonical();
                matching.insert(
                    header::IF_NONE_MATCH,
                    HeaderValue::from_str(&variant.etag).expect("an etag is ASCII"),
                );
                let resp = respond_cached(&entry, &matching);
                debug_assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
                wire_head(&resp)
            });
            self.metrics.count_response(StatusCode::NOT_MODIFIED);
            lameduck::http::ShortAnswer::new(head.clone(), Bytes::new())
        } else {
            let head = variant.wire_head(|| wire_head(&respond_cached(&entry, &canonical())));
            self.metrics.count_response(StatusCode::OK);
            lameduck::http::ShortAnswer::new(head.clone(), variant.bytes.clone())
        };
        self.metrics.count_shortcut();
        Some(answer)
    }
}

/// `response`'s status line and headers as HTTP/1.1 writes them (lower-case names, as hyper
/// sends them), without the blank line.
fn wire_head<B>(response: &Response<B>) -> Bytes {
    let status = response.status();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in response.headers() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    Bytes::from(head)
}

/// The future of one response: ready at once, or waiting for the blocking pool.
#[derive(Debug)]
pub(crate) enum Answer {
    Ready(Option<Response<Body>>),
    Disk(tokio::task::JoinHandle<Response<Body>>),
}

impl std::future::Future for Answer {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Answer::Ready(resp) => Poll::Ready(Ok(resp.take().expect("polled after it was ready"))),
            Answer::Disk(task) => {
                Poll::Ready(Ok(match std::task::ready!(Pin::new(task).poll(cx)) {
                    Ok(resp) => resp,
                    Err(e) => {
                        tracing::error!(error = %e, "a file lookup failed");
                        text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
                    }
                }))
            }
        }
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
            metrics: Arc::new(Metrics::new()),
            cache: None,
            nowait_open: false,
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
    fn strict_ranges() {
        // Not ASCII digits: ignored, the whole file is sent.
        assert_eq!(parse_range("bytes=+1-2", 100), RangeSpec::Whole);
        assert_eq!(parse_range("bytes=1-+2", 100), RangeSpec::Whole);
        assert_eq!(parse_range("bytes=-+1", 100), RangeSpec::Whole);
        assert_eq!(parse_range("bytes=0x1-2", 100), RangeSpec::Whole);
        // The unit is case-insensitive.
        assert_eq!(parse_range("Bytes=0-1", 100), RangeSpec::Part(0, 1));
        assert_eq!(parse_range("BYTES=5-", 10), RangeSpec::Part(5, 9));
        // An empty file has no last byte to count back from: the empty whole.
        assert_eq!(parse_range("bytes=-1", 0), RangeSpec::Whole);
        assert_eq!(parse_range("bytes=0-", 0), RangeSpec::Unsatisfiable);
        // Huge numbers saturate rather than being taken as garbage.
        assert_eq!(
            parse_range("bytes=99999999999999999999999-", 100),
            RangeSpec::Unsatisfiable
        );
        assert_eq!(
            parse_range("bytes=0-99999999999999999999999", 100),
            RangeSpec::Part(0, 99)
        );
    }

    fn accept(v: &'static str) -> Vec<&'static str> {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(v));
        preferred_encodings(&h)
            .into_iter()
            .map(|(c, _)| c)
            .collect()
    }

    #[test]
    fn accept_encoding_weights() {
        assert_eq!(accept("gzip, deflate, br;q=0"), ["gzip"]);
        assert_eq!(accept("gzip, deflate, br"), ["br", "gzip"]);
        assert_eq!(accept("br;q=0.1, gzip;q=1"), ["gzip", "br"]);
        // Parameter names and codings are case-insensitive.
        assert_eq!(accept("GZIP;Q=0.5, BR;Q=0.4"), ["gzip", "br"]);
        assert_eq!(accept("gzip;Q=0"), Vec::<&str>::new());
        // An invalid q-value is not acceptance.
        assert_eq!(accept("gzip;q=abc, br;q=1.5"), Vec::<&str>::new());
        assert_eq!(accept("gzip;q=0.1234"), Vec::<&str>::new());
        // `*` stands for codings not named.
        assert_eq!(accept("*;q=0.5, br;q=0"), ["gzip"]);
        // Weighed below identity: not chosen.
        assert_eq!(accept("identity;q=1, gzip;q=0.5"), Vec::<&str>::new());
        assert_eq!(accept("identity"), Vec::<&str>::new());
    }

    #[test]
    fn qvalues() {
        assert_eq!(parse_qvalue("1"), Some(1000));
        assert_eq!(parse_qvalue("1.000"), Some(1000));
        assert_eq!(parse_qvalue("0.5"), Some(500));
        assert_eq!(parse_qvalue("0"), Some(0));
        assert_eq!(parse_qvalue("1.5"), None);
        assert_eq!(parse_qvalue("2"), None);
        assert_eq!(parse_qvalue(""), None);
        assert_eq!(parse_qvalue(".5"), None);
    }

    #[test]
    fn conditional_order() {
        let etag = "\"a-1\"";
        let modified = UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let now = UNIX_EPOCH + std::time::Duration::from_secs(2_000_000);
        let check = |pairs: &[(&'static str, String)]| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.append(*n, HeaderValue::from_str(v).unwrap());
            }
            preconditions(&h, etag, Some(modified), now)
        };
        let date =
            |secs: u64| httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(secs));
        assert_eq!(check(&[]), Precondition::Proceed);
        assert_eq!(check(&[("if-match", etag.into())]), Precondition::Proceed);
        assert_eq!(check(&[("if-match", "*".into())]), Precondition::Proceed);
        assert_eq!(
            check(&[("if-match", "\"other\"".into())]),
            Precondition::Failed
        );
        // Strong comparison: a weak tag fails If-Match.
        assert_eq!(
            check(&[("if-match", format!("W/{etag}"))]),
            Precondition::Failed
        );
        assert_eq!(
            check(&[("if-unmodified-since", date(999_999))]),
            Precondition::Failed
        );
        assert_eq!(
            check(&[("if-unmodified-since", date(1_000_000))]),
            Precondition::Proceed
        );
        // If-Match wins over If-Unmodified-Since.
        assert_eq!(
            check(&[("if-match", etag.into()), ("if-unmodified-since", date(1))]),
            Precondition::Proceed
        );
        assert_eq!(
            check(&[("if-none-match", format!("W/{etag}"))]),
            Precondition::NotModified
        );
        assert_eq!(
            check(&[("if-modified-since", date(1_000_000))]),
            Precondition::NotModified
        );
        assert_eq!(
            check(&[("if-modified-since", date(999_999))]),
            Precondition::Proceed
        );
        // A date in the future is ignored.
        assert_eq!(
            check(&[("if-modified-since", date(3_000_000))]),
            Precondition::Proceed
        );
        // If-None-Match present: If-Modified-Since is not looked at.
        assert_eq!(
            check(&[
                ("if-none-match", "\"x\"".into()),
                ("if-modified-since", date(1_000_000))
            ]),
            Precondition::Proceed
        );
        // Unparseable dates are ignored.
        assert_eq!(
            check(&[("if-unmodified-since", "yesterday".into())]),
            Precondition::Proceed
        );
    }

    #[test]
    fn failures_are_classified() {
        assert_eq!(
            classify(&io::Error::from(io::ErrorKind::NotFound)),
            Failure::NotFound
        );
        assert_eq!(
            classify(&io::Error::from(io::ErrorKind::PermissionDenied)),
            Failure::Forbidden
        );
        #[cfg(unix)]
        {
            assert_eq!(
                classify(&io::Error::from_raw_os_error(libc::EMFILE)),
                Failure::Unavailable
            );
            assert_eq!(
                classify(&io::Error::from_raw_os_error(libc::ENFILE)),
                Failure::Unavailable
            );
            assert_eq!(
                classify(&io::Error::from_raw_os_error(libc::ENOMEM)),
                Failure::Unavailable
            );
            assert_eq!(
                classify(&io::Error::from_raw_os_error(libc::EIO)),
                Failure::Io
            );
        }
    }
}
