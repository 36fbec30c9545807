-- Custos cloud server DB, schema version 6: a request's lifecycle log in its own row.
--
-- `events` is the JSON array of the request's events ({seq, at, event, detail}, oldest
-- first), rewritten by the same compare-and-swap UPDATE as every other change, so that a
-- change is one statement and reading a request needs no second query. The server moves
-- the rows of `request_events` written before this version into `events` when it opens
-- the database (one transaction per request), after which that table stays empty. Stop
-- every server of an older version before starting this one: an older server would still
-- write its events to `request_events`, where no one reads them any more.

ALTER TABLE requests ADD COLUMN events TEXT NULL;
