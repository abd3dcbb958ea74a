//! The model check behind `--database-url`: after the load, read this run's live
//! contacts from PostgreSQL and hold them against what the run sent and was told.
//!
//! Two union-find models bracket the truth. Requests that got a 200 certainly
//! committed, so values acknowledged together must share one identity. Requests that
//! failed or timed out may or may not have committed, so every identity must lie
//! within what *all* requests that reached the server linked. With no failures the
//! two models coincide and the database must equal them exactly.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls};

use crate::checks::{Check, error_chain};
use crate::model::{ModelLog, Node, UnionFind, request_nodes};
use crate::workload::{Request, RunId};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Keys per `= ANY($1)` array: few round trips, yet statements of a sane size.
const CHUNK: usize = 10_000;

/// How many members of a group an example names.
const NAMED_MEMBERS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    #[error("no connection to the database within {} s", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout,
    #[error("a database query failed: {0}")]
    Query(String),
    #[error(
        "the database already holds {contacts} contact(s) with values of run id {run_id}, \
         which would confuse the model check; pass another --run-id"
    )]
    RunIdTaken { run_id: RunId, contacts: i64 },
    #[error("interrupted by Ctrl-C")]
    Interrupted,
}

fn query_failed(err: tokio_postgres::Error) -> CheckError {
    CheckError::Query(error_chain(&err))
}

async fn connect(url: &str) -> Result<Client, CheckError> {
    let (client, connection) =
        tokio::time::timeout(CONNECT_TIMEOUT, tokio_postgres::connect(url, NoTls))
            .await
            .map_err(|_| CheckError::ConnectTimeout)?
            .map_err(|err| CheckError::Connect(error_chain(&err)))?;
    // A broken connection fails the next query, which reports it.
    tokio::spawn(async move { connection.await.ok() });
    Ok(client)
}

/// Before the load: the database is reachable and holds no values of this run, so
/// that whatever the check finds afterwards came from this run.
/// Rows of the change-event outbox, all runs' together.
pub async fn stored_changes(url: &str) -> Result<u64, CheckError> {
    let client = connect(url).await?;
    let row = client
        .query_one("SELECT count(*) FROM identity_changes", &[])
        .await
        .map_err(|err| CheckError::Query(error_chain(&err)))?;
    Ok(row.get::<_, i64>(0) as u64)
}

pub async fn preflight(url: &str, run_id: RunId) -> Result<(), CheckError> {
    let client = connect(url).await?;
    let row = client
        .query_one(
            "SELECT count(*) FROM contacts WHERE email LIKE $1 OR phone_number LIKE $2",
            &[&run_id.email_pattern(), &run_id.phone_pattern()],
        )
        .await
        .map_err(query_failed)?;
    let contacts: i64 = row.try_get(0).map_err(query_failed)?;
    if contacts > 0 {
        return Err(CheckError::RunIdTaken { run_id, contacts });
    }
    Ok(())
}

/// After the load: loads this run's identities and runs every check on them.
pub async fn run(url: &str, run_id: RunId, log: ModelLog) -> Result<ModelCheck, CheckError> {
    let client = connect(url).await?;
    let loaded = load(&client, run_id, &log).await?;
    let blocked = load_blocked(&client, run_id).await?;
    Ok(evaluate(run_id, log, loaded, &blocked))
}

/// This run's values that administrators blocked (`--repair-every-ms`): the server
/// removed them from every contact and split what they joined.
async fn load_blocked(client: &Client, run_id: RunId) -> Result<HashSet<Node>, CheckError> {
    // A server from before the identity graph has no such table: nothing is blocked.
    let Ok(rows) = client
        .query("SELECT kind, value FROM blocked_values", &[])
        .await
    else {
        return Ok(HashSet::new());
    };
    let mut blocked = HashSet::new();
    for row in rows {
        let kind: String = row.try_get(0).map_err(query_failed)?;
        let value: String = row.try_get(1).map_err(query_failed)?;
        let node = match kind.as_str() {
            "email" => run_id.parse_email(&value).map(Node::Email),
            _ => run_id.parse_phone(&value).map(Node::Phone),
        };
        blocked.extend(node);
    }
    Ok(blocked)
}

/// What the check found.
#[derive(Debug, Serialize)]
pub struct ModelCheck {
    pub passed: bool,
    /// Live contacts of this run's identities.
    pub contacts: usize,
    pub identities: usize,
    /// Values of this run blocked by repairs during it; the models leave them out.
    pub blocked_values: usize,
    pub partition: Partition,
    pub checks: Vec<Check>,
}

/// How the database's identities compare with the models.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Partition {
    /// Exactly the model's: every request that reached the server was acknowledged.
    Equal,
    /// Within the bounds: some requests failed and may or may not have committed.
    Between,
    /// Outside the bounds; the failed checks say where.
    Differs,
}

impl fmt::Display for ModelCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "model check ({} live contacts in {} identities)",
            self.contacts, self.identities
        )?;
        for check in &self.checks {
            write!(f, "{check}")?;
        }
        let partition = match self.partition {
            Partition::Equal => "the database's identities equal the model's exactly",
            Partition::Between => {
                "the database's identities lie between the model of acknowledged requests \
                 and the model of all sent ones (failed requests may or may not have committed)"
            }
            Partition::Differs => "the database's identities break the model (see above)",
        };
        writeln!(f, "  partition: {partition}")
    }
}

/// A live contact row.
struct Row {
    id: i32,
    email: Option<String>,
    phone: Option<String>,
    linked_id: Option<i32>,
    created_at: DateTime<Utc>,
}

impl Row {
    /// The identity the row belongs to, as its link says.
    fn identity(&self) -> i32 {
        self.linked_id.unwrap_or(self.id)
    }

    /// Its values as nodes; `Err` names a value this run never generates.
    fn values(&self, run_id: RunId) -> impl Iterator<Item = Result<Node, String>> {
        let email = self.email.as_deref().map(|email| {
            run_id
                .parse_email(email)
                .map(Node::Email)
                .ok_or_else(|| format!("email {email}"))
        });
        let phone = self.phone.as_deref().map(|phone| {
            run_id
                .parse_phone(phone)
                .map(Node::Phone)
                .ok_or_else(|| format!("phone {phone}"))
        });
        email.into_iter().chain(phone)
    }

    /// The request that would have inserted this row; `None` if a value is not ours.
    fn as_request(&self, run_id: RunId) -> Option<Request> {
        let email = match &self.email {
            Some(email) => Some(run_id.parse_email(email)?),
            None => None,
        };
        let phone = match &self.phone {
            Some(phone) => Some(run_id.parse_phone(phone)?),
            None => None,
        };
        Some(Request { email, phone })
    }
}

struct Loaded {
    rows: HashMap<i32, Row>,
    /// Contacts some answer named that are soft-deleted now.
    soft_deleted: HashSet<i32>,
}

/// Loads every live contact holding a value this run sent or was answered, or named
/// in an answer, then every live member of those contacts' identities.
async fn load(client: &Client, run_id: RunId, log: &ModelLog) -> Result<Loaded, CheckError> {
    let mut emails = BTreeSet::new();
    let mut phones = BTreeSet::new();
    let mut answered_ids = BTreeSet::new();
    let sent = log.sent.iter().flat_map(|&request| request_nodes(request));
    for node in sent.chain(log.answers.items().iter().copied()) {
        match node {
            Node::Email(n) => {
                emails.insert(n);
            }
            Node::Phone(n) => {
                phones.insert(n);
            }
            Node::Contact(id) => {
                answered_ids.insert(id);
            }
        }
    }
    let emails: Vec<String> = emails.into_iter().map(|n| run_id.email(n)).collect();
    let phones: Vec<String> = phones.into_iter().map(|n| run_id.phone(n)).collect();

    let mut rows = HashMap::new();
    fetch(client, "email = ANY($1)", &emails, &mut rows).await?;
    fetch(client, "phone_number = ANY($1)", &phones, &mut rows).await?;
    let unseen: Vec<i32> = answered_ids
        .iter()
        .copied()
        .filter(|id| !rows.contains_key(id))
        .collect();
    fetch(client, "id = ANY($1)", &unseen, &mut rows).await?;
    let primaries: BTreeSet<i32> = rows.values().map(Row::identity).collect();
    let primaries: Vec<i32> = primaries.into_iter().collect();
    fetch(
        client,
        "id = ANY($1) OR linked_id = ANY($1)",
        &primaries,
        &mut rows,
    )
    .await?;

    let missing: Vec<i32> = answered_ids
        .into_iter()
        .filter(|id| !rows.contains_key(id))
        .collect();
    let mut soft_deleted = HashSet::new();
    for chunk in missing.chunks(CHUNK) {
        let found = client
            .query(
                "SELECT id FROM contacts WHERE deleted_at IS NOT NULL AND id = ANY($1)",
                &[&chunk],
            )
            .await
            .map_err(query_failed)?;
        for row in found {
            soft_deleted.insert(row.try_get(0).map_err(query_failed)?);
        }
    }
    Ok(Loaded { rows, soft_deleted })
}

/// Adds the live contacts matching `filter` (over `$1`, one chunk of `keys` at a time).
async fn fetch<T: ToSql + Sync>(
    client: &Client,
    filter: &str,
    keys: &[T],
    rows: &mut HashMap<i32, Row>,
) -> Result<(), CheckError> {
    let sql = format!(
        "SELECT id, email, phone_number, linked_id, created_at FROM contacts \
         WHERE deleted_at IS NULL AND ({filter})"
    );
    for chunk in keys.chunks(CHUNK) {
        for row in client.query(&sql, &[&chunk]).await.map_err(query_failed)? {
            let contact = Row {
                id: row.try_get(0).map_err(query_failed)?,
                email: row.try_get(1).map_err(query_failed)?,
                phone: row.try_get(2).map_err(query_failed)?,
                linked_id: row.try_get(3).map_err(query_failed)?,
                created_at: row.try_get(4).map_err(query_failed)?,
            };
            rows.insert(contact.id, contact);
        }
    }
    Ok(())
}

/// Runs every check over the loaded rows.
///
/// When repairs blocked values, the models are those of docs/SPEC.md §10: each
/// request without its blocked values, and for the lower bound only the requests
/// that left evidence (a request that changed nothing is not evidence, and a split
/// may part what it found together). Answers from before a split may have tied
/// together what the split parted, and a contact left with no value is deleted: the
/// two answer checks apply to runs without repairs only.
fn evaluate(
    run_id: RunId,
    mut log: ModelLog,
    loaded: Loaded,
    blocked: &HashSet<Node>,
) -> ModelCheck {
    let repaired = !blocked.is_empty();
    let index = RowIndex::new(run_id, &loaded.rows);
    let i1 = check_links(&index);
    let i2 = check_primaries_are_oldest(&index);
    let i3 = check_values_unshared(run_id, &index);
    let evidence = if repaired {
        &log.changed
    } else {
        &log.acknowledged
    };
    let mut acknowledged_model = model_of(evidence, blocked);
    let together = check_acknowledged_together(run_id, &index, &mut acknowledged_model);
    let mut sent_model = model_of(&log.sent, blocked);
    let linked = check_identities_linked(run_id, &index, &mut sent_model);
    let kept = check_answered_contacts_kept(&index, &log.answers, &loaded.soft_deleted);
    let answered = check_answers_together(run_id, &index, &mut log.answers);
    let present = check_acknowledged_values_present(run_id, &index, &log.answers, blocked);
    let inserted = check_rows_from_requests(run_id, &index, &log.sent, blocked);

    let bounded = together.passed() && linked.passed() && present.passed();
    let partition = if !bounded {
        Partition::Differs
    } else if same_partition(&mut acknowledged_model, &mut sent_model) {
        Partition::Equal
    } else {
        Partition::Between
    };
    let checks = if repaired {
        vec![i1, i2, i3, together, linked, present, inserted]
    } else {
        vec![
            i1, i2, i3, together, linked, kept, answered, present, inserted,
        ]
    };
    ModelCheck {
        passed: checks.iter().all(Check::passed),
        contacts: index.rows.len(),
        identities: index.identities.len(),
        blocked_values: blocked.len(),
        partition,
        checks,
    }
}

/// The loaded rows, arranged the ways the checks look them up.
struct RowIndex<'a> {
    rows: &'a HashMap<i32, Row>,
    /// Sorted, so that examples come out the same from one check to the next.
    by_id: Vec<&'a Row>,
    /// Each identity's rows, by the id its links name.
    identities: BTreeMap<i32, Vec<&'a Row>>,
    /// The identities holding each value of this run.
    holders: HashMap<Node, BTreeSet<i32>>,
    /// Values this run never generates, by the identity holding them.
    foreign: BTreeMap<i32, Vec<String>>,
}

impl<'a> RowIndex<'a> {
    /// Indexes `rows` by id, by identity and by the values they hold.
    fn new(run_id: RunId, rows: &'a HashMap<i32, Row>) -> Self {
        let mut by_id: Vec<&Row> = rows.values().collect();
        by_id.sort_by_key(|row| row.id);
        let mut identities: BTreeMap<i32, Vec<&Row>> = BTreeMap::new();
        let mut holders: HashMap<Node, BTreeSet<i32>> = HashMap::new();
        let mut foreign: BTreeMap<i32, Vec<String>> = BTreeMap::new();
        for &row in &by_id {
            identities.entry(row.identity()).or_default().push(row);
            for value in row.values(run_id) {
                match value {
                    Ok(node) => {
                        holders.entry(node).or_default().insert(row.identity());
                    }
                    Err(value) => foreign.entry(row.identity()).or_default().push(value),
                }
            }
        }
        Self {
            rows,
            by_id,
            identities,
            holders,
            foreign,
        }
    }

    /// The identities `node` sits in now: a live contact's own, or every holder of a value.
    fn identities_of(&self, node: &Node) -> BTreeSet<i32> {
        match node {
            Node::Contact(id) => self.rows.get(id).map(Row::identity).into_iter().collect(),
            value => self.holders.get(value).cloned().unwrap_or_default(),
        }
    }

    /// The sets of `model`, sorted, each with the identities its nodes sit in now.
    fn sets_with_identities(&self, model: &mut UnionFind<Node>) -> Vec<(Vec<Node>, BTreeSet<i32>)> {
        sorted_sets(model)
            .into_iter()
            .map(|set| {
                let ids = set
                    .iter()
                    .flat_map(|node| self.identities_of(node))
                    .collect();
                (set, ids)
            })
            .collect()
    }
}

/// The partition that joining each of `requests`, without its `blocked` values, makes.
fn model_of(requests: &HashSet<Request>, blocked: &HashSet<Node>) -> UnionFind<Node> {
    let mut model = UnionFind::default();
    for &request in requests {
        model.join(request_nodes(request).filter(|node| !blocked.contains(node)));
    }
    model
}

/// `request` without its blocked values.
fn strip(request: Request, blocked: &HashSet<Node>) -> Request {
    Request {
        email: request
            .email
            .filter(|n| !blocked.contains(&Node::Email(*n))),
        phone: request
            .phone
            .filter(|n| !blocked.contains(&Node::Phone(*n))),
    }
}

/// I1: flags links to contacts that are gone or are secondaries themselves.
fn check_links(index: &RowIndex) -> Check {
    let mut i1 = Check::new("I1 every secondary links to a live primary");
    for row in &index.by_id {
        let Some(target) = row.linked_id else {
            continue;
        };
        match index.rows.get(&target) {
            None => i1.violation(|| {
                format!(
                    "contact {} links to {target}, which is not a live contact",
                    row.id
                )
            }),
            Some(linked) if linked.linked_id.is_some() => i1.violation(|| {
                format!(
                    "contact {} links to {target}, itself a secondary of {}",
                    row.id,
                    linked.identity()
                )
            }),
            Some(_) => {}
        }
    }
    i1
}

/// I2: flags identities with a member older than their primary.
fn check_primaries_are_oldest(index: &RowIndex) -> Check {
    let mut i2 = Check::new("I2 each primary is its identity's oldest contact");
    for (primary, members) in &index.identities {
        let (Some(primary), Some(oldest)) = (
            index.rows.get(primary),
            members.iter().min_by_key(|row| (row.created_at, row.id)),
        ) else {
            continue;
        };
        if oldest.id != primary.id {
            i2.violation(|| {
                format!(
                    "identity {}: contact {} (created {}) is older than the primary (created {})",
                    primary.id, oldest.id, oldest.created_at, primary.created_at
                )
            });
        }
    }
    i2
}

/// I3: flags values held by more than one identity.
fn check_values_unshared(run_id: RunId, index: &RowIndex) -> Check {
    let mut i3 = Check::new("I3 no email or phone is in two identities");
    let mut shared: Vec<(&Node, &BTreeSet<i32>)> = index
        .holders
        .iter()
        .filter(|(_, ids)| ids.len() > 1)
        .collect();
    shared.sort();
    for (node, ids) in shared {
        i3.violation(|| format!("{} is in identities {}", node.show(run_id), list(ids)));
    }
    i3
}

/// The lower bound: flags values acknowledged together that now sit apart.
fn check_acknowledged_together(
    run_id: RunId,
    index: &RowIndex,
    acknowledged_model: &mut UnionFind<Node>,
) -> Check {
    let mut together = Check::new("values acknowledged together share one identity");
    for (set, ids) in index.sets_with_identities(acknowledged_model) {
        if ids.len() > 1 {
            together.violation(|| {
                format!(
                    "{} were acknowledged together but sit in identities {}",
                    name_members(run_id, &set),
                    list(&ids)
                )
            });
        }
    }
    together
}

/// The upper bound: flags identities that hold values never sent, or join values
/// that no chain of sent requests linked.
fn check_identities_linked(
    run_id: RunId,
    index: &RowIndex,
    sent_model: &mut UnionFind<Node>,
) -> Check {
    let mut linked = Check::new("each identity joins only values that requests linked");
    for (identity, members) in &index.identities {
        let mut unsent = index.foreign.get(identity).cloned().unwrap_or_default();
        let mut sets: BTreeMap<usize, Node> = BTreeMap::new();
        for node in members
            .iter()
            .flat_map(|row| row.values(run_id))
            .filter_map(Result::ok)
        {
            match sent_model.set_of(&node) {
                Some(set) => {
                    sets.entry(set).or_insert(node);
                }
                None => unsent.push(node.show(run_id)),
            }
        }
        if !unsent.is_empty() {
            linked.violation(|| {
                format!(
                    "identity {identity} holds {}, which no request of this run sent",
                    unsent.join(", ")
                )
            });
        } else if sets.len() > 1 {
            // Sorted: the sets' names follow hash order, and a report should read
            // the same every time.
            let mut firsts: Vec<Node> = sets.into_values().collect();
            firsts.sort();
            linked.violation(|| {
                format!(
                    "identity {identity} joins {}, which no chain of requests linked",
                    name_members(run_id, &firsts)
                )
            });
        }
    }
    linked
}

/// Flags contacts that answers named but that are no longer live.
fn check_answered_contacts_kept(
    index: &RowIndex,
    answers: &UnionFind<Node>,
    soft_deleted: &HashSet<i32>,
) -> Check {
    let mut kept = Check::new("every contact an answer named still exists");
    let answered_ids: BTreeSet<i32> = answers
        .items()
        .iter()
        .filter_map(|node| match node {
            Node::Contact(id) => Some(*id),
            _ => None,
        })
        .collect();
    for id in answered_ids
        .into_iter()
        .filter(|id| !index.rows.contains_key(id))
    {
        let state = if soft_deleted.contains(&id) {
            "soft-deleted"
        } else {
            "gone"
        };
        kept.violation(|| format!("contact {id} was in an answer but is {state}"));
    }
    kept
}

/// Flags contacts and values that answers tied together but that now sit apart.
fn check_answers_together(run_id: RunId, index: &RowIndex, answers: &mut UnionFind<Node>) -> Check {
    let mut answered = Check::new("each answer's contacts and values stay in one identity");
    for (set, ids) in index.sets_with_identities(answers) {
        if ids.len() > 1 {
            answered.violation(|| {
                format!(
                    "answers tied {} together, which now sit in identities {}",
                    name_members(run_id, &set),
                    list(&ids)
                )
            });
        }
    }
    answered
}

/// Flags acknowledged values that no live contact holds.
fn check_acknowledged_values_present(
    run_id: RunId,
    index: &RowIndex,
    answers: &UnionFind<Node>,
    blocked: &HashSet<Node>,
) -> Check {
    // The answers' values include every acknowledged request's values.
    let mut present = Check::new("every acknowledged email and phone exists");
    let mut acknowledged_values: Vec<Node> = answers
        .items()
        .iter()
        .copied()
        .filter(|node| {
            !matches!(node, Node::Contact(_))
                && !index.holders.contains_key(node)
                && !blocked.contains(node)
        })
        .collect();
    acknowledged_values.sort();
    for node in acknowledged_values {
        present.violation(|| {
            format!(
                "{} was acknowledged but no live contact holds it",
                node.show(run_id)
            )
        });
    }
    present
}

/// Flags rows whose values no request sent together, and rows repeating another's.
fn check_rows_from_requests(
    run_id: RunId,
    index: &RowIndex,
    sent: &HashSet<Request>,
    blocked: &HashSet<Node>,
) -> Check {
    // A row is inserted with one request's values, and only while the identity lacks
    // one of them: so each row matches a request, and no two rows the same one. A
    // block takes its value out of rows, which can leave two rows alike.
    let sent: HashSet<Request> = sent
        .iter()
        .map(|&request| strip(request, blocked))
        .collect();
    let mut inserted = Check::new("each contact holds one sent request's values, no two the same");
    let mut first_holder: HashMap<Request, i32> = HashMap::new();
    for row in &index.by_id {
        // Rows with values from elsewhere are reported by the identity check.
        let Some(request) = row.as_request(run_id) else {
            continue;
        };
        if !sent.contains(&request) {
            inserted.violation(|| {
                let values: Vec<String> = request_nodes(request).map(|n| n.show(run_id)).collect();
                format!(
                    "contact {} holds {}, which no request sent together",
                    row.id,
                    values.join(" + ")
                )
            });
        }
        if let Some(first) = first_holder.insert(request, row.id)
            && blocked.is_empty()
        {
            inserted.violation(|| {
                format!(
                    "contacts {first} and {} hold the same email and phone",
                    row.id
                )
            });
        }
    }
    inserted
}

/// Whether two models are one partition. Every acknowledged request was also sent,
/// so the first refines the second: equal sizes in items and in sets mean equal.
fn same_partition(finer: &mut UnionFind<Node>, coarser: &mut UnionFind<Node>) -> bool {
    finer.items().len() == coarser.items().len() && finer.sets().len() == coarser.sets().len()
}

/// The sets, each sorted, in a stable order for the examples.
fn sorted_sets(model: &mut UnionFind<Node>) -> Vec<Vec<Node>> {
    let mut sets = model.sets();
    for set in &mut sets {
        set.sort();
    }
    sets.sort();
    sets
}

fn name_members(run_id: RunId, members: &[Node]) -> String {
    let mut named: Vec<String> = members
        .iter()
        .take(NAMED_MEMBERS)
        .map(|node| node.show(run_id))
        .collect();
    if members.len() > NAMED_MEMBERS {
        named.push(format!("{} more", members.len() - NAMED_MEMBERS));
    }
    named.join(", ")
}

fn list(ids: &BTreeSet<i32>) -> String {
    let ids: Vec<String> = ids.iter().map(i32::to_string).collect();
    ids.join(", ")
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::client::Answer;
    use crate::model::read_answer;

    const RUN: u32 = 7;

    fn run_id() -> RunId {
        RunId::new(RUN).unwrap()
    }

    fn row(id: i32, email: Option<u64>, phone: Option<u64>, linked_id: Option<i32>) -> Row {
        Row {
            id,
            email: email.map(|n| run_id().email(n)),
            phone: phone.map(|n| run_id().phone(n)),
            linked_id,
            // Creation order follows the ids unless a test says otherwise.
            created_at: Utc.timestamp_opt(1_700_000_000 + i64::from(id), 0).unwrap(),
        }
    }

    /// Acknowledges `request` with the answer the rows give its identity.
    fn acknowledge(log: &mut ModelLog, request: Request, primary: i32, rows: &[&Row]) {
        let members: Vec<&&Row> = rows
            .iter()
            .filter(|row| row.identity() == primary)
            .collect();
        let answer = Answer {
            primary_contact_id: primary,
            legacy_primary_id: Some(primary),
            emails: members.iter().filter_map(|row| row.email.clone()).collect(),
            phone_numbers: members.iter().filter_map(|row| row.phone.clone()).collect(),
            secondary_contact_ids: members
                .iter()
                .map(|row| row.id)
                .filter(|&id| id != primary)
                .collect(),
            outcome: None,
        };
        log.record_acknowledged(request, &read_answer(run_id(), &answer), true);
    }

    fn request(email: u64, phone: u64) -> Request {
        Request {
            email: Some(email),
            phone: Some(phone),
        }
    }

    fn loaded(rows: Vec<Row>) -> Loaded {
        Loaded {
            rows: rows.into_iter().map(|row| (row.id, row)).collect(),
            soft_deleted: HashSet::new(),
        }
    }

    fn failed(check: &ModelCheck) -> Vec<&'static str> {
        check
            .checks
            .iter()
            .filter(|check| !check.passed())
            .map(|check| check.name)
            .collect()
    }

    /// Two customers, one extended, then bridged: rows 1..=4 in one identity.
    fn bridged() -> (ModelLog, Vec<Row>) {
        let rows = vec![
            row(1, Some(1), Some(2), None),
            row(2, Some(3), Some(4), Some(1)),
            row(3, Some(1), Some(5), Some(1)),
            row(4, Some(3), Some(2), Some(1)),
        ];
        let mut log = ModelLog::default();
        let first = [&rows[0]];
        acknowledge(&mut log, request(1, 2), 1, &first);
        acknowledge(
            &mut log,
            request(3, 4),
            2,
            &[&row(2, Some(3), Some(4), None)],
        );
        acknowledge(&mut log, request(1, 5), 1, &[&rows[0], &rows[2]]);
        acknowledge(&mut log, request(3, 2), 1, &rows.iter().collect::<Vec<_>>());
        (log, rows)
    }

    #[test]
    fn a_database_that_matches_the_model_passes_with_an_equal_partition() {
        let (log, rows) = bridged();
        let check = evaluate(run_id(), log, loaded(rows), &HashSet::new());
        assert_eq!(failed(&check), Vec::<&str>::new());
        assert_eq!(check.partition, Partition::Equal);
        assert_eq!((check.contacts, check.identities), (4, 1));
    }

    #[test]
    fn a_block_takes_its_value_out_of_the_models() {
        // Phone 2 joined the two customers; blocking it splits them back.
        let (log, _) = bridged();
        let split = vec![
            row(1, Some(1), None, None),
            row(2, Some(3), Some(4), None),
            row(3, Some(1), Some(5), Some(1)),
            row(4, Some(3), None, Some(2)),
        ];
        let blocked = HashSet::from([Node::Phone(2)]);
        let check = evaluate(run_id(), log, loaded(split), &blocked);
        assert_eq!(failed(&check), Vec::<&str>::new());
        assert_eq!((check.identities, check.blocked_values), (2, 1));

        // Left fused, they join what no request links without the blocked value.
        let (log, _) = bridged();
        let fused = vec![
            row(1, Some(1), None, None),
            row(2, Some(3), Some(4), Some(1)),
            row(3, Some(1), Some(5), Some(1)),
            row(4, Some(3), None, Some(1)),
        ];
        let check = evaluate(run_id(), log, loaded(fused), &blocked);
        assert_eq!(
            failed(&check),
            vec!["each identity joins only values that requests linked"]
        );
    }

    #[test]
    fn a_failed_request_widens_the_model_instead_of_failing_it() {
        let (mut log, mut rows) = bridged();
        // It timed out but committed: a row with its values exists.
        log.record_sent(request(9, 5));
        rows.push(row(5, Some(9), Some(5), Some(1)));
        let check = evaluate(run_id(), log, loaded(rows), &HashSet::new());
        assert_eq!(failed(&check), Vec::<&str>::new());
        assert_eq!(check.partition, Partition::Between);
    }

    #[test]
    fn a_merge_no_request_asked_for_is_caught() {
        let (mut log, mut rows) = bridged();
        log.record_sent(request(20, 21));
        acknowledge(
            &mut log,
            request(20, 21),
            6,
            &[&row(6, Some(20), Some(21), None)],
        );
        // The database put the separate customer into the first identity.
        rows.push(row(6, Some(20), Some(21), Some(1)));
        let check = evaluate(run_id(), log, loaded(rows), &HashSet::new());
        assert_eq!(
            failed(&check),
            vec!["each identity joins only values that requests linked"]
        );
        assert_eq!(check.partition, Partition::Differs);
    }

    #[test]
    fn broken_links_lost_rows_and_shared_values_are_caught() {
        let (log, mut rows) = bridged();
        // Row 4 now links to a secondary, row 3 is gone, and row 1 is younger
        // than a member of its identity.
        rows[3].linked_id = Some(2);
        rows.remove(2);
        rows[1].created_at = Utc.timestamp_opt(1_600_000_000, 0).unwrap();
        let check = evaluate(run_id(), log, loaded(rows), &HashSet::new());
        let failed = failed(&check);
        for expected in [
            "I1 every secondary links to a live primary",
            "I2 each primary is its identity's oldest contact",
            "I3 no email or phone is in two identities",
            "every contact an answer named still exists",
            "every acknowledged email and phone exists",
        ] {
            assert!(failed.contains(&expected), "{expected} passed: {failed:?}");
        }
    }

    #[test]
    fn rows_must_come_from_requests_once_each() {
        let (log, mut rows) = bridged();
        rows.push(row(5, Some(1), Some(2), Some(1)));
        rows.push(row(6, Some(1), Some(4), Some(1)));
        let check = evaluate(run_id(), log, loaded(rows), &HashSet::new());
        let inserted = check
            .checks
            .iter()
            .find(|check| check.name.starts_with("each contact holds"))
            .unwrap();
        assert_eq!(inserted.violations, 2, "{:?}", inserted.examples);
    }
}
