use async_graphql::dataloader::{DataLoader, HashMapCache};
use async_graphql::{Context, Enum, Object, Result};
use chrono::{DateTime, Utc};

use super::IdentityNode;
use crate::auth::mask;
use crate::domain::Contact;
use crate::graphql::error::{ErrorCode, shown};
use crate::graphql::loaders::{ContactId, ContactLoader, MembersLoader, PrimaryId};
use crate::graphql::query::audit;

/// Whether a contact heads its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum LinkPrecedence {
    /// The oldest contact of an identity; every other member links to it.
    Primary,
    /// A contact linked to its identity's primary.
    Secondary,
}

pub struct ContactNode(pub Contact);

/// One contact record: an email and/or a phone number seen together in an order.
#[Object(name = "Contact")]
impl ContactNode {
    async fn id(&self) -> i32 {
        self.0.id
    }

    /// Lower-cased email, if the contact has one (masked for `identify:masked`).
    async fn email(&self, ctx: &Context<'_>) -> Option<String> {
        let email = self.0.email.as_ref()?;
        Some(shown(ctx, email.as_str(), mask::email))
    }

    /// Normalised phone number (digits, optionally a leading `+`), if any (masked
    /// for `identify:masked`).
    async fn phone_number(&self, ctx: &Context<'_>) -> Option<String> {
        let phone = self.0.phone.as_ref()?;
        Some(shown(ctx, phone.as_str(), mask::phone))
    }

    /// The primary's id for a secondary; null for a primary.
    async fn linked_id(&self) -> Option<i32> {
        self.0.linked_id
    }

    async fn link_precedence(&self) -> LinkPrecedence {
        if self.0.is_primary() {
            LinkPrecedence::Primary
        } else {
            LinkPrecedence::Secondary
        }
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    /// Bumped whenever the contact changes (for example when it is re-linked).
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }

    /// The primary contact of this contact's identity (itself, for a primary).
    async fn primary(&self, ctx: &Context<'_>) -> Result<ContactNode> {
        let Some(primary_id) = self.0.linked_id else {
            return Ok(ContactNode(self.0.clone()));
        };
        let primary = ctx
            .data_unchecked::<DataLoader<ContactLoader, HashMapCache>>()
            .load_one(ContactId(primary_id))
            .await?;
        audit(ctx, None, usize::from(primary.is_some()));
        primary.map(ContactNode).ok_or_else(|| {
            ErrorCode::NotFound.error(format!("primary contact {primary_id} not found"))
        })
    }

    /// The whole identity this contact belongs to.
    async fn identity(&self, ctx: &Context<'_>) -> Result<IdentityNode> {
        let primary_id = self.0.primary_id();
        let identity = ctx
            .data_unchecked::<DataLoader<MembersLoader, HashMapCache>>()
            .load_one(PrimaryId(primary_id))
            .await?;
        audit(
            ctx,
            None,
            identity
                .as_ref()
                .map_or(0, |identity| identity.contacts.len()),
        );
        identity
            .map(IdentityNode)
            .ok_or_else(|| ErrorCode::NotFound.error(format!("identity {primary_id} not found")))
    }
}
