-- Portcullis control-plane schema (PostgreSQL).
-- Times are Unix seconds (BIGINT) and JSON is TEXT so that the three backends share one
-- store implementation; flags are SMALLINT 0/1 for the same reason.

-- The snapshot version: bumped, as the first statement, by every write that changes
-- what a policy snapshot holds. Taking this row lock first also orders all writers.
CREATE TABLE revision (
    id    SMALLINT PRIMARY KEY CHECK (id = 1),
    value BIGINT   NOT NULL
);
INSERT INTO revision (id, value) VALUES (1, 0);

CREATE TABLE roles (
    name        VARCHAR(253) PRIMARY KEY,
    scopes      TEXT         NOT NULL,
    description TEXT,
    builtin     SMALLINT     NOT NULL DEFAULT 0 CHECK (builtin IN (0, 1)),
    created_at  BIGINT       NOT NULL,
    updated_at  BIGINT       NOT NULL
);

CREATE TABLE users (
    name                   VARCHAR(253) PRIMARY KEY,
    email                  VARCHAR(254) NOT NULL,
    email_key              VARCHAR(254) NOT NULL,
    display_name           VARCHAR(256),
    disabled               SMALLINT     NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    password_hash          TEXT,
    password_source_digest VARCHAR(64),
    preferences            TEXT         NOT NULL,
    require_two_factor     SMALLINT     NOT NULL DEFAULT 0 CHECK (require_two_factor IN (0, 1)),
    created_at             BIGINT       NOT NULL,
    updated_at             BIGINT       NOT NULL,
    CONSTRAINT users_email_key_unique UNIQUE (email_key)
);

CREATE TABLE user_roles (
    user_name VARCHAR(253) NOT NULL,
    role_name VARCHAR(253) NOT NULL,
    PRIMARY KEY (user_name, role_name),
    FOREIGN KEY (user_name) REFERENCES users (name) ON DELETE CASCADE,
    FOREIGN KEY (role_name) REFERENCES roles (name) ON DELETE CASCADE
);
CREATE INDEX user_roles_role ON user_roles (role_name);

CREATE TABLE teams (
    name         VARCHAR(253) PRIMARY KEY,
    display_name VARCHAR(256),
    description  TEXT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);

CREATE TABLE team_members (
    team_name VARCHAR(253) NOT NULL,
    user_name VARCHAR(253) NOT NULL,
    role      VARCHAR(16)  NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    PRIMARY KEY (team_name, user_name),
    FOREIGN KEY (team_name) REFERENCES teams (name) ON DELETE CASCADE,
    FOREIGN KEY (user_name) REFERENCES users (name) ON DELETE CASCADE
);
CREATE INDEX team_members_user ON team_members (user_name);

CREATE TABLE api_keys (
    key_hash   VARCHAR(64)  PRIMARY KEY,
    namespace  VARCHAR(63)  NOT NULL,
    name       VARCHAR(253) NOT NULL,
    prefix     VARCHAR(32)  NOT NULL,
    owner_kind VARCHAR(16)  NOT NULL CHECK (owner_kind IN ('user', 'source')),
    owner_name VARCHAR(253) NOT NULL,
    scopes     TEXT         NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT,
    created_at BIGINT       NOT NULL
);
CREATE INDEX api_keys_object ON api_keys (namespace, name);
CREATE INDEX api_keys_owner ON api_keys (owner_kind, owner_name);

CREATE TABLE sources (
    namespace   VARCHAR(63)  NOT NULL,
    name        VARCHAR(253) NOT NULL,
    source_type VARCHAR(16)  NOT NULL,
    team_name   VARCHAR(253),
    labels      TEXT         NOT NULL,
    enabled     SMALLINT     NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    rate_limit  TEXT,
    created_at  BIGINT       NOT NULL,
    updated_at  BIGINT       NOT NULL,
    PRIMARY KEY (namespace, name)
);

CREATE TABLE policies (
    namespace    VARCHAR(63)  NOT NULL,
    name         VARCHAR(253) NOT NULL,
    pod_selector TEXT         NOT NULL,
    spec         TEXT         NOT NULL,
    created_at   BIGINT       NOT NULL,
    updated_at   BIGINT       NOT NULL,
    PRIMARY KEY (namespace, name)
);

CREATE TABLE sessions (
    id           VARCHAR(64)  PRIMARY KEY,
    user_name    VARCHAR(253) NOT NULL,
    refresh_hash VARCHAR(64)  NOT NULL,
    device       VARCHAR(256),
    user_agent   VARCHAR(512),
    ip           VARCHAR(64),
    created_at   BIGINT       NOT NULL,
    expires_at   BIGINT       NOT NULL,
    last_used_at BIGINT       NOT NULL,
    revoked_at   BIGINT,
    rotated_from VARCHAR(64),
    CONSTRAINT sessions_refresh_hash_unique UNIQUE (refresh_hash),
    FOREIGN KEY (user_name) REFERENCES users (name) ON DELETE CASCADE
);
CREATE INDEX sessions_user ON sessions (user_name);
CREATE INDEX sessions_revoked ON sessions (revoked_at, expires_at);

CREATE TABLE password_reset_tokens (
    token_hash VARCHAR(64)  PRIMARY KEY,
    user_name  VARCHAR(253) NOT NULL,
    created_at BIGINT       NOT NULL,
    expires_at BIGINT       NOT NULL,
    used_at    BIGINT,
    FOREIGN KEY (user_name) REFERENCES users (name) ON DELETE CASCADE
);
CREATE INDEX password_reset_tokens_user ON password_reset_tokens (user_name);

CREATE TABLE audit_log (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at    BIGINT       NOT NULL,
    correlation_id VARCHAR(64),
    actor          VARCHAR(512),
    action         VARCHAR(64)  NOT NULL,
    resource       VARCHAR(1024),
    decision       VARCHAR(16)  NOT NULL,
    reason         VARCHAR(256),
    source_ip      VARCHAR(64)
);
CREATE INDEX audit_log_time ON audit_log (occurred_at);
