-- Operator accounts, their login sessions and their API tokens.

CREATE TABLE operators (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    -- viewer | operator | admin
    role TEXT NOT NULL,
    -- Argon2id PHC string.
    password_hash TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);

-- A login's signed token names its session; logging out revokes the session.
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    operator_id BIGINT NOT NULL REFERENCES operators (id),
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    revoked_ms BIGINT
);

CREATE TABLE api_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    operator_id BIGINT NOT NULL REFERENCES operators (id),
    name TEXT NOT NULL,
    -- The most this token may do: viewer | operator | admin, never above its operator's role.
    role TEXT NOT NULL,
    -- Hex SHA-256 of the token; the token itself is never stored.
    hash TEXT NOT NULL UNIQUE,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    revoked_ms BIGINT
);
