-- Custos cloud server DB, schema version 2: threshold keys (patent FIG. 5, 12-15).
--
-- Portable across SQLite and PostgreSQL like 0001: only BIGINT and TEXT columns, binary
-- values lower-case hex, structured values JSON text, times Unix milliseconds.

-- Threshold keys (t-of-n over n clusters) whose shares were imported through this server,
-- named by their joint public key. The first completed share import records the key;
-- every later one must agree on threshold, clusters, quorum, chain code and origin.
CREATE TABLE threshold_keys (
    key_id             TEXT   NOT NULL PRIMARY KEY,
    threshold          BIGINT NOT NULL,
    -- JSON array of cluster names, by share index (n entries).
    clusters           TEXT   NOT NULL,
    quorum             BIGINT NOT NULL,
    -- BIP-32 chain code (hex) when HD derivation is enabled.
    chain_code         TEXT   NULL,
    -- `dealer` or `dkg`.
    origin             TEXT   NOT NULL,
    created_at         BIGINT NOT NULL,
    created_by_request TEXT   NOT NULL
);

CREATE INDEX threshold_keys_created ON threshold_keys (created_at, key_id);

-- Which share of a threshold key was imported where: the cluster holding it and the node
-- whose TEE imported it (the cluster's other nodes get it by sync).
CREATE TABLE threshold_shares (
    key_id      TEXT   NOT NULL,
    share_index BIGINT NOT NULL,
    cluster     TEXT   NOT NULL,
    node        TEXT   NOT NULL,
    imported_at BIGINT NOT NULL,
    request_id  TEXT   NOT NULL,
    PRIMARY KEY (key_id, share_index)
);

-- Share index of an `import_threshold_key` request (part of its approval message).
ALTER TABLE requests ADD COLUMN share_index BIGINT NULL;
