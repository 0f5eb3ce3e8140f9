-- The outbox as an isolated, ordered pipe (see src/outbox/).
--
-- * `discarded`: a dead job an operator gave up on on purpose; it no longer holds back the later
--   jobs of its case.
-- * `outbox_due` leads with the destination: each destination leases its own due jobs, and a
--   destination with a large blocked backlog (a hung ticket store) must not make every other
--   destination's lease walk past its rows. It ends with the id, so a lease (ordered by due time,
--   then id) reads the index in order and stops at its limit: without the id, PostgreSQL sorted
--   every due job of the destination on every lease (95 ms with 30,000 queued).
-- * `outbox_order` covers dead jobs too: a later job of a case to one destination waits behind an
--   earlier pending, leased or dead one.
-- * The payload (the event or message, about 1.5 KB) lives in a table of its own, written once: a
--   job's row is updated when it is leased and again when it is delivered, and each update wrote a
--   new version of the whole row, payload included.
CREATE TABLE outbox_payloads (
    job_id  BIGINT PRIMARY KEY,
    payload TEXT NOT NULL
);
INSERT INTO outbox_payloads (job_id, payload) SELECT id, payload FROM outbox;
ALTER TABLE outbox DROP COLUMN payload;
ALTER TABLE outbox DROP CONSTRAINT outbox_state_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_state_check
    CHECK (state IN ('pending', 'leased', 'done', 'dead', 'discarded'));
DROP INDEX outbox_due;
CREATE INDEX outbox_due ON outbox (destination, next_attempt_at, id) WHERE state IN ('pending', 'leased');
DROP INDEX outbox_order;
CREATE INDEX outbox_order ON outbox (case_id, destination, id) WHERE state IN ('pending', 'leased', 'dead');
