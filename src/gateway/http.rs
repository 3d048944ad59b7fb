//! Plain HTTP routes: health, readiness, the chat page and the `chatfleet.js` client library.
//!
//! The page and the library are static files compiled into the binary (`static/`), so a gateway
//! serves them with no file system and every gateway serves the same build. They are sent with
//! `Cache-Control: no-cache`: browsers revalidate, so a deploy never leaves a tab mixing an old
//! page with a new library.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::App;

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// Every static file: URL path, content type, contents.
const STATIC_FILES: &[(&str, &str, &str)] = &[
    ("/", HTML, include_str!("static/index.html")),
    ("/ui/app.css", CSS, include_str!("static/ui/app.css")),
    ("/ui/app.js", JS, include_str!("static/ui/app.js")),
    ("/ui/announce.js", JS, include_str!("static/ui/announce.js")),
    ("/ui/markdown.js", JS, include_str!("static/ui/markdown.js")),
    ("/ui/sessions.js", JS, include_str!("static/ui/sessions.js")),
    ("/ui/view.js", JS, include_str!("static/ui/view.js")),
    ("/chatfleet.js", JS, include_str!("static/chatfleet.js")),
    ("/chatfleet/common.js", JS, include_str!("static/chatfleet/common.js")),
    ("/chatfleet/order.js", JS, include_str!("static/chatfleet/order.js")),
    ("/chatfleet/outbox.js", JS, include_str!("static/chatfleet/outbox.js")),
    ("/chatfleet/persist.js", JS, include_str!("static/chatfleet/persist.js")),
    ("/chatfleet/power.js", JS, include_str!("static/chatfleet/power.js")),
    ("/chatfleet/transports.js", JS, include_str!("static/chatfleet/transports.js")),
    // The page's Markdown renderer, as published on npm (web/vendor-markdown-it), and its licence.
    (
        "/vendor/markdown-it/markdown-it.esm.min.mjs",
        JS,
        include_str!("static/vendor/markdown-it/markdown-it.esm.min.mjs"),
    ),
    ("/vendor/markdown-it/LICENSE", TEXT, include_str!("static/vendor/markdown-it/LICENSE")),
];

pub(super) fn router() -> Router<App> {
    let files = STATIC_FILES.iter().fold(Router::new(), |r, &(path, content_type, body)| {
        r.route(path, get(move || async move { static_file(content_type, body) }))
    });
    files.route("/healthz", get(healthz)).route("/readyz", get(readyz))
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, "no-cache"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    (headers, body).into_response()
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

#[cfg(test)]
mod tests {
    use super::STATIC_FILES;

    /// A file added under `static/` but not to the table would be a 404 for the page.
    #[test]
    fn every_static_file_is_served_with_its_type() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/gateway/static");
        let mut on_disk = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    on_disk.push(format!("/{}", path.strip_prefix(&root).unwrap().to_str().unwrap()));
                }
            }
        }
        let mut served: Vec<String> =
            STATIC_FILES.iter().map(|(p, _, _)| if *p == "/" { "/index.html".into() } else { p.to_string() }).collect();
        on_disk.sort();
        served.sort();
        assert_eq!(on_disk, served);
        for (path, content_type, _) in STATIC_FILES {
            let name = path.rsplit('/').next().unwrap();
            let ext = if *path == "/" { "html" } else { name.rsplit_once('.').map_or("", |(_, ext)| ext) };
            let want = match ext {
                "html" => "text/html",
                "js" | "mjs" => "text/javascript",
                "css" => "text/css",
                "" if name == "LICENSE" => "text/plain",
                other => panic!("no content type for .{other}"),
            };
            assert!(content_type.starts_with(want), "{path}: {content_type}");
        }
    }
}
