//! A load client that counts what wrk cannot tell apart: requests that failed on an open
//! connection (sent, then no complete response), and connections refused because nothing is
//! listening any more.
//!
//! Usage: `drain_client ADDR CONNECTIONS SECONDS [PID SIGNAL_AFTER_MS]`
//!
//! Each of CONNECTIONS tasks sends `GET /` over a keep-alive connection in a loop, for
//! SECONDS. A response with `Connection: close` makes it reconnect; a refused connection ends
//! the task. With PID, SIGTERM is sent to PID after SIGNAL_AFTER_MS milliseconds.
//! Prints `requests=N failed=N refused=N`.
//!
//! With `RETRY_REFUSED=1` in the environment a refused connection is counted and retried
//! (every 10 ms) instead of ending the task: for measuring reloads, where the server should
//! never stop listening.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
    refused: AtomicU64,
}

enum Outcome {
    KeepAlive,
    Close,
}

/// Sends one request and reads its response; `Err` if the exchange broke.
async fn exchange(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Outcome> {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
        .await?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse_header(); 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = resp.parse(buf) {
            let mut len = 0usize;
            let mut close = false;
            for h in resp.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    len = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                } else if h.name.eq_ignore_ascii_case("connection")
                    && h.value.eq_ignore_ascii_case(b"close")
                {
                    close = true;
                }
            }
            let ok = resp.code == Some(200);
            while buf.len() < head + len {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            if !ok {
                return Err(std::io::Error::other("non-200 response"));
            }
            return Ok(if close {
                Outcome::Close
            } else {
                Outcome::KeepAlive
            });
        }
    }
}

fn httparse_header() -> httparse::Header<'static> {
    httparse::EMPTY_HEADER
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr: SocketAddr = args.first().ok_or("ADDR")?.parse()?;
    let connections: usize = args.get(1).map_or(Ok(50), |s| s.parse())?;
    let seconds: u64 = args.get(2).map_or(Ok(5), |s| s.parse())?;
    let end = Instant::now() + Duration::from_secs(seconds);
    if let (Some(pid), Some(after)) = (args.get(3), args.get(4)) {
        let pid: i32 = pid.parse()?;
        let after = Duration::from_millis(after.parse()?);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            // SAFETY-free: signalling goes through the kill command.
            let _ = tokio::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
        });
    }
    let retry_refused = std::env::var_os("RETRY_REFUSED").is_some_and(|v| v == "1");
    let counts = Arc::new(Counts::default());
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let counts = Arc::clone(&counts);
        tasks.push(tokio::spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            'connect: while Instant::now() < end {
                let Ok(mut stream) = TcpStream::connect(addr).await else {
                    counts.refused.fetch_add(1, Ordering::Relaxed);
                    if retry_refused {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue 'connect;
                    }
                    return;
                };
                while Instant::now() < end {
                    match exchange(&mut stream, &mut buf).await {
                        Ok(Outcome::KeepAlive) => {
                            counts.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Outcome::Close) => {
                            counts.ok.fetch_add(1, Ordering::Relaxed);
                            continue 'connect;
                        }
                        Err(_) => {
                            counts.failed.fetch_add(1, Ordering::Relaxed);
                            continue 'connect;
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    println!(
        "requests={} failed={} refused={}",
        counts.ok.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
        counts.refused.load(Ordering::Relaxed)
    );
    Ok(())
}
