CREATE TYPE link_precedence AS ENUM ('primary', 'secondary');

CREATE TABLE contacts (
    id              serial PRIMARY KEY,
    phone_number    text,
    email           text,
    linked_id       integer REFERENCES contacts (id),
    link_precedence link_precedence NOT NULL DEFAULT 'primary',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz,
    -- A primary heads its identity; a secondary points at a primary other than itself.
    CONSTRAINT contacts_link_consistent CHECK (
        (link_precedence = 'primary' AND linked_id IS NULL)
        OR (link_precedence = 'secondary' AND linked_id IS NOT NULL AND linked_id <> id)
    ),
    -- A contact with neither value could never be matched and would only be noise.
    CONSTRAINT contacts_has_value CHECK (email IS NOT NULL OR phone_number IS NOT NULL)
);

-- The hot path looks up live rows by value, then the members of an identity by primary.
CREATE INDEX contacts_email_live_idx ON contacts (email)
    WHERE deleted_at IS NULL AND email IS NOT NULL;
CREATE INDEX contacts_phone_number_live_idx ON contacts (phone_number)
    WHERE deleted_at IS NULL AND phone_number IS NOT NULL;
CREATE INDEX contacts_linked_id_idx ON contacts (linked_id)
    WHERE linked_id IS NOT NULL;
