//! The use cases: each runs in its own transaction(s) through the locking protocol
//! of [`crate::db::protocol`]; REST, GraphQL and the command line are adapters over
//! these.

pub mod batch;
pub mod changefeed;
pub mod error;
pub mod identify;
pub mod import;
pub mod repair;
