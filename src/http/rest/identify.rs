//! `POST /identify`: the original FluxKart contract (docs/SPEC.md §5), parsed strictly,
//! answered by the service.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::identify as service;
use crate::auth::{self, AuthFailure, Authentication, Masking};
use crate::domain::json::parse_body;
use crate::domain::{Field, Identity, InputError, Outcome};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::middleware::RequestId;
use crate::http::state::AppState;

/// The request body, as documented; parsing is done by hand in [`parse_body`](crate::domain::json::parse_body) so
/// that every kind of bad input gets a message naming its field.
#[derive(Debug, ToSchema)]
#[schema(title = "IdentifyRequest")]
#[allow(dead_code)]
pub struct IdentifyRequestBody {
    /// An email address; trimmed and lower-cased. Empty or null counts as absent.
    #[schema(nullable, max_length = 254, example = "mcfly@hillvalley.edu")]
    email: Option<String>,
    /// A phone number as a string or a non-negative integer. Spaces, dashes, dots
    /// and parentheses are dropped; a leading `+` is kept; 1 to 20 digits.
    #[schema(schema_with = phone_number_schema)]
    #[serde(rename = "phoneNumber")]
    phone_number: Option<String>,
}

fn phone_number_schema() -> utoipa::openapi::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    Schema::OneOf(
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .examples(["123456"]),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0)),
            )
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .build(),
    )
}

/// The answer body; `primaryContatctId` (sic) is the original contract's spelling and
/// stays for existing clients.
#[derive(Debug, Serialize, ToSchema)]
pub struct IdentifyResponse {
    pub contact: IdentityBody,
    /// What the call changed (docs/SPEC.md §10.2); an addition to the original
    /// contract, which clients written against it ignore.
    pub outcome: OutcomeBody,
}

/// What one identify changed.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeBody {
    NewPrimary,
    NewSecondary,
    Merged,
    Unchanged,
    /// Nothing was linked: the request would have pushed an identity over a limit
    /// and waits for review; `contact` is the matched identity as it stands.
    Held,
}

impl From<Outcome> for OutcomeBody {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::NewPrimary => OutcomeBody::NewPrimary,
            Outcome::NewSecondary => OutcomeBody::NewSecondary,
            Outcome::Merged => OutcomeBody::Merged,
            Outcome::Unchanged => OutcomeBody::Unchanged,
            Outcome::Held => OutcomeBody::Held,
        }
    }
}

/// One customer identity.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdentityBody {
    /// The primary contact's id, in the original contract's spelling.
    #[serde(rename = "primaryContatctId")]
    pub primary_contatct_id: i32,
    /// The same id, spelt right.
    pub primary_contact_id: i32,
    /// Distinct emails: the primary's first, then in contact order.
    pub emails: Vec<String>,
    /// Distinct phone numbers: the primary's first, then in contact order.
    pub phone_numbers: Vec<String>,
    /// Secondary contact ids in contact order.
    pub secondary_contact_ids: Vec<i32>,
}

impl IdentityBody {
    /// Masks every email and phone; the ids stay exact.
    pub fn mask(&mut self) {
        for email in &mut self.emails {
            *email = auth::mask::email(email);
        }
        for phone in &mut self.phone_numbers {
            *phone = auth::mask::phone(phone);
        }
    }
}

impl IdentifyResponse {
    pub fn new(identity: Identity, outcome: Outcome) -> Self {
        Self {
            outcome: outcome.into(),
            contact: IdentityBody {
                primary_contatct_id: identity.primary_id,
                primary_contact_id: identity.primary_id,
                emails: identity
                    .emails
                    .iter()
                    .map(|e| e.as_str().to_owned())
                    .collect(),
                phone_numbers: identity
                    .phone_numbers
                    .iter()
                    .map(|p| p.as_str().to_owned())
                    .collect(),
                secondary_contact_ids: identity.secondary_ids,
            },
        }
    }
}

/// Links an order's contact details into one customer identity and returns it.
#[utoipa::path(
    post,
    path = "/identify",
    request_body(content = IdentifyRequestBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The merged identity", body = IdentifyResponse),
        (status = 400, description = "Invalid input; `field` names the culprit", body = ErrorBody),
        (status = 401, description = "No valid credential; see WWW-Authenticate", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 403, description = "The credential lacks the identify (or identify:masked) scope", body = ErrorBody),
        (status = 413, description = "Body larger than the limit", body = ErrorBody),
        (status = 415, description = "Body not sent as JSON", body = ErrorBody),
        (status = 422, description = "Every value given is blocked (`BLOCKED_VALUE`); `field` names it", body = ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 500, description = "Internal error, without details", body = ErrorBody),
        (status = 503, description = "Database unavailable or request timed out; see Retry-After",
            body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
    tag = "identify",
    security(("bearer" = ["identify"]))
)]
pub async fn identify(
    State(state): State<AppState>,
    authentication: Option<Extension<Authentication>>,
    request_id: Option<Extension<RequestId>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<IdentifyResponse>, ApiError> {
    // Before anything is read: a refused caller learns nothing and writes nothing.
    let authentication = authentication
        .map(|Extension(authentication)| authentication)
        .unwrap_or(Authentication::Failed(AuthFailure::Missing));
    let masking = authentication.identify_access()?;
    let body = json_body(&headers, body, state.config.body_limit_bytes)?;
    let request = parse_body(&body)?;
    let request_id = request_id.map(|Extension(RequestId(id))| id);
    let identified =
        service::identify(&state.pool, request, state.policy.clone(), request_id).await?;
    state.record_identified(&identified);
    auth::audit_read(
        authentication.name(),
        "identify",
        identified.identity.contacts.len(),
    );
    let mut answer = IdentifyResponse::new(identified.identity, identified.outcome);
    if masking == Masking::Values {
        answer.contact.mask();
    }
    Ok(Json(answer))
}

/// The body of a request sent as JSON, read within `limit` bytes.
pub fn json_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    if !is_json(headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge { limit }
        } else {
            ApiError::InvalidInput(InputError::new(
                Field::Body,
                format!("could not read the request body: {}", rejection.body_text()),
            ))
        }
    })
}

/// `application/json`, or any `application/*+json`, with or without parameters.
fn is_json(headers: &HeaderMap) -> bool {
    crate::http::middleware::media_type(headers).is_some_and(|essence| {
        essence == "application/json"
            || (essence.starts_with("application/") && essence.ends_with("+json"))
    })
}
