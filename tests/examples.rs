//! The examples, run as their users would: the built example binary, real sockets, real
//! signals.

mod util;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use util::{WAIT, field_addr, send_signal, wait_exit};

/// The built example `name` (cargo builds the examples before it runs the tests).
fn example(name: &str) -> PathBuf {
    let bin = PathBuf::from(util::bin());
    bin.parent().unwrap().join("examples").join(name)
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `example ARGS` and waits for its `listening` line.
fn start(name: &str, args: &[&str]) -> (Running, SocketAddr, std::sync::mpsc::Receiver<String>) {
    let path = example(name);
    assert!(path.exists(), "{} is not built", path.display());
    let mut child = Command::new(path)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the example");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let running = Running(child);
    loop {
        let line = rx
            .recv_timeout(WAIT)
            .expect("the example never said where it listens");
        if line.contains("listening") {
            return (running, field_addr(&line), rx);
        }
    }
}

#[test]
fn axum_router_websocket_echoes_and_says_goodbye_when_the_drain_starts() {
    let (mut running, addr, _log) = start(
        "axum_router",
        &[
            "--listen",
            "127.0.0.1:0",
            "--header-timeout",
            "1s",
            "--drain-timeout",
            "10s",
        ],
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut ws, resp) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
        )
        .await
        .expect("handshake in time")
        .expect("websocket handshake");
        assert_eq!(resp.status(), 101);
        // ConnectInfo works as with axum::serve.
        let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
        let me = plain.local_addr().unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        plain
            .write_all(b"GET /whoami HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        plain.read_to_string(&mut out).await.unwrap();
        assert!(out.ends_with(&format!("{me}\n")), "{out}");
        // Past the header timeout, the socket still echoes.
        for i in 0..3 {
            tokio::time::sleep(Duration::from_millis(600)).await;
            let text = format!("message {i}");
            ws.send(Message::text(text.clone())).await.unwrap();
            let echo = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
            assert!(matches!(echo, Some(Ok(Message::Text(t))) if t.as_str() == text));
        }
        send_signal(running.0.id(), libc::SIGTERM);
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a close frame in time")
        {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 1001);
                assert_eq!(frame.reason.as_str(), "server draining");
            }
            other => panic!("expected a close frame, got {other:?}"),
        }
        let _ = ws.close(None).await;
        while let Ok(Some(_)) = tokio::time::timeout(WAIT, ws.next()).await {}
    });
    let status = wait_exit(&mut running.0, WAIT).expect("the example exits after the drain");
    assert_eq!(status.code(), Some(0), "a clean drain exits 0");
}
