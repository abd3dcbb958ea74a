//! The one locking protocol, and the one retry loop around it. Every use case that
//! changes identities (identify, batches, approve and reject, blocking, erasure,
//! import chunks) reaches them through here; nothing else takes a value lock or a
//! primary's row lock.
//!
//! In one READ COMMITTED transaction:
//!
//! 1. [`lock_values`]: transaction-scoped advisory locks on the normalised values,
//!    in key order (sorted, distinct), so two requests sharing a value run one after
//!    the other across every server process, and two requests with the same values
//!    cannot deadlock. Every row holding a value is written under that value's lock.
//! 2. [`lock_matched_primaries`]: the primaries of every identity holding one of the
//!    values, `FOR UPDATE` in id order, as they are once locked: requests that touch
//!    one identity through different values serialise on its primary.
//! 3. [`load_members_matching`]: every live member of those identities, by a later
//!    statement than the locks, so it sees every row the transactions we waited for
//!    committed; nothing can join them until we commit, because joining takes a lock
//!    we hold.
//! 4. [`check_locked`]: the loaded identities must be exactly the locked ones, each
//!    still a primary; otherwise a merge committed between the match and the lock,
//!    and the attempt starts over ([`AttemptError::Raced`]).
//!
//! The statements of steps 1–3 (and [`blocked_among`], which must follow the value
//! locks to see every block committed before them) are pipelined: sent at once and
//! run by PostgreSQL one after the other in the order sent, each on its own
//! snapshot. `try_join4` polls its futures in argument order, and each statement is
//! handed to tokio-postgres when first polled, so the argument order is the order
//! PostgreSQL runs them in; `protocol::statements_reach_postgresql_in_protocol_order`
//! (tests/api) reads PostgreSQL's own statement log to prove it for every path.
//!
//! Under `DB_ISOLATION=serializable` the value locks skip themselves (the statement's
//! `WHERE` reads the transaction's isolation) and serializable snapshot isolation
//! aborts one of two colliding transactions instead; [`Retry`] runs it again.

use std::collections::{BTreeSet, HashSet};
use std::ops::ControlFlow;

use diesel::sql_types::{Array, Nullable, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures_util::future::try_join4;

use super::contacts::ContactRecord;
use super::graph::{BlockedRow, blocked_values_of};
use super::prepared::{Bind, Prepared, static_sql};
use super::{DbError, back_off};
use crate::domain::{ContactValue, IdentifyRequest};

/// Attempts before a use case that keeps racing concurrent merges, or keeps being
/// aborted by them, gives up with a retryable "unavailable". Under SERIALIZABLE a
/// collision aborts rather than waits, and 16 attempts ran out under the contention
/// scenarios (64 connections on 8 keys): 64, with the pauses of [`back_off`], is
/// about 5 s at most.
pub const MAX_ATTEMPTS: u32 = 64;

/// One `text[]` bind value.
type TextArray<'v, 'a> = Bind<Array<Text>, &'v [&'a str]>;

/// The values a use case reconciles: emails and phones, each sorted and distinct.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Values<'a> {
    emails: Vec<&'a str>,
    phones: Vec<&'a str>,
}

impl<'a> Values<'a> {
    pub fn new(
        emails: impl IntoIterator<Item = &'a str>,
        phones: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let sorted = |values: BTreeSet<&'a str>| values.into_iter().collect();
        Values {
            emails: sorted(emails.into_iter().collect()),
            phones: sorted(phones.into_iter().collect()),
        }
    }

    /// The values of one request.
    pub fn of(request: &'a IdentifyRequest) -> Self {
        Self::of_all([request])
    }

    /// The values of many requests (a batch, an import chunk).
    pub fn of_all(requests: impl IntoIterator<Item = &'a IdentifyRequest>) -> Self {
        let mut emails = BTreeSet::new();
        let mut phones = BTreeSet::new();
        for request in requests {
            emails.extend(request.email().map(|email| email.as_str()));
            phones.extend(request.phone().map(|phone| phone.as_str()));
        }
        Self::new(emails, phones)
    }

    /// One value.
    pub fn one(value: &'a ContactValue) -> Self {
        Self::new(
            value.email().map(|email| email.as_str()),
            value.phone().map(|phone| phone.as_str()),
        )
    }

    pub fn emails(&self) -> &[&'a str] {
        &self.emails
    }

    pub fn phones(&self) -> &[&'a str] {
        &self.phones
    }

    fn binds(&self) -> (TextArray<'_, 'a>, TextArray<'_, 'a>) {
        (
            Bind::new(self.emails.as_slice()),
            Bind::new(self.phones.as_slice()),
        )
    }

    /// One request's values (at most one email and one phone), as scalar binds.
    fn single(&self) -> Option<(OneValue<'a>, OneValue<'a>)> {
        match (self.emails.as_slice(), self.phones.as_slice()) {
            ([] | [_], [] | [_]) => Some((
                Bind::new(<[&str]>::first(&self.emails).copied()),
                Bind::new(<[&str]>::first(&self.phones).copied()),
            )),
            _ => None,
        }
    }
}

/// One nullable `text` bind value.
type OneValue<'a> = Bind<Nullable<Text>, Option<&'a str>>;

// Each statement is written once, with its values matched in one of two shapes:
// `= $1` for one request's values, `= ANY($1)` for many (a batch, an erasure). Both
// are prepared; the scalar shape keeps the hot path's plans (a generic plan for
// `= ANY` of an array of unknown length priced a single lookup as a scan, a third
// slower end to end). The statements are public so that tests can PREPARE and
// EXPLAIN them.
macro_rules! matching {
    (one, $column:literal, $n:literal) => {
        concat!($column, " = $", $n)
    };
    (many, $column:literal, $n:literal) => {
        concat!($column, " = ANY($", $n, ")")
    };
}

macro_rules! protocol_statements {
    ($shape:ident: $lock:ident, $primaries:ident, $members:ident, $blocked:ident) => {
        static_sql!(
            $lock = concat!(
                "SELECT count(pg_advisory_xact_lock(key)) FROM ( \
                 SELECT DISTINCT key FROM ( \
                     SELECT hashtextextended('email:' || e, 0) AS key FROM unnest(",
                protocol_statements!(@array $shape, 1),
                ") AS e UNION ALL \
                     SELECT hashtextextended('phone:' || p, 0) FROM unnest(",
                protocol_statements!(@array $shape, 2),
                ") AS p) AS keys \
                 ORDER BY key OFFSET 0) AS ordered \
                 WHERE current_setting('transaction_isolation') <> 'serializable'"
            )
        );
        static_sql!(
            $primaries = concat!(
                "SELECT id, phone_number, email, linked_id, created_at, updated_at \
                 FROM contacts WHERE deleted_at IS NULL AND id IN ( \
                     SELECT coalesce(linked_id, id) FROM contacts \
                     WHERE deleted_at IS NULL AND (",
                matching!($shape, "email", 1),
                " OR ",
                matching!($shape, "phone_number", 2),
                ")) ORDER BY id FOR UPDATE"
            )
        );
        static_sql!(
            $members = concat!(
                "WITH primaries AS ( \
                     SELECT DISTINCT coalesce(linked_id, id) AS id FROM contacts \
                     WHERE deleted_at IS NULL AND (",
                matching!($shape, "email", 1),
                " OR ",
                matching!($shape, "phone_number", 2),
                ")) \
                 SELECT c.id, c.phone_number, c.email, c.linked_id, c.created_at, c.updated_at \
                 FROM contacts c JOIN primaries p ON c.id = p.id WHERE c.deleted_at IS NULL \
                 UNION ALL \
                 SELECT c.id, c.phone_number, c.email, c.linked_id, c.created_at, c.updated_at \
                 FROM contacts c JOIN primaries p ON c.linked_id = p.id \
                 WHERE c.deleted_at IS NULL AND c.linked_id IS NOT NULL \
                 ORDER BY created_at, id"
            )
        );
        static_sql!(
            $blocked = concat!(
                "SELECT kind, value FROM blocked_values WHERE (kind = 'email' AND ",
                matching!($shape, "value", 1),
                ") OR (kind = 'phone' AND ",
                matching!($shape, "value", 2),
                ")"
            )
        );
    };
    (@array one, $n:literal) => {
        concat!("ARRAY[$", $n, "::text]")
    };
    (@array many, $n:literal) => {
        concat!("$", $n, "::text[]")
    };
}

protocol_statements!(one: LockValueSql, LockPrimariesOfOneSql, LoadMembersOfOneSql, BlockedOfOneSql);
protocol_statements!(many: LockValuesSql, LockMatchedPrimariesSql, LoadMembersMatchingSql, BlockedAmongSql);

/// Runs the statement in the shape that fits `$values`.
macro_rules! in_shape {
    ($values:expr, $one:ident, $many:ident, |$prepared:ident| $run:expr) => {
        match $values.single() {
            Some(binds) => {
                let $prepared = Prepared::<$one, _>::new(binds);
                $run
            }
            None => {
                let $prepared = Prepared::<$many, _>::new($values.binds());
                $run
            }
        }
    };
}

/// Step 1: the values' advisory locks, in key order. `OFFSET 0` keeps the ordered
/// subquery from being flattened away, and with it the order. None in a
/// SERIALIZABLE transaction.
pub async fn lock_values(mut conn: &AsyncPgConnection, values: &Values<'_>) -> QueryResult<()> {
    in_shape!(values, LockValueSql, LockValuesSql, |statement| statement
        .execute(&mut conn)
        .await)?;
    Ok(())
}

/// Step 2: the primaries of every identity holding one of the values, `FOR UPDATE`
/// in id order, as they are once locked. The match runs on this statement's
/// snapshot; a primary a concurrent merge demoted comes back with a `linked_id`,
/// which [`check_locked`] turns into a fresh attempt.
pub async fn lock_matched_primaries(
    mut conn: &AsyncPgConnection,
    values: &Values<'_>,
) -> QueryResult<Vec<ContactRecord>> {
    in_shape!(
        values,
        LockPrimariesOfOneSql,
        LockMatchedPrimariesSql,
        |statement| statement.load(&mut conn).await
    )
}

/// Step 3: every live member of every identity holding one of the values, in
/// contact order. Takes no lock: after steps 1 and 2 it sees the identities as they
/// are locked; alone (a repeat customer's read, a look-up) it is one consistent
/// snapshot. Two joins, not one on `id = p OR linked_id = p`, which no index serves;
/// the second finds secondaries through the partial index on `linked_id`, whose
/// predicate it spells out (`protocol::members_are_loaded_through_the_partial_index`).
pub async fn load_members_matching(
    mut conn: &AsyncPgConnection,
    values: &Values<'_>,
) -> QueryResult<Vec<ContactRecord>> {
    in_shape!(
        values,
        LoadMembersOfOneSql,
        LoadMembersMatchingSql,
        |statement| statement.load(&mut conn).await
    )
}

/// Which of the values administrators blocked. After the value locks, it sees every
/// block committed before them (a block takes its value's lock).
pub async fn blocked_among(
    mut conn: &AsyncPgConnection,
    values: &Values<'_>,
) -> QueryResult<Vec<ContactValue>> {
    let rows: Vec<BlockedRow> = in_shape!(values, BlockedOfOneSql, BlockedAmongSql, |statement| {
        statement.load(&mut conn).await
    })?;
    Ok(blocked_values_of(rows))
}

type QueryResult<T> = diesel::QueryResult<T>;

/// Locks `contacts` against every writer for the rest of the transaction; plain
/// reads go on. An import chunk takes it instead of steps 1 and 2: it stands for
/// every value and primary lock at once, so the chunk reads its members with
/// [`load_members_matching`] and nothing can change them before it commits (step 4
/// holds by construction). Single calls, batches and repairs lock rows of
/// `contacts` (or insert into it) before anything they could make a chunk wait for,
/// so a chunk that takes this first cannot interleave with them, and deadlocks only
/// with an administrator resolving a held request (its record is locked before
/// `contacts`) that the chunk upserts again: PostgreSQL breaks that with 40P01, and
/// the loser's [`Retry`] runs it again.
pub async fn lock_contacts_table(mut conn: &AsyncPgConnection) -> QueryResult<()> {
    diesel::sql_query("LOCK TABLE contacts IN EXCLUSIVE MODE")
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// Under SERIALIZABLE an administrator's repair (a split re-links many rows) keeps
/// losing to the stream of small identify transactions it collides with: in the
/// repairs scenario a block never committed in 64 attempts. So, first in its
/// transaction and before its snapshot (neither statement takes one), a repair
/// takes the contacts table as an import chunk does: writers wait for it, so none
/// can abort it. Under READ COMMITTED the value and row locks already order it.
pub async fn serialize_repair(conn: &mut AsyncPgConnection) -> QueryResult<()> {
    #[derive(diesel::QueryableByName)]
    struct Isolation {
        #[diesel(sql_type = Text)]
        transaction_isolation: String,
    }
    let isolation: Isolation = diesel::sql_query("SHOW transaction_isolation")
        .get_result(conn)
        .await?;
    if isolation.transaction_isolation == "serializable" {
        lock_contacts_table(conn).await?;
    }
    Ok(())
}

/// What the protocol found under its locks.
#[derive(Debug)]
pub struct Locked {
    /// The locked primaries, in id order.
    pub primaries: Vec<ContactRecord>,
    /// Every live member of their identities, in contact order.
    pub members: Vec<ContactRecord>,
}

/// Whether a blocked value among the locked ones stops the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocks {
    /// Identify's use cases: a value blocked since the input was screened is
    /// [`AttemptError::Blocked`], and the caller starts over without it.
    Refuse,
    /// The repairs, which act on blocked values themselves (block, erase).
    Ignore,
}

/// Steps 1 to 4 as one pipeline and one check.
pub async fn lock_and_load<E>(
    conn: &AsyncPgConnection,
    values: &Values<'_>,
    blocks: Blocks,
) -> Result<Locked, AttemptError<E>> {
    let ((), primaries, members, blocked) = try_join4(
        lock_values(conn, values),
        lock_matched_primaries(conn, values),
        load_members_matching(conn, values),
        async {
            match blocks {
                Blocks::Refuse => blocked_among(conn, values).await,
                Blocks::Ignore => Ok(Vec::new()),
            }
        },
    )
    .await?;
    if !blocked.is_empty() {
        return Err(AttemptError::Blocked(blocked));
    }
    check_locked(&primaries, &members)?;
    Ok(Locked { primaries, members })
}

/// Step 4: the locked primaries must be exactly the identities whose members were
/// loaded, each still a primary. A merge that committed between the match and the
/// lock demoted one, or joined another; a member whose primary was not locked, or a
/// locked primary none of whose members was loaded, is a picture that changed under
/// us: start over rather than act on it.
pub fn check_locked<E>(
    primaries: &[ContactRecord],
    members: &[ContactRecord],
) -> Result<(), AttemptError<E>> {
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
    Ok(())
}

/// Why one attempt's transaction was rolled back; `E` is the use case's own refusal.
#[derive(Debug)]
pub enum AttemptError<E> {
    /// A merge committed between our match and our lock: start over.
    Raced,
    /// Values an administrator blocked after the request was screened: start over
    /// without them.
    Blocked(Vec<ContactValue>),
    /// The use case refuses (an approval of a resolved hold, a missing record): final.
    Refused(E),
    Database(diesel::result::Error),
}

impl<E> From<diesel::result::Error> for AttemptError<E> {
    fn from(err: diesel::result::Error) -> Self {
        AttemptError::Database(err)
    }
}

/// Why a retried use case ended without a result.
#[derive(Debug)]
pub enum Failure<E> {
    Refused(E),
    /// A failure no new attempt can mend (the database is down, a bug).
    Database(DbError),
    /// Every attempt raced or conflicted.
    GaveUp,
}

/// The one retry loop's state: which attempt this is, the values found blocked so
/// far, and when to give up. Each use case writes its loop as
///
/// ```ignore
/// let mut retry = Retry::new();
/// loop {
///     let result = connection.transaction(async |conn| once(conn, ...).await).await;
///     if let ControlFlow::Break(done) = retry.settle(result).await {
///         return done.map_err(Into::into);
///     }
/// }
/// ```
///
/// rather than through a function taking a closure: an async closure's future
/// cannot be required to be `Send` in a generic function's bounds, and every use
/// case runs in a spawned task.
#[derive(Debug)]
pub struct Retry {
    attempt: u32,
    blocked: HashSet<ContactValue>,
}

impl Default for Retry {
    fn default() -> Self {
        Self::new()
    }
}

impl Retry {
    pub fn new() -> Self {
        Retry {
            attempt: 1,
            blocked: HashSet::new(),
        }
    }

    /// Values an administrator blocked since the use case screened its input: the
    /// next attempt leaves them out.
    pub fn blocked(&self) -> &HashSet<ContactValue> {
        &self.blocked
    }

    /// What to do after an attempt: `Break` with the result, or `Continue` after the
    /// pause a conflict calls for. Races and blocks retry at once (the lock that
    /// raced is free now); serialization failures and deadlocks after a random
    /// pause; both count toward [`MAX_ATTEMPTS`].
    pub async fn settle<T, E>(
        &mut self,
        result: Result<T, AttemptError<E>>,
    ) -> ControlFlow<Result<T, Failure<E>>> {
        let attempt = self.attempt;
        match result {
            Ok(value) => {
                tracing::Span::current().record("attempts", attempt);
                return ControlFlow::Break(Ok(value));
            }
            Err(AttemptError::Refused(err)) => {
                return ControlFlow::Break(Err(Failure::Refused(err)));
            }
            Err(AttemptError::Raced) => {
                tracing::debug!(
                    attempt,
                    "an identity changed before it was locked, retrying"
                );
            }
            Err(AttemptError::Blocked(values)) => self.blocked.extend(values),
            Err(AttemptError::Database(err)) => match DbError::from(err) {
                DbError::Conflict(conflict) => {
                    tracing::debug!(attempt, error = %conflict, "transient conflict, retrying");
                    if attempt < MAX_ATTEMPTS {
                        back_off(attempt).await;
                    }
                }
                other => return ControlFlow::Break(Err(Failure::Database(other))),
            },
        }
        if attempt >= MAX_ATTEMPTS {
            return ControlFlow::Break(Err(Failure::GaveUp));
        }
        self.attempt += 1;
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    fn record(id: i32, linked_id: Option<i32>) -> ContactRecord {
        ContactRecord {
            id,
            phone_number: None,
            email: None,
            linked_id,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn raced(primaries: &[ContactRecord], members: &[ContactRecord]) -> bool {
        matches!(
            check_locked::<()>(primaries, members),
            Err(AttemptError::Raced)
        )
    }

    #[test]
    fn what_was_loaded_must_be_what_was_locked() {
        let primaries = [record(1, None), record(2, None)];
        let members = [record(1, None), record(3, Some(1)), record(2, None)];
        assert!(!raced(&primaries, &members));
        // A primary demoted between the match and the lock.
        assert!(raced(&[record(1, None), record(2, Some(1))], &members));
        // A member of an identity that was not locked (it joined since the match).
        assert!(raced(&[record(1, None)], &members));
    }

    /// The repairs used to accept this (they checked only that every member's
    /// primary was locked): a locked identity none of whose members was loaded any
    /// more no longer holds the value, so the picture the repair would act on is
    /// not the one it locked.
    #[test]
    fn a_locked_identity_with_no_loaded_member_is_a_race() {
        let primaries = [record(1, None), record(2, None)];
        let members = [record(1, None), record(3, Some(1))];
        assert!(raced(&primaries, &members));
    }

    #[test]
    fn values_are_sorted_and_distinct() {
        let values = Values::new(["b@x.io", "a@x.io", "b@x.io"], ["2", "1"]);
        assert_eq!(values.emails(), ["a@x.io", "b@x.io"]);
        assert_eq!(values.phones(), ["1", "2"]);
    }
}
