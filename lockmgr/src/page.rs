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
    /// Its heartbeat interval and lease, to judge a server's heartbeat age.
    pub heartbeat_ms: u64,
    pub lease_ms: u64,
    /// The cluster as the active lock manager sees it; None if it could not
    /// be asked (`error` says why).
    pub status: Option<Status>,
    pub error: Option<String>,
}

/// Serve the page and `/status.json` (what `state` gives at each request)
/// on `listener` until the process ends.
pub async fn serve<F, Fut>(listener: tokio::net::TcpListener, state: F)
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = PageState> + Send + 'static,
{
    use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName};
    use axum::routing::get;
    type Headers = [(HeaderName, &'static str); 5];
    // Nothing from elsewhere, no framing by other sites, no type guessing.
    let headers = |kind: &'static str| -> Headers {
        [
            (CONTENT_TYPE, kind),
            (CACHE_CONTROL, "no-store"),
            (HeaderName::from_static("content-security-policy"), "default-src 'self'; frame-ancestors 'none'"),
            (HeaderName::from_static("x-content-type-options"), "nosniff"),
            (HeaderName::from_static("x-frame-options"), "DENY"),
        ]
    };
    let json = move || {
        let state = state.clone();
        async move {
            let body = serde_json::to_string(&state().await).unwrap_or_else(|e| format!("{{\"error\":\"cannot encode the status: {e}\"}}"));
            (headers("application/json"), body)
        }
    };
    let app = axum::Router::new()
        .route("/", get(move || async move { (headers("text/html; charset=utf-8"), HTML) }))
        .route("/page.css", get(move || async move { (headers("text/css; charset=utf-8"), CSS) }))
        .route("/page.js", get(move || async move { (headers("text/javascript; charset=utf-8"), JS) }))
        .route("/status.json", get(json))
        .route("/health", get(|| async { "ok\n" }));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "page: the endpoint stopped: {e}");
    }
}
