use std::sync::Arc;

use async_graphql::connection::{Connection, Edge, OpaqueCursor};
use async_graphql::dataloader::{DataLoader, HashMapCache};
use async_graphql::{Context, Object, Result};

use super::{ContactNode, IdentityEvent, OutcomeKind, SplitIdentity, ValueKind};
use crate::app::repair::Blocked;
use crate::auth::{Scope, mask};
use crate::db::{DbError, graph};
use crate::domain::{ContactValue, Identity, Outcome};
use crate::http::graphql::error::{Code, RequireScope, shown};
use crate::http::graphql::limits::{IDENTITY_VALUES_COST, Page, page_size};
use crate::http::graphql::loaders::{ContactId, ContactLoader};
use crate::http::graphql::query::audit;

/// An identity as read once: an `identify` or look-up answer, or a loader's
/// snapshot. Its lists and its contacts come from the same read; the outcome is
/// there for `identify`'s answer only.
pub struct IdentityNode(pub Arc<Identity>, pub Option<Outcome>);

impl From<Identity> for IdentityNode {
    fn from(identity: Identity) -> Self {
        Self(Arc::new(identity), None)
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
            .ok_or_else(|| Code::NotFound.error(format!("contact {primary_id} not found")))
    }

    /// What the `identify` that answered with this identity changed; null
    /// elsewhere.
    async fn outcome(&self) -> Option<OutcomeKind> {
        self.1.map(OutcomeKind::from)
    }

    /// The identity's ledger events, newest first (Relay cursor connection): every
    /// event naming one of its current contacts (docs/SPEC.md §10.2).
    #[graphql(
        guard = "RequireScope(Scope::Read)",
        complexity = "page_size(first) as usize * child_complexity + 1"
    )]
    async fn history(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Page size: 20 when omitted, at most 100.")] first: Option<i32>,
        #[graphql(desc = "The `endCursor` of the previous page.")] after: Option<String>,
    ) -> Result<Connection<OpaqueCursor<i64>, IdentityEvent>> {
        let page = Page::<i64>::parse(first, after)?;
        let members: Vec<i32> = self.0.contacts.iter().map(|c| c.id).collect();
        let mut conn = crate::http::graphql::read_pool(ctx)
            .get()
            .await
            .map_err(DbError::from)?;
        let rows = graph::history(&mut conn, &members, page.after, page.fetch_limit())
            .await
            .map_err(DbError::from)?;
        drop(conn);
        audit(ctx, None, 0);
        Ok(page.connection(rows, |row| (row.id, IdentityEvent::new(ctx, row))))
    }

    /// The live contacts of the identity, a page at a time (Relay cursor connection):
    /// the primary first, then the others in contact order.
    #[graphql(complexity = "page_size(first) as usize * child_complexity + 1")]
    async fn contacts(
        &self,
        #[graphql(desc = "Page size: 20 when omitted, at most 100.")] first: Option<i32>,
        #[graphql(desc = "The `endCursor` of the previous page.")] after: Option<String>,
    ) -> Result<IdentityContactConnection> {
        let page = Page::<i32>::parse(first, after)?;
        let members = &self.0.contacts;
        let start = match page.after {
            None => 0,
            Some(id) => {
                members
                    .iter()
                    .position(|member| member.id == id)
                    .ok_or_else(|| {
                        Code::InvalidInput.argument_error(
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

/// What `blockValue` did (docs/SPEC.md §10.4).
pub struct BlockResult(pub Blocked);

#[Object]
impl BlockResult {
    async fn kind(&self) -> ValueKind {
        match self.0.value {
            ContactValue::Email(_) => ValueKind::Email,
            ContactValue::Phone(_) => ValueKind::Phone,
        }
    }

    /// The blocked value, normalised.
    async fn value(&self) -> &str {
        self.0.value.as_str()
    }

    /// Contacts the value was removed from.
    async fn contacts_changed(&self) -> usize {
        self.0.contacts_changed
    }

    /// Contacts deleted because the value was all they held.
    async fn contacts_deleted(&self) -> usize {
        self.0.contacts_deleted
    }

    /// How many identities the value's identities split into.
    async fn identities(&self) -> usize {
        self.0.split_into.len()
    }

    /// Those identities, in their primaries' contact order: the first `first` (20
    /// when omitted, at most 100).
    #[graphql(complexity = "page_size(first) as usize * child_complexity + 1")]
    async fn split_into(&self, first: Option<i32>) -> Result<Vec<SplitIdentity>> {
        let page = Page::<i32>::parse(first, None)?;
        Ok(self
            .0
            .split_into
            .iter()
            .take(page.first)
            .map(SplitIdentity::from)
            .collect())
    }
}
