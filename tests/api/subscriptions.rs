//! The `identityEvents` subscription over WebSocket (docs/SPEC.md §12): events of
//! writes through any server, in the outbox's order, resumed after a restart with
//! nothing missed or repeated, all of them under load, and a slow subscriber
//! dropped with a cursor to resume from while writes go on.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use identity_reconciliation::auth::{self, Scope};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::helpers::{ServerProcess, TestApp, TestDatabase, spawn_app, spawn_app_with};

const EVENTS: &str = "subscription($after: String, $fromStart: Boolean) {
    identityEvents(after: $after, fromStart: $fromStart) {
        cursor kind primaryContactIds contactIds requestId at } }";

/// How long a test waits for what must come.
const PATIENCE: Duration = Duration::from_secs(30);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A graphql-transport-ws client.
struct Subscriber {
    socket: Socket,
}

/// How a subscription's stream of messages ended.
#[derive(Debug)]
enum End {
    /// The server closed the socket with this code and reason.
    Closed(u16, String),
    /// An `error` message, or a `next` carrying errors: their codes.
    Errors(Vec<String>),
    /// The server completed the subscription.
    Complete,
}

fn handshake(address: SocketAddr) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = format!("ws://{address}/graphql")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    request
}

impl Subscriber {
    /// Connects and completes `connection_init`, with `authorization` in its payload.
    async fn connect(address: SocketAddr, authorization: Option<&str>) -> Subscriber {
        let (socket, response) = tokio_tungstenite::connect_async(handshake(address))
            .await
            .expect("the WebSocket handshake succeeds");
        assert_eq!(
            response
                .headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap()),
            Some("graphql-transport-ws")
        );
        Self::init(socket, authorization).await
    }

    /// Like [`Subscriber::connect`], over a socket with a tiny receive buffer: a
    /// client that reads slowly fills it, and then the server's, quickly.
    async fn connect_with_small_buffer(address: SocketAddr) -> Subscriber {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(address).await.unwrap();
        let (socket, _) =
            tokio_tungstenite::client_async(handshake(address), MaybeTlsStream::Plain(stream))
                .await
                .expect("the WebSocket handshake succeeds");
        Self::init(socket, None).await
    }

    async fn init(socket: Socket, authorization: Option<&str>) -> Subscriber {
        Self::try_init(socket, authorization)
            .await
            .expect("connection_init is acknowledged")
    }

    /// Sends `connection_init`; `Err` is how the server refused it.
    async fn try_init(mut socket: Socket, authorization: Option<&str>) -> Result<Subscriber, End> {
        let payload = match authorization {
            Some(authorization) => json!({"Authorization": authorization}),
            None => json!({}),
        };
        socket
            .send(Message::text(
                json!({"type": "connection_init", "payload": payload}).to_string(),
            ))
            .await
            .unwrap();
        let mut subscriber = Subscriber { socket };
        let ack = subscriber.receive().await?;
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        Ok(subscriber)
    }

    /// Like [`Subscriber::connect`], returning how the server refused the socket.
    async fn try_connect(
        address: SocketAddr,
        authorization: Option<&str>,
    ) -> Result<Subscriber, End> {
        let (socket, _) = tokio_tungstenite::connect_async(handshake(address))
            .await
            .expect("the WebSocket handshake succeeds");
        Self::try_init(socket, authorization).await
    }

    /// How the server ends the socket, ignoring any change still on the way.
    async fn closed(&mut self) -> (u16, String) {
        loop {
            match self.receive().await {
                Ok(_) => continue,
                Err(End::Closed(code, reason)) => return (code, reason),
                Err(other) => panic!("expected a close, got {other:?}"),
            }
        }
    }

    async fn subscribe(&mut self, id: &str, query: &str, variables: Value) {
        self.socket
            .send(Message::text(
                json!({"id": id, "type": "subscribe",
                       "payload": {"query": query, "variables": variables}})
                .to_string(),
            ))
            .await
            .unwrap();
    }

    /// The next protocol message, answering pings; `Err` once the socket closes.
    async fn receive(&mut self) -> Result<Value, End> {
        // One deadline for the message, whatever keep-alive frames come meanwhile.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let message = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .expect("the server says something in time");
            match message {
                Some(Ok(Message::Text(text))) => {
                    let value: Value = serde_json::from_str(&text).unwrap();
                    if value["type"] == "ping" {
                        let pong = json!({"type": "pong"}).to_string();
                        self.socket.send(Message::text(pong)).await.unwrap();
                        continue;
                    }
                    return Ok(value);
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(frame.map_or(End::Closed(1005, String::new()), |frame| {
                        End::Closed(u16::from(frame.code), frame.reason.to_string())
                    }));
                }
                Some(Ok(_)) => continue,
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) | None => {
                    return Err(End::Closed(1006, String::new()));
                }
                Some(Err(err)) => return Err(End::Closed(1006, err.to_string())),
            }
        }
    }

    /// The next change of subscription `id`, or how its stream ended.
    async fn next_change(&mut self) -> Result<Value, End> {
        let message = self.receive().await?;
        match message["type"].as_str() {
            Some("next") if message["payload"]["errors"].is_array() => {
                Err(End::Errors(codes(&message["payload"]["errors"])))
            }
            Some("next") => Ok(message["payload"]["data"]["identityEvents"].clone()),
            Some("error") => Err(End::Errors(codes(&message["payload"]))),
            Some("complete") => Err(End::Complete),
            _ => panic!("unexpected message: {message}"),
        }
    }

    /// The error codes the next message carries, which must end its subscription;
    /// fails on anything else.
    async fn refusal(&mut self) -> Vec<String> {
        let codes = match self.next_change().await {
            Err(End::Errors(codes)) => codes,
            other => panic!("expected errors, got {other:?}"),
        };
        match self.next_change().await {
            Err(End::Complete) => codes,
            other => panic!("expected the subscription to complete, got {other:?}"),
        }
    }

    /// Changes until `count` have come.
    async fn changes(&mut self, count: usize) -> Vec<Value> {
        let mut changes = Vec::with_capacity(count);
        while changes.len() < count {
            match self.next_change().await {
                Ok(change) => changes.push(change),
                Err(end) => panic!(
                    "the subscription ended after {} changes: {end:?}",
                    changes.len()
                ),
            }
        }
        changes
    }
}

fn codes(errors: &Value) -> Vec<String> {
    errors
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|error| {
                    error["extensions"]["code"]
                        .as_str()
                        .unwrap_or("?")
                        .to_owned()
                })
                .collect()
        })
        .unwrap_or_default()
}

fn kinds(changes: &[Value]) -> Vec<&str> {
    changes
        .iter()
        .map(|change| change["kind"].as_str().unwrap())
        .collect()
}

fn cursors(changes: &[Value]) -> Vec<String> {
    changes
        .iter()
        .map(|change| change["cursor"].as_str().unwrap().to_owned())
        .collect()
}

/// Every change stored, as the polling query pages through them: the truth the
/// subscribers are held to.
async fn every_cursor(url: impl Fn(&str) -> String) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let answer: Value = client
            .post(url("/graphql"))
            .json(&json!({
                "query": "query($after: String) { identityEvents(first: 100, after: $after) {
                    pageInfo { hasNextPage endCursor } nodes { cursor } } }",
                "variables": {"after": after},
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let page = &answer["data"]["identityEvents"];
        assert!(page.is_object(), "{answer}");
        for node in page["nodes"].as_array().unwrap() {
            all.push(node["cursor"].as_str().unwrap().to_owned());
        }
        if page["pageInfo"]["hasNextPage"] != true {
            return all;
        }
        after = page["pageInfo"]["endCursor"].as_str().map(str::to_owned);
    }
}

/// The changes stored, counted in the table itself.
async fn stored_changes(app: &TestApp) -> usize {
    use diesel::QueryableByName;
    use diesel_async::RunQueryDsl;
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        count: i64,
    }
    let mut conn = app.connection().await;
    let count: Count = diesel::sql_query("SELECT count(*) AS count FROM identity_changes")
        .get_result(&mut conn)
        .await
        .unwrap();
    count.count as usize
}

async fn identify(client: &reqwest::Client, url: String, email: &str, phone: &str) {
    let response = client
        .post(url)
        .json(&json!({"email": email, "phoneNumber": phone}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// `mine` is exactly `truth`; on failure, says where they part.
fn assert_same_changes(mine: &[String], truth: &[String]) {
    let parted = mine.iter().zip(truth).position(|(a, b)| a != b);
    assert!(
        mine.len() == truth.len() && parted.is_none(),
        "received {} changes, {} stored; first difference at {:?}: {:?} vs {:?}",
        mine.len(),
        truth.len(),
        parted,
        parted.map(|i| &mine[i]),
        parted.map(|i| &truth[i]),
    );
}

fn assert_no_repeats(cursors: &[String]) {
    let mut seen = HashSet::new();
    let repeated: Vec<(usize, &String)> = cursors
        .iter()
        .enumerate()
        .filter(|(_, cursor)| !seen.insert(*cursor))
        .collect();
    assert!(
        repeated.is_empty(),
        "{} of {} changes came twice, the first at {:?}",
        repeated.len(),
        cursors.len(),
        repeated.first()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_one_server_receives_writes_through_another_in_order() {
    let database = TestDatabase::create().await;
    let a = ServerProcess::start(&database.url).await;
    let b = ServerProcess::start(&database.url).await;
    let mut subscriber =
        Subscriber::connect(format!("127.0.0.1:{}", a.port).parse().unwrap(), None).await;
    subscriber
        .subscribe("1", EVENTS, json!({"fromStart": true}))
        .await;
    let client = reqwest::Client::new();
    identify(&client, b.url("/identify"), "a@x.io", "1001").await;
    identify(&client, b.url("/identify"), "b@x.io", "1001").await;
    identify(&client, b.url("/identify"), "c@x.io", "1002").await;
    identify(&client, b.url("/identify"), "b@x.io", "1002").await;
    let changes = subscriber.changes(4).await;
    assert_eq!(kinds(&changes), ["CREATED", "LINKED", "CREATED", "MERGED"]);
    assert_same_changes(&cursors(&changes), &every_cursor(|path| a.url(path)).await);
    // The wake-up came over LISTEN/NOTIFY, not only the fallback poll.
    let metrics = reqwest::get(a.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("identity_event_listener_up 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("identity_event_subscribers 1"),
        "{metrics}"
    );
    let written = reqwest::get(b.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        written.contains("identity_events_written_total 4"),
        "{written}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_resumes_after_a_restart_with_nothing_missed_or_repeated() {
    let database = TestDatabase::create().await;
    let mut server = ServerProcess::start(&database.url).await;
    let port = server.port;
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let client = reqwest::Client::new();
    identify(&client, server.url("/identify"), "a@x.io", "2001").await;

    let mut subscriber = Subscriber::connect(address, None).await;
    subscriber
        .subscribe("1", EVENTS, json!({"fromStart": true}))
        .await;
    identify(&client, server.url("/identify"), "b@x.io", "2001").await;
    let mut received = subscriber.changes(2).await;
    assert_eq!(kinds(&received), ["CREATED", "LINKED"]);

    // Changes the subscriber misses while disconnected, before and after a restart.
    drop(subscriber);
    identify(&client, server.url("/identify"), "c@x.io", "2002").await;
    server.signal(nix::sys::signal::Signal::SIGTERM);
    let _ = server.child.wait();
    let server = ServerProcess::start_on(&database.url, port).await;
    identify(&client, server.url("/identify"), "b@x.io", "2002").await;

    let last = received.last().unwrap()["cursor"].clone();
    let mut subscriber = Subscriber::connect(address, None).await;
    subscriber
        .subscribe("1", EVENTS, json!({"after": last}))
        .await;
    identify(&client, server.url("/identify"), "d@x.io", "2003").await;
    received.extend(subscriber.changes(3).await);

    assert_eq!(
        kinds(&received),
        ["CREATED", "LINKED", "CREATED", "MERGED", "CREATED"]
    );
    let mine = cursors(&received);
    assert_no_repeats(&mine);
    assert_same_changes(&mine, &every_cursor(|path| server.url(path)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_closes_subscriptions_with_going_away() {
    let database = TestDatabase::create().await;
    let server = ServerProcess::start(&database.url).await;
    let mut subscriber =
        Subscriber::connect(format!("127.0.0.1:{}", server.port).parse().unwrap(), None).await;
    subscriber
        .subscribe("1", EVENTS, json!({"fromStart": true}))
        .await;
    // Subscribed once a change arrives: the socket is fully served when SIGTERM lands.
    identify(
        &reqwest::Client::new(),
        server.url("/identify"),
        "a@x.io",
        "3001",
    )
    .await;
    subscriber.changes(1).await;
    server.signal(nix::sys::signal::Signal::SIGTERM);
    match subscriber.next_change().await {
        Err(End::Closed(code, reason)) => {
            assert_eq!(code, u16::from(CloseCode::Away), "{reason}");
            assert!(reason.contains("resume"), "{reason}");
        }
        other => panic!("expected a close, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_64_connection_load_a_subscriber_receives_every_change() {
    let app = spawn_app().await;
    let mut subscriber = Subscriber::connect(app.address, None).await;
    subscriber
        .subscribe("1", EVENTS, json!({"fromStart": true}))
        .await;
    // Read while the load runs: a subscriber that stops reading is dropped.
    let (changes, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Ok(change) = subscriber.next_change().await {
            if changes.send(change).is_err() {
                break;
            }
        }
    });
    // loadgen's own subscribers too: two that must each receive every change
    // stored, and two that never read while the load runs.
    let url = app.url("");
    let database_url = app.database.as_ref().unwrap().url.clone();
    let report = tempfile::NamedTempFile::new().unwrap();
    let report_path = report.path().display().to_string();
    let status = tokio::task::spawn_blocking(move || {
        loadgen::main_with_args([
            "loadgen",
            "--url",
            &url,
            "--connections",
            "64",
            "--requests",
            "4000",
            "--subscribers",
            "2",
            "--stalled-subscribers",
            "2",
            "--database-url",
            &database_url,
            "--progress",
            "0",
            "--json",
            &report_path,
        ])
    })
    .await
    .unwrap();
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(report.path()).unwrap()).unwrap();
    assert_eq!(status, 0, "loadgen failed: {summary:#}");
    let subscribers = &summary["subscribers"];
    assert_eq!(subscribers["check"]["passed"], true, "{subscribers:#}");
    assert_eq!(subscribers["received_min"], subscribers["expected"]);
    assert_eq!(summary["error_rate"], 0.0);
    let stored = stored_changes(&app).await;
    assert!(stored > 1000, "the load wrote only {stored} changes");
    let mut received = Vec::with_capacity(stored);
    while received.len() < stored {
        match tokio::time::timeout(PATIENCE, arrived.recv()).await {
            Ok(Some(change)) => received.push(change),
            _ => panic!("the subscription stopped after {} changes", received.len()),
        }
    }
    reader.abort();
    let mine = cursors(&received);
    assert_no_repeats(&mine);
    assert_same_changes(&mine, &every_cursor(|path| app.url(path)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_is_dropped_with_a_cursor_to_resume_from_and_writes_go_on() {
    let app = spawn_app_with(&["--subscriber-send-timeout-ms", "300"]).await;
    let mut slow = Subscriber::connect_with_small_buffer(app.address).await;
    slow.subscribe("1", EVENTS, json!({"fromStart": true}))
        .await;

    // Writes while the slow subscriber reads nothing: every one succeeds.
    let client = reqwest::Client::new();
    let writers: Vec<_> = (0..8)
        .map(|worker| {
            let client = client.clone();
            let url = app.url("/identify");
            tokio::spawn(async move {
                for n in 0..250 {
                    identify(
                        &client,
                        url.clone(),
                        &format!("w{worker}n{n}@x.io"),
                        &format!("{worker}{n:04}"),
                    )
                    .await;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }

    // The server gives up on it...
    let deadline = Instant::now() + PATIENCE;
    loop {
        let metrics = app
            .client
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains("identity_event_subscribers_dropped_total 1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slow subscriber was never dropped: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...after what its socket held, and says why; the last cursor read resumes it.
    let mut received = Vec::new();
    let end = loop {
        match slow.next_change().await {
            Ok(change) => received.push(change),
            Err(end) => break end,
        }
    };
    match end {
        End::Closed(code, reason) => {
            assert_eq!(code, 1013, "{reason}");
            assert!(reason.contains("resume"), "{reason}");
        }
        other => panic!("expected a close, got {other:?}"),
    }
    let stored = stored_changes(&app).await;
    assert!(
        received.len() < stored,
        "the slow subscriber got all {stored} changes: it was not slow"
    );
    let last = received.last().map(|change| change["cursor"].clone());
    eprintln!(
        "slow subscriber received {} of {stored}; resuming after {last:?}",
        received.len()
    );
    let mut resumed = Subscriber::connect(app.address, None).await;
    resumed
        .subscribe("1", EVENTS, json!({"after": last, "fromStart": true}))
        .await;
    received.extend(resumed.changes(stored - received.len()).await);
    let mine = cursors(&received);
    assert_no_repeats(&mine);
    assert_same_changes(&mine, &every_cursor(|path| app.url(path)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_needs_the_read_scope_and_values_need_it_too() {
    let app = spawn_app_with(&["--auth-mode", "required", "--auth-cache-secs", "0"]).await;
    let mut conn = app.connection().await;
    let (_, identify_key) = auth::create_key(&mut conn, "checkout", &[Scope::Identify])
        .await
        .unwrap();
    let (_, read_key) = auth::create_key(&mut conn, "crm", &[Scope::Read])
        .await
        .unwrap();
    drop(conn);

    // No credential: the socket is closed at once (it held a slot until idle before).
    match Subscriber::try_connect(app.address, None).await {
        Err(End::Closed(code, reason)) => {
            assert_eq!(code, 4403, "{reason}");
            assert!(reason.contains("Forbidden"), "{reason}");
        }
        Err(other) => panic!("expected close 4403, got {other:?}"),
        Ok(_) => panic!("a socket without a credential was acknowledged"),
    }
    let forged = "Bearer irk_0123456789abcdef_0000000000000000000000000000000000000000000000000000000000000000";
    assert!(matches!(
        Subscriber::try_connect(app.address, Some(forged)).await,
        Err(End::Closed(4403, _))
    ));

    let mut checkout =
        Subscriber::connect(app.address, Some(&format!("Bearer {identify_key}"))).await;
    checkout.subscribe("1", EVENTS, json!({})).await;
    assert_eq!(checkout.refusal().await, ["FORBIDDEN"]);

    let mut crm = Subscriber::connect(app.address, Some(&format!("Bearer {read_key}"))).await;
    crm.subscribe(
        "1",
        "subscription { identityEvents(fromStart: true) { kind identity { emails phoneNumbers } } }",
        json!({}),
    )
    .await;
    app.client
        .post(app.url("/identify"))
        .bearer_auth(&identify_key)
        .json(&json!({"email": "doc@x.io", "phoneNumber": "4001"}))
        .send()
        .await
        .unwrap();
    let change = crm.changes(1).await.remove(0);
    assert_eq!(change["kind"], "CREATED");
    assert_eq!(change["identity"]["emails"], json!(["doc@x.io"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_serves_subscriptions_only_within_the_limits() {
    let app = spawn_app_with(&["--max-subscribers", "1"]).await;
    let mut subscriber = Subscriber::connect(app.address, None).await;
    // Queries and mutations keep to POST /graphql, with its rate limit and caps.
    subscriber
        .subscribe(
            "q",
            "mutation { identify(input: {email: \"m@x.io\"}) { primaryContactId } }",
            json!({}),
        )
        .await;
    assert_eq!(subscriber.refusal().await, ["BAD_USER_INPUT"]);
    assert_eq!(app.row_count().await, 0, "the mutation ran over the socket");
    // A forged cursor is refused before the database sees it.
    subscriber
        .subscribe("f", EVENTS, json!({"after": "bm90IGEgY3Vyc29y"}))
        .await;
    assert_eq!(subscriber.refusal().await, ["BAD_USER_INPUT"]);
    // One subscriber slot: the second subscription is refused, the first keeps going.
    subscriber
        .subscribe("1", EVENTS, json!({"fromStart": true}))
        .await;
    app.identify(Some("a@x.io"), None).await;
    assert_eq!(kinds(&subscriber.changes(1).await), ["CREATED"]);
    subscriber.subscribe("2", EVENTS, json!({})).await;
    assert_eq!(subscriber.refusal().await, ["SERVICE_UNAVAILABLE"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_cursor_ends_the_subscription_with_a_clear_error() {
    let app = spawn_app().await;
    app.identify(Some("a@x.io"), None).await;
    app.identify(Some("b@x.io"), None).await;
    let mut subscriber = Subscriber::connect(app.address, None).await;
    subscriber
        .subscribe("1", EVENTS, json!({"fromStart": true}))
        .await;
    let first = subscriber.changes(2).await.remove(0);
    {
        use diesel_async::SimpleAsyncConnection;
        let mut conn = app.connection().await;
        conn.batch_execute("UPDATE identity_changes SET created_at = now() - interval '40 days'")
            .await
            .unwrap();
        identity_reconciliation::db::changes::prune(&mut conn, 30)
            .await
            .unwrap();
    }
    let mut late = Subscriber::connect(app.address, None).await;
    late.subscribe("1", EVENTS, json!({"after": first["cursor"]}))
        .await;
    assert_eq!(late.refusal().await, ["CURSOR_EXPIRED"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_from_foreign_pages_or_without_the_protocol_are_refused() {
    let app = spawn_app().await;
    let mut foreign = handshake(app.address);
    foreign
        .headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(foreign).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!(
            "a foreign page opened a socket: {:?}",
            other.map(|(_, r)| r)
        ),
    }
    let mut own = handshake(app.address);
    own.headers_mut()
        .insert("origin", format!("http://{}", app.address).parse().unwrap());
    assert!(tokio_tungstenite::connect_async(own).await.is_ok());
    let mut bare = format!("ws://{}/graphql", app.address)
        .into_client_request()
        .unwrap();
    bare.headers_mut().remove("sec-websocket-protocol");
    match tokio_tungstenite::connect_async(bare).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 400),
        other => panic!(
            "a socket without the protocol opened: {:?}",
            other.map(|(_, r)| r)
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_never_initialises_is_closed() {
    let app = spawn_app_with(&["--http-header-timeout-secs", "1"]).await;
    let (mut socket, _) = tokio_tungstenite::connect_async(handshake(app.address))
        .await
        .unwrap();
    let message = tokio::time::timeout(PATIENCE, socket.next()).await.unwrap();
    match message {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 4408),
        other => panic!("expected close 4408, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_stops_its_subscription() {
    let app = spawn_app_with(&["--auth-mode", "required", "--auth-cache-secs", "1"]).await;
    let mut conn = app.connection().await;
    let (id, key) = auth::create_key(&mut conn, "crm", &[Scope::Read])
        .await
        .unwrap();
    let mut crm = Subscriber::connect(app.address, Some(&format!("Bearer {key}"))).await;
    crm.subscribe("1", EVENTS, json!({})).await;
    identity_reconciliation::db::api_keys::revoke(&mut conn, &id)
        .await
        .unwrap();
    let (code, reason) = crm.closed().await;
    assert_eq!(code, 4403, "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_are_capped_apart_from_connections_and_closed_when_idle_or_abused() {
    let app = spawn_app_with(&["--max-subscribers", "2", "--http-idle-timeout-secs", "1"]).await;
    // A socket holding no subscription goes, like an idle keep-alive connection.
    let mut idle = Subscriber::connect(app.address, None).await;
    let (code, reason) = idle.closed().await;
    assert_eq!(code, 1000, "{reason}");
    assert!(reason.contains("no subscription"), "{reason}");

    // Two sockets at most; the third handshake is refused, HTTP is not.
    let mut first = Subscriber::connect(app.address, None).await;
    first
        .subscribe("1", EVENTS, json!({"fromStart": true}))
        .await;
    let mut second = Subscriber::connect(app.address, None).await;
    second
        .subscribe("1", EVENTS, json!({"fromStart": true}))
        .await;
    match tokio_tungstenite::connect_async(handshake(app.address)).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("a third socket opened: {:?}", other.map(|(_, r)| r)),
    }
    app.identify(Some("a@x.io"), None).await;
    assert_eq!(kinds(&first.changes(1).await), ["CREATED"]);
    drop(second);

    // Subscribing past the per-connection limit closes the socket (4429) rather
    // than queueing refusals.
    let app = spawn_app().await;
    let mut greedy = Subscriber::connect(app.address, None).await;
    for id in 0..=identity_reconciliation::http::graphql::MAX_SUBSCRIPTIONS_PER_CONNECTION {
        greedy.subscribe(&id.to_string(), EVENTS, json!({})).await;
    }
    let (code, reason) = greedy.closed().await;
    assert_eq!(code, 4429, "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protocol_spoken_is_the_one_the_handshake_names() {
    let app = spawn_app().await;
    // Offered in this order, the server picks graphql-transport-ws and must speak
    // it (it spoke the legacy protocol while naming the new one).
    let mut request = handshake(app.address);
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-ws, graphql-transport-ws".parse().unwrap(),
    );
    let (socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "graphql-transport-ws"
    );
    let mut subscriber = Subscriber::init(socket, None).await;
    subscriber
        .subscribe("1", EVENTS, json!({"fromStart": true}))
        .await;
    app.identify(Some("a@x.io"), None).await;
    assert_eq!(kinds(&subscriber.changes(1).await), ["CREATED"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_reason_fits_a_control_frame() {
    let app = spawn_app().await;
    let mut subscriber = Subscriber::connect(app.address, None).await;
    // An unknown message type: async-graphql closes with serde's message, which
    // names the type and every expected one.
    let long_type = "x".repeat(300);
    subscriber
        .socket
        .send(Message::text(json!({"type": long_type}).to_string()))
        .await
        .unwrap();
    // An oversized frame reached the client as an abnormal end (1006), reasonless.
    let (code, reason) = subscriber.closed().await;
    assert_eq!(code, 1002, "{reason}");
    assert!(reason.contains("unknown variant"), "{reason}");
    assert!(reason.len() <= 123, "{} bytes", reason.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_cursor_past_the_transaction_id_range_is_refused() {
    use async_graphql::connection::{CursorType, OpaqueCursor};
    let app = spawn_app().await;
    let cursor = OpaqueCursor(("99999999999999999999".to_owned(), 1_i64)).encode_cursor();
    let answer = app
        .graphql(
            "query($after: String) { identityEvents(after: $after) { nodes { kind } } }",
            json!({"after": cursor}),
        )
        .await;
    assert_eq!(
        answer["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{answer}"
    );
    let mut subscriber = Subscriber::connect(app.address, None).await;
    subscriber
        .subscribe("1", EVENTS, json!({"after": cursor}))
        .await;
    assert_eq!(subscriber.refusal().await, ["BAD_USER_INPUT"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_cursor_a_subscription_starts_now() {
    let app = spawn_app().await;
    app.identify(Some("before@x.io"), None).await;
    // "Now" is the last change readable: one held back behind an older running
    // transaction (of any database of the cluster, other tests' included) still
    // comes. Wait until the first change is readable.
    let deadline = Instant::now() + PATIENCE;
    while every_cursor(|path| app.url(path)).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the first change never became readable"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut subscriber = Subscriber::connect(app.address, None).await;
    subscriber.subscribe("1", EVENTS, json!({})).await;
    // The server counts a subscriber once it knows where "now" is.
    let deadline = Instant::now() + PATIENCE;
    while !app
        .metrics_text()
        .await
        .contains("identity_event_subscribers 1")
    {
        assert!(Instant::now() < deadline, "the subscription never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = app.identify(Some("after@x.io"), None).await;
    let change = subscriber.changes(1).await.remove(0);
    assert_eq!(change["kind"], "CREATED");
    assert_eq!(change["contactIds"], json!([after["primaryContactId"]]));
}
