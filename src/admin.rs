//! The admin endpoint: `/live`, `/ready`, `/status` (JSON) and `/metrics` (Prometheus text)
//! on a listener of its own, so that probes and scrapes keep working while the main server
//! drains.

use std::convert::Infallible;
use std::future::Future;
use std::net::TcpListener;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use lameduck::Phase;

use crate::metrics::ServerView;

/// Answers the admin routes from a view of the main server.
#[derive(Clone, Debug)]
pub(crate) struct AdminService {
    pub(crate) view: ServerView,
}

impl AdminService {
    fn respond(&self, path: &str) -> Response<Full<Bytes>> {
        let (status, content_type, body) = match path {
            "/live" => (
                StatusCode::OK,
                "text/plain; charset=utf-8",
                "live\n".to_owned(),
            ),
            "/ready" => {
                if self.view.shutdown.phase() == Phase::Running {
                    (
                        StatusCode::OK,
                        "text/plain; charset=utf-8",
                        "ready\n".to_owned(),
                    )
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain; charset=utf-8",
                        format!("not ready: {}\n", self.view.shutdown.phase()),
                    )
                }
            }
            "/status" => (StatusCode::OK, "application/json", self.view.status_json()),
            "/metrics" => (
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.view.prometheus(),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "not found\n".to_owned(),
            ),
        };
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        resp
    }
}

impl<B: Send + 'static> tower_service::Service<Request<B>> for AdminService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        std::future::ready(Ok(self.respond(req.uri().path())))
    }
}

/// Runs the admin endpoint until `stop` resolves. It is a lameduck HTTP server of its own,
/// with a small connection limit and short timeouts; at the limit, idle connections are
/// closed to make room, so clients that hold connections open cannot keep a probe out. Once
/// the main server has stopped, it is told to stop too and given a second to finish.
pub(crate) async fn run(
    listener: TcpListener,
    view: ServerView,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let serve = lameduck::http::serve(listener, AdminService { view })
        .max_connections(64)
        .header_timeout(Duration::from_secs(5))
        .idle_timeout(Duration::from_secs(10))
        .close_idle_at_limit(true)
        .keep_alive_grace(Duration::ZERO)
        .drain_timeout(Duration::from_secs(1));
    let shutdown = serve.shutdown_handle();
    tokio::spawn(async move {
        stop.await;
        shutdown.trigger();
    });
    // The admin server's own lifecycle is not the operator's concern; its logs are muted by
    // the filter set up in main (target `lameduck::server` events inside the `admin` span).
    if let Err(e) = serve.await {
        tracing::error!(error = %e, "admin endpoint failed");
    }
}
