//! Load and fault scenarios: the real server binary under `loadgen`, with its
//! model check against the database and the server's own `check` afterwards.
//!
//! CI runs them at a small scale. `SCENARIO_SECONDS` sets the load time of each
//! (default 3); for the full-scale runs of BENCHMARKS.md:
//!
//! ```sh
//! SCENARIO_SECONDS=60 cargo test --release --test api scenarios -- --test-threads=1 --nocapture
//! ```

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Mutex;

use crate::helpers::{
    PostgresThread, SERVER_BINARY as SERVER, ServerProcess, TestDatabase, throwaway_cluster,
};

/// The scenarios load the machine; running two at once would only measure that.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

fn load_seconds() -> u64 {
    std::env::var("SCENARIO_SECONDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(3)
}

/// A folder for one scenario's files, removed when the scenario ends.
fn scratch_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("{name}-"))
        .tempdir()
        .unwrap()
}

/// Waits until the load has written at least `rows` contacts: the fault then
/// lands on a server that is provably busy.
async fn wait_for_load(database_url: &str, rows: i64) {
    use diesel::QueryableByName;
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        count: i64,
    }
    let mut conn = AsyncPgConnection::establish(database_url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let written: Count = diesel::sql_query("SELECT count(*) AS count FROM contacts")
            .get_result(&mut conn)
            .await
            .unwrap();
        if written.count >= rows {
            return;
        }
        assert!(Instant::now() < deadline, "the load never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs loadgen to completion, in-process on the calling (blocking) thread; returns
/// its exit status and JSON summary.
fn loadgen(
    urls: &[String],
    database_url: &str,
    args: &[&str],
    report: &std::path::Path,
) -> (u8, Value) {
    let mut command_line = vec!["loadgen".to_owned()];
    for url in urls {
        command_line.extend(["--url".to_owned(), url.clone()]);
    }
    command_line.extend(args.iter().map(|arg| arg.to_string()));
    command_line
        .extend(["--progress", "0", "--database-url", database_url, "--json"].map(str::to_owned));
    command_line.push(report.display().to_string());
    let status = loadgen::main_with_args(command_line);
    let summary = std::fs::read_to_string(report)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(Value::Null);
    (status, summary)
}

fn assert_passed(status: &u8, summary: &Value) {
    assert!(
        *status == 0 && summary["passed"] == true,
        "loadgen failed (exit status {status}): {summary:#}"
    );
    let model = &summary["model_check"];
    assert!(!model.is_null(), "the model check did not run: {summary}");
}

/// `check --deep`: I1–I3, I6, the ledger's checks and I7 (the identities rebuilt
/// from the evidence alone).
fn server_check(database_url: &str) {
    let output = Command::new(SERVER)
        .args(["check", "--deep"])
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "check found violations:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("ok  I7"),
        "check --deep did not rebuild the identities from evidence"
    );
}

fn count(summary: &Value, section: &str, key: &str) -> u64 {
    summary[section][key].as_u64().unwrap_or(0)
}

/// Runs loadgen in a blocking thread; the arguments are copied, so the returned
/// future borrows nothing and can be spawned.
fn run_loadgen(
    urls: Vec<String>,
    database_url: String,
    args: &[&str],
    report: PathBuf,
) -> impl Future<Output = (u8, Value)> + Send + 'static {
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    async move {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            loadgen(&urls, &database_url, &args, &report)
        })
        .await
        .unwrap()
    }
}

crate::in_both_isolation_modes! {
async fn heavy_contention_on_a_small_key_space(isolation: &[&str]) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let database = TestDatabase::create().await;
    let server = ServerProcess::start_with(&database.url, 0, isolation).await;
    let scratch = scratch_dir("contention");
    let report = scratch.path().join("report.json");
    let seconds = load_seconds().to_string();
    let (output, summary) = run_loadgen(
        vec![server.url("")],
        database.url.clone(),
        &[
            "--connections",
            "64",
            "--keys",
            "8",
            "--duration",
            &seconds,
            "--seed",
            "64",
        ],
        report,
    )
    .await;
    assert_passed(&output, &summary);
    assert!(summary["requests"].as_u64().unwrap() > 100, "{summary}");
    assert_eq!(
        summary["ok"], summary["requests"],
        "non-200 answers: {summary}"
    );
    server_check(&database.url);
}
}

crate::in_both_isolation_modes! {
/// An administrator blocks values and resolves held requests while 64 connections
/// identify over a small key space (docs/SPEC.md §10): no deadlock, every answer a
/// 200 (or 422 for a request whose every value was blocked), the model check with
/// the blocked values taken out passes, and `check --deep` rebuilds every identity.
async fn repairs_under_heavy_contention(isolation: &[&str]) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let database = TestDatabase::create().await;
    // Low limits, so that requests are held and there is something to resolve.
    let server = ServerProcess::start_with(
        &database.url,
        0,
        &[&["--max-identity-emails", "6", "--max-identity-phones", "6"], isolation].concat(),
    )
    .await;
    let scratch = scratch_dir("repairs");
    let report = scratch.path().join("report.json");
    // Two seconds more than the others: the administrator's turns, not the load,
    // are what this scenario counts, and a loaded machine gets through fewer.
    let seconds = (load_seconds() + 2).to_string();
    let (output, summary) = run_loadgen(
        vec![server.url("")],
        database.url.clone(),
        &[
            "--connections",
            "64",
            "--keys",
            "64",
            "--duration",
            &seconds,
            "--seed",
            "11",
            "--repair-every-ms",
            "100",
        ],
        report,
    )
    .await;
    assert_passed(&output, &summary);
    assert_eq!(
        summary["ok"], summary["requests"],
        "answers other than identities, holds and blocks: {summary}"
    );
    // Under SERIALIZABLE too: a repair takes the contacts table first (see
    // `db::serialize_repair`), or the stream of small transactions starves it.
    assert!(count(&summary, "repairs", "blocked") > 3, "{summary}");
    assert!(
        summary["model_check"]["blocked_values"].as_u64().unwrap() > 3,
        "{summary}"
    );
    assert_eq!(count(&summary, "repairs", "failed"), 0, "{summary}");
    server_check(&database.url);
}
}

crate::in_both_isolation_modes! {
async fn two_server_processes_share_one_database(isolation: &[&str]) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let database = TestDatabase::create().await;
    let first = ServerProcess::start_with(&database.url, 0, isolation).await;
    let second = ServerProcess::start_with(&database.url, 0, isolation).await;
    let scratch = scratch_dir("two-servers");
    let report = scratch.path().join("report.json");
    let seconds = load_seconds().to_string();
    let (output, summary) = run_loadgen(
        vec![first.url(""), second.url("")],
        database.url.clone(),
        &[
            "--connections",
            "32",
            "--keys",
            "16",
            "--duration",
            &seconds,
            "--seed",
            "2",
        ],
        report,
    )
    .await;
    assert_passed(&output, &summary);
    assert_eq!(summary["ok"], summary["requests"], "{summary}");
    server_check(&database.url);
}
}

crate::in_both_isolation_modes! {
async fn postgres_stopped_mid_load_then_started_again(isolation: &[&str]) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let scratch = scratch_dir("pg-restart");
    let dir = scratch.path();
    let mut options = throwaway_cluster(dir);
    let postgres = PostgresThread::start(options.clone());
    // It comes back where the server expects it.
    options.port = Some(postgres.port);
    let database_url = postgres.url.clone();
    let server = ServerProcess::start_with(&database_url, 0, isolation).await;

    let seconds = load_seconds() + 8;
    let load = tokio::spawn(run_loadgen(
        vec![server.url("")],
        database_url.clone(),
        &[
            "--connections",
            "16",
            "--keys",
            "32",
            "--duration",
            &seconds.to_string(),
            "--seed",
            "57",
            "--timeout-ms",
            "4000",
            "--max-error-rate",
            "1",
        ],
        dir.join("report.json"),
    ));
    wait_for_load(&database_url, 200).await;

    // Stop PostgreSQL under load: the server answers 503 promptly, and says it is not ready.
    tokio::task::spawn_blocking(move || postgres.stop())
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let started = Instant::now();
    let answer = client
        .post(server.url("/identify"))
        .json(&serde_json::json!({"email": "during-outage@x.io"}))
        .send()
        .await
        .expect("the server answers while the database is down");
    assert_eq!(answer.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "503 took {:?}",
        started.elapsed()
    );
    assert!(
        !server.ready().await,
        "/readyz says ready with the database down"
    );

    // The outage lasts this long: long enough for the load to see it.
    let outage = Duration::from_secs(2);
    tokio::time::sleep(outage).await;
    let postgres = tokio::task::spawn_blocking(move || PostgresThread::start(options))
        .await
        .unwrap();
    let restarted = Instant::now();
    while !server.ready().await {
        assert!(
            restarted.elapsed() < Duration::from_secs(10),
            "the server did not recover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovery = restarted.elapsed();

    let (output, summary) = load.await.unwrap();
    assert_passed(&output, &summary);
    assert!(
        count(&summary, "status_counts", "503") > 0,
        "the outage did not happen during the load: {summary}"
    );
    assert_eq!(
        count(&summary, "status_counts", "500"),
        0,
        "500s during the outage: {summary}"
    );
    eprintln!(
        "postgres restart: recovered in {recovery:?}; {} requests, {} ok, statuses {}",
        summary["requests"], summary["ok"], summary["status_counts"]
    );
    server_check(&database_url);
    drop(server);
    tokio::task::spawn_blocking(move || postgres.stop())
        .await
        .unwrap();
}
}

crate::in_both_isolation_modes! {
async fn server_killed_mid_load_then_restarted(isolation: &[&str]) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let database = TestDatabase::create().await;
    let mut server = ServerProcess::start_with(&database.url, 0, isolation).await;
    let port = server.port;
    let scratch = scratch_dir("sigkill");
    let seconds = load_seconds() + 4;
    let load = tokio::spawn(run_loadgen(
        vec![server.url("")],
        database.url.clone(),
        &[
            "--connections",
            "32",
            "--keys",
            "16",
            "--duration",
            &seconds.to_string(),
            "--seed",
            "9",
            "--timeout-ms",
            "3000",
            "--max-error-rate",
            "1",
        ],
        scratch.path().join("report.json"),
    ));
    wait_for_load(&database.url, 200).await;
    server.kill(); // SIGKILL: no graceful anything
    // The server stays down this long, so the load sees refused connections.
    let downtime = Duration::from_secs(1);
    tokio::time::sleep(downtime).await;
    let _restarted = ServerProcess::start_with(&database.url, port, isolation).await;

    let (output, summary) = load.await.unwrap();
    assert_passed(&output, &summary);
    assert!(
        summary["error_counts"]
            .as_object()
            .is_some_and(|e| !e.is_empty()),
        "{summary}"
    );
    server_check(&database.url);
}
}
