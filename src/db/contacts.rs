//! Query functions over the `contacts` table: the writes of identify (hand-written
//! SQL, each with its ledger row and change event in the same statement) and the
//! plain reads. The locked reads are the protocol's ([`super::protocol`]).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, Int4, Nullable, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::prepared::{Bind, Prepared, static_sql};
use super::schema::contacts;
use crate::domain::{Contact, Email, Phone};

// Public so that a test can PREPARE each against the migrated schema.
static_sql!(
    LoadMembersSql = "SELECT id, phone_number, email, linked_id, created_at, updated_at \
     FROM contacts \
     WHERE deleted_at IS NULL AND (id = ANY($1) OR linked_id = ANY($1)) \
     ORDER BY created_at, id"
);

static_sql!(
    InsertContactSql = "WITH inserted AS ( \
         INSERT INTO contacts \
             (email, phone_number, linked_id, link_precedence, created_at, updated_at) \
         SELECT $1, $2, $3, $4::link_precedence, clock.now, clock.now \
         FROM (SELECT clock_timestamp() AS now) AS clock \
         RETURNING id, phone_number, email, linked_id, created_at, updated_at), \
     event AS ( \
         INSERT INTO identity_events \
             (kind, contact_id, primary_id, email, phone_number, request_id, created_at) \
         SELECT CASE WHEN linked_id IS NULL THEN 'created' ELSE 'linked' END::identity_event_kind, \
                id, coalesce(linked_id, id), $5, $6, $7, created_at \
         FROM inserted), \
     change AS ( \
         INSERT INTO identity_changes (kind, primary_ids, contact_ids, request_id) \
         SELECT CASE WHEN linked_id IS NULL THEN 'created' ELSE 'linked' END, \
                ARRAY[coalesce(linked_id, id)], ARRAY[id], $7 \
         FROM inserted) \
     SELECT id, phone_number, email, linked_id, created_at, updated_at FROM inserted"
);

static_sql!(
    InsertPrimaryIfNewSql = "WITH inserted AS ( \
         INSERT INTO contacts \
             (email, phone_number, linked_id, link_precedence, created_at, updated_at) \
         SELECT $1, $2, NULL, 'primary', clock.now, clock.now \
         FROM (SELECT clock_timestamp() AS now) AS clock \
         WHERE NOT EXISTS (SELECT FROM contacts \
                           WHERE deleted_at IS NULL AND (email = $1 OR phone_number = $2)) \
           AND NOT EXISTS (SELECT FROM blocked_values \
                           WHERE (kind = 'email' AND value = $1) OR (kind = 'phone' AND value = $2)) \
         RETURNING id, phone_number, email, linked_id, created_at, updated_at), \
     event AS ( \
         INSERT INTO identity_events \
             (kind, contact_id, primary_id, email, phone_number, request_id, created_at) \
         SELECT 'created', id, id, email, phone_number, $3, created_at FROM inserted), \
     change AS ( \
         INSERT INTO identity_changes (kind, primary_ids, contact_ids, request_id) \
         SELECT 'created', ARRAY[id], ARRAY[id], $3 FROM inserted) \
     SELECT id, phone_number, email, linked_id, created_at, updated_at FROM inserted"
);

static_sql!(
    MergeIntoSql = "UPDATE contacts \
     SET linked_id = $1, link_precedence = 'secondary', updated_at = clock_timestamp() \
     WHERE id = ANY($2) OR linked_id = ANY($2) \
     RETURNING id, updated_at"
);

/// A contact row as read back from the database.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = contacts, check_for_backend(diesel::pg::Pg))]
pub struct ContactRecord {
    pub id: i32,
    pub phone_number: Option<String>,
    pub email: Option<String>,
    pub linked_id: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<ContactRecord> for Contact {
    fn from(record: ContactRecord) -> Self {
        Contact {
            id: record.id,
            email: record.email.map(Email::from_stored),
            phone: record.phone_number.map(Phone::from_stored),
            linked_id: record.linked_id,
            created_at: record.created_at,
            updated_at: record.updated_at,
        }
    }
}

/// Every live contact of the identities headed by `primary_ids`, in contact order.
pub async fn load_members(
    mut conn: &AsyncPgConnection,
    primary_ids: &[i32],
) -> QueryResult<Vec<ContactRecord>> {
    Prepared::<LoadMembersSql, _>::new((Bind::<Array<Int4>, _>::new(primary_ids),))
        .load(&mut conn)
        .await
}

/// What the ledger records about an inserted contact: the request's values that
/// matched (for a new primary, its own values) and the request's id.
#[derive(Debug, Clone, Copy, Default)]
pub struct Provenance<'a> {
    pub email: Option<&'a Email>,
    pub phone: Option<&'a Phone>,
    pub request_id: Option<&'a str>,
}

/// Inserts a contact, a primary when `linked_id` is `None`, else a secondary of it,
/// and its `created` or `linked` event, in one statement.
///
/// `created_at` is the clock at insert time, not the transaction's start (`now()`):
/// a transaction that waited for a lock must not stamp its row older than rows
/// committed while it waited, or "the primary is the oldest contact" would break.
pub async fn insert_contact(
    mut conn: &AsyncPgConnection,
    email: Option<&Email>,
    phone: Option<&Phone>,
    linked_id: Option<i32>,
    provenance: Provenance<'_>,
) -> QueryResult<ContactRecord> {
    let precedence = if linked_id.is_some() {
        "secondary"
    } else {
        "primary"
    };
    Prepared::<InsertContactSql, _>::new((
        Bind::<Nullable<Text>, _>::new(email.map(Email::as_str)),
        Bind::<Nullable<Text>, _>::new(phone.map(Phone::as_str)),
        Bind::<Nullable<Int4>, _>::new(linked_id),
        Bind::<Text, _>::new(precedence),
        Bind::<Nullable<Text>, _>::new(provenance.email.map(Email::as_str)),
        Bind::<Nullable<Text>, _>::new(provenance.phone.map(Phone::as_str)),
        Bind::<Nullable<Text>, _>::new(provenance.request_id),
    ))
    .get_result(&mut conn)
    .await
}

/// Inserts a primary with its `created` event and change, as [`insert_contact`]
/// does, unless a live contact holds one of the values or one is blocked: the
/// unlocked read's "this customer is new", checked again after the values' locks
/// (an earlier statement of the transaction), so it sees every contact and block
/// committed before them. `None` when it no longer holds.
pub async fn insert_primary_if_new(
    mut conn: &AsyncPgConnection,
    email: Option<&Email>,
    phone: Option<&Phone>,
    request_id: Option<&str>,
) -> QueryResult<Option<ContactRecord>> {
    Prepared::<InsertPrimaryIfNewSql, _>::new((
        Bind::<Nullable<Text>, _>::new(email.map(Email::as_str)),
        Bind::<Nullable<Text>, _>::new(phone.map(Phone::as_str)),
        Bind::<Nullable<Text>, _>::new(request_id),
    ))
    .get_result(&mut conn)
    .await
    .optional()
}

/// One row a merge re-linked, and its new `updated_at`.
#[derive(Debug, Clone, Copy, QueryableByName)]
pub struct Relinked {
    #[diesel(sql_type = Int4)]
    pub id: i32,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    pub updated_at: DateTime<Utc>,
}

/// Turns the `demoted` primaries into secondaries of `primary_id` and moves their
/// secondaries (soft-deleted ones included, so no link is ever two levels deep)
/// to `primary_id`. Returns the rows changed, so the answer shows their new times.
pub async fn merge_into(
    mut conn: &AsyncPgConnection,
    primary_id: i32,
    demoted: &[i32],
) -> QueryResult<Vec<Relinked>> {
    Prepared::<MergeIntoSql, _>::new((
        Bind::<Int4, _>::new(primary_id),
        Bind::<Array<Int4>, _>::new(demoted),
    ))
    .load(&mut conn)
    .await
}

/// Live contacts with these ids (missing and soft-deleted ids are left out).
pub async fn find_by_ids(
    mut conn: &AsyncPgConnection,
    ids: &[i32],
) -> QueryResult<Vec<ContactRecord>> {
    contacts::table
        .filter(contacts::id.eq_any(ids))
        .filter(contacts::deleted_at.is_null())
        .select(ContactRecord::as_select())
        .load(&mut conn)
        .await
}

/// Which contacts a page lists; every given criterion must hold.
#[derive(Debug, Clone, Default)]
pub struct ContactFilter {
    pub email: Option<Email>,
    pub phone: Option<Phone>,
    /// `Some(true)`: primaries only; `Some(false)`: secondaries only.
    pub primary: Option<bool>,
    /// Members of the identity headed by this id.
    pub primary_contact_id: Option<i32>,
}

/// Up to `limit` live contacts matching `filter` with an id above `after`, by id.
pub async fn page(
    mut conn: &AsyncPgConnection,
    filter: &ContactFilter,
    after: Option<i32>,
    limit: i64,
) -> QueryResult<Vec<ContactRecord>> {
    let mut query = contacts::table
        .filter(contacts::deleted_at.is_null())
        .select(ContactRecord::as_select())
        .order(contacts::id.asc())
        .limit(limit)
        .into_boxed();
    if let Some(email) = &filter.email {
        query = query.filter(contacts::email.eq(email.as_str().to_owned()));
    }
    if let Some(phone) = &filter.phone {
        query = query.filter(contacts::phone_number.eq(phone.as_str().to_owned()));
    }
    match filter.primary {
        Some(true) => query = query.filter(contacts::linked_id.is_null()),
        Some(false) => query = query.filter(contacts::linked_id.is_not_null()),
        None => {}
    }
    if let Some(primary_id) = filter.primary_contact_id {
        query = query.filter(
            contacts::id
                .eq(primary_id)
                .and(contacts::linked_id.is_null())
                .or(contacts::linked_id.eq(primary_id)),
        );
    }
    if let Some(after) = after {
        query = query.filter(contacts::id.gt(after));
    }
    query.load(&mut conn).await
}
