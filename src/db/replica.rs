//! Reads on a streaming replica (`DATABASE_READ_URL`): GraphQL queries that only
//! read go to it while it is up and no further behind than `READ_MAX_LAG_MS`;
//! everything that writes, and the answers of writes, stay on the primary.
//!
//! The lag is measured as the age of the oldest write-ahead-log position the
//! primary had reached that the replica has not replayed yet: a replica of an idle
//! primary is not behind, however old its last replayed transaction.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Nullable};

use super::DbPool;

/// How often the replica's position is compared with the primary's.
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// A probe slower than this counts as the replica being down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Positions kept while the replica is behind or down (a day at one per probe would
/// be more than enough to say "too far behind").
const MAX_SAMPLES: usize = 100_000;

/// The replica's pool and what the last probes found.
pub struct Replica {
    pool: DbPool,
    max_lag: Duration,
    up: AtomicBool,
    lag_ms: AtomicU64,
    reads_on_replica: AtomicU64,
    reads_on_primary: AtomicU64,
}

/// What `/metrics` shows about the replica.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaStats {
    pub up: bool,
    pub lag: Duration,
    pub reads_on_replica: u64,
    pub reads_on_primary: u64,
}

impl Replica {
    /// Unused until the first probe finds it up.
    pub fn new(pool: DbPool, max_lag: Duration) -> Self {
        Self {
            pool,
            max_lag,
            up: AtomicBool::new(false),
            lag_ms: AtomicU64::new(0),
            reads_on_replica: AtomicU64::new(0),
            reads_on_primary: AtomicU64::new(0),
        }
    }

    /// The pool one read-only operation should use.
    pub fn choose<'a>(&'a self, primary: &'a DbPool) -> &'a DbPool {
        let lag = Duration::from_millis(self.lag_ms.load(Ordering::Relaxed));
        if self.up.load(Ordering::Relaxed) && lag <= self.max_lag {
            self.reads_on_replica.fetch_add(1, Ordering::Relaxed);
            &self.pool
        } else {
            self.reads_on_primary.fetch_add(1, Ordering::Relaxed);
            primary
        }
    }

    pub fn stats(&self) -> ReplicaStats {
        ReplicaStats {
            up: self.up.load(Ordering::Relaxed),
            lag: Duration::from_millis(self.lag_ms.load(Ordering::Relaxed)),
            reads_on_replica: self.reads_on_replica.load(Ordering::Relaxed),
            reads_on_primary: self.reads_on_primary.load(Ordering::Relaxed),
        }
    }

    /// Probes the replica against `primary` until dropped.
    pub async fn watch(&self, primary: DbPool) {
        // (when the primary was seen at a position, the position), oldest first.
        let mut pending: VecDeque<(Instant, i64)> = VecDeque::new();
        let mut probes = tokio::time::interval(PROBE_EVERY);
        probes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            probes.tick().await;
            let now = Instant::now();
            // The primary's position first: what the replica replays afterwards
            // can only be further along.
            if let Some(position) = probe(&primary, PRIMARY_POSITION).await.flatten() {
                if pending.len() == MAX_SAMPLES {
                    pending.pop_front();
                }
                pending.push_back((now, position));
            }
            match probe(&self.pool, REPLAYED_POSITION).await {
                Some(replayed) => {
                    // `None`: not in recovery, a primary itself, so never behind.
                    let replayed = replayed.unwrap_or(i64::MAX);
                    while pending.front().is_some_and(|(_, at)| *at <= replayed) {
                        pending.pop_front();
                    }
                    let lag = pending
                        .front()
                        .map_or(Duration::ZERO, |(seen, _)| now.duration_since(*seen));
                    let was_up = self.up.swap(true, Ordering::Relaxed);
                    if !was_up {
                        tracing::info!("read replica up: GraphQL reads go to it");
                    }
                    let lag_ms = u64::try_from(lag.as_millis()).unwrap_or(u64::MAX);
                    let before = self.lag_ms.swap(lag_ms, Ordering::Relaxed);
                    let limit = self.max_lag.as_millis() as u64;
                    if before <= limit && lag_ms > limit {
                        tracing::warn!(lag_ms, "read replica behind: reads go to the primary");
                    } else if before > limit && lag_ms <= limit {
                        tracing::info!(lag_ms, "read replica caught up: reads go to it");
                    }
                }
                None => {
                    if self.up.swap(false, Ordering::Relaxed) {
                        tracing::warn!("read replica down: reads go to the primary");
                    }
                }
            }
        }
    }
}

const PRIMARY_POSITION: &str = "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8 AS position";
const REPLAYED_POSITION: &str =
    "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::int8 AS position";

#[derive(QueryableByName)]
struct Position {
    #[diesel(sql_type = Nullable<BigInt>)]
    position: Option<i64>,
}

/// One position query; `None` when the database did not answer in time.
async fn probe(pool: &DbPool, sql: &'static str) -> Option<Option<i64>> {
    use diesel_async::RunQueryDsl;

    let query = async {
        let mut conn = pool.get().await.ok()?;
        diesel::sql_query(sql)
            .get_result::<Position>(&mut conn)
            .await
            .ok()
            .map(|row| row.position)
    };
    tokio::time::timeout(PROBE_TIMEOUT, query)
        .await
        .ok()
        .flatten()
}
