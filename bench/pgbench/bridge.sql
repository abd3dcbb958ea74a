-- A bridge between two known customers: lock, match both, load both, merge the
-- younger into the older. Repeated bridges of merged pairs take the same path
-- minus the UPDATE's effect, as in the service.
\set i random(1, :keys)
\set j random(1, :keys)
-- the unlocked read that answers requests changing nothing
WITH primaries AS (SELECT DISTINCT coalesce(linked_id, id) AS id FROM contacts WHERE deleted_at IS NULL AND (email = 'p' || :i || '@prefill.test' OR phone_number = '5' || :j)) SELECT c.id, c.phone_number, c.email, c.linked_id, c.created_at, c.updated_at FROM contacts c JOIN primaries p ON c.id = p.id WHERE c.deleted_at IS NULL UNION ALL SELECT c.id, c.phone_number, c.email, c.linked_id, c.created_at, c.updated_at FROM contacts c JOIN primaries p ON c.linked_id = p.id WHERE c.deleted_at IS NULL ORDER BY created_at, id;
BEGIN;
SELECT pg_advisory_xact_lock(least(e, p)), pg_advisory_xact_lock(greatest(e, p)) FROM (SELECT hashtextextended('email:' || 'p' || :i || '@prefill.test', 0) AS e, hashtextextended('phone:' || '5' || :j, 0) AS p) AS keys;
SELECT id, phone_number, email, linked_id, created_at, updated_at FROM contacts WHERE deleted_at IS NULL AND id IN (SELECT coalesce(linked_id, id) FROM contacts WHERE deleted_at IS NULL AND (email = 'p' || :i || '@prefill.test' OR phone_number = '5' || :j)) ORDER BY id FOR UPDATE;
WITH primaries AS (SELECT DISTINCT coalesce(linked_id, id) AS id FROM contacts WHERE deleted_at IS NULL AND (email = 'p' || :i || '@prefill.test' OR phone_number = '5' || :j)) SELECT c.id, c.phone_number, c.email, c.linked_id, c.created_at, c.updated_at FROM contacts c JOIN primaries p ON c.id = p.id WHERE c.deleted_at IS NULL UNION ALL SELECT c.id, c.phone_number, c.email, c.linked_id, c.created_at, c.updated_at FROM contacts c JOIN primaries p ON c.linked_id = p.id WHERE c.deleted_at IS NULL ORDER BY created_at, id;
SELECT kind, value FROM blocked_values WHERE (kind = 'email' AND value = 'p' || :i || '@prefill.test') OR (kind = 'phone' AND value = '5' || :j);
UPDATE contacts SET linked_id = least(:i::int, :j::int), link_precedence = 'secondary', updated_at = clock_timestamp() WHERE :i::int <> :j::int AND (id = greatest(:i::int, :j::int) OR linked_id = greatest(:i::int, :j::int)) AND id <> least(:i::int, :j::int);
WITH events AS (INSERT INTO identity_events (kind, contact_id, primary_id, email, phone_number, request_id) SELECT 'merged', greatest(:i::int, :j::int), least(:i::int, :j::int), 'p' || :i || '@prefill.test', '5' || :j, 'pgbench' WHERE :i::int <> :j::int) INSERT INTO identity_changes (kind, primary_ids, contact_ids, request_id) SELECT 'merged', ARRAY[least(:i::int, :j::int), greatest(:i::int, :j::int)], ARRAY[greatest(:i::int, :j::int)], 'pgbench' WHERE :i::int <> :j::int;
COMMIT;
