//! GraphQL errors: a message for people and a stable `extensions.code` for code.
//!
//! Resolvers use `?`: every error type of the layers below converts into an
//! `async_graphql::Error` here, with its code. Internal details never reach the
//! client; the original error rides along as the error's `source`, and the request
//! handler logs it once, where the answer is made ([`log_failures`]).

use std::sync::Arc;

use async_graphql::{ErrorExtensions, ServerError};

use crate::app::error::{ErrorKind, ServiceError};
use crate::app::identify::LookupError;
use crate::auth::{AuthFailure, Authentication, Denied, Scope};
use crate::db::DbError;
use crate::domain::InputError;

pub use crate::http::error::Code;

/// Bad input: the same message REST gives, plus the field at fault (`input` when
/// the input as a whole is wrong, such as neither value given).
impl From<InputError> for async_graphql::Error {
    fn from(err: InputError) -> Self {
        Code::InvalidInput.argument_error(Code::graphql_field(err.field), err.message)
    }
}

impl From<Denied> for async_graphql::Error {
    fn from(denied: Denied) -> Self {
        match denied {
            Denied::Unauthenticated(AuthFailure::Unavailable) => {
                Code::ServiceUnavailable.error(AuthFailure::Unavailable.message())
            }
            Denied::Unauthenticated(AuthFailure::Throttled) => {
                Code::RateLimited.error(AuthFailure::Throttled.message())
            }
            Denied::Unauthenticated(failure) => Code::Unauthenticated.error(failure.message()),
            Denied::Forbidden(scope) => Code::Forbidden.error(format!(
                "this credential lacks the `{}` scope",
                scope.as_str()
            )),
        }
    }
}

/// A field only principals with the scope may resolve. Other fields of the same
/// operation resolve as usual.
pub struct RequireScope(pub Scope);

impl async_graphql::Guard for RequireScope {
    async fn check(&self, ctx: &async_graphql::Context<'_>) -> async_graphql::Result<()> {
        match ctx.data_opt::<Authentication>() {
            Some(authentication) => authentication.require(self.0).map(drop).map_err(Into::into),
            None => Err(Denied::Unauthenticated(AuthFailure::Missing).into()),
        }
    }
}

/// `identify`: the `identify` scope, or `identify:masked` for masked answers.
pub struct RequireIdentify;

impl async_graphql::Guard for RequireIdentify {
    async fn check(&self, ctx: &async_graphql::Context<'_>) -> async_graphql::Result<()> {
        match ctx.data_opt::<Authentication>() {
            Some(authentication) => authentication
                .identify_access()
                .map(drop)
                .map_err(Into::into),
            None => Err(Denied::Unauthenticated(AuthFailure::Missing).into()),
        }
    }
}

/// Present in a request's data when its emails and phones must be masked: the
/// caller holds `identify:masked` and neither `identify` nor `read`.
pub struct MaskValues;

/// `value` as this request may show it.
pub fn shown(ctx: &async_graphql::Context<'_>, value: &str, mask: fn(&str) -> String) -> String {
    if ctx.data_opt::<MaskValues>().is_some() {
        mask(value)
    } else {
        value.to_owned()
    }
}

/// The error a loader hands every field that waited on it: cheap to clone.
#[derive(Debug, Clone)]
pub struct LoadError(pub Arc<DbError>);

impl From<DbError> for LoadError {
    fn from(err: DbError) -> Self {
        LoadError(Arc::new(err))
    }
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl From<LoadError> for async_graphql::Error {
    fn from(err: LoadError) -> Self {
        failure(err.0.is_unavailable(), err)
    }
}

impl From<DbError> for async_graphql::Error {
    fn from(err: DbError) -> Self {
        failure(err.is_unavailable(), err)
    }
}

impl From<ServiceError> for async_graphql::Error {
    fn from(err: ServiceError) -> Self {
        match err.kind() {
            ErrorKind::Unavailable | ErrorKind::Internal => failure(err.is_unavailable(), err),
            kind => {
                let error = Code::from(kind).error(err.to_string());
                match err.field() {
                    Some(field) => error.extend_with(|_, extensions| {
                        extensions.set("field", Code::graphql_field(field))
                    }),
                    None => error,
                }
            }
        }
    }
}

impl From<LookupError> for async_graphql::Error {
    fn from(err: LookupError) -> Self {
        match err {
            LookupError::Ambiguous(..) => Code::InvalidInput.error(err.to_string()),
            LookupError::Service(err) => err.into(),
        }
    }
}

/// A failure that is not the client's: a fixed message and code, the cause kept
/// as the error's source for the log.
fn failure<E>(unavailable: bool, cause: E) -> async_graphql::Error
where
    E: std::fmt::Display + Send + Sync + 'static,
{
    let (code, message) = if unavailable {
        (
            Code::ServiceUnavailable,
            "the database is unavailable; try again shortly",
        )
    } else {
        (Code::Internal, "internal error")
    };
    let logged = Logged(cause.to_string());
    let mut error = async_graphql::Error::new_with_source(logged);
    error.message = message.to_owned();
    error.extend_with(|_, extensions| extensions.set("code", code.graphql()))
}

/// The cause of a failure, for the server's log only.
#[derive(Debug)]
struct Logged(String);

impl std::fmt::Display for Logged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `error` with `code` as its `extensions.code`.
pub fn coded(mut error: ServerError, code: Code) -> ServerError {
    error
        .extensions
        .get_or_insert_with(Default::default)
        .set("code", code.graphql());
    error
}

/// The one place errors are told apart by async-graphql's words, where it gives
/// nothing else: over its directive or parser-recursion limit (the client's to fix,
/// like our own limits), or an argument it could not read. The test
/// `async_graphql_still_says_what_we_match` fails if an upgrade rewords them.
const LIMIT_MESSAGES: [&str; 2] = [
    "The number of directives on the field",
    "The recursion depth of the query cannot be greater than",
];

/// How async-graphql begins the errors of an argument it could not read during
/// execution (a null variable where a value is required passes validation when
/// the argument has a default): the client's input, like validation failures. See
/// [`LIMIT_MESSAGES`].
const INPUT_MESSAGES: [&str; 2] = ["Expected input type ", "Failed to parse \""];

/// Gives every error that reached the answer without a code the one it deserves:
/// errors before execution (no path) are the document's (a limit, or a validation
/// failure), as are arguments that could not be read; errors during execution that
/// nobody coded are internal.
pub fn code_uncoded(errors: &mut [ServerError]) {
    for error in errors {
        let extensions = error.extensions.get_or_insert_with(Default::default);
        if extensions.get("code").is_some() {
            continue;
        }
        let code = if INPUT_MESSAGES
            .iter()
            .any(|input| error.message.starts_with(input))
        {
            Code::InvalidInput
        } else if !error.path.is_empty() {
            Code::Internal
        } else if LIMIT_MESSAGES
            .iter()
            .any(|limit| error.message.starts_with(limit))
        {
            Code::InvalidInput
        } else {
            Code::GraphqlValidationFailed
        };
        if code == Code::Internal {
            tracing::error!(message = %error.message, "uncoded GraphQL error during execution");
            error.message = "internal error".to_owned();
        }
        extensions.set("code", code.graphql());
    }
}

/// Logs, once, the failures that were not the client's, with their cause.
pub fn log_failures(errors: &[ServerError]) {
    for error in errors {
        let Some(cause) = error.source::<Logged>() else {
            continue;
        };
        let code = error
            .extensions
            .as_ref()
            .and_then(|extensions| extensions.get("code"))
            .map(|code| code.to_string())
            .unwrap_or_default();
        if code.contains(Code::ServiceUnavailable.graphql()) {
            tracing::warn!(error = %cause, path = ?error.path, "graphql: database unavailable");
        } else {
            tracing::error!(error = %cause, path = ?error.path, "graphql: field failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Field;

    fn code_of(error: &async_graphql::Error) -> String {
        let extensions = error.extensions.as_ref().expect("extensions set");
        extensions.get("code").expect("a code").to_string()
    }

    #[test]
    fn each_error_maps_to_its_code() {
        let input: async_graphql::Error =
            InputError::new(Field::Email, "email must contain an '@'").into();
        assert_eq!(code_of(&input), "\"BAD_USER_INPUT\"");
        assert_eq!(input.message, "email must contain an '@'");
        let whole: async_graphql::Error = InputError::new(Field::Body, "neither").into();
        let field = whole.extensions.as_ref().unwrap().get("field").unwrap();
        assert_eq!(field.to_string(), "\"input\"");

        let unavailable: async_graphql::Error =
            ServiceError::Db(DbError::Unavailable("pool timed out".into())).into();
        assert_eq!(code_of(&unavailable), "\"SERVICE_UNAVAILABLE\"");
        assert!(!unavailable.message.contains("pool"), "internals leaked");
        let contended: async_graphql::Error = ServiceError::Contended.into();
        assert_eq!(code_of(&contended), "\"SERVICE_UNAVAILABLE\"");

        let internal: async_graphql::Error =
            ServiceError::Db(DbError::Query(diesel::result::Error::NotFound)).into();
        assert_eq!(code_of(&internal), "\"INTERNAL\"");
        assert!(!internal.message.contains("NotFound"), "internals leaked");
        let panicked: async_graphql::Error = ServiceError::Panicked("boom".into()).into();
        assert_eq!(code_of(&panicked), "\"INTERNAL\"");
        assert!(!panicked.message.contains("boom"));

        let ambiguous: async_graphql::Error = LookupError::Ambiguous(1, 2).into();
        assert_eq!(code_of(&ambiguous), "\"BAD_USER_INPUT\"");
        let loaded: async_graphql::Error =
            LoadError::from(DbError::Unavailable("refused".into())).into();
        assert_eq!(code_of(&loaded), "\"SERVICE_UNAVAILABLE\"");
    }

    #[test]
    fn uncoded_errors_get_the_code_of_where_they_arose() {
        let mut errors = vec![
            ServerError::new(
                "The number of directives on the field `a` cannot be greater than 4",
                None,
            ),
            ServerError::new("Unknown field \"x\" on type \"Query\".", None),
            {
                let mut error = ServerError::new("something broke", None);
                error.path = vec![async_graphql::PathSegment::Field("contact".into())];
                error
            },
        ];
        code_uncoded(&mut errors);
        let codes: Vec<String> = errors
            .iter()
            .map(|error| {
                error
                    .extensions
                    .as_ref()
                    .unwrap()
                    .get("code")
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            codes,
            [
                "\"BAD_USER_INPUT\"",
                "\"GRAPHQL_VALIDATION_FAILED\"",
                "\"INTERNAL\""
            ]
        );
        assert_eq!(errors[2].message, "internal error");
    }

    /// The messages matched above are async-graphql's, not ours: an upgrade that
    /// rewords one fails here instead of turning a client's mistake into INTERNAL.
    #[tokio::test]
    async fn async_graphql_still_says_what_we_match() {
        use async_graphql::{InputValueError, Pos};

        let schema = super::super::sdl_schema();
        let deep = format!("{{ {}__typename{} }}", "a { ".repeat(40), " }".repeat(40));
        let directives = "{ __typename @skip(if: false) @include(if: true) @skip(if: false) \
                          @include(if: true) @skip(if: false) }";
        for (query, expected) in [
            (deep.as_str(), LIMIT_MESSAGES[1]),
            (directives, LIMIT_MESSAGES[0]),
        ] {
            let response = schema.execute(query).await;
            let message = &response.errors[0].message;
            assert!(message.starts_with(expected), "{query}: {message}");
        }
        let expected = InputValueError::<i32>::expected_type(async_graphql::Value::Null)
            .into_server_error(Pos::default());
        assert!(
            expected.message.starts_with(INPUT_MESSAGES[0]),
            "{}",
            expected.message
        );
        let custom = InputValueError::<i32>::custom("no").into_server_error(Pos::default());
        assert!(
            custom.message.starts_with(INPUT_MESSAGES[1]),
            "{}",
            custom.message
        );
    }
}
