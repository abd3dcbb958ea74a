//! The change-event outbox (docs/SPEC.md §12), read in a gap-free order.
//!
//! Ids come from a sequence at insert, not at commit: a reader going by id could
//! see change 12 while 11's transaction is still running and step past 11 for good.
//! So each row carries its transaction's id (`xid8`), and a reader serves only rows
//! of transactions older than the oldest one still running
//! (`pg_snapshot_xmin(pg_current_snapshot())`), in `(xid, id)` order: every
//! transaction below that bound has ended, so nothing can appear behind a cursor.

use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, BigInt, Int4, Int8, Nullable, Text, Timestamptz};
use diesel::{OptionalExtension, QueryableByName};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// A position in the outbox: the writing transaction's id (as text) and the row's.
pub type Position = (String, i64);

/// One change as stored.
#[derive(Debug, Clone, QueryableByName)]
pub struct ChangeRecord {
    #[diesel(sql_type = Int8)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub xid: String,
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = Array<Int4>)]
    pub primary_ids: Vec<i32>,
    #[diesel(sql_type = Array<Int4>)]
    pub contact_ids: Vec<i32>,
    #[diesel(sql_type = Nullable<Text>)]
    pub request_id: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
}

impl ChangeRecord {
    pub fn position(&self) -> Position {
        (self.xid.clone(), self.id)
    }
}

/// Up to `limit` changes after `after` (from the start when `None`), in order, of
/// transactions that have all ended.
pub async fn page(
    conn: &mut AsyncPgConnection,
    after: Option<&Position>,
    limit: i64,
) -> diesel::QueryResult<Vec<ChangeRecord>> {
    let (xid, id) = after.cloned().unwrap_or_else(|| ("0".to_owned(), 0));
    // The order names the table's columns: a bare `xid` would be the text output
    // column, which sorts transaction 1000 before 999.
    diesel::sql_query(
        "SELECT id, xid::text AS xid, kind, primary_ids, contact_ids, request_id, created_at \
         FROM identity_changes \
         WHERE (xid, id) > ($1::xid8, $2) AND xid < pg_snapshot_xmin(pg_current_snapshot()) \
         ORDER BY identity_changes.xid, identity_changes.id LIMIT $3",
    )
    .bind::<Text, _>(xid)
    .bind::<Int8, _>(id)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

#[derive(Debug, QueryableByName)]
struct Head {
    #[diesel(sql_type = Text)]
    xid: String,
    #[diesel(sql_type = Int8)]
    id: i64,
}

/// The last position readable now (`None` while there is none): a reader that
/// starts there gets exactly the changes not yet readable, that is every
/// transaction still running or committed above the horizon.
pub async fn head(conn: &mut AsyncPgConnection) -> diesel::QueryResult<Option<Position>> {
    let head: Option<Head> = diesel::sql_query(
        "SELECT xid::text AS xid, id FROM identity_changes \
         WHERE xid < pg_snapshot_xmin(pg_current_snapshot()) \
         ORDER BY identity_changes.xid DESC, identity_changes.id DESC LIMIT 1",
    )
    .get_result(conn)
    .await
    .optional()?;
    Ok(head.map(|head| (head.xid, head.id)))
}

/// Retention pruned changes after the cursor: resuming there would miss them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorExpired;

/// [`page`], or [`CursorExpired`] when retention pruned changes after `after`.
///
/// The page is read before the check, in statements of their own: a prune that
/// committed before the page was read (and so took rows from it) committed before
/// the check too, which then sees its mark. Checked the other way round, a prune
/// between the two would go unnoticed and the page would silently skip its rows.
pub async fn page_after(
    conn: &mut AsyncPgConnection,
    after: Option<&Position>,
    limit: i64,
) -> diesel::QueryResult<Result<Vec<ChangeRecord>, CursorExpired>> {
    let rows = page(conn, after, limit).await?;
    match after {
        Some(after) if expired(conn, after).await? => Ok(Err(CursorExpired)),
        _ => Ok(Ok(rows)),
    }
}

#[derive(Debug, QueryableByName)]
struct Expired {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    expired: bool,
}

/// Whether retention pruned changes after `after`: resuming there would miss them.
pub async fn expired(conn: &mut AsyncPgConnection, after: &Position) -> diesel::QueryResult<bool> {
    let row: Expired = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM identity_changes_pruned \
                        WHERE ($1::xid8, $2) < (xid, id)) AS expired",
    )
    .bind::<Text, _>(&after.0)
    .bind::<Int8, _>(after.1)
    .get_result(conn)
    .await?;
    Ok(row.expired)
}

#[derive(Debug, QueryableByName)]
struct Pruned {
    #[diesel(sql_type = BigInt)]
    pruned: i64,
}

/// Deletes changes older than `days` days (of ended transactions only), remembering
/// the newest position deleted; returns how many went.
pub async fn prune(conn: &mut AsyncPgConnection, days: u32) -> diesel::QueryResult<i64> {
    let row: Pruned = diesel::sql_query(
        "WITH pruned AS ( \
             DELETE FROM identity_changes \
             WHERE created_at < now() - make_interval(days => $1) \
               AND xid < pg_snapshot_xmin(pg_current_snapshot()) \
             RETURNING xid, id), \
         newest AS (SELECT xid, id FROM pruned ORDER BY xid DESC, id DESC LIMIT 1), \
         remembered AS ( \
             INSERT INTO identity_changes_pruned (xid, id) SELECT xid, id FROM newest \
             ON CONFLICT (singleton) DO UPDATE SET xid = EXCLUDED.xid, id = EXCLUDED.id \
             WHERE (identity_changes_pruned.xid, identity_changes_pruned.id) \
                 < (EXCLUDED.xid, EXCLUDED.id)) \
         SELECT count(*) AS pruned FROM pruned",
    )
    .bind::<Int4, _>(i32::try_from(days).unwrap_or(i32::MAX))
    .get_result(conn)
    .await?;
    Ok(row.pruned)
}
