//! One identify call over REST or GraphQL, and what came of it: a parsed identity,
//! or a failure sorted into a kind the report counts.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::checks::error_chain;

const GRAPHQL_IDENTIFY: &str = "mutation($e:String,$p:String){identify(input:{email:$e,phoneNumber:$p}){primaryContactId emails phoneNumbers secondaryContactIds outcome}}";

/// Largest answer read. A merged identity lists all its values, so answers grow with
/// contention, yet a misbehaving server must not exhaust the generator's memory.
const ANSWER_LIMIT_BYTES: usize = 64 << 20;

/// How much of an unexpected body the report quotes.
const EXCERPT_CHARS: usize = 200;

/// The API a run drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// `POST /identify`
    Rest,
    /// The `identify` mutation on `POST /graphql`
    Graphql,
}

impl Api {
    fn path(self) -> &'static str {
        match self {
            Api::Rest => "/identify",
            Api::Graphql => "/graphql",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Api::Rest => "rest",
            Api::Graphql => "graphql",
        }
    }
}

/// Parses a `--url`: `http://host:port`, optionally with a path prefix the API paths
/// go under. TLS is not supported: load tests run next to the server.
pub fn parse_base_url(raw: &str) -> Result<Uri, String> {
    let uri: Uri = raw.parse().map_err(|err| format!("not a URL: {err}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => return Err(format!("only http:// is supported, not {other}://")),
        None => return Err("give a scheme and a host, e.g. http://127.0.0.1:3000".to_owned()),
    }
    if uri.query().is_some() {
        return Err("the URL must not carry a query".to_owned());
    }
    Ok(uri)
}

/// The endpoint of `api` under a base URL from [`parse_base_url`].
pub fn endpoint(base: &Uri, api: Api) -> Result<Uri, String> {
    let authority = base
        .authority()
        .ok_or_else(|| format!("{base} has no host"))?;
    let prefix = base.path().trim_end_matches('/');
    format!("http://{authority}{prefix}{}", api.path())
        .parse()
        .map_err(|err| format!("cannot build the endpoint from {base}: {err}"))
}

/// An identity as the server answered it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    pub primary_contact_id: i32,
    /// The original contract's spelling, which REST must still send; GraphQL has none.
    #[serde(rename = "primaryContatctId")]
    pub legacy_primary_id: Option<i32>,
    pub emails: Vec<String>,
    pub phone_numbers: Vec<String>,
    pub secondary_contact_ids: Vec<i32>,
    /// What the call changed, when the server says (`held`: nothing was linked).
    #[serde(default)]
    pub outcome: Option<String>,
}

impl Answer {
    /// The server held the request for review: it linked and stored nothing, and
    /// the answer is a matched identity as it stood (docs/SPEC.md §10.3).
    pub fn is_held(&self) -> bool {
        self.outcome
            .as_deref()
            .is_some_and(|outcome| outcome.eq_ignore_ascii_case("held"))
    }
}

#[derive(Deserialize)]
struct RestReply {
    contact: Answer,
    #[serde(default)]
    outcome: Option<String>,
}

#[derive(Deserialize)]
struct GraphqlReply {
    data: Option<GraphqlData>,
    #[serde(default)]
    errors: Vec<GraphqlError>,
}

#[derive(Deserialize)]
struct GraphqlData {
    identify: Option<Answer>,
}

#[derive(Deserialize)]
struct GraphqlError {
    message: String,
    extensions: Option<GraphqlExtensions>,
}

#[derive(Deserialize)]
struct GraphqlExtensions {
    code: Option<String>,
}

/// Why a request got no identity back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// No connection could be made; the request was never sent.
    Connect,
    /// No complete answer within `--timeout-ms`.
    Timeout,
    /// The server closed or reset the connection before answering.
    ConnectionClosed,
    /// Anything else HTTP went wrong with.
    Protocol,
    /// The status arrived but the body broke off.
    BodyRead,
    AnswerTooLarge,
    /// A 200 whose body is not an identity.
    InvalidAnswer,
    /// An HTTP status other than 200.
    Status(u16),
    /// GraphQL errors, by their `extensions.code`.
    Graphql(String),
    /// Abandoned in flight by a second Ctrl-C.
    Cancelled,
}

impl ErrorKind {
    /// Whether the server may have acted on the request; only then does the model
    /// check count it among the requests that may have committed.
    pub fn may_have_reached_server(&self) -> bool {
        *self != ErrorKind::Connect
    }

    /// Every value of the request was blocked (docs/SPEC.md §10.3).
    pub fn is_blocked_value(&self) -> bool {
        match self {
            ErrorKind::Status(status) => *status == 422,
            ErrorKind::Graphql(code) => code == "BLOCKED_VALUE",
            _ => false,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Connect => f.write_str("connect"),
            ErrorKind::Timeout => f.write_str("timeout"),
            ErrorKind::ConnectionClosed => f.write_str("connection_closed"),
            ErrorKind::Protocol => f.write_str("protocol"),
            ErrorKind::BodyRead => f.write_str("body_read"),
            ErrorKind::AnswerTooLarge => f.write_str("answer_too_large"),
            ErrorKind::InvalidAnswer => f.write_str("invalid_answer"),
            ErrorKind::Status(status) => write!(f, "http_{status}"),
            ErrorKind::Graphql(code) => write!(f, "graphql_{}", code.to_lowercase()),
            ErrorKind::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// A failed request: its kind, and a detail for the report's examples.
#[derive(Debug)]
pub struct Failure {
    pub kind: ErrorKind,
    pub detail: String,
}

impl Failure {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }

    fn transport(err: &hyper_util::client::legacy::Error) -> Self {
        let kind = if err.is_connect() {
            ErrorKind::Connect
        } else {
            let causes = || std::iter::successors(err.source(), |&cause| cause.source());
            let hyper_error = causes().find_map(|cause| cause.downcast_ref::<hyper::Error>());
            let closed = hyper_error.is_some_and(|hyper_error| {
                hyper_error.is_incomplete_message()
                    || hyper_error.is_closed()
                    || hyper_error.is_canceled()
            });
            let io_error = causes().any(|cause| cause.is::<std::io::Error>());
            if closed || io_error {
                ErrorKind::ConnectionClosed
            } else {
                ErrorKind::Protocol
            }
        };
        Self::new(kind, error_chain(err))
    }
}

/// What came of one request.
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status, when one arrived.
    pub status: Option<StatusCode>,
    pub result: Result<Answer, Failure>,
}

impl Reply {
    pub fn failed(failure: Failure) -> Self {
        Self {
            status: None,
            result: Err(failure),
        }
    }
}

/// A keep-alive HTTP/1 client for identify calls. Clones share one connection pool,
/// which keeps an idle connection for every worker between its requests.
#[derive(Clone)]
pub struct IdentifyClient {
    http: Client<HttpConnector, Full<Bytes>>,
    api: Api,
    timeout: Duration,
    /// `Bearer <credential>`, sent with every request when the server needs one.
    authorization: Option<String>,
}

impl IdentifyClient {
    pub fn new(api: Api, timeout: Duration, connections: usize, credential: Option<&str>) -> Self {
        let mut connector = HttpConnector::new();
        // Small requests on a reused connection: Nagle's algorithm would only add
        // delay to what is meant to measure the server.
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(connections)
            .build(connector);
        Self {
            http,
            api,
            timeout,
            authorization: credential.map(|credential| format!("Bearer {credential}")),
        }
    }

    pub fn api(&self) -> Api {
        self.api
    }

    /// One GraphQL operation (a repair), within the time limit: its `data`, or why not.
    pub async fn graphql(
        &self,
        endpoint: &Uri,
        query: &str,
        variables: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let exchange = async {
            let body = json!({ "query": query, "variables": variables });
            let mut request =
                Request::post(endpoint.clone()).header(CONTENT_TYPE, "application/json");
            if let Some(authorization) = &self.authorization {
                request = request.header(AUTHORIZATION, authorization);
            }
            let request = request
                .body(Full::new(Bytes::from(body.to_string())))
                .map_err(|err| err.to_string())?;
            let response = self
                .http
                .request(request)
                .await
                .map_err(|err| error_chain(&err))?;
            let body = Limited::new(response.into_body(), ANSWER_LIMIT_BYTES)
                .collect()
                .await
                .map_err(|err| error_chain(&*err))?
                .to_bytes();
            let mut reply: serde_json::Value =
                serde_json::from_slice(&body).map_err(|err| err.to_string())?;
            match reply.get("errors") {
                Some(errors) => Err(errors.to_string()),
                None => Ok(reply["data"].take()),
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or_else(|_| Err("timed out".to_owned()))
    }

    /// Sends one identify and reads the whole answer, within the time limit.
    pub async fn identify(
        &self,
        endpoint: &Uri,
        email: Option<&str>,
        phone: Option<&str>,
    ) -> Reply {
        match tokio::time::timeout(self.timeout, self.exchange(endpoint, email, phone)).await {
            Ok(reply) => reply,
            Err(_) => Reply::failed(Failure::new(
                ErrorKind::Timeout,
                format!("no complete answer within {} ms", self.timeout.as_millis()),
            )),
        }
    }

    async fn exchange(&self, endpoint: &Uri, email: Option<&str>, phone: Option<&str>) -> Reply {
        let body = match self.api {
            Api::Rest => json!({ "email": email, "phoneNumber": phone }),
            Api::Graphql => json!({
                "query": GRAPHQL_IDENTIFY,
                "variables": { "e": email, "p": phone },
            }),
        };
        let mut request = Request::post(endpoint.clone()).header(CONTENT_TYPE, "application/json");
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization);
        }
        let request = request.body(Full::new(Bytes::from(body.to_string())));
        let request = match request {
            Ok(request) => request,
            Err(err) => return Reply::failed(Failure::new(ErrorKind::Protocol, err.to_string())),
        };
        let response = match self.http.request(request).await {
            Ok(response) => response,
            Err(err) => return Reply::failed(Failure::transport(&err)),
        };
        let status = response.status();
        let result = match Limited::new(response.into_body(), ANSWER_LIMIT_BYTES)
            .collect()
            .await
        {
            Ok(body) => self.read_answer(status, &body.to_bytes()),
            Err(err) if err.is::<LengthLimitError>() => Err(Failure::new(
                ErrorKind::AnswerTooLarge,
                format!("the answer exceeds {ANSWER_LIMIT_BYTES} bytes"),
            )),
            Err(err) => Err(Failure::new(ErrorKind::BodyRead, error_chain(&*err))),
        };
        Reply {
            status: Some(status),
            result,
        }
    }

    fn read_answer(&self, status: StatusCode, body: &[u8]) -> Result<Answer, Failure> {
        if status != StatusCode::OK {
            return Err(Failure::new(
                ErrorKind::Status(status.as_u16()),
                excerpt(body),
            ));
        }
        let invalid = |err: serde_json::Error| {
            Failure::new(
                ErrorKind::InvalidAnswer,
                format!("{err} in {}", excerpt(body)),
            )
        };
        match self.api {
            Api::Rest => serde_json::from_slice::<RestReply>(body)
                .map(|reply| Answer {
                    outcome: reply.outcome,
                    ..reply.contact
                })
                .map_err(invalid),
            Api::Graphql => {
                let reply: GraphqlReply = serde_json::from_slice(body).map_err(invalid)?;
                if let Some(error) = reply.errors.into_iter().next() {
                    let code = error
                        .extensions
                        .and_then(|extensions| extensions.code)
                        .unwrap_or_else(|| "unknown".to_owned());
                    return Err(Failure::new(ErrorKind::Graphql(code), error.message));
                }
                reply.data.and_then(|data| data.identify).ok_or_else(|| {
                    Failure::new(
                        ErrorKind::InvalidAnswer,
                        format!("no data.identify in {}", excerpt(body)),
                    )
                })
            }
        }
    }
}

/// The start of a body, as text, for the report.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut excerpt: String = text.chars().take(EXCERPT_CHARS).collect();
    if text.chars().nth(EXCERPT_CHARS).is_some() {
        excerpt.push('…');
    }
    excerpt
}
