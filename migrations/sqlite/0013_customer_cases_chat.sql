-- A customer's cases on one channel are looked up by contact only on the chat channels, Telegram
-- and phone (a chat's `/status`, the follow-up rule that gives the sender's newest open case the
-- next message, a survey answered by SMS, an opt-in again). Web and email cases are never looked up
-- that way (email threads by its headers), yet each paid an entry in `cases_customer`, whose key
-- (a hash of the customer's first contact) is random: a page of its own for every new case, a
-- quarter of the pages a whole-path web complaint wrote to the WAL. The index keeps the chat
-- channels' cases only. The queries that read it hold its WHERE in the same words
-- (`CONTACT_CHANNELS` in `store/common.rs`), as SQLite requires to use a partial index.
DROP INDEX cases_customer;
CREATE INDEX cases_customer ON cases (customer_id, channel, seq) WHERE (channel = 'telegram' OR channel = 'phone');
