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
