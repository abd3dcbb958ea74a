//! The load itself: workers that each keep one request in flight, the clock and the
//! request budget that stop them, progress lines, and Ctrl-C.
//!
//! Stopping is two-staged so that a run always ends by itself yet loses nothing it
//! can keep: at the deadline (or the first Ctrl-C) workers send nothing new and
//! finish the request in flight, which `--timeout-ms` bounds; a second Ctrl-C
//! abandons those too.

use std::collections::{BTreeMap, HashSet};
use std::future::pending;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use hyper::Uri;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::client::{ErrorKind, Failure, IdentifyClient, Reply};
use crate::model::{AnswerChecks, ModelLog, Node, read_answer};
use crate::workload::{Kind, Prng, Request, RunId, Workload, mix64};

/// A pause after a failed connection attempt: a server that is down refuses at once,
/// and without it the workers would spin on refusals.
const CONNECT_RETRY_PAUSE: Duration = Duration::from_millis(10);

/// What shapes a run, beyond the workload and the client.
pub struct Plan {
    /// Endpoints; worker `i` uses `endpoints[i % len]`.
    pub endpoints: Vec<Uri>,
    pub connections: usize,
    pub requests: Option<u64>,
    pub duration: Option<Duration>,
    pub progress: Option<Duration>,
    pub seed: u64,
    pub run_id: RunId,
    /// Keep what the model check needs (it costs memory and some CPU).
    pub keep_model: bool,
    /// Administrators' repairs during the load, if asked for.
    pub repairs: Option<RepairPlan>,
}

/// `--repair-every-ms`: every `every`, block one value of an acknowledged request
/// and resolve this run's pending held requests, over GraphQL at `endpoint`.
#[derive(Clone, Debug)]
pub struct RepairPlan {
    pub every: Duration,
    pub endpoint: Uri,
}

/// What the repairs did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepairTally {
    pub blocked: u64,
    pub approved: u64,
    pub rejected: u64,
    /// Repairs the server refused or that failed in transport.
    pub failed: u64,
    /// Approved held requests that changed something, for the model.
    #[serde(skip)]
    pub applied: Vec<Request>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    /// Send nothing new; finish what is in flight.
    Draining,
    /// Abandon what is in flight.
    Abort,
}

/// Why the run stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Duration,
    Requests,
    Interrupted,
}

impl StopReason {
    pub fn describe(self) -> &'static str {
        match self {
            StopReason::Duration => "duration reached",
            StopReason::Requests => "request count reached",
            StopReason::Interrupted => "interrupted",
        }
    }
}

/// Failures of one kind: how many, and the first one's detail.
#[derive(Debug)]
pub struct ErrorTally {
    pub count: u64,
    pub example: String,
}

/// What one worker saw; the run's tally is all workers' merged.
pub struct Tally {
    pub requests: u64,
    pub ok: u64,
    /// Answers with outcome `held`: nothing linked, so neither acknowledged nor
    /// checked as an identity.
    pub held: u64,
    /// With repairs on: requests refused because every value was blocked (422
    /// `BLOCKED_VALUE`), which is the server doing its job.
    pub blocked: u64,
    pub repairs: Option<RepairTally>,
    /// Microseconds, for every request that got an HTTP answer.
    pub latency_us: Histogram<u64>,
    pub statuses: BTreeMap<u16, u64>,
    /// By [`ErrorKind`] label.
    pub errors: BTreeMap<String, ErrorTally>,
    pub sent_by_kind: BTreeMap<Kind, u64>,
    pub answer_checks: AnswerChecks,
    pub model: Option<ModelLog>,
}

impl Tally {
    fn new(keep_model: bool) -> Self {
        Self {
            requests: 0,
            ok: 0,
            held: 0,
            blocked: 0,
            repairs: None,
            latency_us: latency_histogram(),
            statuses: BTreeMap::new(),
            errors: BTreeMap::new(),
            sent_by_kind: BTreeMap::new(),
            answer_checks: AnswerChecks::default(),
            model: keep_model.then(ModelLog::default),
        }
    }

    fn count_failure(&mut self, failure: Failure) {
        self.errors
            .entry(failure.kind.to_string())
            .and_modify(|tally| tally.count += 1)
            .or_insert(ErrorTally {
                count: 1,
                example: failure.detail,
            });
    }

    fn merge(&mut self, other: Tally) {
        self.requests += other.requests;
        self.ok += other.ok;
        self.held += other.held;
        self.blocked += other.blocked;
        // Both histograms have the same bounds, so adding cannot fail.
        self.latency_us.add(&other.latency_us).ok();
        for (status, count) in other.statuses {
            *self.statuses.entry(status).or_default() += count;
        }
        for (kind, tally) in other.errors {
            self.errors
                .entry(kind)
                .and_modify(|mine| mine.count += tally.count)
                .or_insert(tally);
        }
        for (kind, count) in other.sent_by_kind {
            *self.sent_by_kind.entry(kind).or_default() += count;
        }
        self.answer_checks.merge(other.answer_checks);
        if let (Some(mine), Some(theirs)) = (&mut self.model, other.model) {
            mine.merge(theirs);
        }
    }
}

/// The longest latency told apart, in microseconds; longer ones count as this long.
/// A request is abandoned at `--timeout-ms` anyway.
const LATENCY_CEILING_US: u64 = 3_600_000_000;

/// Microsecond latencies, 3 significant digits. Fixed bounds, because recording
/// saturates rather than resizes, and equal bounds let tallies add up without error.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_CEILING_US, 3)
        .expect("1 µs to 1 h at 3 significant digits is within hdrhistogram's range")
}

/// Counters the progress line reads while workers run.
struct Live {
    requests: AtomicU64,
    ok: AtomicU64,
    /// Latencies since the last progress line.
    interval_us: Mutex<Histogram<u64>>,
}

/// What all workers share.
struct Shared {
    client: IdentifyClient,
    workload: Workload,
    run_id: RunId,
    live: Live,
    /// Requests started so far, against `--requests`.
    started: AtomicU64,
    request_limit: Option<u64>,
    keep_model: bool,
    /// With repairs on: every value a repair blocked or is about to block. Filled
    /// before the block is sent, so an answer lacking such a value is never taken for
    /// a wrong one.
    blocking: Option<Mutex<HashSet<Node>>>,
}

/// What the load produced.
pub struct Outcome {
    pub tally: Tally,
    pub elapsed: Duration,
    pub stopped_by: StopReason,
    pub crashed_workers: usize,
}

/// Ctrl-C presses, as a channel: the load and the model check both listen, and once
/// a handler is installed the default "exit at once" no longer applies.
pub fn interrupts() -> mpsc::UnboundedReceiver<()> {
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            if sender.send(()).is_err() {
                break;
            }
        }
    });
    receiver
}

/// Runs the load until the deadline, the request budget or Ctrl-C, and collects
/// every worker's tally.
pub async fn load(
    plan: Plan,
    client: IdentifyClient,
    workload: Workload,
    interrupts: &mut mpsc::UnboundedReceiver<()>,
) -> Outcome {
    let shared = Arc::new(Shared::new(&plan, client, workload));
    let (phase_sender, phase) = watch::channel(Phase::Running);
    let started = Instant::now();
    let mut workers = spawn_workers(&plan, &shared, &phase);
    let repairs = plan.repairs.clone().map(|repairs| {
        tokio::spawn(repair(
            Arc::clone(&shared),
            repairs,
            Prng::new(mix64(plan.seed ^ 0x5eed)),
            phase.clone(),
        ))
    });

    let deadline = plan.duration.map(|duration| started + duration);
    let mut deadline = std::pin::pin!(sleep_until(deadline));
    let mut ticker = progress_ticker(started, plan.progress);
    let mut progress = ProgressLine::new(started);
    let mut stopped_by = None;
    let mut tally = Tally::new(plan.keep_model);
    let mut crashed_workers = 0;
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                Some(Ok(worker_tally)) => tally.merge(worker_tally),
                Some(Err(err)) => {
                    crashed_workers += 1;
                    eprintln!("loadgen: a worker crashed: {err}");
                }
                None => break,
            },
            () = &mut deadline, if stopped_by.is_none() => {
                stopped_by = Some(StopReason::Duration);
                phase_sender.send_replace(Phase::Draining);
            }
            Some(()) = interrupts.recv() => {
                if *phase_sender.borrow() == Phase::Running {
                    stopped_by = Some(StopReason::Interrupted);
                    phase_sender.send_replace(Phase::Draining);
                    eprintln!(
                        "loadgen: interrupted; finishing the requests in flight \
                         (Ctrl-C again to abandon them)"
                    );
                } else {
                    phase_sender.send_replace(Phase::Abort);
                    eprintln!("loadgen: abandoning the requests in flight");
                }
            }
            () = tick(&mut ticker) => eprintln!("{}", progress.line(&shared.live)),
        }
    }
    if let Some(repairs) = repairs {
        match repairs.await {
            Ok(repaired) => {
                if let Some(model) = &mut tally.model {
                    for &request in &repaired.applied {
                        model.sent.insert(request);
                        model.changed.insert(request);
                    }
                }
                tally.repairs = Some(repaired);
            }
            Err(err) => {
                crashed_workers += 1;
                eprintln!("loadgen: the repair task crashed: {err}");
            }
        }
    }
    Outcome {
        tally,
        elapsed: started.elapsed(),
        stopped_by: stopped_by.unwrap_or(StopReason::Requests),
        crashed_workers,
    }
}

impl Shared {
    /// What the workers of `plan` share, with nothing counted yet.
    fn new(plan: &Plan, client: IdentifyClient, workload: Workload) -> Self {
        Self {
            client,
            workload,
            run_id: plan.run_id,
            live: Live {
                requests: AtomicU64::new(0),
                ok: AtomicU64::new(0),
                interval_us: Mutex::new(latency_histogram()),
            },
            started: AtomicU64::new(0),
            request_limit: plan.requests,
            keep_model: plan.keep_model,
            blocking: plan.repairs.as_ref().map(|_| Mutex::new(HashSet::new())),
        }
    }

    fn is_blocked(&self, node: &Node) -> bool {
        self.blocking.as_ref().is_some_and(|blocking| {
            blocking
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(node)
        })
    }
}

/// Starts one worker per connection, each on its endpoint with its own random stream;
/// returns them to be joined.
fn spawn_workers(
    plan: &Plan,
    shared: &Arc<Shared>,
    phase: &watch::Receiver<Phase>,
) -> JoinSet<Tally> {
    let mut workers = JoinSet::new();
    for index in 0..plan.connections {
        let endpoint = plan.endpoints[index % plan.endpoints.len()].clone();
        let rng = Prng::new(mix64(plan.seed ^ index as u64));
        workers.spawn(work(Arc::clone(shared), endpoint, rng, phase.clone()));
    }
    workers
}

/// The clock of the progress lines, first ticking one `period` after `started`;
/// `None` when progress lines are off.
fn progress_ticker(started: Instant, period: Option<Duration>) -> Option<Interval> {
    period.map(|period| {
        let mut ticker = tokio::time::interval_at(started + period, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker
    })
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => pending().await,
    }
}

async fn tick(ticker: &mut Option<Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => pending().await,
    }
}

/// One worker: one request at a time until told to stop or out of budget.
async fn work(
    shared: Arc<Shared>,
    endpoint: Uri,
    mut rng: Prng,
    mut phase: watch::Receiver<Phase>,
) -> Tally {
    let mut tally = Tally::new(shared.keep_model);
    loop {
        if *phase.borrow() != Phase::Running {
            break;
        }
        if let Some(limit) = shared.request_limit
            && shared.started.fetch_add(1, Ordering::Relaxed) >= limit
        {
            break;
        }
        let (kind, request) = shared.workload.next(&mut rng);
        let email = request.email.map(|n| shared.run_id.email(n));
        let phone = request.phone.map(|n| shared.run_id.phone(n));
        let began = Instant::now();
        let reply = tokio::select! {
            reply = shared.client.identify(&endpoint, email.as_deref(), phone.as_deref()) => reply,
            _ = phase.wait_for(|phase| *phase == Phase::Abort) => Reply::failed(Failure::new(
                ErrorKind::Cancelled,
                "abandoned in flight by a second Ctrl-C",
            )),
        };
        let latency = began.elapsed();
        let refused = record(&shared, &mut tally, kind, request, reply, latency);
        if refused {
            tokio::time::sleep(CONNECT_RETRY_PAUSE).await;
        }
    }
    tally
}

/// Books one request; true when no connection could be made.
fn record(
    shared: &Shared,
    tally: &mut Tally,
    kind: Kind,
    request: Request,
    reply: Reply,
    latency: Duration,
) -> bool {
    tally.requests += 1;
    *tally.sent_by_kind.entry(kind).or_default() += 1;
    shared.live.requests.fetch_add(1, Ordering::Relaxed);
    if let Some(status) = reply.status {
        *tally.statuses.entry(status.as_u16()).or_default() += 1;
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        tally.latency_us.saturating_record(micros);
        shared
            .live
            .interval_us
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .saturating_record(micros);
    }
    match reply.result {
        Ok(answer) if answer.is_held() => {
            tally.ok += 1;
            tally.held += 1;
            shared.live.ok.fetch_add(1, Ordering::Relaxed);
            // Known not applied; counted among the sent, the model stays an upper bound.
            if let Some(model) = &mut tally.model {
                model.record_sent(request);
            }
            false
        }
        Ok(answer) => {
            tally.ok += 1;
            shared.live.ok.fetch_add(1, Ordering::Relaxed);
            let read = read_answer(shared.run_id, &answer);
            tally.answer_checks.inspect(
                shared.client.api(),
                shared.run_id,
                (kind, request),
                &answer,
                &read,
                |node| shared.is_blocked(node),
            );
            if let Some(model) = &mut tally.model {
                let changed = !answer
                    .outcome
                    .as_deref()
                    .is_some_and(|outcome| outcome.eq_ignore_ascii_case("unchanged"));
                model.record_acknowledged(request, &read, changed);
            }
            shared.workload.acknowledge(request);
            false
        }
        Err(failure) if shared.blocking.is_some() && failure.kind.is_blocked_value() => {
            tally.ok += 1;
            tally.blocked += 1;
            shared.live.ok.fetch_add(1, Ordering::Relaxed);
            if let Some(model) = &mut tally.model {
                model.record_sent(request);
            }
            false
        }
        Err(failure) => {
            let refused = !failure.kind.may_have_reached_server();
            if let Some(model) = &mut tally.model
                && !refused
            {
                model.record_sent(request);
            }
            tally.count_failure(failure);
            refused
        }
    }
}

/// The progress line: totals so far, and rate and p99 since the previous line.
struct ProgressLine {
    started: Instant,
    last_at: Instant,
    last_requests: u64,
}

impl ProgressLine {
    fn new(started: Instant) -> Self {
        Self {
            started,
            last_at: started,
            last_requests: 0,
        }
    }

    fn line(&mut self, live: &Live) -> String {
        let now = Instant::now();
        let requests = live.requests.load(Ordering::Relaxed);
        let ok = live.ok.load(Ordering::Relaxed);
        let interval = now.duration_since(self.last_at).as_secs_f64();
        let rate = if interval > 0.0 {
            (requests - self.last_requests) as f64 / interval
        } else {
            0.0
        };
        let p99 = {
            let mut latencies = live
                .interval_us
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let p99 = (!latencies.is_empty()).then(|| {
                format!(
                    "{:.2} ms",
                    latencies.value_at_quantile(0.99) as f64 / 1000.0
                )
            });
            latencies.reset();
            p99.unwrap_or_else(|| "-".to_owned())
        };
        self.last_at = now;
        self.last_requests = requests;
        format!(
            "[{:>7.1}s] {requests:>9} requests {rate:>9.1} req/s  p99 {p99:>10}  non-200 {}",
            now.duration_since(self.started).as_secs_f64(),
            // Read apart from `requests`, `ok` may already count a request `requests` does not.
            requests.saturating_sub(ok)
        )
    }
}

const BLOCK_VALUE: &str =
    "mutation($input: BlockValueInput!) { blockValue(input: $input) { identities } }";
const PENDING_HELD: &str = "{ heldRequests(first: 100) { nodes { id email phoneNumber } } }";
/// Held requests the administrator resolves each turn, after its block.
const RESOLUTIONS_PER_TURN: usize = 2;
const APPROVE_HELD: &str = "mutation($id: Int!) { approveHeld(id: $id) { outcome } }";
const REJECT_HELD: &str = "mutation($id: Int!) { rejectHeld(id: $id) { held { id } } }";

/// The administrator: until the load stops, every `plan.every` blocks one value of an
/// acknowledged request (its email or its phone, in turn) and approves or rejects,
/// in turn, this run's pending held requests.
async fn repair(
    shared: Arc<Shared>,
    plan: RepairPlan,
    mut rng: Prng,
    phase: watch::Receiver<Phase>,
) -> RepairTally {
    let mut tally = RepairTally::default();
    let mut ticker = tokio::time::interval(plan.every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut turn = 0u64;
    while *phase.borrow() == Phase::Running {
        ticker.tick().await;
        turn += 1;
        if let Some(request) = shared.workload.sample(&mut rng) {
            let (node, input) = match (turn % 2, request.email, request.phone) {
                (0, Some(email), _) | (_, Some(email), None) => (
                    Node::Email(email),
                    serde_json::json!({"email": shared.run_id.email(email), "reason": "loadgen repair"}),
                ),
                (_, _, Some(phone)) => (
                    Node::Phone(phone),
                    serde_json::json!({"phoneNumber": shared.run_id.phone(phone), "reason": "loadgen repair"}),
                ),
                (_, None, None) => continue,
            };
            if let Some(blocking) = &shared.blocking {
                blocking
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(node);
            }
            match shared
                .client
                .graphql(
                    &plan.endpoint,
                    BLOCK_VALUE,
                    serde_json::json!({ "input": input }),
                )
                .await
            {
                Ok(_) => tally.blocked += 1,
                Err(_) => tally.failed += 1,
            }
        }
        let Ok(held) = shared
            .client
            .graphql(&plan.endpoint, PENDING_HELD, serde_json::Value::Null)
            .await
        else {
            tally.failed += 1;
            continue;
        };
        let nodes = held["heldRequests"]["nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        // A few a turn: under a fast load the held requests pile up, and resolving
        // all of them first would leave the blocks, one a turn, waiting behind them.
        for record in nodes.into_iter().take(RESOLUTIONS_PER_TURN) {
            // Only this run's: other runs' held requests are theirs to resolve.
            let email = record["email"]
                .as_str()
                .map(|e| shared.run_id.parse_email(e));
            let phone = record["phoneNumber"]
                .as_str()
                .map(|p| shared.run_id.parse_phone(p));
            let (Some(id), Some(email), Some(phone)) = (
                record["id"].as_i64(),
                email.map_or(Some(None), |parsed| parsed.map(Some)),
                phone.map_or(Some(None), |parsed| parsed.map(Some)),
            ) else {
                continue;
            };
            turn += 1;
            let variables = serde_json::json!({ "id": id });
            if turn.is_multiple_of(2) {
                match shared
                    .client
                    .graphql(&plan.endpoint, APPROVE_HELD, variables)
                    .await
                {
                    Ok(answer) => {
                        tally.approved += 1;
                        if answer["approveHeld"]["outcome"] != "UNCHANGED" {
                            tally.applied.push(Request { email, phone });
                        }
                    }
                    Err(_) => tally.failed += 1,
                }
            } else {
                match shared
                    .client
                    .graphql(&plan.endpoint, REJECT_HELD, variables)
                    .await
                {
                    Ok(_) => tally.rejected += 1,
                    Err(_) => tally.failed += 1,
                }
            }
        }
    }
    tally
}
