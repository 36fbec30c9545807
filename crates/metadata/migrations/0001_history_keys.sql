-- Custos metadata DB, schema version 1.
--
-- Portable across SQLite and PostgreSQL on purpose: no BLOB/BYTEA (hashes are lower-case hex
-- TEXT), no AUTOINCREMENT/SERIAL (the single writer assigns `seq` itself, so the sequence is
-- part of the hash chain instead of something the engine may skip or reuse).

-- Request history in "log form" (patent [0029]): append-only, each row hash-chained to the
-- previous one. The primary key on `seq` is what makes a second, unexpected writer fail with a
-- constraint error instead of forking the chain.
CREATE TABLE history (
    seq         BIGINT NOT NULL PRIMARY KEY,
    at_ms       BIGINT NOT NULL,
    kind        TEXT   NOT NULL,
    request_id  TEXT   NULL,
    actor       TEXT   NOT NULL,
    key_id      TEXT   NULL,
    path        TEXT   NULL,
    approvers   TEXT   NOT NULL,
    node        TEXT   NULL,
    outcome     TEXT   NOT NULL,
    detail      TEXT   NOT NULL,
    duration_us BIGINT NOT NULL,
    prev_hash   TEXT   NOT NULL,
    hash        TEXT   NOT NULL
);

CREATE INDEX history_key_id ON history (key_id);
CREATE INDEX history_request_id ON history (request_id);

-- The last appended (seq, hash), written in the same transaction as the rows. Without it,
-- deleting the newest rows leaves a chain that is still internally consistent.
CREATE TABLE chain_head (
    id   BIGINT NOT NULL PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash TEXT   NOT NULL
);

INSERT INTO chain_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- The cluster key list: every B root key the cluster holds, named by its root public key.
CREATE TABLE keys (
    key_id        TEXT   NOT NULL PRIMARY KEY,
    xpub          TEXT   NOT NULL,
    quorum        BIGINT NOT NULL,
    origin        TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL,
    created_on    TEXT   NOT NULL
);

CREATE INDEX keys_created ON keys (created_at_ms, key_id);
