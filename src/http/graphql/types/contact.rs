use async_graphql::dataloader::{DataLoader, HashMapCache};
use async_graphql::{Context, Enum, Object, Result};
use chrono::{DateTime, Utc};

use std::collections::HashMap;

use super::{EvidenceStep, IdentityNode};
use crate::auth::{Scope, mask};
use crate::db::{DbError, graph};
use crate::domain::{Contact, linked_because, live_evidence};
use crate::http::graphql::error::{Code, RequireScope, shown};
use crate::http::graphql::limits::{LINKED_BECAUSE_COST, MAX_CHAIN_STEPS};
use crate::http::graphql::loaders::{ContactId, ContactLoader, MembersLoader, PrimaryId};
use crate::http::graphql::query::audit;

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
        primary
            .map(ContactNode)
            .ok_or_else(|| Code::NotFound.error(format!("primary contact {primary_id} not found")))
    }

    /// The chain of evidence from the identity's primary to this contact
    /// (docs/SPEC.md §10.2): why it belongs to its identity. Empty for a primary.
    #[graphql(
        guard = "RequireScope(Scope::Read)",
        complexity = "LINKED_BECAUSE_COST + MAX_CHAIN_STEPS * child_complexity"
    )]
    async fn linked_because(&self, ctx: &Context<'_>) -> Result<Vec<EvidenceStep>> {
        let primary_id = self.0.primary_id();
        if primary_id == self.0.id {
            return Ok(Vec::new());
        }
        let identity = ctx
            .data_unchecked::<DataLoader<MembersLoader, HashMapCache>>()
            .load_one(PrimaryId(primary_id))
            .await?
            .ok_or_else(|| Code::NotFound.error(format!("identity {primary_id} not found")))?;
        let members = &identity.contacts;
        let emails: Vec<&str> = members
            .iter()
            .filter_map(|c| c.email.as_ref().map(|e| e.as_str()))
            .collect();
        let phones: Vec<&str> = members
            .iter()
            .filter_map(|c| c.phone.as_ref().map(|p| p.as_str()))
            .collect();
        let ids: Vec<i32> = members.iter().map(|c| c.id).collect();
        let mut conn = crate::http::graphql::read_pool(ctx)
            .get()
            .await
            .map_err(DbError::from)?;
        let events = graph::evidence_for(&mut conn, &emails, &phones, &ids)
            .await
            .map_err(DbError::from)?;
        let steps = linked_because(members, &live_evidence(events), primary_id, self.0.id)
            .ok_or_else(|| {
                Code::NotFound.error(format!(
                    "no evidence joins contact {} to its primary {primary_id} (it changed                      meanwhile, or the ledger disagrees: run `check --deep`)",
                    self.0.id
                ))
            })?;
        if steps.len() > MAX_CHAIN_STEPS {
            return Err(Code::InvalidInput.error(format!(
                "the chain of evidence is {} steps long, more than {MAX_CHAIN_STEPS}; read                  Identity.history instead",
                steps.len()
            )));
        }
        let stepped: Vec<i32> = steps.iter().flat_map(|s| [s.from, s.to]).collect();
        let created = graph::creation_events(&mut conn, &stepped)
            .await
            .map_err(DbError::from)?;
        drop(conn);
        let order: HashMap<i32, _> = members.iter().map(|c| (c.id, c.contact_order())).collect();
        let newer = |a: i32, b: i32| if order.get(&a) > order.get(&b) { a } else { b };
        audit(ctx, None, 0);
        Ok(steps
            .into_iter()
            .map(|step| EvidenceStep::new(step, |a, b| created.get(&newer(a, b)).copied()))
            .collect())
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
            .map(|identity| IdentityNode(identity, None))
            .ok_or_else(|| Code::NotFound.error(format!("identity {primary_id} not found")))
    }
}
