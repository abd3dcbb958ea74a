//! GraphiQL, served from pinned files compiled into the binary (see
//! `assets/graphiql/README.md`): the page works with no internet access.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

const INDEX: &str = include_str!("../../../assets/graphiql/index.html");

/// (file name, content type, bytes) of every asset the page loads.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "init.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../assets/graphiql/init.js"),
    ),
    (
        "page.css",
        "text/css; charset=utf-8",
        include_bytes!("../../../assets/graphiql/page.css"),
    ),
    (
        "graphiql.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../assets/graphiql/graphiql.min.js"),
    ),
    (
        "graphiql.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../../../assets/graphiql/graphiql.min.css"),
    ),
    (
        "react.production.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../assets/graphiql/react.production.min.js"),
    ),
    (
        "react-dom.production.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../assets/graphiql/react-dom.production.min.js"),
    ),
];

/// The page may load its own files and talk to its own origin, nothing else: an
/// injected script or style, a foreign script, or a frame around the page (click-
/// jacking) is refused by the browser. Images and fonts may be `data:` URIs, which
/// GraphiQL's stylesheet uses for its icons.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; font-src 'self' data:; connect-src 'self'; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

pub async fn page() -> Response {
    (
        [(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY)],
        Html(INDEX),
    )
        .into_response()
}

pub async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, bytes)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                // The files are pinned with the binary; a new binary may bring new ones.
                (header::CACHE_CONTROL, "public, max-age=3600"),
            ],
            *bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}
