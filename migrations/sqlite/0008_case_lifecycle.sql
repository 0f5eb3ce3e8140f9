-- Two-way cases: the ticket store's events, the customer's way back, the survey and SLA clocks.
--
-- * `reply_route`: how to answer the customer (JSON ReplyRoute), kept with the case so that every
--   later message (update, reply, survey) can be sent. NULL for cases stored before: those get no
--   messages from the lifecycle.
-- * `version`: bumped by every lifecycle change; a change is written only over the version it was
--   computed from, so two instances (or two events at once) never both apply theirs.
-- * `lifecycle`: JSON of the SLA clocks, the survey and reachability (NULL: as the case was made).
-- * `sla_due`: the earliest running SLA target's due time, NULL when none runs (met, breached or
--   paused while awaiting the customer): the breach scan is one range over a small partial index.
ALTER TABLE cases ADD COLUMN reply_route TEXT;
ALTER TABLE cases ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE cases ADD COLUMN lifecycle TEXT;
ALTER TABLE cases ADD COLUMN sla_due INTEGER;
ALTER TABLE cases ADD COLUMN breached INTEGER NOT NULL DEFAULT 0;
CREATE INDEX cases_sla_due ON cases (sla_due) WHERE sla_due IS NOT NULL;

-- What happened to a case besides its messages: status changes (and who made them), replies,
-- ticket links, feedback, SLA breaches, unreachable recipients.
CREATE TABLE case_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    case_id    TEXT NOT NULL,
    kind       TEXT NOT NULL,
    actor      TEXT,
    data       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX case_log_case ON case_log (case_id, id);

-- Events from the ticket store already applied, by the endpoint that signed them and webhook-id.
CREATE TABLE events_in (
    endpoint   TEXT NOT NULL,
    webhook_id TEXT NOT NULL,
    case_id    TEXT NOT NULL,
    digest     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (endpoint, webhook_id)
);

-- Survey links: the unguessable token of each survey sent.
CREATE TABLE surveys (
    token      TEXT PRIMARY KEY,
    case_id    TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);

-- The channel's own id of a sent message (SMTP queue id, Telegram message id, SMS sid).
ALTER TABLE outbox ADD COLUMN provider_id TEXT;
CREATE INDEX outbox_case ON outbox (case_id);

-- The per-recipient rules (acknowledgement window, suppression) work for every channel: their key
-- is `<channel>:<address>` (`email:li@example.com`, `telegram:123456`). Every row so far is email.
UPDATE suppressions SET address = 'email:' || address;
UPDATE ack_log SET address = 'email:' || address;

-- A customer's reply that quotes the channel's own id of one of our messages finds its case.
CREATE INDEX outbox_provider ON outbox (provider_id) WHERE provider_id IS NOT NULL;
