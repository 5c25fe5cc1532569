-- Control-plane API (PostgreSQL): the database's epoch, the sidecars' audit records and
-- a notification on every revision bump.

-- A random id of this database, made on the control plane's first start and renewed by
-- `portcullis-operator new-epoch` (after a restore): sidecars compare revisions only
-- within one epoch, so a restored database (lower revision) can still reset them.
CREATE TABLE epoch (
    id         SMALLINT    PRIMARY KEY CHECK (id = 1),
    value      VARCHAR(64) NOT NULL,
    created_at BIGINT      NOT NULL
);

-- What a sidecar decided about one request (wire::api::AuditRecord). `action` is
-- `request` and `resource` the path for these rows; `source_ip` holds the client.
ALTER TABLE audit_log
    ADD COLUMN namespace VARCHAR(63),
    ADD COLUMN pod VARCHAR(253),
    ADD COLUMN method VARCHAR(16),
    ADD COLUMN path VARCHAR(2048),
    ADD COLUMN rule VARCHAR(512),
    ADD COLUMN status INTEGER;
CREATE INDEX audit_log_correlation ON audit_log (correlation_id);

-- Every committed revision bump is announced on channel `portcullis_revision`, whoever
-- wrote it (another replica, the token service, a psql session): every replica's API
-- server LISTENs and rebuilds its snapshot at once instead of polling. NOTIFY is
-- delivered at commit, so a listener never reads a revision that is not visible yet.
CREATE FUNCTION portcullis_revision_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('portcullis_revision', NEW.value::text);
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER revision_notify AFTER UPDATE ON revision
    FOR EACH ROW EXECUTE FUNCTION portcullis_revision_notify();

-- External JWT issuers (Issuer objects) and the last good keys fetched from them
-- (`jwks`: a JSON array of the wire's JwtKey). A failed fetch keeps them.
CREATE TABLE issuers (
    name            VARCHAR(253)  PRIMARY KEY,
    issuer          VARCHAR(2048) NOT NULL,
    jwks_uri        VARCHAR(2048),
    audiences       TEXT          NOT NULL,
    claims          TEXT          NOT NULL,
    algorithms      TEXT          NOT NULL,
    jwks            TEXT          NOT NULL,
    keys_fetched_at BIGINT,
    keys_expire_at  BIGINT,
    created_at      BIGINT        NOT NULL,
    updated_at      BIGINT        NOT NULL
);
