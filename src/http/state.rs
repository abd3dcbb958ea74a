//! What every handler shares: the pool, the metrics, the rate limiter and the
//! configuration, behind one cheap-to-clone [`AppState`] (axum's state; the
//! GraphQL schema gets it through `.data()`).

use std::ops::Deref;
use std::sync::Arc;

use crate::app::changefeed::ChangeFeed;
use crate::app::identify::{Identified, Policy};
use crate::auth::Authenticator;
use crate::auth::throttle::RateLimiter;
use crate::db::replica::Replica;
use crate::db::{DbPool, PoolSettings, StatementCounter};
use crate::domain::{BlockRules, Outcome};
use crate::ops::config::Config;
use crate::ops::metrics::Metrics;

/// What every handler shares.
pub struct App {
    pub pool: DbPool,
    /// Counts the statements `pool`'s connections send.
    pub statements: StatementCounter,
    pub metrics: Arc<Metrics>,
    /// `None` when rate limiting is off (the default).
    pub rate_limiter: Option<RateLimiter>,
    pub auth: Authenticator,
    /// The guardrails of docs/SPEC.md §10.3 from configuration; the database's
    /// blocks are read inside each identify.
    pub policy: Policy,
    /// Wakes `identityEvents` subscribers and announces this process's commits.
    pub feed: Arc<ChangeFeed>,
    /// `DATABASE_READ_URL`'s replica, for GraphQL reads.
    pub replica: Option<Arc<Replica>>,
    /// Batches running at once (`BATCH_CONCURRENCY`).
    pub batches: Arc<tokio::sync::Semaphore>,
    pub config: Config,
}

/// Cheap to clone handle on [`App`], given to axum as state.
#[derive(Clone)]
pub struct AppState(Arc<App>);

impl AppState {
    pub fn new(pool: DbPool, statements: StatementCounter, config: Config) -> Self {
        let statements_for_replica = statements.clone();
        Self(Arc::new(App {
            pool: pool.clone(),
            statements,
            metrics: Arc::new(Metrics::default()),
            rate_limiter: RateLimiter::new(config.rate_limit_per_second, config.rate_limit_burst),
            // main refuses to start on invalid JWT settings; tests pass valid ones.
            auth: Authenticator::new(
                pool.clone(),
                config.auth_mode,
                config.auth_cache(),
                config.jwt_settings().ok().flatten(),
                config.host.is_loopback() || config.allow_anonymous,
            ),
            // main refuses to start on an unreadable file; tests pass valid ones.
            policy: Policy {
                rules: Arc::new(
                    config
                        .block_rules()
                        .unwrap_or_else(|_| BlockRules::defaults()),
                ),
                limits: config.identity_limits(),
            },
            feed: ChangeFeed::new(usize::from(config.max_subscribers), config.pool_size),
            replica: replica(&config, &statements_for_replica),
            batches: Arc::new(tokio::sync::Semaphore::new(usize::from(
                config.batch_concurrency,
            ))),
            config,
        }))
    }
}

/// The replica's pool; its connections open lazily, so this cannot fail on an
/// unreachable replica (main checks the URL parses).
fn replica(config: &Config, statements: &StatementCounter) -> Option<Arc<Replica>> {
    let url = config.database_read_url.as_ref()?;
    let settings = PoolSettings {
        // A hot standby refuses SERIALIZABLE; its reads need no isolation beyond
        // one statement's snapshot.
        serializable: false,
        ..config.pool_settings()
    };
    match crate::db::pool(url.expose(), &settings, statements.clone()) {
        Ok(pool) => Some(Arc::new(Replica::new(
            pool,
            std::time::Duration::from_millis(config.read_max_lag_ms),
        ))),
        Err(error) => {
            tracing::error!(%error, "DATABASE_READ_URL unusable: every read goes to the primary");
            None
        }
    }
}

impl AppState {
    /// The pool for a read-only GraphQL operation: the replica while it is up and
    /// close enough behind, else the primary.
    pub fn read_pool(&self) -> &DbPool {
        match &self.replica {
            Some(replica) => replica.choose(&self.pool),
            None => &self.pool,
        }
    }

    /// What an identify changed, into the metrics and the request's log line; both
    /// adapters call this, so REST and GraphQL count alike.
    pub fn record_identified(&self, identified: &Identified) {
        self.metrics
            .observe_identify(identified.outcome, identified.merged_primaries);
        if identified.outcome != Outcome::Unchanged {
            // Every change an identify makes, a hold included, is one event.
            self.feed.committed(1);
        }
        tracing::Span::current().record("outcome", identified.outcome.as_str());
    }
}

impl Deref for AppState {
    type Target = App;

    fn deref(&self) -> &App {
        &self.0
    }
}
