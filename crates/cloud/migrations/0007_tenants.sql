-- Custos cloud server DB, schema version 7: tenants.
--
-- Every API token belongs to a tenant (configuration `[[api_tokens]] tenant`, default
-- `default`). A request records the tenant of the token that created it; the wallet or
-- threshold key a request makes belongs to that tenant. A token sees only its own
-- tenant's requests, wallets and threshold keys (another tenant's are unknown to it).
-- Rows written before this version belong to the tenant `default`, the tenant of every
-- token whose configuration names none, so an upgraded server without tenants configured
-- shows what it showed before.
--
-- Portable across SQLite and PostgreSQL like 0001: ADD COLUMN with a constant default.

ALTER TABLE requests ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE wallets ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE threshold_keys ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';

-- A tenant's lists, newest (requests) or oldest (wallets, keys) first.
CREATE INDEX requests_tenant_created ON requests (tenant, created_at, id);
CREATE INDEX wallets_tenant_created ON wallets (tenant, created_at, root_id);
CREATE INDEX threshold_keys_tenant_created ON threshold_keys (tenant, created_at, key_id);
