//! The statements of a batch identify (docs/SPEC.md §13) beyond the locking
//! protocol's (which reads every value of the batch at once): its writes, set-wise,
//! so that a batch of a thousand orders costs a few statements.

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Int4, Int8, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// Prices random reads as what they are on a cached or SSD-backed database: at the
/// default (4, for spinning disks) PostgreSQL reads the whole contacts table to
/// match a thousand values rather than probe the indexes a thousand times, several
/// times slower. For the batch's transaction only.
pub async fn plan_for_index_probes(mut conn: &AsyncPgConnection) -> diesel::QueryResult<()> {
    diesel::sql_query("SET LOCAL random_page_cost = 1.1")
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// An id and a creation time for a row the batch may insert.
#[derive(Debug, Clone, Copy, QueryableByName)]
pub struct Fresh {
    #[diesel(sql_type = Int4)]
    pub id: i32,
    #[diesel(sql_type = Timestamptz)]
    pub at: DateTime<Utc>,
}

#[derive(Debug, QueryableByName)]
struct Clock {
    #[diesel(sql_type = Timestamptz)]
    at: DateTime<Utc>,
}

/// The clock, read under the locks: later than every row the batch can see.
pub async fn clock(mut conn: &AsyncPgConnection) -> diesel::QueryResult<DateTime<Utc>> {
    let clock: Clock = diesel::sql_query("SELECT clock_timestamp() AS at")
        .get_result(&mut conn)
        .await?;
    Ok(clock.at)
}

/// `count` ids from the contacts' sequence with rising creation times, one per row
/// the batch inserts, drawn once the batch is planned.
pub async fn fresh_rows(
    mut conn: &AsyncPgConnection,
    count: i64,
) -> diesel::QueryResult<Vec<Fresh>> {
    diesel::sql_query(
        "SELECT nextval(pg_get_serial_sequence('contacts', 'id'))::int4 AS id, \
                clock_timestamp() AS at \
         FROM generate_series(1, $1) ORDER BY 1",
    )
    .bind::<BigInt, _>(count)
    .load(&mut conn)
    .await
}

#[derive(Debug, QueryableByName)]
struct FreshId {
    #[diesel(sql_type = Int4)]
    id: i32,
}

/// `count` ids from the contacts' sequence, in order, for rows whose creation
/// times are given: one block, reserved in one statement. Only for a caller that
/// holds `contacts` in `EXCLUSIVE` mode: every other drawer of these ids (an
/// insert, a batch) waits for that lock first, so nobody draws in between.
pub async fn fresh_ids(mut conn: &AsyncPgConnection, count: i64) -> diesel::QueryResult<Vec<i32>> {
    let row: FreshId = diesel::sql_query(
        "SELECT (setval(pg_get_serial_sequence('contacts', 'id'), \
                        nextval(pg_get_serial_sequence('contacts', 'id')) + $1 - 1) \
                 - $1 + 1)::int4 AS id",
    )
    .bind::<BigInt, _>(count)
    .get_result(&mut conn)
    .await?;
    Ok((0..count as i32).map(|offset| row.id + offset).collect())
}

/// The rows a batch inserts, as they end.
#[derive(Debug, Default)]
pub struct NewRows {
    pub ids: Vec<i32>,
    pub emails: Vec<Option<String>>,
    pub phones: Vec<Option<String>>,
    pub linked_ids: Vec<Option<i32>>,
    pub created_at: Vec<DateTime<Utc>>,
    pub updated_at: Vec<DateTime<Utc>>,
}

pub async fn insert_contacts(
    mut conn: &AsyncPgConnection,
    rows: &NewRows,
) -> diesel::QueryResult<()> {
    if rows.ids.is_empty() {
        return Ok(());
    }
    diesel::sql_query(
        "INSERT INTO contacts \
             (id, email, phone_number, linked_id, link_precedence, created_at, updated_at) \
         SELECT id, email, phone, linked_id, \
                CASE WHEN linked_id IS NULL THEN 'primary' ELSE 'secondary' END::link_precedence, \
                at, updated \
         FROM unnest($1::int4[], $2::text[], $3::text[], $4::int4[], $5::timestamptz[], \
                     $6::timestamptz[]) \
             AS r(id, email, phone, linked_id, at, updated)",
    )
    .bind::<Array<Int4>, _>(&rows.ids)
    .bind::<Array<Nullable<Text>>, _>(&rows.emails)
    .bind::<Array<Nullable<Text>>, _>(&rows.phones)
    .bind::<Array<Nullable<Int4>>, _>(&rows.linked_ids)
    .bind::<Array<Timestamptz>, _>(&rows.created_at)
    .bind::<Array<Timestamptz>, _>(&rows.updated_at)
    .execute(&mut conn)
    .await?;
    Ok(())
}

/// A demoted stored primary, the primary it ends under, and when it moved.
#[derive(Debug, Clone, Copy)]
pub struct Relink {
    pub from: i32,
    pub to: i32,
    pub at: DateTime<Utc>,
}

/// Moves each demoted primary, and every row linked to it (soft-deleted ones
/// too, so that no link is two levels deep), under its final primary.
pub async fn relink(mut conn: &AsyncPgConnection, demoted: &[Relink]) -> diesel::QueryResult<()> {
    if demoted.is_empty() {
        return Ok(());
    }
    let from: Vec<i32> = demoted.iter().map(|relink| relink.from).collect();
    let to: Vec<i32> = demoted.iter().map(|relink| relink.to).collect();
    let at: Vec<DateTime<Utc>> = demoted.iter().map(|relink| relink.at).collect();
    diesel::sql_query(
        "UPDATE contacts c \
         SET linked_id = m.to_id, link_precedence = 'secondary', \
             updated_at = greatest(c.updated_at, m.at) \
         FROM unnest($1::int4[], $2::int4[], $3::timestamptz[]) AS m(from_id, to_id, at) \
         WHERE c.id = m.from_id OR c.linked_id = m.from_id",
    )
    .bind::<Array<Int4>, _>(&from)
    .bind::<Array<Int4>, _>(&to)
    .bind::<Array<Timestamptz>, _>(&at)
    .execute(&mut conn)
    .await?;
    Ok(())
}

#[derive(Debug, QueryableByName)]
struct HeldId {
    #[diesel(sql_type = Int8)]
    id: i64,
}

/// Keeps one held order as `graph::record_held` does (a repeat of pending values
/// counts up), without its ledger and outbox rows, which the batch writes with
/// the others in order.
pub async fn upsert_held(
    mut conn: &AsyncPgConnection,
    held: &HeldRow<'_>,
) -> diesel::QueryResult<i64> {
    let row: HeldId = diesel::sql_query(
        "INSERT INTO held_requests (email, phone_number, primary_ids, limit_kind, \
             suspect_kind, suspect_value, request_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (email, phone_number) WHERE status = 'pending' DO UPDATE \
         SET times_seen = held_requests.times_seen + 1, last_seen_at = clock_timestamp(), \
             primary_ids = EXCLUDED.primary_ids, request_id = EXCLUDED.request_id \
         RETURNING id",
    )
    .bind::<Nullable<Text>, _>(held.email)
    .bind::<Nullable<Text>, _>(held.phone)
    .bind::<Array<Int4>, _>(held.primary_ids)
    .bind::<Text, _>(held.limit_kind)
    .bind::<Text, _>(held.suspect_kind)
    .bind::<Text, _>(held.suspect_value)
    .bind::<Nullable<Text>, _>(held.request_id)
    .get_result(&mut conn)
    .await?;
    Ok(row.id)
}

/// One held order, as `held_requests` keeps it.
#[derive(Debug)]
pub struct HeldRow<'a> {
    pub email: Option<&'a str>,
    pub phone: Option<&'a str>,
    pub primary_ids: &'a [i32],
    pub limit_kind: &'a str,
    pub suspect_kind: &'a str,
    pub suspect_value: &'a str,
    pub request_id: Option<&'a str>,
}

/// The batch's ledger rows, in the order single calls would have written them.
#[derive(Debug, Default)]
pub struct LedgerRows {
    pub kinds: Vec<&'static str>,
    pub contact_ids: Vec<Option<i32>>,
    pub primary_ids: Vec<i32>,
    pub emails: Vec<Option<String>>,
    pub phones: Vec<Option<String>>,
    pub held_ids: Vec<Option<i64>>,
    pub created_at: Vec<Option<DateTime<Utc>>>,
}

/// The batch's change events, in order.
#[derive(Debug, Default)]
pub struct ChangeRows {
    pub kinds: Vec<&'static str>,
    /// Each change's primaries and contacts, as int4 array literals (`{1,2}`).
    pub primary_ids: Vec<String>,
    pub contact_ids: Vec<String>,
}

/// Writes the ledger rows and the change events, each in one statement, in order;
/// every row carries the batch's request id.
pub async fn record(
    conn: &AsyncPgConnection,
    ledger: &LedgerRows,
    changes: &ChangeRows,
    request_id: Option<&str>,
) -> diesel::QueryResult<()> {
    // Pipelined: sent together, run in order.
    futures_util::future::try_join(
        record_ledger(conn, ledger, request_id),
        record_changes(conn, changes, request_id),
    )
    .await
    .map(drop)
}

async fn record_ledger(
    mut conn: &AsyncPgConnection,
    ledger: &LedgerRows,
    request_id: Option<&str>,
) -> diesel::QueryResult<()> {
    if !ledger.kinds.is_empty() {
        let kinds: Vec<&str> = ledger.kinds.clone();
        diesel::sql_query(
            "INSERT INTO identity_events \
                 (kind, contact_id, primary_id, email, phone_number, held_id, request_id, \
                  created_at) \
             SELECT kind::identity_event_kind, contact_id, primary_id, email, phone, held_id, $7, \
                    coalesce(at, clock_timestamp()) \
             FROM unnest($1::text[], $2::int4[], $3::int4[], $4::text[], $5::text[], \
                         $6::int8[], $8::timestamptz[]) \
                 WITH ORDINALITY AS r(kind, contact_id, primary_id, email, phone, held_id, at, n) \
             ORDER BY n",
        )
        .bind::<Array<Text>, _>(&kinds)
        .bind::<Array<Nullable<Int4>>, _>(&ledger.contact_ids)
        .bind::<Array<Int4>, _>(&ledger.primary_ids)
        .bind::<Array<Nullable<Text>>, _>(&ledger.emails)
        .bind::<Array<Nullable<Text>>, _>(&ledger.phones)
        .bind::<Array<Nullable<Int8>>, _>(&ledger.held_ids)
        .bind::<Nullable<Text>, _>(request_id)
        .bind::<Array<Nullable<Timestamptz>>, _>(&ledger.created_at)
        .execute(&mut conn)
        .await?;
    }
    Ok(())
}

async fn record_changes(
    mut conn: &AsyncPgConnection,
    changes: &ChangeRows,
    request_id: Option<&str>,
) -> diesel::QueryResult<()> {
    if !changes.kinds.is_empty() {
        let kinds: Vec<&str> = changes.kinds.clone();
        diesel::sql_query(
            "INSERT INTO identity_changes (kind, primary_ids, contact_ids, request_id) \
             SELECT kind, primary_ids::int4[], contact_ids::int4[], $4 \
             FROM unnest($1::text[], $2::text[], $3::text[]) \
                 WITH ORDINALITY AS c(kind, primary_ids, contact_ids, n) \
             ORDER BY n",
        )
        .bind::<Array<Text>, _>(&kinds)
        .bind::<Array<Text>, _>(&changes.primary_ids)
        .bind::<Array<Text>, _>(&changes.contact_ids)
        .bind::<Nullable<Text>, _>(request_id)
        .execute(&mut conn)
        .await?;
    }
    Ok(())
}
