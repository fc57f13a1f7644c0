DROP INDEX target_state_key_norm;
ALTER TABLE target_state DROP COLUMN key_norm;
