-- scim-sync store, SQLite. Timestamps are BIGINT milliseconds since the Unix epoch.
-- Applied migrations are never edited: see migrations/README.md.

CREATE TABLE resources (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    resource_type TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    modified_ms BIGINT NOT NULL,
    data TEXT NOT NULL,
    name TEXT NOT NULL,
    name_norm TEXT NOT NULL,
    external_id TEXT,
    active BOOLEAN NOT NULL DEFAULT 1,
    password_hash TEXT,
    deleted BOOLEAN NOT NULL DEFAULT 0,
    deleted_ms BIGINT
);
-- Decides 409 uniqueness: one live resource per (type, normalised name); tombstones ignored.
CREATE UNIQUE INDEX resources_live_name ON resources (resource_type, name_norm) WHERE NOT deleted;
CREATE INDEX resources_external_id ON resources (resource_type, external_id);

CREATE TABLE resource_emails (
    resource_seq BIGINT NOT NULL REFERENCES resources (seq) ON DELETE CASCADE,
    value_norm TEXT NOT NULL,
    PRIMARY KEY (resource_seq, value_norm)
);
CREATE INDEX resource_emails_value ON resource_emails (value_norm);

CREATE TABLE group_members (
    group_seq BIGINT NOT NULL REFERENCES resources (seq),
    member_seq BIGINT NOT NULL REFERENCES resources (seq),
    added_seq BIGINT NOT NULL,
    PRIMARY KEY (group_seq, member_seq)
);
CREATE INDEX group_members_member ON group_members (member_seq);
CREATE INDEX group_members_order ON group_members (group_seq, added_seq);

CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    operation TEXT NOT NULL,
    request_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT NOT NULL,
    last_error TEXT,
    state TEXT NOT NULL DEFAULT 'pending',
    enqueued_ms BIGINT NOT NULL,
    claimed_until_ms BIGINT,
    claim_epoch BIGINT NOT NULL DEFAULT 0,
    UNIQUE (target, resource_id)
);
CREATE INDEX outbox_due ON outbox (target, state, next_attempt_ms);

CREATE TABLE target_state (
    target TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    applied_version BIGINT NOT NULL,
    target_key TEXT,
    extra TEXT,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (target, resource_id)
);

CREATE TABLE tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    last_used_ms BIGINT,
    revoked_ms BIGINT
);
CREATE UNIQUE INDEX tokens_live_name ON tokens (name) WHERE revoked_ms IS NULL;

CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms BIGINT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    operation TEXT NOT NULL,
    token_name TEXT,
    request_id TEXT,
    version BIGINT NOT NULL,
    detail TEXT
);
CREATE INDEX audit_resource ON audit (resource_id, id);
