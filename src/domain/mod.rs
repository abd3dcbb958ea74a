//! The business rules, free of HTTP, GraphQL and SQL: input parsing into
//! normalised values (docs/SPEC.md §3) and the reconciliation decision (docs/SPEC.md §4).

mod contact_info;
mod reconcile;
mod union_find;

pub use contact_info::{Email, Field, IdentifyRequest, InputError, Phone};
pub use reconcile::{Contact, Decision, Identity, Merge, Outcome, decide};
pub use union_find::UnionFind;
