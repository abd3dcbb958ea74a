//! Batch identify (docs/SPEC.md §13): the orders of a batch applied in turn, as
//! single calls would apply them, in one transaction that locks every value and
//! identity the batch can touch at once, plans the batch in memory
//! ([`BatchWorld`]) and writes the outcome set-wise.

use std::collections::{BTreeSet, HashSet};

use diesel_async::AsyncConnection;
use futures_util::future::{try_join, try_join_all, try_join5};
use tracing::Instrument;

use crate::db::batch::{self as sql, ChangeRows, HeldRow, LedgerRows, NewRows};
use crate::db::{DbError, DbPool};
use crate::domain::{BatchStep, BatchWorld, Contact, ContactValue, IdentifyRequest, Limits};
use crate::service::{AttemptError, Identified, Policy, ServiceError, screen_request};

/// Attempts before a batch that keeps racing concurrent merges gives up.
const MAX_ATTEMPTS: u32 = 16;

/// Each order's result, in order: its identity, or why it changed nothing (all its
/// values are blocked).
pub type BatchResults = Vec<Result<Identified, ServiceError>>;

/// Applies `requests` in turn (docs/SPEC.md §13); the orders that apply commit
/// together. Runs in a task of its own, like a single identify, so that a client
/// hanging up cannot cancel the transaction half way.
pub async fn identify_batch(
    pool: &DbPool,
    requests: Vec<IdentifyRequest>,
    policy: Policy,
    request_id: Option<String>,
) -> Result<BatchResults, ServiceError> {
    let pool = pool.clone();
    let span = tracing::info_span!("identify_batch", orders = requests.len(), attempts = 1);
    let task = tokio::spawn(
        async move { with_retry(&pool, &requests, &policy, request_id.as_deref()).await }
            .instrument(span),
    );
    match task.await {
        Ok(result) => result,
        Err(join_error) => Err(ServiceError::Panicked(join_error.to_string())),
    }
}

async fn with_retry(
    pool: &DbPool,
    requests: &[IdentifyRequest],
    policy: &Policy,
    request_id: Option<&str>,
) -> Result<BatchResults, ServiceError> {
    let mut connection = pool.get().await?;
    let mut blocked_in_database: HashSet<ContactValue> = HashSet::new();
    for attempt in 1..=MAX_ATTEMPTS {
        let kept: Vec<Result<IdentifyRequest, ServiceError>> = requests
            .iter()
            .map(|request| screen_request(request, policy, &blocked_in_database))
            .collect();
        match connection
            .transaction(async |conn| once(conn, &kept, policy.limits, request_id).await)
            .await
        {
            Ok(results) => {
                tracing::Span::current().record("attempts", attempt);
                return Ok(results);
            }
            Err(AttemptError::Raced) => tracing::debug!(attempt, "batch raced a merge, retrying"),
            Err(AttemptError::Blocked(values)) => blocked_in_database.extend(values),
            Err(AttemptError::Refused(err)) => return Err(err),
            Err(AttemptError::Database(err)) => match DbError::from(err) {
                DbError::Conflict(conflict) => {
                    tracing::debug!(attempt, error = %conflict, "transient conflict, retrying");
                }
                other => return Err(other.into()),
            },
        }
    }
    Err(ServiceError::Contended)
}

/// One attempt: the locked reads for every value at once, the plan, the writes.
async fn once(
    conn: &mut diesel_async::AsyncPgConnection,
    kept: &[Result<IdentifyRequest, ServiceError>],
    limits: Limits,
    request_id: Option<&str>,
) -> Result<BatchResults, AttemptError> {
    let conn: &diesel_async::AsyncPgConnection = conn;
    let valid: Vec<&IdentifyRequest> = kept.iter().filter_map(|r| r.as_ref().ok()).collect();
    let emails: Vec<&str> = distinct(valid.iter().filter_map(|r| r.email()).map(|e| e.as_str()));
    let phones: Vec<&str> = distinct(valid.iter().filter_map(|r| r.phone()).map(|p| p.as_str()));
    // Pipelined, each statement sent when first polled: in this order.
    let ((), ((), primaries, members, blocked, fresh)) = try_join(
        sql::plan_for_index_probes(conn),
        try_join5(
            sql::lock_values(conn, &emails, &phones),
            sql::lock_matched_primaries(conn, &emails, &phones),
            sql::load_members_matching(conn, &emails, &phones),
            sql::blocked_among(conn, &emails, &phones),
            // Each order inserts at most one row.
            sql::fresh_rows(conn, valid.len() as i64),
        ),
    )
    .await?;
    if !blocked.is_empty() {
        return Err(AttemptError::Blocked(blocked));
    }
    if primaries.iter().any(|primary| primary.linked_id.is_some()) {
        return Err(AttemptError::Raced);
    }
    let locked: BTreeSet<i32> = primaries.iter().map(|primary| primary.id).collect();
    let loaded: BTreeSet<i32> = members
        .iter()
        .map(|member| member.linked_id.unwrap_or(member.id))
        .collect();
    if locked != loaded {
        return Err(AttemptError::Raced);
    }

    let now = fresh.first().map_or_else(chrono::Utc::now, |row| row.at);
    let mut world = BatchWorld::new(members.into_iter().map(Contact::from).collect(), now);
    let mut fresh = fresh.into_iter().map(|row| (row.id, row.at));
    let mut next = || fresh.next().expect("one fresh row per order");
    let mut results: BatchResults = Vec::with_capacity(kept.len());
    let mut steps: Vec<(usize, &IdentifyRequest, BatchStep)> = Vec::new();
    for (index, request) in kept.iter().enumerate() {
        let request = match request {
            Ok(request) => request,
            Err(ServiceError::Blocked(dropped)) => {
                results.push(Err(ServiceError::Blocked(*dropped)));
                continue;
            }
            Err(other) => return Err(AttemptError::Refused(clone_error(other))),
        };
        let planned = world.apply(request, limits, &mut next);
        results.push(Ok(Identified {
            identity: planned.identity,
            outcome: planned.decision.outcome(),
            merged_primaries: planned.decision.merged_primaries(),
            held_id: None,
        }));
        steps.extend(planned.steps.into_iter().map(|step| (index, request, step)));
    }

    let mut new_rows = NewRows::default();
    for contact in world.inserted() {
        new_rows.ids.push(contact.id);
        new_rows
            .emails
            .push(contact.email.map(|e| e.as_str().to_owned()));
        new_rows
            .phones
            .push(contact.phone.map(|p| p.as_str().to_owned()));
        new_rows.linked_ids.push(contact.linked_id);
        new_rows.created_at.push(contact.created_at);
    }
    let demoted = world.demoted();
    let held: Vec<(usize, HeldRow<'_>)> = steps
        .iter()
        .filter_map(|(index, request, step)| match step {
            BatchStep::Held(hold) => Some((
                *index,
                HeldRow {
                    email: request.email().map(|e| e.as_str()),
                    phone: request.phone().map(|p| p.as_str()),
                    primary_ids: &hold.primary_ids,
                    limit_kind: hold.limit.as_str(),
                    suspect_kind: hold.suspect.kind(),
                    suspect_value: hold.suspect.as_str(),
                    request_id,
                },
            )),
            _ => None,
        })
        .collect();
    // Pipelined: the rows, the re-links, and the held records in order.
    let ((), held_ids) = try_join(
        async {
            try_join(
                sql::insert_contacts(conn, &new_rows),
                sql::relink(conn, &demoted),
            )
            .await
            .map(drop)
        },
        try_join_all(held.iter().map(|(_, row)| sql::upsert_held(conn, row))),
    )
    .await?;
    let mut held_ids = held.iter().map(|(index, _)| *index).zip(held_ids);
    let (ledger, changes) = ledger_rows(&steps, &mut held_ids, &mut results);
    sql::record(conn, &ledger, &changes, request_id).await?;
    Ok(results)
}

/// The ledger rows and change events of the steps, in order, as single calls
/// write them; fills in the held records' ids in the results.
fn ledger_rows(
    steps: &[(usize, &IdentifyRequest, BatchStep)],
    held_ids: &mut impl Iterator<Item = (usize, i64)>,
    results: &mut BatchResults,
) -> (LedgerRows, ChangeRows) {
    let mut ledger = LedgerRows::default();
    let mut changes = ChangeRows::default();
    let mut change = |kind: &'static str, primaries: &[i32], contacts: &[i32]| {
        changes.kinds.push(kind);
        let position = changes.kinds.len() as i64;
        changes.primary_ids.extend_from_slice(primaries);
        changes
            .primary_of
            .extend(std::iter::repeat_n(position, primaries.len()));
        changes.contact_ids.extend_from_slice(contacts);
        changes
            .contact_of
            .extend(std::iter::repeat_n(position, contacts.len()));
    };
    for (index, request, step) in steps {
        match step {
            BatchStep::Inserted {
                contact,
                email,
                phone,
            } => {
                let kind = if contact.linked_id.is_none() {
                    "created"
                } else {
                    "linked"
                };
                ledger.kinds.push(kind);
                ledger.contact_ids.push(Some(contact.id));
                ledger.primary_ids.push(contact.primary_id());
                ledger
                    .emails
                    .push(email.as_ref().map(|e| e.as_str().to_owned()));
                ledger
                    .phones
                    .push(phone.as_ref().map(|p| p.as_str().to_owned()));
                ledger.held_ids.push(None);
                ledger.created_at.push(Some(contact.created_at));
                change(kind, &[contact.primary_id()], &[contact.id]);
            }
            BatchStep::Merged {
                primary_id,
                demoted_primary_ids,
            } => {
                for demoted in demoted_primary_ids {
                    ledger.kinds.push("merged");
                    ledger.contact_ids.push(Some(*demoted));
                    ledger.primary_ids.push(*primary_id);
                    ledger
                        .emails
                        .push(request.email().map(|e| e.as_str().to_owned()));
                    ledger
                        .phones
                        .push(request.phone().map(|p| p.as_str().to_owned()));
                    ledger.held_ids.push(None);
                    ledger.created_at.push(None);
                }
                let mut primaries = vec![*primary_id];
                primaries.extend_from_slice(demoted_primary_ids);
                change("merged", &primaries, demoted_primary_ids);
            }
            BatchStep::Held(hold) => {
                let held_id = held_ids
                    .next()
                    .filter(|(held_index, _)| held_index == index)
                    .map(|(_, id)| id);
                if let Some(Ok(identified)) = results.get_mut(*index) {
                    identified.held_id = held_id;
                }
                ledger.kinds.push("held");
                ledger.contact_ids.push(None);
                ledger.primary_ids.push(hold.primary_id);
                ledger
                    .emails
                    .push(request.email().map(|e| e.as_str().to_owned()));
                ledger
                    .phones
                    .push(request.phone().map(|p| p.as_str().to_owned()));
                ledger.held_ids.push(held_id);
                ledger.created_at.push(None);
                change("held", &hold.primary_ids, &[]);
            }
        }
    }
    (ledger, changes)
}

fn distinct<'a>(values: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = BTreeSet::new();
    values.filter(|value| seen.insert(*value)).collect()
}

/// `screen_request` only fails with `Blocked`; anything else is passed on as is.
fn clone_error(err: &ServiceError) -> ServiceError {
    ServiceError::Refused(err.to_string())
}
