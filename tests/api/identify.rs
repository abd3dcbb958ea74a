//! The reconciliation rules of docs/SPEC.md §4 and the original contract's examples, over REST.

use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_example_lorraine_and_mcfly() {
    let app = spawn_app().await;
    let (status, first) = app
        .post_identify(&json!({"email": "lorraine@hillvalley.edu", "phoneNumber": "123456"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        first,
        json!({"contact": {"primaryContatctId": 1, "primaryContactId": 1,
            "emails": ["lorraine@hillvalley.edu"], "phoneNumbers": ["123456"],
            "secondaryContactIds": []}, "outcome": "new_primary"})
    );

    let (status, second) = app
        .post_identify(&json!({"email": "mcfly@hillvalley.edu", "phoneNumber": "123456"}))
        .await;
    assert_eq!(status, 200);
    let expected = json!({"contact": {"primaryContatctId": 1, "primaryContactId": 1,
        "emails": ["lorraine@hillvalley.edu", "mcfly@hillvalley.edu"], "phoneNumbers": ["123456"],
        "secondaryContactIds": [2]}, "outcome": "new_secondary"});
    assert_eq!(second, expected);

    // The seed: every request naming any part of the identity gets the same answer.
    for (email, phone) in [
        (None, Some("123456")),
        (Some("lorraine@hillvalley.edu"), None),
        (Some("mcfly@hillvalley.edu"), None),
        (Some("lorraine@hillvalley.edu"), Some("123456")),
    ] {
        let (status, answer) = app
            .post_identify(&json!({"email": email, "phoneNumber": phone}))
            .await;
        assert_eq!(status, 200);
        let mut expected = expected.clone();
        expected["outcome"] = json!("unchanged");
        assert_eq!(answer, expected, "for {email:?} / {phone:?}");
    }
    assert_eq!(app.row_count().await, 2);
    let rows = app.rows().await;
    assert_eq!(
        (rows[1].linked_id, rows[1].link_precedence.as_str()),
        (Some(1), "secondary")
    );
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_example_george_and_biffsucks_merge() {
    let app = spawn_app().await;
    let george = app
        .identify(Some("george@hillvalley.edu"), Some("919191"))
        .await;
    let biff = app
        .identify(Some("biffsucks@hillvalley.edu"), Some("717171"))
        .await;
    assert_eq!(george["primaryContatctId"], 1);
    assert_eq!(biff["primaryContatctId"], 2);

    let merged = app
        .identify(Some("george@hillvalley.edu"), Some("717171"))
        .await;
    assert_eq!(
        merged,
        json!({"primaryContatctId": 1, "primaryContactId": 1,
            "emails": ["george@hillvalley.edu", "biffsucks@hillvalley.edu"],
            "phoneNumbers": ["919191", "717171"],
            "secondaryContactIds": [2]})
    );
    // The bridge brought no new value: no row was added, the newer primary turned secondary.
    let rows = app.rows().await;
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[1].linked_id, rows[1].link_precedence.as_str()),
        (Some(1), "secondary")
    );
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_request_never_adds_rows() {
    let app = spawn_app().await;
    let first = app.identify(Some("doc@hillvalley.edu"), Some("555")).await;
    for _ in 0..3 {
        assert_eq!(
            app.identify(Some("doc@hillvalley.edu"), Some("555")).await,
            first
        );
    }
    assert_eq!(app.row_count().await, 1);
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_value_request_starts_an_identity_and_later_matches() {
    let app = spawn_app().await;
    let by_email = app.identify(Some("marty@hillvalley.edu"), None).await;
    assert_eq!(by_email["phoneNumbers"], json!([]));
    let by_phone = app.identify(None, Some("+1 (555) 010-0000")).await;
    assert_eq!(by_phone["primaryContactId"], 2);
    assert_eq!(by_phone["emails"], json!([]));
    assert_eq!(by_phone["phoneNumbers"], json!(["+15550100000"]));

    // Linking the two: phone identity (newer) folds into the email identity.
    let linked = app
        .identify(Some("marty@hillvalley.edu"), Some("+15550100000"))
        .await;
    assert_eq!(linked["primaryContactId"], 1);
    assert_eq!(linked["emails"], json!(["marty@hillvalley.edu"]));
    assert_eq!(linked["phoneNumbers"], json!(["+15550100000"]));
    assert_eq!(linked["secondaryContactIds"], json!([2]));
    assert_eq!(app.row_count().await, 2);
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_are_matched_normalised() {
    let app = spawn_app().await;
    app.identify(Some("Lorraine@HillValley.edu"), Some("123-456"))
        .await;
    let again = app
        .identify(Some("  lorraine@hillvalley.EDU "), Some(" (123) 456 "))
        .await;
    assert_eq!(again["emails"], json!(["lorraine@hillvalley.edu"]));
    assert_eq!(again["phoneNumbers"], json!(["123456"]));
    // An integer phone is the same phone as its digits in a string.
    let (status, by_integer) = app.post_identify(&json!({"phoneNumber": 123456})).await;
    assert_eq!(status, 200);
    assert_eq!(by_integer["contact"], again);
    assert_eq!(app.row_count().await, 1);
    // "+123456" keeps its plus and is another phone.
    let plus = app.identify(None, Some("+123456")).await;
    assert_eq!(plus["primaryContactId"], 2);
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_value_adds_one_secondary_with_the_request_values() {
    let app = spawn_app().await;
    app.identify(Some("a@x.io"), Some("1")).await;
    let answer = app.identify(Some("a@x.io"), Some("2")).await;
    assert_eq!(answer["phoneNumbers"], json!(["1", "2"]));
    assert_eq!(answer["secondaryContactIds"], json!([2]));
    let rows = app.rows().await;
    assert_eq!(rows[1].email.as_deref(), Some("a@x.io"));
    assert_eq!(rows[1].phone_number.as_deref(), Some("2"));
    assert_eq!(rows[1].linked_id, Some(1));

    // Matching through a secondary's value answers the whole identity.
    let via_secondary = app.identify(None, Some("2")).await;
    assert_eq!(via_secondary, answer);
    // A new email on a phone-only request is not possible; an email-only new value
    // starts its own identity.
    let other = app.identify(Some("b@x.io"), None).await;
    assert_eq!(other["primaryContactId"], 3);
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_orders_primary_values_first_then_contact_order() {
    let app = spawn_app().await;
    app.identify(Some("p@x.io"), Some("100")).await; // 1: primary
    app.identify(Some("z@x.io"), Some("100")).await; // 2: secondary, email z
    app.identify(Some("b@x.io"), Some("100")).await; // 3: secondary, email b
    app.identify(Some("b@x.io"), Some("050")).await; // 4: secondary, phone 050
    let answer = app.identify(Some("z@x.io"), Some("050")).await;
    assert_eq!(answer["emails"], json!(["p@x.io", "z@x.io", "b@x.io"]));
    assert_eq!(answer["phoneNumbers"], json!(["100", "050"]));
    assert_eq!(answer["secondaryContactIds"], json!([2, 3, 4]));
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_merges_move_the_demoted_primarys_secondaries() {
    let app = spawn_app().await;
    app.identify(Some("a@x.io"), Some("1")).await; // 1: X
    app.identify(Some("b@x.io"), Some("2")).await; // 2: Y
    app.identify(Some("b@x.io"), Some("3")).await; // 3: Y's secondary
    app.identify(Some("c@x.io"), Some("4")).await; // 4: Z
    app.identify(Some("d@x.io"), Some("4")).await; // 5: Z's secondary

    // Y and Z merge: Y is older, Z and its secondary move under Y.
    let yz = app.identify(Some("b@x.io"), Some("4")).await;
    assert_eq!(yz["primaryContactId"], 2);
    assert_eq!(yz["secondaryContactIds"], json!([3, 4, 5]));

    // X and the merged Y merge: everything moves under X, one level deep.
    let all = app.identify(Some("a@x.io"), Some("3")).await;
    assert_eq!(
        all,
        json!({"primaryContatctId": 1, "primaryContactId": 1,
            "emails": ["a@x.io", "b@x.io", "c@x.io", "d@x.io"],
            "phoneNumbers": ["1", "2", "3", "4"],
            "secondaryContactIds": [2, 3, 4, 5]})
    );
    let rows = app.rows().await;
    assert_eq!(rows.len(), 5, "bridges with known values add no rows");
    assert!(
        rows[1..].iter().all(|row| row.linked_id == Some(1)),
        "{rows:?}"
    );
    assert!(
        rows[1..]
            .iter()
            .all(|row| row.link_precedence == "secondary")
    );
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_with_a_new_value_merges_and_adds_a_secondary() {
    let app = spawn_app().await;
    app.identify(Some("a@x.io"), Some("1")).await;
    app.identify(Some("b@x.io"), Some("2")).await;
    // Email matches X, phone matches Y: merge, no new row.
    app.identify(Some("a@x.io"), Some("2")).await;
    assert_eq!(app.row_count().await, 2);
    // Known email, new phone, after the merge: one secondary.
    let answer = app.identify(Some("b@x.io"), Some("9")).await;
    assert_eq!(answer["phoneNumbers"], json!(["1", "2", "9"]));
    assert_eq!(answer["secondaryContactIds"], json!([2, 3]));
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oldest_primary_wins_with_ties_broken_by_id() {
    let app = spawn_app().await;
    // Two primaries created at the same instant, the higher id inserted first.
    app.execute(
        "INSERT INTO contacts (id, email, phone_number, created_at, updated_at) VALUES \
         (10, 'ten@x.io', '10', '2020-01-01T00:00:00Z', '2020-01-01T00:00:00Z'), \
         (5, 'five@x.io', '5', '2020-01-01T00:00:00Z', '2020-01-01T00:00:00Z'), \
         (7, 'seven@x.io', '7', '2019-06-01T00:00:00Z', '2019-06-01T00:00:00Z'); \
         SELECT setval('contacts_id_seq', 10);",
    )
    .await;
    app.backfill_ledger().await;
    let answer = app.identify(Some("ten@x.io"), Some("5")).await;
    assert_eq!(answer["primaryContactId"], 5);
    assert_eq!(answer["secondaryContactIds"], json!([10]));
    // The older-by-time primary beats a lower id.
    let answer = app.identify(Some("seven@x.io"), Some("10")).await;
    assert_eq!(answer["primaryContactId"], 7);
    assert_eq!(
        answer["emails"],
        json!(["seven@x.io", "five@x.io", "ten@x.io"])
    );
    assert_eq!(answer["secondaryContactIds"], json!([5, 10]));
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demotion_bumps_updated_at_and_new_rows_are_younger_than_their_primary() {
    let app = spawn_app().await;
    app.identify(Some("a@x.io"), Some("1")).await;
    app.identify(Some("b@x.io"), Some("2")).await;
    app.identify(Some("a@x.io"), Some("2")).await;
    app.identify(Some("a@x.io"), Some("3")).await;
    let mut conn = app.connection().await;
    #[derive(diesel::QueryableByName)]
    struct Check {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        ok: bool,
    }
    let checks: Vec<Check> = diesel_async::RunQueryDsl::load(
        diesel::sql_query(
            "SELECT (SELECT updated_at > created_at FROM contacts WHERE id = 2) AS ok \
             UNION ALL SELECT (SELECT updated_at = created_at FROM contacts WHERE id = 1) \
             UNION ALL SELECT (SELECT s.created_at > p.created_at FROM contacts s \
                               JOIN contacts p ON p.id = s.linked_id WHERE s.id = 3)",
        ),
        &mut conn,
    )
    .await
    .unwrap();
    assert_eq!(checks.len(), 3);
    assert!(checks.iter().all(|c| c.ok));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_deleted_rows_are_invisible() {
    let app = spawn_app().await;
    app.identify(Some("gone@x.io"), Some("1")).await;
    app.identify(Some("kept@x.io"), Some("1")).await;
    app.execute("UPDATE contacts SET deleted_at = now() WHERE id = 2")
        .await;
    let answer = app.identify(Some("gone@x.io"), None).await;
    assert_eq!(answer["emails"], json!(["gone@x.io"]));
    assert_eq!(answer["secondaryContactIds"], json!([]));
    // The deleted row's email no longer matches: it starts afresh.
    let fresh = app.identify(Some("kept@x.io"), None).await;
    assert_eq!(fresh["primaryContactId"], 3);
    app.execute("UPDATE contacts SET deleted_at = now() WHERE id IN (1, 3)")
        .await;
    let reborn = app.identify(Some("gone@x.io"), Some("1")).await;
    assert_eq!(reborn["primaryContactId"], 4);
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_answer() {
    let app = spawn_app().await;
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    app.execute("DELETE FROM __diesel_schema_migrations").await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
}

/// Statements and round trips per identify, transaction control included
/// (docs/ARCHITECTURE.md "One `POST /identify`"). A merge never inserts: it takes
/// an email of one identity and a phone of another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_path_sends_a_fixed_number_of_statements_and_round_trips() {
    let app = spawn_app().await;
    let cost = |email: &'static str, phone: &'static str| {
        let app = &app;
        async move {
            let (statements, round_trips) = (app.statements.total(), app.statements.round_trips());
            app.identify(Some(email), Some(phone)).await;
            (
                app.statements.total() - statements,
                app.statements.round_trips() - round_trips,
            )
        }
    };
    // The pool's connection sends its own setup and prepares each statement on
    // first use: warm every path once.
    for (email, phone) in [
        ("w@x.io", "90"),
        ("w@x.io", "90"),
        ("w@x.io", "91"),
        ("v@x.io", "92"),
        ("v@x.io", "91"),
    ] {
        app.identify(Some(email), Some(phone)).await;
    }
    // The unlocked read; then BEGIN, the value locks, the conditional insert (with
    // its ledger rows) and COMMIT, pipelined.
    assert_eq!(cost("a@x.io", "1").await, (5, 2), "new primary");
    assert_eq!(
        cost("a@x.io", "1").await,
        (1, 1),
        "repeat: the unlocked read only"
    );
    // The unlocked read; BEGIN; value locks, primary locks, members, blocks
    // (pipelined); the insert; COMMIT.
    assert_eq!(cost("a@x.io", "2").await, (8, 5), "new secondary");
    app.identify(Some("b@x.io"), Some("3")).await;
    assert_eq!(
        cost("b@x.io", "2").await,
        (9, 5),
        "merge: re-link and ledger rows, pipelined"
    );
    assert_eq!(
        cost("b@x.io", "2").await,
        (1, 1),
        "the same bridge again: read only"
    );
    assert_eq!(
        cost("a@x.io", "3").await,
        (1, 1),
        "values of one identity: read only"
    );
    app.assert_invariants().await;
}

/// The first-order pipeline's insert carries a condition, not a rule: it must
/// insert exactly when `decide` on the members it would see says `NewPrimary` and
/// no value is blocked (else the locked path takes over). Checked on random
/// databases of a few identities, soft-deleted contacts and blocked values, each
/// request in a transaction that is rolled back (docs/ARCHITECTURE.md, "One
/// `POST /identify`").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_order_condition_agrees_with_decide() {
    use diesel_async::{AnsiTransactionManager, TransactionManager};
    use identity_reconciliation::db::{contacts, protocol};
    use identity_reconciliation::domain::{Contact, Decision, IdentifyRequest, Limits, decide};

    let app = spawn_app().await;
    // A small value space, so that requests often meet existing contacts.
    let email = |n: u64| format!("m{n}@x.io");
    let phone = |n: u64| format!("70{n}");
    let mut seed = 0x5eed_u64;
    let mut next = move |bound: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % bound
    };
    for _ in 0..12 {
        let (e, p) = (next(24), next(24));
        app.identify(Some(&email(e)), Some(&phone(p))).await;
    }
    app.execute("UPDATE contacts SET deleted_at = now() WHERE id % 5 = 0")
        .await;
    app.execute(&format!(
        "INSERT INTO blocked_values (kind, value, reason, blocked_by) VALUES \
         ('email', '{}', 'test', 'test'), ('phone', '{}', 'test', 'test')",
        email(23),
        phone(22)
    ))
    .await;

    let mut conn = app.connection().await;
    let (mut inserted, mut refused) = (0, 0);
    for _ in 0..300 {
        let e = (next(3) > 0).then(|| email(next(26)));
        let p = (next(3) > 0 || e.is_none()).then(|| phone(next(26)));
        let request = IdentifyRequest::parse(e.as_deref(), p.as_deref()).unwrap();
        AnsiTransactionManager::begin_transaction(&mut *conn)
            .await
            .unwrap();
        let shared: &diesel_async::AsyncPgConnection = &conn;
        let values = protocol::Values::of(&request);
        let members: Vec<Contact> = protocol::load_members_matching(shared, &values)
            .await
            .unwrap()
            .into_iter()
            .map(Contact::from)
            .collect();
        let blocked = protocol::blocked_among(shared, &values).await.unwrap();
        let expected = matches!(
            decide(&request, &members, Limits::default()),
            Decision::NewPrimary
        ) && blocked.is_empty();
        let row = contacts::insert_primary_if_new(shared, request.email(), request.phone(), None)
            .await
            .unwrap();
        AnsiTransactionManager::rollback_transaction(&mut *conn)
            .await
            .unwrap();
        assert_eq!(
            row.is_some(),
            expected,
            "{e:?} {p:?}: members {members:?}, blocked {blocked:?}"
        );
        if expected {
            inserted += 1;
        } else {
            refused += 1;
        }
    }
    // Both answers were exercised, or the check proves little.
    assert!(
        inserted > 20 && refused > 20,
        "{inserted} inserted, {refused} refused"
    );
}
