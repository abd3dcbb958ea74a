//! The identity graph's GraphQL types (docs/SPEC.md §10): ledger events, evidence
//! chains, held requests, blocks and what a block split.

use async_graphql::dataloader::{DataLoader, HashMapCache};
use async_graphql::{Context, Enum, InputObject, SimpleObject};
use chrono::{DateTime, Utc};

use super::IdentityNode;
use crate::auth::Scope;
use crate::auth::mask;
use crate::db::graph::{BlockRecord, EventRecord, HeldRecord};
use crate::domain::{ContactValue, Email, Field, Identity, InputError, Outcome, Phone, Step, Via};
use crate::http::graphql::error::{RequireScope, shown};
use crate::http::graphql::limits::LOOKUP_COST;
use crate::http::graphql::loaders::{ContactId, ContactLoader, MembersLoader, PrimaryId};
use crate::http::graphql::query::audit;

/// What one `identify` changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(name = "IdentifyOutcome")]
pub enum OutcomeKind {
    NewPrimary,
    NewSecondary,
    Merged,
    Unchanged,
    /// Nothing was linked: the request would have pushed an identity over a limit
    /// and waits for an administrator (`heldRequests`).
    Held,
}

impl From<Outcome> for OutcomeKind {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::NewPrimary => OutcomeKind::NewPrimary,
            Outcome::NewSecondary => OutcomeKind::NewSecondary,
            Outcome::Merged => OutcomeKind::Merged,
            Outcome::Unchanged => OutcomeKind::Unchanged,
            Outcome::Held => OutcomeKind::Held,
        }
    }
}

/// The kinds of ledger event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum EventKind {
    Created,
    Linked,
    Merged,
    Held,
    Split,
    Blocked,
    Unblocked,
    Approved,
    Rejected,
    Erased,
}

impl EventKind {
    fn from_stored(kind: &str) -> Self {
        match kind {
            "created" => EventKind::Created,
            "linked" => EventKind::Linked,
            "merged" => EventKind::Merged,
            "held" => EventKind::Held,
            "split" => EventKind::Split,
            "blocked" => EventKind::Blocked,
            "unblocked" => EventKind::Unblocked,
            "approved" => EventKind::Approved,
            "erased" => EventKind::Erased,
            _ => EventKind::Rejected,
        }
    }
}

/// One change in the ledger of evidence (docs/SPEC.md §10.1).
#[derive(Debug, Clone, SimpleObject)]
pub struct IdentityEvent {
    pub id: i64,
    pub kind: EventKind,
    pub at: DateTime<Utc>,
    /// The id of the HTTP request that made the change.
    pub request_id: Option<String>,
    /// The contact created, linked or demoted.
    pub contact_id: Option<i32>,
    /// The primary the contact was linked or merged into (for a split: the
    /// component's primary).
    pub primary_contact_id: Option<i32>,
    /// For a split: the identity's primary before it.
    pub from_primary_contact_id: Option<i32>,
    /// The email involved: for `LINKED` and `MERGED`, the one that matched.
    pub email: Option<String>,
    /// The phone involved: for `LINKED` and `MERGED`, the one that matched.
    pub phone_number: Option<String>,
    /// For a split: the members of the component.
    pub contact_ids: Vec<i32>,
    pub held_id: Option<i64>,
    /// Recorded by the migration for a link made before the ledger existed.
    pub pre_ledger: bool,
}

impl IdentityEvent {
    pub fn new(ctx: &async_graphql::Context<'_>, record: EventRecord) -> Self {
        Self {
            id: record.id,
            kind: EventKind::from_stored(&record.kind),
            at: record.created_at,
            request_id: record.request_id,
            contact_id: record.contact_id,
            primary_contact_id: record.primary_id,
            from_primary_contact_id: record.from_primary_id,
            email: record.email.map(|e| shown(ctx, &e, mask::email)),
            phone_number: record.phone_number.map(|p| shown(ctx, &p, mask::phone)),
            contact_ids: record.contact_ids.unwrap_or_default(),
            held_id: record.held_id,
            pre_ledger: record.pre_ledger,
        }
    }
}

/// How a step of evidence joins two contacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum EvidenceKind {
    /// The two contacts hold the same email.
    Email,
    /// The two contacts hold the same phone number.
    Phone,
    /// A request gave an email of the one and a phone of the other.
    Merge,
    /// Linked before the ledger existed; no value is known.
    PreLedger,
}

/// One step of a chain of evidence.
#[derive(Debug, Clone, SimpleObject)]
pub struct EvidenceStep {
    pub from: i32,
    pub to: i32,
    pub via: EvidenceKind,
    /// The shared email (`EMAIL`), or the request's email (`MERGE`).
    pub email: Option<String>,
    /// The shared phone (`PHONE`), or the request's phone (`MERGE`).
    pub phone_number: Option<String>,
    /// The event that brought the step: the merge, or the creation of the newer of
    /// the two contacts.
    pub event_id: Option<i64>,
}

impl EvidenceStep {
    pub fn new(step: Step, creation_event: impl Fn(i32, i32) -> Option<i64>) -> Self {
        let (via, email, phone, event_id) = match step.via {
            Via::Email(email) => (
                EvidenceKind::Email,
                Some(email.as_str().to_owned()),
                None,
                creation_event(step.from, step.to),
            ),
            Via::Phone(phone) => (
                EvidenceKind::Phone,
                None,
                Some(phone.as_str().to_owned()),
                creation_event(step.from, step.to),
            ),
            Via::Merge {
                event_id,
                email,
                phone,
            } => (
                EvidenceKind::Merge,
                Some(email.as_str().to_owned()),
                Some(phone.as_str().to_owned()),
                Some(event_id),
            ),
            Via::PreLedger { event_id } => (EvidenceKind::PreLedger, None, None, Some(event_id)),
        };
        Self {
            from: step.from,
            to: step.to,
            via,
            email,
            phone_number: phone,
            event_id,
        }
    }
}

/// Where a held request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum HeldStatus {
    Pending,
    Approved,
    Rejected,
}

impl HeldStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HeldStatus::Pending => "pending",
            HeldStatus::Approved => "approved",
            HeldStatus::Rejected => "rejected",
        }
    }

    fn from_stored(status: &str) -> Self {
        match status {
            "pending" => HeldStatus::Pending,
            "approved" => HeldStatus::Approved,
            _ => HeldStatus::Rejected,
        }
    }
}

/// Which identity limit a held request would have broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum IdentityLimit {
    Emails,
    Phones,
}

/// An email or a phone number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum ValueKind {
    Email,
    Phone,
}

/// A request held for pushing an identity over a limit (docs/SPEC.md §10.3).
#[derive(Debug, Clone, SimpleObject)]
pub struct HeldRequest {
    pub id: i64,
    pub email: Option<String>,
    pub phone_number: Option<String>,
    /// The primaries of the identities it matched.
    pub primary_contact_ids: Vec<i32>,
    pub limit: IdentityLimit,
    pub suspect_kind: ValueKind,
    /// The value that matched the largest identity: the likeliest junk.
    pub suspect_value: String,
    pub status: HeldStatus,
    /// How many requests with these values were held while it was pending.
    pub times_seen: i32,
    /// The last held request's id.
    pub request_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_by: Option<String>,
}

impl From<HeldRecord> for HeldRequest {
    fn from(record: HeldRecord) -> Self {
        Self {
            id: record.id,
            email: record.email,
            phone_number: record.phone_number,
            primary_contact_ids: record.primary_ids,
            limit: if record.limit_kind == "emails" {
                IdentityLimit::Emails
            } else {
                IdentityLimit::Phones
            },
            suspect_kind: if record.suspect_kind == "email" {
                ValueKind::Email
            } else {
                ValueKind::Phone
            },
            suspect_value: record.suspect_value,
            status: HeldStatus::from_stored(&record.status),
            times_seen: record.times_seen,
            request_id: record.request_id,
            created_at: record.created_at,
            last_seen_at: record.last_seen_at,
            resolved_at: record.resolved_at,
            resolved_by: record.resolved_by,
        }
    }
}

/// A value an administrator blocked.
#[derive(Debug, Clone, SimpleObject)]
pub struct BlockedValueNode {
    pub kind: ValueKind,
    pub value: String,
    pub reason: String,
    /// The principal that blocked it.
    pub blocked_by: String,
    pub created_at: DateTime<Utc>,
}

impl From<BlockRecord> for BlockedValueNode {
    fn from(record: BlockRecord) -> Self {
        Self {
            kind: if record.kind == "email" {
                ValueKind::Email
            } else {
                ValueKind::Phone
            },
            value: record.value,
            reason: record.reason,
            blocked_by: record.blocked_by,
            created_at: record.created_at,
        }
    }
}

/// One identity a block left.
#[derive(Debug, Clone, SimpleObject)]
pub struct SplitIdentity {
    pub primary_contact_id: i32,
    pub emails: Vec<String>,
    pub phone_numbers: Vec<String>,
    pub secondary_contact_ids: Vec<i32>,
}

impl From<&Identity> for SplitIdentity {
    fn from(identity: &Identity) -> Self {
        Self {
            primary_contact_id: identity.primary_id,
            emails: identity
                .emails
                .iter()
                .map(|e| e.as_str().to_owned())
                .collect(),
            phone_numbers: identity
                .phone_numbers
                .iter()
                .map(|p| p.as_str().to_owned())
                .collect(),
            secondary_contact_ids: identity.secondary_ids.clone(),
        }
    }
}

/// One value to block or unblock: exactly one of the two.
#[derive(Debug, InputObject)]
pub struct BlockValueInput {
    pub email: Option<String>,
    pub phone_number: Option<String>,
    /// Why (kept with the block; at most 500 characters). Required to block.
    pub reason: Option<String>,
}

/// Longest reason kept with a block.
pub const MAX_REASON_CHARS: usize = 500;

impl BlockValueInput {
    /// The value, normalised as requests are (docs/SPEC.md §3).
    pub fn value(&self) -> Result<ContactValue, InputError> {
        let email = self
            .email
            .as_deref()
            .map(Email::parse)
            .transpose()?
            .flatten();
        let phone = self
            .phone_number
            .as_deref()
            .map(Phone::parse)
            .transpose()?
            .flatten();
        match (email, phone) {
            (Some(email), None) => Ok(ContactValue::Email(email)),
            (None, Some(phone)) => Ok(ContactValue::Phone(phone)),
            _ => Err(InputError::new(
                Field::Body,
                "give exactly one of email and phoneNumber",
            )),
        }
    }

    pub fn reason(&self) -> Result<&str, InputError> {
        let reason = self.reason.as_deref().map(str::trim).unwrap_or_default();
        if reason.is_empty() {
            return Err(InputError::new(Field::Body, "say why in reason"));
        }
        if let Some(control) = reason.chars().find(|c| c.is_control()) {
            return Err(InputError::new(
                Field::Body,
                format!(
                    "reason must not contain control characters (found U+{:04X})",
                    u32::from(control)
                ),
            ));
        }
        if reason.chars().count() > MAX_REASON_CHARS {
            return Err(InputError::new(
                Field::Body,
                format!("reason must be at most {MAX_REASON_CHARS} characters"),
            ));
        }
        Ok(reason)
    }
}

/// What kind of change an outbox event reports (docs/SPEC.md §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum ChangeKind {
    Created,
    Linked,
    Merged,
    Split,
    Held,
    Erased,
}

/// One identity change, in the order consumers read them.
#[derive(Debug, Clone, SimpleObject)]
#[graphql(complex)]
pub struct IdentityChange {
    /// Where this change is in the feed: resume after it with `after` (the same
    /// cursor as the change's edge in `identityEvents`).
    pub cursor: String,
    pub kind: ChangeKind,
    pub at: DateTime<Utc>,
    /// The primaries involved: the new or kept one first for merges, every
    /// component's for a split.
    pub primary_contact_ids: Vec<i32>,
    /// The contacts created, linked, demoted, split or erased.
    pub contact_ids: Vec<i32>,
    pub request_id: Option<String>,
}

#[async_graphql::ComplexObject]
impl IdentityChange {
    /// The identity the change's first primary belongs to now (values included,
    /// for `read`); null once it is gone (erased).
    #[graphql(
        guard = "RequireScope(Scope::Read)",
        complexity = "LOOKUP_COST + child_complexity"
    )]
    async fn identity(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<IdentityNode>> {
        let Some(&first) = self.primary_contact_ids.first() else {
            return Ok(None);
        };
        // Through the contact: a primary of then may be a secondary now.
        let Some(contact) = ctx
            .data_unchecked::<DataLoader<ContactLoader, HashMapCache>>()
            .load_one(ContactId(first))
            .await?
        else {
            return Ok(None);
        };
        let identity = ctx
            .data_unchecked::<DataLoader<MembersLoader, HashMapCache>>()
            .load_one(PrimaryId(contact.primary_id()))
            .await?;
        audit(ctx, None, identity.as_ref().map_or(0, |i| i.contacts.len()));
        Ok(identity.map(|identity| IdentityNode(identity, None)))
    }
}

impl From<crate::db::changes::ChangeRecord> for IdentityChange {
    fn from(record: crate::db::changes::ChangeRecord) -> Self {
        let kind = match record.kind.as_str() {
            "created" => ChangeKind::Created,
            "linked" => ChangeKind::Linked,
            "merged" => ChangeKind::Merged,
            "split" => ChangeKind::Split,
            "held" => ChangeKind::Held,
            _ => ChangeKind::Erased,
        };
        use async_graphql::connection::{CursorType, OpaqueCursor};
        Self {
            cursor: OpaqueCursor(record.position()).encode_cursor(),
            kind,
            at: record.created_at,
            primary_contact_ids: record.primary_ids,
            contact_ids: record.contact_ids,
            request_id: record.request_id,
        }
    }
}
