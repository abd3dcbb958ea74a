//! Operability: request ids, metrics, rate limiting, timeouts, readiness with the
//! database down, CORS, the OpenAPI document, graceful shutdown and `check`.

use std::process::Command;
use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::helpers::{
    ServerProcess, TestDatabase, backend_pid, spawn_app, spawn_app_with,
    spawn_app_without_database, wait_until_blocked_by,
};

use crate::helpers::SERVER_BINARY as SERVER;

/// Holds PostgreSQL's advisory lock on an email's key, so that an identify for
/// that email waits: a deterministic slow request.
async fn hold_email_lock(database_url: &str, email: &str) -> AsyncPgConnection {
    let mut conn = AsyncPgConnection::establish(database_url).await.unwrap();
    conn.batch_execute(&format!(
        "SELECT pg_advisory_lock(hashtextextended('email:{email}', 0))"
    ))
    .await
    .unwrap();
    conn
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_round_trip_or_are_generated() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "order-4711.a")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "order-4711.a");

    let response = app.client.get(app.url("/healthz")).send().await.unwrap();
    let generated = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");

    // Ids that could forge log lines or flood them are replaced.
    for bad in ["has space", &"x".repeat(200), "quote\"d"] {
        let response = app
            .client
            .get(app.url("/healthz"))
            .header("x-request-id", bad)
            .send()
            .await
            .unwrap();
        assert_ne!(response.headers()["x-request-id"], bad);
    }
    // Errors carry it too.
    let (_, _) = app.post_identify(&json!({})).await;
    let response = app.client.post(app.url("/identify")).send().await.unwrap();
    assert!(response.headers().contains_key("x-request-id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_after_requests() {
    let app = spawn_app().await;
    let scrape = || async {
        let response = app.client.get(app.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        response.text().await.unwrap()
    };
    let ok = r#"http_requests_total{route="/identify",method="POST",status="200"}"#;
    let bad = r#"http_requests_total{route="/identify",method="POST",status="400"}"#;
    let before = scrape().await;
    app.identify(Some("a@x.io"), Some("1")).await;
    app.identify(Some("b@x.io"), Some("2")).await;
    app.identify(Some("a@x.io"), Some("2")).await;
    app.identify(Some("a@x.io"), Some("3")).await;
    app.identify(Some("a@x.io"), Some("3")).await;
    app.post_identify(&json!({"email": "nope"})).await;
    let after = scrape().await;

    assert_eq!(metric(&after, ok) - metric(&before, ok), 5.0);
    assert_eq!(metric(&after, bad) - metric(&before, bad), 1.0);
    for (outcome, count) in [
        ("new_primary", 2.0),
        ("merged", 1.0),
        ("new_secondary", 1.0),
        ("unchanged", 1.0),
    ] {
        let series = format!("identify_outcomes_total{{outcome=\"{outcome}\"}}");
        assert_eq!(metric(&after, &series), count, "{series}");
    }
    assert_eq!(metric(&after, "identify_merged_primaries_total"), 1.0);
    let bucket = r#"http_request_duration_seconds_bucket{route="/identify",method="POST",status="200",le="+Inf"}"#;
    assert_eq!(metric(&after, bucket), 5.0);
    assert!(metric(&after, r#"db_pool_connections{state="idle"}"#) >= 1.0);
    assert_eq!(metric(&after, "db_pool_max_connections"), 10.0);
    assert!(metric(&after, "db_statements_total") > metric(&before, "db_statements_total"));
    // Unknown paths share one series instead of creating one each.
    app.client
        .get(app.url("/no/such/path/1"))
        .send()
        .await
        .unwrap();
    app.client
        .get(app.url("/no/such/path/2"))
        .send()
        .await
        .unwrap();
    let text = scrape().await;
    assert_eq!(
        metric(
            &text,
            r#"http_requests_total{route="unmatched",method="GET",status="404"}"#
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_answers_429_with_retry_after() {
    let app = spawn_app_with(&["--rate-limit-per-second", "0.5", "--rate-limit-burst", "2"]).await;
    let body = json!({"email": "a@x.io"});
    assert_eq!(app.post_identify(&body).await.0, 200);
    assert_eq!(app.post_identify(&body).await.0, 200);
    let response = app
        .client
        .post(app.url("/identify"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "RATE_LIMITED");
    // GraphQL shares the limit; probes and metrics never hit it.
    let graphql = app
        .client
        .post(app.url("/graphql"))
        .json(&json!({"query": "{ __typename }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(graphql.status(), 429);
    for probe in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            app.client
                .get(app.url(probe))
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "{probe}"
        );
    }
    let metrics = app.metrics_text().await;
    assert_eq!(metric(&metrics, "http_rate_limited_total"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_rate_limit_bursts_pass() {
    let app = spawn_app().await;
    for _ in 0..30 {
        assert_eq!(app.post_identify(&json!({"email": "a@x.io"})).await.0, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_times_out_with_503_and_its_work_still_completes() {
    let app = spawn_app_with(&["--request-timeout-secs", "1"]).await;
    let url = app.database.as_ref().unwrap().url.clone();
    let lock = hold_email_lock(&url, "slow@x.io").await;
    let started = Instant::now();
    let (status, body) = app.post_identify(&json!({"email": "slow@x.io"})).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "TIMEOUT");
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(lock);
    // The transaction was not cancelled half way: it commits once the lock is free.
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.row_count().await == 0 {
        assert!(
            Instant::now() < deadline,
            "the timed-out identify never committed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_down_answers_are_prompt_503s() {
    let app = spawn_app_without_database().await;
    let started = Instant::now();
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let (status, body) = app.post_identify(&json!({"email": "a@x.io"})).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "SERVICE_UNAVAILABLE");
    assert!(
        !body.to_string().contains("127.0.0.1"),
        "internals leaked: {body}"
    );
    let response = app
        .graphql(
            "mutation { identify(input: {email: \"a@x.io\"}) { primaryContactId } }",
            json!({}),
        )
        .await;
    assert_eq!(
        response["errors"][0]["extensions"]["code"],
        "SERVICE_UNAVAILABLE"
    );
    // Reads through a loader and through a page classify the failure the same way.
    for query in ["{ contact(id: 1) { id } }", "{ contacts { nodes { id } } }"] {
        let response = app.graphql(query, json!({})).await;
        assert_eq!(
            response["errors"][0]["extensions"]["code"], "SERVICE_UNAVAILABLE",
            "{query}: {response}"
        );
        assert!(!response.to_string().contains("127.0.0.1"), "{response}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_only_configured_origins() {
    let app = spawn_app_with(&[
        "--cors-origins",
        "https://shop.example,https://admin.example",
    ])
    .await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/graphql"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let allowed = preflight("https://admin.example").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://admin.example"
    );
    let refused = preflight("https://evil.example").await.unwrap();
    assert!(
        !refused
            .headers()
            .contains_key("access-control-allow-origin")
    );

    let closed = spawn_app().await;
    let response = closed
        .client
        .post(closed.url("/identify"))
        .header("origin", "https://shop.example")
        .json(&json!({"email": "a@x.io"}))
        .send()
        .await
        .unwrap();
    assert!(
        !response
            .headers()
            .contains_key("access-control-allow-origin")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_served() {
    let app = spawn_app().await;
    let document: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let responses = &document["paths"]["/identify"]["post"]["responses"];
    for status in ["200", "400", "413", "415", "429", "500", "503"] {
        assert!(responses.get(status).is_some(), "{status} undocumented");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_request_in_flight_complete() {
    let database = TestDatabase::create().await;
    let mut server = ServerProcess::start(&database.url).await;
    let mut lock = hold_email_lock(&database.url, "inflight@x.io").await;
    let lock_pid = backend_pid(&mut lock).await;
    let client = reqwest::Client::new();
    let in_flight = tokio::spawn({
        let request = client
            .post(server.url("/identify"))
            .json(&json!({"email": "inflight@x.io"}));
        async move { request.send().await }
    });
    // The identify is in flight: its transaction waits for the email's lock.
    wait_until_blocked_by(&database.url, lock_pid).await;
    server.signal(Signal::SIGTERM);
    // Shutdown has begun once no new connection is accepted...
    let deadline = Instant::now() + Duration::from_secs(10);
    while reqwest::get(server.url("/healthz")).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...and the request still waiting holds the process up.
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "exited with a request in flight"
    );

    drop(lock);
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request was answered");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["contact"]["emails"], json!(["inflight@x.io"]));
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "server did not exit after finishing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_command_reports_violations() {
    let database = TestDatabase::create().await;
    let check = || {
        Command::new(SERVER)
            .arg("check")
            .env("DATABASE_URL", &database.url)
            .env("RUST_LOG", "error")
            .output()
            .unwrap()
    };
    let clean = check();
    assert!(
        clean.status.success(),
        "{}",
        String::from_utf8_lossy(&clean.stdout)
    );

    let mut conn = AsyncPgConnection::establish(&database.url).await.unwrap();
    // A chain two levels deep, a secondary older than its primary, and one email in
    // two identities: what a broken implementation leaves behind.
    conn.batch_execute(
        "INSERT INTO contacts (id, email, phone_number, link_precedence, linked_id, created_at) VALUES
           (1, 'a@x.io', '1', 'primary', NULL, '2024-01-02'),
           (2, 'b@x.io', '2', 'secondary', 1, '2024-01-01'),
           (3, 'c@x.io', '3', 'secondary', 2, '2024-01-03'),
           (4, 'a@x.io', '4', 'primary', NULL, '2024-01-04');",
    )
    .await
    .unwrap();
    let broken = check();
    let report = String::from_utf8_lossy(&broken.stdout);
    assert_eq!(broken.status.code(), Some(1), "{report}");
    assert!(
        report.contains("VIOLATED  I1: every live secondary links to a live primary: 1"),
        "{report}"
    );
    assert!(report.contains("VIOLATED  I2"), "{report}");
    assert!(report.contains("VIOLATED  I3: no email"), "{report}");
    assert!(
        !report.contains("a@x.io"),
        "raw emails in the report: {report}"
    );
    assert!(
        report.contains("VIOLATED  ledger: every live contact has the event"),
        "rows written around the service have no evidence: {report}"
    );

    // `--deep` rebuilds identities from the evidence: rows linked by hand with no
    // event and no shared value are joined by nothing.
    let deep = Command::new(SERVER)
        .args(["check", "--deep"])
        .env("DATABASE_URL", &database.url)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&deep.stdout);
    assert_eq!(deep.status.code(), Some(1), "{report}");
    assert!(report.contains("VIOLATED  I7"), "{report}");
    assert!(
        !report.contains("a@x.io"),
        "raw emails in the report: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_starting_together_migrate_once() {
    use identity_reconciliation::db::{self, PoolSettings, StatementCounter};

    let database = TestDatabase::create_empty().await;
    let migrations = (0..4).map(|_| {
        let url = database.url.clone();
        tokio::spawn(async move {
            let pool =
                db::pool(&url, &PoolSettings::default(), StatementCounter::default()).unwrap();
            db::run_migrations(&pool).await
        })
    });
    let applied: Vec<usize> = futures_util::future::join_all(migrations)
        .await
        .into_iter()
        .map(|joined| joined.unwrap().expect("a migration run failed"))
        .collect();
    let embedded =
        diesel::migration::MigrationSource::<diesel::pg::Pg>::migrations(&db::MIGRATIONS)
            .unwrap()
            .len();
    // Each migration ran once, by whichever server got there first.
    assert_eq!(applied.iter().sum::<usize>(), embedded, "{applied:?}");
    assert_eq!(
        applied.iter().filter(|count| **count > 0).count(),
        1,
        "{applied:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_one_data_folder_uses_the_running_postgres() {
    use identity_reconciliation::ops::embedded::EmbeddedPostgres;

    use crate::helpers::throwaway_cluster;
    let root = tempfile::tempdir().unwrap();
    let options = throwaway_cluster(root.path());
    let running = crate::helpers::PostgresThread::start(options.clone());
    // What `check` or `migrate` in a second terminal does: no lock-file error, the
    // running server, found through its postmaster.pid.
    let second = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&options))
        .await
        .unwrap()
        .expect("the running server is used");
    assert!(!second.owns_server());
    assert_eq!(second.port(), running.port);
    let url = second.url("postgres");
    drop(second); // borrowed: dropping it must not stop the server
    let (_client, _connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("still running, and the password is the same");
    tokio::task::spawn_blocking(move || running.stop())
        .await
        .unwrap();
}
