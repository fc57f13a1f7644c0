DROP TABLE periodic_jobs;
DROP INDEX outbox_claimed_by;
DROP TABLE instances;
