-- API keys for servers calling the service (docs/SPEC.md §9). Only a hash of each
-- secret is kept: a copy of this table lets nobody call the API.
CREATE TABLE api_keys (
    -- The public part of a key (`irk_<id>_<secret>`): 16 hex digits.
    id            text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{16}$'),
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    scopes        text[] NOT NULL,
    -- SHA-256 of the secret part, hex.
    secret_sha256 text NOT NULL CHECK (secret_sha256 ~ '^[0-9a-f]{64}$'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);
