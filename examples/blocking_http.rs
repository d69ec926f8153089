//! The Rust book's multi-threaded web server, done right: a bounded pool of worker threads,
//! an acceptor that stops the instant it is told to (no accept timeout, no self-connection),
//! requests parsed with `httparse`, and no `unwrap()` on I/O.
//!
//! ```text
//! cargo run --release --example blocking_http -- --listen 127.0.0.1:7878 --threads 4 --drain-timeout 10s
//! ```
//!
//! `GET /` answers a small hello page, `GET /sleep` answers after five seconds, any other
//! path 404, a malformed request 400. Connections are kept alive (HTTP/1.1) for up to 100
//! requests and 5 idle seconds, since each holds a worker; a response sent while the server
//! drains carries `Connection: close`.
//! SIGINT/SIGTERM stop accepting at once, finish requests in flight, join the workers and
//! exit 0; a second signal, or the drain deadline, closes what remains (exit 3).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// A small blocking HTTP server with a graceful shutdown.
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// Worker threads, which is also the most connections served at once.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// How long requests in flight may take after a shutdown signal (e.g. 500ms, 10s).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
}

const HELLO: &str = "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>Hello!</title></head>\n<body><h1>Hello!</h1><p>Hi from a lameduck blocking server.</p></body>\n</html>\n";
const NOT_FOUND: &str = "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>Not found</title></head>\n<body><h1>Oops!</h1><p>Sorry, I don't know what you're asking for.</p></body>\n</html>\n";
/// Largest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Requests served on one keep-alive connection before it is closed. Each connection holds a
/// worker thread, so without a cap a few busy clients could keep every worker to themselves
/// while others wait in the backlog.
const MAX_REQUESTS_PER_CONNECTION: usize = 100;
/// How long an idle keep-alive connection may hold its worker waiting for the next request.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// One parsed request: what the routes need, and whether the client wants to keep going.
struct Request {
    method: String,
    path: String,
    keep_alive: bool,
    body_len: usize,
}

enum Parsed {
    Request(Request, usize),
    Closed,
    Bad(&'static str, &'static str),
}

/// Reads one request head into `buf` (which may already hold bytes of it).
fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Parsed> {
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let version = req.version.unwrap_or(1);
                let mut keep_alive = version == 1;
                let mut body_len = 0usize;
                for h in req.headers.iter() {
                    if h.name.eq_ignore_ascii_case("connection") {
                        let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                        if v.contains("close") {
                            keep_alive = false;
                        } else if v.contains("keep-alive") {
                            keep_alive = true;
                        }
                    } else if h.name.eq_ignore_ascii_case("content-length") {
                        match std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse().ok())
                        {
                            Some(n) => body_len = n,
                            None => {
                                return Ok(Parsed::Bad("400 Bad Request", "bad Content-Length\n"));
                            }
                        }
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        return Ok(Parsed::Bad(
                            "501 Not Implemented",
                            "chunked request bodies are not supported\n",
                        ));
                    }
                }
                let request = Request {
                    method: req.method.unwrap_or_default().to_owned(),
                    path: req.path.unwrap_or_default().to_owned(),
                    keep_alive,
                    body_len,
                };
                return Ok(Parsed::Request(request, head_len));
            }
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                return Ok(Parsed::Bad(
                    "431 Request Header Fields Too Large",
                    "request head too large\n",
                ));
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return Ok(Parsed::Bad(
                    "431 Request Header Fields Too Large",
                    "too many headers\n",
                ));
            }
            Err(_) => return Ok(Parsed::Bad("400 Bad Request", "malformed request\n")),
        }
        let n = match stream.read(&mut chunk) {
            // An idle keep-alive connection that timed out between requests: close quietly.
            Err(e)
                if buf.is_empty()
                    && matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
            {
                0
            }
            other => other?,
        };
        if n == 0 {
            // EOF between requests is a normal close; in the middle of one it is the client
            // giving up, and there is nobody left to answer.
            return Ok(Parsed::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Drops `n` body bytes: from `buf` first, then from the stream.
fn skip_body(stream: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> io::Result<()> {
    let from_buf = n.min(buf.len());
    buf.drain(..from_buf);
    let rest = (n - from_buf) as u64;
    if rest > 0 {
        let copied = io::copy(&mut Read::by_ref(stream).take(rest), &mut io::sink())?;
        if copied < rest {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
    close: bool,
    head_only: bool,
) -> io::Result<()> {
    let connection = if close { "close" } else { "keep-alive" };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}

fn handle(mut stream: TcpStream, conn: lameduck::Connection) -> io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    for served in 1.. {
        if served > 1 && buf.is_empty() {
            stream.set_read_timeout(Some(KEEP_ALIVE_TIMEOUT))?;
        }
        let (request, head_len) = match read_request(&mut stream, &mut buf)? {
            Parsed::Request(request, head_len) => (request, head_len),
            Parsed::Closed => return Ok(()),
            Parsed::Bad(status, why) => {
                return respond(
                    &mut stream,
                    status,
                    "text/plain; charset=utf-8",
                    why,
                    true,
                    false,
                );
            }
        };
        buf.drain(..head_len);
        skip_body(&mut stream, &mut buf, request.body_len)?;
        let head_only = request.method == "HEAD";
        let (status, body) = match (request.method.as_str(), request.path.as_str()) {
            ("GET" | "HEAD", "/") => ("200 OK", HELLO),
            ("GET" | "HEAD", "/sleep") => {
                std::thread::sleep(Duration::from_secs(5));
                ("200 OK", HELLO)
            }
            ("GET" | "HEAD", _) => ("404 NOT FOUND", NOT_FOUND),
            _ => ("405 Method Not Allowed", "only GET and HEAD\n"),
        };
        // Checked after the work: a request that was in flight when the drain began is
        // answered, and its connection then closed.
        let close =
            !request.keep_alive || conn.is_draining() || served >= MAX_REQUESTS_PER_CONNECTION;
        let content_type = if body.starts_with('<') {
            "text/html; charset=utf-8"
        } else {
            "text/plain; charset=utf-8"
        };
        respond(&mut stream, status, content_type, body, close, head_only)?;
        if close {
            break;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(report) => report.exit_code(),
        Err(e) => {
            eprintln!("blocking_http: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: Args) -> Result<lameduck::Report, Box<dyn std::error::Error>> {
    let listener = lameduck::listen::bind(args.listen)?;
    let server = lameduck::blocking::Server::new()
        .listener(listener)
        .threads(args.threads)
        .drain_timeout(args.drain_timeout);
    let _signals = lameduck::signals::install(&server.shutdown_handle())?;
    Ok(server.run(handle)?)
}
