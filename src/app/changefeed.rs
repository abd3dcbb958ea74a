//! Live delivery of the change-event outbox (docs/SPEC.md §12): what wakes a
//! subscriber, and the pull loop that reads the table after its cursor.
//!
//! The table is the truth and every subscriber reads it itself, at its own pace, in
//! the outbox's gap-free order ([`changes::page_after`]). Nothing is pushed into a
//! per-subscriber queue, so a slow subscriber costs no memory beyond one page and
//! never holds up a write; the WebSocket transport drops one whose socket stops
//! draining (`graphql::subscription`).
//!
//! Wake-ups are hints, never data, and losing one only delays delivery:
//! - a commit in this process wakes its subscribers at once and is announced to the
//!   others with `NOTIFY identity_changes`, sent after the commit from a task of its
//!   own (a NOTIFY inside the write transaction would take PostgreSQL's global
//!   notify lock in every commit and serialise them);
//! - one connection per process `LISTEN`s, and each notification wakes every local
//!   subscriber;
//! - a tick every [`FALLBACK_POLL`] covers what no notification announces: a
//!   process that died between commit and NOTIFY, the listener reconnecting, or an
//!   event held back behind a transaction that wrote no event.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use futures_util::{Stream, StreamExt};
use tokio::sync::{Notify, Semaphore, watch};

use crate::db::changes::{self, ChangeRecord, CursorExpired, Position};
use crate::db::{DbError, DbPool};

/// The channel commits are announced on.
pub const CHANNEL: &str = "identity_changes";
/// How often subscribers look even when nothing was announced.
pub const FALLBACK_POLL: Duration = Duration::from_secs(1);
/// Events read from the table at once by one subscriber.
const PAGE: i64 = 500;
/// Least time between two reads of one subscriber that is caught up: under a heavy
/// write load every commit is a wake-up, and a read per commit per subscriber
/// would cost more than batching a few milliseconds of events.
const MIN_POLL_GAP: Duration = Duration::from_millis(20);
/// Least time between two announcements from this process, for the same reason.
const MIN_ANNOUNCE_GAP: Duration = Duration::from_millis(10);
/// How often the listening connection is checked for life when quiet.
const LISTENER_CHECK: Duration = Duration::from_secs(30);
/// Longest wait for the listening connection to connect or answer.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(diesel::QueryableByName)]
struct BackendPid {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pid: i32,
}

/// One process's side of the change feed; shared through the application state.
#[derive(Debug)]
pub struct ChangeFeed {
    /// Bumped on every hint that the outbox may have grown.
    wake: watch::Sender<u64>,
    /// Commits of this process not yet announced to the others.
    unannounced: AtomicBool,
    announce: Notify,
    /// Subscribers this process may serve at once.
    slots: Arc<Semaphore>,
    max_subscribers: usize,
    /// Subscription sockets open at once (as many as subscribers).
    sockets: Arc<Semaphore>,
    /// Subscribers reading the outbox at once: a share of the pool, so that
    /// subscribers never take the connections requests need.
    reads: Semaphore,
    subscribers: Mutex<HashMap<u64, Arc<Progress>>>,
    next_subscriber: AtomicU64,
    listening: AtomicBool,
    events_written: AtomicU64,
    events_delivered: AtomicU64,
    dropped_slow: AtomicU64,
}

/// How far behind one subscriber is, for the lag metric.
#[derive(Debug, Default)]
struct Progress {
    /// Commit time (ms since the epoch) of the oldest event read but not yet
    /// handed to the subscriber; 0 when it has all that was readable.
    waiting_since_ms: AtomicI64,
}

/// What the metrics show of the feed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeedStats {
    pub subscribers: usize,
    pub listening: bool,
    pub events_written: u64,
    pub events_delivered: u64,
    pub dropped_slow: u64,
    /// Seconds the most delayed subscriber's oldest undelivered event has waited.
    pub max_lag_seconds: f64,
}

/// A subscriber's place in the feed: holds its slot, and leaves the metrics when
/// dropped.
#[derive(Debug)]
pub struct Subscription {
    feed: Arc<ChangeFeed>,
    id: u64,
    progress: Arc<Progress>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.feed.lock_subscribers().remove(&self.id);
    }
}

/// An open subscription socket's place under the cap.
#[derive(Debug)]
pub struct SocketPlace(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

/// Every subscriber slot is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    pub max_subscribers: usize,
}

/// Why a subscription's stream ended.
#[derive(Debug)]
pub enum FollowError {
    Expired,
    Database(DbError),
}

impl ChangeFeed {
    /// `max_subscribers` subscriptions (and sockets); `pool_size` connections in the
    /// pool, a quarter of which subscribers may use at once.
    pub fn new(max_subscribers: usize, pool_size: usize) -> Arc<Self> {
        Arc::new(Self {
            wake: watch::channel(0).0,
            unannounced: AtomicBool::new(false),
            announce: Notify::new(),
            slots: Arc::new(Semaphore::new(max_subscribers)),
            max_subscribers,
            sockets: Arc::new(Semaphore::new(max_subscribers)),
            reads: Semaphore::new((pool_size / 4).max(1)),
            subscribers: Mutex::new(HashMap::new()),
            next_subscriber: AtomicU64::new(0),
            listening: AtomicBool::new(false),
            events_written: AtomicU64::new(0),
            events_delivered: AtomicU64::new(0),
            dropped_slow: AtomicU64::new(0),
        })
    }

    /// This process committed `events` change events: wakes its subscribers and has
    /// the others told.
    pub fn committed(&self, events: u64) {
        if events == 0 {
            return;
        }
        self.events_written.fetch_add(events, Ordering::Relaxed);
        self.wake_subscribers();
        self.unannounced.store(true, Ordering::Release);
        self.announce.notify_one();
    }

    fn wake_subscribers(&self) {
        self.wake
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    /// A slot for one more subscriber, if one is free.
    pub fn subscribe(self: &Arc<Self>) -> Result<Subscription, Full> {
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| Full {
            max_subscribers: self.max_subscribers,
        })?;
        // Counted as a subscriber once it follows: the metric then says its start
        // is settled.
        let id = self.next_subscriber.fetch_add(1, Ordering::Relaxed);
        let progress = Arc::new(Progress::default());
        Ok(Subscription {
            feed: self.clone(),
            id,
            progress,
            _slot: slot,
        })
    }

    /// A place for one more subscription socket, if one is free.
    pub fn open_socket(&self) -> Result<SocketPlace, Full> {
        self.sockets
            .clone()
            .try_acquire_owned()
            .map(SocketPlace)
            .map_err(|_| Full {
                max_subscribers: self.max_subscribers,
            })
    }

    /// A subscriber was dropped for not reading its socket.
    pub fn observe_dropped_slow(&self) {
        self.dropped_slow.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stats(&self) -> FeedStats {
        let now_ms = Utc::now().timestamp_millis();
        let subscribers = self.lock_subscribers();
        let max_lag_ms = subscribers
            .values()
            .map(|progress| progress.waiting_since_ms.load(Ordering::Relaxed))
            .filter(|since| *since > 0)
            .map(|since| now_ms.saturating_sub(since).max(0))
            .max()
            .unwrap_or(0);
        FeedStats {
            subscribers: subscribers.len(),
            listening: self.listening.load(Ordering::Relaxed),
            events_written: self.events_written.load(Ordering::Relaxed),
            events_delivered: self.events_delivered.load(Ordering::Relaxed),
            dropped_slow: self.dropped_slow.load(Ordering::Relaxed),
            max_lag_seconds: max_lag_ms as f64 / 1000.0,
        }
    }

    fn lock_subscribers(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Progress>>> {
        self.subscribers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Listens for other processes' announcements, sends this process's and ticks
    /// the fallback, until dropped. While the listening connection is down, commits
    /// are not announced: other processes find them at their next fallback tick.
    pub async fn run(self: Arc<Self>, database_url: Option<String>) {
        // The tick runs on its own, whatever the listener is waiting for.
        let tick = async {
            let mut ticks = tokio::time::interval(FALLBACK_POLL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                self.wake_subscribers();
            }
        };
        let listen = async {
            match &database_url {
                Some(url) => self.listen(url).await,
                None => std::future::pending().await,
            }
        };
        tokio::join!(tick, listen);
    }

    /// One `LISTEN`ing connection, reopened a second after it fails.
    async fn listen(&self, url: &str) {
        let mut failures: u32 = 0;
        loop {
            match self.listen_once(url).await {
                Ok(()) => failures = 0,
                Err(error) => {
                    // Logged once per outage, then again only every minute or so.
                    if failures.is_multiple_of(60) {
                        tracing::warn!(%error, "change feed: not listening for other servers' changes; polling every second");
                    }
                    failures = failures.saturating_add(1);
                }
            }
            self.listening.store(false, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Listens until the connection fails (an error) or stops answering, and
    /// announces this process's commits on the same connection.
    async fn listen_once(&self, url: &str) -> Result<(), String> {
        use diesel_async::RunQueryDsl;
        let setup = async {
            let mut conn = AsyncPgConnection::establish(url)
                .await
                .map_err(|err| err.to_string())?;
            conn.batch_execute(&format!("LISTEN {CHANNEL}"))
                .await
                .map_err(|err| err.to_string())?;
            let own: BackendPid = diesel::sql_query("SELECT pg_backend_pid() AS pid")
                .get_result(&mut conn)
                .await
                .map_err(|err| err.to_string())?;
            Ok::<_, String>((conn, own.pid))
        };
        let (mut conn, own_pid) = tokio::time::timeout(STATEMENT_TIMEOUT, setup)
            .await
            .map_err(|_| "no answer from the database within 10 s".to_owned())??;
        self.listening.store(true, Ordering::Relaxed);
        // Whatever was committed while nobody listened.
        self.wake_subscribers();
        let mut last_announced: Option<tokio::time::Instant> = None;
        loop {
            let check = tokio::time::sleep(LISTENER_CHECK);
            tokio::pin!(check);
            let announce = {
                let notifications = conn.notifications_stream();
                tokio::pin!(notifications);
                loop {
                    tokio::select! {
                        notification = notifications.next() => match notification {
                            // This process's own announcements woke its subscribers
                            // already.
                            Some(Ok(notification)) if notification.process_id == own_pid => {}
                            Some(Ok(_)) => self.wake_subscribers(),
                            Some(Err(err)) => return Err(err.to_string()),
                            None => return Err("the listening connection closed".to_owned()),
                        },
                        () = self.announce.notified() => break true,
                        () = &mut check => break false,
                    }
                }
            };
            let statement = if announce {
                if let Some(last) = last_announced {
                    // Commits meanwhile join this announcement.
                    tokio::time::sleep_until(last + MIN_ANNOUNCE_GAP).await;
                }
                if !self.unannounced.swap(false, Ordering::AcqRel) {
                    continue;
                }
                last_announced = Some(tokio::time::Instant::now());
                format!("NOTIFY {CHANNEL}")
            } else {
                // A peer that vanished without a reset leaves the stream silent.
                "SELECT 1".to_owned()
            };
            match tokio::time::timeout(STATEMENT_TIMEOUT, conn.batch_execute(&statement)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => return Err(err.to_string()),
                Err(_) => return Err("the listening connection stopped answering".to_owned()),
            }
        }
    }

    /// The changes after `after`, in the outbox's order, for as long as the stream
    /// is polled: first those already stored, then each as it becomes readable.
    /// Ends after yielding an error it cannot get past (an expired cursor).
    pub fn follow(
        self: &Arc<Self>,
        pool: DbPool,
        after: Option<Position>,
        subscription: Subscription,
    ) -> impl Stream<Item = Result<(Position, ChangeRecord), FollowError>> + Send + 'static {
        self.lock_subscribers()
            .insert(subscription.id, subscription.progress.clone());
        let follower = Follower {
            feed: self.clone(),
            pool,
            position: after,
            buffered: VecDeque::new(),
            wake: self.wake.subscribe(),
            subscription,
            last_read: None,
            done: false,
        };
        futures_util::stream::unfold(follower, |mut follower| async move {
            let item = follower.next().await?;
            Some((item, follower))
        })
    }
}

/// Tells every listening server that changes were committed: for writers outside a
/// server process (the `erase` command).
pub async fn announce(pool: &DbPool) -> Result<(), String> {
    let mut conn = pool.get().await.map_err(|err| err.to_string())?;
    conn.batch_execute(&format!("NOTIFY {CHANNEL}"))
        .await
        .map_err(|err| err.to_string())
}

struct Follower {
    feed: Arc<ChangeFeed>,
    pool: DbPool,
    position: Option<Position>,
    buffered: VecDeque<ChangeRecord>,
    wake: watch::Receiver<u64>,
    subscription: Subscription,
    last_read: Option<tokio::time::Instant>,
    done: bool,
}

impl Follower {
    async fn next(&mut self) -> Option<Result<(Position, ChangeRecord), FollowError>> {
        if self.done {
            return None;
        }
        loop {
            if let Some(record) = self.buffered.pop_front() {
                let position = record.position();
                self.position = Some(position.clone());
                self.note_waiting();
                self.feed.events_delivered.fetch_add(1, Ordering::Relaxed);
                return Some(Ok((position, record)));
            }
            // Seen before reading: a wake-up during the read is not lost.
            self.wake.borrow_and_update();
            match self.read().await {
                Ok(Ok(rows)) if !rows.is_empty() => {
                    self.buffered.extend(rows);
                    self.note_waiting();
                    continue;
                }
                Ok(Ok(_)) => {}
                Ok(Err(CursorExpired)) => {
                    self.done = true;
                    return Some(Err(FollowError::Expired));
                }
                Err(DbError::Query(err)) => {
                    self.done = true;
                    return Some(Err(FollowError::Database(DbError::Query(err))));
                }
                Err(err) => {
                    // Unavailable or a conflict: the table will still be there.
                    tracing::warn!(error = %err, "change feed: could not read events; retrying");
                }
            }
            if self.wake.changed().await.is_err() {
                return None;
            }
        }
    }

    async fn read(&mut self) -> Result<Result<Vec<ChangeRecord>, CursorExpired>, DbError> {
        if let Some(last) = self.last_read {
            tokio::time::sleep_until(last + MIN_POLL_GAP).await;
        }
        let _reading = self
            .feed
            .reads
            .acquire()
            .await
            .expect("the read semaphore is never closed");
        self.last_read = Some(tokio::time::Instant::now());
        let mut conn = self.pool.get().await?;
        Ok(changes::page_after(&mut conn, self.position.as_ref(), PAGE).await?)
    }

    fn note_waiting(&self) {
        let since = self
            .buffered
            .front()
            .map_or(0, |record| record.created_at.timestamp_millis().max(1));
        self.subscription
            .progress
            .waiting_since_ms
            .store(since, Ordering::Relaxed);
    }
}
