-- A key reserved for a rename (issue 8 item 1): the resource keeps holding its current key in
-- target_state.key_norm until the settle records where its entry is, and reserves the new
-- key here. A key is held (target_state.key_norm) or reserved (here) by at most one resource
-- per target: this primary key decides between two reservers; the store checks held against
-- reserved under a per-key lock (PostgreSQL: a transaction advisory lock; SQLite: its write
-- lock). One reservation per resource and target; the resource's next settle drops it.
CREATE TABLE target_key_reservations (
    target TEXT NOT NULL,
    key_norm TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    PRIMARY KEY (target, key_norm)
);
CREATE UNIQUE INDEX target_key_reservations_resource
    ON target_key_reservations (target, resource_id);
-- A reservation made before this table existed moved the state's key_norm to the reserved key
-- (and noted it in extra.renaming): keep it as the reservation, and let the daemon's start
-- fill the held key in again from target_key (it reports a key another resource took since).
INSERT INTO target_key_reservations (target, key_norm, resource_id)
    SELECT target, key_norm, resource_id FROM target_state
    WHERE key_norm IS NOT NULL AND target_key IS NOT NULL AND extra LIKE '%"renaming"%';
UPDATE target_state SET key_norm = NULL
    WHERE key_norm IS NOT NULL AND target_key IS NOT NULL AND extra LIKE '%"renaming"%';
