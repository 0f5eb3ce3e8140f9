-- The billed parts of a sent message (SMS segments), stored with its job.
ALTER TABLE outbox ADD COLUMN segments INTEGER;
