//! The change-event outbox (docs/SPEC.md §12): every change, in a gap-free order,
//! resumable from a cursor, pruned by retention with a clear error for old cursors.

use diesel_async::SimpleAsyncConnection;
use identity_reconciliation::auth::{self, Scope};
use identity_reconciliation::db::changes;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

const EVENTS: &str =
    "query($first: Int, $after: String) { identityEvents(first: $first, after: $after) {
    pageInfo { hasNextPage endCursor } nodes { kind primaryContactIds contactIds requestId } } }";

/// Pages through every event after `after`; returns their kinds, the nodes and the
/// last cursor.
async fn read_all(
    app: &TestApp,
    after: Option<String>,
) -> (Vec<String>, Vec<Value>, Option<String>) {
    let mut after = after;
    let mut nodes = Vec::new();
    loop {
        let page = app
            .graphql_data(EVENTS, json!({"first": 2, "after": after}))
            .await["identityEvents"]
            .clone();
        nodes.extend(page["nodes"].as_array().unwrap().iter().cloned());
        if let Some(cursor) = page["pageInfo"]["endCursor"].as_str() {
            after = Some(cursor.to_owned());
        }
        if page["pageInfo"]["hasNextPage"] != true {
            break;
        }
    }
    let kinds = nodes
        .iter()
        .map(|node| node["kind"].as_str().unwrap().to_owned())
        .collect();
    (kinds, nodes, after)
}

/// Like [`read_all`], polling until at least `count` events came: an event is served
/// once every older transaction has ended, and any writer (autovacuum's too) can
/// hold that back for a moment.
async fn read_at_least(
    app: &TestApp,
    after: Option<String>,
    count: usize,
) -> (Vec<String>, Vec<Value>, Option<String>) {
    for _ in 0..500 {
        let read = read_all(app, after.clone()).await;
        if read.0.len() >= count {
            return read;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    read_all(app, after).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_an_event_in_order() {
    let app = spawn_app_with(&["--max-identity-emails", "3"]).await;
    app.identify(Some("a@x.io"), Some("1001")).await;
    app.identify(Some("b@x.io"), Some("1001")).await;
    app.identify(Some("c@x.io"), Some("1002")).await;
    app.identify(Some("b@x.io"), Some("1002")).await; // merges
    app.identify(Some("a@x.io"), None).await; // changes nothing: no event
    app.identify(Some("d@x.io"), Some("1001")).await; // a fourth email: held
    app.graphql_data(
        "mutation { blockValue(input: {phoneNumber: \"1002\", reason: \"test\"}) { identities } }",
        json!({}),
    )
    .await;
    app.graphql_data(
        "mutation { eraseIdentity(input: {email: \"c@x.io\"}) { contactsErased } }",
        json!({}),
    )
    .await;
    let (kinds, nodes, cursor) = read_at_least(&app, None, 7).await;
    assert_eq!(
        kinds,
        [
            "CREATED", "LINKED", "CREATED", "MERGED", "HELD", "SPLIT", "ERASED"
        ]
    );
    assert_eq!(nodes[1]["primaryContactIds"], json!([1]));
    assert_eq!(nodes[1]["contactIds"], json!([2]));
    assert_eq!(nodes[3]["primaryContactIds"], json!([1, 3]));
    assert!(nodes.iter().all(|node| node["requestId"].is_string()));
    // Resuming from the last cursor: nothing repeated, then only what is new.
    let (again, _, _) = read_all(&app, cursor.clone()).await;
    assert!(again.is_empty(), "{again:?}");
    app.identify(Some("e@x.io"), Some("1003")).await;
    let (new, _, _) = read_at_least(&app, cursor, 1).await;
    assert_eq!(new, ["CREATED"]);

    // Values through the identity the change belongs to now: the first change's
    // contact is still Ada's; the erased identity is gone.
    let page = app
        .graphql_data(
            "{ identityEvents(first: 100) { nodes { kind identity { primaryContactId emails } } } }",
            json!({}),
        )
        .await;
    let nodes = page["identityEvents"]["nodes"].as_array().unwrap().clone();
    assert_eq!(
        nodes[0]["identity"]["emails"],
        json!(["a@x.io", "b@x.io"]),
        "{page}"
    );
    assert_eq!(nodes[6]["kind"], "ERASED");
    assert_eq!(nodes[6]["identity"], Value::Null);
}

/// The outbox gap: change ids are drawn at insert, so a transaction that inserted
/// first can commit last. A reader going by id would serve the later id and step
/// past the earlier one for good; this reader waits for the earlier transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_behind_a_running_transaction_is_not_skipped() {
    let app = spawn_app().await;
    app.identify(Some("first@x.io"), Some("2001")).await;
    let (_, _, cursor) = read_at_least(&app, None, 1).await;

    // A transaction draws the next id and keeps running...
    let mut slow = app.connection().await;
    slow.batch_execute(
        "BEGIN; INSERT INTO identity_changes (kind, primary_ids, contact_ids) \
         VALUES ('created', '{999}', '{999}')",
    )
    .await
    .unwrap();
    // ...while a later one commits.
    app.identify(Some("second@x.io"), Some("2002")).await;
    let (served, _, _) = read_all(&app, cursor.clone()).await;
    assert!(
        served.is_empty(),
        "served past a running transaction: {served:?}"
    );

    slow.batch_execute("COMMIT").await.unwrap();
    let (served, nodes, _) = read_at_least(&app, cursor, 2).await;
    assert_eq!(served, ["CREATED", "CREATED"]);
    assert_eq!(
        nodes[0]["primaryContactIds"],
        json!([999]),
        "the earlier one first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_older_than_retention_is_refused_and_reading_needs_read() {
    let app = spawn_app_with(&["--auth-mode", "required"]).await;
    let mut conn = app.connection().await;
    let (_, reader) = auth::create_key(&mut conn, "crm", &[Scope::Read, Scope::Identify])
        .await
        .unwrap();
    let (_, checkout) = auth::create_key(&mut conn, "checkout", &[Scope::Identify])
        .await
        .unwrap();
    let post = |key: &str, body: Value| {
        let request = app
            .client
            .post(app.url("/graphql"))
            .bearer_auth(key)
            .json(&body);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    for email in ["r1@x.io", "r2@x.io"] {
        let identify = json!({"query": format!("mutation {{ identify(input: {{email: \"{email}\"}}) {{ primaryContactId }} }}")});
        let answer = post(&reader, identify).await;
        assert!(answer["data"]["identify"].is_object(), "{answer}");
    }
    let answer = post(&checkout, json!({"query": EVENTS})).await;
    assert_eq!(
        answer["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{answer}"
    );
    // Served once every older transaction has ended (the key's `last_used_at` write
    // may still be running): poll, as a consumer does.
    let mut cursor = Value::Null;
    for _ in 0..500 {
        let answer = post(&reader, json!({"query": EVENTS, "variables": {"first": 1}})).await;
        cursor = answer["data"]["identityEvents"]["pageInfo"]["endCursor"].clone();
        if cursor.is_string() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(cursor.is_string(), "no event served");

    // Retention prunes both (0 days: everything of ended transactions; transactions
    // ids are the cluster's, so another database's writer can hold one back a moment).
    let mut pruned = 0;
    for _ in 0..500 {
        pruned += changes::prune(&mut conn, 0).await.unwrap();
        if pruned >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(pruned, 2);
    let answer = post(
        &reader,
        json!({"query": EVENTS, "variables": {"after": cursor}}),
    )
    .await;
    assert_eq!(
        answer["errors"][0]["extensions"]["code"], "CURSOR_EXPIRED",
        "{answer}"
    );
    let answer = post(&reader, json!({"query": EVENTS})).await;
    assert_eq!(
        answer["data"]["identityEvents"]["nodes"],
        json!([]),
        "{answer}"
    );

    // A forged cursor is a client error, not a database one.
    use async_graphql::connection::{CursorType, OpaqueCursor};
    let forged = OpaqueCursor(("1; DROP".to_owned(), 1i64)).encode_cursor();
    let answer = post(
        &reader,
        json!({"query": EVENTS, "variables": {"after": forged}}),
    )
    .await;
    assert_eq!(
        answer["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{answer}"
    );
}

/// Transaction ids are ordered as numbers, not as the text the cursors carry: a
/// reader once served transaction 1000 before 999 and then 999 again (found by the
/// subscription tests when the cluster's ids crossed 1000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_read_in_the_numeric_order_of_their_transactions() {
    let app = spawn_app().await;
    let mut conn = app.connection().await;
    // Transactions 9 and 10 ended long ago in any cluster: both are readable.
    conn.batch_execute(
        "INSERT INTO identity_changes (xid, kind, primary_ids, contact_ids) VALUES \
         ('10', 'created', '{2}', '{2}'), ('9', 'created', '{1}', '{1}')",
    )
    .await
    .unwrap();
    let page = changes::page(&mut conn, None, 10).await.unwrap();
    let order: Vec<&str> = page.iter().map(|change| change.xid.as_str()).collect();
    assert_eq!(order, ["9", "10"]);
    let after_nine = changes::page(&mut conn, Some(&page[0].position()), 10)
        .await
        .unwrap();
    assert_eq!(after_nine.len(), 1);
    assert_eq!(after_nine[0].xid, "10");
    let head = changes::head(&mut conn).await.unwrap();
    assert_eq!(head.map(|(xid, _)| xid).as_deref(), Some("10"));
}
