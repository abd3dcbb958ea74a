//! Prometheus metrics, rendered by hand in the text exposition format: a handful of
//! series do not justify a metrics framework.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::app::changefeed::FeedStats;
use crate::auth::AuthFailure;
use crate::db::replica::ReplicaStats;
use crate::db::{DbPool, StatementCounter};
use crate::domain::Outcome;

/// Upper bounds (seconds) of the request latency histogram buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const OUTCOMES: [Outcome; 5] = [
    Outcome::NewPrimary,
    Outcome::NewSecondary,
    Outcome::Merged,
    Outcome::Unchanged,
    Outcome::Held,
];

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct RequestKey {
    route: String,
    method: &'static str,
    status: u16,
}

#[derive(Debug, Default)]
struct LatencySeries {
    count: u64,
    sum_seconds: f64,
    /// Non-cumulative counts per bucket; the last slot is `+Inf`.
    buckets: [u64; LATENCY_BUCKETS.len() + 1],
}

/// Counters and histograms of one server process.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<RequestKey, LatencySeries>>,
    outcomes: [AtomicU64; OUTCOMES.len()],
    merged_primaries: AtomicU64,
    rate_limited: AtomicU64,
    connections_open: AtomicU64,
    connections_refused: AtomicU64,
    /// Closed by the server, by reason: `CLOSE_REASONS`.
    connections_closed: [AtomicU64; CLOSE_REASONS.len()],
    /// Refused credentials, by `AuthFailure`.
    auth_failures: [AtomicU64; AuthFailure::ALL.len()],
}

/// Why the server closed a connection (the values of a label, so a fixed set).
const CLOSE_REASONS: [&str; 3] = ["header_timeout", "idle_timeout", "evicted"];

/// Methods that get a label of their own; every other becomes `OTHER`, so a client
/// cannot create series (or a 300 KB label) with made-up methods.
const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

/// The metric and log label for a request method.
pub fn method_label(method: &str) -> &'static str {
    KNOWN_METHODS
        .iter()
        .find(|known| **known == method)
        .copied()
        .unwrap_or("OTHER")
}

impl Metrics {
    /// Records one answered request. `route` is the matched route pattern (never the
    /// raw path, which would let clients create series at will).
    pub fn observe_request(
        &self,
        route: &str,
        method: &'static str,
        status: u16,
        elapsed: Duration,
    ) {
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        let mut requests = self
            .requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let series = requests
            .entry(RequestKey {
                route: route.to_owned(),
                method,
                status,
            })
            .or_default();
        series.count += 1;
        series.sum_seconds += seconds;
        series.buckets[bucket] += 1;
    }

    /// Records what an identify changed; `merged_primaries` is the number of primaries
    /// it turned secondary.
    pub fn observe_identify(&self, outcome: Outcome, merged_primaries: usize) {
        if let Some(slot) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.outcomes[slot].fetch_add(1, Ordering::Relaxed);
        }
        self.merged_primaries
            .fetch_add(merged_primaries as u64, Ordering::Relaxed);
    }

    pub fn observe_rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    pub fn observe_connection_opened(&self) {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }

    pub fn observe_connection_ended(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// A new connection closed unserved: the cap was reached and none could be evicted.
    pub fn observe_connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn observe_auth_failure(&self, failure: AuthFailure) {
        if let Some(slot) = AuthFailure::ALL.iter().position(|known| *known == failure) {
            self.auth_failures[slot].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The server closed a connection; `reason` is one of `CLOSE_REASONS`.
    pub fn observe_connection_closed(&self, reason: &str) {
        if let Some(slot) = CLOSE_REASONS.iter().position(|known| *known == reason) {
            self.connections_closed[slot].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The whole registry in Prometheus text format.
    pub fn render(
        &self,
        pool: &DbPool,
        statements: &StatementCounter,
        feed: &FeedStats,
        replica: Option<ReplicaStats>,
    ) -> String {
        let mut out = Exposition::default();
        self.render_requests(&mut out);
        self.render_identify(&mut out);
        self.render_connections(&mut out);
        self.render_auth(&mut out);
        render_pool(&mut out, pool, statements);
        render_feed(&mut out, feed);
        if let Some(replica) = replica {
            render_replica(&mut out, &replica);
        }
        out.0
    }

    fn render_requests(&self, out: &mut Exposition) {
        let requests = self
            .requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        out.family(
            "http_requests_total",
            "counter",
            "HTTP requests answered, by route, method and status.",
        );
        for (key, series) in requests.iter() {
            out.sample("http_requests_total", &labels(key), series.count);
        }
        out.family(
            "http_request_duration_seconds",
            "histogram",
            "Time to answer HTTP requests.",
        );
        for (key, series) in requests.iter() {
            let labels = labels(key);
            let mut cumulative = 0;
            for (bound, count) in LATENCY_BUCKETS.iter().zip(series.buckets.iter()) {
                cumulative += count;
                out.sample(
                    "http_request_duration_seconds_bucket",
                    &format!("{labels},le=\"{bound}\""),
                    cumulative,
                );
            }
            out.sample(
                "http_request_duration_seconds_bucket",
                &format!("{labels},le=\"+Inf\""),
                series.count,
            );
            out.sample(
                "http_request_duration_seconds_sum",
                &labels,
                series.sum_seconds,
            );
            out.sample("http_request_duration_seconds_count", &labels, series.count);
        }
    }

    fn render_identify(&self, out: &mut Exposition) {
        out.family(
            "identify_outcomes_total",
            "counter",
            "Identify calls by what they changed.",
        );
        for (outcome, counter) in OUTCOMES.iter().zip(self.outcomes.iter()) {
            out.sample(
                "identify_outcomes_total",
                &format!("outcome=\"{}\"", outcome.as_str()),
                counter.load(Ordering::Relaxed),
            );
        }
        out.family(
            "identify_merged_primaries_total",
            "counter",
            "Primaries turned secondary by merges.",
        );
        out.sample(
            "identify_merged_primaries_total",
            "",
            self.merged_primaries.load(Ordering::Relaxed),
        );
        out.family(
            "http_rate_limited_total",
            "counter",
            "Requests refused by the rate limit.",
        );
        out.sample(
            "http_rate_limited_total",
            "",
            self.rate_limited.load(Ordering::Relaxed),
        );
    }

    fn render_connections(&self, out: &mut Exposition) {
        out.family(
            "http_connections_open",
            "gauge",
            "Client connections open now.",
        );
        out.sample(
            "http_connections_open",
            "",
            self.connections_open.load(Ordering::Relaxed),
        );
        out.family(
            "http_connections_refused_total",
            "counter",
            "New connections closed at once: the cap was reached and every connection was busy.",
        );
        out.sample(
            "http_connections_refused_total",
            "",
            self.connections_refused.load(Ordering::Relaxed),
        );
        out.family(
            "http_connections_closed_total",
            "counter",
            "Connections the server closed, by reason.",
        );
        for (reason, counter) in CLOSE_REASONS.iter().zip(self.connections_closed.iter()) {
            out.sample(
                "http_connections_closed_total",
                &format!("reason=\"{reason}\""),
                counter.load(Ordering::Relaxed),
            );
        }
    }
}

impl Metrics {
    fn render_auth(&self, out: &mut Exposition) {
        out.family(
            "auth_failures_total",
            "counter",
            "Requests whose credential was missing or refused, by reason.",
        );
        for (failure, counter) in AuthFailure::ALL.iter().zip(self.auth_failures.iter()) {
            out.sample(
                "auth_failures_total",
                &format!("reason=\"{}\"", failure.as_str()),
                counter.load(Ordering::Relaxed),
            );
        }
    }
}

fn render_pool(out: &mut Exposition, pool: &DbPool, statements: &StatementCounter) {
    let status = pool.status();
    let idle = status.available;
    let in_use = status.size.saturating_sub(idle);
    out.family(
        "db_pool_connections",
        "gauge",
        "Database connections of this process by state.",
    );
    out.sample("db_pool_connections", "state=\"in_use\"", in_use);
    out.sample("db_pool_connections", "state=\"idle\"", idle);
    out.family("db_pool_max_connections", "gauge", "Configured pool size.");
    out.sample("db_pool_max_connections", "", status.max_size);
    out.family(
        "db_pool_waiting",
        "gauge",
        "Requests waiting for a connection.",
    );
    out.sample("db_pool_waiting", "", status.waiting);
    out.family(
        "db_statements_total",
        "counter",
        "SQL statements sent, transaction control included.",
    );
    out.sample("db_statements_total", "", statements.total());
    out.family(
        "db_round_trips_total",
        "counter",
        "Round trips to the database: pipelined statements count once.",
    );
    out.sample("db_round_trips_total", "", statements.round_trips());
}

fn render_replica(out: &mut Exposition, replica: &ReplicaStats) {
    out.family(
        "db_replica_up",
        "gauge",
        "1 while the read replica answers its probes.",
    );
    out.sample("db_replica_up", "", u64::from(replica.up));
    out.family(
        "db_replica_lag_seconds",
        "gauge",
        "Age of the oldest primary WAL position the replica has not replayed.",
    );
    out.sample("db_replica_lag_seconds", "", replica.lag.as_secs_f64());
    out.family(
        "db_reads_total",
        "counter",
        "Read-only GraphQL operations, by the database that served them.",
    );
    out.sample(
        "db_reads_total",
        "target=\"replica\"",
        replica.reads_on_replica,
    );
    out.sample(
        "db_reads_total",
        "target=\"primary\"",
        replica.reads_on_primary,
    );
}

fn render_feed(out: &mut Exposition, feed: &FeedStats) {
    out.family(
        "identity_events_written_total",
        "counter",
        "Change events committed by this process.",
    );
    out.sample("identity_events_written_total", "", feed.events_written);
    out.family(
        "identity_events_delivered_total",
        "counter",
        "Change events handed to this process's subscribers.",
    );
    out.sample("identity_events_delivered_total", "", feed.events_delivered);
    out.family(
        "identity_event_subscribers",
        "gauge",
        "identityEvents subscriptions open on this process.",
    );
    out.sample("identity_event_subscribers", "", feed.subscribers);
    out.family(
        "identity_event_subscriber_lag_seconds",
        "gauge",
        "How long the oldest event read for a subscriber but not yet sent has waited since its commit, for the most delayed subscriber; 0 when all are caught up.",
    );
    out.sample(
        "identity_event_subscriber_lag_seconds",
        "",
        feed.max_lag_seconds,
    );
    out.family(
        "identity_event_subscribers_dropped_total",
        "counter",
        "Subscriber connections closed because their socket stopped draining.",
    );
    out.sample(
        "identity_event_subscribers_dropped_total",
        "",
        feed.dropped_slow,
    );
    out.family(
        "identity_event_listener_up",
        "gauge",
        "1 while this process LISTENs for other processes' commits; 0 while it only polls.",
    );
    out.sample("identity_event_listener_up", "", u8::from(feed.listening));
}

/// The text exposition format, written a family at a time. Label values come from
/// fixed sets or route patterns, never from a client, so none needs escaping.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        let _ = if labels.is_empty() {
            writeln!(self.0, "{name} {value}")
        } else {
            writeln!(self.0, "{name}{{{labels}}} {value}")
        };
    }
}

fn labels(key: &RequestKey) -> String {
    format!(
        "route=\"{}\",method=\"{}\",status=\"{}\"",
        key.route, key.method, key.status
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks the text exposition format line by line: comments are HELP or TYPE,
    /// a family's TYPE comes before its samples, every sample is `name{labels} value`
    /// with a numeric value.
    fn assert_valid_exposition(text: &str) {
        let mut typed: Vec<String> = Vec::new();
        for line in text.lines() {
            if let Some(comment) = line.strip_prefix("# ") {
                let mut words = comment.splitn(3, ' ');
                let (keyword, name) = (words.next().unwrap(), words.next().unwrap());
                assert!(matches!(keyword, "HELP" | "TYPE"), "{line}");
                if keyword == "TYPE" {
                    let kind = words.next().unwrap();
                    assert!(matches!(kind, "counter" | "gauge" | "histogram"), "{line}");
                    typed.push(name.to_owned());
                }
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("name and value");
            assert!(value.parse::<f64>().is_ok(), "{line}");
            let name = series.split('{').next().unwrap();
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line}"
            );
            assert!(
                typed.iter().any(|family| name.starts_with(family.as_str())),
                "{line}: no TYPE before it"
            );
            if let Some(labels) = series.strip_prefix(name)
                && !labels.is_empty()
            {
                let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}'));
                let inner = inner.unwrap_or_else(|| panic!("{line}"));
                for pair in inner.split("\",") {
                    let (key, value) = pair.split_once("=\"").expect("key=\"value\"");
                    assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                    assert!(!value.contains('\n') && !value.contains('\\'), "{line}");
                }
            }
        }
    }

    #[test]
    fn the_exposition_is_valid_text_format() {
        let metrics = Metrics::default();
        metrics.observe_request("/identify", "POST", 200, Duration::from_millis(3));
        metrics.observe_request(
            "unmatched",
            method_label("BREW"),
            404,
            Duration::from_millis(1),
        );
        metrics.observe_connection_opened();
        metrics.observe_connection_closed("evicted");
        let pool = crate::db::pool(
            "postgres://nobody@127.0.0.1:9/none",
            &crate::db::PoolSettings::default(),
            StatementCounter::default(),
        )
        .unwrap();
        let text = metrics.render(
            &pool,
            &StatementCounter::default(),
            &crate::app::changefeed::ChangeFeed::new(1, 1).stats(),
            None,
        );
        assert_valid_exposition(&text);
        assert!(text.contains("method=\"OTHER\""));
        assert!(text.contains("le=\"+Inf\"} 1"));
    }

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label("POST"), "POST");
        assert_eq!(method_label(&"X".repeat(300_000)), "OTHER");
        assert_eq!(method_label("post"), "OTHER");
    }

    #[test]
    fn latency_lands_in_cumulative_buckets() {
        let metrics = Metrics::default();
        metrics.observe_request("/identify", "POST", 200, Duration::from_millis(3));
        metrics.observe_request("/identify", "POST", 200, Duration::from_secs(60));
        let requests = metrics.requests.lock().unwrap();
        let series = requests.values().next().unwrap();
        assert_eq!(series.count, 2);
        assert_eq!(series.buckets[3], 1, "3 ms is in the 5 ms bucket");
        assert_eq!(
            series.buckets[LATENCY_BUCKETS.len()],
            1,
            "60 s is only in +Inf"
        );
    }
}
