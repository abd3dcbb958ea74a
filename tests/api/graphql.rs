//! The GraphQL API (docs/SPEC.md §6) over HTTP: every field, pagination, filters, errors,
//! limits, batching, and the schema file.

use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

const IDENTIFY: &str = "mutation Identify($email: String, $phone: String) {
  identify(input: {email: $email, phoneNumber: $phone}) {
    primaryContactId emails phoneNumbers secondaryContactIds
  }
}";

async fn identify(app: &TestApp, email: Option<&str>, phone: Option<&str>) -> Value {
    let data = app
        .graphql_data(IDENTIFY, json!({"email": email, "phone": phone}))
        .await;
    data["identify"].clone()
}

fn error_code(response: &Value) -> &str {
    response["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {response}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_examples_through_graphql() {
    let app = spawn_app().await;
    let first = identify(&app, Some("lorraine@hillvalley.edu"), Some("123456")).await;
    assert_eq!(
        first,
        json!({"primaryContactId": 1, "emails": ["lorraine@hillvalley.edu"],
            "phoneNumbers": ["123456"], "secondaryContactIds": []})
    );
    let second = identify(&app, Some("mcfly@hillvalley.edu"), Some("123456")).await;
    assert_eq!(
        second,
        json!({"primaryContactId": 1,
            "emails": ["lorraine@hillvalley.edu", "mcfly@hillvalley.edu"],
            "phoneNumbers": ["123456"], "secondaryContactIds": [2]})
    );
    identify(&app, Some("george@hillvalley.edu"), Some("919191")).await;
    identify(&app, Some("biffsucks@hillvalley.edu"), Some("717171")).await;
    let merged = identify(&app, Some("george@hillvalley.edu"), Some("717171")).await;
    assert_eq!(
        merged,
        json!({"primaryContactId": 3,
            "emails": ["george@hillvalley.edu", "biffsucks@hillvalley.edu"],
            "phoneNumbers": ["919191", "717171"], "secondaryContactIds": [4]})
    );
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_answers_exactly_what_rest_answers() {
    let rest = spawn_app().await;
    let graphql = spawn_app().await;
    let sequence = [
        (Some("a@x.io"), Some("1")),
        (Some("b@x.io"), Some("2")),
        (Some("B@X.io"), Some("3")),
        (None, Some("(1) ")),
        (Some("a@x.io"), Some("2")),
        (Some("c@x.io"), None),
        (Some("c@x.io"), Some("3")),
        (Some("d@x.io"), Some("+44 1")),
        (Some("a@x.io"), Some("1")),
    ];
    for (email, phone) in sequence {
        let by_rest = rest.identify(email, phone).await;
        let by_graphql = identify(&graphql, email, phone).await;
        for field in [
            "primaryContactId",
            "emails",
            "phoneNumbers",
            "secondaryContactIds",
        ] {
            assert_eq!(
                by_rest[field], by_graphql[field],
                "{field} for {email:?}/{phone:?}"
            );
        }
    }
    assert_eq!(rest.rows().await, graphql.rows().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_bad_input_gets_the_rest_message() {
    let app = spawn_app().await;
    // Every error names its field: the input as a whole when neither value is given.
    for (email, phone, field, rest_field) in [
        (Some("not-an-email"), None, "email", "email"),
        (None, Some("12ab"), "phoneNumber", "phoneNumber"),
        (Some(""), Some(" "), "input", "body"),
        (None, None, "input", "body"),
    ] {
        let response = app
            .graphql(IDENTIFY, json!({"email": email, "phone": phone}))
            .await;
        assert_eq!(error_code(&response), "BAD_USER_INPUT", "{response}");
        let (status, rest) = app
            .post_identify(&json!({"email": email, "phoneNumber": phone}))
            .await;
        assert_eq!(status, 400);
        assert_eq!(response["errors"][0]["message"], rest["error"]["message"]);
        assert_eq!(
            response["errors"][0]["extensions"]["field"].as_str(),
            Some(field),
            "{response}"
        );
        assert_eq!(rest["error"]["field"].as_str(), Some(rest_field), "{rest}");
    }
    // A wrong GraphQL type is refused by validation before any resolver runs.
    let response = app
        .graphql(
            "mutation { identify(input: {phoneNumber: true}) { primaryContactId } }",
            json!({}),
        )
        .await;
    assert_eq!(
        error_code(&response),
        "GRAPHQL_VALIDATION_FAILED",
        "{response}"
    );
    let response = app.graphql("{ nosuchfield }", json!({})).await;
    assert_eq!(
        error_code(&response),
        "GRAPHQL_VALIDATION_FAILED",
        "{response}"
    );
    // Nothing ran, so there is no `data` at all (GraphQL over HTTP).
    assert!(response.get("data").is_none(), "{response}");
    let response = app.graphql("{ contact(id: ", json!({})).await;
    assert_eq!(error_code(&response), "GRAPHQL_PARSE_FAILED", "{response}");
    // Argument errors of our own name their argument.
    let response = app
        .graphql("{ contacts(first: 500) { nodes { id } } }", json!({}))
        .await;
    assert_eq!(error_code(&response), "BAD_USER_INPUT", "{response}");
    assert_eq!(response["errors"][0]["extensions"]["field"], "first");
    let response = app
        .graphql("{ contacts(after: \"x\") { nodes { id } } }", json!({}))
        .await;
    assert_eq!(response["errors"][0]["extensions"]["field"], "after");
    assert_eq!(app.row_count().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_by_id_with_its_primary_and_identity() {
    let app = spawn_app().await;
    app.identify(Some("a@x.io"), Some("1")).await;
    app.identify(Some("b@x.io"), Some("1")).await;
    let query = "query($id: Int!) { contact(id: $id) {
        id email phoneNumber linkedId linkPrecedence createdAt updatedAt
        primary { id linkPrecedence }
        identity { primaryContactId emails phoneNumbers secondaryContactIds
                   primary { id } contacts { nodes { id } } }
    } }";
    let data = app.graphql_data(query, json!({"id": 2})).await;
    let contact = &data["contact"];
    assert_eq!(contact["email"], "b@x.io");
    assert_eq!(contact["phoneNumber"], "1");
    assert_eq!(contact["linkedId"], 1);
    assert_eq!(contact["linkPrecedence"], "SECONDARY");
    assert!(contact["createdAt"].as_str().unwrap().contains('T'));
    assert_eq!(
        contact["primary"],
        json!({"id": 1, "linkPrecedence": "PRIMARY"})
    );
    assert_eq!(
        contact["identity"],
        json!({"primaryContactId": 1, "emails": ["a@x.io", "b@x.io"], "phoneNumbers": ["1"],
            "secondaryContactIds": [2], "primary": {"id": 1},
            "contacts": {"nodes": [{"id": 1}, {"id": 2}]}})
    );
    let primary = app.graphql_data(query, json!({"id": 1})).await;
    assert_eq!(primary["contact"]["primary"]["id"], 1);
    assert_eq!(primary["contact"]["linkedId"], Value::Null);

    // Missing and soft-deleted contacts are null, not errors.
    let missing = app.graphql(query, json!({"id": 999})).await;
    assert_eq!(missing, json!({"data": {"contact": null}}));
    app.execute("UPDATE contacts SET deleted_at = now() WHERE id = 2")
        .await;
    let deleted = app.graphql(query, json!({"id": 2})).await;
    assert_eq!(deleted, json!({"data": {"contact": null}}));
}

const PAGE: &str = "query($filter: ContactFilter, $first: Int, $after: String) {
  contacts(filter: $filter, first: $first, after: $after) {
    edges { cursor node { id } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}";

fn ids(page: &Value) -> Vec<i64> {
    page["contacts"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|edge| edge["node"]["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_paginate_across_pages_in_id_order() {
    let app = spawn_app().await;
    for i in 0..25 {
        app.identify(Some(&format!("c{i}@x.io")), Some(&format!("{}", i % 5)))
            .await;
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = app
            .graphql_data(PAGE, json!({"first": 10, "after": after}))
            .await;
        pages += 1;
        seen.extend(ids(&page));
        let info = &page["contacts"]["pageInfo"];
        assert_eq!(info["hasPreviousPage"], pages > 1);
        if info["hasNextPage"] == false {
            break;
        }
        after = Some(info["endCursor"].as_str().unwrap().to_owned());
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, (1..=25).collect::<Vec<_>>());

    // The default page is 20.
    let page = app.graphql_data(PAGE, json!({})).await;
    assert_eq!(ids(&page).len(), 20);
    assert_eq!(page["contacts"]["pageInfo"]["hasNextPage"], true);
    // An empty page.
    let page = app.graphql_data(PAGE, json!({"first": 0})).await;
    assert_eq!(ids(&page), Vec::<i64>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_filters_combine() {
    let app = spawn_app().await;
    app.identify(Some("a@x.io"), Some("1")).await; // 1
    app.identify(Some("b@x.io"), Some("1")).await; // 2 -> 1
    app.identify(Some("c@x.io"), Some("2")).await; // 3
    app.identify(Some("a@x.io"), Some("3")).await; // 4 -> 1
    let cases = [
        (json!({"email": "A@X.io "}), vec![1, 4]),
        (json!({"phoneNumber": "(1)"}), vec![1, 2]),
        (json!({"linkPrecedence": "PRIMARY"}), vec![1, 3]),
        (json!({"linkPrecedence": "SECONDARY"}), vec![2, 4]),
        (json!({"primaryContactId": 1}), vec![1, 2, 4]),
        (json!({"primaryContactId": 3}), vec![3]),
        (json!({"primaryContactId": 2}), vec![]),
        (
            json!({"primaryContactId": 1, "linkPrecedence": "SECONDARY", "email": "a@x.io"}),
            vec![4],
        ),
    ];
    for (filter, expected) in cases {
        let page = app.graphql_data(PAGE, json!({"filter": filter})).await;
        assert_eq!(ids(&page), expected, "filter {filter}");
    }
    let bad = app
        .graphql(PAGE, json!({"filter": {"email": "nope"}}))
        .await;
    assert_eq!(error_code(&bad), "BAD_USER_INPUT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_size_is_capped_and_cursors_are_checked() {
    let app = spawn_app().await;
    for first in [101, 1000, -1] {
        let response = app.graphql(PAGE, json!({"first": first})).await;
        assert_eq!(
            error_code(&response),
            "BAD_USER_INPUT",
            "first {first}: {response}"
        );
        assert!(
            response["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("100")
        );
    }
    let response = app.graphql(PAGE, json!({"after": "not-a-cursor"})).await;
    assert_eq!(error_code(&response), "BAD_USER_INPUT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_lookup_writes_nothing() {
    let app = spawn_app().await;
    app.identify(Some("a@x.io"), Some("1")).await;
    app.identify(Some("b@x.io"), Some("1")).await;
    app.identify(Some("c@x.io"), Some("2")).await;
    let query = "query($email: String, $phone: String) {
        identity(email: $email, phoneNumber: $phone) {
            primaryContactId emails phoneNumbers secondaryContactIds contacts { nodes { id } }
        } }";
    let rows = app.rows().await;

    let found = app.graphql_data(query, json!({"email": "B@x.io"})).await;
    assert_eq!(
        found["identity"],
        json!({"primaryContactId": 1, "emails": ["a@x.io", "b@x.io"], "phoneNumbers": ["1"],
            "secondaryContactIds": [2], "contacts": {"nodes": [{"id": 1}, {"id": 2}]}})
    );
    // A new value beside a known one: the known identity, and no row is added.
    let found = app
        .graphql_data(query, json!({"email": "new@x.io", "phone": "1"}))
        .await;
    assert_eq!(found["identity"]["primaryContactId"], 1);
    let unknown = app
        .graphql_data(query, json!({"email": "nobody@x.io"}))
        .await;
    assert_eq!(unknown["identity"], Value::Null);
    // Values of two identities: no single answer, and no merge.
    let ambiguous = app
        .graphql(query, json!({"email": "a@x.io", "phone": "2"}))
        .await;
    assert_eq!(error_code(&ambiguous), "BAD_USER_INPUT");
    let invalid = app.graphql(query, json!({})).await;
    assert_eq!(error_code(&invalid), "BAD_USER_INPUT");
    assert_eq!(app.rows().await, rows, "a look-up changed the table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_pages_run_a_fixed_number_of_queries() {
    let app = spawn_app().await;
    for i in 0..120 {
        // Identities of three contacts each, so every level has work to batch.
        app.identify(Some(&format!("n{}@x.io", i / 3)), Some(&format!("{i}")))
            .await;
    }
    let query = "query($first: Int) { contacts(first: $first) { edges { node {
        primary { id } identity { emails contacts(first: 3) { nodes { id } } } } } } }";
    let mut counts = Vec::new();
    for first in [5, 100] {
        let before = app.statements.total();
        let data = app.graphql_data(query, json!({"first": first})).await;
        counts.push(app.statements.total() - before);
        let edges = data["contacts"]["edges"].as_array().unwrap();
        assert_eq!(edges.len(), first as usize);
        let node = &edges[first as usize - 1]["node"];
        assert_eq!(
            node["identity"]["contacts"]["nodes"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
    }
    // The page, then one batch of primaries and one batch of identities.
    assert_eq!(counts, vec![3, 3], "statements per nested page");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abusive_queries_are_refused() {
    let app = spawn_app().await;
    // Depth: identity -> contacts -> identity -> ... far below anything useful.
    let mut deep = String::from("id");
    for _ in 0..8 {
        deep = format!("identity {{ contacts(first: 1) {{ nodes {{ {deep} }} }} }}");
    }
    let response = app
        .graphql(&format!("{{ contact(id: 1) {{ {deep} }} }}"), json!({}))
        .await;
    let message = response["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("nested too deep"), "{response}");
    assert_eq!(error_code(&response), "BAD_USER_INPUT");
    assert!(response.get("data").is_none() || response["data"].is_null());

    // Complexity: many full pages with nested identities under aliases.
    let pages: String = (0..5)
        .map(|i| {
            format!(
                "p{i}: contacts(first: 100) {{ edges {{ node {{ id identity {{ emails }} }} }} }} "
            )
        })
        .collect();
    let response = app.graphql(&format!("{{ {pages} }}"), json!({})).await;
    let message = response["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("too complex"), "{response}");
    // The refusal names the document's cost and the limit, so a client can fix it.
    assert!(message.contains("over the limit of 2500"), "{response}");
    let cost: usize = message
        .split("it costs ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|cost| cost.parse().ok())
        .unwrap_or_else(|| panic!("no cost in {message}"));
    assert!(cost > 2500, "{message}");
    assert_eq!(error_code(&response), "BAD_USER_INPUT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_works_within_the_limits() {
    let app = spawn_app().await;
    // The query GraphiQL sends, abridged to its deepest part.
    let query = "query IntrospectionQuery { __schema { queryType { name } mutationType { name }
      types { ...FullType } } }
      fragment FullType on __Type { kind name description
        fields(includeDeprecated: true) { name args { ...InputValue } type { ...TypeRef } }
        inputFields { ...InputValue } interfaces { ...TypeRef }
        enumValues(includeDeprecated: true) { name } possibleTypes { ...TypeRef } }
      fragment InputValue on __InputValue { name type { ...TypeRef } defaultValue }
      fragment TypeRef on __Type { kind name ofType { kind name ofType { kind name ofType {
        kind name ofType { kind name ofType { kind name ofType { kind name ofType {
        kind name ofType { kind name } } } } } } } } }";
    let data = app.graphql_data(query, json!({})).await;
    assert_eq!(data["__schema"]["mutationType"]["name"], "Mutation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_is_served_without_any_cdn() {
    let app = spawn_app().await;
    let page = app.client.get(app.url("/graphql")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("graphiql"), "not the GraphiQL page");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page loads from elsewhere"
    );
    for asset in [
        "graphiql.min.js",
        "graphiql.min.css",
        "react.production.min.js",
        "react-dom.production.min.js",
    ] {
        assert!(
            html.contains(&format!("/graphql/assets/{asset}")),
            "{asset} not referenced"
        );
        let response = app
            .client
            .get(app.url(&format!("/graphql/assets/{asset}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{asset}");
        assert!(response.bytes().await.unwrap().len() > 1000);
    }
    let missing = app
        .client
        .get(app.url("/graphql/assets/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[test]
fn schema_graphql_is_the_served_schema() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    let served = identity_reconciliation::http::graphql::sdl();
    assert!(
        committed == served,
        "schema.graphql is out of date: run `cargo run -- print-schema > schema.graphql`"
    );
}

/// A nullable variable left out, where an argument with a default wants a value:
/// the client's mistake (found by the subscription tests), not an internal error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_variable_for_a_required_argument_is_the_clients_error() {
    let app = spawn_app().await;
    let answer = app
        .graphql(
            "query($status: HeldStatus) { heldRequests(status: $status) { nodes { id } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        answer["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{answer}"
    );
    assert!(
        answer["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("HeldStatus"),
        "{answer}"
    );
}
