//! The `identityEvents` subscription (docs/SPEC.md §12), served over WebSocket on
//! `GET /graphql` itself: graphql-transport-ws, and the older
//! subscriptions-transport-ws for clients that speak only that.
//!
//! The socket loop is ours rather than async-graphql-axum's, for what a public
//! server needs around the protocol: an origin check (a WebSocket is not covered
//! by CORS), a deadline for `connection_init`, pings that find vanished peers, a
//! send timeout that drops a subscriber whose socket stopped draining (it resumes
//! from its last cursor), a close on shutdown, and only subscriptions over the
//! socket, so that queries and mutations keep the HTTP path's rate limit, masking
//! and answer cap.

use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_graphql::connection::{CursorType, OpaqueCursor};
use async_graphql::http::{ALL_WEBSOCKET_PROTOCOLS, WebSocketProtocols, WsMessage};
use async_graphql::parser::types::{DocumentOperations, ExecutableDocument, OperationType};
use async_graphql::{Context, Data, Executor, Result, ServerError, Subscription};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, BoxStream};
use futures_util::{SinkExt, StreamExt};

use super::error::{self, Code, RequireScope};
use super::query::{ReadAudit, check_event_cursor, cursor_expired};
use super::types::IdentityChange;
use super::{AppSchema, ContactLoader, MembersLoader, graphiql, limits, loader};
use crate::app::changefeed::FollowError;
use crate::auth::{AuthFailure, Authentication, Scope};
use crate::db::DbError;
use crate::db::changes::{self, Position};
use crate::http::error::ApiError;
use crate::http::server::Stopping;
use crate::http::state::AppState;
use crate::ops::config::Config;

/// Subscriptions one connection may hold at once.
pub const MAX_SUBSCRIPTIONS_PER_CONNECTION: usize = 16;
/// Interval of the server's pings; a peer silent for [`SILENCE_LIMIT`] is gone.
const PING_EVERY: Duration = Duration::from_secs(30);
const SILENCE_LIMIT: Duration = Duration::from_secs(75);
/// How long a closing frame may wait behind what the socket already holds: a
/// dropped slow subscriber that reads again gets its events and the reason.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

pub struct SubscriptionRoot;

#[Subscription(name = "Subscription")]
impl SubscriptionRoot {
    /// Identity changes as they commit, from any server process, in the same
    /// gap-free order and with the same cursors as the `identityEvents` query. Each
    /// change carries its `cursor`: after a disconnect, subscribe again with the
    /// last one received as `after` and nothing is missed or repeated. Without
    /// `after`, only changes from now on, or every change kept with `fromStart`.
    /// Values come only through `identity`. A cursor from before what retention
    /// kept ends the subscription with `CURSOR_EXPIRED`.
    #[graphql(
        guard = "RequireScope(Scope::Read)",
        complexity = "child_complexity + 1"
    )]
    async fn identity_events(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The `cursor` of the last change received.")] after: Option<String>,
        #[graphql(
            desc = "Without `after`: start from the oldest change kept rather than now \
                    (false when omitted)."
        )]
        from_start: Option<bool>,
    ) -> Result<BoxStream<'static, Result<IdentityChange>>> {
        let after = after
            .map(|cursor| {
                let OpaqueCursor(position) = OpaqueCursor::<Position>::decode_cursor(&cursor)
                    .map_err(|_| {
                        Code::InvalidInput
                            .argument_error("after", "after is not a cursor this API issued")
                    })?;
                check_event_cursor(&position)?;
                Ok::<_, async_graphql::Error>(position)
            })
            .transpose()?;
        let state = ctx.data_unchecked::<AppState>();
        let subscription = state.feed.subscribe().map_err(|full| {
            Code::ServiceUnavailable.error(format!(
                "this server already serves {} subscriptions (MAX_SUBSCRIBERS); try again later",
                full.max_subscribers
            ))
        })?;
        let start = match after {
            Some(after) => Some(after),
            None if from_start == Some(true) => None,
            None => {
                let mut conn = state.pool.get().await.map_err(DbError::from)?;
                changes::head(&mut conn).await.map_err(DbError::from)?
            }
        };
        let mut audit = SubscriptionAudit {
            last_flush: Instant::now(),
            audit: ctx.data_opt::<Arc<ReadAudit>>().cloned(),
            principal: ctx
                .data_opt::<Authentication>()
                .map_or("anonymous", Authentication::name)
                .to_owned(),
        };
        super::query::audit(ctx, Some("identityEvents"), 0);
        let changes = state
            .feed
            .follow(state.pool.clone(), start, subscription)
            .map(move |item| {
                audit.tick();
                match item {
                    Ok((_, record)) => Ok(IdentityChange::from(record)),
                    Err(FollowError::Expired) => Err(cursor_expired()),
                    Err(FollowError::Database(err)) => Err(err.into()),
                }
            });
        Ok(changes.boxed())
    }
}

/// Writes a subscription's audit lines (what its events' `identity` fields read):
/// at most every [`AUDIT_EVERY`] while it runs, and when it ends.
struct SubscriptionAudit {
    audit: Option<Arc<ReadAudit>>,
    principal: String,
    last_flush: Instant,
}

/// How often a long subscription's reads reach the audit log.
const AUDIT_EVERY: Duration = Duration::from_secs(60);

impl SubscriptionAudit {
    /// Called before each change: flushes what the previous ones read when due.
    fn tick(&mut self) {
        if self.last_flush.elapsed() >= AUDIT_EVERY {
            self.last_flush = Instant::now();
            if let Some(audit) = &self.audit {
                audit.flush(&self.principal);
            }
        }
    }
}

impl Drop for SubscriptionAudit {
    fn drop(&mut self) {
        if let Some(audit) = &self.audit {
            audit.log(&self.principal);
        }
    }
}

/// `GET /graphql`: a WebSocket handshake subscribes; anything else is GraphiQL.
pub(super) async fn page_or_socket(State(schema): State<AppSchema>, request: Request) -> Response {
    let upgrade = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.eq_ignore_ascii_case("websocket"));
    if upgrade {
        open_socket(schema, request).await
    } else {
        graphiql::page().await
    }
}

async fn open_socket(schema: AppSchema, request: Request) -> Response {
    let state = schema
        .data::<AppState>()
        .expect("schema carries the app state")
        .clone();
    if let Some(origin) = foreign_origin(request.headers(), &state.config) {
        return ApiError::ForeignOrigin(origin).into_response();
    }
    let client =
        crate::http::middleware::client_address(&request, state.config.trust_forwarded_for);
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let stopping = request.extensions().get::<Stopping>().cloned();
    let (mut parts, _body) = request.into_parts();
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade.protocols(ALL_WEBSOCKET_PROTOCOLS),
        Err(rejection) => return rejection.into_response(),
    };
    // The protocol spoken is the one the handshake answers with: axum picks it.
    let Some(protocol) = upgrade
        .selected_protocol()
        .and_then(|selected| selected.to_str().ok())
        .and_then(|selected| WebSocketProtocols::from_str(selected).ok())
    else {
        return ApiError::BadRequest(
            "offer the graphql-transport-ws subprotocol (Sec-WebSocket-Protocol)".to_owned(),
        )
        .into_response();
    };
    // Sockets are capped apart from HTTP connections, so that they can never take
    // every connection slot (they are never idle in the connection loop's eyes).
    let Ok(place) = state.feed.open_socket() else {
        return ApiError::SocketsFull {
            max: usize::from(state.config.max_subscribers),
        }
        .into_response();
    };
    let session = Session {
        client,
        authorization,
        stopping,
        protocol,
        schema,
        state: state.clone(),
        _place: place,
    };
    let max_message = state.config.graphql_body_limit_bytes;
    upgrade
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| session.run(socket))
}

/// The `Origin` of a browser page that may not open sockets here: neither this
/// server's own origin nor one of `CORS_ORIGINS`. Clients that are not browsers
/// send no `Origin` and are let through, as CORS would.
fn foreign_origin(headers: &HeaderMap, config: &Config) -> Option<String> {
    let origin = headers.get(header::ORIGIN)?;
    let Ok(origin) = origin.to_str() else {
        return Some(String::from_utf8_lossy(origin.as_bytes()).into_owned());
    };
    let allowed = config
        .cors_origins
        .iter()
        .any(|allowed| allowed == "*" || allowed.trim().eq_ignore_ascii_case(origin));
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok());
    let same_origin = host.is_some_and(|host| {
        ["http://", "https://"].iter().any(|scheme| {
            origin
                .strip_prefix(scheme)
                .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
        })
    });
    (!allowed && !same_origin).then(|| origin.to_owned())
}

/// The credential in a `connection_init` payload: an `Authorization` entry, as
/// GraphiQL sends its headers, in any case.
fn payload_authorization(payload: &serde_json::Value) -> Option<String> {
    payload
        .as_object()?
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case("authorization"))
        .and_then(|(_, value)| value.as_str())
        .map(str::to_owned)
}

/// One WebSocket connection.
struct Session {
    schema: AppSchema,
    state: AppState,
    protocol: WebSocketProtocols,
    /// The handshake's `Authorization` header, for clients that can send one;
    /// `connection_init` may carry one instead (browsers cannot set headers).
    authorization: Option<String>,
    client: Option<IpAddr>,
    stopping: Option<Stopping>,
    _place: crate::app::changefeed::SocketPlace,
}

/// Why the server closes a socket: a close code and a reason for the client.
type Close = (u16, String);

/// Close reasons are at most 123 bytes (RFC 6455); async-graphql passes parser
/// messages through, which can be longer.
fn close_frame((code, reason): Close) -> Message {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: reason[..end].into(),
    }))
}

/// What `connection_init` settled, for the session loop.
#[derive(Default)]
struct InitOutcome {
    /// `connection_init` arrived.
    received: AtomicBool,
    /// Its credential was refused: the socket closes with 4403.
    refused: AtomicBool,
    /// The credential it presented, checked again every `AUTH_CACHE_SECS`.
    presented: std::sync::Mutex<Option<String>>,
}

impl Session {
    async fn run(self, socket: WebSocket) {
        let Session {
            schema,
            state,
            protocol,
            authorization,
            client,
            stopping,
            _place,
        } = self;
        let (mut sink, source) = socket.split();
        let opened = Instant::now();
        let last_heard = Arc::new(AtomicU64::new(0));
        let heard = last_heard.clone();
        let input = source
            .take_while(|message| std::future::ready(message.is_ok()))
            .filter_map(move |message| {
                heard.store(opened.elapsed().as_millis() as u64, Ordering::Relaxed);
                std::future::ready(match message {
                    Ok(message @ (Message::Text(_) | Message::Binary(_))) => {
                        Some(message.into_data())
                    }
                    _ => None,
                })
            });
        let init = Arc::new(InitOutcome::default());
        let on_init = {
            let init = init.clone();
            let state = state.clone();
            move |payload: serde_json::Value| async move {
                init.received.store(true, Ordering::Relaxed);
                let presented = payload_authorization(&payload).or(authorization);
                let authentication = state.auth.authenticate(presented.as_deref(), client).await;
                if let Authentication::Failed(failure) = &authentication {
                    state.metrics.observe_auth_failure(*failure);
                    init.refused.store(true, Ordering::Relaxed);
                    return Err(async_graphql::Error::new(failure.message()));
                }
                *init
                    .presented
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = presented;
                let mut data = Data::default();
                data.insert(authentication);
                Ok(data)
            }
        };
        let over_limit = Arc::new(tokio::sync::Notify::new());
        let open = Arc::new(AtomicUsize::new(0));
        let executor = SocketExecutor {
            schema,
            open: open.clone(),
            over_limit: over_limit.clone(),
        };
        let mut messages = async_graphql::http::WebSocket::new(executor, input, protocol)
            .on_connection_init(on_init);
        let send_timeout = Duration::from_millis(state.config.subscriber_send_timeout_ms);
        let mut pings =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        // A socket that never says who it is, like a request head that never ends;
        // one that holds no subscription, like an idle keep-alive connection.
        let init_deadline = tokio::time::sleep(Duration::from_secs(
            state.config.http_header_timeout_secs.max(1),
        ));
        tokio::pin!(init_deadline);
        let idle_limit = Duration::from_secs(state.config.http_idle_timeout_secs.max(1));
        let mut idle_since = Some(tokio::time::Instant::now());
        let mut idle_checks = tokio::time::interval(Duration::from_secs(1));
        let mut credential_checks = tokio::time::interval_at(
            tokio::time::Instant::now() + state.config.auth_cache().max(Duration::from_secs(1)),
            state.config.auth_cache().max(Duration::from_secs(1)),
        );
        let stop = async move {
            match stopping {
                Some(mut stopping) => stopping.wait().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stop);

        let close: Option<Close> = loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(WsMessage::Text(text)) => {
                        let sent = tokio::select! {
                            sent = tokio::time::timeout(send_timeout, sink.send(Message::Text(text.into()))) => sent,
                            () = &mut stop => break Some(going_away()),
                        };
                        match sent {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => break None,
                            Err(_) => {
                                state.feed.observe_dropped_slow();
                                tracing::info!(
                                    ?client,
                                    "subscriber dropped: its socket took no data for {} ms",
                                    send_timeout.as_millis()
                                );
                                break Some((1013, "too slow to receive; reconnect and resume after your last cursor".to_owned()));
                            }
                        }
                    }
                    Some(WsMessage::Close(_, reason)) if init.refused.load(Ordering::Relaxed) => {
                        break Some((4403, format!("Forbidden: {reason}")));
                    }
                    Some(WsMessage::Close(code, reason)) => break Some((code, reason)),
                    None => break Some((1000, String::new())),
                },
                () = over_limit.notified() => {
                    break Some((4429, format!(
                        "more than {MAX_SUBSCRIPTIONS_PER_CONNECTION} subscriptions on one connection"
                    )));
                }
                _ = pings.tick() => {
                    let silent = opened.elapsed().as_millis() as u64
                        - last_heard.load(Ordering::Relaxed);
                    if silent > SILENCE_LIMIT.as_millis() as u64 {
                        break None;
                    }
                    let ping = sink.send(Message::Ping(Default::default()));
                    if !matches!(tokio::time::timeout(send_timeout, ping).await, Ok(Ok(()))) {
                        break None;
                    }
                }
                _ = idle_checks.tick() => {
                    if open.load(Ordering::Acquire) > 0 {
                        idle_since = None;
                    } else {
                        let since = *idle_since.get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() > idle_limit {
                            break Some((1000, format!(
                                "no subscription for {} s (HTTP_IDLE_TIMEOUT_SECS)",
                                idle_limit.as_secs()
                            )));
                        }
                    }
                }
                _ = credential_checks.tick() => {
                    if let Some(refusal) = recheck(&state, &init, client).await {
                        break Some(refusal);
                    }
                }
                () = &mut init_deadline, if !init.received.load(Ordering::Relaxed) => {
                    break Some((4408, "Connection initialisation timeout".to_owned()));
                }
                () = &mut stop => break Some(going_away()),
            }
        };
        if let Some(close) = close {
            let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(close_frame(close))).await;
        }
    }
}

fn going_away() -> Close {
    (
        1001,
        "the server is shutting down; reconnect and resume after your last cursor".to_owned(),
    )
}

/// Checks the connection's credential again, so that a revoked key or an expired
/// token stops a subscription as it stops requests; `Some` is the close to send.
async fn recheck(state: &AppState, init: &InitOutcome, client: Option<IpAddr>) -> Option<Close> {
    if !init.received.load(Ordering::Relaxed) {
        return None;
    }
    let presented = init
        .presented
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    match state.auth.authenticate(presented.as_deref(), client).await {
        Authentication::Failed(AuthFailure::Unavailable | AuthFailure::Throttled) => None,
        Authentication::Failed(failure) => {
            state.metrics.observe_auth_failure(failure);
            Some((4403, format!("Forbidden: {}", failure.message())))
        }
        Authentication::Principal(_) => None,
    }
}

/// Runs what a connection subscribes to: subscriptions only, checked like HTTP
/// documents, at most [`MAX_SUBSCRIPTIONS_PER_CONNECTION`] at once.
#[derive(Clone)]
struct SocketExecutor {
    schema: AppSchema,
    /// Subscriptions open on this connection.
    open: Arc<AtomicUsize>,
    /// Told when the client subscribes past the limit: the socket then closes
    /// (4429) rather than answer each excess subscription, which would let a
    /// client pile them up faster than their refusals drain.
    over_limit: Arc<tokio::sync::Notify>,
}

/// Holds one of a connection's subscription places while its stream lives.
struct OpenSubscription(Arc<AtomicUsize>);

impl Drop for OpenSubscription {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SocketExecutor {
    fn prepare(
        &self,
        request: async_graphql::Request,
    ) -> Result<(async_graphql::Request, OpenSubscription), Vec<ServerError>> {
        let state = self
            .schema
            .data::<AppState>()
            .expect("schema carries the app state");
        let checked = super::check_document(state, request)?;
        if operation_type(&checked.document, checked.operation_name.as_deref())
            != Some(OperationType::Subscription)
        {
            return Err(vec![error::coded(
                ServerError::new(
                    "only subscriptions are served over WebSocket; send queries and mutations \
                     with POST /graphql",
                    None,
                ),
                Code::InvalidInput,
            )]);
        }
        if self.open.fetch_add(1, Ordering::AcqRel) >= MAX_SUBSCRIPTIONS_PER_CONNECTION {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.over_limit.notify_one();
            return Err(vec![limits::limit_error(format!(
                "a connection holds at most {MAX_SUBSCRIPTIONS_PER_CONNECTION} subscriptions; \
                 complete one or open another connection"
            ))]);
        }
        let place = OpenSubscription(self.open.clone());
        // The loaders live as long as the subscription: caching would serve stale
        // identities and grow without bound, so each event loads afresh.
        let contacts = loader(ContactLoader::new(state.pool.clone()));
        contacts.enable_all_cache(false);
        let members = loader(MembersLoader::new(state.pool.clone()));
        members.enable_all_cache(false);
        let request = checked
            .request
            .data(Arc::new(ReadAudit::default()))
            .data(contacts)
            .data(members);
        Ok((request, place))
    }
}

fn operation_type(document: &ExecutableDocument, name: Option<&str>) -> Option<OperationType> {
    match (&document.operations, name) {
        (DocumentOperations::Single(operation), _) => Some(operation.node.ty),
        (DocumentOperations::Multiple(operations), Some(name)) => operations
            .iter()
            .find(|(candidate, _)| candidate.as_str() == name)
            .map(|(_, operation)| operation.node.ty),
        (DocumentOperations::Multiple(_), None) => None,
    }
}

impl Executor for SocketExecutor {
    async fn execute(&self, _request: async_graphql::Request) -> async_graphql::Response {
        // The WebSocket asks for streams only; anything else is refused the same way.
        async_graphql::Response::from_errors(vec![error::coded(
            ServerError::new("only subscriptions are served over WebSocket", None),
            Code::InvalidInput,
        )])
    }

    fn execute_stream(
        &self,
        request: async_graphql::Request,
        session_data: Option<Arc<Data>>,
    ) -> BoxStream<'static, async_graphql::Response> {
        match self.prepare(request) {
            Ok((request, place)) => self
                .schema
                .execute_stream_with_session_data(request, session_data.unwrap_or_default())
                .map(move |mut response| {
                    let _ = &place;
                    error::log_failures(&response.errors);
                    error::code_uncoded(&mut response.errors);
                    limits::cap_errors(&mut response.errors);
                    response
                })
                .boxed(),
            Err(mut errors) => {
                error::code_uncoded(&mut errors);
                limits::cap_errors(&mut errors);
                stream::once(std::future::ready(async_graphql::Response::from_errors(
                    errors,
                )))
                .boxed()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    value.parse().unwrap(),
                )
            })
            .collect()
    }

    fn config(cors_origins: &[&str]) -> Config {
        use clap::Parser;
        let mut config = crate::ops::config::Cli::try_parse_from(["test"])
            .unwrap()
            .config;
        config.cors_origins = cors_origins.iter().map(|s| (*s).to_owned()).collect();
        config
    }

    #[test]
    fn only_pages_of_this_origin_or_allowed_ones_may_open_sockets() {
        let own = headers(&[
            ("host", "127.0.0.1:3000"),
            ("origin", "http://127.0.0.1:3000"),
        ]);
        assert_eq!(foreign_origin(&own, &config(&[])), None);
        let no_browser = headers(&[("host", "127.0.0.1:3000")]);
        assert_eq!(foreign_origin(&no_browser, &config(&[])), None);
        let other = headers(&[
            ("host", "127.0.0.1:3000"),
            ("origin", "https://evil.example"),
        ]);
        assert_eq!(
            foreign_origin(&other, &config(&[])).as_deref(),
            Some("https://evil.example")
        );
        assert_eq!(
            foreign_origin(&other, &config(&["https://evil.example"])),
            None
        );
        assert_eq!(foreign_origin(&other, &config(&["*"])), None);
        let sandboxed = headers(&[("host", "127.0.0.1:3000"), ("origin", "null")]);
        assert!(foreign_origin(&sandboxed, &config(&[])).is_some());
    }

    #[test]
    fn the_credential_comes_from_the_init_payload_in_any_case() {
        let payload = serde_json::json!({"authorization": "Bearer abc"});
        assert_eq!(
            payload_authorization(&payload).as_deref(),
            Some("Bearer abc")
        );
        let payload = serde_json::json!({"Authorization": "Bearer abc"});
        assert_eq!(
            payload_authorization(&payload).as_deref(),
            Some("Bearer abc")
        );
        assert_eq!(payload_authorization(&serde_json::json!({})), None);
        assert_eq!(payload_authorization(&serde_json::json!(null)), None);
        assert_eq!(
            payload_authorization(&serde_json::json!({"authorization": 5})),
            None
        );
    }
}
