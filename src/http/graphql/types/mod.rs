//! The GraphQL object types. Doc comments become the schema's descriptions.

mod contact;
mod graph;
mod identity;

pub use contact::{ContactNode, LinkPrecedence};
pub use graph::{
    BlockValueInput, BlockedValueNode, EvidenceStep, HeldRequest, HeldStatus, IdentityChange,
    IdentityEvent, OutcomeKind, SplitIdentity, ValueKind,
};
pub use identity::BlockResult;
pub use identity::IdentityNode;
