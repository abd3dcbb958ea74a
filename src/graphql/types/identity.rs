use std::sync::Arc;

use async_graphql::connection::{Connection, CursorType, Edge, OpaqueCursor};
use async_graphql::dataloader::{DataLoader, HashMapCache};
use async_graphql::{Context, Object, Result};

use super::ContactNode;
use crate::domain::Identity;
use crate::graphql::error::{ErrorCode, service_error};
use crate::graphql::limits::{DEFAULT_PAGE_SIZE, IDENTITY_VALUES_COST, MAX_PAGE_SIZE, page_size};
use crate::graphql::loaders::{ContactLoader, IdentitySnapshot, MembersLoader};

/// An identity as a GraphQL object: either an answer computed by the service (an
/// `identify` or a look-up), or a snapshot shared through the request's loader.
pub enum IdentityNode {
    Answer(Identity),
    Snapshot(Arc<IdentitySnapshot>),
}

impl IdentityNode {
    fn identity(&self) -> &Identity {
        match self {
            IdentityNode::Answer(identity) => identity,
            IdentityNode::Snapshot(snapshot) => &snapshot.identity,
        }
    }
}

pub type IdentityContactConnection = Connection<OpaqueCursor<i32>, ContactNode>;

/// One customer: a primary contact and every contact linked to it.
#[Object(name = "Identity")]
impl IdentityNode {
    /// The id of the identity's primary (its oldest) contact.
    async fn primary_contact_id(&self) -> i32 {
        self.identity().primary_id
    }

    /// Distinct emails: the primary's first, then the others in contact order.
    #[graphql(complexity = "IDENTITY_VALUES_COST")]
    async fn emails(&self) -> Vec<&str> {
        self.identity()
            .emails
            .iter()
            .map(|email| email.as_str())
            .collect()
    }

    /// Distinct phone numbers: the primary's first, then the others in contact order.
    #[graphql(complexity = "IDENTITY_VALUES_COST")]
    async fn phone_numbers(&self) -> Vec<&str> {
        self.identity()
            .phone_numbers
            .iter()
            .map(|phone| phone.as_str())
            .collect()
    }

    /// Ids of the secondary contacts, in contact order.
    #[graphql(complexity = "IDENTITY_VALUES_COST")]
    async fn secondary_contact_ids(&self) -> &[i32] {
        &self.identity().secondary_ids
    }

    /// The primary contact.
    async fn primary(&self, ctx: &Context<'_>) -> Result<ContactNode> {
        let primary_id = self.identity().primary_id;
        ctx.data_unchecked::<DataLoader<ContactLoader, HashMapCache>>()
            .load_one(primary_id)
            .await
            .map_err(|err| service_error(&err))?
            .map(ContactNode)
            .ok_or_else(|| ErrorCode::NotFound.error(format!("contact {primary_id} not found")))
    }

    /// The live contacts of the identity, a page at a time (Relay cursor connection):
    /// the primary first, then the others in contact order.
    #[graphql(complexity = "page_size(first) as usize * child_complexity + 1")]
    async fn contacts(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Page size: 20 when omitted, at most 100.")] first: Option<i32>,
        #[graphql(desc = "The `endCursor` of the previous page.")] after: Option<String>,
    ) -> Result<IdentityContactConnection> {
        let first = first.unwrap_or(DEFAULT_PAGE_SIZE);
        if !(0..=MAX_PAGE_SIZE).contains(&first) {
            return Err(ErrorCode::BadUserInput.error(format!(
                "first must be between 0 and {MAX_PAGE_SIZE}, got {first}"
            )));
        }
        let after = after
            .map(|cursor| {
                OpaqueCursor::<i32>::decode_cursor(&cursor)
                    .map(|OpaqueCursor(id)| id)
                    .map_err(|_| {
                        ErrorCode::BadUserInput.error("after is not a cursor this API issued")
                    })
            })
            .transpose()?;
        let snapshot = match self {
            IdentityNode::Snapshot(snapshot) => snapshot.clone(),
            IdentityNode::Answer(identity) => {
                let primary_id = identity.primary_id;
                ctx.data_unchecked::<DataLoader<MembersLoader, HashMapCache>>()
                    .load_one(primary_id)
                    .await
                    .map_err(|err| service_error(&err))?
                    .ok_or_else(|| {
                        ErrorCode::NotFound.error(format!("identity {primary_id} not found"))
                    })?
            }
        };
        let start = match after {
            None => 0,
            Some(id) => {
                snapshot
                    .members
                    .iter()
                    .position(|member| member.id == id)
                    .ok_or_else(|| {
                        ErrorCode::BadUserInput
                            .error("after names a contact that is not in this identity")
                    })?
                    + 1
            }
        };
        let end = (start + first as usize).min(snapshot.members.len());
        let mut connection = Connection::new(start > 0, end < snapshot.members.len());
        connection.edges.extend(
            snapshot.members[start..end]
                .iter()
                .map(|member| Edge::new(OpaqueCursor(member.id), ContactNode(member.clone()))),
        );
        Ok(connection)
    }
}
