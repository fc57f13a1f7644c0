DROP INDEX outbox_oldest;
DROP TRIGGER target_counts_update;
DROP TRIGGER target_counts_delete;
DROP TRIGGER target_counts_insert;
DROP TABLE target_counts;
