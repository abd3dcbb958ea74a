//! `loadgen`: puts the identity reconciliation service under a realistic, seeded
//! load and tells whether it stayed fast and correct.
//!
//! - `workload`: which requests to send (the mix, fresh values, the key-space pool);
//! - `client`: one identify over REST or GraphQL, and its failures by kind;
//! - `run`: the workers, the stop conditions, progress lines and Ctrl-C;
//! - `model`: the answer checks and what the model check remembers;
//! - `check`: the model check against PostgreSQL;
//! - `subscribers`: `identityEvents` subscribers alongside the load;
//! - `report`: the summary as text and JSON, and the verdict.

mod check;
mod checks;
mod client;
mod model;
mod report;
mod run;
mod subscribers;
mod workload;

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use hyper::Uri;
use tokio::sync::mpsc;

use crate::check::CheckError;
use crate::client::{Api, IdentifyClient};
use crate::model::ModelLog;
use crate::report::{Facts, ModelCheckReport, Summary, Verdict};
use crate::run::{Outcome, Plan};
use crate::workload::{Mix, RunId, Workload};

/// Exit statuses, as `--help` documents them.
const EXIT_ERROR_RATE: u8 = 1;
const EXIT_CHECK_FAILED: u8 = 2;
const EXIT_SETUP_FAILED: u8 = 3;

/// How long a run lasts when neither --duration nor --requests is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// Load generator for the identity reconciliation service.
///
/// Sends a seeded mix of identify requests (new customers, repeats, known customers
/// with a new phone, orders that bridge two customers) from concurrent keep-alive
/// connections, and reports throughput, latency percentiles and failures. Every
/// answer is checked as it arrives; with --database-url the database's identities
/// are checked afterwards against what the server acknowledged.
///
/// Every email and phone carries the run id, so runs never collide with each other
/// or with other data.
///
/// Exit status: 0 all well; 1 more failed requests than --max-error-rate allows;
/// 2 an answer check or the model check failed, or the model check could not run;
/// 3 bad arguments or the generator itself failed.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version)]
struct Args {
    /// Base URL of a server; repeat to spread the connections over several servers
    ///
    /// Worker i talks to the (i mod n)-th URL. Plain http only; a path prefix is kept,
    /// so http://proxy/svc sends to http://proxy/svc/identify.
    #[arg(
        long = "url",
        value_name = "URL",
        default_value = "http://127.0.0.1:3000",
        value_parser = client::parse_base_url
    )]
    urls: Vec<Uri>,

    /// The API to drive: REST `POST /identify`, or the GraphQL `identify` mutation
    #[arg(long, value_enum, default_value_t = Api::Rest)]
    api: Api,

    /// Concurrent workers, each with one request at a time on a keep-alive connection
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    connections: u32,

    /// Stop after this many seconds [default: 10, unless --requests is given]
    #[arg(long, value_name = "SECS", value_parser = parse_positive_seconds)]
    duration: Option<Duration>,

    /// Stop after this many requests (with --duration too: whichever comes first)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    requests: Option<u64>,

    /// Relative weights of the request kinds new, repeat, extend and bridge
    ///
    /// new: a customer never seen, with an email and a phone never sent before.
    ///
    /// repeat: an acknowledged request sent again; one in ten carries only its email,
    /// one in ten only its phone.
    ///
    /// extend: a known customer's email with a fresh phone (adds a secondary).
    ///
    /// bridge: the email of one acknowledged request with the phone of another
    /// (merges two identities).
    ///
    /// A kind the key space cannot serve yet (nothing acknowledged, or fewer than two
    /// requests for a bridge) is sent as new. Kinds left out weigh 0.
    ///
    /// The default keeps bridges rare, as they are in a shop: one order in twenty
    /// joining two customers already merges most of a small key space into one
    /// giant identity within seconds, and every request on it then loads all of it.
    #[arg(
        long,
        value_name = "KIND=WEIGHT,...",
        default_value = "new=35,repeat=45,extend=15,bridge=5"
    )]
    mix: Mix,

    /// Key space: repeat, extend and bridge draw from the last K acknowledged requests
    ///
    /// The pool is shared by all workers and holds the last K distinct requests with
    /// both values that got a 200. A small K (say 16) makes many requests contend for
    /// a few identities.
    #[arg(long, value_name = "K", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    keys: u32,

    /// Seed of every random choice
    ///
    /// Worker i draws from its own stream, seeded with the seed and i. With one
    /// connection and --requests, a seed (and --run-id) gives the same requests every
    /// time; with more, which acknowledged requests exist at each draw depends on
    /// timing.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Six-digit id written into every email and phone of the run [default: derived
    /// from the seed and the clock]
    ///
    /// Emails are u<n>-<run id>@load.test and phones 7<run id><n>, so runs never
    /// collide with one another or with other data.
    #[arg(long, value_name = "ID", value_parser = clap::value_parser!(u32).range(0..i64::from(RunId::LIMIT)))]
    run_id: Option<u32>,

    /// Time limit per request in milliseconds, whole answer included
    ///
    /// A request over it counts as a `timeout` failure. It also bounds how long the
    /// run takes to stop: requests in flight at the deadline are allowed to finish.
    #[arg(long, value_name = "MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,

    /// API key or JWT sent as `Authorization: Bearer …` with every request
    #[arg(long, env = "LOADGEN_CREDENTIAL", hide_env_values = true)]
    credential: Option<String>,

    /// Act as an administrator during the load, every MS milliseconds: block one value
    /// of an acknowledged request (its email, then a phone, in turn) and approve or
    /// reject this run's pending held requests (docs/SPEC.md §10). Needs a server
    /// with the identity graph and, with authentication on, a credential with the
    /// `admin` scope; the model check then takes the blocked values out.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    repair_every_ms: Option<u64>,

    /// Subscribe to `identityEvents` over WebSocket this many times (spread over the
    /// servers) for the whole run; each must receive every change stored, checked
    /// with --database-url, and the summary reports the delivery lag
    #[arg(long, value_name = "N", default_value_t = 0)]
    subscribers: usize,

    /// Subscribe this many times more and never read, to show that writes do not
    /// wait for a subscriber that stopped reading (the server drops them)
    #[arg(long, value_name = "N", default_value_t = 0)]
    stalled_subscribers: usize,

    /// Seconds between progress lines on stderr; 0 turns them off
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_seconds)]
    progress: Duration,

    /// Also write the summary as JSON to this file
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,

    /// PostgreSQL URL of the servers' database: check it against the model after the load
    ///
    /// Before the load the database must hold no values of this run. After it, the
    /// run's contacts are read back and must agree with what the run sent and was
    /// answered: values acknowledged together share one identity, no identity joins
    /// values that no requests linked, invariants I1-I3 hold, every contact and value
    /// an answer named still exists, and every row comes from one request. No TLS.
    #[arg(
        long,
        value_name = "URL",
        env = "LOADGEN_DATABASE_URL",
        hide_env_values = true
    )]
    database_url: Option<String>,

    /// Highest share of requests allowed to fail, from 0 to 1 (above it: exit status 1)
    ///
    /// A request fails unless it gets a 200 with an identity. Fault-injection runs
    /// pass 1.0.
    #[arg(long, value_name = "RATE", default_value_t = 0.0, value_parser = parse_rate)]
    max_error_rate: f64,
}

fn parse_seconds(raw: &str) -> Result<Duration, String> {
    let seconds: f64 = raw
        .trim()
        .parse()
        .map_err(|_| format!("`{raw}` is not a number of seconds"))?;
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("`{raw}` is not a usable duration"))
}

fn parse_positive_seconds(raw: &str) -> Result<Duration, String> {
    let duration = parse_seconds(raw)?;
    if duration.is_zero() {
        return Err("the duration must be more than 0 seconds".to_owned());
    }
    Ok(duration)
}

fn parse_rate(raw: &str) -> Result<f64, String> {
    match raw.trim().parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!("`{raw}` is not a rate from 0 to 1")),
    }
}

/// Runs loadgen as its command line would, `args` starting with the program name,
/// on a runtime of its own; returns the exit status (see `--help`). The binary is
/// this and nothing else; tests call it in-process.
pub fn main_with_args<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = match Args::try_parse_from(args) {
        Ok(args) => args,
        Err(err) => {
            // --help and --version arrive here too; they are not failures.
            err.print().ok();
            return if err.use_stderr() {
                EXIT_SETUP_FAILED
            } else {
                0
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("loadgen: could not start a runtime: {err}");
            return EXIT_SETUP_FAILED;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(verdict) => exit_status(verdict),
        Err(message) => {
            eprintln!("loadgen: {message}");
            EXIT_SETUP_FAILED
        }
    }
}

fn exit_status(verdict: Verdict) -> u8 {
    if verdict.generator_failed {
        EXIT_SETUP_FAILED
    } else if verdict.checks_failed {
        EXIT_CHECK_FAILED
    } else if verdict.error_rate_exceeded {
        EXIT_ERROR_RATE
    } else {
        0
    }
}

/// The whole run; `Err` is a setup failure, reported before any load is sent or
/// after the summary when it cannot be written.
async fn run(args: Args) -> Result<Verdict, String> {
    let Setup {
        run_id,
        endpoints,
        json_file,
    } = prepare(&args).await?;
    let connections = args.connections as usize;
    let keys = args.keys as usize;
    let duration = duration_limit(&args);
    let targets: Vec<String> = endpoints.iter().map(Uri::to_string).collect();
    announce(&args, run_id, &targets, duration);

    let client = IdentifyClient::new(
        args.api,
        Duration::from_millis(args.timeout_ms),
        connections,
        args.credential.as_deref(),
    );
    let subscribers = if args.subscribers + args.stalled_subscribers > 0 {
        let plan = subscribers::SubscriberPlan {
            live: args.subscribers,
            stalled: args.stalled_subscribers,
            urls: args.urls.clone(),
            credential: args.credential.clone(),
        };
        Some(plan.open().await?)
    } else {
        None
    };
    // Installed only now: until the load starts, Ctrl-C should simply end the program.
    let mut interrupts = run::interrupts();
    let plan = Plan {
        endpoints,
        connections,
        requests: args.requests,
        duration,
        progress: (!args.progress.is_zero()).then_some(args.progress),
        seed: args.seed,
        run_id,
        keep_model: args.database_url.is_some(),
        repairs: match args.repair_every_ms {
            Some(every) => Some(run::RepairPlan {
                every: Duration::from_millis(every),
                endpoint: client::endpoint(&args.urls[0], client::Api::Graphql)?,
            }),
            None => None,
        },
    };
    let mut outcome = run::load(plan, client, Workload::new(args.mix, keys), &mut interrupts).await;

    let subscribers = match subscribers {
        Some(subscribers) => {
            let expected = match &args.database_url {
                Some(url) => Some(
                    check::stored_changes(url)
                        .await
                        .map_err(|err| format!("could not count the stored changes: {err}"))?,
                ),
                None => None,
            };
            Some(subscribers.finish(expected).await)
        }
        None => None,
    };
    let model_check = match (&args.database_url, outcome.tally.model.take()) {
        (Some(url), Some(log)) => Some(check_model(url, run_id, log, &mut interrupts).await),
        _ => None,
    };

    let mut facts = facts(&args, run_id, targets, outcome, model_check);
    facts.subscribers = subscribers;
    let (summary, verdict) = Summary::new(facts);
    print!("{summary}");
    if let (Some(path), Some(file)) = (&args.json, json_file) {
        write_json(path, file, &summary)?;
    }
    Ok(verdict)
}

/// What is settled before any load is sent.
struct Setup {
    run_id: RunId,
    endpoints: Vec<Uri>,
    json_file: Option<File>,
}

/// Settles the run id, the endpoints and the JSON file, and makes sure the database
/// holds nothing of this run; `Err` says what stands in the way.
async fn prepare(args: &Args) -> Result<Setup, String> {
    let run_id = resolve_run_id(args)?;
    let endpoints = args
        .urls
        .iter()
        .map(|url| client::endpoint(url, args.api))
        .collect::<Result<Vec<_>, _>>()?;

    // Opened now: a path that cannot be written should fail before the load, not after.
    let json_file = match &args.json {
        Some(path) => Some(
            File::create(path).map_err(|err| format!("cannot create {}: {err}", path.display()))?,
        ),
        None => None,
    };
    if let Some(url) = &args.database_url {
        check::preflight(url, run_id)
            .await
            .map_err(|err| format!("before the load: {err}"))?;
    }
    Ok(Setup {
        run_id,
        endpoints,
        json_file,
    })
}

/// The run id `--run-id` gives, or else one derived from the seed and the clock.
fn resolve_run_id(args: &Args) -> Result<RunId, String> {
    match args.run_id {
        Some(id) => RunId::new(id).ok_or_else(|| format!("--run-id {id} has more than six digits")),
        None => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos() as u64);
            Ok(RunId::derive(args.seed, now))
        }
    }
}

/// How long the run may last: `--duration`, or the default when no limit is given.
fn duration_limit(args: &Args) -> Option<Duration> {
    match (args.duration, args.requests) {
        (None, None) => Some(DEFAULT_DURATION),
        (duration, _) => duration,
    }
}

/// Tells on stderr what the run is about to send, where, and until when.
fn announce(args: &Args, run_id: RunId, targets: &[String], duration: Option<Duration>) {
    let limits: Vec<String> = duration
        .map(|duration| format!("{:.1} s", duration.as_secs_f64()))
        .into_iter()
        .chain(args.requests.map(|requests| format!("{requests} requests")))
        .collect();
    eprintln!(
        "loadgen: run {run_id}, seed {}, {} connections to {}, mix {}, {} keys, for {}",
        args.seed,
        args.connections,
        targets.join(" "),
        args.mix,
        args.keys,
        limits.join(" or "),
    );
}

/// The model check's report: what it found, or why it could not finish (Ctrl-C
/// included).
async fn check_model(
    url: &str,
    run_id: RunId,
    log: ModelLog,
    interrupts: &mut mpsc::UnboundedReceiver<()>,
) -> ModelCheckReport {
    eprintln!("loadgen: checking the database against the model");
    let result = tokio::select! {
        result = check::run(url, run_id, log) => result,
        Some(()) = interrupts.recv() => Err(CheckError::Interrupted),
    };
    match result {
        Ok(model_check) => ModelCheckReport::Done(model_check),
        Err(err) => ModelCheckReport::NotRun {
            error: err.to_string(),
        },
    }
}

/// The facts the summary is made of: the arguments, and what the load and the model
/// check found.
fn facts(
    args: &Args,
    run_id: RunId,
    urls: Vec<String>,
    outcome: Outcome,
    model_check: Option<ModelCheckReport>,
) -> Facts {
    let tally = outcome.tally;
    Facts {
        run_id,
        seed: args.seed,
        api: args.api,
        urls,
        connections: args.connections as usize,
        keys: args.keys as usize,
        mix: args.mix,
        max_error_rate: args.max_error_rate,
        stopped_by: outcome.stopped_by,
        elapsed_s: outcome.elapsed.as_secs_f64(),
        requests: tally.requests,
        ok: tally.ok,
        held: tally.held,
        blocked: tally.blocked,
        repairs: tally.repairs,
        latency_us: tally.latency_us,
        statuses: tally.statuses,
        errors: tally.errors,
        sent_by_kind: tally.sent_by_kind,
        answer_checks: tally.answer_checks.into_checks(),
        model_check,
        subscribers: None,
        crashed_workers: outcome.crashed_workers,
    }
}

/// Writes the summary as JSON to `file`, opened for `path`; `Err` says why it could not.
fn write_json(path: &Path, mut file: File, summary: &Summary) -> Result<(), String> {
    serde_json::to_writer_pretty(&mut file, summary)
        .map_err(io::Error::from)
        .and_then(|()| writeln!(file))
        .map_err(|err| format!("cannot write {}: {err}", path.display()))
}
