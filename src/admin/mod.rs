//! The admin endpoint (`--admin ADDR:PORT`): read-only HTTP for operators.
//!
//! - `/`: the stats page, rendered on the server (it reads fine without
//!   scripts, and a headless browser's DOM holds the data); a small script
//!   of our own swaps in a fresh copy every two seconds.
//! - `/metrics`: Prometheus text, with a series per service and backend.
//! - `/api/v1/status`: the [`status`](crate::status) document as JSON.
//! - `/healthz`: `ok` while the process serves.
//!
//! Nothing is loaded from elsewhere: the page works on an offline LAN.
//! Bound to loopback unless the user says otherwise; on loopback, requests
//! must name a loopback host, so that a web page the operator visits cannot
//! read the mesh's layout through DNS rebinding.

mod listener;
mod metrics;
mod page;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::status::{Document, Observer};

/// Whatever the admin endpoint shows: one node, or the demo's several.
pub trait Source: Send + Sync + 'static {
    fn document(&self) -> Document;
}

impl Source for Observer {
    fn document(&self) -> Document {
        Document::new(vec![self.read()])
    }
}

/// Shared with whoever changes what it shows.
impl<T: Source> Source for Arc<T> {
    fn document(&self) -> Document {
        T::document(self)
    }
}

impl Source for Vec<Observer> {
    fn document(&self) -> Document {
        Document::new(self.iter().map(Observer::read).collect())
    }
}

/// Binds the admin listener (before a namespace move, the demo binds it in
/// the user's namespace and serves it from the demo's).
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

struct App {
    source: Box<dyn Source>,
    /// Only loopback host names are answered (the listener is on loopback).
    loopback_only: bool,
}

/// How long requests in progress get to finish once `stop` is cancelled.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Serves `listener` until `stop` is cancelled. Requests in progress then
/// get [`SHUTDOWN_GRACE`] to finish; idle keep-alive connections are
/// closed, and whatever is left is dropped with the runtime.
pub async fn serve(
    listener: std::net::TcpListener,
    source: impl Source,
    stop: CancellationToken,
) -> io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let loopback_only = listener.local_addr()?.ip().is_loopback();
    let app = Arc::new(App {
        source: Box::new(source),
        loopback_only,
    });
    let router = Router::new()
        .route("/", get(index))
        .route("/page.css", get(css))
        .route("/page.js", get(js))
        .route("/metrics", get(prometheus))
        .route("/api/v1/status", get(api))
        .route("/healthz", get(healthz))
        .with_state(app);
    let server = axum::serve(listener::Limited::new(listener), router)
        .with_graceful_shutdown(stop.clone().cancelled_owned());
    tokio::select! {
        served = server => served,
        () = async {
            stop.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => Ok(()),
    }
}

/// Whether the request's `Host` names this machine's loopback: `localhost`,
/// or a loopback address, with any port.
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Every response: no caching (the data is live), no sniffing, no framing
/// by other sites, scripts and styles from here only.
fn respond(app: &App, headers: &HeaderMap, content_type: &'static str, body: String) -> Response {
    if app.loopback_only && !loopback_host(headers) {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            "the admin endpoint on loopback answers only to localhost or a loopback address\n",
        )
            .into_response();
    }
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'"),
    );
    r
}

async fn index(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let html = page::render(&app.source.document());
    respond(&app, &headers, "text/html; charset=utf-8", html)
}

async fn css(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    respond(&app, &headers, "text/css; charset=utf-8", page::CSS.into())
}

async fn js(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    respond(
        &app,
        &headers,
        "text/javascript; charset=utf-8",
        page::JS.into(),
    )
}

async fn prometheus(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    match metrics::render(app.source.document()) {
        Ok(text) => respond(&app, &headers, metrics::CONTENT_TYPE, text),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn api(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    match serde_json::to_string_pretty(&app.source.document()) {
        Ok(json) => respond(&app, &headers, "application/json", json),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn healthz(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    respond(&app, &headers, "text/plain; charset=utf-8", "ok\n".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_pass() {
        let host = |h: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, HeaderValue::from_str(h).unwrap());
            loopback_host(&m)
        };
        for ok in [
            "localhost",
            "LOCALHOST:9090",
            "127.0.0.1",
            "127.0.0.1:9090",
            "127.3.4.5:1",
            "[::1]:9090",
            "[::1]",
        ] {
            assert!(host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9090",
            "localhost.evil.example",
            "10.0.0.1:9090",
            "[::2]:1",
            "",
        ] {
            assert!(!host(bad), "{bad}");
        }
        assert!(!loopback_host(&HeaderMap::new()), "no Host at all");
    }
}
