-- State for pull channels (email first), threading and mail-loop safety.

-- Pull channels' progress: IMAP "uidvalidity:last_uid" per mailbox folder, Telegram offsets.
CREATE TABLE cursors (
    name        TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- Which instance polls which mailbox; taken over when expires_at has passed.
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  INTEGER NOT NULL
);

-- Messages that could not be parsed, kept raw; never dropped.
CREATE TABLE quarantine (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    channel     TEXT NOT NULL,
    source      TEXT NOT NULL,
    reason      TEXT NOT NULL,
    raw         BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);

-- The raw bytes of every inbound message that has them, so normalization can be redone (reparse).
CREATE TABLE raw_messages (
    message_id  TEXT PRIMARY KEY,
    channel     TEXT NOT NULL,
    raw         BLOB NOT NULL
);

CREATE TABLE attachments (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id  TEXT NOT NULL,
    name        TEXT NOT NULL,
    media_type  TEXT NOT NULL,
    size        INTEGER NOT NULL,
    sha256      TEXT,
    truncated   INTEGER NOT NULL,
    content     BLOB
);
CREATE INDEX attachments_message ON attachments (message_id);

-- Bounces, delivery and feedback reports, automatic replies that belong to no case.
CREATE TABLE channel_events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    channel      TEXT NOT NULL,
    source       TEXT NOT NULL,
    kind         TEXT NOT NULL,
    external_id  TEXT NOT NULL,
    sender       TEXT,
    subject      TEXT,
    data         TEXT NOT NULL,
    raw          BLOB,
    created_at   INTEGER NOT NULL,
    UNIQUE (channel, external_id)
);

-- Addresses not to send to until a time (a bounce for one of our messages).
CREATE TABLE suppressions (
    address     TEXT PRIMARY KEY,
    reason      TEXT NOT NULL,
    until       INTEGER NOT NULL
);

-- The last acknowledgement per address, for "at most one per window".
CREATE TABLE ack_log (
    address     TEXT PRIMARY KEY,
    last_at     INTEGER NOT NULL
);

