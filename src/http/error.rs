//! The API error: every failure a client can see, the one table of its codes
//! ([`Code`]: REST code, GraphQL code, HTTP status), and its REST rendering
//! (`{"error": {"code", "message", "field"}}`). Internals are logged once here, where
//! the error is handled, and never sent to the client.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::error::{ErrorKind, ServiceError};
use crate::auth::{AuthFailure, Denied, Scope};
use crate::domain::{Field, InputError};

/// Declares [`Code`] and its table: variant, REST name, GraphQL name, HTTP status.
macro_rules! codes {
    ($($(#[$doc:meta])* $variant:ident => $rest:literal, $graphql:literal, $status:ident;)+) => {
        /// Every code a client can meet, with its REST name, its GraphQL name
        /// (`extensions.code`) and the HTTP status of a REST answer. This is the
        /// error table of docs/SPEC.md §5–§6; nothing else names a code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Code {
            $($(#[$doc])* $variant,)+
        }

        impl Code {
            /// REST name, GraphQL name, HTTP status.
            const fn entry(self) -> (&'static str, &'static str, StatusCode) {
                match self {
                    $(Code::$variant => ($rest, $graphql, StatusCode::$status),)+
                }
            }
        }
    };
}

codes! {
    InvalidInput => "INVALID_INPUT", "BAD_USER_INPUT", BAD_REQUEST;
    PayloadTooLarge => "PAYLOAD_TOO_LARGE", "PAYLOAD_TOO_LARGE", PAYLOAD_TOO_LARGE;
    UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE", "UNSUPPORTED_MEDIA_TYPE", UNSUPPORTED_MEDIA_TYPE;
    /// A request that cannot apply as asked, or not a GraphQL-over-HTTP request.
    BadRequest => "BAD_REQUEST", "BAD_USER_INPUT", BAD_REQUEST;
    Unauthenticated => "UNAUTHENTICATED", "UNAUTHENTICATED", UNAUTHORIZED;
    Forbidden => "FORBIDDEN", "FORBIDDEN", FORBIDDEN;
    ForbiddenOrigin => "FORBIDDEN_ORIGIN", "FORBIDDEN_ORIGIN", FORBIDDEN;
    NotFound => "NOT_FOUND", "NOT_FOUND", NOT_FOUND;
    MethodNotAllowed => "METHOD_NOT_ALLOWED", "METHOD_NOT_ALLOWED", METHOD_NOT_ALLOWED;
    BlockedValue => "BLOCKED_VALUE", "BLOCKED_VALUE", UNPROCESSABLE_ENTITY;
    RateLimited => "RATE_LIMITED", "RATE_LIMITED", TOO_MANY_REQUESTS;
    ServiceUnavailable => "SERVICE_UNAVAILABLE", "SERVICE_UNAVAILABLE", SERVICE_UNAVAILABLE;
    Timeout => "TIMEOUT", "TIMEOUT", SERVICE_UNAVAILABLE;
    Internal => "INTERNAL", "INTERNAL", INTERNAL_SERVER_ERROR;
    /// GraphQL only: the document is not GraphQL (Apollo's code).
    GraphqlParseFailed => "GRAPHQL_PARSE_FAILED", "GRAPHQL_PARSE_FAILED", BAD_REQUEST;
    /// GraphQL only: the document does not fit the schema (Apollo's code).
    GraphqlValidationFailed => "GRAPHQL_VALIDATION_FAILED", "GRAPHQL_VALIDATION_FAILED", BAD_REQUEST;
    /// GraphQL only: a change-event cursor from before what retention kept.
    CursorExpired => "CURSOR_EXPIRED", "CURSOR_EXPIRED", GONE;
    /// GraphQL only: an answer over `GRAPHQL_MAX_RESPONSE_BYTES`.
    ResponseTooLarge => "RESPONSE_TOO_LARGE", "RESPONSE_TOO_LARGE", INTERNAL_SERVER_ERROR;
}

impl Code {
    pub const fn rest(self) -> &'static str {
        self.entry().0
    }

    pub const fn graphql(self) -> &'static str {
        self.entry().1
    }

    pub const fn status(self) -> StatusCode {
        self.entry().2
    }

    /// How GraphQL names a request field: the input as a whole is `input` where REST
    /// calls it the `body`.
    pub fn graphql_field(field: Field) -> &'static str {
        match field {
            Field::Body => "input",
            field => field.as_str(),
        }
    }
}

impl Code {
    /// A GraphQL error with this code and `message`.
    pub fn error(self, message: impl Into<String>) -> async_graphql::Error {
        use async_graphql::ErrorExtensions;
        async_graphql::Error::new(message.into())
            .extend_with(|_, extensions| extensions.set("code", self.graphql()))
    }

    /// A GraphQL client error about the argument (or input field) `field`.
    pub fn argument_error(self, field: &str, message: impl Into<String>) -> async_graphql::Error {
        use async_graphql::ErrorExtensions;
        self.error(message)
            .extend_with(|_, extensions| extensions.set("field", field))
    }
}

impl From<ErrorKind> for Code {
    fn from(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::Refused => Code::BadRequest,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::BlockedValue => Code::BlockedValue,
            ErrorKind::Unavailable => Code::ServiceUnavailable,
            ErrorKind::Internal => Code::Internal,
        }
    }
}

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
pub fn service_message(err: &ServiceError) -> String {
    match err.kind() {
        ErrorKind::BlockedValue | ErrorKind::Refused | ErrorKind::NotFound => err.to_string(),
        ErrorKind::Unavailable => "the database is unavailable; try again shortly".to_owned(),
        ErrorKind::Internal => "internal error".to_owned(),
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        self.code().status()
    }

    /// Its entry in the error table.
    pub fn code(&self) -> Code {
        match self {
            ApiError::InvalidInput(_) => Code::InvalidInput,
            ApiError::PayloadTooLarge { .. } => Code::PayloadTooLarge,
            ApiError::UnsupportedMediaType => Code::UnsupportedMediaType,
            ApiError::BadRequest(_) => Code::BadRequest,
            ApiError::Unauthenticated(_) => Code::Unauthenticated,
            ApiError::Forbidden(_) => Code::Forbidden,
            ApiError::ForeignOrigin(_) => Code::ForbiddenOrigin,
            ApiError::NotFound => Code::NotFound,
            ApiError::MethodNotAllowed => Code::MethodNotAllowed,
            ApiError::Unavailable | ApiError::SocketsFull { .. } => Code::ServiceUnavailable,
            ApiError::Service(err) => err.kind().into(),
            ApiError::Timeout => Code::Timeout,
            ApiError::RateLimited { .. } => Code::RateLimited,
            ApiError::Internal => Code::Internal,
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
                "extensions": {"code": self.code().rest()},
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
            code: self.code().rest().to_owned(),
            message: self.to_string(),
            field: self.field().map(|field| field.as_str().to_owned()),
        }
    }

    /// The error as one entry of a GraphQL answer's data (a batch's per-order
    /// result), in GraphQL's names for the code and the field.
    pub fn graphql_detail(self) -> ErrorDetail {
        self.log_cause();
        ErrorDetail {
            code: self.code().graphql().to_owned(),
            message: self.to_string(),
            field: self
                .field()
                .map(|field| Code::graphql_field(field).to_owned()),
        }
    }

    /// The request field at fault, when there is one.
    pub fn field(&self) -> Option<Field> {
        match self {
            ApiError::InvalidInput(InputError { field, .. }) => Some(*field),
            ApiError::Service(err) => err.field(),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log_cause();
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().rest().to_owned(),
                message: self.to_string(),
                field: self.field().map(|field| field.as_str().to_owned()),
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
