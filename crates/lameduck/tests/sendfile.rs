//! `lameduck::http::SendFile`: on plain HTTP/1 a body's stand-in chunks reach the client as
//! the file's bytes (sent by the kernel), in order across keep-alive responses; HTTP/2 gets
//! no such extension, so its bodies read the file themselves. Real sockets, a real server,
//! hyper's HTTP/2 client.
#![cfg(target_os = "linux")]

use std::convert::Infallible;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use lameduck::http::SendFile;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

#[path = "support/tcp_info.rs"]
mod tcp_info;
const WAIT: Duration = Duration::from_secs(10);

/// Bytes that are never zero, so a stand-in's zeros reaching the client would show.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 7 + usize::from(seed)) % 251) as u8 + 1)
        .collect()
}

/// A file body: stand-in chunks when the request offered [`SendFile`], else chunks read
/// from the file.
struct FileBody {
    file: Arc<File>,
    sf: Option<SendFile>,
    offset: u64,
    remaining: u64,
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        // Odd sizes on purpose: chunks and socket writes do not line up.
        let want = self.remaining.min(300_001) as usize;
        let chunk = match &self.sf {
            Some(sf) => sf.chunk(&self.file, self.offset, want),
            None => {
                let mut buf = vec![0; want];
                let mut f = &*self.file;
                f.seek(SeekFrom::Start(self.offset))?;
                f.read_exact(&mut buf)?;
                Bytes::from(buf)
            }
        };
        self.offset += chunk.len() as u64;
        self.remaining -= chunk.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }
}

#[derive(Clone)]
struct Files {
    dir: PathBuf,
}

impl tower_service::Service<Request<Incoming>> for Files {
    type Response = Response<http_body_util::Either<FileBody, http_body_util::Full<Bytes>>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let name = req.uri().path().trim_start_matches('/');
        if name == "small" {
            return std::future::ready(Ok(Response::new(http_body_util::Either::Right(
                http_body_util::Full::new(Bytes::from_static(b"small\n")),
            ))));
        }
        let file = File::open(self.dir.join(name)).expect("test file");
        let len = file.metadata().unwrap().len();
        let sf = req.extensions().get::<SendFile>().cloned();
        let used = if sf.is_some() { "sendfile" } else { "read" };
        let body = FileBody {
            file: Arc::new(file),
            sf,
            offset: 0,
            remaining: len,
        };
        let resp = Response::builder()
            .header("content-length", len)
            .header("x-body", used)
            .body(http_body_util::Either::Left(body))
            .unwrap();
        std::future::ready(Ok(resp))
    }
}

struct Site {
    dir: PathBuf,
}

impl Site {
    fn new(name: &str) -> Site {
        let dir = std::env::temp_dir().join(format!("lameduck-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Site { dir }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(dir: PathBuf) -> (SocketAddr, lameduck::Shutdown, tokio::task::JoinHandle<()>) {
    start_with(dir, true)
}

fn start_with(
    dir: PathBuf,
    sendfile: bool,
) -> (SocketAddr, lameduck::Shutdown, tokio::task::JoinHandle<()>) {
    let listener = lameduck::listen::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let serve = lameduck::http::serve(listener, Files { dir }).sendfile(sendfile);
    let shutdown = serve.shutdown_handle();
    let task = tokio::spawn(async move {
        serve.await.expect("serve");
    });
    (addr, shutdown, task)
}

/// Reads one HTTP/1 response with a Content-Length body: (headers, body).
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> (String, Vec<u8>) {
    timeout(WAIT, async {
        let mut chunk = vec![0u8; 65536];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .expect("content-length")
                    .trim()
                    .parse()
                    .unwrap();
                while buf.len() < end + 4 + len {
                    let n = stream.read(&mut chunk).await.expect("read body");
                    assert!(n > 0, "closed in the body");
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = buf[end + 4..end + 4 + len].to_vec();
                buf.drain(..end + 4 + len);
                return (head, body);
            }
            let n = stream.read(&mut chunk).await.expect("read head");
            assert!(n > 0, "closed before a response");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("a response in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_stand_ins_arrive_as_the_files_bytes_in_order_across_keep_alive_responses() {
    let site = Site::new("sendfile-h1");
    let a = pattern(3 << 20, 1);
    let b = pattern(1_234_567, 2);
    std::fs::write(site.dir.join("a"), &a).unwrap();
    std::fs::write(site.dir.join("b"), &b).unwrap();
    let (addr, shutdown, task) = start(site.dir.clone());

    let mut stream = TcpStream::connect(addr).await.unwrap();
    // Pipelined: hyper holds several responses' chunks at once, and the file ranges must
    // follow their stand-ins in order.
    stream
        .write_all(
            b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /small HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = Vec::new();
    let (head, body) = read_response(&mut stream, &mut buf).await;
    assert!(head.contains("x-body: sendfile"), "{head}");
    assert!(body == a, "file a differs");
    let (_, body) = read_response(&mut stream, &mut buf).await;
    assert_eq!(body, b"small\n");
    let (head, body) = read_response(&mut stream, &mut buf).await;
    assert!(head.contains("x-body: sendfile"), "{head}");
    assert!(body == b, "file b differs");
    // And once more on the same connection, after the pipeline has drained.
    stream
        .write_all(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let (_, body) = read_response(&mut stream, &mut buf).await;
    assert!(body == a, "file a differs the second time");

    shutdown.trigger();
    drop(stream);
    timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_shrinks_mid_response_cuts_the_connection_short() {
    let site = Site::new("sendfile-shrink");
    let a = pattern(16 << 20, 3);
    std::fs::write(site.dir.join("a"), &a).unwrap();
    let (addr, shutdown, task) = start(site.dir.clone());

    // A small receive buffer, so most of the file is still unsent when it shrinks.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    socket.connect(&addr.into()).unwrap();
    let std_stream: std::net::TcpStream = socket.into();
    std_stream.set_nonblocking(true).unwrap();
    let mut stream = TcpStream::from_std(std_stream).unwrap();
    stream
        .write_all(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 16384];
    while got.len() < 100_000 {
        let n = timeout(WAIT, stream.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&chunk[..n]);
    }
    File::options()
        .write(true)
        .open(site.dir.join("a"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    timeout(WAIT, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("the connection is closed");
    let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let body = &got[end..];
    assert!(body.len() < a.len(), "a short body: {} bytes", body.len());
    // What is still in the file arrived as it is. Bytes past the new end that were already
    // in the socket's send buffer when the file shrank are the kernel's page references
    // (as with nginx's sendfile, they may arrive zeroed): the body is cut short, so the
    // client can tell the response is incomplete.
    let kept = body.len().min(1 << 20);
    assert!(
        body[..kept] == a[..kept],
        "the file's own bytes up to its new end"
    );
    shutdown.trigger();
    timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_get_no_sendfile_extension() {
    let site = Site::new("sendfile-h2");
    let a = pattern(2 << 20, 4);
    std::fs::write(site.dir.join("a"), &a).unwrap();
    let (addr, shutdown, task) = start(site.dir.clone());

    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut client, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get(format!("http://{addr}/a"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = timeout(WAIT, client.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.headers()["x-body"], "read");
    let body = timeout(WAIT, resp.into_body().collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert!(body == a, "file a differs over HTTP/2");

    drop(client);
    conn.abort();
    shutdown.trigger();
    timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_option_no_request_gets_the_extension() {
    let site = Site::new("sendfile-off");
    let a = pattern(1 << 20, 5);
    std::fs::write(site.dir.join("a"), &a).unwrap();
    let (addr, shutdown, task) = start_with(site.dir.clone(), false);
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let (head, body) = read_response(&mut stream, &mut buf).await;
    assert!(head.contains("x-body: read"), "{head}");
    assert!(body == a, "file a differs");
    drop(stream);
    shutdown.trigger();
    timeout(WAIT, task).await.unwrap().unwrap();
}

/// Data segments `stream` has received (`tcpi_data_segs_in` of `TCP_INFO`).
fn data_segments_in(stream: &TcpStream) -> u32 {
    tcp_info::tcp_info(stream).tcpi_data_segs_in
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_head_leaves_in_the_segment_that_carries_the_files_first_bytes() {
    // Sent alone, the head would be a segment of its own, and the client would wake for it
    // and again for the body: head and a small file fit one segment, and arrive in one.
    let site = Site::new("sendfile-segments");
    let file = pattern(1000, 3);
    std::fs::write(site.dir.join("f"), &file).unwrap();
    let (addr, shutdown, task) = start(site.dir.clone());

    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    // The first response, and one on the same connection once `TCP_NODELAY` is on.
    for round in 0..2 {
        let before = data_segments_in(&stream);
        stream
            .write_all(b"GET /f HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read_response(&mut stream, &mut buf).await;
        assert!(head.contains("x-body: sendfile"), "{head}");
        assert!(body == file, "the file differs");
        let segments = data_segments_in(&stream) - before;
        assert_eq!(
            segments, 1,
            "response {round} came in {segments} data segments"
        );
    }

    shutdown.trigger();
    drop(stream);
    timeout(WAIT, task).await.unwrap().unwrap();
}
