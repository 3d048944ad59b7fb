//! `GET /v1/models`: the model names routing accepts. A send may name any model; the ones listed
//! are those `[[routing.rules]]` route by name, and the first upstream of `routing.default`
//! (which answers every other name).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::error::refused;
use crate::gateway::{rest, App};

pub(in crate::gateway) async fn list(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Err(e) = rest::caller(&app, &headers).await {
        return refused(e);
    }
    let routing = &app.settings.routing;
    let mut names: Vec<&str> = routing.default.first().map(String::as_str).into_iter().collect();
    for m in routing.rules.iter().filter_map(|r| r.model.as_deref()) {
        if !names.contains(&m) {
            names.push(m);
        }
    }
    let data: Vec<_> =
        names.iter().map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "chatfleet"})).collect();
    Json(json!({"object": "list", "data": data})).into_response()
}
