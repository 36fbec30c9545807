-- Custos cloud server DB, schema version 9: the approvers' console's sign-ins.
--
-- A sign-in challenge is single use: the server stores it when it hands it out and deletes
-- it when an assertion answers it (an answer to a challenge no longer here is refused). It
-- is bound to the browser that asked for it (the SHA-256 of a random cookie set with it), so
-- that someone else asking for challenges in an admin's name displaces none of theirs. A
-- session is a random token in a `Secure`, `HttpOnly`, `SameSite=Strict` cookie; only its
-- SHA-256 is stored, so a copy of the database signs no one in. It names the admin and the
-- key they signed in with: a certificate replaced since ends it. Both are in the database so
-- that any replica serves any step of a sign-in, and a restart signs no one out.
--
-- Portable across SQLite and PostgreSQL like 0001.

CREATE TABLE console_challenges (
    -- 32 random bytes, hex.
    nonce      TEXT   NOT NULL PRIMARY KEY,
    -- The admin (certificate name) it was handed to.
    admin      TEXT   NOT NULL,
    -- SHA-256 of the sign-in cookie of the browser it was handed to, hex.
    binding    TEXT   NOT NULL,
    -- Unix ms after which it is void.
    expires_at BIGINT NOT NULL
);
CREATE INDEX console_challenges_binding ON console_challenges (binding);
CREATE INDEX console_challenges_expiry ON console_challenges (expires_at);

CREATE TABLE console_sessions (
    -- SHA-256 of the cookie's token, hex.
    token_hash TEXT   NOT NULL PRIMARY KEY,
    admin      TEXT   NOT NULL,
    -- SHA-256 of the certified key the admin signed in with, hex.
    admin_key  TEXT   NOT NULL,
    -- Unix ms.
    created_at BIGINT NOT NULL,
    -- Unix ms after which it is void.
    expires_at BIGINT NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);
