-- Custos metadata DB, schema version 2: where the bridge sent each one-effect request.
--
-- A one-effect request (create-wallet, imports, key generation) whose answer was lost after it
-- reached a node is resent with the same id; it must go to that same node, whose TEE answers
-- the key it made, and never to another node that would make a second one. The bridge writes
-- the row before it sends the request, so a restarted bridge still knows. Rows are kept for a
-- bounded time (the bridge deletes those older than its retention), and not hash-chained: the
-- history records every request and outcome; this table only routes resends.
CREATE TABLE sent_to (
    request_id TEXT   NOT NULL PRIMARY KEY,
    node       TEXT   NOT NULL,
    at_ms      BIGINT NOT NULL
);

CREATE INDEX sent_to_at ON sent_to (at_ms);
