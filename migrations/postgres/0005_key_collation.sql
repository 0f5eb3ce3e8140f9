-- Keys compare byte by byte (COLLATE "C"). Ids, external ids, contact values and addresses are
-- matched exactly, never sorted for people, and a database's default collation (en_US.UTF-8,
-- C.UTF-8) makes every index comparison a strcoll() call: on the intake batch statement that was
-- about a tenth of the PostgreSQL backend's time. Changing a column's collation rebuilds its
-- indexes, once.
ALTER TABLE identities
    ALTER COLUMN kind TYPE TEXT COLLATE "C",
    ALTER COLUMN value TYPE TEXT COLLATE "C",
    ALTER COLUMN customer_id TYPE TEXT COLLATE "C";
ALTER TABLE cases
    ALTER COLUMN id TYPE TEXT COLLATE "C",
    ALTER COLUMN customer_id TYPE TEXT COLLATE "C";
ALTER TABLE messages
    ALTER COLUMN id TYPE TEXT COLLATE "C",
    ALTER COLUMN case_id TYPE TEXT COLLATE "C",
    ALTER COLUMN channel TYPE TEXT COLLATE "C",
    ALTER COLUMN external_id TYPE TEXT COLLATE "C";
ALTER TABLE outbox
    ALTER COLUMN event_id TYPE TEXT COLLATE "C",
    ALTER COLUMN case_id TYPE TEXT COLLATE "C",
    ALTER COLUMN destination TYPE TEXT COLLATE "C";
ALTER TABLE cursors ALTER COLUMN name TYPE TEXT COLLATE "C";
ALTER TABLE leases ALTER COLUMN name TYPE TEXT COLLATE "C";
ALTER TABLE quarantine
    ALTER COLUMN channel TYPE TEXT COLLATE "C",
    ALTER COLUMN source TYPE TEXT COLLATE "C",
    ALTER COLUMN digest TYPE TEXT COLLATE "C";
ALTER TABLE raw_messages ALTER COLUMN message_id TYPE TEXT COLLATE "C";
ALTER TABLE attachments ALTER COLUMN message_id TYPE TEXT COLLATE "C";
ALTER TABLE channel_events
    ALTER COLUMN channel TYPE TEXT COLLATE "C",
    ALTER COLUMN external_id TYPE TEXT COLLATE "C";
ALTER TABLE suppressions ALTER COLUMN address TYPE TEXT COLLATE "C";
ALTER TABLE ack_log ALTER COLUMN address TYPE TEXT COLLATE "C";
