-- The token service: signing keys, rotating refresh tokens, password resets, login throttling.

-- Signing keys of our issuer. The private key is sealed (AES-256-GCM, the key id as
-- associated data) with the key-encryption key kept in a Secret (a 0600 file locally):
-- a copy of the database alone cannot sign tokens. A key signs from active_from until
-- the next key's active_from and is published (JWKS, snapshots) until retire_after.
CREATE TABLE signing_keys (
    kid          VARCHAR(64)  PRIMARY KEY,
    issuer       VARCHAR(512) NOT NULL,
    alg          VARCHAR(16)  NOT NULL,
    public_jwk   TEXT         NOT NULL,
    private_key  TEXT         NOT NULL,
    created_at   BIGINT       NOT NULL,
    active_from  BIGINT       NOT NULL,
    retire_after BIGINT
);
CREATE INDEX signing_keys_active ON signing_keys (active_from);

-- A session keeps its id (the access tokens' sid) for its whole life; each refresh
-- replaces refresh_hash and counts a generation. The hashes it replaced are kept in
-- refresh_tokens_spent until the session goes, so that presenting one again (a stolen
-- token used after its owner refreshed, or the other way round) revokes the session.
ALTER TABLE sessions ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN remember_me SMALLINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN revoke_reason VARCHAR(32);

CREATE TABLE refresh_tokens_spent (
    token_hash VARCHAR(64) PRIMARY KEY,
    session_id VARCHAR(64) NOT NULL,
    generation BIGINT      NOT NULL,
    spent_at   BIGINT      NOT NULL,
    FOREIGN KEY (session_id) REFERENCES sessions (id) ON DELETE CASCADE
);
CREATE INDEX refresh_tokens_spent_session ON refresh_tokens_spent (session_id);

-- Preferences a user set through the token service (JSON object, NULL: none). The
-- reconciler writes users.preferences (the User's spec) and never this column; the
-- effective preferences are the spec's overlaid with these (see the README).
ALTER TABLE users ADD COLUMN preferences_override TEXT;

-- Failed logins per account (by e-mail key, known or not, so a lock says nothing about
-- existence) and per client address: exponential backoff after a few free failures.
CREATE TABLE login_throttle (
    throttle_key    VARCHAR(320) PRIMARY KEY,
    failures        BIGINT       NOT NULL,
    last_failure_at BIGINT       NOT NULL,
    locked_until    BIGINT       NOT NULL
);
