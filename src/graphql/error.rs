//! GraphQL errors: a message for people and a stable `extensions.code` for code.

use async_graphql::ErrorExtensions;

use crate::domain::{Field, InputError};
use crate::service::{LookupError, ServiceError};

/// The `extensions.code` values this API emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadUserInput,
    NotFound,
    ServiceUnavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadUserInput => "BAD_USER_INPUT",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::ServiceUnavailable => "SERVICE_UNAVAILABLE",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    /// An error with this code and `message`.
    pub fn error(self, message: impl Into<String>) -> async_graphql::Error {
        async_graphql::Error::new(message.into())
            .extend_with(|_, extensions| extensions.set("code", self.as_str()))
    }
}

/// Bad input: the same message REST gives, plus the field at fault.
pub fn bad_input(err: InputError) -> async_graphql::Error {
    let field = (err.field != Field::Body).then(|| err.field.as_str());
    ErrorCode::BadUserInput
        .error(err.message)
        .extend_with(|_, extensions| {
            if let Some(field) = field {
                extensions.set("field", field);
            }
        })
}

/// A service failure, logged once here; internals never reach the client.
pub fn service_error(err: &ServiceError) -> async_graphql::Error {
    match err {
        ServiceError::Unavailable(_) | ServiceError::Contended => {
            tracing::warn!(error = %err, "graphql: database unavailable");
            ErrorCode::ServiceUnavailable.error("the database is unavailable; try again shortly")
        }
        ServiceError::Database(_) => {
            tracing::error!(error = %err, "graphql: database error");
            ErrorCode::Internal.error("internal error")
        }
    }
}

pub fn lookup_error(err: LookupError) -> async_graphql::Error {
    match err {
        LookupError::Ambiguous(..) => ErrorCode::BadUserInput.error(err.to_string()),
        LookupError::Service(err) => service_error(&err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(error: &async_graphql::Error) -> String {
        let extensions = error.extensions.as_ref().expect("extensions set");
        extensions.get("code").expect("a code").to_string()
    }

    #[test]
    fn each_error_maps_to_its_code() {
        let input = bad_input(InputError::new(Field::Email, "email must contain an '@'"));
        assert_eq!(code_of(&input), "\"BAD_USER_INPUT\"");
        assert_eq!(input.message, "email must contain an '@'");
        let unavailable = service_error(&ServiceError::Unavailable("pool timed out".into()));
        assert_eq!(code_of(&unavailable), "\"SERVICE_UNAVAILABLE\"");
        let internal = service_error(&ServiceError::Database(diesel::result::Error::NotFound));
        assert_eq!(code_of(&internal), "\"INTERNAL\"");
        assert!(!internal.message.contains("NotFound"), "internals leaked");
        let ambiguous = lookup_error(LookupError::Ambiguous(1, 2));
        assert_eq!(code_of(&ambiguous), "\"BAD_USER_INPUT\"");
    }
}
