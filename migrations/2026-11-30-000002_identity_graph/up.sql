-- The evidence ledger (docs/SPEC.md §10.1): append-only, one row per change.
CREATE TYPE identity_event_kind AS ENUM (
    'created', 'linked', 'merged', 'held', 'split',
    'blocked', 'unblocked', 'approved', 'rejected'
);

CREATE TABLE identity_events (
    id              bigserial PRIMARY KEY,
    kind            identity_event_kind NOT NULL,
    contact_id      integer,
    primary_id      integer,
    from_primary_id integer,
    email           text,
    phone_number    text,
    -- For `split`: every live member of the component it made.
    contact_ids     integer[],
    held_id         bigint,
    request_id      text,
    pre_ledger      boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- History is read by member ids; evidence by value.
CREATE INDEX identity_events_contact_idx ON identity_events (contact_id)
    WHERE contact_id IS NOT NULL;
CREATE INDEX identity_events_primary_idx ON identity_events (primary_id)
    WHERE primary_id IS NOT NULL;
CREATE INDEX identity_events_from_primary_idx ON identity_events (from_primary_id)
    WHERE from_primary_id IS NOT NULL;
CREATE INDEX identity_events_merge_email_idx ON identity_events (email)
    WHERE kind IN ('merged', 'blocked');
CREATE INDEX identity_events_merge_phone_idx ON identity_events (phone_number)
    WHERE kind IN ('merged', 'blocked');
-- Splits are found by the contacts they list.
CREATE INDEX identity_events_split_members_idx ON identity_events USING gin (contact_ids)
    WHERE kind = 'split';

-- Contacts from before the ledger: each primary's creation, and each secondary's
-- link, whose evidence is the link itself (the values that made it are unknown).
INSERT INTO identity_events (kind, contact_id, primary_id, pre_ledger, created_at)
SELECT CASE WHEN linked_id IS NULL THEN 'created' ELSE 'linked' END::identity_event_kind,
       id, coalesce(linked_id, id), true, created_at
FROM contacts
ORDER BY id;

-- Values an administrator blocked (§10.3); the built-in list and the file live in
-- the server's configuration.
CREATE TABLE blocked_values (
    kind        text NOT NULL CHECK (kind IN ('email', 'phone')),
    value       text NOT NULL,
    reason      text NOT NULL,
    blocked_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (kind, value)
);

CREATE TYPE held_status AS ENUM ('pending', 'approved', 'rejected');

-- Requests held for pushing an identity over a limit (§10.3).
CREATE TABLE held_requests (
    id              bigserial PRIMARY KEY,
    email           text,
    phone_number    text,
    primary_ids     integer[] NOT NULL,
    -- Which limit: 'emails' or 'phones'.
    limit_kind      text NOT NULL CHECK (limit_kind IN ('emails', 'phones')),
    suspect_kind    text NOT NULL CHECK (suspect_kind IN ('email', 'phone')),
    suspect_value   text NOT NULL,
    status          held_status NOT NULL DEFAULT 'pending',
    times_seen      integer NOT NULL DEFAULT 1,
    request_id      text,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_seen_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    resolved_at     timestamptz,
    resolved_by     text,
    CONSTRAINT held_requests_has_value CHECK (email IS NOT NULL OR phone_number IS NOT NULL),
    CONSTRAINT held_requests_resolved CHECK ((status = 'pending') = (resolved_at IS NULL))
);

-- One pending record per pair of values: a client retrying a held request counts up.
CREATE UNIQUE INDEX held_requests_pending_idx ON held_requests (email, phone_number)
    NULLS NOT DISTINCT WHERE status = 'pending';
CREATE INDEX held_requests_status_idx ON held_requests (status, id);
