//! `import --from-postgres` (docs/SPEC.md §13.2): the original NestJS/TypeORM
//! implementation's `contact` table copied into an empty database here, its links
//! kept as evidence, the links its races missed made, each identity headed by its
//! oldest row, and a report of what the old table claimed and what was repaired.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{Array, Int4, Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

use std::collections::HashSet;

use crate::app::identify::Policy;
use crate::db::graph::{BlockedRow, blocked_values_of};
use crate::db::{DbPool, imports};
use crate::domain::{ContactValue, Email, Limits, Phone};

/// Example ids each repair lists.
const EXAMPLES: usize = 5;

/// Rows written per statement.
const WRITE_BATCH: usize = 10_000;

/// A row of the old table.
#[derive(Debug, Clone, QueryableByName)]
struct OldRow {
    #[diesel(sql_type = Int4)]
    id: i32,
    #[diesel(sql_type = Nullable<Text>)]
    phone_number: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    email: Option<String>,
    #[diesel(sql_type = Nullable<Int4>)]
    linked_id: Option<i32>,
    #[diesel(sql_type = Nullable<Text>)]
    link_precedence: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    updated_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    deleted_at: Option<DateTime<Utc>>,
}

/// One kind of repair: how many rows (or identities) and a few of their ids.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Repair {
    pub count: u64,
    pub examples: Vec<i32>,
}

impl Repair {
    fn note(&mut self, id: i32) {
        self.count += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(id);
        }
    }
}

/// What the migration found and did.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub table: String,
    pub rows: u64,
    pub live_rows: u64,
    pub soft_deleted_rows: u64,
    /// Identities the old table claimed: its live rows without a `linkedId`.
    pub identities_claimed: u64,
    /// Identities the rules give.
    pub identities: u64,
    pub repairs: Repairs,
    /// Identities over the guardrails' limits (by their primary's id): kept whole.
    pub over_limits: Repair,
    pub elapsed_seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Repairs {
    /// Old identities joined with another because they share a value or a link
    /// (by the kept primary's id).
    pub identities_merged: Repair,
    /// Old primaries that are secondaries now (an older row heads their identity).
    pub primaries_demoted: Repair,
    /// Rows whose `linkedId` named a secondary: re-linked to the primary.
    pub linked_to_secondary: Repair,
    /// Rows whose `linkedId` named no row, or themselves: the link is dropped.
    pub linked_to_missing: Repair,
    /// Live rows whose `linkedId` named a soft-deleted row.
    pub linked_to_deleted: Repair,
    /// Rows whose `linkPrecedence` disagreed with their `linkedId`.
    pub precedence_mismatch: Repair,
    /// Live rows with the same email and phone as an older row of their identity:
    /// kept, as secondaries.
    pub duplicates: Repair,
    /// Values that do not parse (docs/SPEC.md §3): dropped.
    pub invalid_values: Repair,
    /// Values blocked here (the built-in or file rules, or `blocked_values`): dropped.
    pub blocked_values: Repair,
    /// Rows left with no value (none, or only invalid or blocked ones): not copied,
    /// since a contact here holds an email or a phone.
    pub rows_without_value: Repair,
}

impl Report {
    pub fn human(&self) -> String {
        let mut text = format!(
            "migrated {} rows from {} ({} live, {} soft-deleted)\n  identities the old table \
             claimed: {}\n  identities the rules give:       {}\n",
            self.rows,
            self.table,
            self.live_rows,
            self.soft_deleted_rows,
            self.identities_claimed,
            self.identities
        );
        let repairs = &self.repairs;
        for (label, repair) in [
            (
                "identities merged (shared value or link)",
                &repairs.identities_merged,
            ),
            (
                "primaries demoted (an older row leads)",
                &repairs.primaries_demoted,
            ),
            ("linked to a secondary", &repairs.linked_to_secondary),
            (
                "linked to a missing row or itself",
                &repairs.linked_to_missing,
            ),
            ("linked to a soft-deleted row", &repairs.linked_to_deleted),
            (
                "precedence disagreeing with linkedId",
                &repairs.precedence_mismatch,
            ),
            ("duplicated rows (kept as secondaries)", &repairs.duplicates),
            ("invalid values dropped", &repairs.invalid_values),
            ("blocked values dropped", &repairs.blocked_values),
            (
                "rows left without a value (not copied)",
                &repairs.rows_without_value,
            ),
            ("identities over the guardrails' limits", &self.over_limits),
        ] {
            text.push_str(&format!("  {label:<44} {:>8}", repair.count));
            if !repair.examples.is_empty() {
                let ids: Vec<String> = repair.examples.iter().map(i32::to_string).collect();
                text.push_str(&format!("  e.g. {}", ids.join(", ")));
            }
            text.push('\n');
        }
        text.push_str(&format!("  elapsed {:.1} s\n", self.elapsed_seconds));
        text
    }
}

/// A row as it will be stored here.
#[derive(Debug, Clone)]
struct NewRow {
    id: i32,
    email: Option<String>,
    phone: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
    linked_id: Option<i32>,
}

/// Reads `table` at `url` and writes it here, in one transaction.
pub async fn migrate(
    pool: &DbPool,
    url: &str,
    table: &str,
    policy: &Policy,
) -> Result<Report, String> {
    let started = Instant::now();
    let quoted = quote_table(table)?;
    let mut old = AsyncPgConnection::establish(url)
        .await
        .map_err(|err| format!("cannot connect to the old database: {err}"))?;
    // A `timestamp` without a time zone (TypeORM's default) is read as UTC.
    diesel::sql_query("SET TIME ZONE 'UTC'")
        .execute(&mut old)
        .await
        .map_err(|err| err.to_string())?;
    let rows: Vec<OldRow> = diesel::sql_query(format!(
        "SELECT id, \"phoneNumber\"::text AS phone_number, email::text AS email, \
                \"linkedId\" AS linked_id, \"linkPrecedence\"::text AS link_precedence, \
                \"createdAt\"::timestamptz AS created_at, \
                \"updatedAt\"::timestamptz AS updated_at, \
                \"deletedAt\"::timestamptz AS deleted_at \
         FROM {quoted} ORDER BY \"createdAt\", id"
    ))
    .load(&mut old)
    .await
    .map_err(|err| format!("cannot read {table}: {err}"))?;
    drop(old);

    let mut conn = pool.get().await.map_err(|err| err.to_string())?;
    let blocked: HashSet<ContactValue> = blocked_values(&mut conn)
        .await
        .map_err(|err| err.to_string())?;
    let blocks = |value: &ContactValue| {
        blocked.contains(value)
            || match value {
                ContactValue::Email(email) => policy.rules.blocks_email(email),
                ContactValue::Phone(phone) => policy.rules.blocks_phone(phone),
            }
    };
    let max_id = rows.iter().map(|row| row.id).max().unwrap_or(0);
    let (new_rows, mut report) = plan(rows, policy.limits, blocks);
    report.table = table.to_owned();

    conn.transaction(async |conn| {
        crate::db::protocol::lock_contacts_table(conn).await?;
        let existing = imports::contact_count(conn).await?;
        if existing > 0 {
            return Err(diesel::result::Error::RollbackTransaction);
        }
        write(conn, &new_rows, max_id).await
    })
    .await
    .map_err(|err| match err {
        diesel::result::Error::RollbackTransaction => {
            "this database already holds contacts: the migration writes only into an empty \
             one (nothing was written)"
                .to_owned()
        }
        other => format!("the migration failed and wrote nothing: {other}"),
    })?;
    report.elapsed_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Every value administrators blocked here.
async fn blocked_values(
    conn: &mut AsyncPgConnection,
) -> diesel::QueryResult<HashSet<ContactValue>> {
    let rows: Vec<BlockedRow> = diesel::sql_query("SELECT kind, value FROM blocked_values")
        .load(conn)
        .await?;
    Ok(blocked_values_of(rows))
}

/// `table` or `schema.table`, each part quoted as an identifier.
fn quote_table(table: &str) -> Result<String, String> {
    let parts: Vec<&str> = table.split('.').collect();
    if parts.len() > 2 || parts.iter().any(|part| part.is_empty()) {
        return Err(format!(
            "`{table}` is not a table name (use NAME or SCHEMA.NAME)"
        ));
    }
    Ok(parts
        .iter()
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join("."))
}

/// Minimal union-find over row positions.
struct Groups(Vec<usize>);

impl Groups {
    fn root(&mut self, mut at: usize) -> usize {
        while self.0[at] != at {
            self.0[at] = self.0[self.0[at]];
            at = self.0[at];
        }
        at
    }

    fn join(&mut self, a: usize, b: usize) {
        let (a, b) = (self.root(a), self.root(b));
        if a != b {
            // The older row's root stays: roots end up the oldest of their group.
            let (keep, other) = if a < b { (a, b) } else { (b, a) };
            self.0[other] = keep;
        }
    }
}

/// The rows as they will be stored, and the report. `rows` come in contact order.
fn plan(
    rows: Vec<OldRow>,
    limits: Limits,
    blocks: impl Fn(&ContactValue) -> bool,
) -> (Vec<NewRow>, Report) {
    let mut report = Report {
        rows: rows.len() as u64,
        ..Report::default()
    };
    let repairs = &mut report.repairs;
    let position: HashMap<i32, usize> = rows.iter().enumerate().map(|(at, r)| (r.id, at)).collect();
    // Values normalised; invalid ones dropped.
    let mut values: Vec<(Option<String>, Option<String>)> = Vec::with_capacity(rows.len());
    for row in &rows {
        let email = row
            .email
            .as_deref()
            .and_then(|raw| match Email::parse(raw) {
                Ok(Some(email)) if blocks(&ContactValue::Email(email.clone())) => {
                    repairs.blocked_values.note(row.id);
                    None
                }
                Ok(email) => email.map(|e| e.as_str().to_owned()),
                Err(_) => {
                    repairs.invalid_values.note(row.id);
                    None
                }
            });
        let phone = row
            .phone_number
            .as_deref()
            .and_then(|raw| match Phone::parse(raw) {
                Ok(Some(phone)) if blocks(&ContactValue::Phone(phone.clone())) => {
                    repairs.blocked_values.note(row.id);
                    None
                }
                Ok(phone) => phone.map(|p| p.as_str().to_owned()),
                Err(_) => {
                    repairs.invalid_values.note(row.id);
                    None
                }
            });
        if email.is_none() && phone.is_none() {
            repairs.rows_without_value.note(row.id);
        }
        values.push((email, phone));
    }
    let live = |at: usize| {
        rows[at].deleted_at.is_none() && (values[at].0.is_some() || values[at].1.is_some())
    };

    let mut groups = Groups((0..rows.len()).collect());
    let mut first_with_email: HashMap<&str, usize> = HashMap::new();
    let mut first_with_phone: HashMap<&str, usize> = HashMap::new();
    for (at, row) in rows.iter().enumerate() {
        let says_primary = row.link_precedence.as_deref() == Some("primary");
        if says_primary == row.linked_id.is_some() || row.link_precedence.is_none() {
            repairs.precedence_mismatch.note(row.id);
        }
        if row.deleted_at.is_none() {
            report.live_rows += 1;
            if row.linked_id.is_none() {
                report.identities_claimed += 1;
            }
        } else {
            report.soft_deleted_rows += 1;
        }
        // The old links are evidence, deleted rows' included.
        match row.linked_id.map(|target| (target, position.get(&target))) {
            Some((target, Some(&other))) if target != row.id => {
                groups.join(at, other);
                if rows[other].linked_id.is_some() {
                    repairs.linked_to_secondary.note(row.id);
                }
                if row.deleted_at.is_none() && rows[other].deleted_at.is_some() {
                    repairs.linked_to_deleted.note(row.id);
                }
            }
            Some(_) => repairs.linked_to_missing.note(row.id),
            None => {}
        }
        // Shared values join live rows only, as matching does.
        if live(at) {
            if let Some(email) = values[at].0.as_deref() {
                let first = *first_with_email.entry(email).or_insert(at);
                groups.join(at, first);
            }
            if let Some(phone) = values[at].1.as_deref() {
                let first = *first_with_phone.entry(phone).or_insert(at);
                groups.join(at, first);
            }
        }
    }

    // Each group's primary: its oldest live row, else its oldest row that is copied
    // (one with a value).
    let rank = |at: usize| {
        if live(at) {
            2
        } else if values[at].0.is_some() || values[at].1.is_some() {
            1
        } else {
            0
        }
    };
    let mut primary_of_root: HashMap<usize, usize> = HashMap::new();
    for at in 0..rows.len() {
        let root = groups.root(at);
        let slot = primary_of_root.entry(root).or_insert(at);
        if rank(at) > rank(*slot) {
            *slot = at;
        }
    }
    let mut new_rows = Vec::with_capacity(rows.len());
    let mut old_primaries_of: BTreeMap<usize, Vec<i32>> = BTreeMap::new();
    let mut seen_pairs: HashMap<(usize, &Option<String>, &Option<String>), i32> = HashMap::new();
    let mut sizes: HashMap<usize, (Vec<&str>, Vec<&str>)> = HashMap::new();
    for (at, row) in rows.iter().enumerate() {
        let root = groups.root(at);
        let primary = primary_of_root[&root];
        if live(at) {
            if row.linked_id.is_none() {
                old_primaries_of.entry(primary).or_default().push(row.id);
                if primary != at {
                    repairs.primaries_demoted.note(row.id);
                }
            }
            if seen_pairs
                .insert((primary, &values[at].0, &values[at].1), row.id)
                .is_some()
            {
                repairs.duplicates.note(row.id);
            }
            let (emails, phones) = sizes.entry(primary).or_default();
            if let Some(email) = values[at].0.as_deref()
                && !emails.contains(&email)
            {
                emails.push(email);
            }
            if let Some(phone) = values[at].1.as_deref()
                && !phones.contains(&phone)
            {
                phones.push(phone);
            }
        }
        let (email, phone) = values[at].clone();
        if email.is_none() && phone.is_none() {
            continue;
        }
        new_rows.push(NewRow {
            id: row.id,
            email,
            phone,
            created_at: row.created_at,
            updated_at: row.updated_at.unwrap_or(row.created_at),
            deleted_at: row.deleted_at,
            linked_id: (primary != at).then(|| rows[primary].id),
        });
    }
    report.identities = sizes.len() as u64;
    for (primary, old_primaries) in &old_primaries_of {
        if old_primaries.len() > 1 {
            report.repairs.identities_merged.note(rows[*primary].id);
        }
    }
    let mut over: Vec<i32> = sizes
        .iter()
        .filter(|(_, (emails, phones))| {
            limits.max_emails.is_some_and(|max| emails.len() > max)
                || limits.max_phones.is_some_and(|max| phones.len() > max)
        })
        .map(|(primary, _)| rows[*primary].id)
        .collect();
    over.sort_unstable();
    for id in over {
        report.over_limits.note(id);
    }
    (new_rows, report)
}

/// The rows (primaries first: a secondary's link must find its primary), their
/// pre-ledger events, one change per identity, and the id sequence past them.
async fn write(
    conn: &mut AsyncPgConnection,
    rows: &[NewRow],
    max_old_id: i32,
) -> diesel::QueryResult<()> {
    let (primaries, secondaries): (Vec<&NewRow>, Vec<&NewRow>) =
        rows.iter().partition(|row| row.linked_id.is_none());
    for part in primaries
        .chunks(WRITE_BATCH)
        .chain(secondaries.chunks(WRITE_BATCH))
    {
        let ids: Vec<i32> = part.iter().map(|row| row.id).collect();
        let emails: Vec<Option<&str>> = part.iter().map(|row| row.email.as_deref()).collect();
        let phones: Vec<Option<&str>> = part.iter().map(|row| row.phone.as_deref()).collect();
        let linked: Vec<Option<i32>> = part.iter().map(|row| row.linked_id).collect();
        let created: Vec<DateTime<Utc>> = part.iter().map(|row| row.created_at).collect();
        let updated: Vec<DateTime<Utc>> = part.iter().map(|row| row.updated_at).collect();
        let deleted: Vec<Option<DateTime<Utc>>> = part.iter().map(|row| row.deleted_at).collect();
        diesel::sql_query(
            "INSERT INTO contacts (id, email, phone_number, linked_id, link_precedence, \
                 created_at, updated_at, deleted_at) \
             SELECT id, email, phone, linked_id, \
                    CASE WHEN linked_id IS NULL THEN 'primary' ELSE 'secondary' END::link_precedence, \
                    created_at, updated_at, deleted_at \
             FROM unnest($1::int4[], $2::text[], $3::text[], $4::int4[], $5::timestamptz[], \
                         $6::timestamptz[], $7::timestamptz[]) \
                 AS r(id, email, phone, linked_id, created_at, updated_at, deleted_at)",
        )
        .bind::<Array<Int4>, _>(&ids)
        .bind::<Array<Nullable<Text>>, _>(&emails)
        .bind::<Array<Nullable<Text>>, _>(&phones)
        .bind::<Array<Nullable<Int4>>, _>(&linked)
        .bind::<Array<Timestamptz>, _>(&created)
        .bind::<Array<Timestamptz>, _>(&updated)
        .bind::<Array<Nullable<Timestamptz>>, _>(&deleted)
        .execute(conn)
        .await?;
    }
    // The links are the old system's evidence, as the ledger's own migration
    // records rows from before it (docs/SPEC.md §10.1).
    diesel::sql_query(
        "INSERT INTO identity_events (kind, contact_id, primary_id, pre_ledger, request_id, \
             created_at) \
         SELECT CASE WHEN linked_id IS NULL THEN 'created' ELSE 'linked' END::identity_event_kind, \
                id, coalesce(linked_id, id), true, 'migration', created_at \
         FROM contacts ORDER BY created_at, id",
    )
    .execute(conn)
    .await?;
    diesel::sql_query(
        "INSERT INTO identity_changes (kind, primary_ids, contact_ids, request_id) \
         SELECT 'created', ARRAY[primary_id], \
                array_agg(id ORDER BY id <> primary_id, created_at, id), 'migration' \
         FROM (SELECT id, coalesce(linked_id, id) AS primary_id, created_at FROM contacts \
               WHERE deleted_at IS NULL) AS live \
         GROUP BY primary_id ORDER BY min(created_at), primary_id",
    )
    .execute(conn)
    .await?;
    // Past every old id, copied or not: an id the old system handed out is never
    // given to another customer.
    diesel::sql_query("SELECT setval('contacts_id_seq', greatest($1, 1), $1 > 0)")
        .bind::<Int4, _>(max_old_id)
        .execute(conn)
        .await?;
    Ok(())
}
