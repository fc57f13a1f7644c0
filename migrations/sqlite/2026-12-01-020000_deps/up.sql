-- Which users each user's reference rules (e.g. `manager`) name, per target, as of its last
-- render: `ref_by` is `id`, `username` or `externalid`; `ref_value` is compared as the store
-- compares it (the id as is, the normalised userName, the encoded externalId); `resolved_id`
-- is the user it resolved to then (NULL while unresolved). A user whose entry is created,
-- renamed, moved or deleted re-queues the holders that name it or resolved to it, through the
-- two indexes, without a scan of all users.
CREATE TABLE user_references (
    target TEXT NOT NULL,
    holder_id TEXT NOT NULL,
    ref_by TEXT NOT NULL,
    ref_value TEXT NOT NULL,
    resolved_id TEXT,
    PRIMARY KEY (target, holder_id, ref_by, ref_value)
);
CREATE INDEX user_references_by_value ON user_references (target, ref_by, ref_value);
CREATE INDEX user_references_by_resolved ON user_references (target, resolved_id);

-- The reference rules `user_references` was filled for, per target: when a target's rules
-- differ (a new target, a reload), its rows are rebuilt once from every live user.
CREATE TABLE reference_index (
    target TEXT PRIMARY KEY NOT NULL,
    rules TEXT NOT NULL
);
