//! GraphiQL in a real browser: headless Chromium, driven over WebDriver by
//! chromedriver, types an `identify` mutation into the editor, runs it, and reads
//! the answer from the result pane. The page must work with no internet access.
//!
//! Needs Debian's `chromium` and `chromium-driver` (or `CHROME` and `CHROMEDRIVER`
//! pointing at the binaries). Without them the test says loudly that it did not
//! run; with `REQUIRE_BROWSER_TEST=1` (set by `.ci/run`) their absence fails it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::helpers::spawn_app;

fn binary(env: &str, default: &str) -> Option<PathBuf> {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    path.is_file().then_some(path)
}

/// Kills chromedriver (and the browser it started) however the test ends.
struct Driver {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start(chromedriver: &Path) -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(response) = driver
                .http
                .get(format!("{}/status", driver.base))
                .send()
                .await
                && let Ok(status) = response.json::<Value>().await
                && status["value"]["ready"] == true
            {
                return driver;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One WebDriver command; returns its `value`, or the error body.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Value> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("webdriver reachable");
        let ok = response.status().is_success();
        let body: Value = response.json().await.expect("webdriver answers JSON");
        if ok {
            Ok(body["value"].clone())
        } else {
            Err(body)
        }
    }
}

struct Session<'a> {
    driver: &'a Driver,
    path: String,
}

impl Session<'_> {
    async fn post(&self, path: &str, body: Value) -> Result<Value, Value> {
        self.driver
            .call(
                reqwest::Method::POST,
                &format!("{}{path}", self.path),
                Some(body),
            )
            .await
    }

    async fn get(&self, path: &str) -> Value {
        self.driver
            .call(reqwest::Method::GET, &format!("{}{path}", self.path), None)
            .await
            .unwrap_or_else(|err| panic!("GET {path}: {err}"))
    }

    /// Waits for an element matching `css`; returns its WebDriver id.
    async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(value) = self
                .post("/element", json!({"using": "css selector", "value": css}))
                .await
                && let Some(id) = value
                    .as_object()
                    .and_then(|o| o.values().next())
                    .and_then(Value::as_str)
            {
                return id.to_owned();
            }
            assert!(Instant::now() < deadline, "no element matches {css}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn click(&self, element: &str) {
        self.post(&format!("/element/{element}/click"), json!({}))
            .await
            .unwrap_or_else(|err| panic!("click: {err}"));
    }

    async fn type_text(&self, element: &str, text: &str) {
        self.post(&format!("/element/{element}/value"), json!({"text": text}))
            .await
            .unwrap_or_else(|err| panic!("typing: {err}"));
    }

    async fn text(&self, element: &str) -> String {
        self.get(&format!("/element/{element}/text"))
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_runs_an_identify_mutation_in_a_real_browser() {
    let (Some(chromium), Some(chromedriver)) = (
        binary("CHROME", "/usr/bin/chromium"),
        binary("CHROMEDRIVER", "/usr/bin/chromedriver"),
    ) else {
        let message = "browser test NOT RUN: chromium and chromedriver not found \
                       (apt-get install chromium chromium-driver, or set CHROME and CHROMEDRIVER)";
        assert!(
            std::env::var_os("REQUIRE_BROWSER_TEST").is_none(),
            "{message}"
        );
        // Straight to the terminal: the test harness hides what passing tests print.
        let _ = writeln!(std::io::stderr(), "\n*** {message} ***\n");
        return;
    };
    let app = spawn_app().await;
    let driver = Driver::start(&chromedriver).await;
    let profile = tempdir("chromium-profile");
    let capabilities = json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless", "--no-sandbox", "--disable-gpu",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--no-first-run", "--disable-quic",
                     "--window-size=1280,800", format!("--user-data-dir={}", profile.display())]
        }
    }}});
    let session = driver
        .call(reqwest::Method::POST, "/session", Some(capabilities))
        .await
        .unwrap_or_else(|err| panic!("chromium did not start: {err}"));
    let session = Session {
        driver: &driver,
        path: format!("/session/{}", session["sessionId"].as_str().unwrap()),
    };

    session
        .post("/url", json!({"url": app.url("/graphql")}))
        .await
        .unwrap();
    let editor = session.find(".graphiql-query-editor .CodeMirror").await;
    session.click(&editor).await;
    let input = session
        .find(".graphiql-query-editor .CodeMirror textarea")
        .await;
    // Select all and delete the example, then type on one line: the editor closes
    // brackets and quotes itself, and typing the closing one steps over it.
    session.type_text(&input, "\u{E009}a\u{E009}\u{E017}").await;
    let mutation = "mutation { identify(input: { email: \"doc@hillvalley.edu\", \
                    phoneNumber: \"121 0000\" }) { primaryContactId emails phoneNumbers } }";
    session.type_text(&input, mutation).await;
    let run = session.find(".graphiql-execute-button").await;
    session.click(&run).await;

    let result = session
        .find(".graphiql-response .result-window .CodeMirror")
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut shown = String::new();
    while Instant::now() < deadline {
        shown = session.text(&result).await;
        if shown.contains("primaryContactId") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let screenshot = session.get("/screenshot").await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(screenshot.as_str().unwrap())
        .unwrap();
    let artefact = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("graphiql-identify.png");
    std::fs::write(&artefact, png).unwrap();
    let _ = writeln!(
        std::io::stderr(),
        "GraphiQL screenshot: {}",
        artefact.display()
    );
    let _ = driver
        .call(reqwest::Method::DELETE, &session.path, None)
        .await;

    let compact: String = shown.split_whitespace().collect();
    assert!(
        compact.contains(r#""primaryContactId":1"#)
            && compact.contains(r#""emails":["doc@hillvalley.edu"]"#)
            && compact.contains(r#""phoneNumbers":["1210000"]"#),
        "result pane shows: {shown}"
    );
    assert_eq!(
        app.row_count().await,
        1,
        "the mutation did not reach the database"
    );
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}
