-- Custos cloud server DB, schema version 8: several cloud servers (replicas) on one
-- database.
--
-- Each running server process is a replica with a random id of its own (a restarted
-- process is a new replica). It writes `seen_at` every few seconds; a replica not seen for
-- its own `ttl_ms` (its configured `replica_ttl_secs`) is dead. A request in `submitting` names the replica
-- executing it (`owner`): only once that replica is dead does another resubmit it (with the
-- same id, so the link answers the first execution's result, never executing it twice).
-- Background jobs (recovery, expiry sweep, presignature refill) run under a lease: one
-- replica at a time holds a job's row until `until_ms`, renewing it while it works; `term`
-- counts the holders a job has had, so a log names which holder did what.
--
-- Heartbeats and leases are written and judged with the database server's clock (Unix
-- milliseconds), one clock for every replica.
--
-- Stop every server older than this version before starting one: an older server writes
-- requests without an owner, which a replica of this version takes for a dead server's and
-- resubmits (with their own ids, so nothing executes twice, but a live call is raced).
--
-- Portable across SQLite and PostgreSQL like 0001.

CREATE TABLE cloud_replicas (
    id         TEXT   NOT NULL PRIMARY KEY,
    started_at BIGINT NOT NULL,
    seen_at    BIGINT NOT NULL,
    -- Heartbeat age after which it is dead.
    ttl_ms     BIGINT NOT NULL,
    -- Where it serves the REST API (for operators reading this table).
    listen     TEXT   NOT NULL
);

CREATE TABLE cloud_leases (
    job      TEXT   NOT NULL PRIMARY KEY,
    holder   TEXT   NOT NULL,
    until_ms BIGINT NOT NULL,
    term     BIGINT NOT NULL
);

-- The replica that last moved the request to `submitting` (NULL: written before schema 8).
ALTER TABLE requests ADD COLUMN owner TEXT NULL;

-- The latest audit report of each threshold key (JSON), whichever replica ran it.
CREATE TABLE threshold_audits (
    key_id      TEXT   NOT NULL PRIMARY KEY,
    finished_at BIGINT NOT NULL,
    report      TEXT   NOT NULL
);
