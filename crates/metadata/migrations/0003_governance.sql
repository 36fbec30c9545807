-- Custos metadata DB, schema version 3: the cluster's governance log as the bridge last
-- verified it (issue 12). Each row is one entry of the log (genesis = version 0), stored as
-- lower-case hex of its canonical encoding; the bridge re-verifies the whole log against the
-- pinned Root when it starts, so this table is a cache of signed content, not an authority.
CREATE TABLE governance (
    version        BIGINT NOT NULL PRIMARY KEY,
    hash           TEXT   NOT NULL,
    entry          TEXT   NOT NULL,
    recorded_at_ms BIGINT NOT NULL
);
