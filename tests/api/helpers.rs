//! `spawn_app()`: the application on port 0 over a fresh, migrated database.
//!
//! Without `DATABASE_URL` the suite starts one throwaway PostgreSQL per test process
//! from the installed server binaries (as an unprivileged user when run as root).
//! With `DATABASE_URL` it uses that server, which must allow `CREATE DATABASE`.
//! Each test gets a database of its own, dropped when the test ends.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use clap::Parser;
use diesel::QueryableByName;
use diesel::sql_types::{Int4, Nullable, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use identity_reconciliation::db::{self, DbPool, StatementCounter, invariants};
use identity_reconciliation::http::router::{self as app, AppState};
use identity_reconciliation::ops::config::{Cli, Secret};
use identity_reconciliation::ops::embedded::{EmbeddedOptions, EmbeddedPostgres};
use serde_json::{Value, json};

/// The server every test of this process creates its databases on.
struct TestServer {
    /// URL of a database we may connect to for `CREATE DATABASE`.
    admin_url: String,
}

fn test_server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => TestServer { admin_url: url },
        _ => TestServer {
            admin_url: start_private_server(),
        },
    })
}

/// Starts PostgreSQL from a thread that lives as long as the process: the server is
/// tied to its starting thread and shuts down when the test process exits.
fn start_private_server() -> String {
    let root = std::env::temp_dir().join("identity-reconciliation-tests");
    remove_stale_clusters(&root);
    let dir = root.join(format!("pg-{}", std::process::id()));
    remove_when_gone(&dir);
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("test-postgres".into())
        .spawn(move || {
            let started = std::fs::create_dir_all(&dir)
                .map_err(|err| err.to_string())
                .and_then(|()| {
                    EmbeddedPostgres::start(&EmbeddedOptions {
                        data_dir: dir.join("data"),
                        log_file: dir.join("postgres.log"),
                        durable: false,
                        bin_dir: None,
                        port: None,
                    })
                    .map_err(|err| err.to_string())
                });
            match started {
                Ok(server) => {
                    sender.send(Ok(server.url("postgres"))).unwrap();
                    loop {
                        std::thread::park();
                    }
                }
                Err(err) => sender.send(Err(err)).unwrap(),
            }
        })
        .unwrap();
    match receiver.recv().unwrap() {
        Ok(url) => url,
        Err(err) => panic!(
            "the tests need PostgreSQL: set DATABASE_URL, or install the server binaries.\n{err}"
        ),
    }
}

/// Removes `dir` once this process has exited and its PostgreSQL has shut down. A
/// test binary ends with `process::exit`, which runs no destructor, so the removal
/// is left to a small watcher process of its own.
fn remove_when_gone(dir: &std::path::Path) {
    let script = r#"
        while kill -0 "$1" 2>/dev/null; do sleep 0.2; done
        for _ in $(seq 1 150); do [ -e "$2/data/postmaster.pid" ] || break; sleep 0.2; done
        rm -rf "$2"
    "#;
    let _ = std::process::Command::new("sh")
        .args(["-c", script, "watcher"])
        .arg(std::process::id().to_string())
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

/// Clusters left by test processes that are gone (their server died with them).
fn remove_stale_clusters(root: &PathBuf) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("pg-") else {
            continue;
        };
        if !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// `url` with its database name replaced.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

/// A fresh, migrated database on the test server, dropped when this is dropped.
pub struct TestDatabase {
    pub url: String,
    pub name: String,
}

impl TestDatabase {
    /// A migrated database: a copy of the template this process migrated once
    /// (`CREATE DATABASE … TEMPLATE`), not a migration run per test.
    pub async fn create() -> TestDatabase {
        let template = migrated_template().await;
        Self::create_from(Some(template)).await
    }

    /// A database with nothing in it, not even the migrations.
    pub async fn create_empty() -> TestDatabase {
        Self::create_from(None).await
    }

    async fn create_from(template: Option<&str>) -> TestDatabase {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let server = test_server();
        let name = format!(
            "ir_test_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let mut admin = AsyncPgConnection::establish(&server.admin_url)
            .await
            .expect("connect to the test server");
        let template = template
            .map(|template| format!(" TEMPLATE {template}"))
            .unwrap_or_default();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}{template}"))
            .await
            .expect("create the test database");
        drop(admin);
        let url = with_database(&server.admin_url, &name);
        TestDatabase { url, name }
    }
}

/// The name of this process's migrated template database, made on first use.
async fn migrated_template() -> &'static str {
    static TEMPLATE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    TEMPLATE
        .get_or_init(|| async {
            // Made on a runtime of its own: the first test's runtime ends with that
            // test, and the pool must not outlive the runtime that drove it.
            std::thread::spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(make_template())
            })
            .join()
            .expect("the template database is made")
        })
        .await
}

/// Test databases of test processes that died before dropping them (on a shared
/// `DATABASE_URL` server; a private one goes with its process).
async fn drop_databases_of_dead_processes(admin: &mut AsyncPgConnection) {
    #[derive(QueryableByName)]
    struct Database {
        #[diesel(sql_type = Text)]
        datname: String,
    }
    let Ok(databases) = diesel::sql_query(
        "SELECT datname FROM pg_database WHERE datname LIKE 'ir\\_test\\_%' \
         OR datname LIKE 'ir\\_template\\_%'",
    )
    .load::<Database>(admin)
    .await
    else {
        return;
    };
    for Database { datname } in databases {
        let pid = datname.split('_').nth(2).unwrap_or_default();
        if !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {datname} WITH (FORCE)"))
                .await;
        }
    }
}

async fn make_template() -> String {
    let server = test_server();
    let name = format!("ir_template_{}", std::process::id());
    let mut admin = AsyncPgConnection::establish(&server.admin_url)
        .await
        .expect("connect to the test server");
    drop_databases_of_dead_processes(&mut admin).await;
    // Two statements: a multi-statement batch is one transaction, which neither allows.
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .await
        .expect("drop a leftover template database");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create the template database");
    let url = with_database(&server.admin_url, &name);
    let pool = db::pool(
        &url,
        &db::PoolSettings::default(),
        StatementCounter::default(),
    )
    .expect("build a pool");
    db::run_migrations(&pool)
        .await
        .expect("migrate the template database");
    // A template must have no connection open while it is copied.
    pool.close();
    drop(pool);
    name
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin_url = test_server().admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which cannot be blocked on: use a
        // thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(mut admin) = AsyncPgConnection::establish(&admin_url).await {
                    let _ = admin
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

pub struct TestApp {
    pub address: SocketAddr,
    pub client: reqwest::Client,
    pub pool: DbPool,
    /// Statements sent through the application's pool; the helpers below use that
    /// pool too, so read it only around the requests being counted.
    pub statements: StatementCounter,
    /// `None` for an app pointed at an unreachable database.
    pub database: Option<TestDatabase>,
}

/// Starts the application over a fresh database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Like [`spawn_app`], with extra command-line flags for the server's configuration.
pub async fn spawn_app_with(flags: &[&str]) -> TestApp {
    let database = TestDatabase::create().await;
    let url = database.url.clone();
    start_app(&url, Some(database), flags).await
}

/// Like [`spawn_app_with`], reaching the fresh database through `front`, which maps
/// the database's own URL to the one the application is given (a pooler's).
pub async fn spawn_app_through(front: impl FnOnce(&str) -> String, flags: &[&str]) -> TestApp {
    let database = TestDatabase::create().await;
    let url = front(&database.url);
    start_app(&url, Some(database), flags).await
}

/// The application on a database of the caller's (`url`), with extra flags.
pub async fn spawn_app_at(url: &str, flags: &[&str]) -> TestApp {
    start_app(url, None, flags).await
}

/// The application pointed at a port where no database listens.
pub async fn spawn_app_without_database() -> TestApp {
    // A port that was free a moment ago: nothing listens there (or, in the unlikely
    // case something took it since, nothing that speaks PostgreSQL).
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://postgres@127.0.0.1:{closed_port}/nowhere");
    start_app(&url, None, &["--db-acquire-timeout-ms", "500"]).await
}

async fn start_app(url: &str, database: Option<TestDatabase>, flags: &[&str]) -> TestApp {
    init_test_log();
    let mut args = vec![
        "test",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--pool-size",
        "10",
    ];
    args.extend_from_slice(flags);
    let mut config = Cli::try_parse_from(args).expect("test flags parse").config;
    config.database_url = Some(Secret::new(url.to_owned()));
    let statements = StatementCounter::default();
    let pool = db::pool(url, &config.pool_settings(), statements.clone()).expect("build the pool");
    let (listener, address) = app::bind(&config).await.expect("bind a free port");
    let state = AppState::new(pool.clone(), statements.clone(), config);
    tokio::spawn(app::serve(listener, state, std::future::pending()));
    TestApp {
        address,
        client: reqwest::Client::new(),
        pool,
        statements,
        database,
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.pool.close();
    }
}

/// One row of `contacts`, as the tests inspect it.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct Row {
    #[diesel(sql_type = Int4)]
    pub id: i32,
    #[diesel(sql_type = Nullable<Text>)]
    pub email: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub phone_number: Option<String>,
    #[diesel(sql_type = Nullable<Int4>)]
    pub linked_id: Option<i32>,
    #[diesel(sql_type = Text)]
    pub link_precedence: String,
}

impl TestApp {
    /// Runs a GraphQL operation; returns the whole response (`data` and `errors`).
    pub async fn graphql(&self, query: &str, variables: Value) -> Value {
        let response = self
            .client
            .post(self.url("/graphql"))
            .json(&json!({"query": query, "variables": variables}))
            .send()
            .await
            .expect("graphql request sent");
        assert_eq!(
            response.status(),
            200,
            "GraphQL answers 200 even for errors"
        );
        response.json().await.expect("graphql answer is JSON")
    }

    /// Runs a GraphQL operation that must succeed; returns `data`.
    pub async fn graphql_data(&self, query: &str, variables: Value) -> Value {
        let response = self.graphql(query, variables).await;
        assert!(
            response.get("errors").is_none(),
            "unexpected errors: {response}"
        );
        response["data"].clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Posts a raw body with a content type; returns the status and the JSON answer.
    pub async fn post_raw(
        &self,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let mut request = self.client.post(self.url("/identify")).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body read");
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("status {status}: answer is not JSON: {text:?}"));
        (status, value)
    }

    /// Posts a JSON body to `/identify`.
    pub async fn post_identify(&self, body: &Value) -> (u16, Value) {
        self.post_raw(Some("application/json"), body.to_string())
            .await
    }

    /// Identifies and expects a 200; returns the `contact` object.
    pub async fn identify(&self, email: Option<&str>, phone: Option<&str>) -> Value {
        let (status, body) = self
            .post_identify(&json!({"email": email, "phoneNumber": phone}))
            .await;
        assert_eq!(
            status, 200,
            "identify({email:?}, {phone:?}) answered {body}"
        );
        body["contact"].clone()
    }

    pub async fn connection(&self) -> db::DbConnection {
        self.pool.get().await.expect("a test connection")
    }

    /// Every row, live or not, by id.
    pub async fn rows(&self) -> Vec<Row> {
        diesel::sql_query(
            "SELECT id, email, phone_number, linked_id, link_precedence::text AS link_precedence \
             FROM contacts ORDER BY id",
        )
        .load(&mut self.connection().await)
        .await
        .expect("rows load")
    }

    /// `/metrics` as text.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics answered")
            .text()
            .await
            .expect("metrics read")
    }

    /// The `json` text column of every row `sql` returns.
    pub async fn query_json(&self, sql: &str) -> Vec<String> {
        #[derive(QueryableByName)]
        struct Json {
            #[diesel(sql_type = Text)]
            json: String,
        }
        diesel::sql_query(sql)
            .load::<Json>(&mut self.connection().await)
            .await
            .unwrap_or_else(|err| panic!("{sql}: {err}"))
            .into_iter()
            .map(|row| row.json)
            .collect()
    }

    pub async fn row_count(&self) -> usize {
        self.rows().await.len()
    }

    pub async fn execute(&self, sql: &str) {
        self.connection()
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|err| panic!("{sql}: {err}"));
    }

    /// Records, as the ledger's migration does, the pre-ledger events of contacts a
    /// test wrote directly: they stand for data from before the ledger.
    pub async fn backfill_ledger(&self) {
        self.execute(
            "INSERT INTO identity_events (kind, contact_id, primary_id, pre_ledger, created_at) \
             SELECT CASE WHEN linked_id IS NULL THEN 'created' ELSE 'linked' END::identity_event_kind, \
                    id, coalesce(linked_id, id), true, created_at \
             FROM contacts c \
             WHERE NOT EXISTS (SELECT 1 FROM identity_events e WHERE e.contact_id = c.id) \
             ORDER BY id",
        )
        .await;
    }

    /// Fails the test if any of I1–I3, I6, the ledger's checks or I7 is broken.
    pub async fn assert_invariants(&self) {
        let mut conn = self.connection().await;
        let mut reports = invariants::check(&mut conn)
            .await
            .expect("invariant check runs");
        reports.push(
            invariants::check_evidence(&mut conn)
                .await
                .expect("evidence check runs"),
        );
        let broken: Vec<_> = reports.iter().filter(|r| r.violations > 0).collect();
        assert!(broken.is_empty(), "invariants broken: {broken:#?}");
    }

    /// The live identities as sets of values, keyed by primary id.
    pub async fn identities(&self) -> BTreeMap<i32, BTreeSet<String>> {
        let mut identities: BTreeMap<i32, BTreeSet<String>> = BTreeMap::new();
        for row in self.rows().await {
            let values = identities
                .entry(row.linked_id.unwrap_or(row.id))
                .or_default();
            values.extend(row.email.map(|e| format!("e:{e}")));
            values.extend(row.phone_number.map(|p| format!("p:{p}")));
        }
        identities
    }
}

/// Options for a throwaway private PostgreSQL kept in `dir` (no fsync, any port).
pub fn throwaway_cluster(dir: &std::path::Path) -> EmbeddedOptions {
    EmbeddedOptions {
        data_dir: dir.join("postgres"),
        log_file: dir.join("postgres.log"),
        durable: false,
        bin_dir: None,
        port: None,
    }
}

/// A private PostgreSQL owned by a thread of its own. The server is tied to the life
/// of the thread that started it (see `ops::embedded`), so it must not be started
/// from a pool thread that may retire mid-test.
pub struct PostgresThread {
    pub url: String,
    pub port: u16,
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl PostgresThread {
    pub fn start(options: EmbeddedOptions) -> PostgresThread {
        let (started, url) = std::sync::mpsc::channel();
        let (stop, stopping) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let mut postgres = EmbeddedPostgres::start(&options).expect("start PostgreSQL");
            started
                .send((postgres.url("postgres"), postgres.port()))
                .unwrap();
            let _ = stopping.recv();
            postgres.stop();
        });
        let (url, port) = url.recv().expect("PostgreSQL started");
        PostgresThread {
            url,
            port,
            stop,
            thread,
        }
    }

    /// Fast shutdown; returns once PostgreSQL has exited.
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// The backend process id of `conn`'s session.
pub async fn backend_pid(conn: &mut AsyncPgConnection) -> i32 {
    #[derive(QueryableByName)]
    struct Pid {
        #[diesel(sql_type = Int4)]
        pid: i32,
    }
    let pid: Pid = diesel::sql_query("SELECT pg_backend_pid() AS pid")
        .get_result(conn)
        .await
        .unwrap();
    pid.pid
}

/// Waits until some session is waiting for a lock that the session `blocker_pid`
/// holds: the state a test wants before it goes on, read from PostgreSQL instead of
/// guessed with a sleep.
pub async fn wait_until_blocked_by(database_url: &str, blocker_pid: i32) {
    #[derive(QueryableByName)]
    struct Waiting {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        waiting: i64,
    }
    let mut conn = AsyncPgConnection::establish(database_url).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let found: Waiting = diesel::sql_query(
            "SELECT count(*) AS waiting FROM pg_stat_activity \
             WHERE $1 = ANY(pg_blocking_pids(pid))",
        )
        .bind::<Int4, _>(blocker_pid)
        .get_result(&mut conn)
        .await
        .unwrap();
        if found.waiting > 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing ever waited for session {blocker_pid}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The server binary of this crate, as built for the tests.
pub const SERVER_BINARY: &str = env!("CARGO_BIN_EXE_identity-reconciliation");

/// Settings a developer's shell may hold that would change what the binary does:
/// tests that run it clear them first.
pub const CLEARED_VARIABLES: &[&str] = &[
    "DATABASE_URL",
    "DATABASE_DIRECT_URL",
    "DATABASE_READ_URL",
    "DATA_DIR",
    "HOST",
    "PORT",
    "AUTH_MODE",
    "ALLOW_ANONYMOUS",
    "JWT_SECRET",
    "JWT_JWKS_FILE",
    "JWT_JWKS_URL",
    "JWT_ISSUER",
    "JWT_AUDIENCE",
    "LOG_FORMAT",
];

/// Whether to show the servers' logs (`TEST_LOG=1 cargo test`): the tests' own
/// in-process servers log to the test output, server processes to stderr.
pub fn test_log() -> bool {
    std::env::var_os("TEST_LOG").is_some_and(|value| !value.is_empty() && value != "0")
}

/// Installs a log subscriber for the in-process servers when `TEST_LOG` is set.
fn init_test_log() {
    static INIT: std::sync::Once = std::sync::Once::new();
    if test_log() {
        INIT.call_once(|| {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_test_writer()
                .try_init();
        });
    }
}

/// The real server binary as a child process, over `database_url`; killed on drop.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub port: u16,
    /// Every line the server has logged so far (JSON).
    pub logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ServerProcess {
    /// Starts the server on a port of its own choosing (it binds port 0 and logs
    /// the address) and waits until it is ready.
    pub async fn start(database_url: &str) -> ServerProcess {
        Self::start_on(database_url, 0).await
    }

    /// Starts the server on `port` (0: any free one) and waits until it is ready.
    pub async fn start_on(database_url: &str, port: u16) -> ServerProcess {
        Self::start_with(database_url, port, &[]).await
    }

    /// Like [`ServerProcess::start_on`], with extra command-line flags.
    pub async fn start_with(database_url: &str, port: u16, flags: &[&str]) -> ServerProcess {
        use std::io::BufRead;
        let mut child = std::process::Command::new(SERVER_BINARY)
            .args(["--port", &port.to_string()])
            .args(flags)
            .args([
                "--db-acquire-timeout-ms",
                "1000",
                "--shutdown-timeout-secs",
                "20",
            ])
            .env("DATABASE_URL", database_url)
            .env("LOG_FORMAT", "json")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The log says where the server listens; the rest of it is shown with
        // TEST_LOG, and read either way so the server never blocks on a full pipe.
        let stderr = child.stderr.take().expect("piped stderr");
        let (address_sender, address) = std::sync::mpsc::channel();
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = logs.clone();
        std::thread::spawn(move || {
            let show = test_log();
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if show {
                    eprintln!("[server] {line}");
                }
                kept.lock().unwrap().push(line.clone());
                if let Ok(entry) = serde_json::from_str::<Value>(&line)
                    && let Some(address) = entry["address"].as_str()
                    && let Ok(address) = address.parse::<SocketAddr>()
                {
                    let _ = address_sender.send(address);
                }
            }
        });
        let address = tokio::task::spawn_blocking(move || {
            address.recv_timeout(std::time::Duration::from_secs(30))
        })
        .await
        .unwrap()
        .expect("the server logs the address it listens on");
        let server = ServerProcess {
            child,
            port: address.port(),
            logs,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !server.ready().await {
            assert!(
                std::time::Instant::now() < deadline,
                "server on {address} never became ready"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn ready(&self) -> bool {
        matches!(reqwest::get(self.url("/readyz")).await, Ok(r) if r.status() == 200)
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal)
            .expect("signal the server");
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The flags of `DB_ISOLATION=serializable` (docs/SPEC.md §4).
pub const SERIALIZABLE: &[&str] = &["--db-isolation", "serializable"];

/// Declares `async fn name(isolation: &[&str]) { … }` as a module `name` of two
/// tests, `read_committed` and `serializable`, each passing its mode's flags
/// (docs/SPEC.md §4: every concurrency test and fault scenario runs in both).
#[macro_export]
macro_rules! in_both_isolation_modes {
    ($(#[doc = $doc:literal])* async fn $name:ident($flags:ident: &[&str]) $body:block) => {
        $(#[doc = $doc])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run($flags: &'static [&'static str]) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn read_committed() {
                run(&[]).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn serializable() {
                run($crate::helpers::SERIALIZABLE).await
            }
        }
    };
}
