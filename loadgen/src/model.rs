//! What a run remembers for the model check ([`ModelLog`]), and the checks every 200
//! answer gets the moment it arrives ([`AnswerChecks`]), which need no database.
//!
//! The model is the union-find of docs/SPEC.md §4 (I5): values sent together in one request
//! end in one identity, and no identity joins values that no request linked.

use std::collections::HashSet;
use std::hash::Hash;

pub use identity_reconciliation::domain::UnionFind;

use crate::checks::Check;
use crate::client::{Answer, Api};
use crate::workload::{Kind, Request, RunId};

/// What the model relates: a value of this run, by number, or a contact row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    Email(u64),
    Phone(u64),
    Contact(i32),
}

impl Node {
    /// The node as a person reads it in a report.
    pub fn show(self, run_id: RunId) -> String {
        match self {
            Node::Email(n) => run_id.email(n),
            Node::Phone(n) => run_id.phone(n),
            Node::Contact(id) => format!("contact {id}"),
        }
    }
}

/// The values of a request as model nodes.
pub fn request_nodes(request: Request) -> impl Iterator<Item = Node> {
    request
        .email
        .map(Node::Email)
        .into_iter()
        .chain(request.phone.map(Node::Phone))
}

/// An answer's contacts and values as nodes, plus the values this run never sends.
pub struct ReadAnswer {
    pub nodes: Vec<Node>,
    pub foreign: Vec<String>,
}

pub fn read_answer(run_id: RunId, answer: &Answer) -> ReadAnswer {
    let mut nodes = Vec::with_capacity(
        1 + answer.secondary_contact_ids.len() + answer.emails.len() + answer.phone_numbers.len(),
    );
    let mut foreign = Vec::new();
    nodes.push(Node::Contact(answer.primary_contact_id));
    nodes.extend(
        answer
            .secondary_contact_ids
            .iter()
            .copied()
            .map(Node::Contact),
    );
    for email in &answer.emails {
        match run_id.parse_email(email) {
            Some(n) => nodes.push(Node::Email(n)),
            None => foreign.push(format!("email {email}")),
        }
    }
    for phone in &answer.phone_numbers {
        match run_id.parse_phone(phone) {
            Some(n) => nodes.push(Node::Phone(n)),
            None => foreign.push(format!("phone {phone}")),
        }
    }
    ReadAnswer { nodes, foreign }
}

/// Everything the model check needs from the load, kept per worker and merged at the
/// end. Requests are kept once each: a repeat adds nothing to the partition.
#[derive(Default)]
pub struct ModelLog {
    /// Requests that may have reached the server: all but the connection failures.
    /// A request that timed out or got an error may still have committed.
    pub sent: HashSet<Request>,
    /// Requests answered with an identity.
    pub acknowledged: HashSet<Request>,
    /// Acknowledged requests that changed something (outcome other than
    /// `unchanged`), and held requests an administrator approved that did: the ones
    /// that left evidence, which is all a split keeps (docs/SPEC.md §10.1).
    pub changed: HashSet<Request>,
    /// What the answers tied together: each answer joins its request's values, its
    /// contacts and its values, which must stay in one identity for good.
    pub answers: UnionFind<Node>,
}

impl ModelLog {
    pub fn record_sent(&mut self, request: Request) {
        self.sent.insert(request);
    }

    pub fn record_acknowledged(&mut self, request: Request, answer: &ReadAnswer, changed: bool) {
        self.sent.insert(request);
        self.acknowledged.insert(request);
        if changed {
            self.changed.insert(request);
        }
        self.answers
            .join(request_nodes(request).chain(answer.nodes.iter().copied()));
    }

    pub fn merge(&mut self, other: ModelLog) {
        self.sent.extend(other.sent);
        self.acknowledged.extend(other.acknowledged);
        self.changed.extend(other.changed);
        self.answers.absorb(other.answers);
    }
}

/// Checks on each answer that hold whatever else runs concurrently.
pub struct AnswerChecks {
    contains_request: Check,
    only_this_run: Check,
    well_formed: Check,
    new_is_alone: Check,
}

impl Default for AnswerChecks {
    fn default() -> Self {
        Self {
            contains_request: Check::new("answers contain their request's email and phone"),
            only_this_run: Check::new("answers hold only values of this run"),
            well_formed: Check::new(
                "answers are well formed (no duplicates, primary not a secondary, REST ids agree)",
            ),
            new_is_alone: Check::new(
                "a new customer's answer is a lone primary with its two values",
            ),
        }
    }
}

impl AnswerChecks {
    pub fn inspect(
        &mut self,
        api: Api,
        run_id: RunId,
        sent: (Kind, Request),
        answer: &Answer,
        read: &ReadAnswer,
        blocked: impl Fn(&Node) -> bool,
    ) {
        let (kind, request) = sent;
        let about = || describe(run_id, request, answer);
        // A value blocked (or being blocked) by a repair is dropped by the server.
        let missing: Vec<String> = request_nodes(request)
            .filter(|node| !read.nodes.contains(node) && !blocked(node))
            .map(|node| node.show(run_id))
            .collect();
        if !missing.is_empty() {
            self.contains_request
                .violation(|| format!("{} lacks {}", about(), missing.join(" and ")));
        }
        if !read.foreign.is_empty() {
            self.only_this_run
                .violation(|| format!("{} holds {}", about(), read.foreign.join(", ")));
        }
        if let Some(flaw) = flaw(api, answer) {
            self.well_formed
                .violation(|| format!("{}: {flaw}", about()));
        }
        if kind == Kind::New {
            let alone = answer.secondary_contact_ids.is_empty()
                && answer.emails == Vec::from_iter(request.email.map(|n| run_id.email(n)))
                && answer.phone_numbers == Vec::from_iter(request.phone.map(|n| run_id.phone(n)));
            if !alone {
                self.new_is_alone.violation(|| {
                    format!(
                        "{}: emails {:?}, phones {:?}, secondaries {:?}",
                        about(),
                        answer.emails,
                        answer.phone_numbers,
                        answer.secondary_contact_ids
                    )
                });
            }
        }
    }

    pub fn merge(&mut self, other: AnswerChecks) {
        self.contains_request.merge(other.contains_request);
        self.only_this_run.merge(other.only_this_run);
        self.well_formed.merge(other.well_formed);
        self.new_is_alone.merge(other.new_is_alone);
    }

    pub fn into_checks(self) -> Vec<Check> {
        vec![
            self.contains_request,
            self.only_this_run,
            self.well_formed,
            self.new_is_alone,
        ]
    }
}

/// What is wrong with an answer's shape, if anything (docs/SPEC.md §4, "The answer").
fn flaw(api: Api, answer: &Answer) -> Option<String> {
    fn has_duplicates<T: Eq + Hash>(items: &[T]) -> bool {
        items.iter().collect::<HashSet<_>>().len() != items.len()
    }
    let primary = answer.primary_contact_id;
    if has_duplicates(&answer.emails) {
        return Some("duplicate emails".to_owned());
    }
    if has_duplicates(&answer.phone_numbers) {
        return Some("duplicate phone numbers".to_owned());
    }
    if has_duplicates(&answer.secondary_contact_ids) {
        return Some("duplicate secondary ids".to_owned());
    }
    if answer.secondary_contact_ids.contains(&primary) {
        return Some("the primary is listed among the secondaries".to_owned());
    }
    match (api, answer.legacy_primary_id) {
        (Api::Rest, None) => Some("primaryContatctId is missing".to_owned()),
        (Api::Rest, Some(legacy)) if legacy != primary => Some(format!(
            "primaryContatctId {legacy} differs from primaryContactId"
        )),
        _ => None,
    }
}

fn describe(run_id: RunId, request: Request, answer: &Answer) -> String {
    let values: Vec<String> = request_nodes(request)
        .map(|node| node.show(run_id))
        .collect();
    format!(
        "the answer to {} (primary {})",
        values.join(" + "),
        answer.primary_contact_id
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(primary: i32, secondaries: &[i32], emails: &[String], phones: &[String]) -> Answer {
        Answer {
            primary_contact_id: primary,
            legacy_primary_id: Some(primary),
            emails: emails.to_vec(),
            phone_numbers: phones.to_vec(),
            secondary_contact_ids: secondaries.to_vec(),
            outcome: None,
        }
    }

    fn failed(checks: AnswerChecks) -> Vec<&'static str> {
        checks
            .into_checks()
            .into_iter()
            .filter(|check| !check.passed())
            .map(|check| check.name)
            .collect()
    }

    #[test]
    fn answer_checks_pass_a_right_answer_and_name_what_is_wrong() {
        let run = RunId::new(1).unwrap();
        let request = Request {
            email: Some(1),
            phone: Some(2),
        };
        let check = |kind, api, answer: &Answer| {
            let mut checks = AnswerChecks::default();
            let read = read_answer(run, answer);
            checks.inspect(api, run, (kind, request), answer, &read, |_| false);
            failed(checks)
        };

        let right = answer(10, &[], &[run.email(1)], &[run.phone(2)]);
        assert!(check(Kind::New, Api::Rest, &right).is_empty());

        let merged = answer(10, &[11], &[run.email(1), run.email(3)], &[run.phone(2)]);
        assert!(check(Kind::Bridge, Api::Graphql, &merged).is_empty());
        assert_eq!(
            check(Kind::New, Api::Graphql, &merged).len(),
            1,
            "a new customer merged"
        );

        let lacking = answer(10, &[], &[run.email(1)], &[]);
        assert_eq!(check(Kind::Repeat, Api::Rest, &lacking).len(), 1);

        let foreign = answer(
            10,
            &[],
            &[run.email(1), "x@y.z".to_owned()],
            &[run.phone(2)],
        );
        assert_eq!(check(Kind::Repeat, Api::Rest, &foreign).len(), 1);

        let mut legacy = answer(10, &[], &[run.email(1)], &[run.phone(2)]);
        legacy.legacy_primary_id = None;
        assert_eq!(check(Kind::Repeat, Api::Rest, &legacy).len(), 1);
        assert!(check(Kind::Repeat, Api::Graphql, &legacy).is_empty());
    }
}
