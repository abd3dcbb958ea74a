//! The service behind PgBouncer in transaction mode (docs/deployment.md, "Behind PgBouncer"):
//! a pooler that hands each transaction, and each statement outside one, to
//! whichever server connection is free.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use diesel::migration::MigrationSource;
use futures_util::future::join_all;
use serde_json::{Value, json};

use identity_reconciliation::db::{self, PoolSettings, StatementCounter};

use crate::helpers::{TestApp, TestDatabase, spawn_app_through};

/// Fewer server connections than the application's pool holds, so consecutive
/// statements of one client land on different server connections.
const SERVER_CONNECTIONS: u32 = 3;

/// A PgBouncer (Debian's 1.18, the version before prepared-statement support) in
/// transaction mode in front of the test PostgreSQL, stopped on drop.
struct Bouncer {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Bouncer {
    fn start(database_url: &str) -> Bouncer {
        let target = tokio_postgres::Config::from_str(database_url).expect("a PostgreSQL URL");
        let pg_port = target.get_ports().first().copied().unwrap_or(5432);
        let user = target.get_user().expect("the test URL names a user");
        let password = target
            .get_password()
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
            .unwrap_or_default();
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("ir-pgbouncer-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the pgbouncer folder");
        let config = dir.join("pgbouncer.ini");
        std::fs::write(
            &config,
            format!(
                "[databases]\n\
                 * = host=127.0.0.1 port={pg_port} user={user} password={password}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = any\n\
                 pool_mode = transaction\n\
                 default_pool_size = {SERVER_CONNECTIONS}\n\
                 max_client_conn = 500\n\
                 ignore_startup_parameters = extra_float_digits,options\n"
            ),
        )
        .expect("write pgbouncer.ini");
        let binary = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|path| std::path::Path::new(path).exists())
            .expect("this test needs PgBouncer: `apt-get install pgbouncer` (.ci/run installs it)");
        // PgBouncer refuses to run as root; the test's PostgreSQL runs as nobody too.
        let mut command = if nix::unistd::geteuid().is_root() {
            let mut command = Command::new("setpriv");
            command.args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "--pdeathsig=KILL",
                binary,
            ]);
            command
        } else {
            Command::new(binary)
        };
        let stderr = if crate::helpers::test_log() {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        let child = command
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start pgbouncer");
        let bouncer = Bouncer { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not start listening"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        bouncer
    }

    /// `database_url` with PgBouncer's address in place of PostgreSQL's.
    fn front(&self, database_url: &str) -> String {
        let (scheme_and_credentials, rest) = database_url
            .rsplit_once('@')
            .expect("the test URL has credentials");
        let database = rest.split_once('/').map_or("postgres", |(_, name)| name);
        format!(
            "{scheme_and_credentials}@127.0.0.1:{}/{database}",
            self.port
        )
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The application over a fresh database, reaching it through a PgBouncer of its
/// own; drop the app before the bouncer.
async fn spawn_app_behind_bouncer(flags: &[&str]) -> (TestApp, Bouncer) {
    let mut bouncer = None;
    let app = spawn_app_through(
        |url| {
            let started = Bouncer::start(url);
            let fronted = started.front(url);
            bouncer = Some(started);
            fronted
        },
        flags,
    )
    .await;
    (app, bouncer.expect("the bouncer started"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

const UNNAMED: &[&str] = &[
    "--db-prepared-statements",
    "off",
    "--max-identity-emails",
    "0",
    "--max-identity-phones",
    "0",
];

/// The report: behind PgBouncer, 46 of 50 concurrent first orders answered
/// 503 and a concurrent merge 500, with `prepared statement "s9" does not exist`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_orders_merges_and_reads_work_through_a_transaction_pooler() {
    let (app, bouncer) = spawn_app_behind_bouncer(UNNAMED).await;

    // Fifty first orders at once, then fifty orders that each join two of them.
    let firsts = (0..50)
        .map(|i| json!({"email": format!("first{i}@x.io"), "phoneNumber": format!("10{i:02}")}));
    let statuses = fire(&app, firsts.collect()).await;
    assert_eq!(statuses, vec![200; 50], "first orders");
    let merges = (0..50).map(|i| {
        json!({"email": format!("first{i}@x.io"), "phoneNumber": format!("10{:02}", (i + 1) % 50)})
    });
    let statuses = fire(&app, merges.collect()).await;
    assert_eq!(statuses, vec![200; 50], "merges");

    // Every order is now one identity; a repeat customer reads it without a write.
    let answer = app.identify(Some("first7@x.io"), None).await;
    assert_eq!(answer["emails"].as_array().map(Vec::len), Some(50));
    app.assert_invariants().await;

    // GraphQL reads decode the enums (linkPrecedence) that tokio-postgres must know.
    let data = app
        .graphql_data(
            "{ contacts(first: 5) { nodes { id linkPrecedence } } }",
            json!({}),
        )
        .await;
    let nodes = data["contacts"]["nodes"].as_array().expect("a page");
    assert_eq!(nodes.len(), 5, "{data}");
    assert!(
        nodes
            .iter()
            .filter(|node| node["linkPrecedence"] == "PRIMARY")
            .count()
            == 1,
        "{data}"
    );
    drop(app);
    drop(bouncer);
}

/// Migrations take a transaction lock, not a session one, so they run (and two
/// servers starting at once serialise) through the pooler too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_through_a_transaction_pooler() {
    let database = TestDatabase::create_empty().await;
    let bouncer = Bouncer::start(&database.url);
    let settings = PoolSettings {
        prepared_statements: false,
        ..PoolSettings::default()
    };
    let runs = (0..2).map(|_| {
        let pool = db::pool(
            &bouncer.front(&database.url),
            &settings,
            StatementCounter::default(),
        )
        .expect("a pool");
        async move {
            db::run_migrations(&pool)
                .await
                .map_err(|err| err.to_string())
        }
    });
    let applied: Vec<usize> = join_all(runs)
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("both servers migrate");
    let all = MigrationSource::<diesel::pg::Pg>::migrations(&db::MIGRATIONS)
        .expect("the embedded migrations")
        .len();
    assert!(
        applied == [all, 0] || applied == [0, all],
        "one server applies every migration, the other none: {applied:?}"
    );
}

async fn fire(app: &TestApp, bodies: Vec<Value>) -> Vec<u16> {
    let requests = bodies
        .iter()
        .map(|body| async move { app.post_identify(body).await.0 });
    join_all(requests).await
}

/// A SET does not survive a transaction pooler, so SERIALIZABLE through one must be
/// the database's default: without it connections are refused (503, and the log
/// says what to do); with it, concurrent first orders for one customer make one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serializable_through_a_transaction_pooler_needs_the_database_default() {
    use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};

    let flags = [UNNAMED, crate::helpers::SERIALIZABLE].concat();
    for database_default in [false, true] {
        let (app, bouncer) = spawn_app_behind_bouncer(&flags).await;
        let database = app.database.as_ref().expect("a test database");
        if database_default {
            // Before anything connects: PgBouncer keeps its server connections.
            let mut direct = AsyncPgConnection::establish(&database.url).await.unwrap();
            direct
                .batch_execute(&format!(
                    "ALTER DATABASE {} SET default_transaction_isolation = 'serializable'",
                    database.name
                ))
                .await
                .unwrap();
        }
        let body = json!({"email": "once@x.io", "phoneNumber": "1"});
        let statuses = fire(&app, vec![body; 20]).await;
        if database_default {
            assert_eq!(statuses, vec![200; 20]);
            assert_eq!(app.row_count().await, 1);
            app.assert_invariants().await;
        } else {
            assert_eq!(statuses, vec![503; 20], "connections must be refused");
        }
        drop(app);
        drop(bouncer);
    }
}
