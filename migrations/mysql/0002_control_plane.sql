-- Control-plane API (MySQL 8 / MariaDB): the database's epoch and the sidecars' audit records.

-- A random id of this database, made on the control plane's first start and renewed by
-- `portcullis-operator new-epoch` (after a restore): sidecars compare revisions only
-- within one epoch, so a restored database (lower revision) can still reset them.
CREATE TABLE epoch (
    id         SMALLINT    PRIMARY KEY CHECK (id = 1),
    value      VARCHAR(64) NOT NULL,
    created_at BIGINT      NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

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
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
