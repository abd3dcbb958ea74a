//! The business rules, free of HTTP, GraphQL and SQL: input parsing into
//! normalised values (SPEC §3) and the reconciliation decision (SPEC §4).

mod contact_info;
mod reconcile;
mod union_find;

pub use contact_info::{Email, Field, IdentifyRequest, InputError, Phone};
pub use reconcile::{Contact, Decision, Identity, Merge, Outcome, decide};
pub use union_find::UnionFind;
