-- A repeat customer (everything already known): lock, match, load, nothing to write.
\set i random(1, :keys)
BEGIN;
SELECT pg_advisory_xact_lock(least(e, p)), pg_advisory_xact_lock(greatest(e, p)) FROM (SELECT hashtextextended('email:' || 'p' || :i || '@prefill.test', 0) AS e, hashtextextended('phone:' || '5' || :i, 0) AS p) AS keys;
SELECT id, phone_number, email, linked_id, created_at, updated_at FROM contacts WHERE deleted_at IS NULL AND id IN (SELECT coalesce(linked_id, id) FROM contacts WHERE deleted_at IS NULL AND (email = 'p' || :i || '@prefill.test' OR phone_number = '5' || :i)) ORDER BY id FOR UPDATE;
SELECT id, phone_number, email, linked_id, created_at, updated_at FROM contacts WHERE deleted_at IS NULL AND (id = ANY(ARRAY[:i]::int[]) OR linked_id = ANY(ARRAY[:i]::int[])) ORDER BY created_at, id;
COMMIT;
