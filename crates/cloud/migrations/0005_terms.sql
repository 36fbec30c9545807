-- Custos cloud server DB, schema version 5: a request's terms in one typed column.
--
-- `terms` holds what a request asks for as one JSON object whose `kind` names the variant
-- (format: crates/cloud/src/terms.rs); the row keeps only lifecycle fields. The columns
-- that held terms (some with two meanings: `target_node` was a node or a list of
-- clusters, `sealed` a seed or a dealer bundle, `root_id` a wallet or a threshold key)
-- are moved into it and dropped. Portable across SQLite and PostgreSQL: `||`, REPLACE,
-- COALESCE and CASE only; names are escaped as JSON strings (the backslash literals need
-- PostgreSQL's default standard_conforming_strings = on). A row whose old columns were
-- incomplete gets NULL terms: the server logs how many at start and never uses them.

ALTER TABLE requests ADD COLUMN terms TEXT NULL;

UPDATE requests SET terms = CASE kind
    WHEN 'create_wallet' THEN '{"kind":"create_wallet"}'
    WHEN 'import_wallet' THEN
        '{"kind":"import_wallet","root_id":"' || root_id
        || '","node":"' || REPLACE(REPLACE(target_node, '\', '\\'), '"', '\"')
        || '","sealed":"' || sealed || '"}'
    WHEN 'sign' THEN
        '{"kind":"sign","root_id":"' || root_id
        || '","path":"' || REPLACE(REPLACE(path, '\', '\\'), '"', '\"')
        || '","digest":"' || digest || '"}'
    WHEN 'import_threshold_key' THEN
        '{"kind":"import_threshold_key","node":"'
        || REPLACE(REPLACE(target_node, '\', '\\'), '"', '\"')
        || '","bundle":"' || sealed || '"}'
    WHEN 'threshold_sign' THEN
        '{"kind":"threshold_sign","key_id":"' || root_id
        || '","path":"' || REPLACE(REPLACE(path, '\', '\\'), '"', '\"')
        || '","digest":"' || digest
        || '","message":' || COALESCE('"' || message || '"', 'null')
        || ',"clusters":' || COALESCE(
            '["' || REPLACE(REPLACE(REPLACE(target_node, '\', '\\'), '"', '\"'), ',', '","')
            || '"]', 'null')
        || '}'
    WHEN 'create_threshold_key' THEN
        '{"kind":"create_threshold_key","threshold":' || CAST(threshold AS TEXT)
        || ',"hd":' || CASE hd WHEN 1 THEN 'true' WHEN 0 THEN 'false' END
        || ',"clusters":' || clusters || '}'
END;

ALTER TABLE requests DROP COLUMN root_id;
ALTER TABLE requests DROP COLUMN path;
ALTER TABLE requests DROP COLUMN digest;
ALTER TABLE requests DROP COLUMN target_node;
ALTER TABLE requests DROP COLUMN sealed;
ALTER TABLE requests DROP COLUMN share_index;
ALTER TABLE requests DROP COLUMN threshold;
ALTER TABLE requests DROP COLUMN hd;
ALTER TABLE requests DROP COLUMN clusters;
ALTER TABLE requests DROP COLUMN message;
