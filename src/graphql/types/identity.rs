use async_graphql::dataloader::{DataLoader, HashMapCache};
use async_graphql::{Context, Object, Result};

use super::ContactNode;
use crate::db::contacts::ContactRecord;
use crate::domain::{Contact, Identity};
use crate::graphql::error::{ErrorCode, service_error};
use crate::graphql::loaders::{ContactLoader, MembersLoader};

pub struct IdentityNode(pub Identity);

impl IdentityNode {
    pub fn from_members(primary_id: i32, members: Vec<ContactRecord>) -> Self {
        Self(Identity::from_members(
            primary_id,
            members.into_iter().map(Contact::from).collect(),
        ))
    }
}

/// One customer: a primary contact and every contact linked to it.
#[Object(name = "Identity")]
impl IdentityNode {
    /// The id of the identity's primary (its oldest) contact.
    async fn primary_contact_id(&self) -> i32 {
        self.0.primary_id
    }

    /// Distinct emails: the primary's first, then the others in contact order.
    async fn emails(&self) -> Vec<&str> {
        self.0.emails.iter().map(|email| email.as_str()).collect()
    }

    /// Distinct phone numbers: the primary's first, then the others in contact order.
    async fn phone_numbers(&self) -> Vec<&str> {
        self.0
            .phone_numbers
            .iter()
            .map(|phone| phone.as_str())
            .collect()
    }

    /// Ids of the secondary contacts, in contact order.
    async fn secondary_contact_ids(&self) -> &[i32] {
        &self.0.secondary_ids
    }

    /// The primary contact.
    async fn primary(&self, ctx: &Context<'_>) -> Result<ContactNode> {
        let primary_id = self.0.primary_id;
        ctx.data_unchecked::<DataLoader<ContactLoader, HashMapCache>>()
            .load_one(primary_id)
            .await
            .map_err(|err| service_error(&err))?
            .map(ContactNode)
            .ok_or_else(|| ErrorCode::NotFound.error(format!("contact {primary_id} not found")))
    }

    /// Every live contact of the identity: the primary first, then in contact order.
    async fn contacts(&self, ctx: &Context<'_>) -> Result<Vec<ContactNode>> {
        let primary_id = self.0.primary_id;
        let mut members = ctx
            .data_unchecked::<DataLoader<MembersLoader, HashMapCache>>()
            .load_one(primary_id)
            .await
            .map_err(|err| service_error(&err))?
            .unwrap_or_default();
        members.sort_by_key(|member| (member.id != primary_id, member.created_at, member.id));
        Ok(members.into_iter().map(ContactNode).collect())
    }
}
