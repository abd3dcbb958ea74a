//! Query functions over `api_keys` (docs/SPEC.md §9). Secrets never reach this
//! module: it stores and compares SHA-256 digests only.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::schema::api_keys;

/// A key as stored.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = api_keys, check_for_backend(diesel::pg::Pg))]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    pub scopes: Vec<Option<String>>,
    pub secret_sha256: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKeyRecord {
    pub fn scope_names(&self) -> impl Iterator<Item = &str> {
        self.scopes.iter().flatten().map(String::as_str)
    }
}

/// A new key's row.
#[derive(Debug, Insertable)]
#[diesel(table_name = api_keys)]
pub struct NewApiKey<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub scopes: Vec<&'a str>,
    pub secret_sha256: &'a str,
}

pub async fn insert(conn: &mut AsyncPgConnection, key: &NewApiKey<'_>) -> QueryResult<()> {
    diesel::insert_into(api_keys::table)
        .values(key)
        .execute(conn)
        .await
        .map(drop)
}

/// Every key, revoked ones included, oldest first.
pub async fn list(conn: &mut AsyncPgConnection) -> QueryResult<Vec<ApiKeyRecord>> {
    api_keys::table
        .select(ApiKeyRecord::as_select())
        .order(api_keys::created_at.asc())
        .load(conn)
        .await
}

/// The key with this id, revoked or not.
pub async fn find(conn: &mut AsyncPgConnection, id: &str) -> QueryResult<Option<ApiKeyRecord>> {
    api_keys::table
        .find(id)
        .select(ApiKeyRecord::as_select())
        .first(conn)
        .await
        .optional()
}

/// Revokes the key; false when there is no such key. Revoking twice keeps the
/// first time.
pub async fn revoke(conn: &mut AsyncPgConnection, id: &str) -> QueryResult<bool> {
    let found = diesel::update(api_keys::table.find(id))
        .set(api_keys::revoked_at.eq(diesel::dsl::sql::<
            diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>,
        >("coalesce(revoked_at, now())")))
        .execute(conn)
        .await?;
    Ok(found > 0)
}

/// Whether any key that is not revoked exists: what `AUTH_MODE=auto` turns on.
pub async fn any_active(conn: &mut AsyncPgConnection) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(
        api_keys::table.filter(api_keys::revoked_at.is_null()),
    ))
    .get_result(conn)
    .await
}

/// Notes that the key was used now.
pub async fn touch(conn: &mut AsyncPgConnection, id: &str) -> QueryResult<()> {
    diesel::update(api_keys::table.find(id))
        .set(api_keys::last_used_at.eq(diesel::dsl::now))
        .execute(conn)
        .await
        .map(drop)
}
