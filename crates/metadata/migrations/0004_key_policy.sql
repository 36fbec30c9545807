-- Custos metadata DB, schema version 4: the latest approver-group policy the bridge saw a
-- TEE apply to each key (issue 12 item 3). The TEEs enforce the policy; the bridge keeps its
-- version so that a node whose TEE still holds an older one (it was down during the change)
-- is never routed the key again, not even after a restart of the bridge or of the node,
-- until its sync has brought the newer record. Only the highest version is kept.
CREATE TABLE key_policy (
    key_id         TEXT   NOT NULL PRIMARY KEY,
    version        BIGINT NOT NULL,
    hash           TEXT   NOT NULL,
    recorded_at_ms BIGINT NOT NULL
);
