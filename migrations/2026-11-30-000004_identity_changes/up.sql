-- The change-event outbox (docs/SPEC.md §12): one row per change, written in the
-- transaction that makes it, read in a gap-free order (see docs/ARCHITECTURE.md).
CREATE TABLE identity_changes (
    id          bigserial PRIMARY KEY,
    -- The writing transaction: a reader serves only rows of transactions older than
    -- every transaction still running, in (xid, id) order.
    xid         xid8 NOT NULL DEFAULT pg_current_xact_id(),
    kind        text NOT NULL
                CHECK (kind IN ('created', 'linked', 'merged', 'split', 'held', 'erased')),
    primary_ids integer[] NOT NULL,
    contact_ids integer[] NOT NULL,
    request_id  text,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX identity_changes_position_idx ON identity_changes (xid, id);
CREATE INDEX identity_changes_created_idx ON identity_changes (created_at);

-- The newest position retention pruned: a cursor at or below it lost events.
CREATE TABLE identity_changes_pruned (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    xid       xid8 NOT NULL,
    id        bigint NOT NULL
);
