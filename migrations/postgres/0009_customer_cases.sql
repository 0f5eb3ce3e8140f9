-- A customer's cases on one channel, newest first: a chat's `/status` and the follow-up rule of chat
-- channels (the sender's newest open case takes the next message).
CREATE INDEX cases_customer ON cases (customer_id, channel, seq);
