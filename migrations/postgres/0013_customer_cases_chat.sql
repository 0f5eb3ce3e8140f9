-- A customer's cases on one channel are looked up by contact only on the chat channels, Telegram
-- and phone (a chat's `/status`, the follow-up rule that gives the sender's newest open case the
-- next message, a survey answered by SMS, an opt-in again). Web and email cases are never looked up
-- that way (email threads by its headers), yet each paid an entry in `cases_customer`, an insert
-- into a random page of an index (its key is a hash of the customer's first contact). The index
-- keeps the chat channels' cases only; the queries that read it hold its WHERE in the same words
-- (`CONTACT_CHANNELS` in `store/common.rs`), so that a generic plan, made without the channel's
-- value, can prove it.
DROP INDEX cases_customer;
CREATE INDEX cases_customer ON cases (customer_id, channel, seq) WHERE (channel = 'telegram' OR channel = 'phone');
