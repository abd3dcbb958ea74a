//! The identity graph's tables (docs/SPEC.md §10): the evidence ledger
//! (`identity_events`), administrators' blocks (`blocked_values`) and held requests
//! (`held_requests`). Statements on the identify path are prepared; the
//! administrators' ones are plain `sql_query`.

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Bool, Int4, Int8, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::prepared::{Bind, Prepared, static_sql};

// Public so that a test can PREPARE each against the migrated schema.
static_sql!(
    RecordMergesSql = "WITH events AS ( \
         INSERT INTO identity_events \
             (kind, contact_id, primary_id, email, phone_number, request_id) \
         SELECT 'merged', demoted, $1, $3, $4, $5 FROM unnest($2::int4[]) AS demoted) \
     INSERT INTO identity_changes (kind, primary_ids, contact_ids, request_id) \
     VALUES ('merged', ARRAY[$1::int4] || $2::int4[], $2::int4[], $5)"
);

static_sql!(
    RecordHeldSql = "WITH held AS ( \
         INSERT INTO held_requests (email, phone_number, primary_ids, limit_kind, \
             suspect_kind, suspect_value, request_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (email, phone_number) WHERE status = 'pending' DO UPDATE \
         SET times_seen = held_requests.times_seen + 1, last_seen_at = clock_timestamp(), \
             primary_ids = EXCLUDED.primary_ids, request_id = EXCLUDED.request_id \
         RETURNING id), \
     change AS ( \
         INSERT INTO identity_changes (kind, primary_ids, contact_ids, request_id) \
         SELECT 'held', $3, '{}', $7 FROM held) \
     INSERT INTO identity_events (kind, primary_id, email, phone_number, held_id, request_id) \
     SELECT 'held', $8, $1, $2, held.id, $7 FROM held \
     RETURNING held_id"
);

use crate::domain::{ContactValue, Email, EvidenceEvent, Hold, IdentifyRequest, Phone};

/// Records one `merged` event per demoted primary, and the change for the outbox.
pub async fn record_merges(
    mut conn: &AsyncPgConnection,
    primary_id: i32,
    demoted: &[i32],
    email: Option<&Email>,
    phone: Option<&Phone>,
    request_id: Option<&str>,
) -> diesel::QueryResult<()> {
    Prepared::<RecordMergesSql, _>::new((
        Bind::<Int4, _>::new(primary_id),
        Bind::<Array<Int4>, _>::new(demoted),
        Bind::<Nullable<Text>, _>::new(email.map(Email::as_str)),
        Bind::<Nullable<Text>, _>::new(phone.map(Phone::as_str)),
        Bind::<Nullable<Text>, _>::new(request_id),
    ))
    .execute(&mut conn)
    .await?;
    Ok(())
}

/// A row of `blocked_values` as read back (every query of it selects `kind, value`).
#[derive(Debug, QueryableByName)]
pub(crate) struct BlockedRow {
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Text)]
    value: String,
}

/// The values of blocked rows; a kind this build does not know is left out.
pub(crate) fn blocked_values_of<C: FromIterator<ContactValue>>(rows: Vec<BlockedRow>) -> C {
    rows.into_iter()
        .filter_map(|row| ContactValue::from_stored(&row.kind, row.value))
        .collect()
}

#[derive(Debug, QueryableByName)]
struct HeldId {
    #[diesel(sql_type = Int8)]
    held_id: i64,
}

/// Keeps a held request (one pending record per pair of values; a repeat counts up)
/// and its `held` event; returns the record's id.
pub async fn record_held(
    mut conn: &AsyncPgConnection,
    request: &IdentifyRequest,
    hold: &Hold,
    request_id: Option<&str>,
) -> diesel::QueryResult<i64> {
    let row: HeldId = Prepared::<RecordHeldSql, _>::new((
        Bind::<Nullable<Text>, _>::new(request.email().map(Email::as_str)),
        Bind::<Nullable<Text>, _>::new(request.phone().map(Phone::as_str)),
        Bind::<Array<Int4>, _>::new(&hold.primary_ids),
        Bind::<Text, _>::new(hold.limit.as_str()),
        Bind::<Text, _>::new(hold.suspect.kind()),
        Bind::<Text, _>::new(hold.suspect.as_str()),
        Bind::<Nullable<Text>, _>::new(request_id),
        Bind::<Int4, _>::new(hold.primary_id),
    ))
    .get_result(&mut conn)
    .await?;
    Ok(row.held_id)
}

/// A held request as stored.
#[derive(Debug, Clone, QueryableByName)]
pub struct HeldRecord {
    #[diesel(sql_type = Int8)]
    pub id: i64,
    #[diesel(sql_type = Nullable<Text>)]
    pub email: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub phone_number: Option<String>,
    #[diesel(sql_type = Array<Int4>)]
    pub primary_ids: Vec<i32>,
    #[diesel(sql_type = Text)]
    pub limit_kind: String,
    #[diesel(sql_type = Text)]
    pub suspect_kind: String,
    #[diesel(sql_type = Text)]
    pub suspect_value: String,
    #[diesel(sql_type = Text)]
    pub status: String,
    #[diesel(sql_type = Int4)]
    pub times_seen: i32,
    #[diesel(sql_type = Nullable<Text>)]
    pub request_id: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub last_seen_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub resolved_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Text>)]
    pub resolved_by: Option<String>,
}

impl HeldRecord {
    pub fn suspect(&self) -> Option<ContactValue> {
        ContactValue::from_stored(&self.suspect_kind, self.suspect_value.clone())
    }
}

const HELD_COLUMNS: &str = "id, email, phone_number, primary_ids, limit_kind, suspect_kind, \
     suspect_value, status::text AS status, times_seen, request_id, created_at, last_seen_at, \
     resolved_at, resolved_by";

/// The held request; with `lock`, locked for its resolution.
pub async fn find_held(
    conn: &mut AsyncPgConnection,
    id: i64,
    lock: bool,
) -> diesel::QueryResult<Option<HeldRecord>> {
    let lock = if lock { "FOR UPDATE" } else { "" };
    diesel::sql_query(format!(
        "SELECT {HELD_COLUMNS} FROM held_requests WHERE id = $1 {lock}"
    ))
    .bind::<Int8, _>(id)
    .get_result(conn)
    .await
    .map(Some)
    .or_else(|err| match err {
        diesel::result::Error::NotFound => Ok(None),
        err => Err(err),
    })
}

/// Marks a held request approved (with the primary it went to) or rejected, and
/// records the matching event.
pub async fn resolve_held(
    conn: &mut AsyncPgConnection,
    held: &HeldRecord,
    approved_into: Option<i32>,
    principal: &str,
    request_id: Option<&str>,
) -> diesel::QueryResult<HeldRecord> {
    let status = if approved_into.is_some() {
        "approved"
    } else {
        "rejected"
    };
    let record: HeldRecord = diesel::sql_query(format!(
        "UPDATE held_requests SET status = $2::held_status, resolved_at = clock_timestamp(), \
             resolved_by = $3 WHERE id = $1 RETURNING {HELD_COLUMNS}"
    ))
    .bind::<Int8, _>(held.id)
    .bind::<Text, _>(status)
    .bind::<Text, _>(principal)
    .get_result(conn)
    .await?;
    diesel::sql_query(
        "INSERT INTO identity_events (kind, primary_id, email, phone_number, held_id, request_id) \
         VALUES ($1::identity_event_kind, $2, $3, $4, $5, $6)",
    )
    .bind::<Text, _>(status)
    .bind::<Nullable<Int4>, _>(approved_into)
    .bind::<Nullable<Text>, _>(held.email.as_deref())
    .bind::<Nullable<Text>, _>(held.phone_number.as_deref())
    .bind::<Int8, _>(held.id)
    .bind::<Nullable<Text>, _>(request_id)
    .execute(conn)
    .await?;
    Ok(record)
}

/// Up to `limit` held requests with this status and an id above `after`, by id.
pub async fn list_held(
    conn: &mut AsyncPgConnection,
    status: &str,
    after: Option<i64>,
    limit: i64,
) -> diesel::QueryResult<Vec<HeldRecord>> {
    diesel::sql_query(format!(
        "SELECT {HELD_COLUMNS} FROM held_requests \
         WHERE status = $1::held_status AND id > $2 ORDER BY id LIMIT $3"
    ))
    .bind::<Text, _>(status)
    .bind::<Int8, _>(after.unwrap_or(0))
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

/// A block as stored.
#[derive(Debug, Clone, QueryableByName)]
pub struct BlockRecord {
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = Text)]
    pub value: String,
    #[diesel(sql_type = Text)]
    pub reason: String,
    #[diesel(sql_type = Text)]
    pub blocked_by: String,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
}

/// Blocks a value and records a `blocked` event; a repeat keeps the first block and
/// records nothing.
pub async fn insert_block(
    conn: &mut AsyncPgConnection,
    value: &ContactValue,
    reason: &str,
    principal: &str,
    request_id: Option<&str>,
) -> diesel::QueryResult<()> {
    let inserted = diesel::sql_query(
        "INSERT INTO blocked_values (kind, value, reason, blocked_by) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (kind, value) DO NOTHING",
    )
    .bind::<Text, _>(value.kind())
    .bind::<Text, _>(value.as_str())
    .bind::<Text, _>(reason)
    .bind::<Text, _>(principal)
    .execute(conn)
    .await?;
    if inserted == 0 {
        return Ok(());
    }
    record_value_event(conn, "blocked", value, request_id).await
}

/// Removes a block; `false` when the value was not blocked (nothing recorded).
pub async fn delete_block(
    conn: &mut AsyncPgConnection,
    value: &ContactValue,
    request_id: Option<&str>,
) -> diesel::QueryResult<bool> {
    let removed = diesel::sql_query("DELETE FROM blocked_values WHERE kind = $1 AND value = $2")
        .bind::<Text, _>(value.kind())
        .bind::<Text, _>(value.as_str())
        .execute(conn)
        .await?;
    if removed > 0 {
        record_value_event(conn, "unblocked", value, request_id).await?;
    }
    Ok(removed > 0)
}

async fn record_value_event(
    conn: &mut AsyncPgConnection,
    kind: &str,
    value: &ContactValue,
    request_id: Option<&str>,
) -> diesel::QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO identity_events (kind, email, phone_number, request_id) \
         VALUES ($1::identity_event_kind, $2, $3, $4)",
    )
    .bind::<Text, _>(kind)
    .bind::<Nullable<Text>, _>(value.email().map(Email::as_str))
    .bind::<Nullable<Text>, _>(value.phone().map(Phone::as_str))
    .bind::<Nullable<Text>, _>(request_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Up to `limit` blocks after the `(kind, value)` cursor, in that order.
pub async fn list_blocks(
    conn: &mut AsyncPgConnection,
    after: Option<(String, String)>,
    limit: i64,
) -> diesel::QueryResult<Vec<BlockRecord>> {
    let (kind, value) = after.unwrap_or_default();
    diesel::sql_query(
        "SELECT kind, value, reason, blocked_by, created_at FROM blocked_values \
         WHERE (kind, value) > ($1, $2) ORDER BY kind, value LIMIT $3",
    )
    .bind::<Text, _>(kind)
    .bind::<Text, _>(value)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

/// One ledger event as stored.
#[derive(Debug, Clone, QueryableByName)]
pub struct EventRecord {
    #[diesel(sql_type = Int8)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = Nullable<Int4>)]
    pub contact_id: Option<i32>,
    #[diesel(sql_type = Nullable<Int4>)]
    pub primary_id: Option<i32>,
    #[diesel(sql_type = Nullable<Int4>)]
    pub from_primary_id: Option<i32>,
    #[diesel(sql_type = Nullable<Text>)]
    pub email: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub phone_number: Option<String>,
    #[diesel(sql_type = Nullable<Array<Int4>>)]
    pub contact_ids: Option<Vec<i32>>,
    #[diesel(sql_type = Nullable<Int8>)]
    pub held_id: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    pub request_id: Option<String>,
    #[diesel(sql_type = Bool)]
    pub pre_ledger: bool,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
}

impl EventRecord {
    /// The event as evidence, if it is of a kind the evidence rules read.
    pub fn as_evidence(&self) -> Option<EvidenceEvent> {
        let email = || self.email.clone().map(Email::from_stored);
        let phone = || self.phone_number.clone().map(Phone::from_stored);
        match self.kind.as_str() {
            "merged" => Some(EvidenceEvent::Merged {
                id: self.id,
                email: email()?,
                phone: phone()?,
            }),
            "linked" if self.pre_ledger => Some(EvidenceEvent::PreLedger {
                id: self.id,
                contact_id: self.contact_id?,
                primary_id: self.primary_id?,
            }),
            "blocked" => Some(EvidenceEvent::Blocked {
                id: self.id,
                value: email()
                    .map(ContactValue::Email)
                    .or_else(|| phone().map(ContactValue::Phone))?,
            }),
            "split" => Some(EvidenceEvent::Split {
                id: self.id,
                contact_ids: self.contact_ids.clone().unwrap_or_default(),
            }),
            _ => None,
        }
    }
}

const EVENT_COLUMNS: &str = "id, kind::text AS kind, contact_id, primary_id, from_primary_id, \
     email, phone_number, contact_ids, held_id, request_id, pre_ledger, created_at";

/// The events that can join or sever these contacts and values: merges and blocks
/// naming a value, pre-ledger links and splits naming a contact.
pub async fn evidence_for(
    conn: &mut AsyncPgConnection,
    emails: &[&str],
    phones: &[&str],
    contact_ids: &[i32],
) -> diesel::QueryResult<Vec<EvidenceEvent>> {
    // Blocks are looked up by the merges' values, not the contacts': a blocked
    // value is no longer held by any contact.
    let rows: Vec<EventRecord> = diesel::sql_query(format!(
        "WITH merges AS ( \
             SELECT {EVENT_COLUMNS} FROM identity_events \
             WHERE kind = 'merged' AND (email = ANY($1) OR phone_number = ANY($2))) \
         SELECT * FROM merges \
         UNION \
         SELECT {EVENT_COLUMNS} FROM identity_events \
         WHERE kind = 'blocked' AND (email IN (SELECT email FROM merges) \
             OR phone_number IN (SELECT phone_number FROM merges)) \
         UNION \
         SELECT {EVENT_COLUMNS} FROM identity_events \
         WHERE pre_ledger AND contact_id = ANY($3) \
         UNION \
         SELECT {EVENT_COLUMNS} FROM identity_events \
         WHERE kind = 'split' AND contact_ids && $3"
    ))
    .bind::<Array<Text>, _>(emails)
    .bind::<Array<Text>, _>(phones)
    .bind::<Array<Int4>, _>(contact_ids)
    .load(conn)
    .await?;
    Ok(rows.iter().filter_map(EventRecord::as_evidence).collect())
}

/// Every event the evidence rules read, for `check --deep`.
pub async fn all_evidence(conn: &mut AsyncPgConnection) -> diesel::QueryResult<Vec<EvidenceEvent>> {
    let rows: Vec<EventRecord> = diesel::sql_query(format!(
        "SELECT {EVENT_COLUMNS} FROM identity_events \
         WHERE kind IN ('merged', 'blocked', 'split') OR pre_ledger"
    ))
    .load(conn)
    .await?;
    Ok(rows.iter().filter_map(EventRecord::as_evidence).collect())
}

/// Up to `limit` events naming one of `members`, newest first, below `before`.
pub async fn history(
    conn: &mut AsyncPgConnection,
    members: &[i32],
    before: Option<i64>,
    limit: i64,
) -> diesel::QueryResult<Vec<EventRecord>> {
    diesel::sql_query(format!(
        "SELECT {EVENT_COLUMNS} FROM identity_events \
         WHERE id < $2 AND (contact_id = ANY($1) OR primary_id = ANY($1) \
             OR from_primary_id = ANY($1)) \
         ORDER BY id DESC LIMIT $3"
    ))
    .bind::<Array<Int4>, _>(members)
    .bind::<Int8, _>(before.unwrap_or(i64::MAX))
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

#[derive(Debug, QueryableByName)]
struct Creation {
    #[diesel(sql_type = Int4)]
    contact_id: i32,
    #[diesel(sql_type = Int8)]
    id: i64,
}

/// The event that created (or, before the ledger, linked) each contact.
pub async fn creation_events(
    conn: &mut AsyncPgConnection,
    contact_ids: &[i32],
) -> diesel::QueryResult<std::collections::HashMap<i32, i64>> {
    let rows: Vec<Creation> = diesel::sql_query(
        "SELECT contact_id, min(id) AS id FROM identity_events \
         WHERE contact_id = ANY($1) AND kind IN ('created', 'linked') GROUP BY contact_id",
    )
    .bind::<Array<Int4>, _>(contact_ids)
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.contact_id, row.id))
        .collect())
}

/// One component a split made: its primary, its members (primary first), and the
/// identity's primary before.
pub struct SplitComponent<'a> {
    pub primary_id: i32,
    pub contact_ids: Vec<i32>,
    pub from_primary_id: i32,
    pub value: &'a ContactValue,
}

/// Records one `split` event per component, in one statement: a split of a large
/// identity makes thousands of components.
pub async fn record_splits(
    conn: &mut AsyncPgConnection,
    components: &[SplitComponent<'_>],
    request_id: Option<&str>,
) -> diesel::QueryResult<()> {
    let Some(first) = components.first() else {
        return Ok(());
    };
    let primary_ids: Vec<i32> = components.iter().map(|c| c.primary_id).collect();
    let from_primary_ids: Vec<i32> = components.iter().map(|c| c.from_primary_id).collect();
    // The members flattened, each with its component's (1-based) position.
    let mut member_ids: Vec<i32> = Vec::new();
    let mut member_components: Vec<i64> = Vec::new();
    for (position, component) in components.iter().enumerate() {
        member_ids.extend(&component.contact_ids);
        member_components.extend(std::iter::repeat_n(
            position as i64 + 1,
            component.contact_ids.len(),
        ));
    }
    diesel::sql_query(
        "WITH events AS ( \
             INSERT INTO identity_events (kind, primary_id, from_primary_id, email, \
                 phone_number, contact_ids, request_id) \
             SELECT 'split', c.primary_id, c.from_primary_id, $3, $4, m.ids, $5 \
             FROM unnest($1::int4[], $2::int4[]) \
                 WITH ORDINALITY AS c(primary_id, from_primary_id, n) \
             JOIN (SELECT component, array_agg(id ORDER BY position) AS ids \
                   FROM unnest($6::int4[], $7::int8[]) \
                       WITH ORDINALITY AS m(id, component, position) \
                   GROUP BY component) AS m ON m.component = c.n \
             ORDER BY c.n) \
         INSERT INTO identity_changes (kind, primary_ids, contact_ids, request_id) \
         VALUES ('split', $1, $6, $5)",
    )
    .bind::<Array<Int4>, _>(&primary_ids)
    .bind::<Array<Int4>, _>(&from_primary_ids)
    .bind::<Nullable<Text>, _>(first.value.email().map(Email::as_str))
    .bind::<Nullable<Text>, _>(first.value.phone().map(Phone::as_str))
    .bind::<Nullable<Text>, _>(request_id)
    .bind::<Array<Int4>, _>(&member_ids)
    .bind::<Array<Int8>, _>(&member_components)
    .execute(conn)
    .await?;
    Ok(())
}

/// Sets each contact's `linked_id` (`None`: primary) where it changes.
pub async fn relink(
    conn: &mut AsyncPgConnection,
    ids: &[i32],
    linked_ids: &[Option<i32>],
) -> diesel::QueryResult<usize> {
    diesel::sql_query(
        "UPDATE contacts c SET linked_id = u.linked_id, \
             link_precedence = CASE WHEN u.linked_id IS NULL THEN 'primary' \
                                    ELSE 'secondary' END::link_precedence, \
             updated_at = clock_timestamp() \
         FROM unnest($1::int4[], $2::int4[]) AS u(id, linked_id) \
         WHERE c.id = u.id AND c.linked_id IS DISTINCT FROM u.linked_id",
    )
    .bind::<Array<Int4>, _>(ids)
    .bind::<Array<Nullable<Int4>>, _>(linked_ids)
    .execute(conn)
    .await
}

/// Moves soft-deleted contacts linked to `from` to `to` (`None`: each its own
/// primary, when nothing of the identity is left).
pub async fn relink_deleted(
    conn: &mut AsyncPgConnection,
    from: i32,
    to: Option<i32>,
) -> diesel::QueryResult<usize> {
    diesel::sql_query(
        "UPDATE contacts SET linked_id = $2, \
             link_precedence = CASE WHEN $2 IS NULL THEN 'primary' \
                                    ELSE 'secondary' END::link_precedence, \
             updated_at = clock_timestamp() \
         WHERE deleted_at IS NOT NULL AND linked_id = $1 AND id IS DISTINCT FROM $2",
    )
    .bind::<Int4, _>(from)
    .bind::<Nullable<Int4>, _>(to)
    .execute(conn)
    .await
}

/// Removes `value` from every contact holding it, live or soft-deleted, and deletes
/// the contacts it leaves empty; returns (deleted, changed).
///
/// The value goes first from rows that keep another value, then the rows holding
/// only it go: a concurrent block of a row's other value then re-checks that row
/// (READ COMMITTED re-evaluates the condition on the new version) and deletes it
/// rather than leaving it empty. Rows still linked to a row about to go (only
/// soft-deleted rows can be: live ones were re-linked by the split) become their own
/// primaries first, so the foreign key holds.
pub async fn remove_value(
    conn: &mut AsyncPgConnection,
    value: &ContactValue,
) -> diesel::QueryResult<(usize, usize)> {
    let (column, other) = match value {
        ContactValue::Email(_) => ("email", "phone_number"),
        ContactValue::Phone(_) => ("phone_number", "email"),
    };
    let changed = diesel::sql_query(format!(
        "UPDATE contacts SET {column} = NULL, updated_at = clock_timestamp() \
         WHERE {column} = $1 AND {other} IS NOT NULL"
    ))
    .bind::<Text, _>(value.as_str())
    .execute(conn)
    .await?;
    diesel::sql_query(format!(
        "UPDATE contacts SET linked_id = NULL, link_precedence = 'primary', \
             updated_at = clock_timestamp() \
         WHERE linked_id IN (SELECT id FROM contacts WHERE {column} = $1)"
    ))
    .bind::<Text, _>(value.as_str())
    .execute(conn)
    .await?;
    let deleted = diesel::sql_query(format!("DELETE FROM contacts WHERE {column} = $1"))
        .bind::<Text, _>(value.as_str())
        .execute(conn)
        .await?;
    Ok((deleted, changed))
}
