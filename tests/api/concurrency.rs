//! Invariants I1–I5 under concurrent requests (docs/SPEC.md §4).

use std::collections::BTreeSet;

use futures_util::future::join_all;
use serde_json::{Value, json};

use identity_reconciliation::domain::UnionFind;

use crate::helpers::{SERIALIZABLE, TestApp, backend_pid, spawn_app_with, wait_until_blocked_by};

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

crate::in_both_isolation_modes! {
async fn fifty_simultaneous_first_orders_make_one_primary(isolation: &[&str]) {
    let app = spawn_app_with(&[NO_LIMITS, isolation].concat()).await;
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
}

crate::in_both_isolation_modes! {
async fn simultaneous_orders_sharing_one_value_make_one_identity(isolation: &[&str]) {
    let app = spawn_app_with(&[NO_LIMITS, isolation].concat()).await;
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
}

crate::in_both_isolation_modes! {
async fn concurrent_pairwise_links_end_as_one_identity(isolation: &[&str]) {
    let app = spawn_app_with(&[NO_LIMITS, isolation].concat()).await;
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

crate::in_both_isolation_modes! {
async fn a_random_concurrent_mix_matches_the_union_find_model(isolation: &[&str]) {
    let app = spawn_app_with(&[NO_LIMITS, isolation].concat()).await;
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
}

crate::in_both_isolation_modes! {
/// A merge that commits while a request waits for a primary's lock demotes that
/// primary under it: the request must start over and lock the new primary, not
/// write into an identity whose primary it never locked.
async fn a_primary_demoted_while_waiting_for_its_lock_is_not_trusted(isolation: &[&str]) {
    use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};

    let app = spawn_app_with(&[NO_LIMITS, isolation].concat()).await;
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
}

/// The two modes differ where they should (docs/SPEC.md §4): under READ COMMITTED
/// a request waits for its value's advisory lock; under SERIALIZABLE it takes none,
/// and the application's statements run SERIALIZABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_read_committed_takes_value_locks() {
    use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};

    for (isolation, expected) in [(&[][..], "read committed"), (SERIALIZABLE, "serializable")] {
        let app = spawn_app_with(&[NO_LIMITS, isolation].concat()).await;
        let url = app.database.as_ref().unwrap().url.clone();
        let mut holder = AsyncPgConnection::establish(&url).await.unwrap();
        let holder_pid = backend_pid(&mut holder).await;
        holder
            .batch_execute(
                "BEGIN; SELECT pg_advisory_xact_lock(hashtextextended('email:' || 'a@x.io', 0))",
            )
            .await
            .unwrap();
        let order = tokio::spawn({
            let client = app.client.clone();
            let url = app.url("/identify");
            async move {
                let body = json!({"email": "a@x.io", "phoneNumber": "1"});
                client
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        });
        if expected == "read committed" {
            wait_until_blocked_by(&url, holder_pid).await;
            assert!(
                !order.is_finished(),
                "the order did not wait for its value's lock"
            );
            holder.batch_execute("COMMIT").await.unwrap();
            assert_eq!(order.await.unwrap(), 200);
        } else {
            let answered = tokio::time::timeout(std::time::Duration::from_secs(30), order)
                .await
                .expect("the order waited for an advisory lock");
            assert_eq!(answered.unwrap(), 200);
            holder.batch_execute("COMMIT").await.unwrap();
        }
        let running = app
            .query_json("SELECT to_json(current_setting('transaction_isolation')) AS json")
            .await;
        assert_eq!(running, [format!("\"{expected}\"")]);
        app.assert_invariants().await;
    }
}
