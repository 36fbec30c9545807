-- Custos cloud server DB, schema version 1.
--
-- Portable across SQLite and PostgreSQL on purpose (one code path through sqlx::Any): only
-- BIGINT and TEXT columns; binary values are lower-case hex, structured values JSON text.
-- Times are Unix milliseconds, except `expires_at` (Unix seconds, as the TEE checks it).

-- Wallets (B keys) created or imported through this server, named by their root public key.
CREATE TABLE wallets (
    root_id            TEXT   NOT NULL PRIMARY KEY,
    cluster            TEXT   NOT NULL,
    xpub               TEXT   NOT NULL,
    quorum             BIGINT NOT NULL,
    created_at         BIGINT NOT NULL,
    created_by_request TEXT   NOT NULL
);

CREATE INDEX wallets_created ON wallets (created_at, root_id);

-- Requests and their lifecycle: pending_approval -> submitting -> completed | refused |
-- failed; expired when the approval window passed without quorum. `version` is bumped by
-- every change (compare-and-swap), and equals the seq of the event written with it.
CREATE TABLE requests (
    id            TEXT   NOT NULL PRIMARY KEY,
    kind          TEXT   NOT NULL,
    cluster       TEXT   NOT NULL,
    root_id       TEXT   NULL,
    path          TEXT   NULL,
    digest        TEXT   NULL,
    quorum        BIGINT NOT NULL,
    status        TEXT   NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    approvals     TEXT   NOT NULL,
    target_node   TEXT   NULL,
    sealed        TEXT   NULL,
    result        TEXT   NULL,
    error_code    TEXT   NULL,
    error_message TEXT   NULL,
    attempts      BIGINT NOT NULL,
    created_by    TEXT   NOT NULL,
    version       BIGINT NOT NULL
);

CREATE INDEX requests_created ON requests (created_at, id);
CREATE INDEX requests_status ON requests (status, created_at);

-- Lifecycle log: one row per state change, written in the same transaction as the change.
CREATE TABLE request_events (
    request_id TEXT   NOT NULL,
    seq        BIGINT NOT NULL,
    at         BIGINT NOT NULL,
    event      TEXT   NOT NULL,
    detail     TEXT   NOT NULL,
    PRIMARY KEY (request_id, seq)
);
