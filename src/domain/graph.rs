//! The identity graph's evidence (docs/SPEC.md §10.1): which ledger events still
//! join contacts, the components they and shared values make, and the chain of
//! evidence that explains why a contact belongs to its identity.
//!
//! Splits, `check --deep` and `linkedBecause` all read the graph through these
//! functions, and the property test below checks them, with blocks, limits, holds and
//! splits, against the union of the values of the requests that were applied.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use super::{Contact, ContactValue, Email, Phone, UnionFind};

/// A ledger event as the evidence rules read it, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvidenceEvent {
    /// A merge by a request whose email matched one identity and phone another.
    Merged { id: i64, email: Email, phone: Phone },
    /// A link made before the ledger existed.
    PreLedger {
        id: i64,
        contact_id: i32,
        primary_id: i32,
    },
    /// A value blocked by an administrator: severs earlier merges through it.
    Blocked { id: i64, value: ContactValue },
    /// A split: severs earlier pre-ledger links of the contacts it lists.
    Split { id: i64, contact_ids: Vec<i32> },
}

impl EvidenceEvent {
    fn id(&self) -> i64 {
        match self {
            EvidenceEvent::Merged { id, .. }
            | EvidenceEvent::PreLedger { id, .. }
            | EvidenceEvent::Blocked { id, .. }
            | EvidenceEvent::Split { id, .. } => *id,
        }
    }
}

/// Evidence that joins contacts beyond the values they share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evidence {
    /// Any contact holding `email` is joined to any contact holding `phone`.
    Pair {
        event_id: i64,
        email: Email,
        phone: Phone,
    },
    /// The two contacts are joined.
    Link {
        event_id: i64,
        contact_id: i32,
        primary_id: i32,
    },
}

/// The evidence still standing after every event, in event order: a merge counts
/// unless a later block names one of its values, a pre-ledger link unless a later
/// split lists its contact.
pub fn live_evidence(mut events: Vec<EvidenceEvent>) -> Vec<Evidence> {
    events.sort_by_key(EvidenceEvent::id);
    // Walking backwards, "later" is what has been seen so far.
    let mut blocked_later: HashSet<ContactValue> = HashSet::new();
    let mut split_later: HashSet<i32> = HashSet::new();
    let mut evidence = Vec::new();
    for event in events.into_iter().rev() {
        match event {
            EvidenceEvent::Blocked { value, .. } => {
                blocked_later.insert(value);
            }
            EvidenceEvent::Split { contact_ids, .. } => split_later.extend(contact_ids),
            EvidenceEvent::Merged { id, email, phone } => {
                let severed = blocked_later.contains(&ContactValue::Email(email.clone()))
                    || blocked_later.contains(&ContactValue::Phone(phone.clone()));
                if !severed {
                    evidence.push(Evidence::Pair {
                        event_id: id,
                        email,
                        phone,
                    });
                }
            }
            EvidenceEvent::PreLedger {
                id,
                contact_id,
                primary_id,
            } => {
                if !split_later.contains(&contact_id) {
                    evidence.push(Evidence::Link {
                        event_id: id,
                        contact_id,
                        primary_id,
                    });
                }
            }
        }
    }
    evidence.reverse();
    evidence
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Node {
    Contact(i32),
    Email(Email),
    Phone(Phone),
}

/// The connected components of `contacts` under shared values and `evidence`: each
/// in contact order (its primary first), the components in their primaries' order.
pub fn components(contacts: &[Contact], evidence: &[Evidence]) -> Vec<Vec<Contact>> {
    let ids: HashSet<i32> = contacts.iter().map(|c| c.id).collect();
    let mut graph: UnionFind<Node> = UnionFind::default();
    for contact in contacts {
        let values = contact
            .email
            .iter()
            .map(|e| Node::Email(e.clone()))
            .chain(contact.phone.iter().map(|p| Node::Phone(p.clone())));
        graph.join(std::iter::once(Node::Contact(contact.id)).chain(values));
    }
    for edge in evidence {
        match edge {
            Evidence::Pair { email, phone, .. } => {
                graph.join([Node::Email(email.clone()), Node::Phone(phone.clone())]);
            }
            Evidence::Link {
                contact_id,
                primary_id,
                ..
            } => {
                if ids.contains(contact_id) && ids.contains(primary_id) {
                    graph.join([Node::Contact(*contact_id), Node::Contact(*primary_id)]);
                }
            }
        }
    }
    let mut groups: HashMap<usize, Vec<Contact>> = HashMap::new();
    for contact in contacts {
        let set = graph
            .set_of(&Node::Contact(contact.id))
            .expect("every contact was added");
        groups.entry(set).or_default().push(contact.clone());
    }
    let mut components: Vec<Vec<Contact>> = groups
        .into_values()
        .map(|mut members| {
            members.sort_by_key(Contact::contact_order);
            members
        })
        .collect();
    components.sort_by_key(|members| members[0].contact_order());
    components
}

/// How one step of a [`linked_because`] chain joins its two contacts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    Email(Email),
    Phone(Phone),
    Merge {
        event_id: i64,
        email: Email,
        phone: Phone,
    },
    PreLedger {
        event_id: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub from: i32,
    pub to: i32,
    pub via: Via,
}

/// A shortest chain of evidence from `from` to `to` among `members`, breadth first,
/// neighbours in contact order; `None` when no evidence joins them.
pub fn linked_because(
    members: &[Contact],
    evidence: &[Evidence],
    from: i32,
    to: i32,
) -> Option<Vec<Step>> {
    let mut members: Vec<&Contact> = members.iter().collect();
    members.sort_by_key(|c| c.contact_order());
    let index: HashMap<i32, usize> = members.iter().enumerate().map(|(i, c)| (c.id, i)).collect();
    let mut by_email: HashMap<&Email, Vec<usize>> = HashMap::new();
    let mut by_phone: HashMap<&Phone, Vec<usize>> = HashMap::new();
    for (i, contact) in members.iter().enumerate() {
        if let Some(email) = &contact.email {
            by_email.entry(email).or_default().push(i);
        }
        if let Some(phone) = &contact.phone {
            by_phone.entry(phone).or_default().push(i);
        }
    }
    let mut pairs_by_email: HashMap<&Email, Vec<(i64, &Phone)>> = HashMap::new();
    let mut pairs_by_phone: HashMap<&Phone, Vec<(i64, &Email)>> = HashMap::new();
    let mut links: HashMap<usize, Vec<(i64, usize)>> = HashMap::new();
    for edge in evidence {
        match edge {
            Evidence::Pair {
                event_id,
                email,
                phone,
            } => {
                pairs_by_email
                    .entry(email)
                    .or_default()
                    .push((*event_id, phone));
                pairs_by_phone
                    .entry(phone)
                    .or_default()
                    .push((*event_id, email));
            }
            Evidence::Link {
                event_id,
                contact_id,
                primary_id,
            } => {
                if let (Some(&a), Some(&b)) = (index.get(contact_id), index.get(primary_id)) {
                    links.entry(a).or_default().push((*event_id, b));
                    links.entry(b).or_default().push((*event_id, a));
                }
            }
        }
    }
    let (&start, &goal) = (index.get(&from)?, index.get(&to)?);
    let mut came_from: BTreeMap<usize, (usize, Via)> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    let mut seen = HashSet::from([start]);
    // Each value is expanded once, from the first contact that reaches it (which is
    // as near the start as any holder): linear in the graph, not quadratic in an
    // identity of thousands sharing one value.
    let mut expanded_emails: HashSet<&Email> = HashSet::new();
    let mut expanded_phones: HashSet<&Phone> = HashSet::new();
    while let Some(current) = queue.pop_front() {
        if current == goal {
            break;
        }
        let contact = members[current];
        let mut next: Vec<(usize, Via)> = Vec::new();
        let reach = |holders: &[usize], via: &dyn Fn() -> Via, next: &mut Vec<(usize, Via)>| {
            for &holder in holders {
                if !seen.contains(&holder) {
                    next.push((holder, via()));
                }
            }
        };
        if let Some(email) = &contact.email
            && expanded_emails.insert(email)
        {
            reach(&by_email[email], &|| Via::Email(email.clone()), &mut next);
            for (event_id, phone) in pairs_by_email.get(email).into_iter().flatten() {
                let holders = by_phone.get(phone).map_or(&[][..], Vec::as_slice);
                let via = || Via::Merge {
                    event_id: *event_id,
                    email: email.clone(),
                    phone: (*phone).clone(),
                };
                reach(holders, &via, &mut next);
            }
        }
        if let Some(phone) = &contact.phone
            && expanded_phones.insert(phone)
        {
            reach(&by_phone[phone], &|| Via::Phone(phone.clone()), &mut next);
            for (event_id, email) in pairs_by_phone.get(phone).into_iter().flatten() {
                let holders = by_email.get(email).map_or(&[][..], Vec::as_slice);
                let via = || Via::Merge {
                    event_id: *event_id,
                    email: (*email).clone(),
                    phone: phone.clone(),
                };
                reach(holders, &via, &mut next);
            }
        }
        for &(event_id, holder) in links.get(&current).into_iter().flatten() {
            if !seen.contains(&holder) {
                next.push((holder, Via::PreLedger { event_id }));
            }
        }
        next.sort_by_key(|(i, _)| *i);
        for (neighbour, via) in next {
            if seen.insert(neighbour) {
                came_from.insert(neighbour, (current, via));
                queue.push_back(neighbour);
            }
        }
    }
    if !seen.contains(&goal) {
        return None;
    }
    let mut steps = Vec::new();
    let mut at = goal;
    while at != start {
        let (previous, via) = came_from.remove(&at)?;
        steps.push(Step {
            from: members[previous].id,
            to: members[at].id,
            via,
        });
        at = previous;
    }
    steps.reverse();
    Some(steps)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use chrono::{DateTime, TimeZone, Utc};
    use proptest::prelude::*;

    use super::*;
    use crate::domain::{
        Decision, Hold, IdentifyRequest, Limits, Outcome, Screened, decide, screen,
    };

    /// The service's rules over an in-memory table, with the ledger's evidence
    /// events, blocks, limits, holds and splits, applied the way the service applies
    /// them over PostgreSQL.
    struct MemoryStore {
        rows: Vec<Contact>,
        events: Vec<EvidenceEvent>,
        blocked: BTreeSet<ContactValue>,
        held: Vec<(IdentifyRequest, Hold, bool)>,
        clock: i64,
    }

    impl MemoryStore {
        fn new() -> Self {
            Self {
                rows: Vec::new(),
                events: Vec::new(),
                blocked: BTreeSet::new(),
                held: Vec::new(),
                clock: 0,
            }
        }

        fn tick(&mut self) -> DateTime<Utc> {
            self.clock += 1;
            Utc.timestamp_opt(1_700_000_000 + self.clock / 2, 0)
                .unwrap()
        }

        fn next_event(&self) -> i64 {
            self.events.len() as i64 + 1
        }

        /// `None` when every value was blocked; else what was applied (the screened
        /// request) and the outcome.
        fn identify(
            &mut self,
            request: &IdentifyRequest,
            limits: Limits,
        ) -> Option<(IdentifyRequest, Outcome)> {
            let Screened::Kept(request, _) = screen(request, |v| self.blocked.contains(v)) else {
                return None;
            };
            let matched: BTreeSet<i32> = self
                .rows
                .iter()
                .filter(|c| {
                    (request.email().is_some() && c.email.as_ref() == request.email())
                        || (request.phone().is_some() && c.phone.as_ref() == request.phone())
                })
                .map(Contact::primary_id)
                .collect();
            let members: Vec<Contact> = self
                .rows
                .iter()
                .filter(|c| matched.contains(&c.primary_id()))
                .cloned()
                .collect();
            let at = self.tick();
            let next_row = |linked_id| Contact {
                id: self.rows.iter().map(|c| c.id).max().unwrap_or(0) + 1,
                email: request.email().cloned(),
                phone: request.phone().cloned(),
                linked_id,
                created_at: at,
                updated_at: at,
            };
            let decision = decide(&request, &members, limits);
            match &decision {
                Decision::NewPrimary => self.rows.push(next_row(None)),
                Decision::Unchanged { .. } => {}
                Decision::Held(hold) => self.held.push((request.clone(), hold.clone(), false)),
                Decision::Merge(merge) => {
                    let inserted = merge
                        .add_secondary
                        .then(|| next_row(Some(merge.primary_id)));
                    for row in &mut self.rows {
                        if merge.demoted_primary_ids.contains(&row.primary_id()) {
                            row.linked_id = Some(merge.primary_id);
                        }
                    }
                    if !merge.demoted_primary_ids.is_empty() && inserted.is_none() {
                        self.events.push(EvidenceEvent::Merged {
                            id: self.next_event(),
                            email: request.email().unwrap().clone(),
                            phone: request.phone().unwrap().clone(),
                        });
                    }
                    self.rows.extend(inserted);
                }
            }
            Some((request, decision.outcome()))
        }

        fn block(&mut self, value: ContactValue) {
            self.blocked.insert(value.clone());
            self.events.push(EvidenceEvent::Blocked {
                id: self.next_event(),
                value: value.clone(),
            });
            let holds = |c: &Contact| match &value {
                ContactValue::Email(e) => c.email.as_ref() == Some(e),
                ContactValue::Phone(p) => c.phone.as_ref() == Some(p),
            };
            let split: BTreeSet<i32> = self
                .rows
                .iter()
                .filter(|c| holds(c))
                .map(Contact::primary_id)
                .collect();
            for row in &mut self.rows {
                match &value {
                    ContactValue::Email(e) if row.email.as_ref() == Some(e) => row.email = None,
                    ContactValue::Phone(p) if row.phone.as_ref() == Some(p) => row.phone = None,
                    _ => {}
                }
            }
            self.rows.retain(|c| c.email.is_some() || c.phone.is_some());
            let evidence = live_evidence(self.events.clone());
            for primary_id in split {
                let members: Vec<Contact> = self
                    .rows
                    .iter()
                    .filter(|c| c.primary_id() == primary_id)
                    .cloned()
                    .collect();
                for component in components(&members, &evidence) {
                    let new_primary = component[0].id;
                    for row in &mut self.rows {
                        if component.iter().any(|c| c.id == row.id) {
                            row.linked_id = (row.id != new_primary).then_some(new_primary);
                        }
                    }
                    self.events.push(EvidenceEvent::Split {
                        id: self.next_event(),
                        contact_ids: component.iter().map(|c| c.id).collect(),
                    });
                }
            }
        }

        fn partition(&self) -> BTreeSet<BTreeSet<String>> {
            let mut groups: BTreeMap<i32, BTreeSet<String>> = BTreeMap::new();
            for contact in &self.rows {
                groups
                    .entry(contact.primary_id())
                    .or_default()
                    .extend(contact_values(contact));
            }
            groups.into_values().collect()
        }

        /// I1–I3 and I7: links one level deep to the oldest contact, no value in two
        /// identities, and evidence alone rebuilds the identities.
        fn check(&self) {
            let by_id: HashMap<i32, &Contact> = self.rows.iter().map(|c| (c.id, c)).collect();
            let mut owner: HashMap<String, i32> = HashMap::new();
            for contact in &self.rows {
                if let Some(primary_id) = contact.linked_id {
                    let primary = by_id[&primary_id];
                    assert!(primary.is_primary(), "{contact:?} links to a secondary");
                    assert!(primary.contact_order() < contact.contact_order(), "I2");
                }
                for value in contact_values(contact) {
                    let first = *owner.entry(value.clone()).or_insert(contact.primary_id());
                    assert_eq!(first, contact.primary_id(), "{value} is in two identities");
                }
                for blocked in &self.blocked {
                    assert!(!contact_values(contact).contains(&label(blocked)), "I6");
                }
            }
            let rebuilt: BTreeSet<BTreeSet<i32>> =
                components(&self.rows, &live_evidence(self.events.clone()))
                    .into_iter()
                    .map(|members| members.iter().map(|c| c.id).collect())
                    .collect();
            let mut linked: BTreeMap<i32, BTreeSet<i32>> = BTreeMap::new();
            for contact in &self.rows {
                linked
                    .entry(contact.primary_id())
                    .or_default()
                    .insert(contact.id);
            }
            assert_eq!(rebuilt, linked.into_values().collect(), "I7");
        }
    }

    fn label(value: &ContactValue) -> String {
        match value {
            ContactValue::Email(e) => format!("e:{e}"),
            ContactValue::Phone(p) => format!("p:{p}"),
        }
    }

    fn contact_values(contact: &Contact) -> Vec<String> {
        let email = contact.email.clone().map(ContactValue::Email);
        let phone = contact.phone.clone().map(ContactValue::Phone);
        email.iter().chain(phone.iter()).map(label).collect()
    }

    fn request_values(request: &IdentifyRequest) -> BTreeSet<String> {
        let email = request.email().cloned().map(ContactValue::Email);
        let phone = request.phone().cloned().map(ContactValue::Phone);
        email.iter().chain(phone.iter()).map(label).collect()
    }

    /// The model: the values of every applied request, joined; a block strips its
    /// value from every earlier request.
    #[derive(Default)]
    struct Model {
        applied: Vec<BTreeSet<String>>,
    }

    impl Model {
        fn union(&self) -> UnionFind<String> {
            let mut sets = UnionFind::default();
            for values in &self.applied {
                sets.join(values.iter().cloned());
            }
            sets
        }

        fn partition(&self) -> BTreeSet<BTreeSet<String>> {
            self.union()
                .sets()
                .into_iter()
                .map(|set| set.into_iter().collect())
                .collect()
        }

        fn together(&self, values: &BTreeSet<String>) -> bool {
            let mut sets = self.union();
            let roots: BTreeSet<Option<usize>> = values.iter().map(|v| sets.set_of(v)).collect();
            roots.len() == 1 && !roots.contains(&None)
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Identify(Option<u8>, Option<u8>),
        BlockEmail(u8),
        BlockPhone(u8),
        Unblock(u8, bool),
        Approve(usize),
        Reject(usize, bool),
    }

    fn email(n: u8) -> Email {
        Email::parse(&format!("user{n}@example.com"))
            .unwrap()
            .unwrap()
    }

    fn phone(n: u8) -> Phone {
        Phone::parse(&format!("55501{n}")).unwrap().unwrap()
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            12 => (proptest::option::of(0..8u8), proptest::option::of(0..8u8))
                .prop_filter("at least one value", |(e, p)| e.is_some() || p.is_some())
                .prop_map(|(e, p)| Op::Identify(e, p)),
            1 => (0..8u8).prop_map(Op::BlockEmail),
            1 => (0..8u8).prop_map(Op::BlockPhone),
            1 => (0..8u8, any::<bool>()).prop_map(|(n, is_email)| Op::Unblock(n, is_email)),
            2 => (0..8usize).prop_map(Op::Approve),
            1 => (0..8usize, any::<bool>()).prop_map(|(i, block)| Op::Reject(i, block)),
        ]
    }

    fn strip(model: &mut Model, value: &ContactValue) {
        for values in &mut model.applied {
            values.remove(&label(value));
        }
    }

    fn apply(model: &mut Model, applied: Option<(IdentifyRequest, Outcome)>) {
        match applied {
            None | Some((_, Outcome::Held)) => {}
            // A request that changes nothing leaves no evidence; its values must
            // already be together.
            Some((request, Outcome::Unchanged)) => {
                assert!(
                    model.together(&request_values(&request)),
                    "unchanged but apart"
                );
            }
            Some((request, _)) => model.applied.push(request_values(&request)),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(384))]

        #[test]
        fn blocks_limits_holds_and_splits_match_the_model(
            ops in proptest::collection::vec(op_strategy(), 1..60),
            max_emails in 2..5usize,
            max_phones in 2..5usize,
        ) {
            let limits = Limits { max_emails: Some(max_emails), max_phones: Some(max_phones) };
            let mut store = MemoryStore::new();
            let mut model = Model::default();
            for op in ops {
                match op {
                    Op::Identify(e, p) => {
                        let request = IdentifyRequest::new(e.map(email), p.map(phone)).unwrap();
                        let applied = store.identify(&request, limits);
                        if let Some((screened, Outcome::Held)) = &applied {
                            // A hold is only for a change past a limit.
                            let mut widened = model.applied.clone();
                            widened.push(request_values(screened));
                            let mut sets = Model { applied: widened }.union();
                            let root = sets.set_of(&request_values(screened).into_iter().next().unwrap());
                            let joined: Vec<String> = sets.items().iter().filter(|v| sets.clone().set_of(v) == root).cloned().collect();
                            let emails = joined.iter().filter(|v| v.starts_with("e:")).count();
                            let phones = joined.iter().filter(|v| v.starts_with("p:")).count();
                            prop_assert!(emails > max_emails || phones > max_phones);
                        }
                        apply(&mut model, applied);
                    }
                    Op::BlockEmail(n) => {
                        store.block(ContactValue::Email(email(n)));
                        strip(&mut model, &ContactValue::Email(email(n)));
                    }
                    Op::BlockPhone(n) => {
                        store.block(ContactValue::Phone(phone(n)));
                        strip(&mut model, &ContactValue::Phone(phone(n)));
                    }
                    Op::Unblock(n, is_email) => {
                        let value = if is_email {
                            ContactValue::Email(email(n))
                        } else {
                            ContactValue::Phone(phone(n))
                        };
                        store.blocked.remove(&value);
                    }
                    Op::Approve(i) => {
                        if let Some((request, _, resolved)) = store.held.get(i).cloned()
                            && !resolved
                        {
                            store.held[i].2 = true;
                            let applied = store.identify(&request, Limits::default());
                            apply(&mut model, applied);
                        }
                    }
                    Op::Reject(i, block) => {
                        if let Some((_, hold, resolved)) = store.held.get(i).cloned()
                            && !resolved
                        {
                            store.held[i].2 = true;
                            if block {
                                store.block(hold.suspect.clone());
                                strip(&mut model, &hold.suspect);
                            }
                        }
                    }
                }
                store.check();
                prop_assert_eq!(store.partition(), model.partition());
            }
        }
    }

    fn contact(
        id: i32,
        email_n: Option<u8>,
        phone_n: Option<u8>,
        linked_id: Option<i32>,
    ) -> Contact {
        let at = Utc.timestamp_opt(1_700_000_000 + i64::from(id), 0).unwrap();
        Contact {
            id,
            email: email_n.map(email),
            phone: phone_n.map(phone),
            linked_id,
            created_at: at,
            updated_at: at,
        }
    }

    #[test]
    fn a_later_block_severs_a_merge_and_a_later_split_a_pre_ledger_link() {
        let events = vec![
            EvidenceEvent::PreLedger {
                id: 1,
                contact_id: 2,
                primary_id: 1,
            },
            EvidenceEvent::Merged {
                id: 2,
                email: email(1),
                phone: phone(2),
            },
            EvidenceEvent::Blocked {
                id: 3,
                value: ContactValue::Phone(phone(2)),
            },
            EvidenceEvent::Merged {
                id: 4,
                email: email(1),
                phone: phone(2),
            },
            EvidenceEvent::Split {
                id: 5,
                contact_ids: vec![2, 7],
            },
            EvidenceEvent::PreLedger {
                id: 6,
                contact_id: 9,
                primary_id: 8,
            },
        ];
        let live = live_evidence(events);
        let ids: Vec<i64> = live
            .iter()
            .map(|e| match e {
                Evidence::Pair { event_id, .. } | Evidence::Link { event_id, .. } => *event_id,
            })
            .collect();
        assert_eq!(ids, vec![4, 6]);
    }

    #[test]
    fn the_chain_goes_through_values_and_merges() {
        let members = vec![
            contact(1, Some(1), Some(1), None),
            contact(2, Some(2), Some(1), Some(1)),
            contact(3, Some(3), Some(3), Some(1)),
        ];
        let evidence = vec![Evidence::Pair {
            event_id: 9,
            email: email(2),
            phone: phone(3),
        }];
        let steps = linked_because(&members, &evidence, 1, 3).unwrap();
        assert_eq!(
            steps,
            vec![
                Step {
                    from: 1,
                    to: 2,
                    via: Via::Phone(phone(1))
                },
                Step {
                    from: 2,
                    to: 3,
                    via: Via::Merge {
                        event_id: 9,
                        email: email(2),
                        phone: phone(3)
                    }
                },
            ]
        );
        assert_eq!(linked_because(&members, &[], 1, 3), None);
        assert_eq!(linked_because(&members, &[], 1, 1), Some(vec![]));
        let parts = components(&members, &[]);
        assert_eq!(parts.len(), 2);
        assert_eq!(
            parts[0].iter().map(|c| c.id).collect::<Vec<_>>(),
            vec![1, 2]
        );
    }
}
