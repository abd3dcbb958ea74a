//! Read-only fields: contacts by id or page, identities by value.

use std::collections::BTreeSet;

use async_graphql::connection::{Connection, Edge, OpaqueCursor};
use async_graphql::dataloader::{DataLoader, HashMapCache};
use async_graphql::{Context, InputObject, Object, Result};

use super::error::{Code, RequireScope};
use super::limits::{LOOKUP_COST, Page, page_size};
use super::loaders::{ContactId, ContactLoader, MembersLoader, PrimaryId};
use super::types::{
    BlockedValueNode, ContactNode, HeldRequest, HeldStatus, IdentityChange, IdentityNode,
    LinkPrecedence,
};
use crate::app;
use crate::auth::{self, Scope};
use crate::db::contacts::{self, ContactFilter};
use crate::db::{DbError, changes, graph};
use crate::domain::{Contact, Email, IdentifyRequest, Phone};
use crate::http::state::AppState;

pub struct QueryRoot;

/// Which contacts to list; every given criterion must hold.
#[derive(Debug, Default, InputObject)]
#[graphql(name = "ContactFilter")]
pub struct ContactFilterInput {
    /// Contacts with this email (normalised before matching).
    pub email: Option<String>,
    /// Contacts with this phone number (normalised before matching).
    pub phone_number: Option<String>,
    pub link_precedence: Option<LinkPrecedence>,
    /// Members of the identity headed by this primary contact.
    pub primary_contact_id: Option<i32>,
}

impl TryFrom<ContactFilterInput> for ContactFilter {
    type Error = async_graphql::Error;

    fn try_from(input: ContactFilterInput) -> Result<Self> {
        Ok(ContactFilter {
            email: input
                .email
                .as_deref()
                .map(Email::parse)
                .transpose()?
                .flatten(),
            phone: input
                .phone_number
                .as_deref()
                .map(Phone::parse)
                .transpose()?
                .flatten(),
            primary: input.link_precedence.map(|p| p == LinkPrecedence::Primary),
            primary_contact_id: input.primary_contact_id,
        })
    }
}

pub type ContactConnection = Connection<OpaqueCursor<i32>, ContactNode>;

/// Read-only queries: contacts and identities.
#[Object(name = "Query")]
impl QueryRoot {
    /// A live contact by id, primary or secondary; null when there is none.
    #[graphql(guard = "RequireScope(Scope::Read)")]
    async fn contact(&self, ctx: &Context<'_>, id: i32) -> Result<Option<ContactNode>> {
        let contact = ctx
            .data_unchecked::<DataLoader<ContactLoader, HashMapCache>>()
            .load_one(ContactId(id))
            .await?;
        audit(ctx, Some("contact"), usize::from(contact.is_some()));
        Ok(contact.map(ContactNode))
    }

    /// Live contacts in id order, a page at a time (Relay cursor connection).
    #[graphql(
        guard = "RequireScope(Scope::Read)",
        complexity = "page_size(first) as usize * child_complexity + 1"
    )]
    async fn contacts(
        &self,
        ctx: &Context<'_>,
        filter: Option<ContactFilterInput>,
        #[graphql(desc = "Page size: 20 when omitted, at most 100.")] first: Option<i32>,
        #[graphql(desc = "The `endCursor` of the previous page.")] after: Option<String>,
    ) -> Result<ContactConnection> {
        let page = Page::<i32>::parse(first, after)?;
        let filter = ContactFilter::try_from(filter.unwrap_or_default())?;

        let conn = super::read_pool(ctx).get().await.map_err(DbError::from)?;
        // One row more than asked tells whether another page follows.
        let rows = contacts::page(&conn, &filter, page.after, page.first as i64 + 1)
            .await
            .map_err(DbError::from)?;
        drop(conn);
        let has_next_page = rows.len() > page.first;
        let rows: Vec<Contact> = rows
            .into_iter()
            .take(page.first)
            .map(Contact::from)
            .collect();
        prefetch_nested(ctx, &rows).await?;
        audit(ctx, Some("contacts"), rows.len());

        let mut connection = Connection::new(page.after.is_some(), has_next_page);
        connection.edges.extend(
            rows.into_iter()
                .map(|row| Edge::new(OpaqueCursor(row.id), ContactNode(row))),
        );
        Ok(connection)
    }

    /// The identity holding the email or the phone number; writes nothing. Null when
    /// neither is known; an error when they belong to two different identities.
    #[graphql(
        guard = "RequireScope(Scope::Read)",
        complexity = "LOOKUP_COST + child_complexity"
    )]
    async fn identity(
        &self,
        ctx: &Context<'_>,
        email: Option<String>,
        phone_number: Option<String>,
    ) -> Result<Option<IdentityNode>> {
        let request = IdentifyRequest::parse(email.as_deref(), phone_number.as_deref())?;
        let identity = app::identify::lookup(super::read_pool(ctx), &request).await?;
        audit(
            ctx,
            Some("identity"),
            identity
                .as_ref()
                .map_or(0, |identity| identity.contacts.len()),
        );
        Ok(identity.map(IdentityNode::from))
    }

    /// Requests held for pushing an identity over a limit, oldest first (Relay
    /// cursor connection; docs/SPEC.md §10.3).
    #[graphql(
        guard = "RequireScope(Scope::Admin)",
        complexity = "page_size(first) as usize * child_complexity + 1"
    )]
    async fn held_requests(
        &self,
        ctx: &Context<'_>,
        #[graphql(default_with = "HeldStatus::Pending")] status: HeldStatus,
        #[graphql(desc = "Page size: 20 when omitted, at most 100.")] first: Option<i32>,
        #[graphql(desc = "The `endCursor` of the previous page.")] after: Option<String>,
    ) -> Result<Connection<OpaqueCursor<i64>, HeldRequest>> {
        let page = Page::<i64>::parse(first, after)?;
        let state = ctx.data_unchecked::<AppState>();
        let mut conn = state.pool.get().await.map_err(DbError::from)?;
        let rows = graph::list_held(&mut conn, status.as_str(), page.after, page.fetch_limit())
            .await
            .map_err(DbError::from)?;
        drop(conn);
        audit(ctx, Some("heldRequests"), 0);
        Ok(page.connection(rows, |row| (row.id, HeldRequest::from(row))))
    }

    /// Identity changes for consumers that poll, in a gap-free order (Relay cursor
    /// connection; docs/SPEC.md §12): resume with the last `endCursor`; nothing is
    /// missed and nothing repeated. Ids only: read values through `contact` and
    /// `identity`. A cursor from before what retention kept is `CURSOR_EXPIRED`.
    #[graphql(
        guard = "RequireScope(Scope::Read)",
        complexity = "page_size(first) as usize * child_complexity + 1"
    )]
    async fn identity_events(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Page size: 20 when omitted, at most 100.")] first: Option<i32>,
        #[graphql(desc = "The `endCursor` of the previous page.")] after: Option<String>,
    ) -> Result<Connection<OpaqueCursor<changes::Position>, IdentityChange>> {
        let page = Page::<changes::Position>::parse(first, after)?;
        if let Some(after) = &page.after {
            check_event_cursor(after)?;
        }
        let mut conn = super::read_pool(ctx).get().await.map_err(DbError::from)?;
        let rows = changes::page_after(&mut conn, page.after.as_ref(), page.fetch_limit())
            .await
            .map_err(DbError::from)?
            .map_err(|changes::CursorExpired| cursor_expired())?;
        drop(conn);
        Ok(page.connection(rows, |row| (row.position(), IdentityChange::from(row))))
    }

    /// Values administrators blocked, by kind and value (Relay cursor connection);
    /// the built-in list and the file are in the server's configuration.
    #[graphql(
        guard = "RequireScope(Scope::Admin)",
        complexity = "page_size(first) as usize * child_complexity + 1"
    )]
    async fn blocked_values(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Page size: 20 when omitted, at most 100.")] first: Option<i32>,
        #[graphql(desc = "The `endCursor` of the previous page.")] after: Option<String>,
    ) -> Result<Connection<OpaqueCursor<(String, String)>, BlockedValueNode>> {
        let page = Page::<(String, String)>::parse(first, after)?;
        // Issued cursors hold stored values; a forged one must not reach the database
        // with a character PostgreSQL's text cannot hold.
        if let Some((kind, value)) = &page.after
            && (kind.contains('\0') || value.contains('\0'))
        {
            return Err(
                Code::InvalidInput.argument_error("after", "after is not a cursor this API issued")
            );
        }
        let state = ctx.data_unchecked::<AppState>();
        let mut conn = state.pool.get().await.map_err(DbError::from)?;
        let rows = graph::list_blocks(&mut conn, page.after.clone(), page.fetch_limit())
            .await
            .map_err(DbError::from)?;
        drop(conn);
        Ok(page.connection(rows, |row| {
            (
                (row.kind.clone(), row.value.clone()),
                BlockedValueNode::from(row),
            )
        }))
    }
}

/// Refuses a forged event cursor before it reaches the database: its transaction
/// id must be what `xid8` prints.
pub(super) fn check_event_cursor((xid, _): &changes::Position) -> Result<()> {
    // Digits only (`u64::from_str` takes a leading `+`), within xid8's range.
    if !xid.bytes().all(|b| b.is_ascii_digit()) || xid.parse::<u64>().is_err() {
        return Err(
            Code::InvalidInput.argument_error("after", "after is not a cursor this API issued")
        );
    }
    Ok(())
}

/// The error for a cursor retention has passed, polled or subscribed.
pub(super) fn cursor_expired() -> async_graphql::Error {
    Code::CursorExpired.error(
        "events after this cursor were pruned by retention (EVENT_RETENTION_DAYS); \
         start again without a cursor",
    )
}

/// What one GraphQL request read, for its single audit line (written by the
/// handler once the answer is made): the root fields and every contact returned,
/// nested ones included.
#[derive(Debug, Default)]
pub struct ReadAudit {
    operations: std::sync::Mutex<BTreeSet<&'static str>>,
    contacts: std::sync::atomic::AtomicUsize,
}

impl ReadAudit {
    /// Logs the request's reads, if it made any.
    pub fn log(&self, principal: &str) {
        let contacts = self.contacts.load(std::sync::atomic::Ordering::Relaxed);
        let operations = self
            .operations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Self::write(principal, &operations, contacts);
    }

    /// Logs the reads so far and starts counting again, keeping the operations: a
    /// subscription that lasts days logs as it goes, not only when it ends.
    pub fn flush(&self, principal: &str) {
        let contacts = self.contacts.swap(0, std::sync::atomic::Ordering::Relaxed);
        if contacts > 0 {
            let operations = self
                .operations
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            Self::write(principal, &operations, contacts);
        }
    }

    fn write(principal: &str, operations: &BTreeSet<&'static str>, contacts: usize) {
        if contacts > 0 || !operations.is_empty() {
            let operations: Vec<&str> = operations.iter().copied().collect();
            auth::audit_read(principal, &operations.join(","), contacts);
        }
    }
}

/// Counts contacts a field returned toward the request's audit line; a root field
/// names the operation too.
pub(super) fn audit(ctx: &Context<'_>, operation: Option<&'static str>, contacts: usize) {
    if let Some(audit) = ctx.data_opt::<std::sync::Arc<ReadAudit>>() {
        audit
            .contacts
            .fetch_add(contacts, std::sync::atomic::Ordering::Relaxed);
        if let Some(operation) = operation {
            audit
                .operations
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(operation);
        }
    }
}

/// Loads, in one query each, what the page's nodes will ask their loaders for,
/// when the selection asks for it. The loaders' own batching gathers keys over a
/// time window, which a large page can outlast; priming them makes the count of
/// queries for a page fixed whatever its size.
async fn prefetch_nested(ctx: &Context<'_>, rows: &[Contact]) -> Result<()> {
    let look_ahead = ctx.look_ahead();
    let nodes = [
        look_ahead.field("edges").field("node"),
        look_ahead.field("nodes"),
    ];
    let wants = |field: &str| nodes.iter().any(|node| node.field(field).exists());
    if wants("primary") {
        let primary_ids: BTreeSet<ContactId> = rows
            .iter()
            .filter_map(|row| row.linked_id)
            .map(ContactId)
            .collect();
        ctx.data_unchecked::<DataLoader<ContactLoader, HashMapCache>>()
            .load_many(primary_ids)
            .await?;
    }
    if wants("identity") {
        let primary_ids: BTreeSet<PrimaryId> =
            rows.iter().map(|row| PrimaryId(row.primary_id())).collect();
        ctx.data_unchecked::<DataLoader<MembersLoader, HashMapCache>>()
            .load_many(primary_ids)
            .await?;
    }
    Ok(())
}
