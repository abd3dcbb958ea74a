//! The GraphQL object types. Doc comments become the schema's descriptions.

mod contact;
mod identity;

pub use contact::{ContactNode, LinkPrecedence};
pub use identity::IdentityNode;
