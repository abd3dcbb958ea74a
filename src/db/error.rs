//! Database failures, classified once: is the database unable to serve us right
//! now (retry later: 503), did PostgreSQL abort us to resolve a conflict (retry the
//! transaction), or did a query fail (a bug: 500)?
//!
//! By SQLSTATE, never by message (`lc_messages` translates messages): diesel-async
//! maps each SQLSTATE to a `DatabaseErrorKind` (vendor/diesel-async/PATCHES.md adds
//! the codes upstream leaves `Unknown`: 40P01 as a serialization failure, classes
//! 08, 53 and 57P as a closed connection), and this module reads only the kind.

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::deadpool::PoolError;

/// A failure of the database layer, as the layers above need to see it.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Connection lost, refused or timed out; the server shutting down, starting
    /// up or in recovery; no pooled connection in time. Worth retrying later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// PostgreSQL aborted the transaction to resolve a conflict (serialization
    /// failure 40001, deadlock 40P01): running it again is the fix.
    #[error("transaction aborted by a conflict: {0}")]
    Conflict(String),
    /// Anything else: a query the database refused.
    #[error("query failed: {0}")]
    Query(DieselError),
}

impl From<DieselError> for DbError {
    fn from(err: DieselError) -> Self {
        match err {
            DieselError::DatabaseError(
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                info,
            ) => DbError::Unavailable(info.message().to_owned()),
            DieselError::BrokenTransactionManager => {
                DbError::Unavailable("connection lost inside a transaction".to_owned())
            }
            DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, info) => {
                DbError::Conflict(info.message().to_owned())
            }
            DieselError::DatabaseError(kind, info)
                if info.message().starts_with("prepared statement")
                    && info.message().ends_with("does not exist") =>
            {
                // The statement was prepared on one server connection and run on
                // another: a transaction pooler sits between us and PostgreSQL. The
                // one message read here, for a hint in the log: it classifies
                // nothing (the error stays a failed query), and if a translation
                // hides it, only the hint is lost.
                tracing::error!(
                    error = info.message(),
                    "is DATABASE_URL a transaction-mode pooler such as PgBouncer? \
                     Set DB_PREPARED_STATEMENTS=off"
                );
                DbError::Query(DieselError::DatabaseError(kind, info))
            }
            other => DbError::Query(other),
        }
    }
}

impl From<PoolError> for DbError {
    fn from(err: PoolError) -> Self {
        DbError::Unavailable(err.to_string())
    }
}

impl DbError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, DbError::Unavailable(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database_error(kind: DatabaseErrorKind, message: &str) -> DieselError {
        DieselError::DatabaseError(kind, Box::new(message.to_owned()))
    }

    #[test]
    fn each_failure_is_classified_once() {
        // diesel-async reports 57P01 (administrator command) as a closed connection,
        // whatever the message's language.
        let shutting_down = database_error(
            DatabaseErrorKind::ClosedConnection,
            "Verbindung wird abgebrochen aufgrund von Anweisung des Administrators",
        );
        assert!(DbError::from(shutting_down).is_unavailable());
        let closed = database_error(DatabaseErrorKind::ClosedConnection, "connection closed");
        assert!(DbError::from(closed).is_unavailable());
        assert!(DbError::from(DieselError::BrokenTransactionManager).is_unavailable());
        // ... and 40P01 (deadlock) as a serialization failure.
        let deadlock = database_error(DatabaseErrorKind::SerializationFailure, "Verklemmung");
        assert!(matches!(DbError::from(deadlock), DbError::Conflict(_)));
        // A message alone decides nothing.
        let worded_like_one = database_error(DatabaseErrorKind::Unknown, "deadlock detected");
        assert!(matches!(DbError::from(worded_like_one), DbError::Query(_)));
        let serialization = database_error(
            DatabaseErrorKind::SerializationFailure,
            "could not serialize access",
        );
        assert!(matches!(DbError::from(serialization), DbError::Conflict(_)));
        let syntax = database_error(DatabaseErrorKind::Unknown, "syntax error at or near");
        assert!(matches!(DbError::from(syntax), DbError::Query(_)));
        assert!(matches!(
            DbError::from(DieselError::NotFound),
            DbError::Query(_)
        ));
    }
}
