//! Answers prepared ahead for the plainest HTTP/1.1 requests, written before hyper is
//! involved ([`Shortcut`]).
//!
//! A static-file server answers most of its requests from memory with bytes it prepared
//! once: for those, hyper's connection state machine, the `http::Request` and its header
//! map, the service call and the response encoding are most of the CPU a request costs.
//! A [`Shortcut`] is offered only a request that nothing about HTTP/1.1 framing can make
//! ambiguous: complete in what was read, parsed by `httparse` (hyper's own parser), `GET`
//! or `HEAD`, HTTP/1.1, one `Host`, an origin-form target that `http`'s URI parser accepts,
//! no body (`Content-Length`, `Transfer-Encoding`), no `Expect`, no `Upgrade`, and a
//! `Connection` header naming nothing but `close` and `keep-alive`. Anything else, and any
//! request the shortcut declines, goes to hyper and the service. A request the shortcut could
//! have taken but has no answer for (a file not cached yet, say) is given to hyper alone, and
//! the connection comes back to the shortcut once its response is written (up to eight such
//! requests in a row); anything else hands hyper the rest of the connection. The
//! connection's lifecycle is the same either way: its timeouts (the reads and writes go
//! through the same timed socket), `Connection: close` while draining, the cork that sends
//! the last response's tail with the FIN, its slot.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::Version;
use tokio::io::AsyncWrite;

use super::{ConnIo, ConnState};

/// Most request headers a shortcut request may have; more go to hyper.
const MAX_HEADERS: usize = 32;

/// Answers some requests from bytes prepared ahead, before hyper sees them; see
/// [`Serve::shortcut`](super::Serve::shortcut).
///
/// The answer must be exactly what the service would have answered the same request with
/// (the server's tests should say so): the shortcut is a faster road to the same response,
/// not a second application.
pub trait Shortcut: Send + Sync + 'static {
    /// The complete answer to `request`, or `None` to let hyper and the service answer it.
    /// Called on the connection's task: it must not block.
    fn answer(&self, request: &ShortRequest<'_>) -> Option<ShortAnswer>;
}

/// A request offered to a [`Shortcut`]: `GET` or `HEAD`, HTTP/1.1, no body.
#[derive(Debug)]
pub struct ShortRequest<'a> {
    head: bool,
    path_and_query: http::uri::PathAndQuery,
    headers: &'a [httparse::Header<'a>],
}

impl ShortRequest<'_> {
    /// `HEAD` (the body is left out of the answer by the server), otherwise `GET`.
    pub fn is_head(&self) -> bool {
        self.head
    }

    /// The target's path, as `http::Uri::path` gives it for the same request.
    pub fn path(&self) -> &str {
        self.path_and_query.path()
    }

    /// The target's query, if any.
    pub fn query(&self) -> Option<&str> {
        self.path_and_query.query()
    }

    /// The first value of the header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// Every header, in the order received.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.headers.iter().map(|h| (h.name, h.value))
    }
}

/// A [`Shortcut`]'s answer: the response head and body, ready for the wire.
#[derive(Clone, Debug)]
pub struct ShortAnswer {
    head: Bytes,
    body: Bytes,
}

impl ShortAnswer {
    /// `head` is the status line and the header lines, each ending in CRLF, without the
    /// blank line that ends the head; it must carry `Content-Length` (the body's length, also
    /// for `HEAD`) unless the status is `304 Not Modified` (which has no body, and `body`
    /// is then empty), and neither `Date` nor `Connection`, which the server adds.
    pub fn new(head: Bytes, body: Bytes) -> Self {
        ShortAnswer { head, body }
    }
}

/// What became of the bytes read.
pub(super) enum Outcome {
    /// Answered; the connection goes on (what follows the request, if anything, is in the
    /// buffer).
    Answered,
    /// Answered, with the connection's last response: it is shut down.
    Closed,
    /// A request the shortcut may take, of `used` bytes, not the connection's last, that it
    /// has no answer for: hyper answers it alone, and the connection comes back after it.
    Alone { used: usize },
    /// Not a shortcut request, or the connection's last: hyper takes it and the rest of the
    /// connection.
    Declined,
}

/// What [`prepare`] made of the bytes read.
enum Prepared {
    /// Not a request a shortcut may take.
    NotShort,
    /// A request a shortcut may take, of `used` bytes, that it has no answer for; `last`:
    /// the connection's last.
    NoAnswer { used: usize, last: bool },
    /// The answer to a request of `used` bytes.
    Answer {
        used: usize,
        pending: Pending,
        last: bool,
    },
}

/// Tries the shortcut on the request at the start of `io`'s buffer. `draining`: the answer
/// is the connection's last.
pub(super) async fn run(
    io: &mut ConnIo,
    shortcut: &dyn Shortcut,
    state: &Arc<ConnState>,
    draining: bool,
) -> io::Result<Outcome> {
    let (used, mut pending, last) = match prepare(&io.head, shortcut, draining) {
        Prepared::Answer {
            used,
            pending,
            last,
        } => (used, pending, last),
        Prepared::NoAnswer { used, last: false } => return Ok(Outcome::Alone { used }),
        Prepared::NoAnswer { last: true, .. } | Prepared::NotShort => {
            return Ok(Outcome::Declined);
        }
    };
    let in_flight = state.request_started(Version::HTTP_11);
    io.head.advance(used);
    if io.head.is_empty() {
        // An idle connection keeps no buffer.
        io.head = bytes::BytesMut::new();
    }
    #[cfg(target_os = "linux")]
    if last {
        state.cork.want();
    }
    std::future::poll_fn(|cx| {
        let poll = pending.poll_write(Pin::new(&mut *io), cx);
        // Waiting on the client: nothing written may stay corked meanwhile.
        #[cfg(target_os = "linux")]
        if poll.is_pending() {
            state.cork.release();
        }
        poll
    })
    .await?;
    drop(in_flight);
    if last {
        std::future::poll_fn(|cx| Pin::new(&mut *io).poll_shutdown(cx)).await?;
        return Ok(Outcome::Closed);
    }
    Ok(Outcome::Answered)
}

/// The request at the start of `buf`, if it is one a shortcut may take, and the shortcut's
/// answer, with the server's `Date` and `Connection` lines added.
fn prepare(buf: &[u8], shortcut: &dyn Shortcut, draining: bool) -> Prepared {
    short_request(buf, draining, |request| shortcut.answer(request)).map_or(
        Prepared::NotShort,
        |(used, answer, head, last)| match answer {
            None => Prepared::NoAnswer { used, last },
            Some(answer) => Prepared::Answer {
                used,
                pending: Pending::new(answer, head, last),
                last,
            },
        },
    )
}

/// Parses the request at the start of `buf` and, if a shortcut may take it, asks `answer`:
/// `(bytes the request took, the answer, HEAD, the connection's last)`.
fn short_request(
    buf: &[u8],
    draining: bool,
    answer: impl FnOnce(&ShortRequest<'_>) -> Option<ShortAnswer>,
) -> Option<(usize, Option<ShortAnswer>, bool, bool)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(used)) => used,
        // Partial (hyper reads the rest), malformed (hyper answers 400), too many headers.
        _ => return None,
    };
    if req.version != Some(1) {
        return None;
    }
    let head = match req.method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => return None,
    };
    let target = req.path?;
    if !target.starts_with('/') {
        return None;
    }
    let path_and_query = http::uri::PathAndQuery::try_from(target).ok()?;
    let mut hosts = 0;
    let mut close = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                    return None;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return None;
        }
    }
    if hosts != 1 {
        return None;
    }
    let request = ShortRequest {
        head,
        path_and_query,
        headers: req.headers,
    };
    Some((used, answer(&request), head, close || draining))
}

/// What is left of an answer to write: the shortcut's head as it prepared it (shared, not
/// copied), the header lines the server adds, and the body.
struct Pending {
    head: Bytes,
    tail: Tail,
    body: Bytes,
}

impl Pending {
    /// `answer` with the server's `Date` line, `Connection: close` if `last`, and no body
    /// for a `HEAD`.
    fn new(answer: ShortAnswer, head: bool, last: bool) -> Pending {
        let mut tail = Tail::default();
        tail.push(b"date: ");
        date::with(|d| tail.push(d));
        tail.push(b"\r\n");
        if last {
            tail.push(b"connection: close\r\n");
        }
        tail.push(b"\r\n");
        let body = if head { Bytes::new() } else { answer.body };
        Pending {
            head: answer.head,
            tail,
            body,
        }
    }

    /// Writes until nothing is left: all three parts in one vectored write where the socket
    /// takes them.
    fn poll_write<W: AsyncWrite + ?Sized>(
        &mut self,
        mut io: Pin<&mut W>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while !self.head.is_empty() || !self.tail.rest().is_empty() || !self.body.is_empty() {
            let slices = [
                io::IoSlice::new(&self.head),
                io::IoSlice::new(self.tail.rest()),
                io::IoSlice::new(&self.body),
            ];
            let n = ready!(io.as_mut().poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let from_head = n.min(self.head.len());
            self.head.advance(from_head);
            let from_tail = (n - from_head).min(self.tail.rest().len());
            self.tail.start += from_tail;
            self.body.advance(n - from_head - from_tail);
        }
        Poll::Ready(Ok(()))
    }
}

/// The header lines the server adds to a shortcut's head (`Date`, `Connection: close`) and
/// the blank line that ends it, kept inline: no allocation per answer.
struct Tail {
    buf: [u8; Tail::CAPACITY],
    start: usize,
    end: usize,
}

impl Tail {
    /// `date: ` (6), an HTTP date (29), CRLF, `connection: close` and CRLF (19), CRLF.
    const CAPACITY: usize = 6 + 29 + 2 + 19 + 2;

    /// Appends `bytes`; what the server adds always fits (an HTTP date has a fixed width).
    fn push(&mut self, bytes: &[u8]) {
        self.buf[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// What is still to be written.
    fn rest(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
}

impl Default for Tail {
    fn default() -> Self {
        Tail {
            buf: [0; Tail::CAPACITY],
            start: 0,
            end: 0,
        }
    }
}

/// The `Date` header's value, formatted once a second per thread (as hyper does).
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }

    /// Calls `f` with the current HTTP date.
    pub(super) fn with(f: impl FnOnce(&[u8])) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHED.with(|cached| {
            let mut cached = cached.borrow_mut();
            if cached.0 != secs {
                *cached = (secs, httpdate::fmt_http_date(now));
            }
            f(cached.1.as_bytes());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers `/hit` with a fixed head and body.
    struct Fixed;

    impl Shortcut for Fixed {
        fn answer(&self, request: &ShortRequest<'_>) -> Option<ShortAnswer> {
            (request.path() == "/hit").then(|| {
                ShortAnswer::new(
                    Bytes::from_static(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n"),
                    Bytes::from_static(b"ok"),
                )
            })
        }
    }

    /// The answer prepared for `req`: `(bytes used, pending, last)`.
    fn answered(req: &[u8], draining: bool) -> Option<(usize, Pending, bool)> {
        match prepare(req, &Fixed, draining) {
            Prepared::Answer {
                used,
                pending,
                last,
            } => Some((used, pending, last)),
            _ => None,
        }
    }

    fn taken(req: &[u8]) -> Option<(usize, bool, Bytes)> {
        answered(req, false).map(|(used, p, last)| (used, last, p.body))
    }

    #[test]
    fn plain_requests_are_taken() {
        let req = b"GET /hit HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            taken(req),
            Some((req.len(), false, Bytes::from_static(b"ok")))
        );
        let req = b"GET /hit?q=1 HTTP/1.1\r\nhost: x\r\nConnection: keep-alive, Close\r\n\r\nGET";
        assert_eq!(
            taken(req),
            Some((req.len() - 3, true, Bytes::from_static(b"ok")))
        );
        let (_, pending, _) =
            answered(b"HEAD /hit HTTP/1.1\r\nHost: x\r\n\r\n", true).expect("HEAD is taken");
        assert!(pending.body.is_empty(), "HEAD has no body");
        let head = [&pending.head[..], pending.tail.rest()].concat();
        let head = std::str::from_utf8(&head).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 2\r\ndate: "));
        assert!(
            head.ends_with(" GMT\r\nconnection: close\r\n\r\n"),
            "{head}"
        );
    }

    /// Takes at most `step` bytes a write, from the first non-empty slice only (as a
    /// socket may, and as `AsyncWrite`'s default vectored write does).
    struct Trickle {
        got: Vec<u8>,
        step: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.step);
            self.got.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn an_answer_written_in_pieces_arrives_whole_and_in_order() {
        let req = b"GET /hit HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let (_, whole, _) = answered(req, false).expect("taken");
        let expected = [&whole.head[..], whole.tail.rest(), &whole.body[..]].concat();
        assert!(expected.ends_with(b" GMT\r\nconnection: close\r\n\r\nok"));
        // Every step size, so that writes end inside each part and on each boundary.
        for step in 1..=expected.len() {
            let (_, mut pending, _) = answered(req, false).expect("taken");
            let mut out = Trickle {
                got: Vec::new(),
                step,
            };
            let waker = std::task::Waker::noop();
            let mut cx = Context::from_waker(waker);
            let done = pending.poll_write(Pin::new(&mut out), &mut cx);
            assert!(matches!(done, Poll::Ready(Ok(()))), "step {step}");
            // The date may have turned a second meanwhile: compare all but its digits.
            assert_eq!(out.got.len(), expected.len(), "step {step}");
            let same = |a: &[u8], b: &[u8]| {
                a.iter()
                    .zip(b)
                    .all(|(x, y)| x == y || (x.is_ascii_digit() && y.is_ascii_digit()))
            };
            assert!(same(&out.got, &expected), "step {step}");
        }
    }

    /// A request the shortcut could take but has no answer for goes to hyper alone, unless it
    /// is the connection's last (then hyper takes the rest of the connection, and closes it).
    #[test]
    fn a_plain_request_without_an_answer_goes_to_hyper_alone() {
        let req = b"GET /miss HTTP/1.1\r\nHost: x\r\n\r\nGET /hit";
        let used = req.len() - b"GET /hit".len();
        assert!(matches!(
            prepare(req, &Fixed, false),
            Prepared::NoAnswer { used: u, last: false } if u == used
        ));
        assert!(matches!(
            prepare(req, &Fixed, true),
            Prepared::NoAnswer { last: true, .. }
        ));
        let req = b"HEAD /miss HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        assert!(matches!(
            prepare(req, &Fixed, false),
            Prepared::NoAnswer { used, last: true } if used == req.len()
        ));
    }

    #[test]
    fn anything_else_goes_to_hyper() {
        for req in [
            &b"GET /hit HTTP/1.1\r\nHost: x\r\n"[..],
            b"GET /hit HTTP/1.0\r\nHost: x\r\n\r\n",
            b"POST /hit HTTP/1.1\r\nHost: x\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET http://x/hit HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /hit HTTP/1.1\r\n\r\n",
            b"GET /hit HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            b"GET /hit HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            b"GET /hit HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /hit HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
            b"GET /hit HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET /hit HTTP/1.1\r\nHost: x\r\nConnection: close, te\r\n\r\n",
            b"GET /h\x7fit HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET  /hit HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert!(
                matches!(prepare(req, &Fixed, false), Prepared::NotShort),
                "{:?}",
                String::from_utf8_lossy(req)
            );
        }
        let mut many = b"GET /hit HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(
            matches!(prepare(&many, &Fixed, false), Prepared::NotShort),
            "more headers than the shortcut takes"
        );
    }
}
