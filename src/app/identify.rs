//! Use cases over the database; REST and GraphQL are thin adapters over these.
//!
//! # How `identify` stays correct under concurrency
//!
//! Each attempt is one transaction through the locking protocol of
//! [`crate::db::protocol`] (value locks, the matched primaries `FOR UPDATE`, the
//! members, the check that what was loaded is what was locked), retried by its
//! [`Retry`]. The decision is the pure [`decide`]; the answer is built from the
//! locked state plus our own changes, without reading it back. The writes (re-link
//! and insert) are pipelined.
//!
//! Before all that, one unlocked read answers requests that change nothing (a repeat
//! customer) on its own; see [`read_without_locks`]. When it shows a first order (no
//! contact holds any value), [`insert_if_still_new`] sends BEGIN, the value locks,
//! a conditional insert and COMMIT as one pipeline, and takes the steps above only
//! if the condition failed.
//!
//! Round trips: 1 for a request that changes nothing, 2 for a first order;
//! otherwise the read, BEGIN, the locked reads, the writes, COMMIT — five.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::Arc;

use diesel_async::AsyncConnection;
use futures_util::future::{join4, try_join};
use tracing::Instrument;

use crate::app::error::{AttemptError, ServiceError};
use crate::db::contacts::Provenance;
use crate::db::protocol::{self, Blocks, Retry, Values};
use crate::db::{DbError, DbPool, contacts, graph, prepared};
use crate::domain::{
    BlockRules, Contact, ContactValue, Decision, IdentifyRequest, Identity, Limits, Outcome,
    Screened, decide, screen,
};

/// What `identify` returns: the merged identity and what the call changed. The
/// adapters turn the outcome into metrics and log fields.
#[derive(Debug, Clone)]
pub struct Identified {
    pub identity: Identity,
    pub outcome: Outcome,
    /// How many primaries this call turned secondary.
    pub merged_primaries: usize,
    /// The held record, for outcome `Held`.
    pub held_id: Option<i64>,
}

/// The guardrails an identify runs under (docs/SPEC.md §10.3).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The built-in and file blocks; the database's are read in the transaction.
    pub rules: Arc<BlockRules>,
    pub limits: Limits,
}

impl Policy {
    fn blocks(&self, value: &ContactValue) -> bool {
        match value {
            ContactValue::Email(email) => self.rules.blocks_email(email),
            ContactValue::Phone(phone) => self.rules.blocks_phone(phone),
        }
    }
}

/// Reconciles one request (docs/SPEC.md §4) and answers with the merged identity.
///
/// The work runs in its own task: a client that hangs up mid-request must not cancel
/// a transaction half way and hand a connection with an open transaction back to the pool.
pub async fn identify(
    pool: &DbPool,
    request: IdentifyRequest,
    policy: Policy,
    request_id: Option<String>,
) -> Result<Identified, ServiceError> {
    let pool = pool.clone();
    let span = tracing::info_span!("identify", outcome = tracing::field::Empty, attempts = 1);
    let task = tokio::spawn(
        async move {
            let result = identify_with_retry(&pool, &request, &policy, request_id.as_deref()).await;
            if let Ok(identified) = &result {
                tracing::Span::current().record("outcome", identified.outcome.as_str());
            }
            result
        }
        .instrument(span),
    );
    match task.await {
        Ok(result) => result,
        // The task only ends without a result if it panicked: surface it as an error
        // rather than taking the request handler down with it.
        Err(join_error) => Err(ServiceError::Panicked(join_error.to_string())),
    }
}

async fn identify_with_retry(
    pool: &DbPool,
    original: &IdentifyRequest,
    policy: &Policy,
    request_id: Option<&str>,
) -> Result<Identified, ServiceError> {
    let mut connection = pool.get().await?;
    let screened = screen_request(original, policy, &HashSet::new())?;
    match read_without_locks(&connection, &screened).await? {
        Unlocked::Unchanged(identified) => return Ok(identified),
        Unlocked::New => {
            if let Some(identified) =
                insert_if_still_new(&connection, &screened, request_id).await?
            {
                return Ok(identified);
            }
        }
        Unlocked::Changes => {}
    }
    let options = Options {
        limits: policy.limits,
        request_id,
    };
    let mut retry = Retry::new();
    loop {
        // Blocks found in the database mid-attempt; the configured ones are in `policy`.
        let screened = screen_request(original, policy, retry.blocked())?;
        let result = connection
            .transaction(async |conn| identify_once(conn, &screened, options).await)
            .await;
        if let ControlFlow::Break(done) = retry.settle(result).await {
            return done.map_err(ServiceError::from);
        }
    }
}

/// The request without its blocked values; refused when none is left.
pub(crate) fn screen_request(
    request: &IdentifyRequest,
    policy: &Policy,
    blocked_in_database: &HashSet<ContactValue>,
) -> Result<IdentifyRequest, ServiceError> {
    match screen(request, |value| {
        policy.blocks(value) || blocked_in_database.contains(value)
    }) {
        Screened::Kept(kept, _) => Ok(kept),
        Screened::AllBlocked(dropped) => Err(ServiceError::Blocked(dropped)),
    }
}

/// How one attempt runs: with the identity limits, or without them for an
/// approval; the request id goes into the ledger.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options<'a> {
    pub limits: Limits,
    pub request_id: Option<&'a str>,
}

/// What one unlocked snapshot says about a request.
enum Unlocked {
    /// Every value is in one identity: the snapshot is the answer.
    Unchanged(Identified),
    /// No live contact holds any value: a first order, worth trying in one pipeline.
    New,
    /// Anything else goes through the locked path.
    Changes,
}

/// The read-only fast path: when one snapshot shows every value of the request in
/// one identity, the request changes nothing, and that snapshot is its answer. One
/// statement, no transaction block, no lock: a repeat customer waits for nobody.
///
/// This is linearizable: a single statement reads one consistent committed state,
/// and the same request run alone at that instant would have written nothing and
/// answered the same.
async fn read_without_locks(
    conn: &diesel_async::AsyncPgConnection,
    request: &IdentifyRequest,
) -> Result<Unlocked, ServiceError> {
    let members = match protocol::load_members_matching(conn, &Values::of(request))
        .await
        .map_err(DbError::from)
    {
        Ok(members) => members.into_iter().map(Contact::from).collect::<Vec<_>>(),
        // A SERIALIZABLE read can be aborted too; the locked path retries.
        Err(DbError::Conflict(_)) => return Ok(Unlocked::Changes),
        Err(other) => return Err(other.into()),
    };
    // Limits only hold back changes; an unchanged answer is never held.
    Ok(match decide(request, &members, Limits::default()) {
        Decision::Unchanged { primary_id } => Unlocked::Unchanged(Identified {
            identity: Identity::from_members(primary_id, members),
            outcome: Outcome::Unchanged,
            merged_primaries: 0,
            held_id: None,
        }),
        Decision::NewPrimary => Unlocked::New,
        Decision::Merge(_) | Decision::Held(_) => Unlocked::Changes,
    })
}

/// A first order in one round trip: BEGIN, the values' locks, the insert of a
/// primary on condition that no live contact holds a value (and none is blocked),
/// COMMIT, all sent at once and run by PostgreSQL in that order.
///
/// The decision is still [`decide`]'s, made on the unlocked snapshot; the insert's
/// condition only checks, under the locks, that its premise (no member) still
/// holds, so the SQL carries no rule of its own. When it no longer holds (a
/// concurrent first order with a shared value, a block) nothing is written and the
/// request takes the locked path (`None`). Under the locks this is exactly the
/// locked path's new-primary case: every insert of a row holding a value takes
/// that value's lock, and the insert's snapshot is taken after ours.
async fn insert_if_still_new(
    conn: &diesel_async::AsyncPgConnection,
    request: &IdentifyRequest,
    request_id: Option<&str>,
) -> Result<Option<Identified>, ServiceError> {
    let (email, phone) = (request.email(), request.phone());
    // `join4`, not `try_join4`: every statement must finish, COMMIT above all, or
    // the connection would go back to the pool inside a transaction.
    let (begun, locked, inserted, committed) = join4(
        prepared::begin(conn),
        protocol::lock_values(conn, &Values::of(request)),
        contacts::insert_primary_if_new(conn, email, phone, request_id),
        prepared::commit(conn),
    )
    .await;
    let inserted = match begun
        .and(locked)
        .and(inserted)
        .and_then(|row| committed.map(|()| row))
    {
        Ok(inserted) => inserted,
        Err(err) => match DbError::from(err) {
            // The locked path retries conflicts; so does this, by taking it.
            DbError::Conflict(_) => None,
            other => return Err(other.into()),
        },
    };
    Ok(inserted.map(|row| {
        let row = Contact::from(row);
        Identified {
            identity: Identity::from_members(row.id, vec![row]),
            outcome: Outcome::NewPrimary,
            merged_primaries: 0,
            held_id: None,
        }
    }))
}

pub(crate) async fn identify_once(
    conn: &mut diesel_async::AsyncPgConnection,
    request: &IdentifyRequest,
    options: Options<'_>,
) -> Result<Identified, AttemptError> {
    // A shared borrow lets independent statements be pipelined: sent together, run
    // by PostgreSQL one after the other in the order sent, each on a fresh snapshot.
    let conn: &diesel_async::AsyncPgConnection = conn;
    let (email, phone) = (request.email(), request.phone());
    let locked = protocol::lock_and_load(conn, &Values::of(request), Blocks::Refuse).await?;
    let members: Vec<Contact> = locked.members.into_iter().map(Contact::from).collect();

    let decision = decide(request, &members, options.limits);
    let mut held_id = None;
    let identity = match &decision {
        Decision::NewPrimary => {
            let provenance = Provenance {
                email,
                phone,
                request_id: options.request_id,
            };
            let row = contacts::insert_contact(conn, email, phone, None, provenance).await?;
            let row = Contact::from(row);
            Identity::from_members(row.id, vec![row])
        }
        Decision::Unchanged { primary_id } => Identity::from_members(*primary_id, members),
        Decision::Held(hold) => {
            held_id = Some(graph::record_held(conn, request, hold, options.request_id).await?);
            let as_it_stands = members
                .into_iter()
                .filter(|member| member.primary_id() == hold.primary_id)
                .collect();
            Identity::from_members(hold.primary_id, as_it_stands)
        }
        Decision::Merge(merge) => {
            let relink = async {
                if merge.demoted_primary_ids.is_empty() {
                    return Ok(Vec::new());
                }
                let (relinked, ()) = try_join(
                    contacts::merge_into(conn, merge.primary_id, &merge.demoted_primary_ids),
                    graph::record_merges(
                        conn,
                        merge.primary_id,
                        &merge.demoted_primary_ids,
                        email,
                        phone,
                        options.request_id,
                    ),
                )
                .await?;
                Ok(relinked)
            };
            let insert = async {
                if !merge.add_secondary {
                    return Ok(None);
                }
                // The ledger records which of the request's values matched.
                let provenance = Provenance {
                    email: email.filter(|e| members.iter().any(|m| m.email.as_ref() == Some(*e))),
                    phone: phone.filter(|p| members.iter().any(|m| m.phone.as_ref() == Some(*p))),
                    request_id: options.request_id,
                };
                contacts::insert_contact(conn, email, phone, Some(merge.primary_id), provenance)
                    .await
                    .map(|row| Some(Contact::from(row)))
            };
            let (relinked, inserted) = try_join(relink, insert).await?;
            let relinked_at: HashMap<i32, _> = relinked
                .into_iter()
                .map(|row| (row.id, row.updated_at))
                .collect();
            let mut merged = merge.apply(members, inserted);
            for contact in &mut merged {
                if let Some(updated_at) = relinked_at.get(&contact.id) {
                    contact.updated_at = *updated_at;
                }
            }
            Identity::from_members(merge.primary_id, merged)
        }
    };
    Ok(Identified {
        identity,
        outcome: decision.outcome(),
        merged_primaries: decision.merged_primaries(),
        held_id,
    })
}

/// Why a look-up found no single identity to answer with.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The email and the phone belong to two different identities; only an
    /// identify (which merges them) can answer with one.
    #[error(
        "the email and the phoneNumber belong to two different identities \
         (primary contacts {0} and {1}); look them up one at a time"
    )]
    Ambiguous(i32, i32),
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// The identity holding the request's values, without writing anything; `None`
/// when no live contact holds either value.
pub async fn lookup(
    pool: &DbPool,
    request: &IdentifyRequest,
) -> Result<Option<Identity>, LookupError> {
    let conn = pool.get().await.map_err(ServiceError::from)?;
    let members = protocol::load_members_matching(&conn, &Values::of(request))
        .await
        .map_err(ServiceError::from)?;
    let primary_ids: BTreeSet<i32> = members
        .iter()
        .map(|m| m.linked_id.unwrap_or(m.id))
        .collect();
    let primary_id = match primary_ids.iter().collect::<Vec<_>>().as_slice() {
        [] => return Ok(None),
        [primary_id] => **primary_id,
        [first, second, ..] => return Err(LookupError::Ambiguous(**first, **second)),
    };
    Ok(Some(Identity::from_members(
        primary_id,
        members.into_iter().map(Contact::from).collect(),
    )))
}
