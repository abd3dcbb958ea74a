-- The minimal floor (issue 14): the least SQL a correct identify needs for a
-- repeat customer. One indexed locking read of the matching rows.
\set i random(1, :keys)
BEGIN;
SELECT id, phone_number, email, linked_id, created_at, updated_at FROM contacts WHERE deleted_at IS NULL AND (email = 'p' || :i || '@prefill.test' OR phone_number = '5' || :i) FOR UPDATE;
COMMIT;
