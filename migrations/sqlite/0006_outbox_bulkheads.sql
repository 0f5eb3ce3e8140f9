-- The outbox as an isolated, ordered pipe (see src/outbox/).
--
-- * `discarded`: a dead job an operator gave up on on purpose; it no longer holds back the later
--   jobs of its case. SQLite cannot change a CHECK constraint in place, so the table is rebuilt
--   once (ids, and so the AUTOINCREMENT sequence, are kept).
-- * `outbox_due` leads with the destination: each destination leases its own due jobs, and a
--   destination with a large blocked backlog (a hung ticket store) must not make every other
--   destination's lease walk past its rows. It ends with the id, so a lease (ordered by due time,
--   then id) reads the index in order and stops at its limit: without the id, PostgreSQL sorted
--   every due job of the destination on every lease (95 ms with 30,000 queued).
-- * `outbox_order` covers dead jobs too: a later job of a case to one destination waits behind an
--   earlier pending, leased or dead one.
-- * The payload (the event or message, about 1.5 KB) lives in a table of its own, written once. A
--   job's row is updated when it is leased and again when it is delivered; with the payload in it,
--   two rows filled a page, so every lease and every outcome rewrote a page per two jobs; without
--   it, one page holds some twenty-five jobs. (On SQLite the writer's CPU per delivered complaint
--   measured the same either way, within the noise; on PostgreSQL each update writes a whole new
--   row version, so there it is ten times less heap and WAL per update.)
CREATE TABLE outbox_payloads (
    job_id  INTEGER PRIMARY KEY,
    payload TEXT NOT NULL
);
INSERT INTO outbox_payloads (job_id, payload) SELECT id, payload FROM outbox ORDER BY id;
CREATE TABLE outbox_new (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT NOT NULL UNIQUE,
    case_id         TEXT NOT NULL,
    kind            TEXT NOT NULL,
    destination     TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'leased', 'done', 'dead', 'discarded')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
INSERT INTO outbox_new (id, event_id, case_id, kind, destination, state, attempts, max_attempts,
                        next_attempt_at, last_error, created_at, updated_at)
    SELECT id, event_id, case_id, kind, destination, state, attempts, max_attempts,
           next_attempt_at, last_error, created_at, updated_at FROM outbox ORDER BY id;
DROP TABLE outbox;
ALTER TABLE outbox_new RENAME TO outbox;
CREATE INDEX outbox_due ON outbox (destination, next_attempt_at, id) WHERE state IN ('pending', 'leased');
CREATE INDEX outbox_order ON outbox (case_id, destination, id) WHERE state IN ('pending', 'leased', 'dead');
CREATE INDEX outbox_dead ON outbox (id) WHERE state = 'dead';
