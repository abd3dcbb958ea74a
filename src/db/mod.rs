//! Everything that talks to PostgreSQL: the connection pool, the embedded
//! migrations, the generated schema, and plain query functions over a connection.

pub mod api_keys;
pub mod batch;
pub mod changes;
pub mod contacts;
pub mod erasure;
mod error;
pub mod graph;
pub mod imports;
pub mod invariants;
pub mod prepared;
pub mod protocol;
pub mod replica;
pub mod schema;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use diesel::connection::{Instrumentation, InstrumentationEvent};
use diesel_async::AsyncConnection;
use futures_util::FutureExt;

use diesel_async::pooled_connection::deadpool::{Object, Pool, PoolError};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncMigrationHarness, AsyncPgConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

/// The migrations under `migrations/`, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

pub use error::DbError;

pub type DbPool = Pool<AsyncPgConnection>;

/// Counts the SQL statements sent by every connection of a pool, and the round
/// trips they took, so that tests (and metrics) can see what a request costs.
#[derive(Debug, Clone, Default)]
pub struct StatementCounter {
    statements: Arc<AtomicU64>,
    round_trips: Arc<AtomicU64>,
}

impl StatementCounter {
    /// Statements sent so far, transaction control (BEGIN/COMMIT/ROLLBACK) included.
    pub fn total(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    /// Round trips so far: statements sent while none of the same connection was
    /// waiting for its answer. Pipelined statements share their first one's round
    /// trip. A statement's first use on a connection also waits for its prepare,
    /// which is not counted (a connection's first requests cost more).
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// The instrumentation for one connection; it counts into this counter.
    pub fn for_connection(&self) -> ConnectionCounter {
        ConnectionCounter {
            totals: self.clone(),
            in_flight: 0,
        }
    }
}

/// One connection's view of a [`StatementCounter`]: what is in flight is per
/// connection.
#[derive(Debug)]
pub struct ConnectionCounter {
    totals: StatementCounter,
    in_flight: u32,
}

impl Instrumentation for ConnectionCounter {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        // BEGIN, COMMIT and ROLLBACK are sent as queries too, so they show up here.
        match event {
            InstrumentationEvent::StartQuery { .. } => {
                self.totals.statements.fetch_add(1, Ordering::Relaxed);
                if self.in_flight == 0 {
                    self.totals.round_trips.fetch_add(1, Ordering::Relaxed);
                }
                self.in_flight += 1;
            }
            InstrumentationEvent::FinishQuery { .. } => {
                self.in_flight = self.in_flight.saturating_sub(1);
            }
            _ => {}
        }
    }
}
pub type DbConnection = Object<AsyncPgConnection>;

/// How the pool behaves; the defaults suit one server process on a small machine.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_size: usize,
    /// How long a request waits for a free connection (or a new one) before the
    /// database counts as unavailable.
    pub acquire_timeout: Duration,
    /// Off behind a transaction-mode pooler: statements go unnamed, one exchange
    /// each, instead of prepared once per connection and cached.
    pub prepared_statements: bool,
    /// Every transaction SERIALIZABLE, and no advisory lock (docs/SPEC.md §4).
    pub serializable: bool,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_size: 16,
            acquire_timeout: Duration::from_secs(5),
            prepared_statements: true,
            serializable: false,
        }
    }
}

/// Builds the pool; connections open lazily, so this succeeds with the database down.
pub fn pool(
    database_url: &str,
    settings: &PoolSettings,
    statements: StatementCounter,
) -> Result<DbPool, String> {
    let mut manager_config = ManagerConfig::<AsyncPgConnection>::default();
    let (prepared_statements, serializable) = (settings.prepared_statements, settings.serializable);
    manager_config.custom_setup = Box::new(move |url| {
        let statements = statements.clone();
        async move {
            let mut connection = if prepared_statements {
                AsyncPgConnection::establish(url).await?
            } else {
                let mut connection = AsyncPgConnection::establish_unnamed(url).await?;
                learn_enum_types(&mut connection)
                    .await
                    .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                connection
            };
            if serializable {
                make_serializable(&mut connection, prepared_statements).await?;
            }
            connection.set_instrumentation(statements.for_connection());
            Ok(connection)
        }
        .boxed()
    });
    // The default recycling check sends `SELECT 1` on every checkout: a round trip per
    // request. A dead connection is noticed on first use and reported as unavailable.
    manager_config.recycling_method = RecyclingMethod::Fast;
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
        database_url,
        manager_config,
    );
    Pool::builder(manager)
        .max_size(settings.max_size)
        .wait_timeout(Some(settings.acquire_timeout))
        .create_timeout(Some(settings.acquire_timeout))
        .recycle_timeout(Some(settings.acquire_timeout))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|err| err.to_string())
}

/// What a query of one text column, named `value`, answers.
#[derive(diesel::QueryableByName)]
struct TextValue {
    #[diesel(sql_type = diesel::sql_types::Text)]
    value: String,
}

/// Makes every transaction of the connection, and every statement outside one,
/// SERIALIZABLE. Behind a transaction pooler a SET would stay on one server
/// connection, so there the database or role must default to it already.
async fn make_serializable(
    connection: &mut AsyncPgConnection,
    session_is_ours: bool,
) -> diesel::ConnectionResult<()> {
    use diesel_async::{RunQueryDsl, SimpleAsyncConnection};

    let failed = diesel::ConnectionError::CouldntSetupConfiguration;
    if session_is_ours {
        return connection
            .batch_execute("SET default_transaction_isolation TO 'serializable'")
            .await
            .map_err(failed);
    }
    let setting: TextValue =
        diesel::sql_query("SELECT current_setting('default_transaction_isolation') AS value")
            .get_result(connection)
            .await
            .map_err(failed)?;
    if setting.value == "serializable" {
        Ok(())
    } else {
        Err(diesel::ConnectionError::BadConnection(format!(
            "DB_ISOLATION=serializable behind a transaction pooler \
             (DB_PREPARED_STATEMENTS=off) needs SERIALIZABLE as the database's default, \
             since a SET would not stay with the session: ALTER DATABASE … SET \
             default_transaction_isolation = 'serializable' (it is '{}')",
            setting.value
        )))
    }
}

/// A random pause before running a transaction again that a conflict aborted, so
/// that the transactions that collided do not collide again in step: up to
/// 2^attempt ms, at most 100 ms.
pub async fn back_off(attempt: u32) {
    use std::hash::BuildHasher;

    let ceiling_ms = 1u64 << attempt.min(7);
    let ceiling = Duration::from_millis(ceiling_ms.min(100));
    // A fresh RandomState is randomly keyed: hashing anything gives a random number.
    let random = std::collections::hash_map::RandomState::new().hash_one(attempt);
    let fraction = (random % 1024) as u32;
    tokio::time::sleep(ceiling * fraction / 1024).await;
}

/// tokio-postgres learns a result column's type it does not know (our enums) with
/// a statement it prepares under a name and keeps for the connection's life. Behind
/// a transaction pooler that statement may be missing from the next server
/// connection, so each connection meets every enum once, in one transaction that
/// then drops what it prepared: the types stay known, and no lookup runs again.
async fn learn_enum_types(connection: &mut AsyncPgConnection) -> diesel::QueryResult<()> {
    use diesel_async::{RunQueryDsl, SimpleAsyncConnection};

    connection
        .transaction(async |connection| {
            let enums: Vec<TextValue> = diesel::sql_query(
                "SELECT format_type(oid, NULL) AS value FROM pg_type \
                 WHERE typtype = 'e' AND pg_type_is_visible(oid) ORDER BY 1",
            )
            .load(connection)
            .await?;
            if enums.is_empty() {
                // A database not migrated yet: the migrating connection is dropped
                // afterwards, so no pooled connection lives on without the enums.
                return Ok(());
            }
            let columns: Vec<String> = enums
                .iter()
                .map(|TextValue { value: name }| format!("NULL::{name}, NULL::{name}[]"))
                .collect();
            diesel::sql_query(format!("SELECT {}", columns.join(", ")))
                .execute(connection)
                .await?;
            connection.batch_execute("DEALLOCATE ALL").await
        })
        .await
}

/// Applies every pending migration, all in one transaction; returns how many ran.
pub async fn run_migrations(pool: &DbPool) -> Result<usize, MigrationError> {
    use diesel_async::{AnsiTransactionManager, SimpleAsyncConnection, TransactionManager};

    let connection = pool.get().await.map_err(MigrationError::Connect)?;
    // Connections opened before the migrations may lack what they create (see
    // `learn_enum_types`): this one leaves the pool when done.
    let mut connection = Object::take(connection);
    let apply_error = |err: diesel::result::Error| MigrationError::Apply(err.to_string());
    AnsiTransactionManager::begin_transaction(&mut connection)
        .await
        .map_err(apply_error)?;
    // Servers starting together on a fresh database would otherwise race to create
    // the same objects; the loser fails on a unique violation in the catalogue. A
    // transaction lock, not a session one: behind a transaction pooler a session
    // lock would stay with whichever server connection took it.
    connection
        .batch_execute(&format!(
            "SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"
        ))
        .await
        .map_err(apply_error)?;
    // The harness drives diesel's synchronous migration code; keep it off the
    // async worker threads. Each migration runs in a savepoint of our transaction.
    let (mut connection, applied) = tokio::task::spawn_blocking(move || {
        let mut harness = AsyncMigrationHarness::new(connection);
        let applied = harness
            .run_pending_migrations(MIGRATIONS)
            .map(|versions| versions.len())
            .map_err(|err| MigrationError::Apply(err.to_string()));
        (harness.into_inner(), applied)
    })
    .await
    .map_err(|err| MigrationError::Apply(err.to_string()))?;
    match applied {
        Ok(applied) => {
            AnsiTransactionManager::commit_transaction(&mut connection)
                .await
                .map_err(apply_error)?;
            Ok(applied)
        }
        Err(err) => {
            // The connection is dropped either way; this only ends the transaction sooner.
            let _ = AnsiTransactionManager::rollback_transaction(&mut connection).await;
            Err(err)
        }
    }
}

/// Transaction advisory lock held while migrating. Should it ever equal the hash of a
/// value, the only cost is a request waiting for a migration.
const MIGRATION_LOCK_KEY: i64 = 0x6964_656e_7469_7479; // "identity"

/// Whether every embedded migration has been applied to the database.
pub async fn migrations_applied(
    connection: &mut DbConnection,
) -> Result<bool, diesel::result::Error> {
    use diesel::migration::MigrationSource;
    use diesel_async::RunQueryDsl;

    let applied: Vec<TextValue> =
        diesel::sql_query("SELECT version AS value FROM __diesel_schema_migrations")
            .load(connection)
            .await?;
    let embedded = MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)
        .map_err(diesel::result::Error::QueryBuilderError)?;
    Ok(embedded.iter().all(|migration| {
        let version = migration.name().version().to_string();
        applied.iter().any(|row| row.value == version)
    }))
}

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("could not connect to the database: {0}")]
    Connect(PoolError),
    #[error("could not apply migrations: {0}")]
    Apply(String),
}
