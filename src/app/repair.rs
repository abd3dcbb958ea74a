//! Administrators' repairs of the identity graph (docs/SPEC.md §10.3–§10.4): blocking
//! a value (which splits what it joined), unblocking it, and resolving held requests.
//!
//! Each takes the same locks as `identify` (the values' advisory locks, then the
//! matched primaries `FOR UPDATE`), so it serialises with every identify touching
//! the identities it changes and with nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;

use diesel_async::{AsyncConnection, AsyncPgConnection};

use crate::app::error::{AttemptError, ServiceError};
use crate::app::identify::{Identified, Options, Policy, identify_once, screen_request};
use crate::db::graph::{self, HeldRecord, SplitComponent};
use crate::db::protocol::{self, Blocks, Retry, Values};
use crate::db::{DbPool, erasure};
use crate::domain::{
    Contact, ContactValue, Email, Evidence, IdentifyRequest, Identity, Limits, Phone, components,
    live_evidence,
};

/// Who asks and under which request, for the ledger and the tables' audit columns.
#[derive(Debug, Clone, Copy)]
pub struct Actor<'a> {
    pub principal: &'a str,
    pub request_id: Option<&'a str>,
}

/// What blocking a value did.
#[derive(Debug, Clone)]
pub struct Blocked {
    pub value: ContactValue,
    pub contacts_changed: usize,
    pub contacts_deleted: usize,
    /// The identities the value's identities split into, in their primaries' order.
    pub split_into: Vec<Identity>,
}

impl Blocked {
    /// Change events the block wrote: one SPLIT for all the identities it touched.
    pub fn events(&self) -> u64 {
        u64::from(!self.split_into.is_empty())
    }
}

/// Runs `$body` (with the transaction's connection as `$conn`, and the values found
/// blocked so far as `$blocked`) in the protocol's retry loop, each attempt after
/// [`protocol::serialize_repair`]. A macro: an async closure's future cannot be
/// required to be `Send` in a generic function's bounds.
macro_rules! with_retry {
    ($pool:expr, |$conn:ident, $blocked:ident| $body:expr) => {{
        let mut connection = $pool.get().await?;
        let mut retry = Retry::new();
        loop {
            let $blocked = retry.blocked().clone();
            let result = connection
                .transaction(async |$conn| {
                    protocol::serialize_repair($conn).await?;
                    $body
                })
                .await;
            if let ControlFlow::Break(done) = retry.settle(result).await {
                break done.map_err(ServiceError::from);
            }
        }
    }};
}

/// Blocks `value`, removes it from every contact and re-splits the identities that
/// held it (docs/SPEC.md §10.4).
pub async fn block_value(
    pool: &DbPool,
    value: ContactValue,
    reason: &str,
    actor: Actor<'_>,
) -> Result<Blocked, ServiceError> {
    with_retry!(pool, |conn, _blocked| block_once(
        conn, &value, reason, actor
    )
    .await)
}

async fn block_once(
    conn: &mut AsyncPgConnection,
    value: &ContactValue,
    reason: &str,
    actor: Actor<'_>,
) -> Result<Blocked, AttemptError> {
    let members = protocol::lock_and_load(conn, &Values::one(value), Blocks::Ignore)
        .await?
        .members;
    graph::insert_block(conn, value, reason, actor.principal, actor.request_id).await?;

    // The members as they will be: without the value; those left empty go.
    let mut by_primary: BTreeMap<i32, Vec<Contact>> = BTreeMap::new();
    for record in members {
        let mut contact = Contact::from(record);
        match value {
            ContactValue::Email(email) if contact.email.as_ref() == Some(email) => {
                contact.email = None;
            }
            ContactValue::Phone(phone) if contact.phone.as_ref() == Some(phone) => {
                contact.phone = None;
            }
            _ => {}
        }
        by_primary
            .entry(contact.primary_id())
            .or_default()
            .push(contact);
    }
    let member_ids: Vec<i32> = by_primary.values().flatten().map(|c| c.id).collect();
    let survivors: Vec<&Contact> = by_primary
        .values()
        .flatten()
        .filter(|c| c.email.is_some() || c.phone.is_some())
        .collect();
    let emails: Vec<&str> = survivors
        .iter()
        .filter_map(|c| c.email.as_ref().map(Email::as_str))
        .collect();
    let phones: Vec<&str> = survivors
        .iter()
        .filter_map(|c| c.phone.as_ref().map(Phone::as_str))
        .collect();
    // A split re-derives its identities from values and the ledger's own evidence:
    // pre-ledger links inside them end here.
    let evidence: Vec<Evidence> =
        live_evidence(graph::evidence_for(conn, &emails, &phones, &member_ids).await?)
            .into_iter()
            .filter(|edge| matches!(edge, Evidence::Pair { .. }))
            .collect();

    let mut relink_ids = Vec::new();
    let mut relink_to = Vec::new();
    let mut split_into = Vec::new();
    let mut splits = Vec::new();
    let mut moves = Vec::new();
    for (old_primary, members) in &by_primary {
        let remaining: Vec<Contact> = members
            .iter()
            .filter(|c| c.email.is_some() || c.phone.is_some())
            .cloned()
            .collect();
        let parts = components(&remaining, &evidence);
        // Soft-deleted rows follow the old primary's component, else the oldest one.
        let heir = parts
            .iter()
            .find(|part| part.iter().any(|c| c.id == *old_primary))
            .or(parts.first())
            .map(|part| part[0].id);
        if heir != Some(*old_primary) {
            moves.push((*old_primary, heir));
        }
        for part in parts {
            let primary_id = part[0].id;
            let mut relinked = Vec::with_capacity(part.len());
            for mut contact in part {
                relink_ids.push(contact.id);
                contact.linked_id = (contact.id != primary_id).then_some(primary_id);
                relink_to.push(contact.linked_id);
                relinked.push(contact);
            }
            splits.push((
                primary_id,
                relinked.iter().map(|c| c.id).collect(),
                *old_primary,
            ));
            split_into.push(Identity::from_members(primary_id, relinked));
        }
    }
    graph::relink(conn, &relink_ids, &relink_to).await?;
    for (from, to) in moves {
        graph::relink_deleted(conn, from, to).await?;
    }
    let (contacts_deleted, contacts_changed) = graph::remove_value(conn, value).await?;
    let components: Vec<SplitComponent<'_>> = splits
        .into_iter()
        .map(
            |(primary_id, contact_ids, from_primary_id)| SplitComponent {
                primary_id,
                contact_ids,
                from_primary_id,
                value,
            },
        )
        .collect();
    graph::record_splits(conn, &components, actor.request_id).await?;
    split_into.sort_by_key(|identity| identity.contacts.first().map(Contact::contact_order));
    Ok(Blocked {
        value: value.clone(),
        contacts_changed,
        contacts_deleted,
        split_into,
    })
}

/// Removes a block without re-merging anything; `false` when it was not blocked.
pub async fn unblock_value(
    pool: &DbPool,
    value: ContactValue,
    actor: Actor<'_>,
) -> Result<bool, ServiceError> {
    with_retry!(pool, |conn, _blocked| {
        // The value's lock, as a block takes it: the two serialise.
        protocol::lock_values(conn, &Values::one(&value)).await?;
        Ok::<_, AttemptError>(graph::delete_block(conn, &value, actor.request_id).await?)
    })
}

fn pending(held: Option<HeldRecord>, id: i64) -> Result<HeldRecord, AttemptError> {
    let held = held.ok_or_else(|| {
        AttemptError::Refused(ServiceError::NotFound(format!("no held request {id}")))
    })?;
    if held.status != "pending" {
        return Err(AttemptError::Refused(ServiceError::Refused(format!(
            "held request {id} is already {}",
            held.status
        ))));
    }
    Ok(held)
}

/// Applies a held request as identify would without the limits, and marks it
/// approved, in one transaction.
pub async fn approve_held(
    pool: &DbPool,
    id: i64,
    policy: &Policy,
    actor: Actor<'_>,
) -> Result<(Identified, HeldRecord), ServiceError> {
    with_retry!(pool, |conn, blocked| {
        // The values' locks come before the record's, as in identify (which updates
        // the record under them), so the two cannot deadlock.
        let unlocked = pending(graph::find_held(conn, id, false).await?, id)?;
        let request = IdentifyRequest::new(
            unlocked.email.clone().map(Email::from_stored),
            unlocked.phone_number.clone().map(Phone::from_stored),
        )
        .map_err(|err| AttemptError::Refused(ServiceError::Refused(err.to_string())))?;
        protocol::lock_values(conn, &Values::of(&request)).await?;
        let held = pending(graph::find_held(conn, id, true).await?, id)?;
        let request = screen_request(&request, policy, &blocked).map_err(AttemptError::Refused)?;
        let options = Options {
            limits: Limits::default(),
            request_id: actor.request_id,
        };
        let identified = identify_once(conn, &request, options).await?;
        let record = graph::resolve_held(
            conn,
            &held,
            Some(identified.identity.primary_id),
            actor.principal,
            actor.request_id,
        )
        .await?;
        Ok::<_, AttemptError>((identified, record))
    })
}

/// Marks a held request rejected; with `block_suspect`, also blocks its suspect
/// value as [`block_value`] does, in the same transaction.
pub async fn reject_held(
    pool: &DbPool,
    id: i64,
    block_suspect: bool,
    actor: Actor<'_>,
) -> Result<(HeldRecord, Option<Blocked>), ServiceError> {
    let reason = format!("suspect value of rejected held request {id}");
    with_retry!(pool, |conn, _blocked| {
        // The values' locks before the record's, as in identify and approveHeld.
        let unlocked = pending(graph::find_held(conn, id, false).await?, id)?;
        let email = unlocked.email.as_deref();
        let phone = unlocked.phone_number.as_deref();
        protocol::lock_values(conn, &Values::new(email, phone)).await?;
        let held = pending(graph::find_held(conn, id, true).await?, id)?;
        let record =
            graph::resolve_held(conn, &held, None, actor.principal, actor.request_id).await?;
        let blocked = match (block_suspect, record.suspect()) {
            (true, Some(suspect)) => Some(block_once(conn, &suspect, &reason, actor).await?),
            _ => None,
        };
        Ok::<_, AttemptError>((record, blocked))
    })
}

/// Whom `erase` forgets (docs/SPEC.md §11).
#[derive(Debug, Clone)]
pub enum ErasureTarget {
    /// The identity holding this value, and every trace of the value itself.
    Value(ContactValue),
    /// The identity this live primary heads.
    Primary(i32),
}

/// What an erasure removed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Erased {
    /// The erased identity's primary; `None` when only traces carried the value.
    pub primary_contact_id: Option<i32>,
    pub contacts_erased: usize,
    pub values_erased: usize,
    pub events_redacted: usize,
    pub held_requests_erased: usize,
    pub blocks_erased: usize,
}

/// Forgets an identity: its contacts and every trace of its values, in one
/// transaction, under the locks of every one of its values.
pub async fn erase(
    pool: &DbPool,
    target: ErasureTarget,
    actor: Actor<'_>,
) -> Result<Erased, ServiceError> {
    with_retry!(pool, |conn, _blocked| erase_once(conn, &target, actor)
        .await)
}

async fn erase_once(
    conn: &mut AsyncPgConnection,
    target: &ErasureTarget,
    actor: Actor<'_>,
) -> Result<Erased, AttemptError> {
    let not_found = |what: String| AttemptError::Refused(ServiceError::NotFound(what));
    // Unlocked first, to learn which values to lock; checked again under the locks.
    let primary_id = match target {
        ErasureTarget::Value(value) => {
            erasure::primary_holding(
                conn,
                value.email().map(Email::as_str),
                value.phone().map(Phone::as_str),
            )
            .await?
        }
        ErasureTarget::Primary(id) => {
            let rows = erasure::identity_rows(conn, *id).await?;
            if !rows
                .iter()
                .any(|row| row.id == *id && row.linked_id.is_none())
            {
                return Err(not_found(format!("no primary contact {id}")));
            }
            Some(*id)
        }
    };
    let rows = match primary_id {
        Some(primary_id) => erasure::identity_rows(conn, primary_id).await?,
        None => Vec::new(),
    };
    let (mut emails, mut phones) = values_of(&rows);
    if let ErasureTarget::Value(value) = target {
        match value {
            ContactValue::Email(email) => emails.insert(email.as_str().to_owned()),
            ContactValue::Phone(phone) => phones.insert(phone.as_str().to_owned()),
        };
    }
    // The customer's held requests carry their values too, and perhaps one no
    // contact holds (the new value that was held back): that one goes as well.
    let (held_emails, held_phones) = erasure::held_values(
        conn,
        &emails.iter().cloned().collect::<Vec<_>>(),
        &phones.iter().cloned().collect::<Vec<_>>(),
    )
    .await?;
    for email in held_emails {
        let holder = erasure::primary_holding(conn, Some(&email), None).await?;
        if holder.is_none() || holder == primary_id {
            emails.insert(email);
        }
    }
    for phone in held_phones {
        let holder = erasure::primary_holding(conn, None, Some(&phone)).await?;
        if holder.is_none() || holder == primary_id {
            phones.insert(phone);
        }
    }
    let emails: Vec<String> = emails.into_iter().collect();
    let phones: Vec<String> = phones.into_iter().collect();
    let values = Values::new(
        emails.iter().map(String::as_str),
        phones.iter().map(String::as_str),
    );
    let locked = protocol::lock_and_load(conn, &values, Blocks::Ignore).await?;

    // Under the locks the identity must be the one read, and nobody else may hold a
    // value about to be erased: it would be theirs too.
    let locked_primaries: Vec<i32> = locked.primaries.iter().map(|row| row.id).collect();
    if locked_primaries != primary_id.into_iter().collect::<Vec<_>>() {
        return Err(AttemptError::Raced);
    }
    // Its rows, soft-deleted ones included, under its primary's lock: none may hold a
    // value that was not locked.
    let locked_rows = match primary_id {
        Some(primary_id) => erasure::identity_rows(conn, primary_id).await?,
        None => Vec::new(),
    };
    let (locked_emails, locked_phones) = values_of(&locked_rows);
    if locked_emails.iter().any(|e| !emails.contains(e))
        || locked_phones.iter().any(|p| !phones.contains(p))
    {
        return Err(AttemptError::Raced);
    }

    let purged = erasure::purge(conn, primary_id, &emails, &phones).await?;
    if primary_id.is_none() && purged == erasure::Purged::default() {
        return Err(not_found("nothing holds that value".to_owned()));
    }
    let key = erasure::erasure_key(conn).await?;
    let hashes: Vec<String> = emails
        .iter()
        .map(|e| keyed_hash(&key, "email", e))
        .chain(phones.iter().map(|p| keyed_hash(&key, "phone", p)))
        .collect();
    let contact_ids: Vec<i32> = locked_rows.iter().map(|row| row.id).collect();
    erasure::record(
        conn,
        primary_id,
        &contact_ids,
        &hashes,
        actor.principal,
        actor.request_id,
    )
    .await?;
    Ok(Erased {
        primary_contact_id: primary_id,
        contacts_erased: purged.contacts,
        values_erased: hashes.len(),
        events_redacted: purged.events_redacted,
        held_requests_erased: purged.held_requests,
        blocks_erased: purged.blocks,
    })
}

fn values_of(rows: &[erasure::ErasedRow]) -> (BTreeSet<String>, BTreeSet<String>) {
    let emails = rows.iter().filter_map(|row| row.email.clone()).collect();
    let phones = rows
        .iter()
        .filter_map(|row| row.phone_number.clone())
        .collect();
    (emails, phones)
}

/// HMAC-SHA256 of `kind:value` under the database's erasure key, in hex.
fn keyed_hash(key: &[u8], kind: &str, value: &str) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(kind.as_bytes());
    mac.update(b":");
    mac.update(value.as_bytes());
    crate::auth::keys::hex(&mac.finalize().into_bytes())
}
