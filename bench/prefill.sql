-- Prefills `contacts` for the table-size benchmarks: :rows contacts in identities of
-- two (a primary and one secondary), the secondaries younger than their primaries.
-- Run on an empty, migrated database:
--   psql "$DATABASE_URL" -v rows=1000000 -f bench/prefill.sql
\set primaries (:rows / 2)
BEGIN;
INSERT INTO contacts (id, email, phone_number, linked_id, link_precedence, created_at, updated_at)
SELECT i, 'p' || i || '@prefill.test', '5' || i, NULL, 'primary',
       timestamptz '2024-01-01' + i * interval '1 millisecond',
       timestamptz '2024-01-01' + i * interval '1 millisecond'
FROM generate_series(1, :primaries) AS i;
INSERT INTO contacts (id, email, phone_number, linked_id, link_precedence, created_at, updated_at)
SELECT :primaries + i, 's' || i || '@prefill.test', '5' || i, i, 'secondary',
       timestamptz '2025-01-01' + i * interval '1 millisecond',
       timestamptz '2025-01-01' + i * interval '1 millisecond'
FROM generate_series(1, :primaries) AS i;
SELECT setval('contacts_id_seq', (SELECT max(id) FROM contacts));
-- Their evidence, as the ledger's migration records data from before it.
INSERT INTO identity_events (kind, contact_id, primary_id, pre_ledger, created_at)
SELECT CASE WHEN linked_id IS NULL THEN 'created' ELSE 'linked' END::identity_event_kind,
       id, coalesce(linked_id, id), true, created_at
FROM contacts ORDER BY id;
COMMIT;
ANALYZE contacts;
ANALYZE identity_events;
