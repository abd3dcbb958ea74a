//! DataLoaders: every by-id and by-identity field of a request is gathered and
//! fetched with one `= ANY($1)` query per kind, however many rows ask.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::Loader;

use crate::db::DbPool;
use crate::db::contacts::{self, ContactRecord};
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

/// The live members of identities, by primary id, in contact order.
pub struct MembersLoader {
    pool: DbPool,
}

impl MembersLoader {
    pub fn new(pool: DbPool) -> Self {
        Self { pool }
    }
}

impl Loader<i32> for MembersLoader {
    type Value = Vec<ContactRecord>;
    type Error = Arc<ServiceError>;

    async fn load(
        &self,
        primary_ids: &[i32],
    ) -> Result<HashMap<i32, Vec<ContactRecord>>, Self::Error> {
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
        Ok(members)
    }
}
