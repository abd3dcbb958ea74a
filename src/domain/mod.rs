//! The business rules, free of HTTP, GraphQL and SQL: input parsing into
//! normalised values (docs/SPEC.md §3), the reconciliation decision (§4), and the
//! identity graph's blocks, evidence and splits (§10).

mod batch;
mod blocklist;
mod contact_info;
mod graph;
pub mod json;
mod reconcile;
mod union_find;

pub use batch::{BatchStep, BatchWorld, Planned};
pub use blocklist::{BlockRules, ContactValue, Dropped, RuleError, Screened, screen};
pub use contact_info::{Email, Field, IdentifyRequest, InputError, Phone};
pub use graph::{Evidence, EvidenceEvent, Step, Via, components, linked_because, live_evidence};
pub use reconcile::{Contact, Decision, Hold, Identity, LimitKind, Limits, Merge, Outcome, decide};
pub use union_find::UnionFind;
