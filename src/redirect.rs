//! `--redirect-http`: a plain-HTTP listener that answers every request with `308 Permanent
//! Redirect` to the same URL over https (308 keeps the method and body, unlike 301).

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, HeaderValue, LOCATION};
use http::{Request, Response, StatusCode};
use http_body_util::Full;

/// Sends every request to `https://HOST[:port]/path?query`.
#[derive(Clone, Debug)]
pub(crate) struct RedirectService {
    /// The HTTPS port, written into the location unless it is 443.
    pub(crate) https_port: u16,
}

impl RedirectService {
    fn respond<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        let host = req
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()));
        // The name without its port; an IPv6 literal keeps its brackets.
        let name = host.as_deref().map(|h| match h.rfind(':') {
            Some(i) if !h[i..].contains(']') => &h[..i],
            _ => h,
        });
        let Some(name) = name.filter(|n| !n.is_empty() && !n.contains(['/', '\\', '@'])) else {
            return text(StatusCode::BAD_REQUEST, "bad request: no usable Host\n");
        };
        let port = if self.https_port == 443 {
            String::new()
        } else {
            format!(":{}", self.https_port)
        };
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let location = format!("https://{name}{port}{path}");
        let Ok(location) = HeaderValue::from_str(&location) else {
            return text(StatusCode::BAD_REQUEST, "bad request\n");
        };
        let mut resp = text(StatusCode::PERMANENT_REDIRECT, "moved to https\n");
        resp.headers_mut().insert(LOCATION, location);
        resp
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

impl<B: Send + 'static> tower_service::Service<Request<B>> for RedirectService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        std::future::ready(Ok(self.respond(&req)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(port: u16, host: &str, uri: &str) -> (StatusCode, Option<String>) {
        let req = Request::get(uri).header(HOST, host).body(()).unwrap();
        let resp = RedirectService { https_port: port }.respond(&req);
        (
            resp.status(),
            resp.headers()
                .get(LOCATION)
                .map(|v| v.to_str().unwrap().to_owned()),
        )
    }

    #[test]
    fn redirects_to_the_same_url_over_https() {
        assert_eq!(
            location(443, "example.com", "/a/b?c=d"),
            (
                StatusCode::PERMANENT_REDIRECT,
                Some("https://example.com/a/b?c=d".into())
            )
        );
        assert_eq!(
            location(8443, "example.com:8080", "/"),
            (
                StatusCode::PERMANENT_REDIRECT,
                Some("https://example.com:8443/".into())
            )
        );
        assert_eq!(
            location(443, "[::1]:80", "/x").1.as_deref(),
            Some("https://[::1]/x")
        );
        assert_eq!(
            location(443, "evil.com/path", "/").0,
            StatusCode::BAD_REQUEST
        );
    }
}
