//! Erasure (docs/SPEC.md §11): a customer who asks to be forgotten leaves no trace in
//! any table, and a later order starts a new customer.

use std::process::Command;

use diesel::sql_types::Text;
use identity_reconciliation::auth::{self, Scope};
use serde_json::{Value, json};

use crate::helpers::{SERVER_BINARY as SERVER, TestApp, spawn_app, spawn_app_with};

const ERASE: &str = "mutation($input: EraseInput!) { eraseIdentity(input: $input) {
    primaryContactId contactsErased valuesErased eventsRedacted heldRequestsErased
    blocksErased } }";

#[derive(diesel::QueryableByName)]
struct Column {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    column_name: String,
}

#[derive(diesel::QueryableByName)]
struct Found {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    found: i64,
}

/// Every place a value could hide: each text, character, array or JSON column of
/// every table, searched case-blind for an email and digits-only for a phone (so
/// `+44 20 7946 0958` and `442079460958` are both found).
async fn traces(app: &TestApp, emails: &[&str], phones: &[&str]) -> Vec<String> {
    use diesel_async::RunQueryDsl;

    let mut conn = app.connection().await;
    let columns: Vec<Column> = diesel::sql_query(
        "SELECT table_name::text AS table_name, column_name::text AS column_name \
         FROM information_schema.columns WHERE table_schema = 'public' \
           AND data_type IN ('text', 'character varying', 'character', 'json', 'jsonb', 'ARRAY')",
    )
    .load(&mut conn)
    .await
    .unwrap();
    assert!(columns.len() > 10, "the scan sees the schema");
    let mut found = Vec::new();
    for column in &columns {
        let (table, name) = (&column.table_name, &column.column_name);
        for email in emails {
            let hits: Found = diesel::sql_query(format!(
                "SELECT count(*) AS found FROM \"{table}\" \
                 WHERE lower(\"{name}\"::text) LIKE '%' || lower($1) || '%'"
            ))
            .bind::<Text, _>(*email)
            .get_result(&mut conn)
            .await
            .unwrap();
            if hits.found > 0 {
                found.push(format!("{table}.{name} holds {email}"));
            }
        }
        for phone in phones {
            let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
            let hits: Found = diesel::sql_query(format!(
                "SELECT count(*) AS found FROM \"{table}\" \
                 WHERE regexp_replace(\"{name}\"::text, '[^0-9]', '', 'g') LIKE '%' || $1 || '%'"
            ))
            .bind::<Text, _>(&digits)
            .get_result(&mut conn)
            .await
            .unwrap();
            if hits.found > 0 {
                found.push(format!("{table}.{name} holds {phone}"));
            }
        }
    }
    found
}

async fn outcome(app: &TestApp, email: &str, phone: &str) -> (String, Value) {
    let (status, body) = app
        .post_identify(&json!({"email": email, "phoneNumber": phone}))
        .await;
    assert_eq!(status, 200, "{body}");
    (
        body["outcome"].as_str().unwrap().to_owned(),
        body["contact"].clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_customer_leaves_no_trace_anywhere() {
    let app = spawn_app_with(&["--max-identity-emails", "3"]).await;
    let emails = [
        "Ada@Lovelace.io",
        "ada.work@lovelace.io",
        "ada.home@lovelace.io",
        "ada.fourth@lovelace.io",
    ];
    let phones = ["+44 20 7946 0958", "(770) 090-0123"];
    let (_, ada) = outcome(&app, emails[0], phones[0]).await;
    outcome(&app, emails[1], phones[0]).await;
    outcome(&app, emails[2], phones[1]).await;
    // A merge by a request whose values no row carries together: ledger evidence.
    let (merged, _) = outcome(&app, emails[1], phones[1]).await;
    assert_eq!(merged, "merged");
    // Past the limit: a held request with a value no contact holds.
    let (held, _) = outcome(&app, emails[3], phones[0]).await;
    assert_eq!(held, "held");
    // Someone else, who must be left alone.
    let (_, other) = outcome(&app, "grace@hopper.io", "+1 202 555 0147").await;
    // And a soft-deleted row of Ada's.
    app.execute("UPDATE contacts SET deleted_at = now() WHERE email = 'ada.home@lovelace.io'")
        .await;
    assert!(
        !traces(&app, &emails, &phones).await.is_empty(),
        "the scan finds Ada"
    );

    let erased = app
        .graphql_data(ERASE, json!({"input": {"email": " ADA@lovelace.io "}}))
        .await["eraseIdentity"]
        .clone();
    assert_eq!(
        erased["primaryContactId"], ada["primaryContactId"],
        "{erased}"
    );
    assert_eq!(erased["contactsErased"], 3);
    assert_eq!(erased["valuesErased"], 6, "four emails and two phones");
    assert_eq!(erased["heldRequestsErased"], 1);
    assert_eq!(traces(&app, &emails, &phones).await, Vec::<String>::new());

    // Grace is untouched; the invariants and the evidence hold.
    let grace = app.identify(Some("grace@hopper.io"), None).await;
    assert_eq!(grace["primaryContactId"], other["primaryContactId"]);
    app.assert_invariants().await;
    // The audit keeps ids and keyed hashes, and the ledger an event without values.
    let audit = app
        .query_json(
            "SELECT json_build_object('ids', contact_ids, 'hashes', cardinality(value_hashes))::text \
             AS json FROM erasures",
        )
        .await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert!(audit[0].contains("\"hashes\" : 6"), "{audit:?}");
    let erased_events = app
        .query_json(
            "SELECT row_to_json(e)::text AS json FROM identity_events e WHERE kind = 'erased'",
        )
        .await;
    assert_eq!(erased_events.len(), 1);

    // A later order with the same values is a new customer.
    let (outcome_again, again) = outcome(&app, emails[0], phones[0]).await;
    assert_eq!(outcome_again, "new_primary");
    assert_ne!(again["primaryContactId"], ada["primaryContactId"]);
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_by_primary_refusals_and_the_admin_guard() {
    let app = spawn_app_with(&["--auth-mode", "required"]).await;
    let mut conn = app.connection().await;
    let (_, identify) = auth::create_key(&mut conn, "checkout", &[Scope::Identify, Scope::Read])
        .await
        .unwrap();
    let (_, admin) = auth::create_key(&mut conn, "privacy", &[Scope::Admin])
        .await
        .unwrap();
    drop(conn);
    let post = |key: &str, variables: Value| {
        let request = app
            .client
            .post(app.url("/graphql"))
            .bearer_auth(key)
            .json(&json!({ "query": ERASE, "variables": variables }));
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let order = app
        .client
        .post(app.url("/identify"))
        .bearer_auth(&identify)
        .json(&json!({"email": "x@y.io", "phoneNumber": "5551234567"}));
    let body: Value = order.send().await.unwrap().json().await.unwrap();
    let primary = body["contact"]["primaryContactId"].as_i64().unwrap();

    let answer = post(&identify, json!({"input": {"primaryContactId": primary}})).await;
    assert_eq!(
        answer["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{answer}"
    );
    for input in [
        json!({"email": "x@y.io", "primaryContactId": primary}),
        json!({}),
        json!({"phoneNumber": "abc"}),
    ] {
        let answer = post(&admin, json!({ "input": input })).await;
        assert_eq!(
            answer["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{input}: {answer}"
        );
    }
    let answer = post(&admin, json!({"input": {"primaryContactId": 999}})).await;
    assert_eq!(
        answer["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{answer}"
    );
    let answer = post(&admin, json!({"input": {"primaryContactId": primary}})).await;
    assert_eq!(
        answer["data"]["eraseIdentity"]["contactsErased"], 1,
        "{answer}"
    );
    let answer = post(&admin, json!({"input": {"email": "x@y.io"}})).await;
    assert_eq!(
        answer["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{answer}"
    );
    assert_eq!(app.row_count().await, 0);
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_erase_command_forgets_a_customer() {
    let app = spawn_app().await;
    let url = app.database.as_ref().unwrap().url.clone();
    app.identify(Some("cli@x.io"), Some("5550001111")).await;
    app.identify(Some("cli2@x.io"), Some("5550001111")).await;
    let erase = |args: &[&str]| {
        Command::new(SERVER)
            .arg("erase")
            .args(args)
            .env("DATABASE_URL", &url)
            .env("RUST_LOG", "error")
            .output()
            .unwrap()
    };
    let output = erase(&["--phone", "555-000-1111"]);
    assert!(output.status.success(), "{output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["contactsErased"], 2, "{report}");
    assert_eq!(erase(&["--phone", "5550001111"]).status.code(), Some(2));
    assert!(
        !erase(&["--email", "a@b.io", "--phone", "1"])
            .status
            .success()
    );
    assert_eq!(
        traces(&app, &["cli@x.io", "cli2@x.io"], &["5550001111"]).await,
        Vec::<String>::new()
    );
    app.assert_invariants().await;
}

/// Erasure while 32 clients keep ordering with the customer's values: no deadlock,
/// the invariants and the evidence hold, and whatever the orders made after the
/// erasure is a new customer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_under_concurrent_orders_of_the_same_customer() {
    use futures_util::StreamExt;

    let app = spawn_app().await;
    for i in 0..10 {
        app.identify(Some(&format!("busy{i}@x.io")), Some("5557770000"))
            .await;
    }
    let orders = futures_util::stream::iter(0..400).for_each_concurrent(32, |i| {
        let app = &app;
        async move {
            let (status, body) = app
                .post_identify(
                    &json!({"email": format!("busy{}@x.io", i % 12), "phoneNumber": "5557770000"}),
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }
    });
    let erasures = async {
        for _ in 0..3 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let answer = app
                .graphql(ERASE, json!({"input": {"phoneNumber": "5557770000"}}))
                .await;
            let code = &answer["errors"][0]["extensions"]["code"];
            assert!(
                answer["data"]["eraseIdentity"].is_object() || code == "NOT_FOUND",
                "{answer}"
            );
        }
    };
    tokio::time::timeout(
        std::time::Duration::from_secs(120),
        futures_util::future::join(orders, erasures),
    )
    .await
    .expect("no deadlock");
    app.assert_invariants().await;
    assert!(
        app.identities().await.len() <= 1,
        "one customer at most remains"
    );
}
