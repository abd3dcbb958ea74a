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
