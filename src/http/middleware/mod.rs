//! What wraps every request: its id, span, log line and metrics (here); the bounds
//! on one request, timeout and body size, and the panic catcher (`limits`); the
//! per-client rate limit (`rate_limit`).

mod auth;
mod limits;
mod rate_limit;

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

pub use auth::authenticate;
pub use limits::{catch_panic, refuse_oversized_body, timeout};
pub(crate) use rate_limit::client_address;
pub use rate_limit::{RateLimitClient, Unpaid, charge_units, rate_limit, rate_limited};

use crate::http::error::ApiError;
use crate::http::state::AppState;

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id, for handlers that record it (the evidence ledger).
#[derive(Debug, Clone, Default)]
pub struct RequestId(pub String);

/// Longest request id accepted from a client; longer ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The client's `x-request-id` when it is a sane token, else a fresh UUID.
fn request_id(request: &Request) -> HeaderValue {
    request
        .headers()
        .get(&REQUEST_ID)
        .filter(|value| {
            let bytes = value.as_bytes();
            !bytes.is_empty()
                && bytes.len() <= MAX_REQUEST_ID_LEN
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(b))
        })
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
                .expect("a UUID is a valid header")
        })
}

/// Gives the request an id (echoed in the response), a span carrying it, one log
/// line when answered, and its place in the metrics.
pub async fn observe(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id(&request);
    request.headers_mut().insert(REQUEST_ID.clone(), id.clone());
    request
        .extensions_mut()
        .insert(RequestId(id.to_str().unwrap_or_default().to_owned()));
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = crate::ops::metrics::method_label(request.method().as_str());
    let span = tracing::info_span!(
        "request",
        request_id = %id.to_str().unwrap_or_default(),
        method = method,
        route = %route,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
        principal = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    let mut response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    span.record("status", status);
    // Hundredths of a millisecond: finer digits are noise in a log line.
    span.record(
        "latency_ms",
        (elapsed.as_secs_f64() * 100_000.0).round() / 100.0,
    );
    span.in_scope(|| {
        if response.status().is_server_error() {
            tracing::warn!("request answered");
        } else {
            tracing::info!("request answered");
        }
    });
    state
        .metrics
        .observe_request(&route, method, status, elapsed);
    response.headers_mut().insert(REQUEST_ID.clone(), id);
    response
}

/// The request's media type, lower-cased and without parameters
/// (`application/json; charset=utf-8` is `application/json`).
pub fn media_type(headers: &axum::http::HeaderMap) -> Option<String> {
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)?
        .to_str()
        .ok()?;
    Some(
        content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

/// The route GraphQL is served on: its errors take GraphQL's shape.
pub const GRAPHQL_PATH: &str = "/graphql";

/// `error` in the shape the route's clients read: GraphQL's `errors` list on
/// `/graphql`, the REST error body elsewhere.
pub fn error_for(path: &str, error: ApiError) -> Response {
    if path == GRAPHQL_PATH {
        error.into_graphql_response()
    } else {
        error.into_response()
    }
}
