//! Batch identify (docs/SPEC.md §13): the orders of a batch applied in turn, as
//! single calls would apply them, in one transaction that locks every value and
//! identity the batch can touch at once, plans the batch in memory
//! ([`BatchWorld`]) and writes the outcome set-wise.

use std::cell::Cell;
use std::ops::ControlFlow;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;

use diesel_async::AsyncConnection;
use futures_util::future::{try_join, try_join_all, try_join3};
use tracing::Instrument;

use crate::app::error::{AttemptError, ServiceError};
use crate::app::identify::{Identified, Policy, screen_request};
use crate::db::DbPool;
use crate::db::batch::{self as sql, ChangeRows, HeldRow, LedgerRows, NewRows};
use crate::db::protocol::{self, Blocks, Retry, Values};
use crate::domain::{BatchStep, BatchWorld, Contact, IdentifyRequest, Limits};

/// Each order's result, in order: its identity, or why it changed nothing (all its
/// values are blocked).
pub type BatchResults = Vec<Result<Identified, ServiceError>>;

/// Applies `requests` in turn (docs/SPEC.md §13); the orders that apply commit
/// together. Runs in a task of its own, like a single identify, so that a client
/// hanging up cannot cancel the transaction half way.
pub async fn identify_batch(
    pool: &DbPool,
    gate: &Arc<Semaphore>,
    requests: Vec<IdentifyRequest>,
    policy: Policy,
    request_id: Option<String>,
) -> Result<BatchResults, ServiceError> {
    // Held until the batch ends, even if its client goes.
    let turn = gate
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ServiceError::Refused("the server is shutting down".to_owned()))?;
    let pool = pool.clone();
    let span = tracing::info_span!("identify_batch", orders = requests.len(), attempts = 1);
    let task = tokio::spawn(
        async move {
            let results = with_retry(&pool, &requests, &policy, request_id.as_deref()).await;
            drop(turn);
            results
        }
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
    let mut retry = Retry::new();
    loop {
        let kept: Vec<Result<IdentifyRequest, ServiceError>> = requests
            .iter()
            .map(|request| screen_request(request, policy, retry.blocked()))
            .collect();
        let result = connection
            .transaction(async |conn| once(conn, &kept, policy.limits, request_id).await)
            .await;
        if let ControlFlow::Break(done) = retry.settle(result).await {
            return done.map_err(ServiceError::from);
        }
    }
}

/// One attempt: the locked reads for every value at once, the plan, the writes.
async fn once(
    conn: &mut diesel_async::AsyncPgConnection,
    kept: &[Result<IdentifyRequest, ServiceError>],
    limits: Limits,
    request_id: Option<&str>,
) -> Result<BatchResults, AttemptError> {
    let conn: &diesel_async::AsyncPgConnection = conn;
    let values = Values::of_all(kept.iter().filter_map(|r| r.as_ref().ok()));
    // Sent in this order (try_join3 polls its futures in argument order): the plan
    // setting, the protocol's statements, then the clock, read under the locks.
    let ((), locked, now) = try_join3(
        async { Ok::<_, AttemptError>(sql::plan_for_index_probes(conn).await?) },
        protocol::lock_and_load(conn, &values, Blocks::Refuse),
        async { Ok::<_, AttemptError>(sql::clock(conn).await?) },
    )
    .await?;
    let members = locked.members.into_iter().map(Contact::from).collect();
    plan_and_write(conn, kept, members, now, Times::Clock, limits, request_id).await
}

/// Where the creation times of the rows a plan inserts come from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Times<'a> {
    /// The clock, read once the batch is planned: rising, one per row.
    Clock,
    /// One per order (an import's `orderedAt`, or its chunk's clock), raised to
    /// the newest member of the identities the order reaches; also the time of the
    /// order's merges and held records.
    Given(&'a [DateTime<Utc>]),
}

/// Plans `kept` in turn over `members` (every live member of every identity the
/// orders' values reach, locked by the caller), then writes the outcome set-wise:
/// the rows, the re-links, the held records, the ledger and the change events.
pub(crate) async fn plan_and_write(
    conn: &diesel_async::AsyncPgConnection,
    kept: &[Result<IdentifyRequest, ServiceError>],
    members: Vec<Contact>,
    now: DateTime<Utc>,
    times: Times<'_>,
    limits: Limits,
    request_id: Option<&str>,
) -> Result<BatchResults, AttemptError> {
    let mut world = BatchWorld::new(members, now);
    // Planned with provisional ids above every real one, in insertion order: contact
    // order among the new rows and against the stored ones is what the real ids and
    // times will give. The real ids are drawn afterwards, one per row inserted, so
    // orders that insert nothing use no id (a contact id is an int4).
    let provisional_base = i32::MAX - i32::try_from(kept.len()).unwrap_or(i32::MAX);
    let provisional = Cell::new(provisional_base);
    // The time each order ran at, for its merges and held records.
    let mut order_times: Vec<Option<DateTime<Utc>>> = vec![None; kept.len()];
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
        let at = match times {
            Times::Clock => now,
            // A row is never older than the identity it joins (docs/SPEC.md §13.1):
            // a member written since the file's time (by live traffic) sets the floor.
            Times::Given(given) => world
                .newest_matched(request)
                .map_or(given[index], |newest| newest.max(given[index])),
        };
        if let Times::Given(_) = times {
            order_times[index] = Some(at);
        }
        world.set_clock(at);
        let mut next = || {
            provisional.set(provisional.get() + 1);
            (provisional.get(), at)
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

    let inserted = world.inserted();
    let fresh = match times {
        _ if inserted.is_empty() => Vec::new(),
        Times::Clock => sql::fresh_rows(conn, inserted.len() as i64).await?,
        Times::Given(_) => sql::fresh_ids(conn, inserted.len() as i64)
            .await?
            .into_iter()
            .zip(&inserted)
            .map(|(id, contact)| sql::Fresh {
                id,
                at: contact.created_at,
            })
            .collect(),
    };
    let ids = Remap {
        base: provisional_base,
        fresh: &fresh,
    };
    for result in results.iter_mut().flatten() {
        ids.identity(&mut result.identity);
    }
    for (_, _, step) in &mut steps {
        ids.step(step);
    }

    let mut new_rows = NewRows::default();
    for mut contact in inserted {
        ids.contact(&mut contact);
        new_rows.ids.push(contact.id);
        new_rows
            .emails
            .push(contact.email.map(|e| e.as_str().to_owned()));
        new_rows
            .phones
            .push(contact.phone.map(|p| p.as_str().to_owned()));
        new_rows.linked_ids.push(contact.linked_id);
        new_rows.created_at.push(contact.created_at);
        new_rows.updated_at.push(contact.updated_at);
    }
    let demoted: Vec<sql::Relink> = world
        .demoted()
        .into_iter()
        .map(|(from, to, at)| sql::Relink {
            from: ids.id(from),
            to: ids.id(to),
            at,
        })
        .collect();
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
    let step_time = |index: usize| order_times[index];
    let (ledger, changes) = ledger_rows(&steps, &mut held_ids, &mut results, step_time);
    sql::record(conn, &ledger, &changes, request_id).await?;
    Ok(results)
}

/// The ledger rows and change events of the steps, in order, as single calls
/// write them; fills in the held records' ids in the results.
fn ledger_rows(
    steps: &[(usize, &IdentifyRequest, BatchStep)],
    held_ids: &mut impl Iterator<Item = (usize, i64)>,
    results: &mut BatchResults,
    step_time: impl Fn(usize) -> Option<DateTime<Utc>>,
) -> (LedgerRows, ChangeRows) {
    let mut ledger = LedgerRows::default();
    let mut changes = ChangeRows::default();
    let mut change = |kind: &'static str, primaries: &[i32], contacts: &[i32]| {
        changes.kinds.push(kind);
        changes.primary_ids.push(array_literal(primaries));
        changes.contact_ids.push(array_literal(contacts));
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
                    ledger.created_at.push(step_time(*index));
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
                ledger.created_at.push(step_time(*index));
                change("held", &hold.primary_ids, &[]);
            }
        }
    }
    (ledger, changes)
}

/// `{1,2,3}`: PostgreSQL's text form of an int4 array. A change's arrays travel as
/// text because an array parameter must be rectangular.
fn array_literal(ids: &[i32]) -> String {
    let mut text = String::with_capacity(2 + ids.len() * 8);
    text.push('{');
    for (at, id) in ids.iter().enumerate() {
        if at > 0 {
            text.push(',');
        }
        text.push_str(&id.to_string());
    }
    text.push('}');
    text
}

/// Provisional ids (above `base`) to the real ones drawn for the rows inserted,
/// in the same order, with their creation times.
struct Remap<'a> {
    base: i32,
    fresh: &'a [sql::Fresh],
}

impl Remap<'_> {
    fn fresh(&self, id: i32) -> Option<&sql::Fresh> {
        let index = usize::try_from(id.checked_sub(self.base)?.checked_sub(1)?).ok()?;
        self.fresh.get(index)
    }

    fn id(&self, id: i32) -> i32 {
        self.fresh(id).map_or(id, |fresh| fresh.id)
    }

    fn contact(&self, contact: &mut Contact) {
        if let Some(fresh) = self.fresh(contact.id) {
            contact.created_at = fresh.at;
            contact.updated_at = contact.updated_at.max(fresh.at);
        }
        contact.id = self.id(contact.id);
        contact.linked_id = contact.linked_id.map(|id| self.id(id));
    }

    fn identity(&self, identity: &mut crate::domain::Identity) {
        identity.primary_id = self.id(identity.primary_id);
        for id in &mut identity.secondary_ids {
            *id = self.id(*id);
        }
        for contact in &mut identity.contacts {
            self.contact(contact);
        }
    }

    fn step(&self, step: &mut BatchStep) {
        match step {
            BatchStep::Inserted { contact, .. } => self.contact(contact),
            BatchStep::Merged {
                primary_id,
                demoted_primary_ids,
            } => {
                *primary_id = self.id(*primary_id);
                for id in demoted_primary_ids {
                    *id = self.id(*id);
                }
            }
            BatchStep::Held(hold) => {
                hold.primary_id = self.id(hold.primary_id);
                for id in &mut hold.primary_ids {
                    *id = self.id(*id);
                }
            }
        }
    }
}

/// `screen_request` only fails with `Blocked`; anything else is passed on as is.
fn clone_error(err: &ServiceError) -> ServiceError {
    ServiceError::Refused(err.to_string())
}
