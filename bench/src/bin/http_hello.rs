//! A hello route served three ways, for side-by-side HTTP benchmarks:
//! `lameduck` (`lameduck::http::serve`), `axum` (`axum::serve` with
//! `with_graceful_shutdown` on SIGTERM) and `hyper` (a bare hyper-util accept loop).
//!
//! Usage: `http_hello lameduck|axum|hyper ADDR`

use std::convert::Infallible;

use axum::Router;
use axum::routing::get;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

const HELLO: &str = "Hello, world!\n";

fn router() -> Router {
    Router::new().route("/", get(|| async { HELLO }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "lameduck".into());
    let addr: std::net::SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:3000".into())
        .parse()?;
    match which.as_str() {
        "lameduck" => {
            let listener = lameduck::listen::bind(addr)?;
            let serve = lameduck::http::serve(listener, router());
            let _signals = lameduck::signals::install(&serve.shutdown_handle())?;
            let report = serve.await?;
            eprintln!("{report}");
        }
        "axum" => {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            axum::serve(listener, router())
                .with_graceful_shutdown(async {
                    let mut term =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                            .expect("SIGTERM handler");
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                })
                .await?;
        }
        "hyper" => {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            let builder = auto::Builder::new(TokioExecutor::new());
            loop {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                let builder = builder.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(|_req: hyper::Request<Incoming>| async {
                            Ok::<_, Infallible>(hyper::Response::new(http_body_util_full(HELLO)))
                        });
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
        other => return Err(format!("unknown server {other:?}: lameduck, axum or hyper").into()),
    }
    Ok(())
}

fn http_body_util_full(s: &'static str) -> axum::body::Body {
    axum::body::Body::from(s)
}
