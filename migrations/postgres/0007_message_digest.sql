-- The digest of a message as its sender delivered it, where the sender chooses the message's id (a
-- web webhook-id): a repeat of the id with other content is refused (409 idempotency_conflict),
-- not answered as a retry of the first. Empty for messages stored before, and for email.
ALTER TABLE messages ADD COLUMN digest TEXT;
