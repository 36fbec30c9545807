-- Custos cloud server DB, schema version 10: webhook notifications.
--
-- The outbox is the requests' lifecycle log itself: every state change appends its event
-- to `requests.events` in the same statement as the change, so an event to notify can be
-- neither lost nor invented. `notified` is how far the webhooks job has read a request's
-- log (the `seq` of the last event it turned into deliveries); a request with
-- `notified < version` has events still to fan out. The job writes one delivery per
-- configured webhook and event, and moves `notified` forward, in one transaction.
--
-- Requests stored before this version count as notified: a webhook configured today hears
-- of what happens from now on, not of the history. While no webhook is configured at all,
-- the job moves `webhook_skipped.before_ms` instead of touching request rows: events
-- before it count as read whatever `notified` says.
--
-- Each replica writes a fingerprint of its `[[webhooks]]` list (and of what it can read)
-- beside its heartbeat (`cloud_replicas.webhooks`): `notified` moves only while every live
-- replica reports the fingerprint of the replica moving it (a condition of the same
-- statement), so that a replica with another list (a configuration being rolled out) never
-- moves it past events a webhook it lacks should get.
--
-- Portable across SQLite and PostgreSQL like 0001.

ALTER TABLE requests ADD COLUMN notified BIGINT NOT NULL DEFAULT 0;
UPDATE requests SET notified = version;
CREATE INDEX requests_unnotified ON requests (updated_at) WHERE notified < version;
ALTER TABLE cloud_replicas ADD COLUMN webhooks TEXT NULL;

CREATE TABLE webhook_deliveries (
    -- The webhook's name in the configuration.
    webhook         TEXT   NOT NULL,
    -- `<request id>.<seq>`: the same at every attempt, so receivers drop repeats.
    event_id        TEXT   NOT NULL,
    request_id      TEXT   NOT NULL,
    seq             BIGINT NOT NULL,
    -- `request.pending`, `request.approved`, ...
    event           TEXT   NOT NULL,
    -- The JSON sent, exactly (signed afresh at every attempt, with that attempt's time).
    body            TEXT   NOT NULL,
    -- When the event happened (Unix ms): deliveries go out in this order.
    occurred_at     BIGINT NOT NULL,
    -- When this row was written (Unix ms): the give-up age counts from here.
    created_at      BIGINT NOT NULL,
    -- `pending` until a 2xx answer (`delivered`), or until the webhook's give-up age
    -- passed (`abandoned`, with the last error kept).
    state           TEXT   NOT NULL,
    attempts        BIGINT NOT NULL,
    -- Unix ms before which it is not tried again (backoff).
    next_attempt_at BIGINT NOT NULL,
    -- Unix ms of the answer that delivered it, or of giving up.
    ended_at        BIGINT NULL,
    last_error      TEXT   NULL,
    PRIMARY KEY (webhook, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (webhook, occurred_at)
    WHERE state = 'pending';
-- A request's later events wait for its earlier ones (order within a request).
CREATE INDEX webhook_deliveries_request ON webhook_deliveries (webhook, request_id, seq)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_ended ON webhook_deliveries (ended_at)
    WHERE state <> 'pending';

CREATE TABLE webhook_skipped (
    id        TEXT   NOT NULL PRIMARY KEY,
    before_ms BIGINT NOT NULL
);
INSERT INTO webhook_skipped (id, before_ms) VALUES ('all', 0);

-- A webhook whose receiver could not be reached: none of its deliveries is tried before
-- `until_ms` (Unix ms), whatever was written since.
CREATE TABLE webhook_holds (
    webhook  TEXT   NOT NULL PRIMARY KEY,
    until_ms BIGINT NOT NULL
);
