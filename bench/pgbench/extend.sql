-- A known customer with a new phone: lock, match, load, insert a secondary.
\set i random(1, :keys)
\set n random(1, 2000000000)
-- the unlocked read that answers requests changing nothing
WITH primaries AS (SELECT DISTINCT coalesce(linked_id, id) AS id FROM contacts WHERE deleted_at IS NULL AND (email = 'p' || :i || '@prefill.test' OR phone_number = '7' || :client_id || :n)) SELECT c.id, c.phone_number, c.email, c.linked_id, c.created_at, c.updated_at FROM contacts c JOIN primaries p ON c.id = p.id WHERE c.deleted_at IS NULL UNION ALL SELECT c.id, c.phone_number, c.email, c.linked_id, c.created_at, c.updated_at FROM contacts c JOIN primaries p ON c.linked_id = p.id WHERE c.deleted_at IS NULL ORDER BY created_at, id;
BEGIN;
SELECT pg_advisory_xact_lock(least(e, p)), pg_advisory_xact_lock(greatest(e, p)) FROM (SELECT hashtextextended('email:' || 'p' || :i || '@prefill.test', 0) AS e, hashtextextended('phone:' || '7' || :client_id || :n, 0) AS p) AS keys;
SELECT id, phone_number, email, linked_id, created_at, updated_at FROM contacts WHERE deleted_at IS NULL AND id IN (SELECT coalesce(linked_id, id) FROM contacts WHERE deleted_at IS NULL AND (email = 'p' || :i || '@prefill.test' OR phone_number = '7' || :client_id || :n)) ORDER BY id FOR UPDATE;
WITH primaries AS (SELECT DISTINCT coalesce(linked_id, id) AS id FROM contacts WHERE deleted_at IS NULL AND (email = 'p' || :i || '@prefill.test' OR phone_number = '7' || :client_id || :n)) SELECT c.id, c.phone_number, c.email, c.linked_id, c.created_at, c.updated_at FROM contacts c JOIN primaries p ON c.id = p.id WHERE c.deleted_at IS NULL UNION ALL SELECT c.id, c.phone_number, c.email, c.linked_id, c.created_at, c.updated_at FROM contacts c JOIN primaries p ON c.linked_id = p.id WHERE c.deleted_at IS NULL ORDER BY created_at, id;
INSERT INTO contacts (email, phone_number, linked_id, link_precedence, created_at, updated_at) SELECT 'p' || :i || '@prefill.test', '7' || :client_id || :n, :i::int, 'secondary'::link_precedence, clock.now, clock.now FROM (SELECT clock_timestamp() AS now) AS clock RETURNING id, phone_number, email, linked_id, created_at, updated_at;
COMMIT;
