//! The one locking protocol (src/db/protocol.rs): the order in which each path's
//! pipelined statements reach PostgreSQL, read from PostgreSQL's own statement log,
//! and the members' read through the partial index.

use diesel::QueryableByName;
use diesel::sql_types::Text;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use identity_reconciliation::db;
use identity_reconciliation::db::prepared::StaticSql;
use identity_reconciliation::db::protocol::{LoadMembersMatchingSql, LoadMembersOfOneSql};
use serde_json::json;

use crate::batch::post_batch;
use crate::helpers::{PostgresThread, spawn_app, spawn_app_at, throwaway_cluster};

/// What identifies each step's statement in the log, in the protocol's order.
const LOCK_VALUES: &str = "pg_advisory_xact_lock";
const LOCK_PRIMARIES: &str = "ORDER BY id FOR UPDATE";
const LOAD_MEMBERS: &str = "WITH primaries AS";
const BLOCKED: &str = "FROM blocked_values";

/// The statements PostgreSQL executed since `from` (a byte offset in its log), as
/// the log says them: one `execute <name>: SQL` (or `statement: SQL`) line each.
fn executed_since(log: &std::path::Path, from: usize) -> (Vec<String>, usize) {
    let text = std::fs::read_to_string(log).expect("read PostgreSQL's log");
    let statements = text[from..]
        .lines()
        .filter_map(|line| {
            let (_, statement) = line
                .split_once("LOG:  execute ")
                .or_else(|| line.split_once("LOG:  statement: "))?;
            Some(statement.to_owned())
        })
        .collect();
    (statements, text.len())
}

/// Asserts that `markers` appear in this order among `statements` (each at its
/// first statement after the previous marker's).
fn assert_in_order(path: &str, statements: &[String], markers: &[&str]) {
    let mut at = 0;
    for marker in markers {
        match statements[at..].iter().position(|s| s.contains(marker)) {
            Some(found) => at += found + 1,
            None => panic!(
                "{path}: `{marker}` missing after the markers before it; \
                 statements run:\n{}",
                statements.join("\n")
            ),
        }
    }
}

/// Every path that takes the protocol's locks sends its statements so that
/// PostgreSQL runs them as the protocol needs: value locks, then the primaries'
/// row locks, then the members, then the blocks. A pipeline whose futures were
/// polled in another order would still make the same number of round trips, which
/// is all `each_path_sends_a_fixed_number_of_statements_and_round_trips` counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_reach_postgresql_in_protocol_order() {
    let scratch = tempfile::Builder::new()
        .prefix("protocol-order-")
        .tempdir()
        .unwrap();
    let options = throwaway_cluster(scratch.path());
    let log = options.log_file.clone();
    let postgres = tokio::task::spawn_blocking(move || PostgresThread::start(options))
        .await
        .unwrap();
    {
        let mut admin = AsyncPgConnection::establish(&postgres.url).await.unwrap();
        admin
            .batch_execute("ALTER DATABASE postgres SET log_statement = 'all'")
            .await
            .unwrap();
    }
    let pool = db::pool(
        &postgres.url,
        &db::PoolSettings::default(),
        db::StatementCounter::default(),
    )
    .unwrap();
    db::run_migrations(&pool).await.unwrap();
    pool.close();
    // Two emails per identity at most, so that a third is held for approval.
    let app = spawn_app_at(&postgres.url, &["--max-identity-emails", "2"]).await;
    let (_, mut offset) = executed_since(&log, 0);
    let locked = [LOCK_VALUES, LOCK_PRIMARIES, LOAD_MEMBERS, BLOCKED];
    for (path, email, phone, markers) in [
        (
            "first order",
            "a@x.io",
            "1",
            &["BEGIN", LOCK_VALUES, "INSERT INTO contacts", "COMMIT"][..],
        ),
        ("new secondary", "a@x.io", "2", &locked[..]),
        ("an identity to merge", "b@x.io", "3", &[][..]),
        ("merge", "b@x.io", "2", &locked[..]),
    ] {
        app.identify(Some(email), Some(phone)).await;
        let (statements, end) = executed_since(&log, offset);
        offset = end;
        assert_in_order(path, &statements, markers);
    }

    let (status, _) = post_batch(
        &app,
        &[
            json!({"email": "c@x.io", "phoneNumber": "4"}),
            json!({"email": "a@x.io", "phoneNumber": "4"}),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let (statements, end) = executed_since(&log, offset);
    offset = end;
    assert_in_order(
        "batch",
        &statements,
        &[
            "random_page_cost",
            LOCK_VALUES,
            LOCK_PRIMARIES,
            LOAD_MEMBERS,
            BLOCKED,
            "clock_timestamp() AS at",
        ],
    );

    app.graphql_data(
        "mutation { blockValue(input: {phoneNumber: \"4\", reason: \"test\"}) { identities } }",
        json!({}),
    )
    .await;
    let (statements, end) = executed_since(&log, offset);
    offset = end;
    assert_in_order(
        "blockValue",
        &statements,
        &[
            LOCK_VALUES,
            LOCK_PRIMARIES,
            LOAD_MEMBERS,
            "INSERT INTO blocked_values",
        ],
    );

    app.graphql_data(
        "mutation { eraseIdentity(input: {email: \"c@x.io\"}) { contactsErased } }",
        json!({}),
    )
    .await;
    let (statements, end) = executed_since(&log, offset);
    offset = end;
    assert_in_order(
        "eraseIdentity",
        &statements,
        &[
            LOCK_VALUES,
            LOCK_PRIMARIES,
            LOAD_MEMBERS,
            "DELETE FROM contacts",
        ],
    );

    // Held requests: approving one runs identify's protocol after the record's lock;
    // rejecting one takes the values' locks before the record's.
    for email in ["x1@x.io", "x2@x.io", "x3@x.io", "x4@x.io"] {
        app.identify(Some(email), Some("90")).await;
    }
    let held = app
        .graphql_data(
            "{ heldRequests(status: PENDING) { nodes { id email } } }",
            json!({}),
        )
        .await;
    let held_id = |email: &str| {
        held["heldRequests"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|node| node["email"] == email)
            .and_then(|node| node["id"].as_i64())
            .unwrap_or_else(|| panic!("no held request for {email}: {held}"))
    };
    let (_, end) = executed_since(&log, offset);
    offset = end;
    app.graphql_data(
        "mutation($id: Int!) { approveHeld(id: $id) { outcome } }",
        json!({"id": held_id("x3@x.io")}),
    )
    .await;
    let (statements, end) = executed_since(&log, offset);
    offset = end;
    assert_in_order(
        "approveHeld",
        &statements,
        &[
            LOCK_VALUES,
            "FROM held_requests",
            LOCK_VALUES,
            LOCK_PRIMARIES,
            LOAD_MEMBERS,
            BLOCKED,
        ],
    );
    app.graphql_data(
        "mutation($id: Int!) { rejectHeld(id: $id) { held { id } } }",
        json!({"id": held_id("x4@x.io")}),
    )
    .await;
    let (statements, end) = executed_since(&log, offset);
    offset = end;
    assert_in_order(
        "rejectHeld",
        &statements,
        &[LOCK_VALUES, "FROM held_requests", "UPDATE held_requests"],
    );

    // An import chunk: the table lock stands for the value and primary locks.
    let file = scratch.path().join("orders.ndjson");
    std::fs::write(
        &file,
        "{\"email\": \"y1@x.io\"}\n{\"email\": \"y1@x.io\", \"phoneNumber\": \"91\"}\n",
    )
    .unwrap();
    let imported = std::process::Command::new(env!("CARGO_BIN_EXE_identity-reconciliation"))
        .arg("import")
        .arg(&file)
        .env("DATABASE_URL", &postgres.url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    let (statements, _) = executed_since(&log, offset);
    assert_in_order(
        "import chunk",
        &statements,
        &[
            "LOCK TABLE contacts IN EXCLUSIVE MODE",
            LOAD_MEMBERS,
            BLOCKED,
            "UPDATE imports SET lines_done",
        ],
    );
    app.assert_invariants().await;
    drop(app);
    tokio::task::spawn_blocking(move || postgres.stop())
        .await
        .unwrap();
}

/// The members' read finds secondaries through the partial index on `linked_id`
/// (`contacts_linked_id_idx`, `WHERE linked_id IS NOT NULL`). The statement spells
/// the predicate out; PostgreSQL would also prove it from the strict join clause of
/// a parameterised scan (checked when the two copies of this statement were made
/// one: both planned the same), so it documents the plan rather than enables it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_loaded_through_the_partial_index() {
    #[derive(QueryableByName)]
    struct PlanLine {
        #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
        line: String,
    }
    let app = spawn_app().await;
    let mut conn = app.connection().await;
    // The table is tiny: ask for the plan PostgreSQL would take were it not.
    conn.batch_execute("SET enable_seqscan = off; SET enable_bitmapscan = off")
        .await
        .unwrap();
    let plan = |sql: String| {
        diesel::sql_query(format!(
            "EXPLAIN {}",
            sql.replace("ANY($1)", "ANY('{a@x.io}'::text[])")
                .replace("ANY($2)", "ANY('{1}'::text[])")
                .replace("$1", "'a@x.io'")
                .replace("$2", "'1'")
        ))
    };
    for sql in [LoadMembersMatchingSql::SQL, LoadMembersOfOneSql::SQL] {
        let lines: Vec<PlanLine> = plan(sql.to_owned()).load(&mut *conn).await.unwrap();
        let text: Vec<String> = lines.into_iter().map(|l| l.line).collect();
        assert!(
            text.iter().any(|l| l.contains("contacts_linked_id_idx")),
            "the members' read does not use the partial index:\n{}",
            text.join("\n")
        );
    }
}

/// Failures are classified by SQLSTATE as diesel-async reports it (a kind), not by
/// message: a real deadlock (40P01) is a conflict to retry, and a connection the
/// server terminated (57P01, or the closed socket after it) is "unavailable".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_failures_are_classified_by_sqlstate() {
    use identity_reconciliation::db::DbError;

    let app = spawn_app().await;
    let mut first = app.connection().await;
    let mut second = app.connection().await;
    first
        .batch_execute("SELECT pg_advisory_lock(1)")
        .await
        .unwrap();
    second
        .batch_execute("SELECT pg_advisory_lock(2)")
        .await
        .unwrap();
    // Session locks outlive the statement that failed: the victim lets go of its
    // own at once, or the other side would wait for ever.
    let cross = async |conn: &mut db::DbConnection, key: i32| {
        let locked = conn
            .batch_execute(&format!("SELECT pg_advisory_lock({key})"))
            .await;
        conn.batch_execute("SELECT pg_advisory_unlock_all()")
            .await
            .unwrap();
        locked
    };
    let (a, b) = tokio::join!(cross(&mut first, 2), cross(&mut second, 1));
    let failures: Vec<DbError> = [a, b]
        .into_iter()
        .filter_map(Result::err)
        .map(DbError::from)
        .collect();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        matches!(failures[0], DbError::Conflict(_)),
        "a deadlock is a conflict: {failures:?}"
    );

    #[derive(QueryableByName)]
    struct Pid {
        #[diesel(sql_type = diesel::sql_types::Int4)]
        pid: i32,
    }
    let pid: Pid = diesel::sql_query("SELECT pg_backend_pid() AS pid")
        .get_result(&mut *first)
        .await
        .unwrap();
    diesel::sql_query("SELECT pg_terminate_backend($1)")
        .bind::<diesel::sql_types::Int4, _>(pid.pid)
        .execute(&mut *second)
        .await
        .unwrap();
    let terminated = first.batch_execute("SELECT 1").await.unwrap_err();
    assert!(
        DbError::from(terminated).is_unavailable(),
        "a terminated connection is unavailable"
    );
}

/// Every prepared statement of the identify path and the protocol is PREPAREd by
/// PostgreSQL against the migrated schema: a renamed column fails here, not in
/// production. (The administrators' `sql_query` statements are exercised by their
/// own tests instead.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_prepare_against_the_migrated_schema() {
    use identity_reconciliation::db::{contacts, graph, protocol};

    let app = spawn_app().await;
    let mut conn = app.connection().await;
    let statements = [
        ("lock one request's values", protocol::LockValueSql::SQL),
        (
            "lock one request's primaries",
            protocol::LockPrimariesOfOneSql::SQL,
        ),
        ("one request's members", protocol::LoadMembersOfOneSql::SQL),
        ("one request's blocks", protocol::BlockedOfOneSql::SQL),
        ("lock values", protocol::LockValuesSql::SQL),
        ("lock primaries", protocol::LockMatchedPrimariesSql::SQL),
        ("members", protocol::LoadMembersMatchingSql::SQL),
        ("blocks", protocol::BlockedAmongSql::SQL),
        ("members by primary", contacts::LoadMembersSql::SQL),
        ("insert contact", contacts::InsertContactSql::SQL),
        ("insert first order", contacts::InsertPrimaryIfNewSql::SQL),
        ("merge", contacts::MergeIntoSql::SQL),
        ("ledger merges", graph::RecordMergesSql::SQL),
        ("hold", graph::RecordHeldSql::SQL),
    ];
    for (index, (what, sql)) in statements.into_iter().enumerate() {
        if let Err(err) = conn
            .batch_execute(&format!("PREPARE checked_{index} AS {sql}"))
            .await
        {
            panic!("{what} does not prepare against the schema: {err}\n{sql}");
        }
        conn.batch_execute(&format!("DEALLOCATE checked_{index}"))
            .await
            .unwrap();
    }
}
