-- Custos cloud server DB, schema version 4: presignatures of threshold keys without chain
-- code, and the full message of a `threshold_sign` request that signs with one.
--
-- Portable across SQLite and PostgreSQL like 0001: only BIGINT and TEXT columns.

-- The full message (hex) of a `threshold_sign` request; its `digest` is SHA-256 of it (the
-- approvals cover that digest, each TEE hashes the message itself).
ALTER TABLE requests ADD COLUMN message TEXT NULL;

-- Presignatures made by t clusters' TEEs, each held inside those TEEs only. A row is taken
-- (`status` `taken`, with the request) before any TEE is asked to use the presignature, so
-- the cloud server never hands one out twice; the TEEs themselves refuse a second use.
CREATE TABLE threshold_presignatures (
    -- The presignature's id (its session's execution id), hex.
    id         TEXT   NOT NULL PRIMARY KEY,
    key_id     TEXT   NOT NULL,
    -- JSON array of {cluster, node, share_index}, in signing order.
    signers    TEXT   NOT NULL,
    -- `ready` or `taken`.
    status     TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    taken_at   BIGINT NULL,
    taken_by   TEXT   NULL
);

CREATE INDEX threshold_presignatures_ready ON threshold_presignatures (key_id, status, created_at);
