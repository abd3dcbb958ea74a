use std::sync::Arc;

use async_graphql::connection::{Connection, Edge, OpaqueCursor};
use async_graphql::dataloader::{DataLoader, HashMapCache};
use async_graphql::{Context, Object, Result};

use super::ContactNode;
use crate::auth::mask;
use crate::domain::Identity;
use crate::graphql::error::{ErrorCode, shown};
use crate::graphql::limits::{IDENTITY_VALUES_COST, Page, page_size};
use crate::graphql::loaders::{ContactId, ContactLoader};

/// An identity as read once: an `identify` or look-up answer, or a loader's
/// snapshot. Its lists and its contacts come from the same read.
pub struct IdentityNode(pub Arc<Identity>);

impl From<Identity> for IdentityNode {
    fn from(identity: Identity) -> Self {
        Self(Arc::new(identity))
    }
}

pub type IdentityContactConnection = Connection<OpaqueCursor<i32>, ContactNode>;

/// One customer: a primary contact and every contact linked to it.
#[Object(name = "Identity")]
impl IdentityNode {
    /// The id of the identity's primary (its oldest) contact.
    async fn primary_contact_id(&self) -> i32 {
        self.0.primary_id
    }

    /// Distinct emails: the primary's first, then the others in contact order.
    #[graphql(complexity = "IDENTITY_VALUES_COST")]
    async fn emails(&self, ctx: &Context<'_>) -> Vec<String> {
        self.0
            .emails
            .iter()
            .map(|email| shown(ctx, email.as_str(), mask::email))
            .collect()
    }

    /// Distinct phone numbers: the primary's first, then the others in contact order.
    #[graphql(complexity = "IDENTITY_VALUES_COST")]
    async fn phone_numbers(&self, ctx: &Context<'_>) -> Vec<String> {
        self.0
            .phone_numbers
            .iter()
            .map(|phone| shown(ctx, phone.as_str(), mask::phone))
            .collect()
    }

    /// Ids of the secondary contacts, in contact order.
    #[graphql(complexity = "IDENTITY_VALUES_COST")]
    async fn secondary_contact_ids(&self) -> &[i32] {
        &self.0.secondary_ids
    }

    /// The primary contact.
    async fn primary(&self, ctx: &Context<'_>) -> Result<ContactNode> {
        if let Some(primary) = self.0.contacts.first() {
            return Ok(ContactNode(primary.clone()));
        }
        let primary_id = self.0.primary_id;
        ctx.data_unchecked::<DataLoader<ContactLoader, HashMapCache>>()
            .load_one(ContactId(primary_id))
            .await?
            .map(ContactNode)
            .ok_or_else(|| ErrorCode::NotFound.error(format!("contact {primary_id} not found")))
    }

    /// The live contacts of the identity, a page at a time (Relay cursor connection):
    /// the primary first, then the others in contact order.
    #[graphql(complexity = "page_size(first) as usize * child_complexity + 1")]
    async fn contacts(
        &self,
        #[graphql(desc = "Page size: 20 when omitted, at most 100.")] first: Option<i32>,
        #[graphql(desc = "The `endCursor` of the previous page.")] after: Option<String>,
    ) -> Result<IdentityContactConnection> {
        let page = Page::parse(first, after)?;
        let members = &self.0.contacts;
        let start = match page.after {
            None => 0,
            Some(id) => {
                members
                    .iter()
                    .position(|member| member.id == id)
                    .ok_or_else(|| {
                        ErrorCode::BadUserInput.argument_error(
                            "after",
                            "after names a contact that is not in this identity",
                        )
                    })?
                    + 1
            }
        };
        let end = (start + page.first).min(members.len());
        let mut connection = Connection::new(start > 0, end < members.len());
        connection.edges.extend(
            members[start..end]
                .iter()
                .map(|member| Edge::new(OpaqueCursor(member.id), ContactNode(member.clone()))),
        );
        Ok(connection)
    }
}
