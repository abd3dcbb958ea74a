//! The API error: every failure a client can see, and its REST rendering
//! (`{"error": {"code", "message"}}` with a fitting status). Internals are logged
//! once here, where the error is handled, and never sent to the client.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::{AuthFailure, Denied, Scope};
use crate::domain::{Field, InputError};
use crate::service::ServiceError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    InvalidInput(#[from] InputError),
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("request body must be JSON: send it with `Content-Type: application/json`")]
    UnsupportedMediaType,
    /// A GraphQL request that is not a GraphQL-over-HTTP request this server takes.
    #[error("{0}")]
    BadRequest(String),
    #[error("{}", .0.message())]
    Unauthenticated(AuthFailure),
    #[error("this credential lacks the `{}` scope", .0.as_str())]
    Forbidden(Scope),
    /// A WebSocket opened by a web page of another origin (docs/SPEC.md §12).
    #[error("WebSocket connections from the origin {0} are not allowed; add it to CORS_ORIGINS")]
    ForeignOrigin(String),
    /// Every subscription socket place is taken (`MAX_SUBSCRIBERS`).
    #[error(
        "this server already holds {max} subscription sockets (MAX_SUBSCRIBERS); try again later"
    )]
    SocketsFull { max: usize },
    #[error("no such route")]
    NotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("the database is unavailable; try again shortly")]
    Unavailable,
    /// A use case failed; whether the client may retry depends on why. The cause is
    /// logged when the answer is made, never sent.
    #[error("{}", service_message(.0))]
    Service(#[from] ServiceError),
    #[error("the request took too long; try again shortly")]
    Timeout,
    #[error("too many requests; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("internal error")]
    Internal,
}

/// What a client is told about a failed use case: its own mistakes in full, the
/// server's in a fixed phrase.
fn service_message(err: &ServiceError) -> String {
    match err {
        ServiceError::Blocked(_) | ServiceError::Refused(_) | ServiceError::NotFound(_) => {
            err.to_string()
        }
        err if err.is_unavailable() => "the database is unavailable; try again shortly".to_owned(),
        _ => "internal error".to_owned(),
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidInput(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::ForeignOrigin(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unavailable | ApiError::Timeout | ApiError::SocketsFull { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Service(err) if err.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Service(ServiceError::Blocked(_)) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Service(ServiceError::Refused(_)) => StatusCode::BAD_REQUEST,
            ApiError::Service(ServiceError::NotFound(_)) => StatusCode::NOT_FOUND,
            ApiError::Service(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable, machine-readable code for the error body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidInput(_) => "INVALID_INPUT",
            ApiError::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            ApiError::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            ApiError::BadRequest(_) => "BAD_REQUEST",
            ApiError::Unauthenticated(_) => "UNAUTHENTICATED",
            ApiError::Forbidden(_) => "FORBIDDEN",
            ApiError::ForeignOrigin(_) => "FORBIDDEN_ORIGIN",
            ApiError::NotFound => "NOT_FOUND",
            ApiError::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ApiError::Unavailable | ApiError::SocketsFull { .. } => "SERVICE_UNAVAILABLE",
            ApiError::Service(err) if err.is_unavailable() => "SERVICE_UNAVAILABLE",
            ApiError::Service(ServiceError::Blocked(_)) => "BLOCKED_VALUE",
            ApiError::Service(ServiceError::Refused(_)) => "BAD_REQUEST",
            ApiError::Service(ServiceError::NotFound(_)) => "NOT_FOUND",
            ApiError::Service(_) => "INTERNAL",
            ApiError::Timeout => "TIMEOUT",
            ApiError::RateLimited { .. } => "RATE_LIMITED",
            ApiError::Internal => "INTERNAL",
        }
    }
}

/// Every REST error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable, e.g. `INVALID_INPUT`.
    pub code: String,
    /// For people; says which field is wrong and why.
    pub message: String,
    /// The request field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    /// The error as a GraphQL-over-HTTP answer: `{"errors": [{message, extensions:
    /// {code}}]}`, with the same status and headers as the REST rendering.
    pub fn into_graphql_response(self) -> Response {
        self.log_cause();
        let body = serde_json::json!({
            "errors": [{
                "message": self.to_string(),
                "extensions": {"code": self.code()},
            }]
        });
        let mut response = (self.status(), Json(body)).into_response();
        if let Some(seconds) = self.retry_after_secs() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }

    /// Logs what the client is not told: the cause of a failed use case. Called
    /// once, where the answer is made.
    fn log_cause(&self) {
        if let ApiError::Service(err) = self
            && self.status().is_server_error()
        {
            if err.is_unavailable() {
                tracing::warn!(error = %err, "database unavailable");
            } else {
                tracing::error!(error = %err, "request failed");
            }
        }
    }

    fn retry_after_secs(&self) -> Option<u64> {
        match self {
            ApiError::Unavailable | ApiError::Timeout => Some(1),
            ApiError::SocketsFull { .. } => Some(5),
            ApiError::Service(err) if err.is_unavailable() => Some(1),
            ApiError::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        }
    }
}

impl ApiError {
    /// The error as one entry of a larger answer (a batch's per-order result).
    pub fn detail(self) -> ErrorDetail {
        self.log_cause();
        ErrorDetail {
            code: self.code().to_owned(),
            message: self.to_string(),
            field: self.field(),
        }
    }

    fn field(&self) -> Option<String> {
        match self {
            ApiError::InvalidInput(InputError { field, .. }) => Some(field.as_str().to_owned()),
            ApiError::Service(ServiceError::Blocked(dropped)) => Some(
                match (dropped.email, dropped.phone) {
                    (true, true) => Field::Body,
                    (true, false) => Field::Email,
                    _ => Field::PhoneNumber,
                }
                .as_str()
                .to_owned(),
            ),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log_cause();
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.to_string(),
                field: self.field(),
            },
        };
        let mut response = (self.status(), Json(body)).into_response();
        if let Some(seconds) = self.retry_after_secs() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let ApiError::Unauthenticated(failure) = self {
            let challenge = if failure == AuthFailure::Missing {
                "Bearer"
            } else {
                "Bearer error=\"invalid_token\""
            };
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

impl From<Denied> for ApiError {
    fn from(denied: Denied) -> Self {
        match denied {
            // Not the credential's fault: the keys could not be read, or this
            // address looked up too many unknown ones.
            Denied::Unauthenticated(AuthFailure::Unavailable) => ApiError::Unavailable,
            Denied::Unauthenticated(AuthFailure::Throttled) => ApiError::RateLimited {
                retry_after_secs: 1,
            },
            Denied::Unauthenticated(failure) => ApiError::Unauthenticated(failure),
            Denied::Forbidden(scope) => ApiError::Forbidden(scope),
        }
    }
}
