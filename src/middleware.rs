//! What wraps every request: its id, span, log line and metrics; the request
//! timeout; the per-client rate limit.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::app::AppState;
use crate::error::ApiError;

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

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
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = crate::metrics::method_label(request.method().as_str());
    let span = tracing::info_span!(
        "request",
        request_id = %id.to_str().unwrap_or_default(),
        method = method,
        route = %route,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
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
    let limit = if request.uri().path() == GRAPHQL_PATH {
        state.config.graphql_body_limit_bytes
    } else {
        state.config.body_limit_bytes
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

/// Refuses clients over their rate with 429 and `Retry-After`. Probes and metrics
/// are never limited, so an orchestrator cannot be locked out.
pub async fn rate_limit(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(limiter) = &state.rate_limiter else {
        return next.run(request).await;
    };
    if matches!(request.uri().path(), "/healthz" | "/readyz" | "/metrics") {
        return next.run(request).await;
    }
    let Some(client) = client_address(&request, state.config.trust_forwarded_for) else {
        return next.run(request).await;
    };
    match limiter.check(client, 1, Instant::now()) {
        Ok(()) => {
            // A handler whose request does several operations takes more tokens.
            request.extensions_mut().insert(RateLimitClient(client));
            next.run(request).await
        }
        Err(retry_after) => {
            state.metrics.observe_rate_limited();
            error_for(request.uri().path(), rate_limited(retry_after))
        }
    }
}

/// The rate-limit key of the request, for handlers that charge extra tokens.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitClient(pub IpAddr);

pub fn rate_limited(retry_after: Duration) -> ApiError {
    ApiError::RateLimited {
        retry_after_secs: retry_after.as_secs_f64().ceil().max(1.0) as u64,
    }
}

fn client_address(request: &Request, trust_forwarded_for: bool) -> Option<IpAddr> {
    if trust_forwarded_for
        && let Some(forwarded) = request
            .headers()
            .get("x-forwarded-for")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.rsplit(',').next())
            .and_then(|last| last.trim().parse().ok())
    {
        return Some(forwarded);
    }
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| address.ip())
}

/// A token bucket per client address.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Past this many tracked clients, full buckets are forgotten (they equal new ones).
const MAX_TRACKED_CLIENTS: usize = 10_000;

impl RateLimiter {
    /// `None` when `per_second` is not positive: rate limiting is off.
    pub fn new(per_second: f64, burst: Option<u32>) -> Option<Self> {
        (per_second > 0.0 && per_second.is_finite()).then(|| Self {
            per_second,
            burst: burst.map(f64::from).unwrap_or(per_second.ceil()).max(1.0),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Most tokens one client can hold, so the most one request can take.
    pub fn burst(&self) -> f64 {
        self.burst
    }

    /// Takes `tokens` tokens for `client` (all or none), or says how long until they
    /// are available.
    pub fn check(&self, client: IpAddr, tokens: u32, now: Instant) -> Result<(), Duration> {
        let tokens = f64::from(tokens);
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() >= MAX_TRACKED_CLIENTS {
            let refill_time = Duration::from_secs_f64(self.burst / self.per_second);
            buckets.retain(|_, bucket| now.duration_since(bucket.updated) < refill_time);
        }
        let bucket = buckets.entry(client).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let refill = now.duration_since(bucket.updated).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= tokens {
            bucket.tokens -= tokens;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (tokens.min(self.burst) - bucket.tokens).max(0.0) / self.per_second,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_the_rate() {
        let limiter = RateLimiter::new(2.0, Some(3)).unwrap();
        let client: IpAddr = "127.0.0.1".parse().unwrap();
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check(client, 1, start).is_ok());
        }
        let wait = limiter.check(client, 1, start).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6);
        assert!(
            limiter
                .check(client, 1, start + Duration::from_millis(500))
                .is_ok()
        );
        // Other clients have buckets of their own.
        assert!(limiter.check("10.0.0.1".parse().unwrap(), 1, start).is_ok());
    }

    #[test]
    fn several_tokens_are_taken_all_or_none() {
        let limiter = RateLimiter::new(1.0, Some(5)).unwrap();
        let client: IpAddr = "127.0.0.1".parse().unwrap();
        let start = Instant::now();
        assert!(limiter.check(client, 4, start).is_ok());
        assert!(limiter.check(client, 2, start).is_err(), "only 1 left");
        assert!(limiter.check(client, 1, start).is_ok());
    }

    #[test]
    fn zero_rate_means_off() {
        assert!(RateLimiter::new(0.0, None).is_none());
        assert!(RateLimiter::new(f64::NAN, None).is_none());
    }
}
