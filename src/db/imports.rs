//! The `imports` table (docs/SPEC.md §13.1): each import's committed point, written
//! in the same transaction as the chunk that reached it.

use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, BigInt, Bool, Int8, Nullable, Text, Timestamptz};
use diesel::{ExpressionMethods, OptionalExtension, QueryDsl, QueryableByName};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::schema::{contacts, imports};

/// The id sequences an import draws from, in the order `sequences` stores them.
const SEQUENCES: [(&str, &str); 4] = [
    ("contacts", "id"),
    ("identity_events", "id"),
    ("identity_changes", "id"),
    ("held_requests", "id"),
];

#[derive(Debug, Clone, QueryableByName)]
pub struct ImportRecord {
    #[diesel(sql_type = Int8)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub source: String,
    #[diesel(sql_type = Text)]
    pub format: String,
    #[diesel(sql_type = Int8)]
    pub lines_done: i64,
    #[diesel(sql_type = Int8)]
    pub bytes_done: i64,
    #[diesel(sql_type = Text)]
    pub prefix_sha256: String,
    #[diesel(sql_type = Int8)]
    pub orders_read: i64,
    #[diesel(sql_type = Int8)]
    pub orders_applied: i64,
    #[diesel(sql_type = Int8)]
    pub orders_rejected: i64,
    #[diesel(sql_type = Int8)]
    pub identities_created: i64,
    #[diesel(sql_type = Int8)]
    pub merges: i64,
    #[diesel(sql_type = Int8)]
    pub held: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub last_ordered_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Array<Int8>)]
    pub sequences: Vec<i64>,
    #[diesel(sql_type = Timestamptz)]
    pub started_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub updated_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub finished_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, source, format, lines_done, bytes_done, prefix_sha256, orders_read, \
     orders_applied, orders_rejected, identities_created, merges, held, last_ordered_at, \
     sequences, started_at, updated_at, finished_at";

/// The latest import of the input with this fingerprint.
pub async fn latest(
    conn: &mut AsyncPgConnection,
    fingerprint: &str,
) -> diesel::QueryResult<Option<ImportRecord>> {
    diesel::sql_query(format!(
        "SELECT {COLUMNS} FROM imports WHERE fingerprint = $1 ORDER BY id DESC LIMIT 1"
    ))
    .bind::<Text, _>(fingerprint)
    .get_result(conn)
    .await
    .optional()
}

/// The latest unfinished import of `source` (a path as the operator named it).
pub async fn interrupted_from(
    conn: &mut AsyncPgConnection,
    source: &str,
) -> diesel::QueryResult<Option<ImportRecord>> {
    diesel::sql_query(format!(
        "SELECT {COLUMNS} FROM imports WHERE source = $1 AND finished_at IS NULL \
         ORDER BY id DESC LIMIT 1"
    ))
    .bind::<Text, _>(source)
    .get_result(conn)
    .await
    .optional()
}

/// Starts recording an import; nothing of it is committed yet. Recorded already:
/// the sequences' positions (an import killed in its first chunk resumes with the
/// ids it would have drawn), the newest stored contact's time as the floor of the
/// import's `orderedAt` (a resumed run checks the same floor), and the start time
/// by the database's clock (no `orderedAt` may be later, whichever run reads it).
pub async fn start(
    conn: &mut AsyncPgConnection,
    fingerprint: &str,
    source: &str,
    format: &str,
    empty_prefix_sha256: &str,
) -> diesel::QueryResult<ImportRecord> {
    diesel::sql_query(format!(
        "INSERT INTO imports (fingerprint, source, format, prefix_sha256, sequences, \
             last_ordered_at) \
         VALUES ($1, $2, $3, $4, {}, (SELECT max(created_at) FROM contacts)) \
         RETURNING {COLUMNS}",
        sequence_positions()
    ))
    .bind::<Text, _>(fingerprint)
    .bind::<Text, _>(source)
    .bind::<Text, _>(format)
    .bind::<Text, _>(empty_prefix_sha256)
    .get_result(conn)
    .await
}

/// Starts an import that committed nothing over again, as [`start`] would, for an
/// input that may have changed since (a refusal at its first lines, then a fix):
/// nothing of the refused attempt holds, not its start time, nor its floor, nor its
/// input's fingerprint. `None` when it has committed a chunk meanwhile.
pub async fn restart(
    conn: &mut AsyncPgConnection,
    id: i64,
    fingerprint: &str,
    format: &str,
) -> diesel::QueryResult<Option<ImportRecord>> {
    diesel::sql_query(format!(
        "UPDATE imports SET fingerprint = $2, format = $3, sequences = {}, \
             last_ordered_at = (SELECT max(created_at) FROM contacts), \
             started_at = clock_timestamp(), updated_at = clock_timestamp() \
         WHERE id = $1 AND lines_done = 0 AND finished_at IS NULL \
         RETURNING {COLUMNS}",
        sequence_positions()
    ))
    .bind::<Int8, _>(id)
    .bind::<Text, _>(fingerprint)
    .bind::<Text, _>(format)
    .get_result(conn)
    .await
    .optional()
}

/// Records that an interrupted import goes on with an input whose first 64 KiB
/// changed (fixed after the line it stopped at): a later run of the fixed input
/// must find this import, finished or not, as its own.
pub async fn refingerprint(
    conn: &mut AsyncPgConnection,
    id: i64,
    fingerprint: &str,
) -> diesel::QueryResult<()> {
    diesel::update(imports::table.find(id))
        .set(imports::fingerprint.eq(fingerprint))
        .execute(conn)
        .await?;
    Ok(())
}

/// Where a chunk leaves its import; the counts are the chunk's own.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub lines_done: i64,
    pub bytes_done: i64,
    pub prefix_sha256: String,
    pub last_ordered_at: Option<DateTime<Utc>>,
    pub read: i64,
    pub applied: i64,
    pub rejected: i64,
    pub identities_created: i64,
    pub merges: i64,
    pub held: i64,
}

/// Records a chunk's progress and the sequences as it leaves them (inside the
/// chunk's transaction).
pub async fn advance(
    mut conn: &AsyncPgConnection,
    import_id: i64,
    progress: &Progress,
) -> diesel::QueryResult<()> {
    let sequences = sequence_positions();
    let updated = diesel::sql_query(format!(
        "UPDATE imports SET lines_done = $2, bytes_done = $3, prefix_sha256 = $4, \
             last_ordered_at = coalesce($5, last_ordered_at), \
             orders_read = orders_read + $6, orders_applied = orders_applied + $7, \
             orders_rejected = orders_rejected + $8, \
             identities_created = identities_created + $9, merges = merges + $10, \
             held = held + $11, sequences = {sequences}, \
             updated_at = clock_timestamp() \
         WHERE id = $1 AND finished_at IS NULL"
    ))
    .bind::<Int8, _>(import_id)
    .bind::<Int8, _>(progress.lines_done)
    .bind::<Int8, _>(progress.bytes_done)
    .bind::<Text, _>(&progress.prefix_sha256)
    .bind::<Nullable<Timestamptz>, _>(progress.last_ordered_at)
    .bind::<Int8, _>(progress.read)
    .bind::<Int8, _>(progress.applied)
    .bind::<Int8, _>(progress.rejected)
    .bind::<Int8, _>(progress.identities_created)
    .bind::<Int8, _>(progress.merges)
    .bind::<Int8, _>(progress.held)
    .execute(&mut conn)
    .await?;
    // Finished meanwhile (by another run that got round the claim): this chunk
    // must not commit.
    if updated != 1 {
        return Err(diesel::result::Error::NotFound);
    }
    Ok(())
}

pub async fn finish(
    conn: &mut AsyncPgConnection,
    import_id: i64,
) -> diesel::QueryResult<ImportRecord> {
    diesel::sql_query(format!(
        "UPDATE imports SET finished_at = clock_timestamp(), updated_at = clock_timestamp() \
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind::<Int8, _>(import_id)
    .get_result(conn)
    .await
}

#[derive(Debug, QueryableByName)]
struct Taken {
    #[diesel(sql_type = Bool)]
    taken: bool,
}

/// Claims the input for this process (a session lock, until `release`): two runs
/// of one import would apply its chunks twice.
pub async fn claim(conn: &mut AsyncPgConnection, fingerprint: &str) -> diesel::QueryResult<bool> {
    let row: Taken = diesel::sql_query(
        "SELECT pg_try_advisory_lock(hashtextextended('import:' || $1, 0)) AS taken",
    )
    .bind::<Text, _>(fingerprint)
    .get_result(conn)
    .await?;
    Ok(row.taken)
}

pub async fn release(conn: &mut AsyncPgConnection, fingerprint: &str) -> diesel::QueryResult<()> {
    diesel::sql_query("SELECT pg_advisory_unlock(hashtextextended('import:' || $1, 0))")
        .bind::<Text, _>(fingerprint)
        .execute(conn)
        .await?;
    Ok(())
}

/// How a chunk's statements are planned: without JIT (the cost the planner sees
/// makes it compile them, which takes longer than running them) and, with
/// `probes_only`, as index probes only. A chunk matches tens of thousands of
/// values: on a table of a few million rows the planner prices one scan of it
/// below that many probes and is wrong by three times or more (measured: 400 ms
/// against 125 ms a chunk at 1.8 M rows), while on a small table the scan does
/// win. Every statement of a chunk has an index to probe.
pub async fn plan_chunk(
    mut conn: &AsyncPgConnection,
    probes_only: bool,
) -> diesel::QueryResult<()> {
    let probes = if probes_only {
        ", set_config('enable_seqscan', 'off', true), \
         set_config('enable_mergejoin', 'off', true), set_config('enable_hashjoin', 'off', true)"
    } else {
        ""
    };
    diesel::sql_query(format!(
        "SELECT set_config('jit', 'off', true), set_config('random_page_cost', '1.1', true){probes}"
    ))
    .execute(&mut conn)
    .await?;
    Ok(())
}

#[derive(Debug, QueryableByName)]
struct Restored {
    #[diesel(sql_type = Bool)]
    restored: bool,
}

/// Puts the id sequences back where an interrupted import's last chunk left them,
/// if no row was written with a later id since (the killed chunk's draws are then
/// the only ones past them). Inside a chunk's transaction, after `lock_contacts`;
/// it locks the other tables against writers too.
pub async fn restore_sequences(
    mut conn: &AsyncPgConnection,
    sequences: &[i64],
) -> diesel::QueryResult<bool> {
    if sequences.len() != SEQUENCES.len() {
        return Ok(false);
    }
    let untouched = SEQUENCES
        .iter()
        .zip(sequences)
        .map(|((table, column), at)| {
            format!("coalesce((SELECT max({column}) FROM {table}), 0) <= {at}")
        })
        .collect::<Vec<_>>()
        .join(" AND ");
    let resets = SEQUENCES
        .iter()
        .zip(sequences)
        .map(|((table, column), at)| {
            let name = sequence_name(table, column);
            if *at > 0 {
                format!("setval('{name}', {at}, true)")
            } else {
                format!("setval('{name}', 1, false)")
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    // Writers that draw these ids without touching `contacts` (unblocking, rejecting
    // a held request, erasing a value no contact holds) finish before the check.
    diesel::sql_query(
        "LOCK TABLE identity_events, identity_changes, held_requests IN EXCLUSIVE MODE",
    )
    .execute(&mut conn)
    .await?;
    let row: Restored = diesel::sql_query(format!("SELECT {untouched} AS restored"))
        .get_result(&mut conn)
        .await?;
    if row.restored {
        diesel::sql_query(format!("SELECT {resets}"))
            .execute(&mut conn)
            .await?;
    }
    Ok(row.restored)
}

/// PostgreSQL's estimate of the rows in `contacts`, as of its last statistics.
pub async fn estimated_contacts(conn: &mut AsyncPgConnection) -> diesel::QueryResult<i64> {
    #[derive(QueryableByName)]
    struct Estimate {
        #[diesel(sql_type = BigInt)]
        rows: i64,
    }
    let estimate: Estimate = diesel::sql_query(
        "SELECT greatest(reltuples, 0)::int8 AS rows FROM pg_class \
         WHERE oid = 'contacts'::regclass",
    )
    .get_result(conn)
    .await?;
    Ok(estimate.rows)
}

/// Fresh statistics for `contacts`. An import's chunks hold a lock autovacuum's
/// ANALYZE gives way to, so without this the planner keeps the row counts of
/// before the import and turns a chunk's index probes into table scans. Takes a
/// lock that lets readers and writers go on.
pub async fn analyze_contacts(conn: &mut AsyncPgConnection) -> diesel::QueryResult<()> {
    diesel::sql_query("ANALYZE contacts").execute(conn).await?;
    Ok(())
}

/// How many contacts are stored (the migration wants none).
pub async fn contact_count(conn: &mut AsyncPgConnection) -> diesel::QueryResult<i64> {
    contacts::table.count().get_result(conn).await
}

/// `ARRAY[...]` of the sequences' positions: the last id each gave out (0: none).
fn sequence_positions() -> String {
    let positions = SEQUENCES
        .iter()
        .map(|(table, column)| {
            format!(
                "(SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END \
                  FROM {})",
                sequence_name(table, column)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!("ARRAY[{positions}]")
}

/// The serial columns' sequences keep PostgreSQL's default names.
fn sequence_name(table: &str, column: &str) -> String {
    format!("{table}_{column}_seq")
}
