-- The daemons sharing this database (docs/ARCHITECTURE.md, "Several instances"): each
-- registers at startup and renews `heartbeat_ms` every `reconcile.heartbeat_secs`. The claims
-- of an instance whose heartbeat is older than its own `takeover_ms` are taken over by the
-- others; taking over bumps `incarnation` (under the row's lock), so the late heartbeat of
-- an instance that was stopped finds it moved and that instance writes nothing more under
-- the claims it held. `heartbeat_ms = 0`: stopped cleanly.
CREATE TABLE instances (
    id TEXT PRIMARY KEY NOT NULL,
    host TEXT NOT NULL,
    version TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    started_ms BIGINT NOT NULL,
    heartbeat_ms BIGINT NOT NULL,
    takeover_ms BIGINT NOT NULL,
    incarnation BIGINT NOT NULL DEFAULT 0
);
-- Claims held per instance (takeover, `status`).
CREATE INDEX outbox_claimed_by ON outbox (claimed_by) WHERE claimed_by IS NOT NULL;
-- Periodic jobs (scheduled drift repair): when each last ran, so that across the instances
-- (one at a time, under an advisory lock on PostgreSQL) it runs once per interval.
CREATE TABLE periodic_jobs (
    name TEXT PRIMARY KEY NOT NULL,
    last_run_ms BIGINT NOT NULL
);
