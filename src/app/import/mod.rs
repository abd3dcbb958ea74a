//! The `import` subcommand (docs/SPEC.md §13.1): a file of orders applied in file
//! order, as single calls would apply them, in chunks of one transaction each; and
//! the migration from the NestJS/TypeORM implementation's table (§13.2).
//!
//! A reader thread parses the input and checks the order of its times while the
//! previous chunk is being written; each chunk locks `contacts` against writers,
//! loads the identities its values reach, is planned in memory like a batch and
//! written set-wise, and records how far the import got in the same transaction.

pub mod nest;
pub mod source;

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Read, Seek, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use futures_util::future::try_join3;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::app::batch::{Times, plan_and_write};
use crate::app::error::{AttemptError, ServiceError};
use crate::app::identify::{Policy, screen_request};
use crate::db::DbPool;
use crate::db::batch as batch_sql;
use crate::db::imports::{self, ImportRecord, Progress};
use crate::db::protocol::{self, Retry, Values};
use crate::domain::{Contact, ContactValue, IdentifyRequest, Outcome};
use source::{Format, Order, Position, Records};

/// The most lines a chunk may hold (`--chunk-size`).
pub const MAX_CHUNK_SIZE: usize = 100_000;

/// Plain progress lines, when standard error is not a terminal.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Options {
    /// A path, or `-` for standard input.
    pub source: String,
    pub format: Option<Format>,
    pub resume: bool,
    pub force: bool,
    pub chunk_size: usize,
    pub rejects: Option<PathBuf>,
}

/// What one run of `import` did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub import_id: i64,
    pub source: String,
    /// Set when this run continued an interrupted import after that line.
    pub resumed_after_line: Option<u64>,
    /// Lines of the input consumed, this run and before.
    pub lines: u64,
    pub read: u64,
    pub applied: u64,
    pub rejected: u64,
    pub identities_created: u64,
    pub merges: u64,
    pub held: u64,
    pub elapsed_seconds: f64,
    pub orders_per_second: f64,
    pub rejects_file: Option<String>,
}

impl Summary {
    /// The summary for people: a few aligned lines.
    pub fn human(&self) -> String {
        let mut text = format!(
            "import #{} of {}{}\n",
            self.import_id,
            self.source,
            self.resumed_after_line
                .map(|line| format!(" (resumed after line {line})"))
                .unwrap_or_default()
        );
        for (label, value) in [
            ("orders read", self.read),
            ("applied", self.applied),
            ("rejected", self.rejected),
            ("identities created", self.identities_created),
            ("merges", self.merges),
            ("held", self.held),
        ] {
            text.push_str(&format!("  {label:<20} {value}\n"));
        }
        text.push_str(&format!(
            "  {:<20} {:.1} s\n  {:<20} {:.0} orders/s\n",
            "elapsed", self.elapsed_seconds, "rate", self.orders_per_second
        ));
        if let Some(rejects) = &self.rejects_file {
            text.push_str(&format!("  {:<20} {rejects}\n", "rejected lines in"));
        }
        text
    }
}

/// One chunk of the input, as the reader thread hands it over.
struct Chunk {
    orders: Vec<Order>,
    /// Where the input stands after the chunk's last line.
    end: Position,
    last_ordered_at: Option<DateTime<Utc>>,
}

enum Item {
    Chunk(Chunk),
    /// The reader stopped: the input cannot be read, or it refuses a line.
    Stopped(String),
}

/// Runs an import to its end; an error says what stopped it and what was committed.
pub async fn run(pool: &DbPool, policy: &Policy, options: &Options) -> Result<Summary, String> {
    let (input, total_bytes): (Box<dyn Read + Send>, Option<u64>) = if options.source == "-" {
        (Box::new(io::stdin()), None)
    } else {
        let file = File::open(&options.source)
            .map_err(|err| format!("cannot read {}: {err}", options.source))?;
        let size = file
            .metadata()
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len());
        (Box::new(file), size)
    };
    let (fingerprint, _, input) = source::fingerprint(input)
        .map_err(|err| format!("cannot read {}: {err}", options.source))?;

    let mut conn = pool.get().await.map_err(|err| err.to_string())?;
    if !imports::claim(&mut conn, &fingerprint)
        .await
        .map_err(|err| err.to_string())?
    {
        return Err("another import of this input is running against this database".to_owned());
    }
    let result = run_claimed(
        pool,
        &mut conn,
        policy,
        options,
        input,
        total_bytes,
        &fingerprint,
    )
    .await;
    let _ = imports::release(&mut conn, &fingerprint).await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn run_claimed(
    pool: &DbPool,
    conn: &mut AsyncPgConnection,
    policy: &Policy,
    options: &Options,
    input: impl Read + Send + 'static,
    total_bytes: Option<u64>,
    fingerprint: &str,
) -> Result<Summary, String> {
    let started = Instant::now();
    let mut previous = imports::latest(conn, fingerprint)
        .await
        .map_err(|err| err.to_string())?;
    if options.resume && previous.as_ref().is_none_or(|p| p.finished_at.is_some()) {
        // Fixed where the import stopped, within its first 64 KiB: the same source's
        // interrupted import, if its committed bytes are still those of the input
        // (the reader checks).
        previous = imports::interrupted_from(conn, &options.source)
            .await
            .map_err(|err| err.to_string())?
            .or(previous);
    }
    let format_asked = options
        .format
        .unwrap_or_else(|| Format::of_path(&options.source));
    let (record, resumed) = match (previous, options.resume) {
        // Refused before its first chunk: nothing to resume, so it starts over with
        // the input as it is now (fixed, in the usual case).
        (Some(previous), true) if previous.finished_at.is_none() && previous.lines_done == 0 => {
            match imports::restart(conn, previous.id, fingerprint, format_asked.as_str())
                .await
                .map_err(|err| err.to_string())?
            {
                Some(record) => (record, false),
                None => {
                    return Err(format!(
                        "import #{} changed meanwhile: run again",
                        previous.id
                    ));
                }
            }
        }
        (Some(previous), true) if previous.finished_at.is_none() => {
            // Found by its source, the input may have been fixed within its first
            // 64 KiB: from now on this import is the fixed input's.
            imports::refingerprint(conn, previous.id, fingerprint)
                .await
                .map_err(|err| err.to_string())?;
            (previous, true)
        }
        (Some(previous), true) => {
            return Err(format!(
                "import #{} of this input finished on {}: there is nothing to resume",
                previous.id, previous.updated_at
            ));
        }
        (None, true) => {
            return Err(
                "no interrupted import of this input to resume (none has the same first \
                 64 KiB); run without --resume to start one"
                    .to_owned(),
            );
        }
        (Some(previous), false) if previous.finished_at.is_none() && !options.force => {
            return Err(format!(
                "import #{} of this input was interrupted after line {} (last commit at {}): \
                 pass --resume to continue it (or --force to start it over)",
                previous.id, previous.lines_done, previous.updated_at
            ));
        }
        (Some(previous), false) if !options.force => {
            return Err(format!(
                "this input was imported already (import #{}, finished {}); pass --force to \
                 import it again",
                previous.id,
                previous.finished_at.unwrap_or(previous.updated_at)
            ));
        }
        (_, false) => {
            let record = imports::start(
                conn,
                fingerprint,
                &options.source,
                format_asked.as_str(),
                &source::empty_prefix(),
            )
            .await
            .map_err(|err| err.to_string())?;
            (record, false)
        }
    };
    let format = if record.format == Format::Csv.as_str() {
        Format::Csv
    } else {
        Format::Ndjson
    };
    if let Some(asked) = options.format
        && asked != format
    {
        return Err(format!(
            "import #{} reads this input as {}: resume it without --format {}",
            record.id,
            format.as_str(),
            asked.as_str()
        ));
    }

    let rejects_path = options.rejects.clone().unwrap_or_else(|| {
        if options.source == "-" {
            PathBuf::from(format!("import-{}.rejects", record.id))
        } else {
            PathBuf::from(format!("{}.rejects", options.source))
        }
    });
    let mut rejects = Rejects::open(rejects_path, resumed.then_some(record.lines_done as u64))
        .map_err(|err| format!("cannot write the rejects file: {err}"))?;

    let (sender, mut receiver) = mpsc::channel(2);
    let reader = ReaderPlan {
        chunk_size: options.chunk_size.clamp(1, MAX_CHUNK_SIZE),
        floor: record.last_ordered_at,
        started_at: record.started_at,
        resume: resumed.then(|| record.clone()),
    };
    let input = BufReader::with_capacity(1 << 20, input);
    let thread = std::thread::Builder::new()
        .name("import-reader".to_owned())
        .spawn(move || reader.run(Records::new(input, format), sender))
        .map_err(|err| err.to_string())?;

    let mut progress = Meter::new(total_bytes, record.bytes_done as u64, started);
    let mut totals = Counts::default();
    let mut restore = resumed.then(|| record.sequences.clone());
    let mut lines = record.lines_done as u64;
    let mut statistics = Statistics::new(
        imports::estimated_contacts(conn)
            .await
            .map_err(|err| err.to_string())?,
    );
    let mut stopped = None;
    let mut context = ChunkContext {
        table_rows: 0,
        import_id: record.id,
        request_id: format!("import-{}", record.id),
        policy,
    };
    while let Some(item) = receiver.recv().await {
        let chunk = match item {
            Item::Chunk(chunk) => chunk,
            Item::Stopped(message) => {
                stopped = Some(message);
                break;
            }
        };
        context.table_rows = statistics.rows();
        let counts = apply_with_retry(conn, &context, &chunk, &mut rejects, &mut restore)
            .await
            .map_err(|err| format!("{err}; {}", committed(lines, record.id)))?;
        // Servers' subscribers hear of the chunk now rather than at their next poll.
        if let Err(error) = crate::app::changefeed::announce(pool).await {
            tracing::debug!(%error, "could not announce the chunk to running servers");
        }
        lines = chunk.end.lines;
        totals.add(&counts);
        if statistics.stale_after(counts.applied) {
            imports::analyze_contacts(conn)
                .await
                .map_err(|err| err.to_string())?;
        }
        progress.update(chunk.end.bytes, lines, totals.read);
    }
    drop(receiver);
    let _ = thread.join();
    progress.finish();
    if let Some(message) = stopped {
        return Err(format!("{message}. {}", committed(lines, record.id)));
    }
    imports::finish(conn, record.id)
        .await
        .map_err(|err| err.to_string())?;
    let elapsed = started.elapsed().as_secs_f64();
    Ok(Summary {
        import_id: record.id,
        source: options.source.clone(),
        resumed_after_line: resumed.then_some(record.lines_done as u64),
        lines,
        read: totals.read,
        applied: totals.applied,
        rejected: totals.rejected,
        identities_created: totals.identities_created,
        merges: totals.merges,
        held: totals.held,
        elapsed_seconds: elapsed,
        orders_per_second: totals.read as f64 / elapsed.max(1e-9),
        rejects_file: rejects
            .written()
            .then(|| rejects.path.display().to_string()),
    })
}

/// What an interrupted import has committed, and how to go on.
fn committed(lines: u64, import_id: i64) -> String {
    if lines == 0 {
        format!(
            "Nothing is imported yet (import #{import_id}); once the cause is fixed, run again \
             with --resume"
        )
    } else {
        format!(
            "Lines 1–{lines} are imported (import #{import_id}), the rest is not; once the \
             cause is fixed (in the input: after line {lines}), run again with --resume"
        )
    }
}

/// What the reader thread needs: where to start and what the times must respect.
struct ReaderPlan {
    chunk_size: usize,
    /// No `orderedAt` may be older (the newest stored contact, or where an
    /// interrupted import got to).
    floor: Option<DateTime<Utc>>,
    /// No `orderedAt` may be later.
    started_at: DateTime<Utc>,
    resume: Option<ImportRecord>,
}

impl ReaderPlan {
    fn run<R: BufRead>(self, mut records: Records<R>, sender: mpsc::Sender<Item>) {
        if let Err(message) = self.read(&mut records, &sender) {
            let _ = sender.blocking_send(Item::Stopped(message));
        }
    }

    fn read<R: BufRead>(
        &self,
        records: &mut Records<R>,
        sender: &mpsc::Sender<Item>,
    ) -> Result<(), String> {
        if let Some(record) = &self.resume {
            let same = records
                .skip_to(
                    record.bytes_done as u64,
                    record.lines_done as u64,
                    &record.prefix_sha256,
                )
                .map_err(|err| format!("cannot read the input: {err}"))?;
            if !same {
                return Err(format!(
                    "the input's first {} lines are not those import #{} committed: it is not \
                     the same file (nothing was written)",
                    record.lines_done, record.id
                ));
            }
        }
        // The latest time so far, and the line that had it (none: the floor's).
        let mut latest: Option<(Option<u64>, DateTime<Utc>)> = self.floor.map(|at| (None, at));
        let mut orders = Vec::with_capacity(self.chunk_size);
        let mut chunk_latest = None;
        loop {
            let before = records.position();
            let order = match records.next_order() {
                Ok(Some(order)) => order,
                Ok(None) => break,
                Err(err) => {
                    // What was read so far is whole: commit it before stopping.
                    self.send(sender, &mut orders, before, &mut chunk_latest)?;
                    return Err(format!("cannot read the input: {err}"));
                }
            };
            let mut order = order;
            if let Ok(parsed) = &order.parsed
                && let Some(at) = parsed.ordered_at
            {
                if at > self.started_at {
                    order.parsed = Err(format!(
                        "orderedAt {} is in the future (the import started at {})",
                        at.to_rfc3339(),
                        self.started_at.to_rfc3339()
                    ));
                } else if let Some((line, floor)) = latest
                    && at < floor
                {
                    self.send(sender, &mut orders, before, &mut chunk_latest)?;
                    return Err(match line {
                        Some(line) => format!(
                            "line {}: orderedAt {} is earlier than line {line}'s {}: orderedAt \
                             must not go backwards",
                            order.line,
                            at.to_rfc3339(),
                            floor.to_rfc3339()
                        ),
                        None if self.resume.is_some() => format!(
                            "line {}: orderedAt {} is earlier than {}, where this import \
                             stands (its latest committed orderedAt, or the newest contact \
                             stored when it started): orderedAt must not go backwards",
                            order.line,
                            at.to_rfc3339(),
                            floor.to_rfc3339()
                        ),
                        None => format!(
                            "line {}: orderedAt {} is older than the newest contact already \
                             stored ({}): an import may only add history after it",
                            order.line,
                            at.to_rfc3339(),
                            floor.to_rfc3339()
                        ),
                    });
                } else {
                    latest = Some((Some(order.line), at));
                    chunk_latest = Some(at);
                }
            }
            orders.push(order);
            if orders.len() >= self.chunk_size {
                self.send(sender, &mut orders, records.position(), &mut chunk_latest)?;
            }
        }
        self.send(sender, &mut orders, records.position(), &mut chunk_latest)
    }

    fn send(
        &self,
        sender: &mpsc::Sender<Item>,
        orders: &mut Vec<Order>,
        end: Position,
        latest: &mut Option<DateTime<Utc>>,
    ) -> Result<(), String> {
        if orders.is_empty() {
            return Ok(());
        }
        let chunk = Chunk {
            orders: std::mem::replace(orders, Vec::with_capacity(self.chunk_size)),
            end,
            last_ordered_at: latest.take(),
        };
        sender
            .blocking_send(Item::Chunk(chunk))
            // The importer stopped taking chunks: it says why itself.
            .map_err(|_| "stopped".to_owned())
    }
}

/// When the planner's picture of `contacts` is out of date: once the import has
/// added as many rows as the table held when last analyzed (and at least
/// `ANALYZE_AFTER_ORDERS`).
struct Statistics {
    analyzed_rows: u64,
    since: u64,
}

/// A table this many times larger than a chunk's values is probed, never scanned
/// (measured crossover: about 10).
const PROBES_PER_SCAN: u64 = 10;

/// Orders applied before the first fresh statistics.
const ANALYZE_AFTER_ORDERS: u64 = 100_000;

impl Statistics {
    fn new(estimated_rows: i64) -> Self {
        Self {
            analyzed_rows: estimated_rows.max(0) as u64,
            since: 0,
        }
    }

    /// About how many rows the table holds now.
    fn rows(&self) -> u64 {
        self.analyzed_rows + self.since
    }

    fn stale_after(&mut self, applied: u64) -> bool {
        self.since += applied;
        if self.since < self.analyzed_rows.max(ANALYZE_AFTER_ORDERS) {
            return false;
        }
        self.analyzed_rows += self.since;
        self.since = 0;
        true
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    read: u64,
    applied: u64,
    rejected: u64,
    identities_created: u64,
    merges: u64,
    held: u64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.read += other.read;
        self.applied += other.applied;
        self.rejected += other.rejected;
        self.identities_created += other.identities_created;
        self.merges += other.merges;
        self.held += other.held;
    }
}

struct ChunkContext<'a> {
    /// About how many rows `contacts` holds.
    table_rows: u64,
    import_id: i64,
    request_id: String,
    policy: &'a Policy,
}

async fn apply_with_retry(
    conn: &mut AsyncPgConnection,
    context: &ChunkContext<'_>,
    chunk: &Chunk,
    rejects: &mut Rejects,
    restore: &mut Option<Vec<i64>>,
) -> Result<Counts, String> {
    let mut retry = Retry::new();
    loop {
        rejects.rewind().map_err(|err| err.to_string())?;
        let sequences = restore.as_deref();
        let result = conn
            .transaction(async |conn| apply(conn, context, chunk, rejects, sequences).await)
            .await;
        match retry.settle(result).await {
            ControlFlow::Continue(()) => {}
            ControlFlow::Break(Ok(counts)) => {
                *restore = None;
                rejects.commit();
                return Ok(counts);
            }
            ControlFlow::Break(Err(failure)) => return Err(ServiceError::from(failure).to_string()),
        }
    }
}

/// One chunk in one transaction.
async fn apply(
    conn: &mut AsyncPgConnection,
    context: &ChunkContext<'_>,
    chunk: &Chunk,
    rejects: &mut Rejects,
    restore: Option<&[i64]>,
) -> Result<Counts, AttemptError> {
    let shared: &AsyncPgConnection = conn;
    // The table lock stands for the protocol's value and primary locks, all at once.
    protocol::lock_contacts_table(shared).await?;
    if let Some(sequences) = restore
        && !imports::restore_sequences(shared, sequences).await?
    {
        tracing::info!(
            "rows were written since the import was interrupted: it goes on with the ids \
             the database gives now"
        );
    }
    let valid: Vec<(&Order, &IdentifyRequest, Option<DateTime<Utc>>)> = chunk
        .orders
        .iter()
        .filter_map(|order| {
            let parsed = order.parsed.as_ref().ok()?;
            Some((order, &parsed.request, parsed.ordered_at))
        })
        .collect();
    let values = Values::of_all(valid.iter().map(|(_, request, _)| *request));
    let probes_only = context.table_rows
        >= PROBES_PER_SCAN * (values.emails().len() + values.phones().len()) as u64;
    imports::plan_chunk(shared, probes_only).await?;
    let (members, blocked, now) = try_join3(
        protocol::load_members_matching(shared, &values),
        protocol::blocked_among(shared, &values),
        batch_sql::clock(shared),
    )
    .await?;
    let blocked: std::collections::HashSet<ContactValue> = blocked.into_iter().collect();
    let kept: Vec<Result<IdentifyRequest, ServiceError>> = valid
        .iter()
        .map(|(_, request, _)| screen_request(request, context.policy, &blocked))
        .collect();
    let times: Vec<DateTime<Utc>> = valid.iter().map(|(_, _, at)| at.unwrap_or(now)).collect();
    let members: Vec<Contact> = members.into_iter().map(Contact::from).collect();
    let results = plan_and_write(
        shared,
        &kept,
        members,
        now,
        Times::Given(&times),
        context.policy.limits,
        Some(&context.request_id),
    )
    .await?;

    let mut counts = Counts {
        read: chunk.orders.len() as u64,
        ..Counts::default()
    };
    let mut rejected: Vec<(&Order, String)> = chunk
        .orders
        .iter()
        .filter_map(|order| Some((order, order.parsed.as_ref().err()?.clone())))
        .collect();
    for ((order, _, _), result) in valid.iter().zip(&results) {
        match result {
            Ok(identified) => {
                counts.applied += 1;
                counts.merges += identified.merged_primaries as u64;
                match identified.outcome {
                    Outcome::NewPrimary => counts.identities_created += 1,
                    Outcome::Held => counts.held += 1,
                    _ => {}
                }
            }
            Err(err) => rejected.push((order, err.to_string())),
        }
    }
    rejected.sort_by_key(|(order, _)| order.line);
    counts.rejected = rejected.len() as u64;
    for (order, reason) in &rejected {
        rejects
            .write(order, reason)
            .map_err(|err| AttemptError::Refused(ServiceError::Refused(err.to_string())))?;
    }
    rejects
        .flush()
        .map_err(|err| AttemptError::Refused(ServiceError::Refused(err.to_string())))?;
    let progress = Progress {
        lines_done: chunk.end.lines as i64,
        bytes_done: chunk.end.bytes as i64,
        prefix_sha256: chunk.end.sha256(),
        last_ordered_at: chunk.last_ordered_at,
        read: counts.read as i64,
        applied: counts.applied as i64,
        rejected: counts.rejected as i64,
        identities_created: counts.identities_created as i64,
        merges: counts.merges as i64,
        held: counts.held as i64,
    };
    imports::advance(shared, context.import_id, &progress).await?;
    Ok(counts)
}

/// The rejects file: created at the first rejected line; what a chunk wrote is
/// undone if the chunk does not commit, so the file lists exactly the committed
/// lines' rejects.
struct Rejects {
    path: PathBuf,
    file: Option<BufWriter<File>>,
    /// Length of the file as of the last committed chunk.
    committed: u64,
    written: u64,
}

#[derive(Serialize)]
struct Rejected<'a> {
    line: u64,
    reason: &'a str,
    input: &'a str,
}

impl Rejects {
    /// A resumed import keeps the rejects of the lines it committed, and only those.
    fn open(path: PathBuf, resumed_after: Option<u64>) -> io::Result<Self> {
        let mut rejects = Self {
            path,
            file: None,
            committed: 0,
            written: 0,
        };
        let Some(lines_done) = resumed_after else {
            return Ok(rejects);
        };
        let existing = match std::fs::read_to_string(&rejects.path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(rejects),
            Err(err) => return Err(err),
        };
        let kept: String = existing
            .lines()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|value| value["line"].as_u64())
                    .is_some_and(|line| line <= lines_done)
            })
            .map(|line| format!("{line}\n"))
            .collect();
        std::fs::write(&rejects.path, &kept)?;
        rejects.committed = kept.len() as u64;
        rejects.written = rejects.committed;
        Ok(rejects)
    }

    fn write(&mut self, order: &Order, reason: &str) -> io::Result<()> {
        if self.file.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(&self.path)?;
            file.set_len(self.committed)?;
            let mut writer = BufWriter::new(file);
            writer.seek(io::SeekFrom::Start(self.committed))?;
            self.file = Some(writer);
        }
        let file = self.file.as_mut().expect("opened above");
        let mut line = serde_json::to_string(&Rejected {
            line: order.line,
            reason,
            input: &order.text,
        })?;
        line.push('\n');
        file.write_all(line.as_bytes())?;
        self.written += line.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }

    /// Forgets what the last, uncommitted attempt wrote.
    fn rewind(&mut self) -> io::Result<()> {
        if self.written == self.committed {
            return Ok(());
        }
        if let Some(file) = &mut self.file {
            file.flush()?;
            file.get_ref().set_len(self.committed)?;
            file.seek(io::SeekFrom::Start(self.committed))?;
        }
        self.written = self.committed;
        Ok(())
    }

    fn commit(&mut self) {
        self.committed = self.written;
    }

    fn written(&self) -> bool {
        self.committed > 0
    }
}

/// Progress: a bar on a terminal, a line every few seconds otherwise.
struct Meter {
    bar: Option<ProgressBar>,
    total_bytes: Option<u64>,
    started: Instant,
    last_line: Instant,
}

impl Meter {
    fn new(total_bytes: Option<u64>, done_bytes: u64, started: Instant) -> Self {
        let bar = io::stderr().is_terminal().then(|| {
            let bar = match total_bytes {
                Some(total) => ProgressBar::with_draw_target(
                    Some(total),
                    ProgressDrawTarget::stderr_with_hz(4),
                )
                .with_style(
                    ProgressStyle::with_template(
                        "{bar:40.cyan/blue} {percent:>3}% {msg} ETA {eta}",
                    )
                    .expect("a valid template"),
                ),
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4))
                    .with_style(
                        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                            .expect("a valid template"),
                    ),
            };
            bar.set_position(done_bytes);
            bar.reset_eta();
            bar
        });
        Self {
            bar,
            total_bytes,
            started,
            last_line: started,
        }
    }

    fn update(&mut self, bytes: u64, lines: u64, read_this_run: u64) {
        let rate = read_this_run as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        if let Some(bar) = &self.bar {
            bar.set_position(bytes);
            bar.set_message(format!("{lines} lines, {rate:.0} lines/s"));
            return;
        }
        if self.last_line.elapsed() >= PROGRESS_EVERY {
            self.last_line = Instant::now();
            let percent = self
                .total_bytes
                .filter(|total| *total > 0)
                .map(|total| format!(" ({:.1} %)", bytes as f64 * 100.0 / total as f64))
                .unwrap_or_default();
            tracing::info!(
                lines,
                rate = rate.round(),
                "imported {lines} lines{percent}, {rate:.0} lines/s"
            );
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
