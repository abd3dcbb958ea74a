//! Invariants I1–I5 under concurrent requests (docs/SPEC.md §4).

use std::collections::BTreeSet;

use futures_util::future::join_all;
use serde_json::{Value, json};

use identity_reconciliation::domain::UnionFind;

use crate::helpers::{TestApp, backend_pid, spawn_app_with, wait_until_blocked_by};

/// The merge rule of docs/SPEC.md §4 alone: these tests grow identities past the
/// identity limits of §10.3 on purpose.
const NO_LIMITS: &[&str] = &["--max-identity-emails", "0", "--max-identity-phones", "0"];

async fn fire(app: &TestApp, bodies: Vec<Value>) -> Vec<Value> {
    let requests = bodies.into_iter().map(|body| async move {
        let (status, answer) = app.post_identify(&body).await;
        assert_eq!(status, 200, "{body} -> {answer}");
        answer["contact"].clone()
    });
    join_all(requests).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_simultaneous_first_orders_make_one_primary() {
    let app = spawn_app_with(NO_LIMITS).await;
    for round in 0..5 {
        let body =
            json!({"email": format!("rush{round}@x.io"), "phoneNumber": format!("77{round}")});
        let answers = fire(&app, vec![body; 50]).await;
        assert!(
            answers.windows(2).all(|pair| pair[0] == pair[1]),
            "answers differ: {answers:?}"
        );
        assert_eq!(answers[0]["secondaryContactIds"], json!([]));
        assert_eq!(
            app.row_count().await,
            round + 1,
            "round {round} inserted extra rows"
        );
        app.assert_invariants().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_orders_sharing_one_value_make_one_identity() {
    let app = spawn_app_with(NO_LIMITS).await;
    // Same phone, fifty different emails, all at once: one primary, 49 secondaries.
    let bodies = (0..50)
        .map(|i| json!({"email": format!("shared{i}@x.io"), "phoneNumber": "4242"}))
        .collect();
    let answers = fire(&app, bodies).await;
    let primaries: BTreeSet<_> = answers
        .iter()
        .map(|a| a["primaryContactId"].as_i64())
        .collect();
    assert_eq!(primaries.len(), 1);
    assert_eq!(app.row_count().await, 50);
    assert_eq!(app.identities().await.len(), 1);
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pairwise_links_end_as_one_identity() {
    let app = spawn_app_with(NO_LIMITS).await;
    for round in 0..3 {
        let email = |i: usize| format!("r{round}-{i}@x.io");
        let phone = |i: usize| format!("{round}00{i:02}");
        for i in 0..20 {
            app.identify(Some(&email(i)), Some(&phone(i))).await;
        }
        let rows_before = app.row_count().await;
        let first_primary = rows_before as i64 - 19;
        // Link identity i to i+1, all at once, in scrambled order.
        let mut bodies: Vec<Value> = (0..19)
            .map(|i| json!({"email": email(i), "phoneNumber": phone(i + 1)}))
            .collect();
        bodies.reverse();
        bodies.swap(3, 11);
        fire(&app, bodies).await;

        assert_eq!(
            app.row_count().await,
            rows_before,
            "links with known values add rows"
        );
        let answer = app.identify(Some(&email(7)), None).await;
        assert_eq!(
            answer["primaryContactId"], first_primary,
            "the oldest primary stays"
        );
        assert_eq!(answer["emails"].as_array().unwrap().len(), 20);
        assert_eq!(answer["secondaryContactIds"].as_array().unwrap().len(), 19);
        assert_eq!(app.identities().await.len(), round + 1);
        app.assert_invariants().await;
    }
}

/// The model's identities: values that appeared together in one request, joined.
fn model_partition(requests: &[(Option<String>, Option<String>)]) -> BTreeSet<BTreeSet<String>> {
    let mut model: UnionFind<String> = UnionFind::default();
    for (email, phone) in requests {
        model.join(
            email
                .iter()
                .map(|e| format!("e:{e}"))
                .chain(phone.iter().map(|p| format!("p:{p}"))),
        );
    }
    model
        .sets()
        .into_iter()
        .map(|set| set.into_iter().collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_concurrent_mix_matches_the_union_find_model() {
    let app = spawn_app_with(NO_LIMITS).await;
    // A small deterministic generator: reproducible without a seed file.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let mut requests = Vec::new();
    for _ in 0..300 {
        let email = (next(4) > 0).then(|| format!("u{}@x.io", next(40)));
        let phone = (email.is_none() || next(4) > 0).then(|| format!("9{}", next(40)));
        requests.push((email, phone));
    }
    for batch in requests.chunks(30) {
        let bodies = batch
            .iter()
            .map(|(e, p)| json!({"email": e, "phoneNumber": p}))
            .collect();
        let answers = fire(&app, bodies).await;
        // Every answer contains the request's own values.
        for ((email, phone), answer) in batch.iter().zip(&answers) {
            if let Some(email) = email {
                assert!(answer["emails"].as_array().unwrap().contains(&json!(email)));
            }
            if let Some(phone) = phone {
                assert!(
                    answer["phoneNumbers"]
                        .as_array()
                        .unwrap()
                        .contains(&json!(phone))
                );
            }
        }
        app.assert_invariants().await;
    }
    let stored: BTreeSet<BTreeSet<String>> = app.identities().await.into_values().collect();
    assert_eq!(stored, model_partition(&requests));
}

/// A merge that commits while a request waits for a primary's lock demotes that
/// primary under it: the request must start over and lock the new primary, not
/// write into an identity whose primary it never locked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_demoted_while_waiting_for_its_lock_is_not_trusted() {
    use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};

    let app = spawn_app_with(NO_LIMITS).await;
    app.identify(Some("a@x.io"), Some("1")).await; // 1: X, the oldest
    app.identify(Some("b@x.io"), Some("2")).await; // 2: Y
    app.identify(Some("c@x.io"), Some("3")).await; // 3: Z
    let url = app.database.as_ref().unwrap().url.clone();

    // Someone holds Y's primary, so the bridge (c, 2) of Z and Y will wait for it.
    let mut merger = AsyncPgConnection::establish(&url).await.unwrap();
    let merger_pid = backend_pid(&mut merger).await;
    merger
        .batch_execute("BEGIN; SELECT id FROM contacts WHERE id = 2 FOR UPDATE")
        .await
        .unwrap();
    let bridge = tokio::spawn({
        let client = app.client.clone();
        let url = app.url("/identify");
        async move {
            let response = client
                .post(url)
                .json(&json!({"email": "c@x.io", "phoneNumber": "2"}))
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    });
    wait_until_blocked_by(&url, merger_pid).await;
    assert!(
        !bridge.is_finished(),
        "the bridge did not wait for Y's lock"
    );

    // Meanwhile Y is merged into X, and X is held by another transaction (in a mode
    // that a foreign-key check would not wait for).
    let mut holder = AsyncPgConnection::establish(&url).await.unwrap();
    let holder_pid = backend_pid(&mut holder).await;
    holder
        .batch_execute("BEGIN; SELECT id FROM contacts WHERE id = 1 FOR NO KEY UPDATE")
        .await
        .unwrap();
    merger
        .batch_execute(
            "UPDATE contacts SET linked_id = 1, link_precedence = 'secondary' WHERE id = 2; \
             INSERT INTO identity_events (kind, contact_id, primary_id, email, phone_number) \
             VALUES ('merged', 2, 1, 'a@x.io', '2'); COMMIT",
        )
        .await
        .unwrap();
    // The bridge retries (Y was demoted under it) and now waits for X's primary.
    wait_until_blocked_by(&url, holder_pid).await;
    assert!(
        !bridge.is_finished(),
        "the bridge wrote into X without holding X's primary"
    );

    holder.batch_execute("COMMIT").await.unwrap();
    let (status, answer) = bridge.await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["contact"]["primaryContactId"], 1);
    assert_eq!(
        answer["contact"]["emails"],
        json!(["a@x.io", "b@x.io", "c@x.io"])
    );
    assert_eq!(answer["contact"]["secondaryContactIds"], json!([2, 3]));
    assert_eq!(app.identities().await.len(), 1);
    app.assert_invariants().await;
}
