//! Prometheus metrics, rendered by hand in the text exposition format: a handful of
//! series do not justify a metrics framework.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::db::{DbPool, StatementCounter};
use crate::domain::Outcome;

/// Upper bounds (seconds) of the request latency histogram buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const OUTCOMES: [Outcome; 4] = [
    Outcome::NewPrimary,
    Outcome::NewSecondary,
    Outcome::Merged,
    Outcome::Unchanged,
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
    outcomes: [AtomicU64; 4],
    merged_primaries: AtomicU64,
    rate_limited: AtomicU64,
    connections_open: AtomicU64,
    connections_refused: AtomicU64,
    /// Closed by the server, by reason: `CLOSE_REASONS`.
    connections_closed: [AtomicU64; CLOSE_REASONS.len()],
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
        let slot = OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(0);
        self.outcomes[slot].fetch_add(1, Ordering::Relaxed);
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

    /// The server closed a connection; `reason` is one of `CLOSE_REASONS`.
    pub fn observe_connection_closed(&self, reason: &str) {
        if let Some(slot) = CLOSE_REASONS.iter().position(|known| *known == reason) {
            self.connections_closed[slot].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The whole registry in Prometheus text format.
    pub fn render(&self, pool: &DbPool, statements: &StatementCounter) -> String {
        let mut out = String::new();
        let requests = self
            .requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());

        out.push_str(
            "# HELP http_requests_total HTTP requests answered, by route, method and status.\n",
        );
        out.push_str("# TYPE http_requests_total counter\n");
        for (key, series) in requests.iter() {
            let _ = writeln!(
                out,
                "http_requests_total{{{}}} {}",
                labels(key),
                series.count
            );
        }

        out.push_str("# HELP http_request_duration_seconds Time to answer HTTP requests.\n");
        out.push_str("# TYPE http_request_duration_seconds histogram\n");
        for (key, series) in requests.iter() {
            let labels = labels(key);
            let mut cumulative = 0;
            for (bound, count) in LATENCY_BUCKETS.iter().zip(series.buckets.iter()) {
                cumulative += count;
                let _ = writeln!(
                    out,
                    "http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                series.count
            );
            let _ = writeln!(
                out,
                "http_request_duration_seconds_sum{{{labels}}} {}",
                series.sum_seconds
            );
            let _ = writeln!(
                out,
                "http_request_duration_seconds_count{{{labels}}} {}",
                series.count
            );
        }
        drop(requests);

        out.push_str("# HELP identify_outcomes_total Identify calls by what they changed.\n");
        out.push_str("# TYPE identify_outcomes_total counter\n");
        for (outcome, counter) in OUTCOMES.iter().zip(self.outcomes.iter()) {
            let _ = writeln!(
                out,
                "identify_outcomes_total{{outcome=\"{}\"}} {}",
                outcome.as_str(),
                counter.load(Ordering::Relaxed)
            );
        }
        out.push_str(
            "# HELP identify_merged_primaries_total Primaries turned secondary by merges.\n",
        );
        out.push_str("# TYPE identify_merged_primaries_total counter\n");
        let _ = writeln!(
            out,
            "identify_merged_primaries_total {}",
            self.merged_primaries.load(Ordering::Relaxed)
        );
        out.push_str("# HELP http_rate_limited_total Requests refused by the rate limit.\n");
        out.push_str("# TYPE http_rate_limited_total counter\n");
        let _ = writeln!(
            out,
            "http_rate_limited_total {}",
            self.rate_limited.load(Ordering::Relaxed)
        );

        out.push_str("# HELP http_connections_open Client connections open now.\n");
        out.push_str("# TYPE http_connections_open gauge\n");
        let _ = writeln!(
            out,
            "http_connections_open {}",
            self.connections_open.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP http_connections_refused_total New connections closed at once: the cap was reached and every connection was busy.\n",
        );
        out.push_str("# TYPE http_connections_refused_total counter\n");
        let _ = writeln!(
            out,
            "http_connections_refused_total {}",
            self.connections_refused.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP http_connections_closed_total Connections the server closed, by reason.\n",
        );
        out.push_str("# TYPE http_connections_closed_total counter\n");
        for (reason, counter) in CLOSE_REASONS.iter().zip(self.connections_closed.iter()) {
            let _ = writeln!(
                out,
                "http_connections_closed_total{{reason=\"{reason}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }

        let status = pool.status();
        let idle = status.available;
        let in_use = status.size.saturating_sub(idle);
        out.push_str("# HELP db_pool_connections Database connections of this process by state.\n");
        out.push_str("# TYPE db_pool_connections gauge\n");
        let _ = writeln!(out, "db_pool_connections{{state=\"in_use\"}} {in_use}");
        let _ = writeln!(out, "db_pool_connections{{state=\"idle\"}} {idle}");
        out.push_str("# HELP db_pool_max_connections Configured pool size.\n");
        out.push_str("# TYPE db_pool_max_connections gauge\n");
        let _ = writeln!(out, "db_pool_max_connections {}", status.max_size);
        out.push_str("# HELP db_pool_waiting Requests waiting for a connection.\n");
        out.push_str("# TYPE db_pool_waiting gauge\n");
        let _ = writeln!(out, "db_pool_waiting {}", status.waiting);
        out.push_str(
            "# HELP db_statements_total SQL statements sent, transaction control included.\n",
        );
        out.push_str("# TYPE db_statements_total counter\n");
        let _ = writeln!(out, "db_statements_total {}", statements.total());
        out
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
