-- Custos cloud server DB, schema version 3: distributed key generation of threshold keys.
--
-- Portable across SQLite and PostgreSQL like 0001: only BIGINT and TEXT columns.

-- The terms of a `create_threshold_key` request (part of its approval message): signers
-- needed (t), HD derivation (1/0), and the cluster of each share as a JSON array (n entries).
ALTER TABLE requests ADD COLUMN threshold BIGINT NULL;
ALTER TABLE requests ADD COLUMN hd BIGINT NULL;
ALTER TABLE requests ADD COLUMN clusters TEXT NULL;
