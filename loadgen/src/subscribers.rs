//! `identityEvents` subscribers alongside the load (docs/SPEC.md §12): live ones
//! that count every change and how long it took to arrive, and stalled ones that
//! never read, to show that writes do not wait for them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use hyper::Uri;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::checks::{Check, Latency, error_chain};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Every change kept, so that a subscriber's count is comparable with the table's
/// whatever committed before it was in place.
const SUBSCRIPTION: &str = "subscription { identityEvents(fromStart: true) { at } }";
/// Time allowed for the live subscribers to receive what the table holds once the
/// load has stopped.
const DRAIN: Duration = Duration::from_secs(30);

/// What to open.
pub struct SubscriberPlan {
    pub live: usize,
    pub stalled: usize,
    /// Spread over these servers in turn.
    pub urls: Vec<Uri>,
    pub credential: Option<String>,
}

/// The subscribers of a run, open.
pub struct Subscribers {
    live: Vec<Live>,
    stalled: Vec<Socket>,
    stop: watch::Sender<bool>,
    lag_us: Arc<Mutex<Histogram<u64>>>,
}

struct Live {
    received: Arc<AtomicU64>,
    task: JoinHandle<Option<String>>,
}

/// What the subscribers saw.
#[derive(Debug, Serialize)]
pub struct SubscriberReport {
    pub live: usize,
    pub stalled: usize,
    /// Changes stored when the load ended: what each live subscriber should get.
    pub expected: Option<u64>,
    pub received_min: u64,
    pub received_max: u64,
    /// From a change's commit (`at`) to its arrival, for changes of this run.
    pub lag_ms: Option<Latency>,
    /// Stalled subscribers the server closed (it drops one whose socket stays full).
    pub stalled_closed: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ended_early: Vec<String>,
    pub check: Check,
}

impl SubscriberPlan {
    pub async fn open(self) -> Result<Subscribers, String> {
        let (stop, stopped) = watch::channel(false);
        let lag_us = Arc::new(Mutex::new(
            Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"),
        ));
        let started = Utc::now();
        let mut live = Vec::with_capacity(self.live);
        for n in 0..self.live {
            let url = &self.urls[n % self.urls.len()];
            let socket = connect(url, self.credential.as_deref(), false).await?;
            let received = Arc::new(AtomicU64::new(0));
            let task = tokio::spawn(follow(
                socket,
                received.clone(),
                lag_us.clone(),
                started,
                stopped.clone(),
            ));
            live.push(Live { received, task });
        }
        let mut stalled = Vec::with_capacity(self.stalled);
        for n in 0..self.stalled {
            let url = &self.urls[(self.live + n) % self.urls.len()];
            stalled.push(connect(url, self.credential.as_deref(), true).await?);
        }
        Ok(Subscribers {
            live,
            stalled,
            stop,
            lag_us,
        })
    }
}

impl Subscribers {
    /// Waits (up to [`DRAIN`]) until every live subscriber has `expected` changes,
    /// then closes them all and reports.
    pub async fn finish(self, expected: Option<u64>) -> SubscriberReport {
        if let Some(expected) = expected {
            let deadline = tokio::time::Instant::now() + DRAIN;
            while tokio::time::Instant::now() < deadline
                && self
                    .live
                    .iter()
                    .any(|live| live.received.load(Ordering::Relaxed) < expected)
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let _ = self.stop.send(true);
        let mut counts = Vec::with_capacity(self.live.len());
        let mut ended_early = Vec::new();
        for live in self.live {
            if let Ok(Some(end)) = live.task.await {
                ended_early.push(end);
            }
            counts.push(live.received.load(Ordering::Relaxed));
        }
        let stalled = self.stalled.len();
        let mut stalled_closed = 0;
        for mut socket in self.stalled {
            if closed_by_server(&mut socket).await {
                stalled_closed += 1;
            }
        }
        let mut check = Check::new("every live subscriber received every change stored");
        if let Some(expected) = expected {
            for (n, count) in counts.iter().enumerate() {
                if *count != expected {
                    check.violation(|| {
                        format!("subscriber {n} received {count} of {expected} changes")
                    });
                }
            }
        }
        let lag = self.lag_us.lock().await;
        SubscriberReport {
            live: counts.len(),
            stalled,
            expected,
            received_min: counts.iter().copied().min().unwrap_or(0),
            received_max: counts.iter().copied().max().unwrap_or(0),
            lag_ms: Latency::from_micros(&lag),
            stalled_closed,
            ended_early,
            check,
        }
    }
}

/// A subscribed socket; `stalled` ones get a 4 KiB receive buffer, so the server's
/// buffer behind it fills after a few hundred changes.
async fn connect(url: &Uri, credential: Option<&str>, stalled: bool) -> Result<Socket, String> {
    let authority = url
        .authority()
        .ok_or_else(|| format!("{url} has no host"))?
        .to_string();
    let mut request = format!("ws://{authority}/graphql")
        .into_client_request()
        .map_err(|err| error_chain(&err))?;
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws"
            .parse()
            .expect("a valid header value"),
    );
    let tcp = tokio::net::TcpSocket::new_v4().map_err(|err| err.to_string())?;
    if stalled {
        tcp.set_recv_buffer_size(4096)
            .map_err(|err| err.to_string())?;
    }
    let address = tokio::net::lookup_host(&authority)
        .await
        .map_err(|err| format!("{authority}: {err}"))?
        .next()
        .ok_or_else(|| format!("{authority} resolves to nothing"))?;
    let stream = tcp
        .connect(address)
        .await
        .map_err(|err| format!("subscriber could not connect to {authority}: {err}"))?;
    let (mut socket, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream))
        .await
        .map_err(|err| {
            format!(
                "WebSocket handshake with {authority}: {}",
                error_chain(&err)
            )
        })?;
    let payload = match credential {
        Some(credential) => json!({"Authorization": format!("Bearer {credential}")}),
        None => json!({}),
    };
    send(
        &mut socket,
        json!({"type": "connection_init", "payload": payload}),
    )
    .await?;
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => {
                let message: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if message["type"] == "connection_ack" {
                    break;
                }
                return Err(format!("the server answered connection_init with {text}"));
            }
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(error_chain(&err)),
            None => return Err("the server closed the socket at connection_init".to_owned()),
        }
    }
    send(
        &mut socket,
        json!({"id": "1", "type": "subscribe", "payload": {"query": SUBSCRIPTION}}),
    )
    .await?;
    Ok(socket)
}

async fn send(socket: &mut Socket, message: Value) -> Result<(), String> {
    socket
        .send(Message::text(message.to_string()))
        .await
        .map_err(|err| error_chain(&err))
}

/// Counts changes until stopped; `Some` says why the subscription ended first.
async fn follow(
    mut socket: Socket,
    received: Arc<AtomicU64>,
    lag_us: Arc<Mutex<Histogram<u64>>>,
    started: DateTime<Utc>,
    mut stop: watch::Receiver<bool>,
) -> Option<String> {
    let mut lags = Vec::with_capacity(256);
    let end = loop {
        let message = tokio::select! {
            message = socket.next() => message,
            _ = stop.wait_for(|stop| *stop) => break None,
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => break Some(format!("closed: {frame:?}")),
            Some(Ok(_)) => continue,
            Some(Err(err)) => break Some(error_chain(&err)),
            None => break Some("the socket closed".to_owned()),
        };
        let message: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        match message["type"].as_str() {
            Some("next") if message["payload"]["errors"].is_null() => {
                received.fetch_add(1, Ordering::Relaxed);
                let at = message["payload"]["data"]["identityEvents"]["at"]
                    .as_str()
                    .and_then(|at| DateTime::parse_from_rfc3339(at).ok());
                if let Some(at) = at.map(|at| at.with_timezone(&Utc))
                    && at >= started
                {
                    let lag = (Utc::now() - at).num_microseconds().unwrap_or(i64::MAX);
                    lags.push(lag.max(1) as u64);
                }
                if lags.len() == lags.capacity() {
                    record(&lag_us, &mut lags).await;
                }
            }
            Some("ping") => {
                let _ = send(&mut socket, json!({"type": "pong"})).await;
            }
            _ => break Some(format!("unexpected message: {text}")),
        }
    };
    record(&lag_us, &mut lags).await;
    end
}

async fn record(histogram: &Mutex<Histogram<u64>>, lags: &mut Vec<u64>) {
    let mut histogram = histogram.lock().await;
    for lag in lags.drain(..) {
        histogram.saturating_record(lag);
    }
}

/// Whether the server closed a socket that was never read: drains what it holds
/// (briefly) looking for the close.
async fn closed_by_server(socket: &mut Socket) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return true,
            Ok(Some(Ok(_))) => {}
            Err(_) => return false,
        }
    }
}
