//! `POST /identify/batch` (docs/SPEC.md §13): the same contacts, answers, ledger and
//! change events as the orders sent one by one; per-order errors; one transaction;
//! invariants under concurrent batches and single calls.

use std::collections::HashMap;

use diesel::QueryableByName;
use diesel::sql_types::{Array, Int4, Nullable, Text};
use diesel_async::RunQueryDsl;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

pub(crate) async fn post_batch(app: &TestApp, orders: &[Value]) -> (u16, Value) {
    let response = app
        .client
        .post(app.url("/identify/batch"))
        .json(&json!({ "orders": orders }))
        .send()
        .await
        .expect("batch sent");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON answer"))
}

#[derive(Debug, QueryableByName)]
struct LedgerRow {
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Nullable<Int4>)]
    contact_id: Option<i32>,
    #[diesel(sql_type = Int4)]
    primary_id: i32,
    #[diesel(sql_type = Nullable<Text>)]
    email: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    phone_number: Option<String>,
}

#[derive(Debug, QueryableByName)]
struct ChangeRow {
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Array<Int4>)]
    primary_ids: Vec<i32>,
    #[diesel(sql_type = Array<Int4>)]
    contact_ids: Vec<i32>,
}

/// A contact: rank, email, phone, its primary's rank, precedence.
pub(crate) type RankedRow = (usize, Option<String>, Option<String>, Option<usize>, String);
/// A ledger row: kind, contact, primary, email, phone.
pub(crate) type RankedEvent = (String, Option<usize>, usize, Option<String>, Option<String>);

/// Everything the orders left, with contact ids replaced by their rank: a batch
/// takes an id per order up front, so its ids may have gaps single calls lack.
#[derive(Debug, PartialEq)]
pub(crate) struct Outcome {
    pub rows: Vec<RankedRow>,
    pub answers: Vec<Value>,
    pub ledger: Vec<RankedEvent>,
    pub changes: Vec<(String, Vec<usize>, Vec<usize>)>,
}

pub(crate) async fn outcome(app: &TestApp, answers: Vec<Value>) -> Outcome {
    let rows = app.rows().await;
    let rank: HashMap<i32, usize> = rows
        .iter()
        .enumerate()
        .map(|(rank, row)| (row.id, rank + 1))
        .collect();
    let ranked = |id: i32| rank[&id];
    let mut conn = app.connection().await;
    let ledger: Vec<LedgerRow> = diesel::sql_query(
        "SELECT kind::text AS kind, contact_id, primary_id, email, phone_number \
         FROM identity_events ORDER BY id",
    )
    .load(&mut conn)
    .await
    .unwrap();
    let changes: Vec<ChangeRow> = diesel::sql_query(
        "SELECT kind, primary_ids, contact_ids FROM identity_changes ORDER BY xid, id",
    )
    .load(&mut conn)
    .await
    .unwrap();
    let answers = answers
        .into_iter()
        .map(|answer| match answer.get("contact") {
            Some(contact) => json!({
                "primary": ranked(contact["primaryContactId"].as_i64().unwrap() as i32),
                "emails": contact["emails"],
                "phoneNumbers": contact["phoneNumbers"],
                "secondaries": contact["secondaryContactIds"].as_array().unwrap().iter()
                    .map(|id| ranked(id.as_i64().unwrap() as i32)).collect::<Vec<_>>(),
                "outcome": answer["outcome"],
            }),
            None => json!({"error": answer["error"]["code"], "field": answer["error"]["field"]}),
        })
        .collect();
    Outcome {
        rows: rows
            .iter()
            .map(|row| {
                (
                    ranked(row.id),
                    row.email.clone(),
                    row.phone_number.clone(),
                    row.linked_id.map(ranked),
                    row.link_precedence.clone(),
                )
            })
            .collect(),
        answers,
        ledger: ledger
            .into_iter()
            .map(|row| {
                (
                    row.kind,
                    row.contact_id.map(ranked),
                    ranked(row.primary_id),
                    row.email,
                    row.phone_number,
                )
            })
            .collect(),
        changes: changes
            .into_iter()
            .map(|row| {
                (
                    row.kind,
                    row.primary_ids.into_iter().map(ranked).collect(),
                    row.contact_ids.into_iter().map(ranked).collect(),
                )
            })
            .collect(),
    }
}

/// An order over a small value space (so that orders link and merge), now and
/// then invalid or blocked.
pub(crate) fn order_strategy() -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => (proptest::option::of(0..8u8), proptest::option::of(0..8u8))
            .prop_filter("a value", |(e, p)| e.is_some() || p.is_some())
            .prop_map(|(e, p)| json!({
                "email": e.map(|e| format!("u{e}@shop.io")),
                "phoneNumber": p.map(|p| format!("55501{p}")),
            })),
        1 => Just(json!({"email": "not an email"})),
        1 => Just(json!({})),
        1 => Just(json!({"email": "u1@shop.io", "phoneNumber": "0000000"})),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_random_sizes_equal_the_orders_sent_one_by_one() {
    let mut runner = TestRunner::new(Config {
        cases: 12,
        ..Config::default()
    });
    let strategy = (
        proptest::collection::vec(order_strategy(), 1..60),
        proptest::collection::vec(1..20usize, 1..10),
        proptest::option::of(2..4u8),
    );
    for _ in 0..12 {
        let (orders, sizes, limit) = strategy.new_tree(&mut runner).unwrap().current();
        let limit = limit.map_or("0".to_owned(), |limit| limit.to_string());
        let flags = [
            "--max-identity-emails",
            limit.as_str(),
            "--max-identity-phones",
            limit.as_str(),
        ];
        let single = spawn_app_with(&flags).await;
        let batched = spawn_app_with(&flags).await;

        let mut single_answers = Vec::new();
        for order in &orders {
            let (status, answer) = single
                .post_raw(Some("application/json"), order.to_string())
                .await;
            let _ = status;
            single_answers.push(answer);
        }
        let mut batch_answers = Vec::new();
        let mut rest = orders.as_slice();
        let mut sizes = sizes.iter().cycle();
        while !rest.is_empty() {
            let size = (*sizes.next().unwrap()).min(rest.len());
            let (status, answer) = post_batch(&batched, &rest[..size]).await;
            assert_eq!(status, 200, "{answer}");
            batch_answers.extend(answer["results"].as_array().unwrap().iter().cloned());
            rest = &rest[size..];
        }
        let expected = outcome(&single, single_answers).await;
        let got = outcome(&batched, batch_answers).await;
        assert_eq!(got.answers, expected.answers, "orders: {orders:?}");
        assert_eq!(got.rows, expected.rows, "orders: {orders:?}");
        assert_eq!(got.ledger, expected.ledger, "orders: {orders:?}");
        assert_eq!(got.changes, expected.changes, "orders: {orders:?}");
        batched.assert_invariants().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_order_gets_its_own_error_and_the_others_apply_together() {
    let app = spawn_app().await;
    let (status, answer) = post_batch(
        &app,
        &[
            json!({"email": "doc@hillvalley.edu", "phoneNumber": "555"}),
            json!({"email": "nope"}),
            json!({"phoneNumber": "0000000"}),
            json!({"phoneNumber": -1}),
            json!({"email": "emmett@hillvalley.edu", "phoneNumber": "555"}),
        ],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results[0]["outcome"], "new_primary");
    assert_eq!(results[1]["error"]["code"], "INVALID_INPUT");
    assert_eq!(results[1]["error"]["field"], "email");
    assert_eq!(results[2]["error"]["code"], "BLOCKED_VALUE");
    assert_eq!(results[3]["error"]["code"], "INVALID_INPUT");
    assert_eq!(results[3]["error"]["field"], "phoneNumber");
    assert_eq!(results[4]["outcome"], "new_secondary");
    assert_eq!(
        results[4]["contact"]["emails"],
        json!(["doc@hillvalley.edu", "emmett@hillvalley.edu"])
    );
    assert_eq!(app.row_count().await, 2);
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_is_not_one_is_refused_whole() {
    let app = spawn_app_with(&["--batch-max-orders", "3"]).await;
    for body in [
        json!([]),
        json!({"orders": {}}),
        json!({"order": []}),
        json!({"orders": [{}, {}, {}, {}]}),
        json!({"orders": [{"email": "a@x.io"}, "not an order"]}),
    ] {
        let response = app
            .client
            .post(app.url("/identify/batch"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
    }
    let (status, answer) = post_batch(&app, &[]).await;
    assert_eq!((status, answer), (200, json!({"results": []})));
    assert_eq!(app.row_count().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_and_single_calls_keep_every_invariant() {
    let app = spawn_app_with(&["--max-identity-emails", "0", "--max-identity-phones", "0"]).await;
    let mut tasks = Vec::new();
    for worker in 0..8u64 {
        let client = app.client.clone();
        let batch_url = app.url("/identify/batch");
        let single_url = app.url("/identify");
        tasks.push(tokio::spawn(async move {
            let mut seed = worker * 7919 + 1;
            let mut next = move |bound: u64| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (seed >> 33) % bound
            };
            for round in 0..15 {
                let order = |e: u64, p: u64| json!({"email": format!("c{e}@x.io"), "phoneNumber": format!("77{p}")});
                if worker % 2 == 0 || round % 3 == 0 {
                    let orders: Vec<Value> = (0..20).map(|_| order(next(40), next(40))).collect();
                    let response = client.post(&batch_url).json(&json!({"orders": orders})).send().await.unwrap();
                    assert_eq!(response.status(), 200);
                } else {
                    let response = client.post(&single_url).json(&order(next(40), next(40))).send().await.unwrap();
                    assert_eq!(response.status(), 200);
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_batch_over_graphql_answers_as_rest_does() {
    let app = spawn_app().await;
    let data = app
        .graphql_data(
            "mutation($inputs: [IdentifyInput!]!) { identifyBatch(inputs: $inputs) {
                identity { primaryContactId emails phoneNumbers secondaryContactIds outcome }
                error { code field } } }",
            json!({"inputs": [
                {"email": "lorraine@hillvalley.edu", "phoneNumber": "123456"},
                {"email": "bad"},
                {"email": "mcfly@hillvalley.edu", "phoneNumber": "123456"},
            ]}),
        )
        .await;
    let results = data["identifyBatch"].as_array().unwrap();
    assert_eq!(results[0]["identity"]["outcome"], "NEW_PRIMARY");
    assert_eq!(results[1]["identity"], Value::Null);
    assert_eq!(results[1]["error"]["code"], "BAD_USER_INPUT");
    assert_eq!(results[1]["error"]["field"], "email");
    assert_eq!(results[2]["identity"]["outcome"], "NEW_SECONDARY");
    assert_eq!(
        results[2]["identity"]["emails"],
        json!(["lorraine@hillvalley.edu", "mcfly@hillvalley.edu"])
    );
    assert_eq!(app.row_count().await, 2);

    // The cost bounds the answer: a thousand orders with every list selected is
    // refused before anything runs.
    let inputs: Vec<Value> = (0..1000)
        .map(|n| json!({"email": format!("c{n}@x.io")}))
        .collect();
    let answer = app
        .graphql(
            "mutation($inputs: [IdentifyInput!]!) { identifyBatch(inputs: $inputs) {
                identity { emails phoneNumbers secondaryContactIds } } }",
            json!({ "inputs": inputs }),
        )
        .await;
    assert_eq!(
        answer["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{answer}"
    );
    assert_eq!(app.row_count().await, 2);
}

/// Orders that insert nothing take no contact id (ids are int4; a batch once took
/// one per order, on every attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_rows_a_batch_inserts_take_ids() {
    let app = spawn_app().await;
    let repeat = json!({"email": "same@x.io", "phoneNumber": "5550199"});
    let (status, _) = post_batch(
        &app,
        &[repeat.clone(), repeat.clone(), repeat.clone(), repeat],
    )
    .await;
    assert_eq!(status, 200);
    let next = app.identify(Some("next@x.io"), None).await;
    assert_eq!(next["primaryContactId"], 2);
}

/// `identifyBatch` fields count toward the document's identify limit and pay a
/// token each before anything runs; per-order errors name `input` for the pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_batches_count_as_writes_of_the_document() {
    let app = spawn_app().await;
    let fields: String = (0..11)
        .map(|n| {
            format!(
                "b{n}: identifyBatch(inputs: [{{email: \"b{n}@x.io\"}}]) {{ error {{ code }} }} "
            )
        })
        .collect();
    let answer = app
        .graphql(&format!("mutation {{ {fields} }}"), json!({}))
        .await;
    assert_eq!(
        answer["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{answer}"
    );
    assert_eq!(app.row_count().await, 0);
    let data = app
        .graphql_data(
            "mutation { identifyBatch(inputs: [{}]) { error { code field } } }",
            json!({}),
        )
        .await;
    assert_eq!(data["identifyBatch"][0]["error"]["field"], "input");
}
