//! The examples of the README and the guides (`docs/*.md`), run: each document's
//! against a fresh server of its own, in document order, and each answer a document
//! shows compared with what the server says (ids, cursors and times masked), so that
//! no example can rot. The markers, what runs and how: docs/testing.md, "Examples in
//! the guides".

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use async_graphql::Positioned;
use async_graphql::parser::types::{
    FieldDefinition, InputValueDefinition, OperationType, ServiceDocument, TypeDefinition,
    TypeKind, TypeSystemDefinition,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::helpers::{CLEARED_VARIABLES, SERVER_BINARY, TestApp, spawn_app_with};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// How long an example may wait for the server (a subscription's events, its start).
const PATIENCE: Duration = Duration::from_secs(30);

/// One test per document with examples, so that a failure names the document;
/// `TESTED` lists them for the test that no document is left out.
macro_rules! document_tests {
    ($($test:ident => $path:literal),* $(,)?) => {
        const TESTED: &[&str] = &[$($path),*];
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                check_document($path).await;
            }
        )*
    };
}

document_tests! {
    readme => "README.md",
    api => "docs/api.md",
    events => "docs/events.md",
    identity_graph => "docs/identity-graph.md",
    import => "docs/import.md",
    security => "docs/security.md",
    testing => "docs/testing.md",
    spec => "docs/SPEC.md",
}

/// Every `sh`, `bash` and `graphql` block of every document is marked, every
/// marker is well placed, and every document with examples has its test above.
#[test]
fn every_example_is_marked_and_its_document_tested() {
    let mut problems = Vec::new();
    for path in documents() {
        let source = std::fs::read_to_string(Path::new(ROOT).join(&path))
            .unwrap_or_else(|err| panic!("{path}: {err}"));
        let (document, errors) = parse_document(&path, &source);
        problems.extend(errors);
        if !document.blocks.is_empty() && !TESTED.contains(&path.as_str()) {
            problems.push(format!(
                "{path} has examples but no test: add it to `document_tests!` in \
                 tests/api/examples.rs"
            ));
        }
    }
    for path in TESTED {
        if !Path::new(ROOT).join(path).is_file() {
            problems.push(format!("{path} is tested but does not exist"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// README.md and every guide in docs/.
fn documents() -> Vec<String> {
    let mut guides: Vec<String> = std::fs::read_dir(Path::new(ROOT).join("docs"))
        .expect("docs/ is readable")
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.ends_with(".md").then(|| format!("docs/{name}"))
        })
        .collect();
    guides.sort();
    let mut paths = vec!["README.md".to_owned()];
    paths.extend(guides);
    paths
}

// ---------------------------------------------------------------------------------
// The blocks of a document and their markers.

/// What a marker says its block is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    /// `<!-- example: NAME -->`: an example to run.
    Run,
    /// `<!-- example: NAME (not run: REASON) -->`.
    NotRun(String),
    /// `<!-- example-answer: NAME -->`: what example NAME gives on a fresh server.
    Answer,
    /// `<!-- example-variables: NAME -->`: the variables of GraphQL example NAME.
    Variables,
}

impl Role {
    fn describe(&self) -> &'static str {
        match self {
            Role::Run | Role::NotRun(_) => "an example (sh, bash or graphql)",
            Role::Answer => "an answer (json or text)",
            Role::Variables => "variables (json)",
        }
    }
}

/// A marked fenced block.
#[derive(Debug)]
struct Block {
    /// The line of the opening fence, from 1.
    line: usize,
    language: String,
    text: String,
    name: String,
    role: Role,
}

struct Document {
    /// Relative to the repository: `README.md`, `docs/api.md`.
    path: String,
    /// In document order.
    blocks: Vec<Block>,
    /// The flags of `<!-- examples-server: FLAGS -->`, for the document's server.
    server_flags: Vec<String>,
}

/// A marker's role and name, or why it cannot be read.
type Marker = Result<(Role, String), String>;

/// The marked blocks of a document, and what is wrong with its markers.
fn parse_document(path: &str, source: &str) -> (Document, Vec<String>) {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.strip_suffix(".md").unwrap_or(file);
    let lines: Vec<&str> = source.lines().collect();
    let mut errors: Vec<String> = Vec::new();
    let mut blocks: Vec<Block> = Vec::new();
    let mut markers_used: HashSet<usize> = HashSet::new();
    let mut fenced: HashSet<usize> = HashSet::new();
    let mut index = 0;
    while index < lines.len() {
        let trimmed = lines[index].trim_start();
        let Some(info) = trimmed.strip_prefix("```") else {
            index += 1;
            continue;
        };
        let at = format!("{path}:{}", index + 1);
        let Some(close) =
            (index + 1..lines.len()).find(|&i| lines[i].trim_start().starts_with("```"))
        else {
            errors.push(format!("{at}: a fence that is never closed"));
            break;
        };
        fenced.extend(index..=close);
        let indent = lines[index].len() - trimmed.len();
        let mut text = String::new();
        for line in &lines[index + 1..close] {
            text.push_str(dedent(line, indent));
            text.push('\n');
        }
        let language = info
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        let example_language = matches!(language.as_str(), "sh" | "bash" | "graphql");
        let marker = index
            .checked_sub(1)
            .and_then(|above| parse_marker(lines[above]).map(|marker| (above, marker)));
        match marker {
            None if example_language => errors.push(format!(
                "{at}: a ```{language} block without a marker: put `<!-- example: {stem}-N -->` \
                 on the line just above it, or `<!-- example: {stem}-N (not run: REASON) -->` \
                 for what a fresh server cannot run (docs/testing.md)"
            )),
            None => {}
            Some((_, Err(err))) => errors.push(format!("{at}: {err}")),
            Some((above, Ok((role, name)))) => {
                markers_used.insert(above);
                let fits = match role {
                    Role::Run | Role::NotRun(_) => example_language,
                    Role::Answer => matches!(language.as_str(), "json" | "text" | ""),
                    Role::Variables => language == "json",
                };
                if !fits {
                    errors.push(format!(
                        "{at}: a ```{language} block cannot be {}",
                        role.describe()
                    ));
                } else if !name.starts_with(&format!("{stem}-")) {
                    errors.push(format!("{at}: `{name}` should be named `{stem}-N`"));
                } else {
                    blocks.push(Block {
                        line: index + 1,
                        language,
                        text,
                        name,
                        role,
                    });
                }
            }
        }
        index = close + 1;
    }

    let mut server_flags: Vec<String> = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        if fenced.contains(&index) {
            continue;
        }
        if let Some(flags) = line
            .trim()
            .strip_prefix("<!-- examples-server:")
            .and_then(|rest| rest.strip_suffix("-->"))
        {
            server_flags = flags.split_whitespace().map(str::to_owned).collect();
        } else if parse_marker(line).is_some() && !markers_used.contains(&index) {
            errors.push(format!(
                "{path}:{}: a marker must stand on the line just above a block's opening fence",
                index + 1
            ));
        }
    }

    let mut examples: HashMap<&str, &Block> = HashMap::new();
    let mut answered: HashSet<&str> = HashSet::new();
    let mut given_variables: HashSet<&str> = HashSet::new();
    for block in &blocks {
        let at = format!("{path}:{}", block.line);
        let name = block.name.as_str();
        match block.role {
            Role::Run | Role::NotRun(_) => {
                if examples.insert(name, block).is_some() {
                    errors.push(format!("{at}: a second example named `{name}`"));
                }
            }
            Role::Answer | Role::Variables => {
                let seen = if block.role == Role::Answer {
                    &mut answered
                } else {
                    &mut given_variables
                };
                if !seen.insert(name) {
                    errors.push(format!(
                        "{at}: a second {} of `{name}`",
                        block.role.describe()
                    ));
                }
                match examples.get(name) {
                    None => errors.push(format!("{at}: no example `{name}` above it")),
                    Some(example)
                        if block.role == Role::Variables && example.language != "graphql" =>
                    {
                        errors.push(format!("{at}: variables go with a graphql example"));
                    }
                    Some(_) => {}
                }
            }
        }
    }

    let document = Document {
        path: path.to_owned(),
        blocks,
        server_flags,
    };
    (document, errors)
}

/// `<!-- example: NAME -->`, `<!-- example: NAME (not run: REASON) -->`,
/// `<!-- example-answer: NAME -->` or `<!-- example-variables: NAME -->`; `None` for
/// any other line.
fn parse_marker(line: &str) -> Option<Marker> {
    let inner = line
        .trim()
        .strip_prefix("<!--")?
        .strip_suffix("-->")?
        .trim();
    let (kind, rest) = inner.split_once(':')?;
    let rest = rest.trim();
    let (role, name) = match kind.trim() {
        "example" => match rest.split_once('(') {
            None => (Role::Run, rest),
            Some((name, note)) => {
                let reason = note
                    .trim()
                    .strip_suffix(')')
                    .and_then(|note| note.strip_prefix("not run:"))
                    .map(str::trim);
                match reason {
                    Some(reason) if !reason.is_empty() => {
                        (Role::NotRun(reason.to_owned()), name.trim())
                    }
                    _ => {
                        return Some(Err(format!(
                            "`{}`: the note reads `(not run: REASON)`",
                            line.trim()
                        )));
                    }
                }
            }
        },
        "example-answer" => (Role::Answer, rest),
        "example-variables" => (Role::Variables, rest),
        _ => return None,
    };
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Some(Err(format!(
            "`{}`: a marker names its example in one word",
            line.trim()
        )));
    }
    Some(Ok((role, name.to_owned())))
}

/// `line` without the indentation of its fence (a block in a list item).
fn dedent(line: &str, indent: usize) -> &str {
    let spaces = line.len() - line.trim_start_matches(' ').len();
    &line[spaces.min(indent)..]
}

// ---------------------------------------------------------------------------------
// Running a document.

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What an example gave.
enum Ran {
    /// What a shell example printed on its standard output.
    Printed(String),
    /// A GraphQL answer.
    Answered(Value),
    /// An open subscription: its events are read where its answer stands.
    Subscribed(Box<Socket>),
    /// Checked, with nothing to show: a schema excerpt.
    Checked,
    /// It could not run; that is reported already.
    Failed,
}

async fn check_document(path: &str) {
    let source = std::fs::read_to_string(Path::new(ROOT).join(path))
        .unwrap_or_else(|err| panic!("{path}: {err}"));
    let (document, errors) = parse_document(path, &source);
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    let app = if document.blocks.iter().any(|block| block.role == Role::Run) {
        let flags: Vec<&str> = document.server_flags.iter().map(String::as_str).collect();
        Some(spawn_app_with(&flags).await)
    } else {
        None
    };
    let mut run = DocumentRun {
        document: &document,
        app,
        scratch: tempfile::tempdir().expect("a scratch folder"),
        variables: HashMap::new(),
        outputs: HashMap::new(),
        shown: Masker::default(),
        got: Masker::default(),
        failures: Vec::new(),
    };
    run.run().await;
    assert!(
        run.failures.is_empty(),
        "{path}: {} example(s) failed (how they run: docs/testing.md, \"Examples in the \
         guides\")\n\n{}",
        run.failures.len(),
        run.failures.join("\n\n")
    );
}

/// One document's examples, run in order against one fresh server.
struct DocumentRun<'d> {
    document: &'d Document,
    app: Option<TestApp>,
    /// The shell examples' working folder (`> orders.ndjson`, an import's rejects).
    scratch: tempfile::TempDir,
    /// Shell variables, set by one example and read by later ones (`$KEY`).
    variables: HashMap<String, String>,
    outputs: HashMap<String, Ran>,
    /// Placeholders for the ids and cursors the document shows, and for those the
    /// server gave, each by first appearance in the document.
    shown: Masker,
    got: Masker,
    failures: Vec<String>,
}

impl DocumentRun<'_> {
    async fn run(&mut self) {
        let document = self.document;
        let answered: HashSet<&str> = document
            .blocks
            .iter()
            .filter(|block| block.role == Role::Answer)
            .map(|block| block.name.as_str())
            .collect();
        let mut variables: HashMap<&str, Value> = HashMap::new();
        for block in &document.blocks {
            if block.role == Role::Variables {
                match serde_json::from_str(&block.text) {
                    Ok(value) => {
                        variables.insert(block.name.as_str(), value);
                    }
                    Err(err) => self.fail(block, format!("the variables are not JSON: {err}")),
                }
            }
        }
        for block in &document.blocks {
            match &block.role {
                Role::Variables => {}
                Role::NotRun(reason) => {
                    eprintln!("{}: {} is not run: {reason}", document.path, block.name);
                }
                Role::Run => {
                    let ran = match self
                        .example(block, variables.get(block.name.as_str()))
                        .await
                    {
                        Ok((ran, problems)) => {
                            // With an answer shown, the answer is what is checked.
                            if !answered.contains(block.name.as_str()) {
                                for problem in problems {
                                    self.fail(block, problem);
                                }
                            }
                            ran
                        }
                        Err(err) => {
                            self.fail(block, err);
                            Ran::Failed
                        }
                    };
                    self.outputs.insert(block.name.clone(), ran);
                }
                Role::Answer => self.compare(block).await,
            }
        }
    }

    fn fail(&mut self, block: &Block, message: String) {
        self.failures.push(format!(
            "{}:{} {}: {message}",
            self.document.path, block.line, block.name
        ));
    }

    /// Runs one example: what it gave, and what went wrong while it ran (a failure
    /// unless the document shows an answer, which is then what is compared).
    async fn example(
        &mut self,
        block: &Block,
        variables: Option<&Value>,
    ) -> Result<(Ran, Vec<String>), String> {
        let subscribed = self
            .outputs
            .values()
            .filter(|ran| matches!(ran, Ran::Subscribed(_)))
            .count();
        let app = self.app.as_ref().ok_or("no server was started")?;
        if block.language == "graphql" {
            return graphql_example(app, &block.text, variables, subscribed).await;
        }
        let mut shell = Shell {
            app,
            scratch: self.scratch.path(),
            variables: &mut self.variables,
            problems: Vec::new(),
        };
        let printed = shell.run_script(&block.text).await?;
        Ok((Ran::Printed(printed), shell.problems))
    }

    /// Compares an answer block with what its example gave.
    async fn compare(&mut self, answer: &Block) {
        let name = answer.name.as_str();
        let runs = self
            .document
            .blocks
            .iter()
            .any(|block| block.name == name && block.role == Role::Run);
        if !runs {
            return;
        }
        if answer.language != "json" {
            let printed = match self.outputs.get(name) {
                Some(Ran::Printed(printed)) => printed.clone(),
                Some(Ran::Failed) => return,
                _ => {
                    self.fail(answer, "a text answer needs a shell example".to_owned());
                    return;
                }
            };
            if mask_digits(&printed) != mask_digits(&answer.text) {
                self.fail(
                    answer,
                    format!(
                        "the output differs (digits masked)\n  shown:\n{}  got:\n{}",
                        indent(&answer.text),
                        indent(&printed)
                    ),
                );
            }
            return;
        }
        let shown = match json_values(&answer.text) {
            Ok(shown) => shown,
            Err(err) => {
                self.fail(answer, format!("the answer is not JSON: {err}"));
                return;
            }
        };
        let got: Result<(Vec<Value>, String), String> =
            match self.outputs.get_mut(name) {
                None => Err("the answer comes before its example".to_owned()),
                Some(Ran::Failed) => return,
                Some(Ran::Checked) => Err("its example shows nothing to compare".to_owned()),
                Some(Ran::Answered(value)) => Ok((vec![value.clone()], value.to_string())),
                Some(Ran::Printed(printed)) => {
                    let printed = printed.clone();
                    match json_values(&printed) {
                        Ok(values) => Ok((values, printed)),
                        Err(err) => Err(format!(
                            "it printed what is not JSON ({err}):\n{}",
                            indent(&printed)
                        )),
                    }
                }
                Some(Ran::Subscribed(socket)) => subscription_events(socket, shown.len())
                    .await
                    .map(|events| {
                        let raw: Vec<String> = events.iter().map(Value::to_string).collect();
                        (events, raw.join("\n"))
                    }),
            };
        let (got, raw) = match got {
            Ok(got) => got,
            Err(err) => {
                self.fail(answer, err);
                return;
            }
        };
        let shown: Vec<Value> = shown.iter().map(|value| self.shown.mask(value)).collect();
        let got: Vec<Value> = got.iter().map(|value| self.got.mask(value)).collect();
        if shown != got {
            self.fail(
                answer,
                format!(
                    "the answer differs (ids, cursors and times masked)\n  shown:\n{}  \
                     got:\n{}  as printed:\n{}",
                    pretty(&shown),
                    pretty(&got),
                    indent(&raw)
                ),
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// GraphQL examples.

/// An operation is sent to `POST /graphql`, a subscription over WebSocket (left
/// open), and a schema excerpt is checked against the schema the server serves.
async fn graphql_example(
    app: &TestApp,
    text: &str,
    variables: Option<&Value>,
    subscribed: usize,
) -> Result<(Ran, Vec<String>), String> {
    let subscribes = match async_graphql::parser::parse_query(text) {
        Ok(document) => document
            .operations
            .iter()
            .any(|(_, operation)| operation.node.ty == OperationType::Subscription),
        Err(as_operation) => {
            return match async_graphql::parser::parse_schema(text) {
                Ok(excerpt) => Ok((Ran::Checked, schema_differences(&excerpt)?)),
                Err(as_schema) => Err(format!(
                    "not GraphQL: as an operation, {as_operation}; as a schema, {as_schema}"
                )),
            };
        }
    };
    if subscribes {
        let socket = subscribe(app, text, variables, subscribed + 1).await?;
        return Ok((Ran::Subscribed(Box::new(socket)), Vec::new()));
    }
    let mut body = json!({"query": text});
    if let Some(variables) = variables {
        body["variables"] = variables.clone();
    }
    let response = app
        .client
        .post(app.url("/graphql"))
        .json(&body)
        .send()
        .await
        .map_err(|err| format!("POST /graphql: {err}"))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|err| format!("POST /graphql: {err}"))?;
    let answer: Value = serde_json::from_str(&text)
        .map_err(|_| format!("POST /graphql answered {status}, not with JSON: {text}"))?;
    let mut problems = Vec::new();
    if status != 200 {
        problems.push(format!("POST /graphql answered {status}: {answer}"));
    } else if answer.get("errors").is_some() {
        problems.push(format!("the answer has errors: {answer}"));
    }
    Ok((Ran::Answered(answer), problems))
}

/// Subscribes over `graphql-transport-ws` and returns once the server follows the
/// subscription (its `identity_event_subscribers` gauge counts it once its start is
/// settled), so that what later examples change reaches it.
async fn subscribe(
    app: &TestApp,
    query: &str,
    variables: Option<&Value>,
    following: usize,
) -> Result<Socket, String> {
    let mut request = format!("ws://{}/graphql", app.address)
        .into_client_request()
        .map_err(|err| err.to_string())?;
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().expect("a header value"),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|err| format!("the WebSocket handshake failed: {err}"))?;
    send(
        &mut socket,
        json!({"type": "connection_init", "payload": {}}),
    )
    .await?;
    let ack = next_message(&mut socket).await?;
    if ack["type"] != "connection_ack" {
        return Err(format!("connection_init was answered {ack}"));
    }
    let mut payload = json!({"query": query});
    if let Some(variables) = variables {
        payload["variables"] = variables.clone();
    }
    send(
        &mut socket,
        json!({"id": "1", "type": "subscribe", "payload": payload}),
    )
    .await?;
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let metrics = app.metrics_text().await;
        let count = metrics
            .lines()
            .find_map(|line| line.strip_prefix("identity_event_subscribers "))
            .and_then(|value| value.trim().parse::<usize>().ok())
            .unwrap_or_default();
        if count >= following {
            return Ok(socket);
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "the server never followed the subscription ({count} subscriber(s))"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn send(socket: &mut Socket, message: Value) -> Result<(), String> {
    socket
        .send(Message::text(message.to_string()))
        .await
        .map_err(|err| format!("the WebSocket failed: {err}"))
}

/// The next protocol message, answering pings.
async fn next_message(socket: &mut Socket) -> Result<Value, String> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .map_err(|_| format!("the server said nothing within {PATIENCE:?}"))?;
        match message {
            Some(Ok(Message::Text(text))) => {
                let value: Value = serde_json::from_str(&text)
                    .map_err(|err| format!("a message that is not JSON ({err}): {text}"))?;
                if value["type"] == "ping" {
                    send(socket, json!({"type": "pong"})).await?;
                    continue;
                }
                return Ok(value);
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(format!("the server closed the WebSocket: {frame:?}"));
            }
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(format!("the WebSocket failed: {err}")),
            None => return Err("the WebSocket ended".to_owned()),
        }
    }
}

/// The payloads of the next `count` events of the subscription.
async fn subscription_events(socket: &mut Socket, count: usize) -> Result<Vec<Value>, String> {
    let mut events = Vec::with_capacity(count);
    while events.len() < count {
        let message = next_message(socket).await?;
        if message["type"] != "next" {
            return Err(format!(
                "after {} event(s) the subscription said {message}",
                events.len()
            ));
        }
        events.push(message["payload"].clone());
    }
    Ok(events)
}

/// What a schema excerpt (SDL in a guide) says that the served schema does not:
/// every type it defines must be served, with every field, argument and value it
/// lists, of the types it gives.
fn schema_differences(excerpt: &ServiceDocument) -> Result<Vec<String>, String> {
    let served_document =
        async_graphql::parser::parse_schema(identity_reconciliation::http::graphql::sdl())
            .map_err(|err| format!("the served schema does not parse: {err}"))?;
    let served: HashMap<&str, &TypeDefinition> = served_document
        .definitions
        .iter()
        .filter_map(|definition| match definition {
            TypeSystemDefinition::Type(definition) => {
                Some((definition.node.name.node.as_str(), &definition.node))
            }
            _ => None,
        })
        .collect();
    let mut differences = Vec::new();
    for definition in &excerpt.definitions {
        let TypeSystemDefinition::Type(definition) = definition else {
            continue;
        };
        let name = definition.node.name.node.as_str();
        let Some(actual) = served.get(name) else {
            differences.push(format!("type {name} is not in the served schema"));
            continue;
        };
        match (&definition.node.kind, &actual.kind) {
            (TypeKind::Scalar, TypeKind::Scalar) => {}
            (TypeKind::Object(shown), TypeKind::Object(actual)) => {
                compare_fields(name, &shown.fields, &actual.fields, &mut differences);
            }
            (TypeKind::Interface(shown), TypeKind::Interface(actual)) => {
                compare_fields(name, &shown.fields, &actual.fields, &mut differences);
            }
            (TypeKind::InputObject(shown), TypeKind::InputObject(actual)) => {
                compare_inputs(name, &shown.fields, &actual.fields, &mut differences);
            }
            (TypeKind::Enum(shown), TypeKind::Enum(actual)) => {
                for value in &shown.values {
                    let value = value.node.value.node.as_str();
                    if !actual
                        .values
                        .iter()
                        .any(|served| served.node.value.node.as_str() == value)
                    {
                        differences.push(format!("{name}.{value} is not served"));
                    }
                }
            }
            (TypeKind::Union(shown), TypeKind::Union(actual)) => {
                for member in &shown.members {
                    let member = member.node.as_str();
                    if !actual
                        .members
                        .iter()
                        .any(|served| served.node.as_str() == member)
                    {
                        differences.push(format!("{member} is not a member of {name}"));
                    }
                }
            }
            _ => differences.push(format!("{name} is another kind of type when served")),
        }
    }
    Ok(differences)
}

fn compare_fields(
    owner: &str,
    shown: &[Positioned<FieldDefinition>],
    served: &[Positioned<FieldDefinition>],
    differences: &mut Vec<String>,
) {
    for field in shown {
        let field = &field.node;
        let name = field.name.node.as_str();
        let Some(actual) = served
            .iter()
            .find(|served| served.node.name.node.as_str() == name)
        else {
            differences.push(format!("{owner}.{name} is not served"));
            continue;
        };
        let actual = &actual.node;
        if field.ty.node.to_string() != actual.ty.node.to_string() {
            differences.push(format!(
                "{owner}.{name} is shown as {}, served as {}",
                field.ty.node, actual.ty.node
            ));
        }
        compare_inputs(
            &format!("{owner}.{name}"),
            &field.arguments,
            &actual.arguments,
            differences,
        );
    }
}

fn compare_inputs(
    owner: &str,
    shown: &[Positioned<InputValueDefinition>],
    served: &[Positioned<InputValueDefinition>],
    differences: &mut Vec<String>,
) {
    for input in shown {
        let input = &input.node;
        let name = input.name.node.as_str();
        match served
            .iter()
            .find(|served| served.node.name.node.as_str() == name)
        {
            None => differences.push(format!("{owner}: `{name}` is not served")),
            Some(actual) if actual.node.ty.node.to_string() != input.ty.node.to_string() => {
                differences.push(format!(
                    "{owner}: `{name}` is shown as {}, served as {}",
                    input.ty.node, actual.node.ty.node
                ));
            }
            Some(_) => {}
        }
    }
}

// ---------------------------------------------------------------------------------
// Shell examples: read and run here, never by a shell.

/// One piece of a shell word.
#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    /// `$NAME` or `${NAME}`.
    Variable(String),
    /// `$(COMMAND)`.
    Substitution(String),
}

type Word = Vec<Piece>;

#[derive(Debug)]
enum Token {
    Word(Word),
    Pipe,
    Redirect,
    Background,
}

/// One command line: `NAME=value ... program args | filter > file &`.
struct Line {
    assignments: Vec<(String, Word)>,
    stages: Vec<Vec<Word>>,
    redirect: Option<Word>,
    background: bool,
}

/// A command line with its words expanded.
struct Expanded {
    assignments: Vec<(String, String)>,
    stages: Vec<Vec<String>>,
    redirect: Option<String>,
    background: bool,
}

/// The command lines of a script: quotes, `\` line continuations, `#` comments,
/// `$NAME`, `${NAME}` and `$(…)`, `|`, `>` and a trailing `&`.
fn tokenize(script: &str) -> Result<Vec<Vec<Token>>, String> {
    let chars: Vec<char> = script.chars().collect();
    let mut lines = Vec::new();
    let mut tokens = Vec::new();
    let mut word: Option<Word> = None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' => {
                if let Some(&next) = chars.get(i + 1)
                    && next != '\n'
                {
                    push_char(word.get_or_insert_with(Vec::new), next);
                }
                i += 2;
            }
            '\n' | ';' => {
                end_word(&mut word, &mut tokens);
                if !tokens.is_empty() {
                    lines.push(std::mem::take(&mut tokens));
                }
                i += 1;
            }
            ' ' | '\t' | '\r' => {
                end_word(&mut word, &mut tokens);
                i += 1;
            }
            '#' if word.is_none() => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '|' | '>' | '&' => {
                end_word(&mut word, &mut tokens);
                tokens.push(match c {
                    '|' => Token::Pipe,
                    '>' => Token::Redirect,
                    _ => Token::Background,
                });
                i += 1;
            }
            '\'' => {
                let close = (i + 1..chars.len())
                    .find(|&j| chars[j] == '\'')
                    .ok_or("a ' that is never closed")?;
                let quoted: String = chars[i + 1..close].iter().collect();
                push_text(word.get_or_insert_with(Vec::new), &quoted);
                i = close + 1;
            }
            '"' => {
                let pieces = word.get_or_insert_with(Vec::new);
                push_text(pieces, "");
                i += 1;
                loop {
                    let Some(&c) = chars.get(i) else {
                        return Err("a \" that is never closed".to_owned());
                    };
                    match c {
                        '"' => {
                            i += 1;
                            break;
                        }
                        '\\' if matches!(chars.get(i + 1), Some('"' | '\\' | '$' | '`')) => {
                            push_char(pieces, chars[i + 1]);
                            i += 2;
                        }
                        '\\' if chars.get(i + 1) == Some(&'\n') => i += 2,
                        '$' => {
                            let (piece, next) = expansion(&chars, i)?;
                            push_piece(pieces, piece);
                            i = next;
                        }
                        _ => {
                            push_char(pieces, c);
                            i += 1;
                        }
                    }
                }
            }
            '$' => {
                let (piece, next) = expansion(&chars, i)?;
                push_piece(word.get_or_insert_with(Vec::new), piece);
                i = next;
            }
            _ => {
                push_char(word.get_or_insert_with(Vec::new), c);
                i += 1;
            }
        }
    }
    end_word(&mut word, &mut tokens);
    if !tokens.is_empty() {
        lines.push(tokens);
    }
    Ok(lines)
}

/// The expansion starting with the `$` at `at`, and where the script goes on.
fn expansion(chars: &[char], at: usize) -> Result<(Piece, usize), String> {
    match chars.get(at + 1) {
        Some('(') => {
            let close = closing_parenthesis(chars, at + 1).ok_or("a $( that is never closed")?;
            let command: String = chars[at + 2..close].iter().collect();
            Ok((Piece::Substitution(command), close + 1))
        }
        Some('{') => {
            let close = (at + 2..chars.len())
                .find(|&j| chars[j] == '}')
                .ok_or("a ${ that is never closed")?;
            let name: String = chars[at + 2..close].iter().collect();
            if !is_name(&name) {
                return Err(format!("${{{name}}}: only ${{NAME}} is supported"));
            }
            Ok((Piece::Variable(name), close + 1))
        }
        Some(&first) if first.is_ascii_alphabetic() || first == '_' => {
            let end = (at + 1..chars.len())
                .find(|&j| !is_name_char(chars[j]))
                .unwrap_or(chars.len());
            Ok((Piece::Variable(chars[at + 1..end].iter().collect()), end))
        }
        _ => Ok((Piece::Text("$".to_owned()), at + 1)),
    }
}

/// The `)` closing the `(` at `open`, quotes and nesting considered.
fn closing_parenthesis(chars: &[char], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut i = open;
    while i < chars.len() {
        let c = chars[i];
        match quote {
            Some('"') if c == '\\' => i += 1,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '\'' | '"' => quote = Some(c),
                '\\' => i += 1,
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(i);
                    }
                }
                _ => {}
            },
        }
        i += 1;
    }
    None
}

fn push_char(pieces: &mut Word, c: char) {
    if let Some(Piece::Text(text)) = pieces.last_mut() {
        text.push(c);
    } else {
        pieces.push(Piece::Text(c.to_string()));
    }
}

fn push_text(pieces: &mut Word, text: &str) {
    if let Some(Piece::Text(last)) = pieces.last_mut() {
        last.push_str(text);
    } else {
        pieces.push(Piece::Text(text.to_owned()));
    }
}

fn push_piece(pieces: &mut Word, piece: Piece) {
    match piece {
        Piece::Text(text) => push_text(pieces, &text),
        other => pieces.push(other),
    }
}

fn end_word(word: &mut Option<Word>, tokens: &mut Vec<Token>) {
    if let Some(pieces) = word.take() {
        tokens.push(Token::Word(pieces));
    }
}

fn is_name(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(is_name_char)
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn parse_line(tokens: &[Token]) -> Result<Line, String> {
    let mut line = Line {
        assignments: Vec::new(),
        stages: Vec::new(),
        redirect: None,
        background: false,
    };
    let mut stage: Vec<Word> = Vec::new();
    let mut index = 0;
    while index < tokens.len() {
        match &tokens[index] {
            Token::Word(word) => match assignment(word) {
                Some(assignment) if stage.is_empty() && line.stages.is_empty() => {
                    line.assignments.push(assignment);
                }
                _ => stage.push(word.clone()),
            },
            Token::Pipe => {
                if stage.is_empty() {
                    return Err("`|` without a command before it".to_owned());
                }
                line.stages.push(std::mem::take(&mut stage));
            }
            Token::Redirect => {
                index += 1;
                let Some(Token::Word(file)) = tokens.get(index) else {
                    return Err("`>` without a file".to_owned());
                };
                line.redirect = Some(file.clone());
            }
            Token::Background => {
                if index + 1 < tokens.len() {
                    return Err("`&` is understood at the end of a line only".to_owned());
                }
                line.background = true;
            }
        }
        index += 1;
    }
    if !stage.is_empty() {
        line.stages.push(stage);
    } else if !line.stages.is_empty() {
        return Err("`|` without a command after it".to_owned());
    }
    Ok(line)
}

/// `NAME=value`, as the first words of a line.
fn assignment(word: &[Piece]) -> Option<(String, Word)> {
    let Some(Piece::Text(first)) = word.first() else {
        return None;
    };
    let (name, value) = first.split_once('=')?;
    if !is_name(name) {
        return None;
    }
    let mut pieces = vec![Piece::Text(value.to_owned())];
    pieces.extend(word[1..].iter().cloned());
    Some((name.to_owned(), pieces))
}

/// Runs the commands of shell examples: curl against the document's server, the
/// service's binary (`cargo run -- …`, `identity-reconciliation …`) on its database,
/// `python3` and `echo`, with pipes into `tail`, `head` and `cut`.
struct Shell<'a> {
    app: &'a TestApp,
    scratch: &'a Path,
    variables: &'a mut HashMap<String, String>,
    /// What went wrong in commands that ran (a status, an exit code).
    problems: Vec<String>,
}

impl Shell<'_> {
    /// What the script prints on its standard output.
    async fn run_script(&mut self, script: &str) -> Result<String, String> {
        let mut printed = String::new();
        for tokens in tokenize(script)? {
            let line = parse_line(&tokens)?;
            let mut expanded = Expanded {
                assignments: Vec::new(),
                stages: Vec::new(),
                redirect: None,
                background: line.background,
            };
            for (name, value) in &line.assignments {
                let value = self.expand(value).await?;
                expanded.assignments.push((name.clone(), value));
            }
            for stage in &line.stages {
                let mut argv = Vec::new();
                for word in stage {
                    argv.push(self.expand(word).await?);
                }
                expanded.stages.push(argv);
            }
            if let Some(word) = &line.redirect {
                expanded.redirect = Some(self.expand(word).await?);
            }
            printed.push_str(&self.execute(expanded).await?);
        }
        Ok(printed)
    }

    async fn expand(&mut self, word: &[Piece]) -> Result<String, String> {
        let mut text = String::new();
        for piece in word {
            match piece {
                Piece::Substitution(command) => text.push_str(&self.substitute(command).await?),
                other => text.push_str(&self.expand_plain(std::slice::from_ref(other))?),
            }
        }
        Ok(text)
    }

    /// A word without command substitutions.
    fn expand_plain(&self, word: &[Piece]) -> Result<String, String> {
        let mut text = String::new();
        for piece in word {
            match piece {
                Piece::Text(part) => text.push_str(part),
                Piece::Variable(name) => {
                    let value = self.variables.get(name).ok_or_else(|| {
                        format!("${name} is not set: an earlier command of the document sets it")
                    })?;
                    text.push_str(value);
                }
                Piece::Substitution(command) => {
                    return Err(format!(
                        "$({command}): a $(…) within a $(…) is not understood"
                    ));
                }
            }
        }
        Ok(text)
    }

    /// `$(COMMAND)`: what it prints, without its trailing newlines.
    async fn substitute(&mut self, command: &str) -> Result<String, String> {
        let lines = tokenize(command)?;
        let [tokens] = lines.as_slice() else {
            return Err(format!("$({command}): one command line is expected"));
        };
        let line = parse_line(tokens)?;
        let mut expanded = Expanded {
            assignments: Vec::new(),
            stages: Vec::new(),
            redirect: None,
            background: line.background,
        };
        for (name, value) in &line.assignments {
            expanded
                .assignments
                .push((name.clone(), self.expand_plain(value)?));
        }
        for stage in &line.stages {
            let argv = stage
                .iter()
                .map(|word| self.expand_plain(word))
                .collect::<Result<Vec<_>, _>>()?;
            expanded.stages.push(argv);
        }
        if let Some(word) = &line.redirect {
            expanded.redirect = Some(self.expand_plain(word)?);
        }
        let printed = self.execute(expanded).await?;
        Ok(printed.trim_end_matches('\n').to_owned())
    }

    async fn execute(&mut self, line: Expanded) -> Result<String, String> {
        let Some((program, filters)) = line.stages.split_first() else {
            if line.background || line.redirect.is_some() {
                return Err("`&` or `>` without a command".to_owned());
            }
            for (name, value) in line.assignments {
                self.variables.insert(name, value);
            }
            return Ok(String::new());
        };
        let mut printed = self
            .program(program, &line.assignments, line.background)
            .await?;
        for filter in filters {
            printed = apply_filter(filter, &printed)?;
        }
        match &line.redirect {
            Some(file) => {
                std::fs::write(self.scratch.join(file), printed.as_bytes())
                    .map_err(|err| format!("> {file}: {err}"))?;
                Ok(String::new())
            }
            None => Ok(printed),
        }
    }

    async fn program(
        &mut self,
        argv: &[String],
        environment: &[(String, String)],
        background: bool,
    ) -> Result<String, String> {
        let Some((name, args)) = argv.split_first() else {
            return Err("an empty command".to_owned());
        };
        let service_args = match name.as_str() {
            "cargo" => Some(cargo_run_args(args)?),
            "identity-reconciliation" => Some(args.to_vec()),
            _ => None,
        };
        if let Some(args) = service_args {
            return self.service(&args, environment, background).await;
        }
        if background {
            return Err(format!(
                "`{name} … &`: only the server runs in the background"
            ));
        }
        if !environment.is_empty() {
            return Err(format!(
                "`NAME=value {name}`: settings before a command go to the service's binary only"
            ));
        }
        match name.as_str() {
            "curl" => self.curl(args).await,
            "python3" => self.python(args).await,
            "echo" => Ok(format!("{}\n", args.join(" "))),
            other => Err(format!(
                "`{other}`: the examples' runner knows curl, cargo run, identity-reconciliation, \
                 python3 and echo; mark the example `(not run: REASON)` or teach \
                 tests/api/examples.rs"
            )),
        }
    }

    /// The service's binary with `args`, on the document's database; a command that
    /// only starts the server stands for the document's server, which is running.
    async fn service(
        &mut self,
        args: &[String],
        environment: &[(String, String)],
        background: bool,
    ) -> Result<String, String> {
        if args.first().is_none_or(|first| first.as_str() == "serve") {
            if args.len() > 1 || !environment.is_empty() {
                return Err(
                    "a server with settings: give them to the document's server with \
                     `<!-- examples-server: FLAGS -->`"
                        .to_owned(),
                );
            }
            return Ok(String::new());
        }
        if background {
            return Err("only the server runs in the background".to_owned());
        }
        let database = self
            .app
            .database
            .as_ref()
            .ok_or("the document's server has no database")?;
        let mut command = Command::new(SERVER_BINARY);
        for variable in CLEARED_VARIABLES {
            command.env_remove(variable);
        }
        for (name, value) in environment {
            command.env(name, value);
        }
        command
            .args(args)
            .env("DATABASE_URL", &database.url)
            .env("RUST_LOG", "warn");
        let shown = format!("identity-reconciliation {}", args.join(" "));
        self.output(command, &shown).await
    }

    async fn python(&mut self, args: &[String]) -> Result<String, String> {
        let mut command = Command::new("python3");
        for arg in args {
            // The scripts are the repository's; files made are the scratch folder's.
            let in_repository = Path::new(ROOT).join(arg);
            if !arg.starts_with('-') && Path::new(arg).is_relative() && in_repository.exists() {
                command.arg(in_repository);
            } else {
                command.arg(arg);
            }
        }
        let shown = format!("python3 {}", args.join(" "));
        self.output(command, &shown).await
    }

    /// Runs `command` in the scratch folder: its standard output; a problem when it
    /// fails.
    async fn output(&mut self, mut command: Command, shown: &str) -> Result<String, String> {
        command.current_dir(self.scratch).stdin(Stdio::null());
        let output: Output = tokio::task::spawn_blocking(move || command.output())
            .await
            .map_err(|err| format!("`{shown}`: {err}"))?
            .map_err(|err| format!("`{shown}` did not start: {err}"))?;
        if !output.status.success() {
            self.problems.push(format!(
                "`{shown}` ended with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `curl` with `-X`, `-H`, `-d` and `-s`: the response's body.
    async fn curl(&mut self, args: &[String]) -> Result<String, String> {
        let mut method = None;
        let mut headers: Vec<&str> = Vec::new();
        let mut data: Option<String> = None;
        let mut url: Option<&str> = None;
        let mut index = 0;
        while index < args.len() {
            let arg = args[index].as_str();
            match arg {
                "-X" | "--request" => {
                    method = Some(option_value(args, index, arg)?);
                    index += 1;
                }
                "-H" | "--header" => {
                    headers.push(option_value(args, index, arg)?);
                    index += 1;
                }
                "-d" | "--data" | "--data-raw" | "--data-binary" => {
                    let part = option_value(args, index, arg)?;
                    if part.starts_with('@') && arg != "--data-raw" {
                        return Err(format!(
                            "curl {arg} {part}: data from a file is not understood"
                        ));
                    }
                    data = Some(match data {
                        Some(before) => format!("{before}&{part}"),
                        None => part.to_owned(),
                    });
                    index += 1;
                }
                "-s" | "-S" | "-sS" | "-Ss" | "--silent" | "--show-error" => {}
                flag if flag.starts_with('-') => {
                    return Err(format!(
                        "curl {flag}: not understood by the examples' runner"
                    ));
                }
                _ if url.is_some() => return Err("curl: one URL is expected".to_owned()),
                _ => url = Some(arg),
            }
            index += 1;
        }
        let url = url.ok_or("curl: no URL")?;
        let target = service_url(self.app, url)?;
        let method = method.unwrap_or(if data.is_some() { "POST" } else { "GET" });
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|err| format!("curl -X {method}: {err}"))?;
        let mut request = self.app.client.request(method, target);
        let mut typed = false;
        for header in headers {
            let (name, value) = header
                .split_once(':')
                .ok_or_else(|| format!("curl -H {header:?}: not `Name: value`"))?;
            typed |= name.trim().eq_ignore_ascii_case("content-type");
            request = request.header(name.trim(), value.trim());
        }
        if let Some(data) = data {
            // As curl does: `-d` alone sends a form.
            if !typed {
                request = request.header("content-type", "application/x-www-form-urlencoded");
            }
            request = request.body(data);
        }
        let response = request
            .send()
            .await
            .map_err(|err| format!("curl {url}: {err}"))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|err| format!("curl {url}: {err}"))?;
        if !status.is_success() {
            self.problems
                .push(format!("curl {url} answered {status}: {body}"));
        }
        Ok(body)
    }
}

/// The value of the option at `index`.
fn option_value<'a>(args: &'a [String], index: usize, option: &str) -> Result<&'a str, String> {
    args.get(index + 1)
        .map(String::as_str)
        .ok_or_else(|| format!("{option}: a value is missing"))
}

/// The service's arguments of `cargo run [--release] [--bin identity-reconciliation]
/// [-- ARGS]`.
fn cargo_run_args(args: &[String]) -> Result<Vec<String>, String> {
    if args.first().map(String::as_str) != Some("run") {
        return Err(format!(
            "`cargo {}`: the examples' runner knows `cargo run` only",
            args.join(" ")
        ));
    }
    let mut index = 1;
    while index < args.len() {
        match args[index].as_str() {
            "--" => return Ok(args[index + 1..].to_vec()),
            "--release" | "-q" | "--quiet" => {}
            "--bin" => {
                let bin = option_value(args, index, "--bin")?;
                if bin != "identity-reconciliation" {
                    return Err(format!(
                        "`cargo run --bin {bin}`: the runner runs the service's binary only"
                    ));
                }
                index += 1;
            }
            other => return Err(format!("`cargo run {other}`: not understood")),
        }
        index += 1;
    }
    Ok(Vec::new())
}

/// `url` on the document's server: the examples address `localhost:3000`.
fn service_url(app: &TestApp, url: &str) -> Result<String, String> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (authority, path) = rest
        .find('/')
        .map_or((rest, "/"), |slash| rest.split_at(slash));
    if matches!(authority, "localhost:3000" | "127.0.0.1:3000") {
        Ok(app.url(path))
    } else {
        Err(format!(
            "{url}: the examples address the server as localhost:3000 or 127.0.0.1:3000"
        ))
    }
}

/// `tail -n N`, `tail -N`, `head -n N` or `cut -d C -f N` over `input`.
fn apply_filter(argv: &[String], input: &str) -> Result<String, String> {
    let words: Vec<&str> = argv.iter().map(String::as_str).collect();
    let lines: Vec<&str> = input.lines().collect();
    let kept: Vec<&str> = match words.as_slice() {
        ["tail", "-n", count] => {
            let count = number(count)?;
            lines[lines.len().saturating_sub(count)..].to_vec()
        }
        ["tail", count] if count.starts_with('-') => {
            let count = number(count.trim_start_matches('-'))?;
            lines[lines.len().saturating_sub(count)..].to_vec()
        }
        ["head", "-n", count] => {
            let count = number(count)?;
            lines[..count.min(lines.len())].to_vec()
        }
        ["cut", options @ ..] => return cut(options, &lines),
        _ => {
            return Err(format!(
                "`{}`: after a pipe the runner knows tail -n N, head -n N and cut -d C -f N",
                argv.join(" ")
            ));
        }
    };
    let mut text = String::new();
    for line in kept {
        text.push_str(line);
        text.push('\n');
    }
    Ok(text)
}

fn cut(options: &[&str], lines: &[&str]) -> Result<String, String> {
    let mut delimiter = '\t';
    let mut field = None;
    let mut index = 0;
    while index < options.len() {
        let option = options[index];
        let (flag, value) = match (option.get(..2), option.get(2..)) {
            (Some(flag), Some(value)) if !value.is_empty() => (flag, value),
            _ => {
                index += 1;
                let value = options
                    .get(index)
                    .copied()
                    .ok_or_else(|| format!("cut {option}: a value is missing"))?;
                (option, value)
            }
        };
        match flag {
            "-d" => delimiter = value.chars().next().ok_or("cut -d: no delimiter")?,
            "-f" => field = Some(number(value)?),
            _ => return Err(format!("cut {option}: not understood")),
        }
        index += 1;
    }
    let field = field
        .filter(|field| *field > 0)
        .ok_or("cut: `-f N` (from 1) is missing")?;
    let mut text = String::new();
    for &line in lines {
        let part = if line.contains(delimiter) {
            line.split(delimiter).nth(field - 1).unwrap_or_default()
        } else {
            line
        };
        text.push_str(part);
        text.push('\n');
    }
    Ok(text)
}

fn number(text: &str) -> Result<usize, String> {
    text.parse().map_err(|_| format!("`{text}` is not a count"))
}

// ---------------------------------------------------------------------------------
// Comparing answers.

/// Replaces ids and cursors by placeholders numbered by first appearance, the same
/// value always by the same placeholder, and RFC 3339 times by one placeholder: a
/// document's answers and the server's are compared in their structure.
#[derive(Default)]
struct Masker {
    ids: HashMap<String, usize>,
    cursors: HashMap<String, usize>,
}

impl Masker {
    fn mask(&mut self, value: &Value) -> Value {
        self.mask_under(None, value)
    }

    /// `value`, found under the key `key`.
    fn mask_under(&mut self, key: Option<&str>, value: &Value) -> Value {
        match value {
            Value::Object(fields) => {
                // In key order, so that the placeholders do not depend on the order
                // the keys are written in.
                let mut entries: Vec<(&String, &Value)> = fields.iter().collect();
                entries.sort_unstable_by_key(|(key, _)| *key);
                let mut masked = serde_json::Map::new();
                for (key, value) in entries {
                    masked.insert(key.clone(), self.mask_under(Some(key.as_str()), value));
                }
                Value::Object(masked)
            }
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|item| self.mask_under(key, item))
                    .collect(),
            ),
            Value::String(text) if is_time(text) => Value::String("<time>".to_owned()),
            Value::Number(_) | Value::String(_) => match key {
                Some(key) if key == "id" || key.ends_with("Id") || key.ends_with("Ids") => {
                    Value::String(placeholder(&mut self.ids, "id", value))
                }
                Some(key) if key == "cursor" || key.ends_with("Cursor") => {
                    Value::String(placeholder(&mut self.cursors, "cursor", value))
                }
                _ => value.clone(),
            },
            Value::Null | Value::Bool(_) => value.clone(),
        }
    }
}

fn placeholder(seen: &mut HashMap<String, usize>, kind: &str, value: &Value) -> String {
    let next = seen.len() + 1;
    let number = *seen.entry(value.to_string()).or_insert(next);
    format!("<{kind} {number}>")
}

/// `2026-01-01T12:00:00Z`, with or without a fraction, `Z` or an offset.
fn is_time(text: &str) -> bool {
    let bytes = text.as_bytes();
    let digits = |from: usize, to: usize| {
        bytes
            .get(from..to)
            .is_some_and(|part| part.iter().all(u8::is_ascii_digit))
    };
    let shaped = bytes.len() >= 20
        && digits(0, 4)
        && bytes[4] == b'-'
        && digits(5, 7)
        && bytes[7] == b'-'
        && digits(8, 10)
        && matches!(bytes[10], b'T' | b't' | b' ')
        && digits(11, 13)
        && bytes[13] == b':'
        && digits(14, 16)
        && bytes[16] == b':'
        && digits(17, 19);
    if !shaped {
        return false;
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let end = fraction
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(fraction.len());
        if end == 0 {
            return false;
        }
        rest = &fraction[end..];
    }
    let offset = rest.as_bytes();
    matches!(rest, "Z" | "z")
        || (offset.len() == 6
            && matches!(offset[0], b'+' | b'-')
            && offset[1].is_ascii_digit()
            && offset[2].is_ascii_digit()
            && offset[3] == b':'
            && offset[4].is_ascii_digit()
            && offset[5].is_ascii_digit())
}

/// The JSON values of `text`, one after another (as several commands print them).
fn json_values(text: &str) -> Result<Vec<Value>, String> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| err.to_string())
}

/// Trimmed lines, every run of digits one `#`.
fn mask_digits(text: &str) -> String {
    let mut masked = String::new();
    for line in text.trim().lines() {
        let mut in_digits = false;
        for c in line.trim_end().chars() {
            if c.is_ascii_digit() {
                if !in_digits {
                    masked.push('#');
                }
                in_digits = true;
            } else {
                masked.push(c);
                in_digits = false;
            }
        }
        masked.push('\n');
    }
    masked
}

fn pretty(values: &[Value]) -> String {
    let mut text = String::new();
    for value in values {
        text.push_str(&serde_json::to_string_pretty(value).unwrap_or_default());
        text.push('\n');
    }
    indent(&text)
}

fn indent(text: &str) -> String {
    let mut indented = String::new();
    for line in text.trim_end().lines() {
        indented.push_str("    ");
        indented.push_str(line);
        indented.push('\n');
    }
    indented
}
