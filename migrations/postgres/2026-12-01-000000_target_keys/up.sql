-- The normalised target key a resource holds (target_key) or intends to create (an intent's
-- "creating" key), per target: LDAP DNs in the form the server compares them (see
-- mapping::dn::normalize_dn), SQL keys qualified by their table. No two resources may hold or
-- intend the same key in one target, decided by this index, never by a check-then-insert.
-- Existing rows are filled in by the daemon at start (from Rust, where the normal form is
-- defined); a pre-existing duplicate is left NULL there and reported.
ALTER TABLE target_state ADD COLUMN key_norm TEXT;
CREATE UNIQUE INDEX target_state_key_norm ON target_state (target, key_norm)
    WHERE key_norm IS NOT NULL;
