-- Erasure (docs/SPEC.md §11).
ALTER TYPE identity_event_kind ADD VALUE 'erased';

-- What was erased, without the values: ids, and a keyed hash of each value.
CREATE TABLE erasures (
    id           bigserial PRIMARY KEY,
    -- Null when only traces (a held request, a block) carried the value.
    primary_id   integer,
    contact_ids  integer[] NOT NULL,
    value_hashes text[] NOT NULL,
    erased_by    text NOT NULL,
    request_id   text,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The key of those hashes: made once, by the first erasure.
CREATE TABLE erasure_key (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    key        bytea NOT NULL CHECK (length(key) = 32),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
