-- A brand-new customer: the statements the service sends, and nothing else.
\set n random(1, 2000000000)
BEGIN;
SELECT pg_advisory_xact_lock(least(e, p)), pg_advisory_xact_lock(greatest(e, p)) FROM (SELECT hashtextextended('email:' || 'b' || :client_id || '-' || :n || '@pgbench.test', 0) AS e, hashtextextended('phone:' || '8' || :client_id || :n, 0) AS p) AS keys;
SELECT id, phone_number, email, linked_id, created_at, updated_at FROM contacts WHERE deleted_at IS NULL AND id IN (SELECT coalesce(linked_id, id) FROM contacts WHERE deleted_at IS NULL AND (email = 'b' || :client_id || '-' || :n || '@pgbench.test' OR phone_number = '8' || :client_id || :n)) ORDER BY id FOR UPDATE;
INSERT INTO contacts (email, phone_number, linked_id, link_precedence, created_at, updated_at) SELECT 'b' || :client_id || '-' || :n || '@pgbench.test', '8' || :client_id || :n, NULL, 'primary'::link_precedence, clock.now, clock.now FROM (SELECT clock_timestamp() AS now) AS clock RETURNING id, phone_number, email, linked_id, created_at, updated_at;
COMMIT;
