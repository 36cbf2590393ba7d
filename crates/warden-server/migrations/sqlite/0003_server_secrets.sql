-- Secrets the servers sharing this database share, made once by the first server to start:
-- `session_signing_key`, the key (hex) that signs login tokens.
CREATE TABLE server_secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
