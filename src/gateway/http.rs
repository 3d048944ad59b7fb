//! Plain HTTP routes: health, readiness and the chat page.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::App;

/// The chat page, compiled in.
const INDEX_HTML: &str = include_str!("static/index.html");

pub(super) fn router() -> Router<App> {
    Router::new().route("/", get(index)).route("/healthz", get(healthz)).route("/readyz", get(readyz))
}

async fn index() -> Response {
    ([(header::CACHE_CONTROL, "no-cache")], Html(INDEX_HTML)).into_response()
}

/// Alive: the process answers.
async fn healthz() -> &'static str {
    "ok"
}

/// Ready: not draining, Redis answers, and this build's functions are loaded.
async fn readyz(State(app): State<App>) -> Response {
    if app.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    if !app.store.redis().ping().await {
        return (StatusCode::SERVICE_UNAVAILABLE, "redis unreachable").into_response();
    }
    if !app.store.redis().functions_loaded().await {
        return (StatusCode::SERVICE_UNAVAILABLE, "functions not loaded").into_response();
    }
    "ready".into_response()
}
