-- O(change) memberships (issue 9) and foreign members (issue 13 item 5); see
-- docs/ARCHITECTURE.md, "The outbox, precisely".
--
-- member_log: per group, the versions whose membership changes member_changes holds. Every
-- version bump of a group by this release moves logged_version to the new version; one that
-- finds logged_version short of the previous version (a group changed by an older release, or
-- before this table existed) restarts the log there (complete_from = the new version).
-- pruned_to: the highest version whose rows were pruned (every configured target had applied
-- it). The log covers (applied, current] only when complete_from <= applied + 1, pruned_to <=
-- applied and logged_version = current; anything else is a gap and the worker reads the whole
-- membership.
CREATE TABLE member_log (
    group_seq BIGINT PRIMARY KEY NOT NULL,
    logged_version BIGINT NOT NULL,
    complete_from BIGINT NOT NULL,
    pruned_to BIGINT NOT NULL DEFAULT 0
);
-- The members whose membership changed, with the last group version that changed it (one row
-- per member: a burst coalesces). Pruned once every target applied past it.
CREATE TABLE member_changes (
    group_seq BIGINT NOT NULL,
    member_seq BIGINT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (group_seq, member_seq)
);
CREATE INDEX member_changes_version ON member_changes (group_seq, version);
-- Per target: the members whose rendered value may have changed without a membership change
-- (their key changed, their active flag flipped), marked in the transaction that queues the
-- group; mark goes up with every new marking, so a worker clears only what it read.
CREATE TABLE member_dirty (
    target TEXT NOT NULL,
    group_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    mark BIGINT NOT NULL,
    PRIMARY KEY (target, group_id, member_id)
);
-- Per target: the member values we wrote (or are about to write) into a group's entry or
-- rows, and for which member. A superset of what we wrote: recorded before the write,
-- forgotten after the value was removed. foreign_members = "keep" removes only these.
-- written: the write succeeded and no apply has set out to remove the value since (set after
-- the write, cleared before a delete), so an apply can skip adding it.
CREATE TABLE target_members (
    target TEXT NOT NULL,
    group_id TEXT NOT NULL,
    member_value TEXT NOT NULL,
    member_id TEXT NOT NULL,
    written BOOLEAN NOT NULL DEFAULT 0,
    PRIMARY KEY (target, group_id, member_value)
);
CREATE INDEX target_members_member ON target_members (target, group_id, member_id);
