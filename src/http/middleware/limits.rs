//! The bounds on one request: how long it may take, how large its body may be
//! declared; and what a panicking handler answers.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;

use super::{GRAPHQL_PATH, error_for};
use crate::http::error::ApiError;
use crate::http::state::AppState;

/// Answers 503 when a request outlives the configured timeout. The identify work
/// runs in a task of its own and commits or rolls back regardless.
pub async fn timeout(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    match tokio::time::timeout(state.config.request_timeout(), next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!("request timed out");
            error_for(&path, ApiError::Timeout)
        }
    }
}

/// Answers a panicked handler with 500 `INTERNAL`, in the route's error shape; the
/// panic itself is logged (without its payload, which may hold request data).
pub async fn catch_panic(request: Request, next: Next) -> Response {
    use futures_util::FutureExt;
    let path = request.uri().path().to_owned();
    match std::panic::AssertUnwindSafe(next.run(request))
        .catch_unwind()
        .await
    {
        Ok(response) => response,
        Err(_) => {
            tracing::error!("request handler panicked");
            error_for(&path, ApiError::Internal)
        }
    }
}

/// Answers 413 at once when the declared `Content-Length` is over the route's limit,
/// instead of reading (or waiting for) a body that will be refused anyway. Bodies
/// without a length are cut at the limit by the handlers' extractors.
pub async fn refuse_oversized_body(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let limit = match request.uri().path() {
        GRAPHQL_PATH => state.config.graphql_body_limit_bytes,
        crate::http::rest::batch::PATH => state.config.batch_body_limit_bytes,
        _ => state.config.body_limit_bytes,
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    match declared {
        Some(length) if length > limit as u64 => {
            let error = ApiError::PayloadTooLarge { limit };
            let mut response = error_for(request.uri().path(), error);
            // The unread body would otherwise be drained before the next request.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
        _ => next.run(request).await,
    }
}
