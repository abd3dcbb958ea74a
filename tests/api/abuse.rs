//! Attacks from outside, each a regression test: every bound the server puts on
//! what one client can make it do (GraphQL cost, writes per document, body and
//! response sizes, connections, metric labels), CSRF, input hygiene, and the
//! locked-down private PostgreSQL.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{PostgresThread, TestApp, spawn_app, spawn_app_with};

/// Members of the identity `big_identity` builds.
const BIG: usize = 2_100;

/// One identity of `BIG + 1` contacts sharing a junk phone, written directly (the
/// rules would make the same rows, 2 100 requests slower). Returns the primary's id.
async fn big_identity(app: &TestApp) -> i32 {
    app.execute(&format!(
        "INSERT INTO contacts (email, phone_number, link_precedence, created_at)
             VALUES ('first@x.io', '0000000000', 'primary', now() - interval '1 day');
         INSERT INTO contacts (email, phone_number, linked_id, link_precedence)
             SELECT 'member' || g || '@x.io', '0000000000', 1, 'secondary'
             FROM generate_series(1, {BIG}) AS g;"
    ))
    .await;
    app.backfill_ledger().await;
    1
}

fn error_code(response: &Value) -> &str {
    response["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {response}"))
}

fn error_message(response: &Value) -> &str {
    response["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
}

/// Posts `body` to `/graphql` as JSON; returns the status, the raw length and the answer.
async fn post_graphql(app: &TestApp, body: &Value) -> (u16, usize, Value) {
    let response = app
        .client
        .post(app.url("/graphql"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("status {status}: not JSON: {text:.300}"));
    (status, text.len(), value)
}

// --- 1. Nested lists: every list is paged or bounded, and costed by its bound ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_contacts_cycles_cannot_multiply_an_identity() {
    let app = spawn_app().await;
    let primary = big_identity(&app).await;

    // The original reproduction: an unpaged list under an unpaged list. The list is a
    // connection now, so the document does not even validate.
    let (_, length, response) = post_graphql(
        &app,
        &json!({"query": format!(
            "{{contact(id: {primary}){{identity{{contacts{{identity{{contacts{{id}}}}}}}}}}}}"
        )}),
    )
    .await;
    assert_eq!(
        error_code(&response),
        "GRAPHQL_VALIDATION_FAILED",
        "{response}"
    );
    assert!(length < 2_000, "{length} bytes for a refusal");

    // The same cycle with full pages costs 100 x 100 contacts: refused before running.
    let full_pages = format!(
        "{{contact(id: {primary}){{identity{{contacts(first: 100){{nodes{{identity{{
            contacts(first: 100){{nodes{{id}}}}}}}}}}}}}}}}"
    );
    let (_, length, response) = post_graphql(&app, &json!({"query": full_pages})).await;
    assert!(
        error_message(&response).contains("too complex"),
        "{response}"
    );
    assert!(response["data"].is_null(), "{response}");
    assert!(length < 2_000);

    // With default pages it runs, and its answer is bounded by the page sizes.
    let default_pages = format!(
        "{{contact(id: {primary}){{identity{{contacts{{pageInfo{{hasNextPage}} nodes{{identity{{
            contacts{{nodes{{id}}}}}}}}}}}}}}}}"
    );
    let data = app.graphql_data(&default_pages, json!({})).await;
    let outer = &data["contact"]["identity"]["contacts"];
    assert_eq!(outer["pageInfo"]["hasNextPage"], true);
    let nodes = outer["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 20);
    for node in nodes {
        assert_eq!(
            node["identity"]["contacts"]["nodes"]
                .as_array()
                .unwrap()
                .len(),
            20
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_contacts_pages_through_the_whole_identity() {
    let app = spawn_app().await;
    big_identity(&app).await;
    let query = "query($after: String) { identity(phoneNumber: \"0000000000\") {
        contacts(first: 100, after: $after) { nodes { id } pageInfo { hasNextPage endCursor } } } }";
    let mut seen = Vec::new();
    let mut after = Value::Null;
    loop {
        let data = app.graphql_data(query, json!({"after": after})).await;
        let page = &data["identity"]["contacts"];
        seen.extend(
            page["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|node| node["id"].as_i64().unwrap()),
        );
        if page["pageInfo"]["hasNextPage"] != true {
            break;
        }
        after = page["pageInfo"]["endCursor"].clone();
    }
    let expected: Vec<i64> = (1..=(BIG as i64 + 1)).collect();
    assert_eq!(
        seen, expected,
        "the primary first, then contact order, each once"
    );

    let response = app
        .graphql(
            "{ identity(phoneNumber: \"0000000000\") { contacts(first: 101) { nodes { id } } } }",
            json!({}),
        )
        .await;
    assert_eq!(error_code(&response), "BAD_USER_INPUT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_aliases_of_a_large_identity_are_refused() {
    let app = spawn_app().await;
    big_identity(&app).await;
    // The original reproduction, with the list now a connection.
    let aliases: String = (0..100)
        .map(|i| {
            format!(
                "a{i}: identity(phoneNumber: \"0000000000\") {{ contacts {{ nodes {{ id email phoneNumber }} }} }} "
            )
        })
        .collect();
    let (_, length, response) =
        post_graphql(&app, &json!({"query": format!("{{ {aliases} }}")})).await;
    assert_eq!(error_code(&response), "BAD_USER_INPUT", "{response}");
    assert!(error_message(&response).contains("fields"), "{response}");
    assert!(length < 2_000);
    let aliases: String = (0..100)
        .map(|i| format!("a{i}: identity(phoneNumber: \"0000000000\") {{ emails }} "))
        .collect();
    let (_, _, response) = post_graphql(&app, &json!({"query": format!("{{ {aliases} }}")})).await;
    assert!(
        error_message(&response).contains("100 aliases"),
        "{response}"
    );

    // Under the alias cap, the answer cap still bounds what the lists of values weigh.
    let app = spawn_app_with(&["--graphql-max-response-bytes", "20000"]).await;
    big_identity(&app).await;
    let (status, length, response) = post_graphql(
        &app,
        &json!({"query": "{ identity(phoneNumber: \"0000000000\") { emails } }"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(error_code(&response), "RESPONSE_TOO_LARGE", "{response}");
    assert!(response["data"].is_null());
    assert!(length < 2_000);
}

// --- 2. Writes per document and the rate limit ---

fn aliased_identifies(count: usize, bad_at: Option<usize>) -> String {
    let fields: String = (0..count)
        .map(|i| {
            let email = if Some(i) == bad_at {
                "no-at-sign".to_owned()
            } else {
                format!("alias{i}@x.io")
            };
            format!("a{i}: identify(input: {{email: \"{email}\"}}) {{ primaryContactId }} ")
        })
        .collect();
    format!("mutation {{ {fields} }}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_fields_per_document_are_capped_before_anything_runs() {
    let app = spawn_app_with(&["--graphql-max-identify-per-request", "3"]).await;
    let response = app.graphql(&aliased_identifies(4, None), json!({})).await;
    assert_eq!(error_code(&response), "BAD_USER_INPUT", "{response}");
    assert!(
        error_message(&response).contains("identify 4 times"),
        "{response}"
    );
    assert_eq!(app.row_count().await, 0, "a refused document wrote");

    // Through fragments too: each spread runs its fields again.
    let fragment = "fragment Two on Mutation { a: identify(input: {phoneNumber: \"1\"}) { primaryContactId } \
                    b: identify(input: {phoneNumber: \"2\"}) { primaryContactId } }";
    let response = app
        .graphql(
            &format!("mutation {{ ...Two x: __typename ...Two }} {fragment}"),
            json!({}),
        )
        .await;
    assert!(
        error_message(&response).contains("identify 4 times"),
        "{response}"
    );
    assert_eq!(app.row_count().await, 0);

    let data = app
        .graphql_data(&aliased_identifies(3, None), json!({}))
        .await;
    assert_eq!(data["a2"]["primaryContactId"], 3);

    // 1 250 aliases: refused whole, nothing written. The document alone is over the
    // body limit; under a larger one, the field and identify caps refuse it.
    let (status, _, response) =
        post_graphql(&app, &json!({"query": aliased_identifies(1_250, None)})).await;
    assert_eq!(status, 413, "{response}");
    let app = spawn_app_with(&["--graphql-body-limit-bytes", "1000000"]).await;
    let response = app
        .graphql(&aliased_identifies(1_250, None), json!({}))
        .await;
    assert_eq!(error_code(&response), "BAD_USER_INPUT");
    assert_eq!(app.row_count().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_invalid_identify_refuses_the_whole_document() {
    let app = spawn_app().await;
    let response = app
        .graphql(&aliased_identifies(10, Some(6)), json!({}))
        .await;
    assert_eq!(error_code(&response), "BAD_USER_INPUT", "{response}");
    assert_eq!(response["errors"][0]["path"], json!(["a6"]));
    assert_eq!(response["errors"][0]["extensions"]["field"], "email");
    assert!(response["data"].is_null(), "{response}");
    assert_eq!(app.row_count().await, 0, "the nine valid ones committed");

    // The same through a variable.
    let query = "mutation($bad: IdentifyInput!) {
        a: identify(input: {email: \"ok@x.io\"}) { primaryContactId }
        b: identify(input: $bad) { primaryContactId } }";
    let response = app
        .graphql(query, json!({"bad": {"phoneNumber": "12a"}}))
        .await;
    assert_eq!(response["errors"][0]["extensions"]["field"], "phoneNumber");
    assert_eq!(app.row_count().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_identify_counts_against_the_rate_limit() {
    let app = spawn_app_with(&["--rate-limit-per-second", "0.01", "--rate-limit-burst", "3"]).await;
    // More than the burst can ever allow at once: a client error, not a retry later.
    let response = app.graphql(&aliased_identifies(4, None), json!({})).await;
    assert_eq!(error_code(&response), "BAD_USER_INPUT", "{response}");
    assert_eq!(app.row_count().await, 0);

    // The refused document still paid its one request token: 2 remain, and a
    // document of 3 needs 3.
    let response = app
        .client
        .post(app.url("/graphql"))
        .json(&json!({"query": aliased_identifies(3, None)}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "RATE_LIMITED");
    assert_eq!(app.row_count().await, 0, "a rate-limited document wrote");

    // That one paid its request token too: 1 remains, enough for one identify.
    let data = app
        .graphql_data(&aliased_identifies(1, None), json!({}))
        .await;
    assert_eq!(data["a0"]["primaryContactId"], 1);
    let (status, _) = app.post_identify(&json!({"phoneNumber": "1"})).await;
    assert_eq!(status, 429, "the bucket is empty");
}

// --- 3. CSRF: only JSON is executed ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_executes_only_json_bodies() {
    let app = spawn_app().await;
    let mutation =
        r#"{"query": "mutation { identify(input: {phoneNumber: \"1\"}) { primaryContactId } }"}"#;
    for content_type in [
        Some("text/plain"),
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/graphql"),
        None,
    ] {
        let mut request = app.client.post(app.url("/graphql")).body(mutation);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 415, "{content_type:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            error_code(&body),
            "UNSUPPORTED_MEDIA_TYPE",
            "{content_type:?}"
        );
    }
    // A GET, even with a query string, serves GraphiQL and runs nothing.
    let response = app
        .client
        .get(app.url("/graphql"))
        .query(&[(
            "query",
            "mutation { identify(input: {phoneNumber: \"1\"}) { primaryContactId } }",
        )])
        .send()
        .await
        .unwrap();
    assert!(response.text().await.unwrap().contains("<html"));
    assert_eq!(app.row_count().await, 0, "a cross-site body was executed");

    for content_type in ["application/json", "application/graphql-response+json"] {
        let response = app
            .client
            .post(app.url("/graphql"))
            .header("content-type", content_type)
            .body(mutation)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{content_type}");
    }
}

// --- 4. Body limits, oversized lengths, error counts ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_bodies_are_limited() {
    let app = spawn_app().await;
    let padding = " ".repeat(100 * 1024);
    let response = app
        .client
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .body(format!(r#"{{"query": "{{ __typename }}{padding}"}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "PAYLOAD_TOO_LARGE");

    // A 50 MB Content-Length is refused at once, without waiting for the body.
    for path in ["/graphql", "/identify"] {
        let mut socket = TcpStream::connect(app.address).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n\r\n{{"
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut answer))
            .await
            .expect("413 came before the request timeout")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..read]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_in_one_answer_are_capped() {
    let app = spawn_app().await;
    let unknown: String = (0..250).map(|i| format!("f{i} ")).collect();
    let (_, length, response) =
        post_graphql(&app, &json!({"query": format!("{{ {unknown} }}")})).await;
    let errors = response["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 20, "{response}");
    assert!(
        errors[19]["message"]
            .as_str()
            .unwrap()
            .contains("231 more errors")
    );
    assert!(length < 10_000);

    let directives = "@skip(if: false) ".repeat(50);
    let response = app
        .graphql(&format!("{{ __typename {directives} }}"), json!({}))
        .await;
    assert_eq!(error_code(&response), "BAD_USER_INPUT", "{response}");
    assert!(response["errors"].as_array().unwrap().len() <= 20);
}

// --- 5. Idle and half-sent connections ---

/// Waits until the server closes `socket` (a read returns end of file), for at most
/// `limit`; true if it did.
async fn closed_within(socket: &mut TcpStream, limit: Duration) -> bool {
    let mut buffer = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_sent_connections_are_closed() {
    let app = spawn_app_with(&[
        "--http-header-timeout-secs",
        "1",
        "--http-idle-timeout-secs",
        "2",
    ])
    .await;
    // Slowloris: a head that never ends, a byte at a time.
    let mut slow = TcpStream::connect(app.address).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut trickle = Box::pin(async {
        for _ in 0..100 {
            if slow.write_all(b"X").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(4), &mut trickle).await;
    drop(trickle);
    assert!(
        closed_within(&mut slow, Duration::from_secs(3)).await,
        "a trickled head kept its connection"
    );

    // A connection that never sends a byte.
    let mut idle = TcpStream::connect(app.address).await.unwrap();
    assert!(closed_within(&mut idle, Duration::from_secs(10)).await);

    // A keep-alive connection after its answer.
    let mut kept = TcpStream::connect(app.address).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(closed_within(&mut kept, Duration::from_secs(10)).await);

    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("http_connections_closed_total{reason=\"header_timeout\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_are_served_while_the_connection_cap_is_reached() {
    let app = spawn_app_with(&["--max-connections", "20"]).await;
    let mut hogs = Vec::new();
    for _ in 0..40 {
        let mut socket = TcpStream::connect(app.address).await.unwrap();
        let _ = socket.write_all(b"GET /healthz HTTP/1.1\r\nHost").await;
        hogs.push(socket);
    }
    for attempt in 0..5 {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let response = client
            .post(app.url("/identify"))
            .json(&json!({"phoneNumber": format!("{attempt}")}))
            .send()
            .await
            .unwrap_or_else(|err| panic!("attempt {attempt}: {err}"));
        assert_eq!(response.status(), 200);
    }
    let metrics = reqwest::get(app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let evicted = metrics
        .lines()
        .find_map(|line| line.strip_prefix("http_connections_closed_total{reason=\"evicted\"} "))
        .and_then(|count| count.parse::<u64>().ok())
        .unwrap();
    assert!(evicted >= 20, "{metrics}");
    let open = metrics
        .lines()
        .find_map(|line| line.strip_prefix("http_connections_open "))
        .and_then(|count| count.parse::<u64>().ok())
        .unwrap();
    assert!(open <= 20, "{open} connections open over a cap of 20");
}

// --- 6. Metric labels ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_do_not_grow_the_metrics() {
    let app = spawn_app().await;
    for i in 0..13 {
        let method = format!("M{}", "X".repeat(8_000 + i));
        let mut socket = TcpStream::connect(app.address).await.unwrap();
        socket
            .write_all(
                format!("{method} /identify HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut answer)).await;
    }
    let metrics = app.metrics_text().await;
    assert!(!metrics.contains("XXXX"), "a method became a label");
    assert!(metrics.len() < 20_000, "{} bytes of metrics", metrics.len());
}

// --- 7. The private PostgreSQL lets nobody in without its password ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_postgres_requires_its_password() {
    use identity_reconciliation::ops::embedded::password_file;

    use crate::helpers::throwaway_cluster;
    use std::os::unix::fs::PermissionsExt;

    let root = tempfile::tempdir().unwrap();
    let options = throwaway_cluster(root.path());
    let attempt = |url: String| async move {
        tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .map(drop)
            .map_err(|err| match std::error::Error::source(&err) {
                Some(source) => format!("{err}: {source}"),
                None => err.to_string(),
            })
    };
    let start = || PostgresThread::start(options.clone());

    let server = start();
    let with_password = server.url.clone();
    let without_password = format!("postgres://postgres@127.0.0.1:{}/postgres", server.port);
    attempt(with_password.clone())
        .await
        .expect("the password lets us in");
    // The server asks for a password the client does not have...
    let refused = attempt(without_password.clone()).await.unwrap_err();
    assert!(refused.contains("password"), "{refused}");
    // ...and refuses a wrong one.
    let wrong = attempt(without_password.replace("postgres@", "postgres:guess@"))
        .await
        .unwrap_err();
    assert!(wrong.contains("password authentication failed"), "{wrong}");
    let file = password_file(&options.data_dir);
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let hba = std::fs::read_to_string(options.data_dir.join("pg_hba.conf")).unwrap();
    assert!(!hba.contains("trust"), "{hba}");
    server.stop();

    // A cluster from a build that trusted every local connection gets a password.
    std::fs::remove_file(&file).unwrap();
    std::fs::write(
        options.data_dir.join("pg_hba.conf"),
        "host all all 127.0.0.1/32 trust\n",
    )
    .unwrap();
    let server = start();
    attempt(server.url.clone())
        .await
        .expect("the new password works");
    assert_ne!(
        server.url.split('@').next(),
        with_password.split('@').next(),
        "a new password"
    );
    let without_password = format!("postgres://postgres@127.0.0.1:{}/postgres", server.port);
    assert!(attempt(without_password).await.is_err(), "still trusted");
    server.stop();
}

// --- 8. Input hygiene ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unicode_spellings_of_one_email_are_one_customer() {
    let app = spawn_app().await;
    let composed = app.identify(Some("ren\u{e9}@caf\u{e9}.fr"), None).await;
    let decomposed = app.identify(Some("rene\u{301}@cafe\u{301}.fr"), None).await;
    assert_eq!(composed, decomposed);
    let fullwidth = app
        .identify(
            Some("ＬＯＲＲＡＩＮＥ＠ｈｉｌｌｖａｌｌｅｙ．ｅｄｕ"),
            Some("１２３"),
        )
        .await;
    let ascii = app
        .identify(Some("lorraine@hillvalley.edu"), Some("123"))
        .await;
    assert_eq!(fullwidth, ascii);
    assert_eq!(app.row_count().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invisible_characters_and_repeated_keys_are_refused() {
    let app = spawn_app().await;
    for (email, code) in [
        ("a\u{200B}@x.io", "U+200B"),
        ("\u{FEFF}a@x.io", "U+FEFF"),
        ("evil\u{202E}oi.x@a", "U+202E"),
    ] {
        let (status, body) = app.post_identify(&json!({"email": email})).await;
        assert_eq!(status, 400, "{email:?}");
        assert_eq!(body["error"]["field"], "email");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(code),
            "{body}"
        );
    }
    // Whitespace around a value is trimmed, as it always was, control or not.
    let contact = app.identify(Some("\ttrimmed@x.io\r\n"), None).await;
    assert_eq!(contact["emails"], json!(["trimmed@x.io"]));
    app.execute("DELETE FROM contacts").await;

    let (status, body) = app
        .post_raw(
            Some("application/json"),
            r#"{"email": "a@x.io", "email": "b@x.io"}"#,
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["field"], "email", "{body}");
    let (status, body) = app
        .post_raw(
            Some("application/json"),
            r#"{"phoneNumber": "1", "email": "a@x.io", "phoneNumber": "2"}"#,
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["field"], "phoneNumber", "{body}");

    let response = app
        .client
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .body(r#"{"query": "{ __typename }", "query": "mutation { identify(input: {phoneNumber: \"1\"}) { primaryContactId } }"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "BAD_REQUEST");
    assert!(error_message(&body).contains("duplicate key"), "{body}");
    assert_eq!(app.row_count().await, 0);
}

// --- 9. Transport errors, null propagation, security headers ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_errors_are_graphql_json_with_a_code() {
    let app = spawn_app().await;
    for (body, status, code) in [
        ("{not json", 400, "BAD_REQUEST"),
        (r#"[{"query": "{ __typename }"}]"#, 400, "BAD_REQUEST"),
        (r#"{"query": 5}"#, 400, "BAD_REQUEST"),
        (r#""text""#, 400, "BAD_REQUEST"),
        (r#"{"variables": {}}"#, 400, "BAD_REQUEST"),
    ] {
        let response = app
            .client
            .post(app.url("/graphql"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{body}");
        let answer: Value = response
            .json()
            .await
            .unwrap_or_else(|_| panic!("{body}: not JSON"));
        assert_eq!(error_code(&answer), code, "{body}: {answer}");
    }
    let response = app.client.put(app.url("/graphql")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(error_code(&answer), "METHOD_NOT_ALLOWED", "{answer}");
    let response = app
        .client
        .post(app.url("/graphql"))
        .form(&[("query", "{ __typename }")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(error_code(&answer), "UNSUPPORTED_MEDIA_TYPE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_non_null_field_nulls_its_parent() {
    let app = spawn_app().await;
    app.identify(Some("a@x.io"), Some("1")).await;
    app.identify(Some("b@x.io"), Some("1")).await;
    // The primary gone from under its secondary: `primary` (non-null) cannot answer.
    app.execute("UPDATE contacts SET deleted_at = now() WHERE id = 1")
        .await;
    let response = app
        .graphql(
            "{ contact(id: 2) { id primary { id } } other: contact(id: 2) { id } }",
            json!({}),
        )
        .await;
    assert_eq!(response["data"]["contact"], Value::Null, "{response}");
    assert_eq!(response["data"]["other"]["id"], 2, "{response}");
    assert_eq!(response["errors"][0]["path"], json!(["contact", "primary"]));
    assert_eq!(error_code(&response), "NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_headers_are_set() {
    let app = spawn_app().await;
    for path in [
        "/healthz",
        "/graphql",
        "/metrics",
        "/openapi.json",
        "/graphql/assets/init.js",
    ] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        let headers = response.headers();
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(
            policy.contains("frame-ancestors 'none'"),
            "{path}: {policy}"
        );
    }
    let page = app.client.get(app.url("/graphql")).send().await.unwrap();
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(!policy.contains("unsafe"), "{policy}");
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("<script>") && !html.contains("<style>"),
        "inline code on the page"
    );
    let (_, body) = app.post_identify(&json!({"email": 5})).await;
    assert_eq!(body["error"]["field"], "email");
}
