-- Bumped on every re-queue of an existing row: settling deletes a row only when neither its
-- version nor its generation moved since the claim, so a dependant re-queue (a group whose
-- member was just created) is never lost to a concurrent apply.
ALTER TABLE outbox ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
