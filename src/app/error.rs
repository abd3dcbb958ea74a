//! The use cases' one error, and what it means to a client: its kind (which the
//! HTTP layer's error table turns into a code and a status) and the request field at
//! fault. REST and GraphQL render it; neither decides anew what it is.

use crate::db::DbError;
use crate::db::protocol::{self, Failure, MAX_ATTEMPTS};
use crate::domain::{Dropped, Field};

/// What a failed use case is to a client. `crate::http::error::Code` maps each to
/// its REST code, GraphQL code and HTTP status (one table, docs/SPEC.md §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A request that cannot apply as asked (an approval of a resolved hold).
    Refused,
    NotFound,
    /// Every value of the request is blocked.
    BlockedValue,
    /// Retry later: the database is unavailable, or contention outlasted the attempts.
    Unavailable,
    /// A bug or a broken database; never the client's fault.
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Db(#[from] DbError),
    /// Concurrent merges kept invalidating this request's locks.
    #[error("gave up after {MAX_ATTEMPTS} attempts under contention")]
    Contended,
    /// The task running the use case panicked: a bug, reported as what it is.
    #[error("the identify task panicked: {0}")]
    Panicked(String),
    /// Every value of the request is blocked (docs/SPEC.md §10.3).
    #[error("{}", blocked_message(.0))]
    Blocked(Dropped),
    /// An administrator's request that cannot apply as asked.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    NotFound(String),
}

fn blocked_message(dropped: &Dropped) -> &'static str {
    match (dropped.email, dropped.phone) {
        (true, true) => {
            "both the email and the phoneNumber are blocked values that never link customers"
        }
        (true, false) => "the email is a blocked value that never links customers",
        _ => "the phoneNumber is a blocked value that never links customers",
    }
}

impl ServiceError {
    /// What this failure is to a client.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ServiceError::Blocked(_) => ErrorKind::BlockedValue,
            ServiceError::Refused(_) => ErrorKind::Refused,
            ServiceError::NotFound(_) => ErrorKind::NotFound,
            err if err.is_unavailable() => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        }
    }

    /// The request field at fault: for blocked values, the one that was blocked
    /// (the whole body when both were).
    pub fn field(&self) -> Option<Field> {
        match self {
            ServiceError::Blocked(dropped) => Some(match (dropped.email, dropped.phone) {
                (true, true) => Field::Body,
                (true, false) => Field::Email,
                _ => Field::PhoneNumber,
            }),
            _ => None,
        }
    }

    /// Whether the client should retry later (503) rather than report a bug (500).
    pub fn is_unavailable(&self) -> bool {
        match self {
            ServiceError::Db(err) => err.is_unavailable(),
            ServiceError::Contended => true,
            ServiceError::Panicked(_)
            | ServiceError::Blocked(_)
            | ServiceError::Refused(_)
            | ServiceError::NotFound(_) => false,
        }
    }
}

impl From<diesel::result::Error> for ServiceError {
    fn from(err: diesel::result::Error) -> Self {
        ServiceError::Db(err.into())
    }
}

impl From<diesel_async::pooled_connection::deadpool::PoolError> for ServiceError {
    fn from(err: diesel_async::pooled_connection::deadpool::PoolError) -> Self {
        ServiceError::Db(err.into())
    }
}

impl From<Failure<ServiceError>> for ServiceError {
    fn from(failure: Failure<ServiceError>) -> Self {
        match failure {
            Failure::Refused(err) => err,
            Failure::Database(err) => ServiceError::Db(err),
            Failure::GaveUp => ServiceError::Contended,
        }
    }
}

/// One attempt's failure, with a use case's refusal as a [`ServiceError`].
pub(crate) type AttemptError = protocol::AttemptError<ServiceError>;
