//! The statements of an erasure (docs/SPEC.md §11): every trace of a customer's
//! values, in every table that can hold one.

use diesel::prelude::*;
use diesel::sql_types::{Array, Int4, Nullable, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::schema::{contacts, erasure_key, held_requests};

/// One contact of the identity being erased, live or soft-deleted.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = contacts, check_for_backend(diesel::pg::Pg))]
pub struct ErasedRow {
    pub id: i32,
    pub email: Option<String>,
    pub phone_number: Option<String>,
    pub linked_id: Option<i32>,
}

/// Every row of the identity headed by `primary_id`, soft-deleted ones included.
pub async fn identity_rows(
    conn: &mut AsyncPgConnection,
    primary_id: i32,
) -> QueryResult<Vec<ErasedRow>> {
    contacts::table
        .filter(
            contacts::id
                .eq(primary_id)
                .or(contacts::linked_id.eq(primary_id)),
        )
        .order(contacts::id)
        .select(ErasedRow::as_select())
        .load(conn)
        .await
}

#[derive(Debug, QueryableByName)]
struct PrimaryOf {
    #[diesel(sql_type = Int4)]
    primary_id: i32,
}

/// The primary of the live identity holding the email or the phone, if any.
pub async fn primary_holding(
    conn: &mut AsyncPgConnection,
    email: Option<&str>,
    phone: Option<&str>,
) -> diesel::QueryResult<Option<i32>> {
    let rows: Vec<PrimaryOf> = diesel::sql_query(
        "SELECT DISTINCT coalesce(linked_id, id) AS primary_id FROM contacts \
         WHERE deleted_at IS NULL AND (email = $1 OR phone_number = $2) \
         ORDER BY primary_id LIMIT 1",
    )
    .bind::<Nullable<Text>, _>(email)
    .bind::<Nullable<Text>, _>(phone)
    .load(conn)
    .await?;
    Ok(rows.into_iter().next().map(|row| row.primary_id))
}

/// The values of the held requests that carry one of these values: the customer's
/// requests, whose other value is theirs too unless a contact of someone else holds it.
pub async fn held_values(
    conn: &mut AsyncPgConnection,
    emails: &[String],
    phones: &[String],
) -> QueryResult<(Vec<String>, Vec<String>)> {
    let rows: Vec<(Option<String>, Option<String>)> = held_requests::table
        .filter(
            held_requests::email
                .eq_any(emails)
                .or(held_requests::phone_number.eq_any(phones)),
        )
        .select((held_requests::email, held_requests::phone_number))
        .load(conn)
        .await?;
    let (emails, phones): (Vec<_>, Vec<_>) = rows.into_iter().unzip();
    Ok((
        emails.into_iter().flatten().collect(),
        phones.into_iter().flatten().collect(),
    ))
}

/// What one erasure removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Purged {
    pub contacts: usize,
    pub events_redacted: usize,
    pub held_requests: usize,
    pub blocks: usize,
}

/// Deletes the identity's contacts (if any) and every trace of the values.
pub async fn purge(
    conn: &mut AsyncPgConnection,
    primary_id: Option<i32>,
    emails: &[String],
    phones: &[String],
) -> diesel::QueryResult<Purged> {
    let contacts = match primary_id {
        Some(primary_id) => {
            diesel::sql_query("DELETE FROM contacts WHERE id = $1 OR linked_id = $1")
                .bind::<Int4, _>(primary_id)
                .execute(conn)
                .await?
        }
        None => 0,
    };
    let events_redacted = diesel::sql_query(
        "UPDATE identity_events SET \
             email = CASE WHEN email = ANY($1) THEN NULL ELSE email END, \
             phone_number = CASE WHEN phone_number = ANY($2) THEN NULL ELSE phone_number END \
         WHERE email = ANY($1) OR phone_number = ANY($2)",
    )
    .bind::<Array<Text>, _>(emails)
    .bind::<Array<Text>, _>(phones)
    .execute(conn)
    .await?;
    let held_requests = diesel::sql_query(
        "DELETE FROM held_requests WHERE email = ANY($1) OR phone_number = ANY($2) \
             OR suspect_value = ANY($1) OR suspect_value = ANY($2)",
    )
    .bind::<Array<Text>, _>(emails)
    .bind::<Array<Text>, _>(phones)
    .execute(conn)
    .await?;
    let blocks = diesel::sql_query(
        "DELETE FROM blocked_values \
         WHERE (kind = 'email' AND value = ANY($1)) OR (kind = 'phone' AND value = ANY($2))",
    )
    .bind::<Array<Text>, _>(emails)
    .bind::<Array<Text>, _>(phones)
    .execute(conn)
    .await?;
    Ok(Purged {
        contacts,
        events_redacted,
        held_requests,
        blocks,
    })
}

/// The database's erasure key, made by the first erasure that needs it.
pub async fn erasure_key(conn: &mut AsyncPgConnection) -> QueryResult<Vec<u8>> {
    let mut fresh = [0u8; 32];
    getrandom::fill(&mut fresh).map_err(|err| {
        diesel::result::Error::QueryBuilderError(format!("no randomness: {err}").into())
    })?;
    diesel::insert_into(erasure_key::table)
        .values(erasure_key::key.eq(&fresh[..]))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    erasure_key::table
        .select(erasure_key::key)
        .first(conn)
        .await
}

/// Records the erasure: ids and keyed hashes, and the ledger's `erased` event.
pub async fn record(
    conn: &mut AsyncPgConnection,
    primary_id: Option<i32>,
    contact_ids: &[i32],
    value_hashes: &[String],
    principal: &str,
    request_id: Option<&str>,
) -> diesel::QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO erasures (primary_id, contact_ids, value_hashes, erased_by, request_id) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind::<Nullable<Int4>, _>(primary_id)
    .bind::<Array<Int4>, _>(contact_ids)
    .bind::<Array<Text>, _>(value_hashes)
    .bind::<Text, _>(principal)
    .bind::<Nullable<Text>, _>(request_id)
    .execute(conn)
    .await?;
    diesel::sql_query(
        "WITH event AS ( \
             INSERT INTO identity_events (kind, primary_id, contact_ids, request_id) \
             VALUES ('erased', $1, $2, $3)) \
         INSERT INTO identity_changes (kind, primary_ids, contact_ids, request_id) \
         VALUES ('erased', array_remove(ARRAY[$1::int4], NULL), $2, $3)",
    )
    .bind::<Nullable<Int4>, _>(primary_id)
    .bind::<Array<Int4>, _>(contact_ids)
    .bind::<Nullable<Text>, _>(request_id)
    .execute(conn)
    .await?;
    Ok(())
}
