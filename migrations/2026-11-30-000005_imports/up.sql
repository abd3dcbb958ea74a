-- One row per run of the `import` subcommand (docs/SPEC.md §13): where it got to,
-- committed in the same transaction as each chunk, so that `--resume` continues
-- from the last committed chunk. Holds no contact data: counts, offsets, hashes.
CREATE TABLE imports (
    id                 bigserial PRIMARY KEY,
    -- SHA-256 of the input's first 64 KiB: how `--resume` finds the import again.
    fingerprint        text NOT NULL CHECK (fingerprint ~ '^[0-9a-f]{64}$'),
    -- What was imported, as the operator named it (a path, `-`, or a table).
    source             text NOT NULL,
    format             text NOT NULL CHECK (format IN ('ndjson', 'csv')),
    -- Input consumed by the committed chunks, and the SHA-256 of those bytes.
    lines_done         bigint NOT NULL DEFAULT 0 CHECK (lines_done >= 0),
    bytes_done         bigint NOT NULL DEFAULT 0 CHECK (bytes_done >= 0),
    prefix_sha256      text NOT NULL CHECK (prefix_sha256 ~ '^[0-9a-f]{64}$'),
    orders_read        bigint NOT NULL DEFAULT 0,
    orders_applied     bigint NOT NULL DEFAULT 0,
    orders_rejected    bigint NOT NULL DEFAULT 0,
    identities_created bigint NOT NULL DEFAULT 0,
    merges             bigint NOT NULL DEFAULT 0,
    held               bigint NOT NULL DEFAULT 0,
    -- The latest orderedAt committed: a resumed import must not go back before it.
    last_ordered_at    timestamptz,
    -- The id sequences as the last chunk left them: a resumed import puts them
    -- back when nothing else wrote since, so it draws the ids an uninterrupted
    -- import would have.
    sequences          bigint[] NOT NULL DEFAULT '{}',
    started_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at        timestamptz
);

CREATE INDEX imports_fingerprint_idx ON imports (fingerprint, id);
