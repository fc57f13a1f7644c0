DROP INDEX outbox_oldest;
DROP TRIGGER target_counts_track ON target_state;
DROP FUNCTION target_counts_track();
DROP TABLE target_counts;
