//! DataLoaders: every by-id and by-identity field of a request is gathered and
//! fetched with one `= ANY($1)` query per kind, however many rows ask.
//!
//! Keys are types of their own, so a contact id cannot be handed to the loader of
//! identities by mistake (or the other way round).

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::Loader;

use super::error::LoadError;
use crate::db::contacts;
use crate::db::{DbError, DbPool};
use crate::domain::{Contact, Identity};

/// The id of any contact, primary or secondary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContactId(pub i32);

/// The id of an identity's primary contact, which names the identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PrimaryId(pub i32);

/// Live contacts by id.
pub struct ContactLoader {
    pool: DbPool,
}

impl ContactLoader {
    pub fn new(pool: DbPool) -> Self {
        Self { pool }
    }
}

impl Loader<ContactId> for ContactLoader {
    type Value = Contact;
    type Error = LoadError;

    async fn load(&self, ids: &[ContactId]) -> Result<HashMap<ContactId, Contact>, LoadError> {
        let ids: Vec<i32> = ids.iter().map(|ContactId(id)| *id).collect();
        let conn = self.pool.get().await.map_err(DbError::from)?;
        let rows = contacts::find_by_ids(&conn, &ids)
            .await
            .map_err(DbError::from)?;
        Ok(rows
            .into_iter()
            .map(|row| (ContactId(row.id), Contact::from(row)))
            .collect())
    }
}

/// Live identities by primary id, each built once per request and shared: every
/// contact of a page asking for its identity costs a pointer, not a copy of it.
pub struct MembersLoader {
    pool: DbPool,
}

impl MembersLoader {
    pub fn new(pool: DbPool) -> Self {
        Self { pool }
    }
}

impl Loader<PrimaryId> for MembersLoader {
    type Value = Arc<Identity>;
    type Error = LoadError;

    async fn load(
        &self,
        primary_ids: &[PrimaryId],
    ) -> Result<HashMap<PrimaryId, Arc<Identity>>, LoadError> {
        let ids: Vec<i32> = primary_ids.iter().map(|PrimaryId(id)| *id).collect();
        let conn = self.pool.get().await.map_err(DbError::from)?;
        let rows = contacts::load_members(&conn, &ids)
            .await
            .map_err(DbError::from)?;
        let mut members: HashMap<PrimaryId, Vec<Contact>> = HashMap::new();
        for row in rows {
            let contact = Contact::from(row);
            members
                .entry(PrimaryId(contact.primary_id()))
                .or_default()
                .push(contact);
        }
        Ok(members
            .into_iter()
            .map(|(primary_id, contacts)| {
                (
                    primary_id,
                    Arc::new(Identity::from_members(primary_id.0, contacts)),
                )
            })
            .collect())
    }
}
