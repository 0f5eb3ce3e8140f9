-- The outbox's state checks without IN lists. SQLite evaluates `x IN (a, b, c)` (three values or
-- more) by building a temporary B-tree of the values, and for a CHECK constraint or a partial
-- index's WHERE it builds it afresh for every row it writes: each outbox insert built two (the
-- CHECK on `state`, and `outbox_order`'s WHERE), and each update of `state` (a lease, an outcome)
-- two or three more, about five per complaint, all on the writer thread, the one serial step.
-- A chain of ORs is the same test done with comparisons only. A CHECK cannot be altered in place,
-- so the table is rebuilt as SQLite documents (create, copy, drop, rename), keeping every job and
-- id, and the AUTOINCREMENT counter, so that an id given once is never given again.
-- Queries that should use `outbox_order` carry its WHERE in the same words (`store/common.rs`).
CREATE TABLE outbox_new (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT NOT NULL UNIQUE,
    case_id         TEXT NOT NULL,
    kind            TEXT NOT NULL,
    destination     TEXT NOT NULL,
    state           TEXT NOT NULL
        CHECK (state = 'pending' OR state = 'leased' OR state = 'done' OR state = 'dead' OR state = 'discarded'),
    attempts        INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    provider_id     TEXT,
    segments        INTEGER
);
INSERT INTO outbox_new (id, event_id, case_id, kind, destination, state, attempts, max_attempts,
                        next_attempt_at, last_error, created_at, updated_at, provider_id, segments)
    SELECT id, event_id, case_id, kind, destination, state, attempts, max_attempts,
           next_attempt_at, last_error, created_at, updated_at, provider_id, segments FROM outbox ORDER BY id;
-- The old table's counter, which may be past every id left (retention deletes old done jobs).
DELETE FROM sqlite_sequence WHERE name = 'outbox_new';
INSERT INTO sqlite_sequence (name, seq) SELECT 'outbox_new', seq FROM sqlite_sequence WHERE name = 'outbox';
DROP TABLE outbox;
ALTER TABLE outbox_new RENAME TO outbox;
CREATE INDEX outbox_due ON outbox (destination, next_attempt_at, id) WHERE state IN ('pending', 'leased');
CREATE INDEX outbox_order ON outbox (case_id, destination, id)
    WHERE (state = 'pending' OR state = 'leased' OR state = 'dead');
CREATE INDEX outbox_dead ON outbox (id) WHERE state = 'dead';
CREATE INDEX outbox_case ON outbox (case_id);
CREATE INDEX outbox_provider ON outbox (provider_id) WHERE provider_id IS NOT NULL;
