-- Earshot store, PostgreSQL. Times are Unix milliseconds; JSON is TEXT.
CREATE TABLE customers (
    id          TEXT PRIMARY KEY,
    name        TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE identities (
    kind        TEXT NOT NULL,
    value       TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (kind, value)
);

CREATE TABLE cases (
    id          TEXT PRIMARY KEY,
    seq         BIGINT NOT NULL UNIQUE,
    -- Derived from seq by a bijection (CaseRef::from_seq), so unique by construction and looked up
    -- through seq: no index of its own, which would cost a random page write per new case.
    case_ref    TEXT NOT NULL,
    status      TEXT NOT NULL,
    channel     TEXT NOT NULL,
    source      TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    ticket_id   TEXT,
    data        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE messages (
    id          TEXT PRIMARY KEY,
    case_id     TEXT NOT NULL,
    channel     TEXT NOT NULL,
    external_id TEXT NOT NULL,
    direction   TEXT NOT NULL,
    data        TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    UNIQUE (channel, external_id)
);
CREATE INDEX messages_case ON messages (case_id);

-- One row per side effect. A leased job keeps its lease end in next_attempt_at, so "due" is one
-- range over one small partial index whatever the state.
CREATE TABLE outbox (
    id              BIGSERIAL PRIMARY KEY,
    event_id        TEXT NOT NULL UNIQUE,
    case_id         TEXT NOT NULL,
    kind            TEXT NOT NULL,
    destination     TEXT NOT NULL,
    payload         TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'leased', 'done', 'dead')),
    attempts        BIGINT NOT NULL DEFAULT 0,
    max_attempts    BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE state IN ('pending', 'leased');
CREATE INDEX outbox_order ON outbox (case_id, destination, id) WHERE state IN ('pending', 'leased');
CREATE INDEX outbox_dead ON outbox (id) WHERE state = 'dead';

-- Case sequence numbers, from which case references are derived; shared by every instance.
CREATE SEQUENCE case_seq;
