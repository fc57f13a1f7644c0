ALTER TABLE outbox DROP COLUMN generation;
