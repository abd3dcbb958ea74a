-- A known customer with a new phone: lock, match, load, insert a secondary.
\set i random(1, :keys)
\set n random(1, 2000000000)
BEGIN;
SELECT pg_advisory_xact_lock(least(e, p)), pg_advisory_xact_lock(greatest(e, p)) FROM (SELECT hashtextextended('email:' || 'p' || :i || '@prefill.test', 0) AS e, hashtextextended('phone:' || '7' || :client_id || :n, 0) AS p) AS keys;
SELECT id, phone_number, email, linked_id, created_at, updated_at FROM contacts WHERE deleted_at IS NULL AND id IN (SELECT coalesce(linked_id, id) FROM contacts WHERE deleted_at IS NULL AND (email = 'p' || :i || '@prefill.test' OR phone_number = '7' || :client_id || :n)) ORDER BY id FOR UPDATE;
SELECT id, phone_number, email, linked_id, created_at, updated_at FROM contacts WHERE deleted_at IS NULL AND (id = ANY(ARRAY[:i]::int[]) OR linked_id = ANY(ARRAY[:i]::int[])) ORDER BY created_at, id;
INSERT INTO contacts (email, phone_number, linked_id, link_precedence, created_at, updated_at) SELECT 'p' || :i || '@prefill.test', '7' || :client_id || :n, :i::int, 'secondary'::link_precedence, clock.now, clock.now FROM (SELECT clock_timestamp() AS now) AS clock RETURNING id, phone_number, email, linked_id, created_at, updated_at;
COMMIT;
