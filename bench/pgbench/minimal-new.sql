-- The minimal floor (issue 14): the least SQL a correct identify needs for a new
-- customer. One indexed locking read of the matching rows, then one insert.
\set n random(1, 2000000000)
BEGIN;
SELECT id, phone_number, email, linked_id, created_at, updated_at FROM contacts WHERE deleted_at IS NULL AND (email = 'm' || :client_id || '-' || :n || '@pgbench.test' OR phone_number = '6' || :client_id || :n) FOR UPDATE;
INSERT INTO contacts (email, phone_number, link_precedence) VALUES ('m' || :client_id || '-' || :n || '@pgbench.test', '6' || :client_id || :n, 'primary') RETURNING id, phone_number, email, linked_id, created_at, updated_at;
COMMIT;
