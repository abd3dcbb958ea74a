//! A batch of identify requests applied in turn to the identities they can touch
//! (docs/SPEC.md §13), in memory: the decision of each request is [`decide`] on the
//! state the earlier ones left, exactly as single calls in that order would see it.
//! The service loads and locks those identities once, plans the whole batch here,
//! and writes the outcome set-wise.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};

use super::reconcile::{Contact, Decision, Hold, Identity, Limits, decide};
use super::{Email, IdentifyRequest, Phone};

/// What one request of the batch did, in the order single calls would have
/// recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchStep {
    /// Identities were merged into `primary_id`.
    Merged {
        primary_id: i32,
        demoted_primary_ids: Vec<i32>,
    },
    /// A contact was inserted; `email` and `phone` are the ledger's provenance (the
    /// request's values that matched, or a new primary's own).
    Inserted {
        contact: Contact,
        email: Option<Email>,
        phone: Option<Phone>,
    },
    /// The request was held by an identity limit.
    Held(Hold),
}

/// One request's result: its answer and what it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub identity: Identity,
    pub decision: Decision,
    /// Its steps, in order (a merge before the row that caused it).
    pub steps: Vec<BatchStep>,
}

/// The identities a batch may touch, and what it has done to them so far.
#[derive(Debug, Default)]
pub struct BatchWorld {
    contacts: HashMap<i32, Contact>,
    by_email: HashMap<Email, Vec<i32>>,
    by_phone: HashMap<Phone, Vec<i32>>,
    /// Each primary's members, itself included.
    members: HashMap<i32, Vec<i32>>,
    /// The loaded primaries.
    loaded_primaries: BTreeSet<i32>,
    /// The batch's clock: re-linked rows show it as their `updated_at`.
    now: DateTime<Utc>,
    /// Ids of the contacts the batch inserted, in insertion order.
    inserted: Vec<i32>,
}

impl BatchWorld {
    /// The world as loaded: every live member of every identity holding one of the
    /// batch's values.
    pub fn new(loaded: Vec<Contact>, now: DateTime<Utc>) -> Self {
        let mut world = Self {
            now,
            ..Self::default()
        };
        for contact in loaded {
            if contact.is_primary() {
                world.loaded_primaries.insert(contact.id);
            }
            world.add(contact);
        }
        world
    }

    fn add(&mut self, contact: Contact) {
        if let Some(email) = &contact.email {
            self.by_email
                .entry(email.clone())
                .or_default()
                .push(contact.id);
        }
        if let Some(phone) = &contact.phone {
            self.by_phone
                .entry(phone.clone())
                .or_default()
                .push(contact.id);
        }
        self.members
            .entry(contact.primary_id())
            .or_default()
            .push(contact.id);
        self.contacts.insert(contact.id, contact);
    }

    /// Ids of every member of the identities holding the request's values.
    fn member_ids<'a>(&'a self, request: &IdentifyRequest) -> impl Iterator<Item = &'a i32> {
        let holders = request
            .email()
            .and_then(|email| self.by_email.get(email))
            .into_iter()
            .chain(request.phone().and_then(|phone| self.by_phone.get(phone)))
            .flatten();
        let primaries: BTreeSet<i32> = holders.map(|id| self.contacts[id].primary_id()).collect();
        primaries
            .into_iter()
            .flat_map(move |primary| &self.members[&primary])
    }

    /// Every member of the identities holding the request's values.
    fn matched(&self, request: &IdentifyRequest) -> Vec<Contact> {
        self.member_ids(request)
            .map(|id| self.contacts[id].clone())
            .collect()
    }

    /// The creation time of the newest member of the identities `request` reaches.
    pub fn newest_matched(&self, request: &IdentifyRequest) -> Option<DateTime<Utc>> {
        self.member_ids(request)
            .map(|id| self.contacts[id].created_at)
            .max()
    }

    /// Applies `request` as a single call would, with a fresh id and creation time
    /// from `fresh` for each row it inserts.
    pub fn apply(
        &mut self,
        request: &IdentifyRequest,
        limits: Limits,
        fresh: &mut impl FnMut() -> (i32, DateTime<Utc>),
    ) -> Planned {
        let members = self.matched(request);
        let decision = decide(request, &members, limits);
        let mut steps = Vec::new();
        let identity = match &decision {
            Decision::NewPrimary => {
                let contact = self.insert(request, None, fresh);
                steps.push(BatchStep::Inserted {
                    contact: contact.clone(),
                    email: request.email().cloned(),
                    phone: request.phone().cloned(),
                });
                Identity::from_members(contact.id, vec![contact])
            }
            Decision::Unchanged { primary_id } => Identity::from_members(*primary_id, members),
            Decision::Held(hold) => {
                steps.push(BatchStep::Held(hold.clone()));
                let as_it_stands = members
                    .into_iter()
                    .filter(|member| member.primary_id() == hold.primary_id)
                    .collect();
                Identity::from_members(hold.primary_id, as_it_stands)
            }
            Decision::Merge(merge) => {
                if !merge.demoted_primary_ids.is_empty() {
                    for demoted in &merge.demoted_primary_ids {
                        self.relink(*demoted, merge.primary_id);
                    }
                    steps.push(BatchStep::Merged {
                        primary_id: merge.primary_id,
                        demoted_primary_ids: merge.demoted_primary_ids.clone(),
                    });
                }
                if merge.add_secondary {
                    let contact = self.insert(request, Some(merge.primary_id), fresh);
                    steps.push(BatchStep::Inserted {
                        contact,
                        email: request
                            .email()
                            .filter(|e| members.iter().any(|m| m.email.as_ref() == Some(*e)))
                            .cloned(),
                        phone: request
                            .phone()
                            .filter(|p| members.iter().any(|m| m.phone.as_ref() == Some(*p)))
                            .cloned(),
                    });
                }
                let merged = self.members[&merge.primary_id]
                    .iter()
                    .map(|id| self.contacts[id].clone())
                    .collect();
                Identity::from_members(merge.primary_id, merged)
            }
        };
        Planned {
            identity,
            decision,
            steps,
        }
    }

    fn insert(
        &mut self,
        request: &IdentifyRequest,
        linked_id: Option<i32>,
        fresh: &mut impl FnMut() -> (i32, DateTime<Utc>),
    ) -> Contact {
        let (id, at) = fresh();
        let contact = Contact {
            id,
            email: request.email().cloned(),
            phone: request.phone().cloned(),
            linked_id,
            created_at: at,
            updated_at: at,
        };
        self.inserted.push(id);
        self.add(contact.clone());
        contact
    }

    /// Folds the identity headed by `demoted` into `primary_id`.
    fn relink(&mut self, demoted: i32, primary_id: i32) {
        let moved = self.members.remove(&demoted).unwrap_or_default();
        for id in &moved {
            if let Some(contact) = self.contacts.get_mut(id) {
                contact.linked_id = Some(primary_id);
                contact.updated_at = contact.updated_at.max(self.now);
            }
        }
        self.members.entry(primary_id).or_default().extend(moved);
    }

    /// The time of the orders applied from now on: rows they re-link show it as
    /// their `updated_at`.
    pub fn set_clock(&mut self, now: DateTime<Utc>) {
        self.now = now;
    }

    /// The rows the batch inserted, as they stand at its end.
    pub fn inserted(&self) -> Vec<Contact> {
        self.inserted
            .iter()
            .map(|id| self.contacts[id].clone())
            .collect()
    }

    /// Loaded primaries the batch demoted, each with the primary it ends under and
    /// the time it last moved: in the database, each and every row linked to it
    /// (soft-deleted ones too) move there.
    pub fn demoted(&self) -> Vec<(i32, i32, DateTime<Utc>)> {
        self.loaded_primaries
            .iter()
            .filter_map(|id| {
                let contact = &self.contacts[id];
                contact
                    .linked_id
                    .map(|primary| (*id, primary, contact.updated_at))
            })
            .collect()
    }

    /// Every contact, as it stands now (for tests and checks).
    pub fn contacts(&self) -> impl Iterator<Item = &Contact> {
        self.contacts.values()
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    /// Single calls, naively: every request scans every row, as the service's
    /// queries would, and applies the decision to the table.
    #[derive(Default)]
    struct Sequential {
        rows: Vec<Contact>,
    }

    impl Sequential {
        fn identify(
            &mut self,
            request: &IdentifyRequest,
            limits: Limits,
            fresh: &mut impl FnMut() -> (i32, DateTime<Utc>),
        ) -> (Identity, Decision) {
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
            let decision = decide(request, &members, limits);
            let mut row = |linked_id| {
                let (id, at) = fresh();
                Contact {
                    id,
                    email: request.email().cloned(),
                    phone: request.phone().cloned(),
                    linked_id,
                    created_at: at,
                    updated_at: at,
                }
            };
            let identity = match &decision {
                Decision::NewPrimary => {
                    let contact = row(None);
                    self.rows.push(contact.clone());
                    Identity::from_members(contact.id, vec![contact])
                }
                Decision::Unchanged { primary_id } => Identity::from_members(*primary_id, members),
                Decision::Held(hold) => Identity::from_members(
                    hold.primary_id,
                    members
                        .into_iter()
                        .filter(|m| m.primary_id() == hold.primary_id)
                        .collect(),
                ),
                Decision::Merge(merge) => {
                    let inserted = merge.add_secondary.then(|| row(Some(merge.primary_id)));
                    for contact in &mut self.rows {
                        if merge.demoted_primary_ids.contains(&contact.primary_id()) {
                            contact.linked_id = Some(merge.primary_id);
                        }
                    }
                    self.rows.extend(inserted.clone());
                    Identity::from_members(merge.primary_id, merge.apply(members, inserted))
                }
            };
            (identity, decision)
        }
    }

    fn request_strategy() -> impl Strategy<Value = IdentifyRequest> {
        (proptest::option::of(0..7u8), proptest::option::of(0..7u8))
            .prop_filter("at least one value", |(e, p)| e.is_some() || p.is_some())
            .prop_map(|(e, p)| {
                let email = e.map(|e| Email::parse(&format!("user{e}@example.com")).unwrap());
                let phone = p.map(|p| Phone::parse(&format!("55501{p}")).unwrap());
                IdentifyRequest::new(email.flatten(), phone.flatten()).unwrap()
            })
    }

    type RowShape = (i32, Option<Email>, Option<Phone>, Option<i32>);

    /// Rows without `updated_at`, which only the answers show.
    fn shape(rows: impl IntoIterator<Item = Contact>) -> Vec<RowShape> {
        let mut shaped: Vec<RowShape> = rows
            .into_iter()
            .map(|c| (c.id, c.email, c.phone, c.linked_id))
            .collect();
        shaped.sort_by_key(|row| row.0);
        shaped
    }

    fn identity_shape(identity: &Identity) -> (i32, Vec<Email>, Vec<Phone>, Vec<i32>) {
        (
            identity.primary_id,
            identity.emails.clone(),
            identity.phone_numbers.clone(),
            identity.secondary_ids.clone(),
        )
    }

    /// Ids and creation times as the database hands them out: rising, with a tie
    /// now and then so that the id tie-break of contact order is exercised.
    fn clock(start: i32) -> impl FnMut() -> (i32, DateTime<Utc>) {
        let mut id = start;
        move || {
            id += 1;
            let at = Utc
                .timestamp_opt(1_700_000_000 + i64::from(id / 2), 0)
                .unwrap();
            (id, at)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// A batch planned over the loaded identities ends where the same requests
        /// sent one by one end, deciding and answering each as its single call
        /// would, with and without identity limits, over stored rows or none; and
        /// the writes it plans turn the stored rows into those.
        #[test]
        fn a_batch_is_its_requests_in_turn(
            before in proptest::collection::vec(request_strategy(), 0..20),
            batch in proptest::collection::vec(request_strategy(), 1..30),
            limit in proptest::option::of(2..5usize),
        ) {
            let limits = Limits { max_emails: limit, max_phones: limit };
            let mut sequential = Sequential::default();
            let mut stored_clock = clock(0);
            for request in &before {
                sequential.identify(request, limits, &mut stored_clock);
            }
            let stored = sequential.rows.clone();
            let next = stored.iter().map(|c| c.id).max().unwrap_or(0);

            // The batch sees every stored row (the service loads only those its
            // values reach; the others cannot change).
            let now = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
            let mut world = BatchWorld::new(stored.clone(), now);
            let mut batch_clock = clock(next);
            let mut single_clock = clock(next);
            for request in &batch {
                let planned = world.apply(request, limits, &mut batch_clock);
                let (identity, decision) = sequential.identify(request, limits, &mut single_clock);
                prop_assert_eq!(&planned.decision, &decision);
                prop_assert_eq!(identity_shape(&planned.identity), identity_shape(&identity));
            }
            prop_assert_eq!(shape(world.contacts().cloned()), shape(sequential.rows.clone()));

            // The writes: each demoted stored primary takes every row linked to it
            // along, then the inserted rows go in as they end.
            let demoted = world.demoted();
            let mut written: Vec<Contact> = stored
                .into_iter()
                .map(|mut row| {
                    if let Some((_, to, _)) = demoted
                        .iter()
                        .find(|(from, _, _)| row.id == *from || row.linked_id == Some(*from))
                    {
                        row.linked_id = Some(*to);
                    }
                    row
                })
                .collect();
            written.extend(world.inserted());
            prop_assert_eq!(shape(written), shape(sequential.rows));
        }
    }
}
