-- The instance holding a claim (`[reconcile] instance_id`, or the id persisted next to the
-- database): at startup an instance releases its own previous claims at once instead of
-- waiting out their lease; claims of other instances sharing the database are left alone.
ALTER TABLE outbox ADD COLUMN claimed_by TEXT;
