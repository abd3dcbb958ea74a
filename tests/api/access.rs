//! Access control (docs/SPEC.md §9): every route and every GraphQL root field ×
//! {no credential, malformed header, unknown key, wrong secret, revoked key,
//! insufficient scope, right scope}; the modes; keys stored hashed; revocation
//! across processes; the CLI; secrets never logged.

use std::process::Command;
use std::time::{Duration, Instant};

use identity_reconciliation::auth::{self, Scope, keys};
use serde_json::{Value, json};

use crate::helpers::{SERVER_BINARY, ServerProcess, TestApp, TestDatabase, spawn_app_with};

/// Credentials of every kind, made on `app`'s database.
struct Credentials {
    identify: String,
    read: String,
    revoked: String,
    unknown: String,
    wrong_secret: String,
}

async fn credentials(app: &TestApp) -> Credentials {
    let mut conn = app.connection().await;
    let (_, identify) = auth::create_key(&mut conn, "checkout", &[Scope::Identify])
        .await
        .unwrap();
    let (_, read) = auth::create_key(&mut conn, "back office", &[Scope::Read])
        .await
        .unwrap();
    let (revoked_id, revoked) = auth::create_key(&mut conn, "old", &[Scope::Identify, Scope::Read])
        .await
        .unwrap();
    identity_reconciliation::db::api_keys::revoke(&mut conn, &revoked_id)
        .await
        .unwrap();
    let unknown = keys::generate().unwrap().token;
    // A real key's id with a secret that is not its own.
    let id = keys::parse(&identify).unwrap().id.to_owned();
    let wrong_secret = format!("irk_{id}_{}", "0".repeat(64));
    Credentials {
        identify,
        read,
        revoked,
        unknown,
        wrong_secret,
    }
}

/// Every way to fail authentication, as the `Authorization` header sent.
fn refused(credentials: &Credentials) -> Vec<(&'static str, Option<String>)> {
    vec![
        ("no header", None),
        ("not bearer", Some("Basic dXNlcjpwYXNz".to_owned())),
        ("empty bearer", Some("Bearer ".to_owned())),
        ("not a key", Some("Bearer hunter2".to_owned())),
        (
            "alg none JWT",
            Some("Bearer eyJhbGciOiJub25lIn0.eyJzY29wZSI6InJlYWQifQ.".to_owned()),
        ),
        (
            "unknown key",
            Some(format!("Bearer {}", credentials.unknown)),
        ),
        (
            "wrong secret",
            Some(format!("Bearer {}", credentials.wrong_secret)),
        ),
        (
            "revoked key",
            Some(format!("Bearer {}", credentials.revoked)),
        ),
    ]
}

async fn post_identify_as(
    app: &TestApp,
    authorization: Option<&str>,
    phone: &str,
) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/identify"))
        .json(&json!({"phoneNumber": phone}));
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    request.send().await.unwrap()
}

async fn graphql_as(app: &TestApp, authorization: Option<&str>, query: &str) -> Value {
    let mut request = app
        .client
        .post(app.url("/graphql"))
        .json(&json!({"query": query}));
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn code(response: &Value, index: usize) -> &str {
    response["errors"][index]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no code in {response}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_identify_needs_a_key_with_the_identify_scope() {
    let app = spawn_app_with(&["--auth-mode", "required", "--auth-cache-secs", "0"]).await;
    let credentials = credentials(&app).await;
    for (case, authorization) in refused(&credentials) {
        let response = post_identify_as(&app, authorization.as_deref(), "1").await;
        assert_eq!(response.status(), 401, "{case}");
        let challenge = response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(challenge.starts_with("Bearer"), "{case}: {challenge}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "UNAUTHENTICATED", "{case}");
    }
    let read_only = format!("Bearer {}", credentials.read);
    let response = post_identify_as(&app, Some(&read_only), "1").await;
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "FORBIDDEN");
    assert_eq!(app.row_count().await, 0, "a refused request wrote");

    let allowed = format!("Bearer {}", credentials.identify);
    let response = post_identify_as(&app, Some(&allowed), "1").await;
    assert_eq!(response.status(), 200);
    assert_eq!(app.row_count().await, 1);
    // Probes, the OpenAPI document and the GraphiQL page stay open.
    for path in [
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/graphql",
        "/metrics",
    ] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_fields_are_guarded_one_by_one() {
    let app = spawn_app_with(&["--auth-mode", "required", "--auth-cache-secs", "0"]).await;
    let credentials = credentials(&app).await;
    let identify_key = format!("Bearer {}", credentials.identify);
    let read_key = format!("Bearer {}", credentials.read);
    app.identify_as(&identify_key, "a@x.io", "1").await;

    let reads = [
        "{ __typename contact(id: 1) { email } }",
        "{ __typename contacts { nodes { email } } }",
        "{ __typename identity(email: \"a@x.io\") { emails } }",
    ];
    let write = "mutation { __typename identify(input: {phoneNumber: \"2\"}) { emails } }";
    for (case, authorization) in refused(&credentials) {
        for query in reads.iter().chain([&write]) {
            let response = graphql_as(&app, authorization.as_deref(), query).await;
            assert_eq!(
                code(&response, 0),
                "UNAUTHENTICATED",
                "{case}: {query}: {response}"
            );
            assert!(
                !response.to_string().contains("a@x.io"),
                "{case}: {response}"
            );
            // The other fields of the operation still resolve, unless the refused
            // field is non-null (`contacts`, `identify`): then, as GraphQL requires,
            // its null takes `data` with it.
            let non_null_root = query.contains("contacts") || query.contains("identify(");
            if non_null_root {
                assert!(response["data"].is_null(), "{case}: {response}");
            } else {
                assert!(
                    response["data"]["__typename"].is_string(),
                    "{case}: {response}"
                );
            }
        }
    }
    // Right credential, wrong scope: FORBIDDEN and no data; right scope: the data.
    for query in reads {
        let response = graphql_as(&app, Some(&identify_key), query).await;
        assert_eq!(code(&response, 0), "FORBIDDEN", "{query}: {response}");
        assert!(!response.to_string().contains("a@x.io"), "{response}");
        let response = graphql_as(&app, Some(&read_key), query).await;
        assert!(response.get("errors").is_none(), "{query}: {response}");
        assert!(
            response.to_string().contains("a@x.io"),
            "{query}: {response}"
        );
    }
    let response = graphql_as(&app, Some(&read_key), write).await;
    assert_eq!(code(&response, 0), "FORBIDDEN", "{response}");
    let response = graphql_as(&app, Some(&identify_key), write).await;
    assert!(response.get("errors").is_none(), "{response}");
    assert_eq!(app.row_count().await, 2, "only the allowed identify wrote");
}

impl TestApp {
    async fn identify_as(&self, authorization: &str, email: &str, phone: &str) {
        let response = self
            .client
            .post(self.url("/identify"))
            .header("authorization", authorization)
            .json(&json!({"email": email, "phoneNumber": phone}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_needs_a_principal_and_can_be_turned_off() {
    let schema = "{ __schema { queryType { name } } }";
    let app = spawn_app_with(&["--auth-mode", "required", "--auth-cache-secs", "0"]).await;
    let credentials = credentials(&app).await;
    let response = graphql_as(&app, None, schema).await;
    assert!(response["data"]["__schema"].is_null(), "{response}");
    // Refused with a reason GraphiQL can show, not a silent null it cannot read.
    assert_eq!(code(&response, 0), "UNAUTHENTICATED", "{response}");
    let message = response["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("Authorization"), "{message}");
    let key = format!("Bearer {}", credentials.identify);
    let response = graphql_as(&app, Some(&key), schema).await;
    assert_eq!(response["data"]["__schema"]["queryType"]["name"], "Query");

    let app = spawn_app_with(&["--auth-mode", "required", "--introspection", "off"]).await;
    let credentials = self::credentials(&app).await;
    let key = format!("Bearer {}", credentials.identify);
    let response = graphql_as(&app, Some(&key), schema).await;
    assert!(response["data"]["__schema"].is_null(), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_mode_requires_keys_once_one_exists() {
    let app = spawn_app_with(&["--auth-cache-secs", "0"]).await;
    // No key: the zero-setup server on loopback serves everyone.
    assert_eq!(post_identify_as(&app, None, "1").await.status(), 200);
    let mut conn = app.connection().await;
    let (_, key) = auth::create_key(&mut conn, "first", &[Scope::Identify])
        .await
        .unwrap();
    drop(conn);
    assert_eq!(post_identify_as(&app, None, "2").await.status(), 401);
    let key = format!("Bearer {key}");
    assert_eq!(post_identify_as(&app, Some(&key), "2").await.status(), 200);

    let app = spawn_app_with(&["--auth-mode", "off", "--auth-cache-secs", "0"]).await;
    credentials(&app).await;
    assert_eq!(
        post_identify_as(&app, None, "1").await.status(),
        200,
        "off means off"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_stored_only_as_hashes() {
    let app = spawn_app_with(&["--auth-mode", "required"]).await;
    let mut conn = app.connection().await;
    let (id, key) = auth::create_key(&mut conn, "stored", &[Scope::Read])
        .await
        .unwrap();
    drop(conn);
    let secret = keys::parse(&key).unwrap().secret.to_owned();
    let rows = app
        .query_json("SELECT row_to_json(api_keys)::text AS json FROM api_keys")
        .await;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert!(!row.contains(&secret), "the secret is stored: {row}");
    let stored: Value = serde_json::from_str(row).unwrap();
    assert_eq!(stored["id"], id);
    assert_eq!(stored["secret_sha256"], keys::secret_sha256(&secret));
    assert_eq!(stored["scopes"], json!(["read"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_principal_has_a_rate_limit_of_its_own() {
    let app = spawn_app_with(&[
        "--auth-mode",
        "required",
        "--rate-limit-per-second",
        "0.01",
        "--rate-limit-burst",
        "1",
    ])
    .await;
    let mut conn = app.connection().await;
    let (_, first) = auth::create_key(&mut conn, "a", &[Scope::Identify])
        .await
        .unwrap();
    let (_, second) = auth::create_key(&mut conn, "b", &[Scope::Identify])
        .await
        .unwrap();
    drop(conn);
    let (first, second) = (format!("Bearer {first}"), format!("Bearer {second}"));
    assert_eq!(
        post_identify_as(&app, Some(&first), "1").await.status(),
        200
    );
    assert_eq!(
        post_identify_as(&app, Some(&first), "2").await.status(),
        429
    );
    // Same address, another principal: a bucket of its own.
    assert_eq!(
        post_identify_as(&app, Some(&second), "3").await.status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_require_a_token() {
    let app = spawn_app_with(&["--metrics-token", "scrape-me"]).await;
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let response = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("scrape-me")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("auth_failures_total")
    );
}

fn server(args: &[&str], database_url: &str) -> std::process::Output {
    Command::new(SERVER_BINARY)
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_refuses_to_serve_anonymously_off_loopback() {
    let database = TestDatabase::create().await;
    let output = server(&["--host", "0.0.0.0", "--port", "0"], &database.url);
    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("--allow-anonymous"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_lists_and_revokes_keys_and_revocation_reaches_a_running_server() {
    let database = TestDatabase::create().await;
    let created = server(
        &[
            "keys",
            "create",
            "--name",
            "ci job",
            "--scopes",
            "identify,read",
        ],
        &database.url,
    );
    assert!(created.status.success(), "{created:?}");
    let stdout = String::from_utf8(created.stdout).unwrap();
    let key = stdout.lines().last().unwrap().trim().to_owned();
    let parsed = keys::parse(&key).expect("the last line is the key, alone");
    let (id, secret) = (parsed.id.to_owned(), parsed.secret.to_owned());

    let listed = server(&["keys", "list"], &database.url);
    let listing = String::from_utf8(listed.stdout).unwrap();
    assert!(
        listing.contains(&id) && listing.contains("ci job"),
        "{listing}"
    );
    assert!(!listing.contains(&secret), "{listing}");

    let bad = server(
        &["keys", "create", "--name", "x", "--scopes", "root"],
        &database.url,
    );
    assert!(!bad.status.success());

    // A server process trusts a verified key for at most its cache time.
    let running = ServerProcess::start_with(
        &database.url,
        0,
        &[
            ["--auth-mode", "required", "--auth-cache-secs", "2"].as_slice(),
            &hs256_flags(),
        ]
        .concat(),
    )
    .await;
    let client = reqwest::Client::new();
    let call = |authorization: String| {
        let request = client
            .post(running.url("/identify"))
            .header("authorization", authorization)
            .json(&json!({"phoneNumber": "123"}));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(call(format!("Bearer {key}")).await, 200);
    assert_eq!(
        call(format!("Bearer irk_{id}_{}", "f".repeat(64))).await,
        401
    );
    let token = hs256(&claims("identify"), SHARED_SECRET);
    assert_eq!(call(format!("Bearer {token}")).await, 200);
    let forged = hs256(
        &claims("identify"),
        "a forged secret that is long enough!!!",
    );
    assert_eq!(call(format!("Bearer {forged}")).await, 401);
    // A GraphQL read with nested identities: one audit line counting them all.
    let nested: Value = client
        .post(running.url("/graphql"))
        .header("authorization", format!("Bearer {key}"))
        .json(&json!({"query": "{ contacts(first: 1) { nodes { identity { emails } } } }"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(nested.get("errors").is_none(), "{nested}");

    let revoked = server(&["keys", "revoke", &id], &database.url);
    assert!(revoked.status.success(), "{revoked:?}");
    let revoked_at = Instant::now();
    while call(format!("Bearer {key}")).await != 401 {
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "the revoked key still works after the 2 s cache time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !server(&["keys", "revoke", "0123456789abcdef"], &database.url)
            .status
            .success()
    );

    // No key, secret or token ever reached a log line; the audit lines did.
    let logs = running.logs.lock().unwrap().join("\n");
    assert!(!logs.contains(&secret), "a secret was logged");
    for part in token.split('.').chain(forged.split('.')).skip(1) {
        assert!(!logs.contains(part), "a token was logged");
    }
    assert!(!logs.contains(SHARED_SECRET), "the JWT secret was logged");
    assert!(
        logs.contains("jwt:user-42"),
        "no audit line names the token's subject"
    );
    assert!(
        logs.contains(&format!("key:{id}")),
        "no audit line names the key: {logs}"
    );
    assert!(logs.contains("contact data read"), "{logs}");
    assert!(
        logs.lines()
            .any(|line| line.contains("\"operation\":\"contacts\"")
                && line.contains("\"contacts\":2")),
        "the nested identity was not counted: {logs}"
    );
}

// --- JWT ---

const ISSUER: &str = "https://id.example.test";
const AUDIENCE: &str = "identity-api";
const SHARED_SECRET: &str = "a shared secret that is long enough!!";

/// The flags of a server taking HS256 JWTs from our test issuer.
fn hs256_flags() -> [&'static str; 6] {
    [
        "--jwt-secret",
        SHARED_SECRET,
        "--jwt-issuer",
        ISSUER,
        "--jwt-audience",
        AUDIENCE,
    ]
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn hs256(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn claims(scope: &str) -> Value {
    json!({"sub": "user-42", "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 300, "scope": scope})
}

/// An ES256 key pair: the signing key and its public JWK.
struct EcKey {
    signing: jsonwebtoken::EncodingKey,
    jwk: Value,
}

fn ec_key(kid: &str) -> EcKey {
    use p256::pkcs8::EncodePrivateKey;
    let mut bytes = [0u8; 32];
    let secret = loop {
        getrandom::fill(&mut bytes).unwrap();
        if let Ok(secret) = p256::SecretKey::from_slice(&bytes) {
            break secret;
        }
    };
    let der = secret.to_pkcs8_der().unwrap();
    let mut jwk: Value = serde_json::from_str(&secret.public_key().to_jwk_string()).unwrap();
    jwk["kid"] = json!(kid);
    jwk["alg"] = json!("ES256");
    jwk["use"] = json!("sig");
    EcKey {
        signing: jsonwebtoken::EncodingKey::from_ec_der(der.as_bytes()),
        jwk,
    }
}

fn es256(claims: &Value, key: &EcKey, kid: &str) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key.signing).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_tokens_with_scopes_and_every_way_a_token_is_refused() {
    let app = spawn_app_with(&hs256_flags()).await;
    // JWTs configured: auto mode requires credentials even with no key.
    assert_eq!(post_identify_as(&app, None, "1").await.status(), 401);

    let mut expired = claims("identify read");
    expired["exp"] = json!(now() - 600);
    let mut wrong_audience = claims("identify read");
    wrong_audience["aud"] = json!("another-service");
    let mut wrong_issuer = claims("identify read");
    wrong_issuer["iss"] = json!("https://evil.example.test");
    let refused = [
        ("expired", hs256(&expired, SHARED_SECRET)),
        ("wrong audience", hs256(&wrong_audience, SHARED_SECRET)),
        ("wrong issuer", hs256(&wrong_issuer, SHARED_SECRET)),
        (
            "bad signature",
            hs256(&claims("identify read"), "not the secret at all, but long"),
        ),
        (
            "alg none",
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4In0.".to_owned(),
        ),
    ];
    let fields = [
        "{ contact(id: 1) { id } }",
        "{ contacts { nodes { email } } }",
        "{ identity(phoneNumber: \"1\") { emails } }",
        "mutation { identify(input: {phoneNumber: \"1\"}) { emails } }",
    ];
    for (case, token) in &refused {
        let authorization = format!("Bearer {token}");
        let response = post_identify_as(&app, Some(&authorization), "1").await;
        assert_eq!(response.status(), 401, "{case}");
        for field in fields {
            let response = graphql_as(&app, Some(&authorization), field).await;
            assert_eq!(
                code(&response, 0),
                "UNAUTHENTICATED",
                "{case}: {field}: {response}"
            );
        }
    }
    assert_eq!(app.row_count().await, 0);

    let identify_only = format!("Bearer {}", hs256(&claims("identify"), SHARED_SECRET));
    assert_eq!(
        post_identify_as(&app, Some(&identify_only), "1")
            .await
            .status(),
        200
    );
    let response = graphql_as(
        &app,
        Some(&identify_only),
        "{ contacts { nodes { email } } }",
    )
    .await;
    assert_eq!(code(&response, 0), "FORBIDDEN");
    // `scp` as a list works too.
    let mut scp = claims("");
    scp.as_object_mut().unwrap().remove("scope");
    scp["scp"] = json!(["read"]);
    let reader = format!("Bearer {}", hs256(&scp, SHARED_SECRET));
    let response = graphql_as(
        &app,
        Some(&reader),
        "{ contacts { nodes { phoneNumber } } }",
    )
    .await;
    assert_eq!(
        response["data"]["contacts"]["nodes"][0]["phoneNumber"], "1",
        "{response}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_tokens_verify_against_a_jwks_file_and_url() {
    let key = ec_key("k1");
    let dir = tempfile::tempdir().unwrap();
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, json!({"keys": [key.jwk]}).to_string()).unwrap();
    let app = spawn_app_with(&[
        "--jwt-jwks-file",
        jwks_file.to_str().unwrap(),
        "--jwt-issuer",
        ISSUER,
        "--jwt-audience",
        AUDIENCE,
    ])
    .await;
    let good = format!("Bearer {}", es256(&claims("identify"), &key, "k1"));
    assert_eq!(post_identify_as(&app, Some(&good), "1").await.status(), 200);
    let stranger = ec_key("k1");
    let forged = format!("Bearer {}", es256(&claims("identify"), &stranger, "k1"));
    assert_eq!(
        post_identify_as(&app, Some(&forged), "2").await.status(),
        401
    );
    // An HS256 token signed with the public key as secret (algorithm confusion).
    let confused = hs256(&claims("identify"), &key.jwk.to_string());
    assert_eq!(
        post_identify_as(&app, Some(&format!("Bearer {confused}")), "3")
            .await
            .status(),
        401
    );

    // From a URL: a key added at the provider is picked up when a token names it.
    let served = std::sync::Arc::new(std::sync::Mutex::new(json!({"keys": [key.jwk]})));
    let (url, _server) = jwks_server(served.clone()).await;
    let app = spawn_app_with(&[
        "--jwt-jwks-url",
        &url,
        "--jwt-issuer",
        ISSUER,
        "--jwt-audience",
        AUDIENCE,
    ])
    .await;
    assert_eq!(post_identify_as(&app, Some(&good), "4").await.status(), 200);
    let rotated = ec_key("k2");
    served.lock().unwrap()["keys"] = json!([key.jwk, rotated.jwk]);
    let new_key_token = format!("Bearer {}", es256(&claims("identify"), &rotated, "k2"));
    assert_eq!(
        post_identify_as(&app, Some(&new_key_token), "5")
            .await
            .status(),
        200
    );
}

/// A JWKS endpoint on loopback serving whatever `keys` holds.
async fn jwks_server(
    keys: std::sync::Arc<std::sync::Mutex<Value>>,
) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    let router = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || {
            let keys = keys.lock().unwrap().clone();
            async move { axum::Json(keys) }
        }),
    );
    let server = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    (url, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masked_callers_see_masked_values_and_exact_ids() {
    let app = spawn_app_with(&["--auth-mode", "required"]).await;
    let mut conn = app.connection().await;
    let (_, full) = auth::create_key(&mut conn, "server", &[Scope::Identify])
        .await
        .unwrap();
    let (_, masked) = auth::create_key(&mut conn, "browser", &[Scope::IdentifyMasked])
        .await
        .unwrap();
    drop(conn);
    let full = format!("Bearer {full}");
    let masked = format!("Bearer {masked}");
    app.identify_as(&full, "lorraine@hillvalley.edu", "123456")
        .await;

    let response = app
        .client
        .post(app.url("/identify"))
        .header("authorization", &masked)
        .json(&json!({"email": "mcfly@hillvalley.edu", "phoneNumber": "123456"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["contact"]["emails"],
        json!(["l******e@hillvalley.edu", "m***y@hillvalley.edu"])
    );
    assert_eq!(body["contact"]["phoneNumbers"], json!(["****56"]));
    assert_eq!(body["contact"]["primaryContactId"], 1);
    assert_eq!(body["contact"]["secondaryContactIds"], json!([2]));

    let query = "mutation { identify(input: {phoneNumber: \"123456\"}) {
        primaryContactId emails phoneNumbers
        contacts { nodes { id email phoneNumber identity { emails } } } } }";
    let response = graphql_as(&app, Some(&masked), query).await;
    assert!(response.get("errors").is_none(), "{response}");
    let text = response.to_string();
    assert!(
        !text.contains("lorraine") && !text.contains("mcfly"),
        "{text}"
    );
    assert!(!text.contains("\"123456\""), "{text}");
    assert_eq!(response["data"]["identify"]["primaryContactId"], 1);
    // Masked callers read nothing else.
    let response = graphql_as(&app, Some(&masked), "{ contact(id: 1) { email } }").await;
    assert_eq!(code(&response, 0), "FORBIDDEN");
    // The full scope still sees the values.
    let response = graphql_as(&app, Some(&full), query).await;
    assert!(response.to_string().contains("lorraine@hillvalley.edu"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_configured_jwt_refuses_to_start() {
    let database = TestDatabase::create().await;
    let output = server(
        &["--jwt-secret", SHARED_SECRET, "--port", "0"],
        &database.url,
    );
    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("JWT_ISSUER"), "{log}");
    assert!(!log.contains(SHARED_SECRET), "the secret was logged: {log}");
}

// --- Regressions from the review of the access control ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_the_last_key_locks_the_service_instead_of_opening_it() {
    let app = spawn_app_with(&["--auth-cache-secs", "0"]).await;
    let mut conn = app.connection().await;
    let (id, key) = auth::create_key(&mut conn, "only", &[Scope::Identify])
        .await
        .unwrap();
    assert_eq!(post_identify_as(&app, None, "1").await.status(), 401);
    identity_reconciliation::db::api_keys::revoke(&mut conn, &id)
        .await
        .unwrap();
    drop(conn);
    // No active key is left, and still nobody gets in anonymously.
    assert_eq!(post_identify_as(&app, None, "1").await.status(), 401);
    let revoked = format!("Bearer {key}");
    assert_eq!(
        post_identify_as(&app, Some(&revoked), "1").await.status(),
        401
    );
    assert_eq!(app.row_count().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_auto_mode_never_serves_anonymous_callers() {
    use identity_reconciliation::auth::{AuthFailure, AuthMode, Authentication, Authenticator};
    let app = crate::helpers::spawn_app().await;
    // As a server on 0.0.0.0 without --allow-anonymous would be, with no key at all.
    let authenticator = Authenticator::new(
        app.pool.clone(),
        AuthMode::Auto,
        Duration::ZERO,
        None,
        false,
    );
    assert!(matches!(
        authenticator.authenticate(None, None).await,
        Authentication::Failed(AuthFailure::Missing)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_made_up_keys_is_throttled_before_the_database() {
    let app = spawn_app_with(&["--auth-mode", "required", "--auth-cache-secs", "0"]).await;
    let mut statuses = Vec::new();
    for _ in 0..40 {
        let made_up = format!("Bearer {}", keys::generate().unwrap().token);
        statuses.push(
            post_identify_as(&app, Some(&made_up), "1")
                .await
                .status()
                .as_u16(),
        );
    }
    assert!(statuses.contains(&401), "{statuses:?}");
    let throttled = statuses.iter().filter(|status| **status == 429).count();
    assert!(throttled >= 10, "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_that_would_weaken_access_stop_the_server() {
    let database = TestDatabase::create().await;
    for (flags, expected) in [
        (
            vec!["--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE],
            "no key source",
        ),
        (vec!["--metrics-token", ""], "METRICS_TOKEN"),
        (vec!["--metrics-token", "short"], "METRICS_TOKEN"),
    ] {
        let mut args = flags.clone();
        args.extend(["--port", "0"]);
        let output = server(&args, &database.url);
        assert!(!output.status.success(), "{flags:?} started");
        let log = String::from_utf8_lossy(&output.stderr);
        assert!(log.contains(expected), "{flags:?}: {log}");
    }
}
