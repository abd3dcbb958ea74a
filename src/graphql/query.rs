//! Read-only fields: contacts by id or page, identities by value.

use std::collections::BTreeSet;

use async_graphql::connection::{Connection, Edge, OpaqueCursor};
use async_graphql::dataloader::{DataLoader, HashMapCache};
use async_graphql::{Context, InputObject, Object, Result};

use super::error::{ErrorCode, bad_input, lookup_error, service_error};
use super::limits::{DEFAULT_PAGE_SIZE, LOOKUP_COST, MAX_PAGE_SIZE, page_size};
use super::loaders::{ContactLoader, MembersLoader};
use super::types::{ContactNode, IdentityNode, LinkPrecedence};
use crate::app::AppState;
use crate::db::contacts::{self, ContactFilter as DbContactFilter, ContactRecord};
use crate::domain::{Email, IdentifyRequest, Phone};
use crate::service::{self, ServiceError};

pub struct QueryRoot;

/// Which contacts to list; every given criterion must hold.
#[derive(Debug, Default, InputObject)]
pub struct ContactFilter {
    /// Contacts with this email (normalised before matching).
    pub email: Option<String>,
    /// Contacts with this phone number (normalised before matching).
    pub phone_number: Option<String>,
    pub link_precedence: Option<LinkPrecedence>,
    /// Members of the identity headed by this primary contact.
    pub primary_contact_id: Option<i32>,
}

impl ContactFilter {
    fn parse(self) -> Result<DbContactFilter> {
        Ok(DbContactFilter {
            email: self
                .email
                .as_deref()
                .map(Email::parse)
                .transpose()
                .map_err(bad_input)?
                .flatten(),
            phone: self
                .phone_number
                .as_deref()
                .map(Phone::parse)
                .transpose()
                .map_err(bad_input)?
                .flatten(),
            primary: self.link_precedence.map(|p| p == LinkPrecedence::Primary),
            primary_contact_id: self.primary_contact_id,
        })
    }
}

pub type ContactConnection = Connection<OpaqueCursor<i32>, ContactNode>;

/// Read-only queries: contacts and identities.
#[Object(name = "Query")]
impl QueryRoot {
    /// A live contact by id, primary or secondary; null when there is none.
    async fn contact(&self, ctx: &Context<'_>, id: i32) -> Result<Option<ContactNode>> {
        let contact = ctx
            .data_unchecked::<DataLoader<ContactLoader, HashMapCache>>()
            .load_one(id)
            .await
            .map_err(|err| service_error(&err))?;
        Ok(contact.map(ContactNode))
    }

    /// Live contacts in id order, a page at a time (Relay cursor connection).
    #[graphql(complexity = "page_size(first) as usize * child_complexity + 1")]
    async fn contacts(
        &self,
        ctx: &Context<'_>,
        filter: Option<ContactFilter>,
        #[graphql(desc = "Page size: 20 when omitted, at most 100.")] first: Option<i32>,
        #[graphql(desc = "The `endCursor` of the previous page.")] after: Option<String>,
    ) -> Result<ContactConnection> {
        let first = first.unwrap_or(DEFAULT_PAGE_SIZE);
        if !(0..=MAX_PAGE_SIZE).contains(&first) {
            return Err(ErrorCode::BadUserInput.error(format!(
                "first must be between 0 and {MAX_PAGE_SIZE}, got {first}"
            )));
        }
        let after = after
            .map(|cursor| {
                async_graphql::connection::CursorType::decode_cursor(&cursor)
                    .map(|OpaqueCursor(id): OpaqueCursor<i32>| id)
                    .map_err(|_| {
                        ErrorCode::BadUserInput.error("after is not a cursor this API issued")
                    })
            })
            .transpose()?;
        let filter = filter.unwrap_or_default().parse()?;

        let state = ctx.data_unchecked::<AppState>();
        let conn = state
            .pool
            .get()
            .await
            .map_err(|err| service_error(&ServiceError::from(err)))?;
        // One row more than asked tells whether another page follows.
        let mut rows = contacts::page(&conn, &filter, after, i64::from(first) + 1)
            .await
            .map_err(|err| service_error(&ServiceError::from(err)))?;
        let has_next_page = rows.len() > first as usize;
        rows.truncate(first as usize);
        drop(conn);
        prefetch_nested(ctx, &rows).await?;

        let mut connection = Connection::new(after.is_some(), has_next_page);
        connection.edges.extend(
            rows.into_iter()
                .map(|row| Edge::new(OpaqueCursor(row.id), ContactNode(row))),
        );
        Ok(connection)
    }

    /// The identity holding the email or the phone number; writes nothing. Null when
    /// neither is known; an error when they belong to two different identities.
    #[graphql(complexity = "LOOKUP_COST + child_complexity")]
    async fn identity(
        &self,
        ctx: &Context<'_>,
        email: Option<String>,
        phone_number: Option<String>,
    ) -> Result<Option<IdentityNode>> {
        let request =
            IdentifyRequest::parse(email.as_deref(), phone_number.as_deref()).map_err(bad_input)?;
        let state = ctx.data_unchecked::<AppState>();
        let identity = service::lookup(&state.pool, &request)
            .await
            .map_err(lookup_error)?;
        Ok(identity.map(IdentityNode::Answer))
    }
}

/// Loads, in one query each, what the page's nodes will ask their loaders for,
/// when the selection asks for it. The loaders' own batching gathers keys over a
/// time window, which a large page can outlast; priming them makes the count of
/// queries for a page fixed whatever its size.
async fn prefetch_nested(ctx: &Context<'_>, rows: &[ContactRecord]) -> Result<()> {
    let look_ahead = ctx.look_ahead();
    let nodes = [
        look_ahead.field("edges").field("node"),
        look_ahead.field("nodes"),
    ];
    let wants = |field: &str| nodes.iter().any(|node| node.field(field).exists());
    if wants("primary") {
        let primary_ids: BTreeSet<i32> = rows.iter().filter_map(|row| row.linked_id).collect();
        ctx.data_unchecked::<DataLoader<ContactLoader, HashMapCache>>()
            .load_many(primary_ids)
            .await
            .map_err(|err| service_error(&err))?;
    }
    if wants("identity") {
        let primary_ids: BTreeSet<i32> = rows
            .iter()
            .map(|row| row.linked_id.unwrap_or(row.id))
            .collect();
        ctx.data_unchecked::<DataLoader<MembersLoader, HashMapCache>>()
            .load_many(primary_ids)
            .await
            .map_err(|err| service_error(&err))?;
    }
    Ok(())
}
