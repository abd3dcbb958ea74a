//! `POST /identify/batch` (docs/SPEC.md §13): many orders in one request, applied in
//! turn as single calls would apply them, committed together.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::{Extension, Json};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::identify::{IdentifyResponse, json_body};
use crate::app::batch;
use crate::auth::{self, AuthFailure, Authentication, Masking};
use crate::domain::json as strict_json;
use crate::domain::json::{json_kind, parse_fields};
use crate::domain::{Field, IdentifyRequest, InputError};
use crate::http::error::{ApiError, ErrorBody, ErrorDetail};
use crate::http::middleware::{RateLimitClient, RequestId, Unpaid, charge_units, rate_limited};
use crate::http::state::AppState;

pub const PATH: &str = "/identify/batch";

/// The request body, as documented; parsed by hand so that each order's mistake is
/// that order's error.
#[derive(Debug, ToSchema)]
#[schema(title = "IdentifyBatchRequest")]
#[allow(dead_code)]
pub struct IdentifyBatchRequestBody {
    /// The orders, applied in this order; at most `BATCH_MAX_ORDERS` (1000). Each
    /// is an object read as an `IdentifyRequest`: an order whose fields are not a
    /// valid one gets its own error in the results and the others apply; an order
    /// that is not an object makes the whole body a bad batch.
    #[schema(value_type = Vec<Object>)]
    orders: Vec<Value>,
}

/// One result per order, in the orders' order.
#[derive(Debug, Serialize, ToSchema)]
pub struct IdentifyBatchResponse {
    pub results: Vec<OrderResult>,
}

/// What one order gave: the identity a single call would have answered with, or
/// why the order changed nothing.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum OrderResult {
    Identified(IdentifyResponse),
    Failed { error: ErrorDetail },
}

/// Links many orders at once: the result of sending each to `POST /identify` in
/// turn, committed together.
#[utoipa::path(
    post,
    path = "/identify/batch",
    request_body(content = IdentifyBatchRequestBody, content_type = "application/json"),
    responses(
        (status = 200, description = "One result per order: the identity, or the order's error (`INVALID_INPUT`, `BLOCKED_VALUE`); the valid orders were applied", body = IdentifyBatchResponse),
        (status = 400, description = "Not a batch: the body is not `{\"orders\": [...]}`, or has too many orders", body = ErrorBody),
        (status = 401, description = "No valid credential; see WWW-Authenticate", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 403, description = "The credential lacks the identify (or identify:masked) scope", body = ErrorBody),
        (status = 413, description = "Body larger than the limit", body = ErrorBody),
        (status = 415, description = "Body not sent as JSON", body = ErrorBody),
        (status = 429, description = "Rate limited (a batch costs one token per order); see Retry-After", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 500, description = "Internal error, without details", body = ErrorBody),
        (status = 503, description = "Database unavailable or request timed out; see Retry-After",
            body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
    tag = "identify",
    security(("bearer" = ["identify"]))
)]
pub async fn identify_batch(
    State(state): State<AppState>,
    authentication: Option<Extension<Authentication>>,
    request_id: Option<Extension<RequestId>>,
    client: Option<Extension<RateLimitClient>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<IdentifyBatchResponse>, ApiError> {
    let authentication = authentication
        .map(|Extension(authentication)| authentication)
        .unwrap_or(Authentication::Failed(AuthFailure::Missing));
    let masking = authentication.identify_access()?;
    let body = json_body(&headers, body, state.config.batch_body_limit_bytes)?;
    let orders = parse_orders(&body, state.config.batch_max_orders as usize)?;
    charge_rate_limit(&state, client, orders.len())?;

    let valid: Vec<IdentifyRequest> = orders.iter().filter_map(|o| o.clone().ok()).collect();
    let request_id = request_id.map(|Extension(RequestId(id))| id);
    let mut applied = if valid.is_empty() {
        Vec::new()
    } else {
        batch::identify_batch(
            &state.pool,
            &state.batches,
            valid,
            state.policy.clone(),
            request_id,
        )
        .await?
    }
    .into_iter();
    let mut contacts_read = 0;
    let results = orders
        .into_iter()
        .map(|order| match order {
            Err(error) => OrderResult::Failed {
                error: ApiError::InvalidInput(error).detail(),
            },
            Ok(_) => match applied.next() {
                Some(Ok(identified)) => {
                    state.record_identified(&identified);
                    contacts_read += identified.identity.contacts.len();
                    let mut answer = IdentifyResponse::new(identified.identity, identified.outcome);
                    if masking == Masking::Values {
                        answer.contact.mask();
                    }
                    OrderResult::Identified(answer)
                }
                Some(Err(err)) => OrderResult::Failed {
                    error: ApiError::Service(err).detail(),
                },
                None => OrderResult::Failed {
                    error: ApiError::Internal.detail(),
                },
            },
        })
        .collect();
    auth::audit_read(authentication.name(), "identify_batch", contacts_read);
    Ok(Json(IdentifyBatchResponse { results }))
}

/// `{"orders": [order, ...]}`: each order parsed as `POST /identify` parses its body,
/// its mistakes kept as its result; the batch itself must be well-formed.
fn parse_orders(
    body: &[u8],
    max_orders: usize,
) -> Result<Vec<Result<IdentifyRequest, InputError>>, ApiError> {
    let invalid = |message: String| ApiError::InvalidInput(InputError::new(Field::Body, message));
    let value = strict_json::from_slice(body)
        .map_err(|err| invalid(format!("request body is not valid JSON: {err}")))?;
    let Some(orders) = value.as_object().and_then(|body| body.get("orders")) else {
        return Err(invalid(
            "request body must be a JSON object with an `orders` array".to_owned(),
        ));
    };
    let Value::Array(orders) = orders else {
        return Err(invalid(format!(
            "orders must be an array, got {}",
            json_kind(orders)
        )));
    };
    if orders.len() > max_orders {
        return Err(invalid(format!(
            "a batch holds at most {max_orders} orders (BATCH_MAX_ORDERS), got {}",
            orders.len()
        )));
    }
    orders
        .iter()
        .enumerate()
        .map(|(index, order)| match order {
            Value::Object(fields) => Ok(parse_fields(fields)),
            other => Err(invalid(format!(
                "order {index} must be a JSON object, got {}",
                json_kind(other)
            ))),
        })
        .collect()
}

/// A batch costs one rate-limit token per order; the request paid one already.
fn charge_rate_limit(
    state: &AppState,
    client: Option<Extension<RateLimitClient>>,
    orders: usize,
) -> Result<(), ApiError> {
    let client = client.map(|Extension(client)| client);
    charge_units(state, client.as_ref(), orders).map_err(|unpaid| match unpaid {
        Unpaid::OverBurst { burst } => ApiError::InvalidInput(InputError::new(
            Field::Body,
            format!(
                "the batch holds {orders} orders, more than the rate limit's burst of {burst} \
                 allows at once; send smaller batches"
            ),
        )),
        Unpaid::Limited(retry_after) => rate_limited(retry_after),
    })
}
