//! The per-client rate limit, over the throttle's bounded client table
//! ([`crate::auth::throttle`]).
//!
//! governor's own keyed stores grow with every distinct key until swept, so a flood
//! of requests from distinct addresses (a botnet, spoofed `X-Forwarded-For` through a
//! careless proxy) would grow the table without bound. Here the table holds at most
//! `capacity` clients; clients idle long enough to have a full bucket again are
//! forgotten (a fresh entry would be the same), and while the table is full of
//! recent clients every new one shares a single overflow bucket: the flood throttles
//! itself, and memory stays put.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::error_for;
use crate::auth::throttle::ClientKey;
use crate::auth::{Authentication, Principal};
use crate::http::error::ApiError;
use crate::http::state::AppState;

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
    let principal = match request.extensions().get::<Authentication>() {
        Some(Authentication::Principal(principal)) if principal != &Principal::anonymous() => {
            Some(ClientKey::Principal(principal.id.clone()))
        }
        _ => None,
    };
    let Some(client) = principal.or_else(|| {
        client_address(&request, state.config.trust_forwarded_for).map(ClientKey::Address)
    }) else {
        return next.run(request).await;
    };
    match limiter.check(&client, 1) {
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
#[derive(Debug, Clone)]
pub struct RateLimitClient(pub ClientKey);

/// Why a request's further units of work could not be paid for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unpaid {
    /// More units than the burst allows at once, whatever the client's history.
    OverBurst { burst: f64 },
    /// Not now; the tokens come back after this long.
    Limited(Duration),
}

/// Charges a request that does `units` units of work (each `identify` of a
/// document, each order of a batch) the tokens beyond the one the middleware took.
/// Nothing to pay without a limiter or a client key; a refusal is counted.
pub fn charge_units(
    state: &AppState,
    client: Option<&RateLimitClient>,
    units: usize,
) -> Result<(), Unpaid> {
    let (Some(limiter), Some(RateLimitClient(client))) = (&state.rate_limiter, client) else {
        return Ok(());
    };
    if units <= 1 {
        return Ok(());
    }
    let extra = u32::try_from(units - 1).unwrap_or(u32::MAX);
    if f64::from(extra) + 1.0 > limiter.burst() {
        return Err(Unpaid::OverBurst {
            burst: limiter.burst(),
        });
    }
    limiter.check(client, extra).map_err(|retry_after| {
        state.metrics.observe_rate_limited();
        Unpaid::Limited(retry_after)
    })
}

pub fn rate_limited(retry_after: Duration) -> ApiError {
    ApiError::RateLimited {
        retry_after_secs: retry_after.as_secs_f64().ceil().max(1.0) as u64,
    }
}

pub(crate) fn client_address(request: &Request, trust_forwarded_for: bool) -> Option<IpAddr> {
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
