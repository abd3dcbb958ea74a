//! DataLoaders: every by-id and by-identity field of a request is gathered and
//! fetched with one `= ANY($1)` query per kind, however many rows ask.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::Loader;

use crate::db::DbPool;
use crate::db::contacts::{self, ContactRecord};
use crate::domain::{Contact, Identity};
use crate::service::ServiceError;

/// Live contacts by id.
pub struct ContactLoader {
    pool: DbPool,
}

impl ContactLoader {
    pub fn new(pool: DbPool) -> Self {
        Self { pool }
    }
}

impl Loader<i32> for ContactLoader {
    type Value = ContactRecord;
    type Error = Arc<ServiceError>;

    async fn load(&self, ids: &[i32]) -> Result<HashMap<i32, ContactRecord>, Self::Error> {
        let conn = self.pool.get().await.map_err(|err| Arc::new(err.into()))?;
        let rows = contacts::find_by_ids(&conn, ids)
            .await
            .map_err(|err| Arc::new(err.into()))?;
        Ok(rows.into_iter().map(|row| (row.id, row)).collect())
    }
}

/// One identity as read in this request: its answer, built once, and its members
/// (the primary first, then contact order). Shared, so that every contact of a page
/// asking for its identity costs a pointer, not a copy of the identity.
#[derive(Debug)]
pub struct IdentitySnapshot {
    pub identity: Identity,
    pub members: Vec<ContactRecord>,
}

impl IdentitySnapshot {
    pub fn new(primary_id: i32, mut members: Vec<ContactRecord>) -> Self {
        members.sort_by_key(|member| (member.id != primary_id, member.created_at, member.id));
        let identity = Identity::from_members(
            primary_id,
            members.iter().cloned().map(Contact::from).collect(),
        );
        Self { identity, members }
    }
}

/// The live identities, by primary id.
pub struct MembersLoader {
    pool: DbPool,
}

impl MembersLoader {
    pub fn new(pool: DbPool) -> Self {
        Self { pool }
    }
}

impl Loader<i32> for MembersLoader {
    type Value = Arc<IdentitySnapshot>;
    type Error = Arc<ServiceError>;

    async fn load(
        &self,
        primary_ids: &[i32],
    ) -> Result<HashMap<i32, Arc<IdentitySnapshot>>, Self::Error> {
        let conn = self.pool.get().await.map_err(|err| Arc::new(err.into()))?;
        let rows = contacts::load_members(&conn, primary_ids)
            .await
            .map_err(|err| Arc::new(err.into()))?;
        let mut members: HashMap<i32, Vec<ContactRecord>> = HashMap::new();
        for row in rows {
            members
                .entry(row.linked_id.unwrap_or(row.id))
                .or_default()
                .push(row);
        }
        Ok(members
            .into_iter()
            .map(|(primary_id, rows)| {
                (
                    primary_id,
                    Arc::new(IdentitySnapshot::new(primary_id, rows)),
                )
            })
            .collect())
    }
}
