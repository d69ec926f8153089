//! axum's `ConnectInfo<SocketAddr>` extractor under `lameduck::http::serve` (feature `axum`),
//! with the router as it is, no `into_make_service_with_connect_info` needed.

use std::future::IntoFuture as _;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_info_gives_the_peer_address() {
    let listener = lameduck::listen::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route(
        "/whoami",
        get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { format!("{peer}\n") }),
    );
    let serve = lameduck::http::serve(listener, app);
    let shutdown = serve.shutdown_handle();
    let task = tokio::spawn(serve.into_future());

    let mut s = TcpStream::connect(addr).await.unwrap();
    let me = s.local_addr().unwrap();
    s.write_all(b"GET /whoami HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    timeout(WAIT, s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with(&format!("\r\n\r\n{me}\n")), "{out}");
    shutdown.trigger();
    timeout(WAIT, task).await.unwrap().unwrap().unwrap();
}
