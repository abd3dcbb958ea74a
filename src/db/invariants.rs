//! Set-based checks of invariants I1–I3 (docs/SPEC.md §4) over a whole database, used by the
//! test suite after every scenario and by operators after incidents.

use diesel::sql_types::{Array, BigInt, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// One invariant's result: how many rows break it, and a few of them.
#[derive(Debug, Clone, PartialEq, Eq, diesel::QueryableByName)]
pub struct InvariantReport {
    #[diesel(sql_type = Text)]
    pub invariant: String,
    #[diesel(sql_type = BigInt)]
    pub violations: i64,
    #[diesel(sql_type = Array<Text>)]
    pub examples: Vec<String>,
}

/// Each check yields one `detail` text per violating row (or value).
const CHECKS: &[(&str, &str)] = &[
    (
        "I1: every live secondary links to a live primary",
        "SELECT format('contact %s links to %s, which is %s', s.id, s.linked_id, \
                CASE WHEN p.id IS NULL THEN 'missing' \
                     WHEN p.deleted_at IS NOT NULL THEN 'deleted' \
                     ELSE 'a secondary' END) AS detail \
         FROM contacts s LEFT JOIN contacts p ON p.id = s.linked_id \
         WHERE s.deleted_at IS NULL AND s.linked_id IS NOT NULL \
           AND (p.id IS NULL OR p.deleted_at IS NOT NULL OR p.linked_id IS NOT NULL)",
    ),
    (
        "I1: link_precedence agrees with linked_id",
        "SELECT format('contact %s is %s with linked_id %s', id, link_precedence, \
                coalesce(linked_id::text, 'null')) AS detail \
         FROM contacts \
         WHERE (link_precedence = 'primary') <> (linked_id IS NULL)",
    ),
    (
        "I2: the primary is the oldest contact of its identity",
        "SELECT format('contact %s is older than its primary %s', s.id, p.id) AS detail \
         FROM contacts s JOIN contacts p ON p.id = s.linked_id \
         WHERE s.deleted_at IS NULL AND p.deleted_at IS NULL \
           AND (s.created_at, s.id) < (p.created_at, p.id)",
    ),
    (
        "I3: no email belongs to two identities",
        "SELECT format('email #%s is in %s identities', md5(email), \
                count(DISTINCT coalesce(linked_id, id))) AS detail \
         FROM contacts WHERE deleted_at IS NULL AND email IS NOT NULL \
         GROUP BY email HAVING count(DISTINCT coalesce(linked_id, id)) > 1",
    ),
    (
        "I3: no phone number belongs to two identities",
        "SELECT format('phone #%s is in %s identities', md5(phone_number), \
                count(DISTINCT coalesce(linked_id, id))) AS detail \
         FROM contacts WHERE deleted_at IS NULL AND phone_number IS NOT NULL \
         GROUP BY phone_number HAVING count(DISTINCT coalesce(linked_id, id)) > 1",
    ),
    (
        "I6: no contact holds a value an administrator blocked",
        "SELECT format('contact %s holds a blocked email #%s', c.id, md5(c.email)) AS detail \
         FROM contacts c JOIN blocked_values b ON b.kind = 'email' AND b.value = c.email \
         UNION ALL \
         SELECT format('contact %s holds a blocked phone #%s', c.id, md5(c.phone_number)) \
         FROM contacts c JOIN blocked_values b ON b.kind = 'phone' AND b.value = c.phone_number",
    ),
    (
        "ledger: every live contact has the event that created or linked it",
        "SELECT format('contact %s has no created or linked event', c.id) AS detail \
         FROM contacts c WHERE c.deleted_at IS NULL AND NOT EXISTS ( \
             SELECT 1 FROM identity_events e \
             WHERE e.contact_id = c.id AND e.kind IN ('created', 'linked'))",
    ),
    (
        "ledger: every held request has its held event",
        "SELECT format('held request %s has no held event', h.id) AS detail \
         FROM held_requests h WHERE NOT EXISTS ( \
             SELECT 1 FROM identity_events e WHERE e.kind = 'held' AND e.held_id = h.id)",
    ),
    (
        "erasure: no erased contact exists again",
        "SELECT format('contact %s was erased but exists', c.id) AS detail \
         FROM erasures e CROSS JOIN LATERAL unnest(e.contact_ids) AS erased(id) \
         JOIN contacts c ON c.id = erased.id",
    ),
    (
        "imports: every import's counts add up",
        "SELECT format('import %s: %s orders read, %s applied, %s rejected, %s lines done', \
                id, orders_read, orders_applied, orders_rejected, lines_done) AS detail \
         FROM imports \
         WHERE orders_read <> orders_applied + orders_rejected OR orders_read > lines_done \
            OR identities_created + held > orders_applied",
    ),
];

/// How many examples each report carries.
const EXAMPLES: usize = 5;

/// Runs every check; each report says how many violations it found.
pub async fn check(conn: &mut AsyncPgConnection) -> diesel::QueryResult<Vec<InvariantReport>> {
    let mut reports = Vec::with_capacity(CHECKS.len());
    for (invariant, violations_sql) in CHECKS {
        // Values are shown hashed: the report may be pasted into a ticket.
        let sql = format!(
            "SELECT $1 AS invariant, count(*) AS violations, \
                    coalesce((array_agg(detail))[1:{EXAMPLES}], '{{}}') AS examples \
             FROM ({violations_sql}) AS violations"
        );
        let report: InvariantReport = diesel::sql_query(sql)
            .bind::<Text, _>(*invariant)
            .get_result(conn)
            .await?;
        reports.push(report);
    }
    Ok(reports)
}

/// I7 (docs/SPEC.md §10.1): every identity recomputed from the live contacts and the
/// ledger's evidence alone, compared with the identities of `linked_id`. Reads the
/// whole graph into memory: an operator's tool, not a hot path.
pub async fn check_evidence(conn: &mut AsyncPgConnection) -> diesel::QueryResult<InvariantReport> {
    use std::collections::{BTreeMap, BTreeSet};

    use diesel::{ExpressionMethods, QueryDsl, SelectableHelper};

    use super::contacts::ContactRecord;
    use super::schema::contacts;
    use crate::domain::{Contact, components, live_evidence};

    let rows: Vec<ContactRecord> = contacts::table
        .filter(contacts::deleted_at.is_null())
        .select(ContactRecord::as_select())
        .load(conn)
        .await?;
    let live: Vec<Contact> = rows.into_iter().map(Contact::from).collect();
    let evidence = live_evidence(super::graph::all_evidence(conn).await?);
    let mut linked: BTreeMap<i32, BTreeSet<i32>> = BTreeMap::new();
    for contact in &live {
        linked
            .entry(contact.primary_id())
            .or_default()
            .insert(contact.id);
    }
    let mut examples = Vec::new();
    let mut violations = 0;
    for component in components(&live, &evidence) {
        let primaries: BTreeSet<i32> = component.iter().map(Contact::primary_id).collect();
        let ids: BTreeSet<i32> = component.iter().map(|c| c.id).collect();
        let whole = primaries.len() == 1
            && primaries
                .iter()
                .next()
                .is_some_and(|primary| linked.get(primary) == Some(&ids));
        if whole {
            continue;
        }
        violations += 1;
        if examples.len() < EXAMPLES {
            let primaries: Vec<String> = primaries.iter().map(i32::to_string).collect();
            examples.push(if primaries.len() > 1 {
                format!(
                    "evidence joins identities {} that linked_id keeps apart",
                    primaries.join(", ")
                )
            } else {
                format!(
                    "identity {} holds contacts no evidence joins to contact {}",
                    primaries.join(", "),
                    component[0].id
                )
            });
        }
    }
    Ok(InvariantReport {
        invariant: "I7: evidence alone rebuilds every identity (check --deep)".to_owned(),
        violations,
        examples,
    })
}
