-- A message fetched again (a rescan after a UIDVALIDITY change, a crash before the cursor moved)
-- must not be quarantined twice: rows are unique by the SHA-256 of their raw bytes per source.
-- Rows from before this migration keep a NULL digest, which the unique index ignores.
ALTER TABLE quarantine ADD COLUMN digest TEXT;
CREATE UNIQUE INDEX quarantine_digest ON quarantine (channel, source, digest);
