//! GraphQL reads on a streaming replica (docs/deployment.md, "Read replicas"): a primary and a
//! hot standby made with `pg_basebackup -R`, both started from the installed
//! binaries on loopback.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use serde_json::json;

use identity_reconciliation::db::{self, PoolSettings, StatementCounter};
use identity_reconciliation::ops::embedded::{EmbeddedOptions, find_bin_dir, password_file};

use crate::helpers::{PostgresThread, TestApp, spawn_app_at, throwaway_cluster};

const DATABASE: &str = "ir_replica";

/// `url` (of any database on a server) naming `database` instead.
fn on_database(url: &str, database: &str) -> String {
    let (server, _) = url.rsplit_once('/').expect("a URL with a database");
    format!("{server}/{database}")
}

/// The user the test clusters run as when this process is root (PostgreSQL's
/// rule); `None` when not root.
fn cluster_user() -> Option<nix::unistd::User> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    ["postgres", "nobody"]
        .iter()
        .find_map(|name| nix::unistd::User::from_name(name).ok().flatten())
}

/// A hot standby of the cluster at `primary_dir`, copied with `pg_basebackup -R`.
fn base_backup(primary: &PostgresThread, primary_dir: &Path, standby_dir: &Path) {
    let (user, password) = credentials(&primary.url);
    std::fs::create_dir_all(standby_dir).unwrap();
    // PostgreSQL's rule for a data folder, which pg_basebackup keeps as it finds it.
    std::fs::set_permissions(
        standby_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let mut command = match cluster_user() {
        Some(user) => {
            std::os::unix::fs::chown(
                standby_dir,
                Some(user.uid.as_raw()),
                Some(user.gid.as_raw()),
            )
            .unwrap();
            let mut command = Command::new("setpriv");
            command.args([
                format!("--reuid={}", user.uid),
                format!("--regid={}", user.gid),
                "--clear-groups".to_owned(),
                "--".to_owned(),
            ]);
            command.arg(find_bin_dir().unwrap().join("pg_basebackup"));
            command
        }
        None => Command::new(find_bin_dir().unwrap().join("pg_basebackup")),
    };
    let output = command
        .args(["-h", "127.0.0.1", "-p", &primary.port.to_string()])
        .args(["-U", &user, "-D"])
        .arg(standby_dir)
        .args(["-R", "-X", "stream", "-c", "fast"])
        .env("PGPASSWORD", &password)
        .output()
        .expect("run pg_basebackup");
    assert!(
        output.status.success(),
        "pg_basebackup failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The standby's superuser is the primary's, with the same password.
    std::fs::copy(password_file(primary_dir), password_file(standby_dir)).unwrap();
}

/// The user and password in a PostgreSQL URL.
fn credentials(url: &str) -> (String, String) {
    let config: tokio_postgres::Config = url.parse().expect("a PostgreSQL URL");
    let user = config.get_user().unwrap_or("postgres").to_owned();
    let password = config
        .get_password()
        .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
        .unwrap_or_default();
    (user, password)
}

async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = app.metrics_text().await;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Polls `condition` every 100 ms for up to 30 s.
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn listed_emails(app: &TestApp) -> Vec<String> {
    let data = app
        .graphql_data("{ contacts(first: 100) { nodes { email } } }", json!({}))
        .await;
    data["contacts"]["nodes"]
        .as_array()
        .expect("a page")
        .iter()
        .filter_map(|node| node["email"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_follow_the_replica_and_fall_back_when_it_lags_or_stops() {
    let scratch = tempfile::tempdir().unwrap();
    let primary_options = throwaway_cluster(&scratch.path().join("primary"));
    let primary_dir = primary_options.data_dir.clone();
    std::fs::create_dir_all(scratch.path().join("primary")).unwrap();
    let primary = PostgresThread::start(primary_options);
    let mut admin = AsyncPgConnection::establish(&primary.url).await.unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
        .await
        .unwrap();
    let primary_url = on_database(&primary.url, DATABASE);
    let pool = db::pool(
        &primary_url,
        &PoolSettings::default(),
        StatementCounter::default(),
    )
    .unwrap();
    db::run_migrations(&pool).await.unwrap();

    let standby_dir = scratch.path().join("standby").join("postgres");
    base_backup(&primary, &primary_dir, &standby_dir);
    let standby = PostgresThread::start(EmbeddedOptions {
        data_dir: standby_dir.clone(),
        log_file: scratch.path().join("standby").join("postgres.log"),
        durable: false,
        bin_dir: None,
        port: None,
    });
    let standby_url = on_database(&standby.url, DATABASE);
    let mut replay = AsyncPgConnection::establish(&standby_url).await.unwrap();

    let app = spawn_app_at(
        &primary_url,
        &[
            "--database-read-url",
            &standby_url,
            "--read-max-lag-ms",
            "1000",
        ],
    )
    .await;
    eventually("the replica is up", || async {
        metric(&app, "db_replica_up").await == 1.0
    })
    .await;

    // Reads go to the replica once it has what was written.
    app.identify(Some("first@x.io"), Some("1")).await;
    eventually("the replica lists the first order", || async {
        listed_emails(&app).await.contains(&"first@x.io".to_owned())
    })
    .await;
    let on_replica = metric(&app, "db_reads_total{target=\"replica\"}").await;
    assert!(on_replica >= 1.0, "no read went to the replica");

    // Replay paused: an order's answer still comes from the primary, and once the
    // replica is further behind than READ_MAX_LAG_MS, so do the reads.
    replay
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    let answer = app.identify(Some("second@x.io"), Some("2")).await;
    assert_eq!(answer["emails"], json!(["second@x.io"]), "read-your-writes");
    eventually("reads fall back to the primary", || async {
        metric(&app, "db_replica_lag_seconds").await > 1.0
            && listed_emails(&app)
                .await
                .contains(&"second@x.io".to_owned())
    })
    .await;
    let on_primary = metric(&app, "db_reads_total{target=\"primary\"}").await;
    assert!(on_primary >= 1.0, "no read went to the primary");

    // Replay resumed: the replica catches up and serves reads again.
    replay
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    eventually("the replica catches up", || async {
        metric(&app, "db_replica_lag_seconds").await <= 1.0
    })
    .await;
    let before = metric(&app, "db_reads_total{target=\"replica\"}").await;
    assert!(
        listed_emails(&app)
            .await
            .contains(&"second@x.io".to_owned())
    );
    assert!(metric(&app, "db_reads_total{target=\"replica\"}").await > before);

    // The replica stopped: reads go on, from the primary.
    drop(replay);
    standby.stop();
    eventually("the replica is seen down", || async {
        metric(&app, "db_replica_up").await == 0.0
    })
    .await;
    assert_eq!(listed_emails(&app).await.len(), 2);
    app.assert_invariants().await;
    drop(app);
    pool.close();
    primary.stop();
}
