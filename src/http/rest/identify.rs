//! `POST /identify`: the original FluxKart contract (docs/SPEC.md §5), parsed strictly,
//! answered by the service.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::auth::{self, AuthFailure, Authentication, Masking};
use crate::domain::{Email, Field, IdentifyRequest, Identity, InputError, Outcome, Phone};
use crate::error::{ApiError, ErrorBody};
use crate::middleware::RequestId;
use crate::state::AppState;
use crate::{service, strict_json};

/// The request body, as documented; parsing is done by hand in [`parse_body`] so
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
    crate::middleware::media_type(headers).is_some_and(|essence| {
        essence == "application/json"
            || (essence.starts_with("application/") && essence.ends_with("+json"))
    })
}

/// Parses `{"email"?: string|null, "phoneNumber"?: string|integer|null}`; other
/// fields are ignored.
pub fn parse_body(body: &[u8]) -> Result<IdentifyRequest, InputError> {
    let value =
        strict_json::from_slice(body).map_err(|err| {
            match strict_json::duplicated_key(&err).as_deref() {
                Some(key @ ("email" | "phoneNumber")) => InputError::new(
                    if key == "email" {
                        Field::Email
                    } else {
                        Field::PhoneNumber
                    },
                    format!("{key} is given more than once; send each field once"),
                ),
                _ => InputError::new(
                    Field::Body,
                    format!("request body is not valid JSON: {err}"),
                ),
            }
        })?;
    let Value::Object(fields) = value else {
        return Err(InputError::new(
            Field::Body,
            format!(
                "request body must be a JSON object, got {}",
                json_kind(&value)
            ),
        ));
    };
    parse_fields(&fields)
}

/// An order's fields: `email` and `phoneNumber`, each possibly absent or null;
/// other fields are ignored.
pub fn parse_fields(
    fields: &serde_json::Map<String, Value>,
) -> Result<IdentifyRequest, InputError> {
    let email = match fields.get("email") {
        None | Some(Value::Null) => None,
        Some(Value::String(raw)) => Email::parse(raw)?,
        Some(other) => {
            return Err(InputError::new(
                Field::Email,
                format!("email must be a string or null, got {}", json_kind(other)),
            ));
        }
    };
    let phone = match fields.get("phoneNumber") {
        None | Some(Value::Null) => None,
        Some(Value::String(raw)) => Phone::parse(raw)?,
        Some(Value::Number(number)) => match number.as_u64() {
            Some(value) => Some(Phone::from_integer(value)),
            None => {
                return Err(InputError::new(
                    Field::PhoneNumber,
                    "phoneNumber given as a number must be a non-negative integer",
                ));
            }
        },
        Some(other) => {
            return Err(InputError::new(
                Field::PhoneNumber,
                format!(
                    "phoneNumber must be a string, a non-negative integer or null, got {}",
                    json_kind(other)
                ),
            ));
        }
    };
    IdentifyRequest::new(email, phone)
}

pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(body: &str) -> Field {
        parse_body(body.as_bytes()).unwrap_err().field
    }

    #[test]
    fn phone_as_integer_or_string_is_the_same_phone() {
        let a = parse_body(br#"{"phoneNumber": 123456}"#).unwrap();
        let b = parse_body(br#"{"phoneNumber": "123456"}"#).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn wrong_types_name_the_field() {
        assert_eq!(field_of(r#"{"email": 5}"#), Field::Email);
        assert_eq!(field_of(r#"{"email": true}"#), Field::Email);
        assert_eq!(field_of(r#"{"email": ["a@b"]}"#), Field::Email);
        assert_eq!(field_of(r#"{"phoneNumber": -1}"#), Field::PhoneNumber);
        assert_eq!(field_of(r#"{"phoneNumber": 1.5}"#), Field::PhoneNumber);
        assert_eq!(field_of(r#"{"phoneNumber": 1e400}"#), Field::Body);
        assert_eq!(field_of(r#"{"phoneNumber": {}}"#), Field::PhoneNumber);
        assert_eq!(field_of(r#"[]"#), Field::Body);
        assert_eq!(field_of(r#"{"#), Field::Body);
        assert_eq!(
            field_of(r#"{"email": null, "phoneNumber": ""}"#),
            Field::Body
        );
    }

    #[test]
    fn repeated_fields_are_refused_not_last_wins() {
        assert_eq!(
            field_of(r#"{"email": "a@b.c", "email": "d@e.f"}"#),
            Field::Email
        );
        assert_eq!(
            field_of(r#"{"phoneNumber": "1", "phoneNumber": 2}"#),
            Field::PhoneNumber
        );
        assert_eq!(
            field_of(r#"{"x": 1, "x": 1, "email": "a@b.c"}"#),
            Field::Body
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        assert!(parse_body(br#"{"email": "a@b.c", "extra": [1, 2]}"#).is_ok());
    }
}
