//! `import` (docs/SPEC.md §13.1, I11) and the migration from the NestJS/TypeORM
//! table (§13.2), run as the real binary against the test's database.

use std::io::Write;

use diesel_async::AsyncConnection;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

use crate::batch::{order_strategy, outcome, post_batch};
use crate::helpers::{SERVER_BINARY as SERVER, TestApp, TestDatabase, spawn_app, spawn_app_with};

fn database_url(app: &TestApp) -> &str {
    &app.database.as_ref().expect("a database").url
}

/// Runs `import` with `args` against `url`; `flags` are the server's own.
fn run_import(url: &str, args: &[&str]) -> Output {
    Command::new(SERVER)
        .arg("import")
        .args(args)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("import runs")
}

fn summary(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("a JSON summary")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut file = std::fs::File::create(path).unwrap();
    for line in lines {
        writeln!(file, "{line}").unwrap();
    }
}

fn check_passes(url: &str) {
    let output = Command::new(SERVER)
        .args(["check", "--deep"])
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "check --deep: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_leaves_what_batches_and_single_calls_leave() {
    let mut runner = TestRunner::new(Config {
        cases: 8,
        ..Config::default()
    });
    let strategy = (
        proptest::collection::vec(order_strategy(), 0..15),
        proptest::collection::vec(order_strategy(), 1..80),
        proptest::collection::vec(1..25usize, 1..8),
        1..30u32,
        proptest::option::of(2..4u8),
    );
    let dir = tempfile::tempdir().unwrap();
    for case in 0..8 {
        let (stored, orders, sizes, chunk, limit) =
            strategy.new_tree(&mut runner).unwrap().current();
        let limit = limit.map_or("0".to_owned(), |limit| limit.to_string());
        let flags = [
            "--max-identity-emails",
            limit.as_str(),
            "--max-identity-phones",
            limit.as_str(),
        ];
        let single = spawn_app_with(&flags).await;
        let batched = spawn_app_with(&flags).await;
        let imported = spawn_app_with(&flags).await;
        // The same data stored first, by single calls, in each.
        for app in [&single, &batched, &imported] {
            for order in &stored {
                app.post_raw(Some("application/json"), order.to_string())
                    .await;
            }
        }

        for order in &orders {
            single
                .post_raw(Some("application/json"), order.to_string())
                .await;
        }
        let mut rest = orders.as_slice();
        let mut sizes = sizes.iter().cycle();
        while !rest.is_empty() {
            let size = (*sizes.next().unwrap()).min(rest.len());
            let (status, answer) = post_batch(&batched, &rest[..size]).await;
            assert_eq!(status, 200, "{answer}");
            rest = &rest[size..];
        }
        let file = dir.path().join(format!("orders-{case}.ndjson"));
        let mut lines: Vec<String> = orders.iter().map(Value::to_string).collect();
        // Lines no single call could send: not JSON, an array.
        lines.insert(lines.len() / 2, "{\"email\": ".to_owned());
        lines.push("[]".to_owned());
        write_lines(&file, &lines);
        let chunk = chunk.to_string();
        let mut args = vec![file.to_str().unwrap(), "--json", "--chunk-size", &chunk];
        args.extend_from_slice(&flags);
        let report = summary(&run_import(database_url(&imported), &args));
        assert_eq!(report["read"], lines.len(), "{report}");

        let expected = outcome(&single, Vec::new()).await;
        let by_batches = outcome(&batched, Vec::new()).await;
        let by_import = outcome(&imported, Vec::new()).await;
        assert_eq!(by_batches, expected, "batches; orders: {orders:?}");
        assert_eq!(
            by_import.rows, expected.rows,
            "import rows; orders: {orders:?}"
        );
        assert_eq!(
            by_import.ledger, expected.ledger,
            "import ledger; orders: {orders:?}"
        );
        assert_eq!(
            by_import.changes, expected.changes,
            "import changes; orders: {orders:?}"
        );
        imported.assert_invariants().await;
    }
}

/// Orders of a shop: new customers, repeats, and orders linking two customers, each
/// a millisecond after the last; every 97th line invalid.
fn shop_orders(count: usize, seed: u64) -> Vec<String> {
    let mut state = seed;
    let mut next = move |bound: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % bound
    };
    let start = chrono::DateTime::parse_from_rfc3339("2025-03-01T00:00:00Z").unwrap();
    let mut customers: Vec<(String, String)> = Vec::new();
    (0..count)
        .map(|n| {
            let at = (start + chrono::Duration::milliseconds(n as i64)).to_rfc3339();
            if n % 97 == 96 {
                return json!({"email": "no at sign", "orderedAt": at}).to_string();
            }
            let roll = next(10);
            let (email, phone) = if roll < 6 || customers.len() < 2 {
                let customer = (format!("c{n}@shop.io"), format!("+4477{n:07}"));
                customers.push(customer.clone());
                customer
            } else if roll < 9 {
                customers[next(customers.len() as u64) as usize].clone()
            } else {
                let a = next(customers.len() as u64) as usize;
                let b = next(customers.len() as u64) as usize;
                (customers[a].0.clone(), customers[b].1.clone())
            };
            json!({"email": email, "phoneNumber": phone, "orderedAt": at}).to_string()
        })
        .collect()
}

/// Everything an import writes, ids and times included, as JSON text per row.
async fn everything(app: &TestApp) -> Vec<String> {
    let mut dump = Vec::new();
    for sql in [
        "SELECT row_to_json(c)::text AS json FROM (SELECT id, email, phone_number, linked_id, \
             link_precedence, created_at, updated_at, deleted_at FROM contacts ORDER BY id) c",
        "SELECT row_to_json(e)::text AS json FROM (SELECT id, kind, contact_id, primary_id, \
             email, phone_number, held_id, request_id, created_at FROM identity_events \
             ORDER BY id) e",
        "SELECT row_to_json(c)::text AS json FROM (SELECT id, kind, primary_ids, contact_ids, \
             request_id FROM identity_changes ORDER BY id) c",
        "SELECT row_to_json(h)::text AS json FROM (SELECT id, email, phone_number, primary_ids, \
             status, times_seen FROM held_requests ORDER BY id) h",
        "SELECT row_to_json(i)::text AS json FROM (SELECT id, lines_done, bytes_done, \
             prefix_sha256, orders_read, orders_applied, orders_rejected, identities_created, \
             merges, held, last_ordered_at, sequences, finished_at IS NOT NULL AS finished \
             FROM imports ORDER BY id) i",
    ] {
        dump.extend(app.query_json(sql).await);
    }
    dump
}

/// What the orders wrote, without the import's own bookkeeping (which names the
/// input's bytes).
async fn written(app: &TestApp) -> Vec<String> {
    everything(app)
        .await
        .into_iter()
        .filter(|row| !row.contains("prefix_sha256"))
        .collect()
}

/// Compares two dumps, showing the first difference rather than both dumps.
fn assert_same(got: &[String], expected: &[String], what: &str) {
    if let Some(at) = (0..got.len().max(expected.len())).find(|&at| got.get(at) != expected.get(at))
    {
        panic!(
            "{what}: {} rows against {}; first difference at row {at}:\n  got      {:?}\n  expected {:?}",
            got.len(),
            expected.len(),
            got.get(at),
            expected.get(at)
        );
    }
}

async fn lines_done(app: &TestApp) -> i64 {
    app.query_json("SELECT coalesce(max(lines_done), 0)::text AS json FROM imports")
        .await
        .first()
        .and_then(|text| text.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_killed_and_resumed_leaves_exactly_what_one_run_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("orders.ndjson");
    let lines = shop_orders(30_000, 7);
    write_lines(&file, &lines);
    let path = file.to_str().unwrap();
    let flags = ["--max-identity-emails", "3", "--max-identity-phones", "3"];

    let whole = spawn_app_with(&flags).await;
    let mut args = vec![path, "--json", "--chunk-size", "700"];
    args.extend_from_slice(&flags);
    let report = summary(&run_import(database_url(&whole), &args));
    assert_eq!(report["read"], 30_000);
    assert!(report["merges"].as_u64().unwrap() > 0, "{report}");
    assert!(report["held"].as_u64().unwrap() > 0, "{report}");
    let expected_rejects = std::fs::read_to_string(format!("{path}.rejects")).unwrap();
    assert_eq!(expected_rejects.lines().count(), 30_000 / 97);
    std::fs::remove_file(format!("{path}.rejects")).unwrap();

    let killed = spawn_app_with(&flags).await;
    let url = database_url(&killed).to_owned();
    // Killed twice, at whatever point it reached, then run to its end.
    for stop_after in [4_000, 15_000] {
        let mut child = Command::new(SERVER)
            .arg("import")
            .args(&args)
            .args(if stop_after == 4_000 {
                &[][..]
            } else {
                &["--resume"][..]
            })
            .env("DATABASE_URL", &url)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while lines_done(&killed).await < stop_after {
            assert!(Instant::now() < deadline, "the import made no progress");
            assert!(
                child.try_wait().unwrap().is_none(),
                "the import ended before the kill"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let done = lines_done(&killed).await;
    assert!(done < 30_000, "killed before its end ({done} lines done)");
    let mut resume_args = args.clone();
    resume_args.push("--resume");
    let report = summary(&run_import(&url, &resume_args));
    assert_eq!(report["resumedAfterLine"], done);
    assert_eq!(report["lines"], 30_000);

    assert_same(
        &everything(&killed).await,
        &everything(&whole).await,
        "killed and resumed against one run",
    );
    assert_eq!(
        std::fs::read_to_string(format!("{path}.rejects")).unwrap(),
        expected_rejects
    );
    killed.assert_invariants().await;
    check_passes(&url);
    // Finished: neither a resume nor a second run without --force.
    assert!(!run_import(&url, &resume_args).status.success());
    let again = run_import(&url, &[path]);
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_going_backwards_are_refused_naming_the_line_and_resume_after_the_fix() {
    let app = spawn_app().await;
    let url = database_url(&app).to_owned();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("orders.ndjson");
    let at = |second: u32| format!("2025-01-01T00:00:{second:02}Z");
    let mut lines = vec![
        json!({"email": "a@x.io", "orderedAt": at(1)}).to_string(),
        json!({"email": "b@x.io", "orderedAt": at(2)}).to_string(),
        json!({"email": "c@x.io", "orderedAt": at(1)}).to_string(),
        json!({"email": "d@x.io", "orderedAt": at(4)}).to_string(),
    ];
    write_lines(&file, &lines);
    let path = file.to_str().unwrap();
    let refused = run_import(&url, &[path, "--chunk-size", "10"]);
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(message.contains("line 3"), "{message}");
    assert!(message.contains("line 2's"), "{message}");
    assert!(message.contains("--resume"), "{message}");
    // What came before the refused line is committed; the rest is not.
    assert_eq!(app.row_count().await, 2);

    // A second run without --resume is refused, and so is a resume that would read
    // the input in another format; after the fix, --resume goes on.
    assert!(stderr(&run_import(&url, &[path])).contains("--resume"));
    let other_format = run_import(&url, &[path, "--resume", "--format", "csv"]);
    assert!(
        stderr(&other_format).contains("without --format"),
        "{}",
        stderr(&other_format)
    );
    lines[2] = json!({"email": "c@x.io", "orderedAt": at(3)}).to_string();
    write_lines(&file, &lines);
    let report = summary(&run_import(&url, &[path, "--resume", "--json"]));
    assert_eq!(report["resumedAfterLine"], 2);
    assert_eq!(report["applied"], 2);
    let created: Vec<String> = app
        .query_json("SELECT created_at::text AS json FROM contacts ORDER BY id")
        .await;
    assert_eq!(
        created,
        [1, 2, 3, 4]
            .map(|s| format!("2025-01-01 00:00:{s:02}+00"))
            .to_vec()
    );

    // A new file older than what is stored is refused at its first line, whole.
    let older = dir.path().join("older.ndjson");
    write_lines(
        &older,
        &[json!({"email": "e@x.io", "orderedAt": at(0)}).to_string()],
    );
    let refused = run_import(&url, &[older.to_str().unwrap()]);
    assert!(stderr(&refused).contains("line 1"), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("newest contact"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(app.row_count().await, 4);

    // A time in the future is an invalid line, rejected with the others.
    let future = dir.path().join("future.ndjson");
    write_lines(
        &future,
        &[
            json!({"email": "f@x.io", "orderedAt": "2999-01-01T00:00:00Z"}).to_string(),
            json!({"email": "g@x.io"}).to_string(),
        ],
    );
    let report = summary(&run_import(&url, &[future.to_str().unwrap(), "--json"]));
    assert_eq!(
        (report["applied"].clone(), report["rejected"].clone()),
        (json!(1), json!(1))
    );
    let rejects = std::fs::read_to_string(format!("{}.rejects", future.display())).unwrap();
    let reject: Value = serde_json::from_str(rejects.lines().next().unwrap()).unwrap();
    assert_eq!(reject["line"], 1);
    assert!(
        reject["reason"].as_str().unwrap().contains("future"),
        "{reject}"
    );
    app.assert_invariants().await;
}

/// A newcomer's first import, after the README's first requests: a history older
/// than the stored contacts is refused at line 1; the advice given (fix it, then
/// `--resume`) imports the fixed file, which a refused attempt's start time must not
/// turn into "orderedAt in the future"; the fixed file, run again, is refused as
/// imported already; and a run that applies nothing exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_at_the_first_line_resumes_with_the_fixed_file() {
    let app = spawn_app().await;
    let url = database_url(&app).to_owned();
    app.identify(Some("lorraine@hillvalley.edu"), Some("123456"))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("orders.ndjson");
    let path = file.to_str().unwrap();
    let order = |n: u32, at: String| {
        json!({"email": format!("o{n}@x.io"), "phoneNumber": format!("9{n}"), "orderedAt": at})
            .to_string()
    };
    write_lines(
        &file,
        &[
            order(1, "2025-06-01T00:00:00.001Z".to_owned()),
            order(2, "2025-06-01T00:00:00.002Z".to_owned()),
        ],
    );
    let refused = run_import(&url, &[path]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("--resume"),
        "{}",
        stderr(&refused)
    );

    // Fixed: after every stored contact, and (this run starts later) not in the future.
    let after = chrono::Utc::now();
    let at = |ms: i64| {
        (after + chrono::Duration::milliseconds(ms))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    write_lines(&file, &[order(1, at(1)), order(2, at(2))]);
    std::thread::sleep(std::time::Duration::from_millis(5));
    let report = summary(&run_import(&url, &[path, "--resume", "--json"]));
    assert_eq!(
        (report["applied"].clone(), report["rejected"].clone()),
        (json!(2), json!(0)),
        "{report}"
    );
    let again = run_import(&url, &[path]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("imported already"),
        "{}",
        stderr(&again)
    );

    let rejected = dir.path().join("rejected.ndjson");
    write_lines(&rejected, &[json!({"email": "no-at-sign"}).to_string()]);
    let output = run_import(&url, &[rejected.to_str().unwrap(), "--json"]);
    assert!(!output.status.success(), "nothing applied must not exit 0");
    let report: Value = serde_json::from_slice(&output.stdout).expect("a JSON summary");
    assert_eq!(
        (report["applied"].clone(), report["rejected"].clone()),
        (json!(0), json!(1))
    );
    assert_eq!(app.row_count().await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_and_standard_input_import_like_ndjson() {
    let from_json = spawn_app().await;
    let from_csv = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let lines = shop_orders(500, 3);
    let json_file = dir.path().join("orders.ndjson");
    write_lines(&json_file, &lines);
    let mut csv = vec!["orderedAt,email,phoneNumber".to_owned()];
    for line in &lines {
        let order: Value = serde_json::from_str(line).unwrap();
        let field = |name: &str| order[name].as_str().unwrap_or("").replace('"', "\"\"");
        csv.push(format!(
            "{},\"{}\",{}",
            field("orderedAt"),
            field("email"),
            field("phoneNumber")
        ));
    }
    let csv_file = dir.path().join("orders.csv");
    write_lines(&csv_file, &csv);
    summary(&run_import(
        database_url(&from_json),
        &[json_file.to_str().unwrap(), "--json", "--chunk-size", "64"],
    ));
    let report = summary(&run_import(
        database_url(&from_csv),
        &[csv_file.to_str().unwrap(), "--json", "--chunk-size", "50"],
    ));
    assert_eq!(report["read"], 500);
    assert_same(
        &written(&from_csv).await,
        &written(&from_json).await,
        "CSV against NDJSON",
    );
    // The same line, counted from the header.
    let rejects = std::fs::read_to_string(format!("{}.rejects", csv_file.display())).unwrap();
    let first: Value = serde_json::from_str(rejects.lines().next().unwrap()).unwrap();
    assert_eq!(first["line"], 97 + 1);

    let piped = spawn_app().await;
    let mut child = Command::new(SERVER)
        .args(["import", "-", "--json", "--rejects"])
        .arg(dir.path().join("piped.rejects"))
        .env("DATABASE_URL", database_url(&piped))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(std::fs::read(&json_file).unwrap().as_slice())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(summary(&output)["read"], 500);
    assert_same(
        &written(&piped).await,
        &written(&from_json).await,
        "standard input against a file",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_traffic_during_an_import_keeps_every_invariant() {
    let app = spawn_app_with(&["--max-identity-emails", "0", "--max-identity-phones", "0"]).await;
    let url = database_url(&app).to_owned();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("orders.ndjson");
    // No times: rows take their chunk's clock, as live calls take theirs.
    let lines: Vec<String> = (0..20_000u64)
        .map(|n| {
            json!({"email": format!("c{}@shop.io", n % 3_000), "phoneNumber": format!("66{}", (n * 7) % 2_500)})
                .to_string()
        })
        .collect();
    write_lines(&file, &lines);
    let path = file.to_str().unwrap().to_owned();
    let import = tokio::task::spawn_blocking(move || {
        run_import(
            &url,
            &[
                &path,
                "--json",
                "--chunk-size",
                "400",
                "--max-identity-emails",
                "0",
                "--max-identity-phones",
                "0",
            ],
        )
    });
    let mut calls = Vec::new();
    for worker in 0..4u64 {
        let client = app.client.clone();
        let single = app.url("/identify");
        let batch = app.url("/identify/batch");
        calls.push(tokio::spawn(async move {
            for n in 0..60u64 {
                let order = |k: u64| json!({"email": format!("c{}@shop.io", (k * 13) % 3_000), "phoneNumber": format!("66{}", (k * 11) % 2_500)});
                let response = if n % 4 == 0 {
                    let orders: Vec<Value> = (0..10).map(|i| order(worker * 1000 + n * 10 + i)).collect();
                    client.post(&batch).json(&json!({"orders": orders})).send().await.unwrap()
                } else {
                    client.post(&single).json(&order(worker * 1000 + n)).send().await.unwrap()
                };
                assert_eq!(response.status(), 200);
            }
        }));
    }
    for call in calls {
        call.await.unwrap();
    }
    let report = summary(&import.await.unwrap());
    assert_eq!(report["applied"], 20_000);
    app.assert_invariants().await;
    check_passes(database_url(&app));
}

/// The original implementation's table, as TypeORM creates it.
const NEST_TABLE: &str = "
    CREATE TYPE contact_linkprecedence_enum AS ENUM ('primary', 'secondary');
    CREATE TABLE contact (
        id serial PRIMARY KEY,
        \"phoneNumber\" character varying,
        email character varying,
        \"linkedId\" integer,
        \"linkPrecedence\" contact_linkprecedence_enum NOT NULL DEFAULT 'primary',
        \"createdAt\" timestamp without time zone NOT NULL DEFAULT now(),
        \"updatedAt\" timestamp without time zone NOT NULL DEFAULT now(),
        \"deletedAt\" timestamp without time zone
    );";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nestjs_table_migrates_with_its_races_repaired() {
    let old = TestDatabase::create_empty().await;
    let rows = [
        // id, phone, email, linkedId, precedence, created (minutes), deleted
        // A clean identity: 1 primary, 2 its secondary.
        (
            1,
            Some("123456"),
            Some("lorraine@hillvalley.edu"),
            None,
            "primary",
            1,
            false,
        ),
        (
            2,
            Some("123456"),
            Some("mcfly@hillvalley.edu"),
            Some(1),
            "secondary",
            2,
            false,
        ),
        // A race: two primaries sharing an email.
        (
            3,
            Some("919191"),
            Some("doc@hillvalley.edu"),
            None,
            "primary",
            3,
            false,
        ),
        (
            4,
            Some("717171"),
            Some("doc@hillvalley.edu"),
            None,
            "primary",
            4,
            false,
        ),
        // A secondary linked to a secondary (5 → 2).
        (
            5,
            Some("555000"),
            Some("emmett@hillvalley.edu"),
            Some(2),
            "secondary",
            5,
            false,
        ),
        // A duplicated row of the clean identity.
        (
            6,
            Some("123456"),
            Some("mcfly@hillvalley.edu"),
            Some(1),
            "secondary",
            6,
            false,
        ),
        // A link to a row that does not exist, and a wrong precedence.
        (
            7,
            Some("808080"),
            Some("biff@hillvalley.edu"),
            Some(99),
            "primary",
            7,
            false,
        ),
        // A primary younger than its own secondary (created before the primary).
        (
            9,
            Some("343434"),
            Some("george@hillvalley.edu"),
            None,
            "primary",
            9,
            false,
        ),
        (
            8,
            Some("343434"),
            Some("george2@hillvalley.edu"),
            Some(9),
            "secondary",
            8,
            false,
        ),
        // Values only a lax implementation stored (12 is left with none: not
        // copied); a soft-deleted row.
        (
            10,
            Some("12-34-56"),
            Some("NOT AN EMAIL"),
            None,
            "primary",
            10,
            false,
        ),
        (
            11,
            Some("999999"),
            Some("gone@hillvalley.edu"),
            Some(1),
            "secondary",
            11,
            true,
        ),
        (12, None, Some("bad email"), None, "primary", 12, false),
        // No value at all; a value blocked here (the built-in rules).
        (13, None, None, None, "primary", 13, false),
        (
            14,
            Some("0000000"),
            Some("jennifer@hillvalley.edu"),
            None,
            "primary",
            14,
            false,
        ),
    ];
    let mut sql = NEST_TABLE.to_owned();
    for (id, phone, email, linked, precedence, minute, deleted) in rows {
        let text = |value: Option<&str>| value.map_or("NULL".to_owned(), |v| format!("'{v}'"));
        sql.push_str(&format!(
            "INSERT INTO contact VALUES ({id}, {}, {}, {}, '{precedence}', \
             '2023-04-01 10:{minute:02}:00', '2023-04-01 11:00:00', {});",
            text(phone),
            text(email),
            linked.map_or("NULL".to_owned(), |l: i32| l.to_string()),
            if deleted {
                "'2023-05-01 00:00:00'"
            } else {
                "NULL"
            },
        ));
    }
    let mut conn = diesel_async::AsyncPgConnection::establish(&old.url)
        .await
        .unwrap();
    diesel_async::SimpleAsyncConnection::batch_execute(&mut conn, &sql)
        .await
        .unwrap();
    drop(conn);

    let app = spawn_app().await;
    let url = database_url(&app).to_owned();
    let output = run_import(&url, &["--from-postgres", &old.url, "--json"]);
    let report = summary(&output);
    assert_eq!(report["rows"], 14);
    assert_eq!(report["softDeletedRows"], 1);
    // Old primaries 1, 3, 4, 9, 10, 12, 13, 14; the rules: {1,2,5,6,10}, {3,4}, {7},
    // {8,9}, {14} (10's phone normalises to 1's).
    assert_eq!(report["identitiesClaimed"], 8);
    assert_eq!(report["identities"], 5);
    let repairs = &report["repairs"];
    assert_eq!(repairs["identitiesMerged"]["examples"], json!([1, 3]));
    assert_eq!(repairs["primariesDemoted"]["examples"], json!([4, 9, 10]));
    assert_eq!(repairs["linkedToSecondary"]["examples"], json!([5]));
    assert_eq!(repairs["linkedToMissing"]["examples"], json!([7]));
    assert_eq!(repairs["precedenceMismatch"]["examples"], json!([7]));
    assert_eq!(repairs["duplicates"]["examples"], json!([6]));
    assert_eq!(repairs["invalidValues"]["examples"], json!([10, 12]));
    assert_eq!(repairs["rowsWithoutValue"]["examples"], json!([12, 13]));
    // 999999 and 0000000 are junk phones the built-in rules block.
    assert_eq!(repairs["blockedValues"]["examples"], json!([11, 14]));

    let rows: Vec<(i32, Option<i32>)> = app
        .rows()
        .await
        .into_iter()
        .map(|row| (row.id, row.linked_id))
        .collect();
    assert_eq!(
        rows,
        [
            (1, None),
            (2, Some(1)),
            (3, None),
            (4, Some(3)),
            (5, Some(1)),
            (6, Some(1)),
            (7, None),
            (8, None),
            (9, Some(8)),
            (10, Some(1)),
            (11, Some(1)),
            (14, None),
        ]
    );
    let kept_times = app
        .query_json("SELECT created_at::text AS json FROM contacts WHERE id = 9")
        .await;
    assert_eq!(kept_times, ["2023-04-01 10:09:00+00"]);
    let answer = app.identify(Some("doc@hillvalley.edu"), None).await;
    assert_eq!(answer["primaryContactId"], 3);
    assert_eq!(answer["secondaryContactIds"], json!([4]));
    // New rows take ids after every old one, copied or not.
    let answer = app.identify(Some("marty@hillvalley.edu"), None).await;
    assert_eq!(answer["primaryContactId"], 15);
    app.assert_invariants().await;
    check_passes(&url);

    // A database with contacts is refused, and nothing written.
    let refused = run_import(&url, &["--from-postgres", &old.url]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("empty"), "{}", stderr(&refused));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_of_one_input_at_once_apply_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("orders.ndjson");
    write_lines(&file, &shop_orders(20_000, 11));
    let path = file.to_str().unwrap();
    let once = spawn_app().await;
    summary(&run_import(database_url(&once), &[path, "--json"]));
    std::fs::remove_file(format!("{path}.rejects")).unwrap();

    let twice = spawn_app().await;
    let runs: Vec<_> = (0..2)
        .map(|_| {
            Command::new(SERVER)
                .args(["import", path, "--json", "--chunk-size", "500"])
                .env("DATABASE_URL", database_url(&twice))
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<Output> = runs
        .into_iter()
        .map(|run| run.wait_with_output().unwrap())
        .collect();
    let succeeded = outputs
        .iter()
        .filter(|output| output.status.success())
        .count();
    assert_eq!(
        succeeded,
        1,
        "{:?}",
        outputs.iter().map(stderr).collect::<Vec<_>>()
    );
    let refused = outputs
        .iter()
        .find(|output| !output.status.success())
        .unwrap();
    let message = stderr(refused);
    assert!(
        message.contains("another import of this input is running")
            || message.contains("imported already"),
        "{message}"
    );
    assert_same(
        &written(&twice).await,
        &written(&once).await,
        "two runs against one",
    );
    check_passes(database_url(&twice));
}
