//! The reconciliation decision of docs/SPEC.md §4 as pure functions over loaded rows.
//!
//! The service loads (and locks) every live member of the identities a request
//! matches, asks [`decide`] what to change, applies it, and builds the answer with
//! [`Identity::from_members`]. Keeping this free of I/O lets it be checked against a
//! naive model with random request sequences (see the property test below).

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use super::{ContactValue, Email, IdentifyRequest, Phone};

/// One live contact row, as the reconciliation rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    pub id: i32,
    pub email: Option<Email>,
    pub phone: Option<Phone>,
    /// The primary's id for a secondary, `None` for a primary.
    pub linked_id: Option<i32>,
    pub created_at: DateTime<Utc>,
    /// When the row last changed; no rule reads it, the answers show it.
    pub updated_at: DateTime<Utc>,
}

impl Contact {
    pub fn is_primary(&self) -> bool {
        self.linked_id.is_none()
    }

    /// The id of the primary heading this contact's identity.
    pub fn primary_id(&self) -> i32 {
        self.linked_id.unwrap_or(self.id)
    }

    /// "Contact order": oldest first, ties broken by id.
    pub fn contact_order(&self) -> (DateTime<Utc>, i32) {
        (self.created_at, self.id)
    }
}

/// What an identify request must change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing matched: insert a new primary with the request's values.
    NewPrimary,
    /// Every value of the request is already in the one identity headed by
    /// `primary_id`: nothing changes.
    Unchanged { primary_id: i32 },
    /// Something changes: keep one primary, fold the others into it, and maybe add a
    /// row.
    Merge(Merge),
    /// The change would push an identity over a limit: nothing changes, the request
    /// is kept for review (docs/SPEC.md §10.3).
    Held(Hold),
}

/// The most emails and phones one identity may gather by requests
/// (docs/SPEC.md §10.3); `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_emails: Option<usize>,
    pub max_phones: Option<usize>,
}

/// Which limit a held request would have broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Emails,
    Phones,
}

impl LimitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Emails => "emails",
            LimitKind::Phones => "phones",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The oldest matched primary: the identity the answer shows.
    pub primary_id: i32,
    /// Every matched primary, ascending.
    pub primary_ids: Vec<i32>,
    pub limit: LimitKind,
    /// The request's value that matched the largest identity: the likeliest junk.
    pub suspect: ContactValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merge {
    /// The oldest primary among the matched identities; it stays primary.
    pub primary_id: i32,
    /// The other matched primaries: each turns secondary, and its secondaries move
    /// to `primary_id` with it, so links stay one level deep.
    pub demoted_primary_ids: Vec<i32>,
    /// The request brings an email or phone the merged identity lacks: insert one
    /// secondary row with the request's values.
    pub add_secondary: bool,
}

impl Merge {
    /// The merged identity's members after this merge, given the members before it
    /// and the row inserted for it, if any.
    pub fn apply(&self, members: Vec<Contact>, inserted: Option<Contact>) -> Vec<Contact> {
        let mut merged: Vec<Contact> = members
            .into_iter()
            .map(|mut contact| {
                if self.demoted_primary_ids.contains(&contact.primary_id()) {
                    contact.linked_id = Some(self.primary_id);
                }
                contact
            })
            .collect();
        merged.extend(inserted);
        merged
    }
}

/// The kind of change one identify made, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    NewPrimary,
    NewSecondary,
    /// Two or more identities became one (a secondary may have been added too).
    Merged,
    Unchanged,
    /// Nothing changed: the request would have pushed an identity over a limit.
    Held,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::NewPrimary => "new_primary",
            Outcome::NewSecondary => "new_secondary",
            Outcome::Merged => "merged",
            Outcome::Unchanged => "unchanged",
            Outcome::Held => "held",
        }
    }
}

impl Decision {
    pub fn outcome(&self) -> Outcome {
        match self {
            Decision::NewPrimary => Outcome::NewPrimary,
            Decision::Unchanged { .. } => Outcome::Unchanged,
            Decision::Merge(merge) if !merge.demoted_primary_ids.is_empty() => Outcome::Merged,
            Decision::Merge(_) => Outcome::NewSecondary,
            Decision::Held(_) => Outcome::Held,
        }
    }

    /// How many primaries this decision turns secondary.
    pub fn merged_primaries(&self) -> usize {
        match self {
            Decision::Merge(merge) => merge.demoted_primary_ids.len(),
            Decision::NewPrimary | Decision::Unchanged { .. } | Decision::Held(_) => 0,
        }
    }
}

/// Decides what `request` changes, given every live member of the identities it
/// matched (primaries and secondaries, in any order) and the identity limits.
pub fn decide(request: &IdentifyRequest, members: &[Contact], limits: Limits) -> Decision {
    let Some(primary) = members
        .iter()
        .filter(|contact| contact.is_primary())
        .min_by_key(|contact| contact.contact_order())
    else {
        return Decision::NewPrimary;
    };
    let mut demoted_primary_ids: Vec<i32> = members
        .iter()
        .filter(|contact| contact.is_primary() && contact.id != primary.id)
        .map(|contact| contact.id)
        .collect();
    demoted_primary_ids.sort_unstable();

    let email_known = request
        .email()
        .is_none_or(|email| members.iter().any(|c| c.email.as_ref() == Some(email)));
    let phone_known = request
        .phone()
        .is_none_or(|phone| members.iter().any(|c| c.phone.as_ref() == Some(phone)));

    let add_secondary = !(email_known && phone_known);
    if demoted_primary_ids.is_empty() && !add_secondary {
        return Decision::Unchanged {
            primary_id: primary.id,
        };
    }
    if let Some(hold) = over_limit(request, members, primary.id, limits) {
        return Decision::Held(hold);
    }
    Decision::Merge(Merge {
        primary_id: primary.id,
        demoted_primary_ids,
        add_secondary,
    })
}

/// The hold for a change that would leave the merged identity with more emails (or
/// phones) than the limit and than the largest matched identity already had.
fn over_limit(
    request: &IdentifyRequest,
    members: &[Contact],
    primary_id: i32,
    limits: Limits,
) -> Option<Hold> {
    if limits.max_emails.is_none() && limits.max_phones.is_none() {
        return None;
    }
    // Per matched identity: its members, emails and phones.
    let mut identities: std::collections::BTreeMap<i32, (usize, HashSet<&Email>, HashSet<&Phone>)> =
        std::collections::BTreeMap::new();
    for contact in members {
        let entry = identities.entry(contact.primary_id()).or_default();
        entry.0 += 1;
        entry.1.extend(contact.email.as_ref());
        entry.2.extend(contact.phone.as_ref());
    }
    let mut emails: HashSet<&Email> = identities
        .values()
        .flat_map(|i| i.1.iter().copied())
        .collect();
    let mut phones: HashSet<&Phone> = identities
        .values()
        .flat_map(|i| i.2.iter().copied())
        .collect();
    emails.extend(request.email());
    phones.extend(request.phone());
    let largest_emails = identities.values().map(|i| i.1.len()).max().unwrap_or(0);
    let largest_phones = identities.values().map(|i| i.2.len()).max().unwrap_or(0);
    let limit = if limits
        .max_emails
        .is_some_and(|max| emails.len() > max && emails.len() > largest_emails)
    {
        LimitKind::Emails
    } else if limits
        .max_phones
        .is_some_and(|max| phones.len() > max && phones.len() > largest_phones)
    {
        LimitKind::Phones
    } else {
        return None;
    };
    // The request's value held by the matched identity with the most members.
    let (_, (_, largest_emails_set, largest_phones_set)) = identities
        .iter()
        .max_by_key(|(primary, identity)| (identity.0, std::cmp::Reverse(**primary)))?;
    let suspect = match (request.email(), request.phone()) {
        (Some(email), _) if largest_emails_set.contains(email) => {
            ContactValue::Email(email.clone())
        }
        (_, Some(phone)) if largest_phones_set.contains(phone) => {
            ContactValue::Phone(phone.clone())
        }
        (Some(email), _) => ContactValue::Email(email.clone()),
        (None, Some(phone)) => ContactValue::Phone(phone.clone()),
        (None, None) => return None,
    };
    Some(Hold {
        primary_id,
        primary_ids: identities.keys().copied().collect(),
        limit,
        suspect,
    })
}

/// One customer as the API answers it (docs/SPEC.md §4, "The answer").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub primary_id: i32,
    /// Distinct emails: the primary's first, then the others in contact order.
    pub emails: Vec<Email>,
    /// Distinct phone numbers, ordered like `emails`.
    pub phone_numbers: Vec<Phone>,
    /// Secondary ids in contact order.
    pub secondary_ids: Vec<i32>,
    /// Every live member: the primary first, then the secondaries in contact order.
    pub contacts: Vec<Contact>,
}

impl Identity {
    /// Builds the answer from the live members of one identity headed by `primary_id`.
    pub fn from_members(primary_id: i32, mut members: Vec<Contact>) -> Self {
        members.sort_by_key(|contact| (contact.id != primary_id, contact.contact_order()));
        members.dedup_by_key(|contact| contact.id);

        // Sets, not `Vec::contains`: an identity can have thousands of members.
        let mut seen_emails: HashSet<&Email> = HashSet::with_capacity(members.len());
        let mut seen_phones: HashSet<&Phone> = HashSet::with_capacity(members.len());
        let mut emails: Vec<Email> = Vec::new();
        let mut phone_numbers: Vec<Phone> = Vec::new();
        for contact in &members {
            if let Some(email) = &contact.email
                && seen_emails.insert(email)
            {
                emails.push(email.clone());
            }
            if let Some(phone) = &contact.phone
                && seen_phones.insert(phone)
            {
                phone_numbers.push(phone.clone());
            }
        }
        let secondary_ids = members
            .iter()
            .filter(|contact| contact.id != primary_id)
            .map(|contact| contact.id)
            .collect();
        Self {
            primary_id,
            emails,
            phone_numbers,
            secondary_ids,
            contacts: members,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet, HashMap};

    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;
    use crate::domain::UnionFind;

    /// The reconciliation rules run over an in-memory table, the way the service runs
    /// them over PostgreSQL: match, load the identities, decide, apply.
    #[derive(Default)]
    struct MemoryStore {
        rows: Vec<Contact>,
    }

    impl MemoryStore {
        fn identify(&mut self, request: &IdentifyRequest, at: DateTime<Utc>) -> Identity {
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
            let next_row = |linked_id| Contact {
                id: self.rows.len() as i32 + 1,
                email: request.email().cloned(),
                phone: request.phone().cloned(),
                linked_id,
                created_at: at,
                updated_at: at,
            };
            match decide(request, &members, Limits::default()) {
                Decision::NewPrimary => {
                    let row = next_row(None);
                    self.rows.push(row.clone());
                    Identity::from_members(row.id, vec![row])
                }
                Decision::Unchanged { primary_id } => Identity::from_members(primary_id, members),
                Decision::Merge(merge) => {
                    let inserted = merge
                        .add_secondary
                        .then(|| next_row(Some(merge.primary_id)));
                    for row in &mut self.rows {
                        if merge.demoted_primary_ids.contains(&row.primary_id()) {
                            row.linked_id = Some(merge.primary_id);
                        }
                    }
                    self.rows.extend(inserted.clone());
                    Identity::from_members(merge.primary_id, merge.apply(members, inserted))
                }
                Decision::Held(_) => unreachable!("no limits are set"),
            }
        }
    }

    fn values_of(request: &IdentifyRequest) -> Vec<String> {
        let email = request.email().map(|e| format!("e:{e}"));
        let phone = request.phone().map(|p| format!("p:{p}"));
        email.into_iter().chain(phone).collect()
    }

    fn contact_values(contact: &Contact) -> Vec<String> {
        let email = contact.email.as_ref().map(|e| format!("e:{e}"));
        let phone = contact.phone.as_ref().map(|p| format!("p:{p}"));
        email.into_iter().chain(phone).collect()
    }

    fn request_strategy() -> impl Strategy<Value = IdentifyRequest> {
        (proptest::option::of(0..6u8), proptest::option::of(0..6u8))
            .prop_filter("at least one value", |(e, p)| e.is_some() || p.is_some())
            .prop_map(|(e, p)| {
                let email = e.map(|e| Email::parse(&format!("user{e}@example.com")).unwrap());
                let phone = p.map(|p| Phone::parse(&format!("55501{p}")).unwrap());
                IdentifyRequest::new(email.flatten(), phone.flatten()).unwrap()
            })
    }

    fn check_store_invariants(store: &MemoryStore) {
        let by_id: HashMap<i32, &Contact> = store.rows.iter().map(|c| (c.id, c)).collect();
        let mut owner_of_value: HashMap<String, i32> = HashMap::new();
        for contact in &store.rows {
            // I1: secondaries point at primaries; links are one level deep.
            if let Some(primary_id) = contact.linked_id {
                assert!(
                    by_id[&primary_id].is_primary(),
                    "{contact:?} links to a secondary"
                );
                // I2: the primary is the oldest contact of its identity.
                assert!(by_id[&primary_id].contact_order() < contact.contact_order());
            }
            // I3: no value belongs to two identities.
            for value in contact_values(contact) {
                let owner = *owner_of_value
                    .entry(value.clone())
                    .or_insert(contact.primary_id());
                assert_eq!(owner, contact.primary_id(), "{value} is in two identities");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_sequences_match_the_union_find_model(
            requests in proptest::collection::vec(request_strategy(), 1..40),
            tie_every in 1..4i64,
        ) {
            let mut store = MemoryStore::default();
            // The model: values that ever appeared in one request belong together.
            let mut model: UnionFind<String> = UnionFind::default();
            let mut seen: BTreeSet<String> = BTreeSet::new();
            let mut expected_rows = 0;
            for (step, request) in requests.iter().enumerate() {
                // Timestamps repeat now and then, so the id tie-break is exercised.
                let at = Utc.timestamp_opt(1_700_000_000 + step as i64 / tie_every, 0).unwrap();
                let values = values_of(request);
                if values.iter().any(|v| !seen.contains(v)) {
                    expected_rows += 1;
                }
                seen.extend(values.iter().cloned());
                model.join(values.iter().cloned());
                let rows_before = store.rows.len();
                let answer = store.identify(request, at);
                prop_assert!(store.rows.len() - rows_before <= 1);
                prop_assert_eq!(store.rows.len(), expected_rows);

                // The answer holds exactly the values of the request's model component.
                let root = model.set_of(&values[0]);
                let expected: BTreeSet<String> = seen
                    .clone()
                    .into_iter()
                    .filter(|v| model.set_of(v) == root)
                    .collect();
                let answered: BTreeSet<String> = answer
                    .emails
                    .iter()
                    .map(|e| format!("e:{e}"))
                    .chain(answer.phone_numbers.iter().map(|p| format!("p:{p}")))
                    .collect();
                prop_assert_eq!(&answered, &expected);
                prop_assert_eq!(answer.emails.len() + answer.phone_numbers.len(), expected.len());

                // The primary is the oldest row holding any of those values.
                let oldest = store
                    .rows
                    .iter()
                    .filter(|c| contact_values(c).iter().any(|v| expected.contains(v)))
                    .min_by_key(|c| c.contact_order())
                    .unwrap();
                prop_assert_eq!(answer.primary_id, oldest.id);
                prop_assert!(!answer.secondary_ids.contains(&answer.primary_id));
                let primary = &answer.contacts[0];
                prop_assert_eq!(primary.id, answer.primary_id);
                if let Some(email) = &primary.email {
                    prop_assert_eq!(&answer.emails[0], email);
                }
                if let Some(phone) = &primary.phone {
                    prop_assert_eq!(&answer.phone_numbers[0], phone);
                }
                let mut sorted = answer.secondary_ids.clone();
                sorted.sort_unstable();
                prop_assert_eq!(&sorted, &answer.secondary_ids);
                check_store_invariants(&store);
            }

            // At the end, the store's identities are exactly the model's components.
            let mut store_groups: BTreeMap<i32, BTreeSet<String>> = BTreeMap::new();
            for contact in &store.rows {
                store_groups.entry(contact.primary_id()).or_default().extend(contact_values(contact));
            }
            let store_partition: BTreeSet<_> = store_groups.into_values().collect();
            let model_partition: BTreeSet<BTreeSet<String>> = model
                .sets()
                .into_iter()
                .map(|set| set.into_iter().collect())
                .collect();
            prop_assert_eq!(store_partition, model_partition);
        }
    }

    fn at(second: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + second, 0).unwrap()
    }

    fn contact(id: i32, email: &str, phone: &str, linked_id: Option<i32>, second: i64) -> Contact {
        Contact {
            id,
            email: Email::parse(email).unwrap(),
            phone: Phone::parse(phone).unwrap(),
            linked_id,
            created_at: at(second),
            updated_at: at(second),
        }
    }

    fn request(email: &str, phone: &str) -> IdentifyRequest {
        IdentifyRequest::parse(Some(email), Some(phone)).unwrap()
    }

    #[test]
    fn nothing_matched_makes_a_new_primary() {
        assert_eq!(
            decide(&request("a@x.io", "1"), &[], Limits::default()),
            Decision::NewPrimary
        );
    }

    #[test]
    fn known_values_change_nothing() {
        let members = [
            contact(1, "a@x.io", "1", None, 0),
            contact(2, "b@x.io", "1", Some(1), 1),
        ];
        let decision = decide(&request("b@x.io", "1"), &members, Limits::default());
        assert_eq!(decision, Decision::Unchanged { primary_id: 1 });
        assert_eq!(decision.outcome(), Outcome::Unchanged);
        let decision = decide(
            &IdentifyRequest::parse(None, Some("1")).unwrap(),
            &members,
            Limits::default(),
        );
        assert_eq!(decision, Decision::Unchanged { primary_id: 1 });
    }

    #[test]
    fn a_new_value_adds_a_secondary() {
        let members = [contact(1, "a@x.io", "1", None, 0)];
        let decision = decide(&request("new@x.io", "1"), &members, Limits::default());
        assert_eq!(
            decision,
            Decision::Merge(Merge {
                primary_id: 1,
                demoted_primary_ids: vec![],
                add_secondary: true
            })
        );
        assert_eq!(decision.outcome(), Outcome::NewSecondary);
    }

    #[test]
    fn the_oldest_primary_wins_ties_by_id() {
        let members = [
            contact(7, "a@x.io", "1", None, 5),
            contact(3, "b@x.io", "2", None, 5),
            contact(9, "c@x.io", "3", None, 9),
            contact(10, "d@x.io", "3", Some(9), 10),
        ];
        let Decision::Merge(merge) = decide(&request("a@x.io", "2"), &members, Limits::default())
        else {
            panic!("expected a merge");
        };
        assert_eq!(merge.primary_id, 3);
        assert_eq!(merge.demoted_primary_ids, vec![7, 9]);
        assert!(!merge.add_secondary);
        let merged = merge.apply(members.to_vec(), None);
        assert!(
            merged
                .iter()
                .filter(|c| c.id != 3)
                .all(|c| c.linked_id == Some(3))
        );
    }

    #[test]
    fn the_answer_lists_the_primary_values_first_then_contact_order() {
        let members = vec![
            contact(4, "z@x.io", "9", Some(2), 4),
            contact(3, "a@x.io", "", Some(2), 3),
            contact(2, "m@x.io", "5", None, 1),
            contact(5, "a@x.io", "5", Some(2), 5),
        ];
        let identity = Identity::from_members(2, members);
        let emails: Vec<&str> = identity.emails.iter().map(Email::as_str).collect();
        let phones: Vec<&str> = identity.phone_numbers.iter().map(Phone::as_str).collect();
        assert_eq!(emails, ["m@x.io", "a@x.io", "z@x.io"]);
        assert_eq!(phones, ["5", "9"]);
        assert_eq!(identity.secondary_ids, [3, 4, 5]);
    }
}

#[cfg(test)]
mod limit_tests {
    use chrono::TimeZone;

    use super::*;

    fn contact(id: i32, email: &str, phone: &str, linked_id: Option<i32>) -> Contact {
        let at = Utc.timestamp_opt(1_700_000_000 + i64::from(id), 0).unwrap();
        Contact {
            id,
            email: Email::parse(email).unwrap(),
            phone: Phone::parse(phone).unwrap(),
            linked_id,
            created_at: at,
            updated_at: at,
        }
    }

    fn two_emails() -> Limits {
        Limits {
            max_emails: Some(2),
            max_phones: None,
        }
    }

    #[test]
    fn a_new_value_over_the_limit_is_held_with_the_matched_value_as_suspect() {
        let members = [
            contact(1, "a@x.io", "9", None),
            contact(2, "b@x.io", "9", Some(1)),
        ];
        let request = IdentifyRequest::parse(Some("c@x.io"), Some("9")).unwrap();
        let Decision::Held(hold) = decide(&request, &members, two_emails()) else {
            panic!("expected a hold");
        };
        assert_eq!(hold.primary_id, 1);
        assert_eq!(hold.limit, LimitKind::Emails);
        assert_eq!(
            hold.suspect,
            ContactValue::Phone(Phone::parse("9").unwrap().unwrap())
        );
        // A new phone does not add an email: not held.
        let request = IdentifyRequest::parse(Some("a@x.io"), Some("8")).unwrap();
        assert!(matches!(
            decide(&request, &members, two_emails()),
            Decision::Merge(_)
        ));
    }

    #[test]
    fn a_merge_over_the_limit_is_held_and_suspects_the_larger_identity() {
        let members = [
            contact(1, "a@x.io", "9", None),
            contact(2, "b@x.io", "9", Some(1)),
            contact(3, "c@x.io", "7", None),
        ];
        let request = IdentifyRequest::parse(Some("c@x.io"), Some("9")).unwrap();
        let Decision::Held(hold) = decide(&request, &members, two_emails()) else {
            panic!("expected a hold");
        };
        assert_eq!(hold.primary_ids, vec![1, 3]);
        assert_eq!(
            hold.suspect,
            ContactValue::Phone(Phone::parse("9").unwrap().unwrap())
        );
        assert_eq!(Decision::Held(hold).outcome(), Outcome::Held);
    }

    #[test]
    fn an_identity_already_over_the_limit_may_still_gain_what_it_has() {
        let members = [
            contact(1, "a@x.io", "9", None),
            contact(2, "b@x.io", "9", Some(1)),
            contact(3, "c@x.io", "9", Some(1)),
        ];
        let request = IdentifyRequest::parse(Some("c@x.io"), Some("5")).unwrap();
        assert!(matches!(
            decide(&request, &members, two_emails()),
            Decision::Merge(_)
        ));
        let request = IdentifyRequest::parse(Some("d@x.io"), Some("9")).unwrap();
        assert!(matches!(
            decide(&request, &members, two_emails()),
            Decision::Held(_)
        ));
    }
}
