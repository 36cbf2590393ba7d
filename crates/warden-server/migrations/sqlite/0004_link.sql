-- The agent link: machine key versions and two-phase rotation, quarantine, the link's state as
-- operators see it, and the revocations every server watches to close live links.

-- 1 for a machine's first key, one more for each key after it (enrollment or rotation).
ALTER TABLE machine_keys ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
-- 1 while a rotated-in key has not been used: the key before it still works until then.
ALTER TABLE machine_keys ADD COLUMN pending BIGINT NOT NULL DEFAULT 0;
-- When a newer key's first use retired this one. A retired key presented again is a clone
-- signal (unlike a revoked one, which an operator or a re-enrollment turned off).
ALTER TABLE machine_keys ADD COLUMN retired_ms BIGINT;
UPDATE machine_keys SET version = (
    SELECT COUNT(*) FROM machine_keys k2
    WHERE k2.machine_row = machine_keys.machine_row AND k2.id <= machine_keys.id
);

-- When the machine's key is next due for rotation (NULL: set at its next link).
ALTER TABLE machines ADD COLUMN next_rotation_ms BIGINT;
-- What the agent said it is, at its last link.
ALTER TABLE machines ADD COLUMN agent_version TEXT;
-- When its live link came up; NULL while it has none.
ALTER TABLE machines ADD COLUMN linked_ms BIGINT;

-- A machine whose live link must be checked again now: a key revoked or retired, the machine
-- removed, banned or quarantined. Rows are the truth; every server polls them (newest second
-- first) and closes the links it holds that no longer stand.
CREATE TABLE machine_revocations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_row BIGINT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE INDEX machine_revocations_by_time ON machine_revocations (created_ms);
