//! The live page a lock manager serves with `--http ADDR`: the slot and
//! partition map, the servers with their health, and the last handovers
//! drawn as bars, step by step.
//!
//! Three static files (`page.html`, `page.css`, `page.js`, compiled in)
//! and `/status.json`, which the script polls twice a second: no
//! framework, no build step, nothing fetched from elsewhere (the
//! Content-Security-Policy says so). Every lock manager serves it: the
//! active one from its core, a standby by asking the active one (so a page
//! left open on a standby lives through a lock-manager failover).

use std::future::Future;

use serde::Serialize;

use crate::core::Status;

const HTML: &str = include_str!("page/page.html");
const CSS: &str = include_str!("page/page.css");
const JS: &str = include_str!("page/page.js");

/// What `/status.json` answers.
#[derive(Clone, Debug, Serialize)]
pub struct PageState {
    /// "active" or "standby": the lock manager serving this page.
    pub role: &'static str,
    /// Its own address (the lock-manager protocol's).
    pub addr: String,
    /// The lock managers' current term, as the volume's lease word says
    /// (None if it could not be read): the page files handovers by it.
    pub term: Option<u32>,
    /// Its heartbeat interval and lease, to judge a server's heartbeat age.
    pub heartbeat_ms: u64,
    pub lease_ms: u64,
    /// The cluster as the active lock manager sees it; None if it could not
    /// be asked (`error` says why).
    pub status: Option<Status>,
    pub error: Option<String>,
}

/// Whether a request's `Host` names this machine by address (an IP
/// literal, with or without a port) or `localhost`: a page from elsewhere
/// that rebinds its own DNS name to this address sends that name, and is
/// refused.
pub fn host_allowed(host: Option<&str>) -> bool {
    let Some(host) = host else { return false };
    if let Ok(a) = host.parse::<std::net::SocketAddr>() {
        return !a.ip().is_unspecified();
    }
    let name = match host.rsplit_once(':') {
        Some((n, port)) if port.parse::<u16>().is_ok() => n,
        _ => host,
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok() || {
        // [v6] without a port.
        name.strip_prefix('[').and_then(|n| n.strip_suffix(']')).is_some_and(|n| n.parse::<std::net::Ipv6Addr>().is_ok())
    }
}

/// Serve the page and `/status.json` (what `state` gives at each request)
/// on `listener` until the process ends.
pub async fn serve<F, Fut>(listener: tokio::net::TcpListener, state: F)
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = PageState> + Send + 'static,
{
    use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, HOST, HeaderName};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;
    // Nothing from elsewhere, no framing by other sites, no type guessing.
    let answer = |headers: &HeaderMap, kind: &'static str, body: String| -> Response {
        if !host_allowed(headers.get(HOST).and_then(|h| h.to_str().ok())) {
            return (StatusCode::MISDIRECTED_REQUEST, "name this host by its IP address or localhost\n").into_response();
        }
        (
            [
                (CONTENT_TYPE, kind),
                (CACHE_CONTROL, "no-store"),
                (HeaderName::from_static("content-security-policy"), "default-src 'self'; frame-ancestors 'none'"),
                (HeaderName::from_static("x-content-type-options"), "nosniff"),
                (HeaderName::from_static("x-frame-options"), "DENY"),
            ],
            body,
        )
            .into_response()
    };
    let json = move |headers: HeaderMap| {
        let state = state.clone();
        async move {
            if !host_allowed(headers.get(HOST).and_then(|h| h.to_str().ok())) {
                return answer(&headers, "application/json", String::new());
            }
            let body = serde_json::to_string(&state().await)
                .unwrap_or_else(|e| serde_json::json!({ "error": format!("cannot encode the status: {e}") }).to_string());
            answer(&headers, "application/json", body)
        }
    };
    let file =
        move |kind: &'static str, body: &'static str| move |headers: HeaderMap| async move { answer(&headers, kind, body.to_owned()) };
    let app = axum::Router::new()
        .route("/", get(file("text/html; charset=utf-8", HTML)))
        .route("/page.css", get(file("text/css; charset=utf-8", CSS)))
        .route("/page.js", get(file("text/javascript; charset=utf-8", JS)))
        .route("/status.json", get(json))
        .route("/health", get(|| async { "ok\n" }));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "page: the endpoint stopped: {e}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_an_address_or_localhost_may_name_the_host() {
        for ok in ["127.0.0.1:8080", "127.0.0.1", "localhost:8080", "LOCALHOST", "[::1]:8080", "[::1]", "10.0.0.7:80"] {
            assert!(super::host_allowed(Some(ok)), "{ok}");
        }
        for bad in ["evil.example:8080", "evil.example", "127.0.0.1.nip.io", "", "0.0.0.0:8080", "localhost.evil:80", "[::1"] {
            assert!(!super::host_allowed(Some(bad)), "{bad}");
        }
        assert!(!super::host_allowed(None));
    }
}
