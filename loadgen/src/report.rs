//! The run's summary: the text printed on stdout, the JSON written by `--json`, and
//! the verdict that decides the exit status.

use std::collections::BTreeMap;
use std::fmt;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::check::ModelCheck;
use crate::checks::{Check, Latency};
use crate::client::Api;
use crate::run::{ErrorTally, RepairTally, StopReason};
use crate::subscribers::SubscriberReport;
use crate::workload::{Kind, Mix, RunId};

/// The outcome of the model check, or why it could not run.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum ModelCheckReport {
    Done(ModelCheck),
    NotRun { error: String },
}

impl ModelCheckReport {
    fn passed(&self) -> bool {
        match self {
            ModelCheckReport::Done(check) => check.passed,
            ModelCheckReport::NotRun { .. } => false,
        }
    }
}

/// Everything a run reports, as printed and as written to `--json`.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub run_id: RunId,
    pub seed: u64,
    pub api: Api,
    pub urls: Vec<String>,
    pub connections: usize,
    pub keys: usize,
    pub mix: Mix,
    pub stopped_by: StopReason,
    pub requests: u64,
    pub ok: u64,
    /// Answers held for review (`outcome: held`), among `ok`.
    pub held: u64,
    /// With repairs: requests refused because all their values were blocked, among `ok`.
    pub blocked: u64,
    /// What `--repair-every-ms` did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repairs: Option<RepairTally>,
    pub duration_s: f64,
    pub rps: f64,
    pub ok_rps: f64,
    pub error_rate: f64,
    pub max_error_rate: f64,
    /// Latency of every request that got an HTTP answer, whatever its status.
    pub latency_ms: Option<Latency>,
    pub status_counts: BTreeMap<u16, u64>,
    pub error_counts: BTreeMap<String, u64>,
    /// The first failure of each kind, word for word.
    pub error_examples: BTreeMap<String, String>,
    pub sent_by_kind: BTreeMap<Kind, u64>,
    pub answer_checks: Vec<Check>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_check: Option<ModelCheckReport>,
    /// What `--subscribers` and `--stalled-subscribers` saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribers: Option<SubscriberReport>,
    /// Workers that crashed: a bug in the generator; their requests are not counted.
    pub crashed_workers: usize,
    pub passed: bool,
    /// Why the run failed, one reason a line.
    pub failures: Vec<String>,
}

/// What the verdict is made of, for the exit status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub error_rate_exceeded: bool,
    pub checks_failed: bool,
    pub generator_failed: bool,
}

/// The run's facts, before the summary derives rates and the verdict from them.
pub struct Facts {
    pub run_id: RunId,
    pub seed: u64,
    pub api: Api,
    pub urls: Vec<String>,
    pub connections: usize,
    pub keys: usize,
    pub mix: Mix,
    pub max_error_rate: f64,
    pub stopped_by: StopReason,
    pub elapsed_s: f64,
    pub requests: u64,
    pub ok: u64,
    pub held: u64,
    pub blocked: u64,
    pub repairs: Option<RepairTally>,
    pub latency_us: Histogram<u64>,
    pub statuses: BTreeMap<u16, u64>,
    pub errors: BTreeMap<String, ErrorTally>,
    pub sent_by_kind: BTreeMap<Kind, u64>,
    pub answer_checks: Vec<Check>,
    pub model_check: Option<ModelCheckReport>,
    pub subscribers: Option<SubscriberReport>,
    pub crashed_workers: usize,
}

impl Summary {
    pub fn new(facts: Facts) -> (Self, Verdict) {
        let error_rate = error_rate(facts.requests, facts.ok);
        let (verdict, failures) = judge(&facts, error_rate);
        let (error_counts, error_examples) = split_errors(facts.errors);
        let summary = Self {
            run_id: facts.run_id,
            seed: facts.seed,
            api: facts.api,
            urls: facts.urls,
            connections: facts.connections,
            keys: facts.keys,
            mix: facts.mix,
            stopped_by: facts.stopped_by,
            requests: facts.requests,
            ok: facts.ok,
            held: facts.held,
            blocked: facts.blocked,
            repairs: facts.repairs,
            duration_s: facts.elapsed_s,
            rps: per_second(facts.requests, facts.elapsed_s),
            ok_rps: per_second(facts.ok, facts.elapsed_s),
            error_rate,
            max_error_rate: facts.max_error_rate,
            latency_ms: Latency::from_micros(&facts.latency_us),
            status_counts: facts.statuses,
            error_counts,
            error_examples,
            sent_by_kind: facts.sent_by_kind,
            answer_checks: facts.answer_checks,
            model_check: facts.model_check,
            subscribers: facts.subscribers,
            crashed_workers: facts.crashed_workers,
            passed: failures.is_empty(),
            failures,
        };
        (summary, verdict)
    }
}

/// `count` per second of `elapsed_s`; 0 when no time passed.
fn per_second(count: u64, elapsed_s: f64) -> f64 {
    if elapsed_s > 0.0 {
        count as f64 / elapsed_s
    } else {
        0.0
    }
}

/// The share of requests that failed; 0 when none were sent.
fn error_rate(requests: u64, ok: u64) -> f64 {
    if requests == 0 {
        0.0
    } else {
        (requests - ok) as f64 / requests as f64
    }
}

/// The verdict on the run, and why it failed, one reason a line (none if it passed).
fn judge(facts: &Facts, error_rate: f64) -> (Verdict, Vec<String>) {
    let mut verdict = Verdict::default();
    let mut failures = Vec::new();
    if error_rate > facts.max_error_rate {
        verdict.error_rate_exceeded = true;
        failures.push(format!(
            "{} of {} requests failed ({:.2}%), over --max-error-rate {}",
            facts.requests - facts.ok,
            facts.requests,
            error_rate * 100.0,
            facts.max_error_rate
        ));
    }
    let failed_answer_checks = facts.answer_checks.iter().filter(|c| !c.passed()).count();
    if failed_answer_checks > 0 {
        verdict.checks_failed = true;
        failures.push(format!("{failed_answer_checks} answer check(s) failed"));
    }
    match &facts.model_check {
        Some(ModelCheckReport::NotRun { error }) => {
            verdict.checks_failed = true;
            failures.push(format!("the model check could not run: {error}"));
        }
        Some(report) if !report.passed() => {
            verdict.checks_failed = true;
            failures.push("the model check failed".to_owned());
        }
        _ => {}
    }
    if let Some(subscribers) = &facts.subscribers
        && !subscribers.check.passed()
    {
        verdict.checks_failed = true;
        failures.push("a subscriber missed changes".to_owned());
    }
    if facts.crashed_workers > 0 {
        verdict.generator_failed = true;
        failures.push(format!(
            "{} worker(s) of the generator crashed",
            facts.crashed_workers
        ));
    }
    (verdict, failures)
}

/// The failures' counts and first examples, each by kind.
fn split_errors(
    errors: BTreeMap<String, ErrorTally>,
) -> (BTreeMap<String, u64>, BTreeMap<String, String>) {
    let counts = errors
        .iter()
        .map(|(kind, tally)| (kind.clone(), tally.count))
        .collect();
    let examples = errors
        .into_iter()
        .map(|(kind, tally)| (kind, tally.example))
        .collect();
    (counts, examples)
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_setup(f)?;
        writeln!(f)?;
        self.write_traffic(f)?;
        self.write_failures_by_kind(f)?;
        writeln!(f)?;
        self.write_checks(f)?;
        writeln!(f)?;
        self.write_result(f)
    }
}

impl Summary {
    /// Writes what was sent where, with which mix, and why the run stopped.
    fn write_setup(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "loadgen run {} (seed {}): {} API, {} connections, {} keys",
            self.run_id,
            self.seed,
            self.api.as_str(),
            self.connections,
            self.keys
        )?;
        writeln!(f, "servers    {}", self.urls.join(", "))?;
        let sent: Vec<String> = Kind::ALL
            .into_iter()
            .map(|kind| {
                let count = self.sent_by_kind.get(&kind).copied().unwrap_or(0);
                format!("{} {count}", kind.as_str())
            })
            .collect();
        writeln!(f, "mix        {} (sent: {})", self.mix, sent.join(", "))?;
        writeln!(
            f,
            "stopped    after {:.2} s ({})",
            self.duration_s,
            self.stopped_by.describe()
        )
    }

    /// Writes the request counts and rates, the latencies and the HTTP statuses.
    fn write_traffic(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "requests   {:>10}   {:>10.1}/s", self.requests, self.rps)?;
        writeln!(f, "ok (200)   {:>10}   {:>10.1}/s", self.ok, self.ok_rps)?;
        if self.held > 0 {
            writeln!(f, "  held     {:>10}", self.held)?;
        }
        if self.blocked > 0 {
            writeln!(f, "  blocked  {:>10}", self.blocked)?;
        }
        if let Some(repairs) = &self.repairs {
            writeln!(
                f,
                "repairs    {} blocked, {} approved, {} rejected, {} failed",
                repairs.blocked, repairs.approved, repairs.rejected, repairs.failed
            )?;
        }
        writeln!(
            f,
            "failed     {:>10}   {:>10.2}%",
            self.requests - self.ok,
            self.error_rate * 100.0
        )?;
        match &self.latency_ms {
            Some(latency) => writeln!(
                f,
                "latency    p50 {:.2} ms   p90 {:.2} ms   p99 {:.2} ms   p99.9 {:.2} ms   max {:.2} ms",
                latency.p50, latency.p90, latency.p99, latency.p999, latency.max
            )?,
            None => writeln!(f, "latency    no HTTP answers")?,
        }
        let statuses: Vec<String> = self
            .status_counts
            .iter()
            .map(|(status, count)| format!("{status}: {count}"))
            .collect();
        if !statuses.is_empty() {
            writeln!(f, "statuses   {}", statuses.join(", "))?;
        }
        Ok(())
    }

    /// Writes each kind of failure with its count and first example, if any failed.
    fn write_failures_by_kind(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.error_counts.is_empty() {
            writeln!(f, "failures by kind (first example of each):")?;
            for (kind, count) in &self.error_counts {
                let example = self.error_examples.get(kind).map_or("", String::as_str);
                writeln!(f, "  {kind:<20} {count:>10}   {example}")?;
            }
        }
        Ok(())
    }

    /// Writes the answer checks, then the model check's outcome when one was asked for.
    fn write_checks(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "answer checks")?;
        for check in &self.answer_checks {
            write!(f, "{check}")?;
        }
        match &self.model_check {
            Some(ModelCheckReport::Done(model)) => {
                writeln!(f)?;
                write!(f, "{model}")?;
            }
            Some(ModelCheckReport::NotRun { error }) => {
                writeln!(f)?;
                writeln!(f, "model check could not run: {error}")?;
            }
            None => {}
        }
        if let Some(subscribers) = &self.subscribers {
            writeln!(f)?;
            let expected = subscribers
                .expected
                .map_or("unchecked (no --database-url)".to_owned(), |n| {
                    n.to_string()
                });
            writeln!(
                f,
                "subscribers {} live: received {}..{} changes of {expected}; {} stalled, {} closed by the server",
                subscribers.live,
                subscribers.received_min,
                subscribers.received_max,
                subscribers.stalled,
                subscribers.stalled_closed
            )?;
            if let Some(lag) = &subscribers.lag_ms {
                writeln!(
                    f,
                    "  delivery lag p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
                    lag.p50, lag.p99, lag.max
                )?;
            }
            for end in &subscribers.ended_early {
                writeln!(f, "  ended early: {end}")?;
            }
            if subscribers.expected.is_some() {
                write!(f, "{}", subscribers.check)?;
            }
        }
        Ok(())
    }

    /// Writes PASS, or FAIL with the reasons.
    fn write_result(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.passed {
            writeln!(f, "result     PASS")
        } else {
            writeln!(f, "result     FAIL")?;
            for failure in &self.failures {
                writeln!(f, "  - {failure}")?;
            }
            Ok(())
        }
    }
}
