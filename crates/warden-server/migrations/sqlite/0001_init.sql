-- Sites, their enrollment keys, machines, machine keys, bans and audit events.
-- Times are milliseconds since the Unix epoch; flags are 0 or 1 (one schema shape for SQLite and
-- PostgreSQL). Never edit a shipped migration: add the next one.

CREATE TABLE sites (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL DEFAULT 'default',
    site_code TEXT NOT NULL,
    display_name TEXT NOT NULL,
    company TEXT NOT NULL,
    -- The last enrollment key version issued; a rotation increments it first, which orders
    -- concurrent rotations.
    key_version BIGINT NOT NULL DEFAULT 0,
    created_ms BIGINT NOT NULL,
    UNIQUE (tenant, site_code)
);

CREATE TABLE enrollment_keys (
    site_id BIGINT NOT NULL REFERENCES sites (id),
    version BIGINT NOT NULL,
    -- Argon2id PHC string; the key itself is never stored.
    hash TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    active BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (site_id, version)
);

CREATE TABLE machines (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_id TEXT NOT NULL UNIQUE,
    site_id BIGINT NOT NULL REFERENCES sites (id),
    hostname TEXT NOT NULL,
    labels TEXT NOT NULL,
    -- active | pending | removed
    state TEXT NOT NULL,
    -- The enrollment key version the machine last enrolled with.
    key_version BIGINT NOT NULL,
    -- A clone waiting for approval, and the hostname an operator approved.
    pending_hostname TEXT,
    approved_hostname TEXT,
    created_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL
);

CREATE TABLE machine_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_row BIGINT NOT NULL REFERENCES machines (id),
    -- Hex SHA-256 of the key; the key itself is never stored.
    hash TEXT NOT NULL UNIQUE,
    created_ms BIGINT NOT NULL,
    revoked_ms BIGINT
);
CREATE INDEX machine_keys_by_machine ON machine_keys (machine_row);

CREATE TABLE bans (
    machine_id TEXT PRIMARY KEY,
    created_ms BIGINT NOT NULL
);

CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    target TEXT NOT NULL,
    source TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX events_by_time ON events (ts_ms);
