-- Remote dispatch: the actions each host offers the fleet, dispatches, one row per target host,
-- and every output chunk a host sent (stored once: a resent chunk is ignored).

-- The host's remote-capable actions as its agent last reported them (a JSON array), replaced
-- whole at each report.
CREATE TABLE machine_actions (
    machine_row BIGINT PRIMARY KEY,
    actions TEXT NOT NULL,
    updated_ms BIGINT NOT NULL
);

CREATE TABLE dispatches (
    id BIGSERIAL PRIMARY KEY,
    dispatch_id TEXT NOT NULL UNIQUE,
    operator TEXT NOT NULL,
    action TEXT NOT NULL,
    -- The parameters, secret ones replaced by "<redacted>".
    params TEXT NOT NULL,
    -- 1 when some parameter was secret: its value lives only in the server's memory.
    has_secrets BIGINT NOT NULL DEFAULT 0,
    target TEXT NOT NULL,
    -- The machines the target named that were left out, and why (a JSON array).
    excluded TEXT NOT NULL,
    batch BIGINT NOT NULL,
    max_failures BIGINT,
    canary BIGINT NOT NULL,
    -- running, done or cancelled.
    state TEXT NOT NULL,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    -- Why new hosts stopped being started (max_failures, canary), if they did.
    stopped TEXT,
    created_ms BIGINT NOT NULL,
    ended_ms BIGINT
);
CREATE INDEX dispatches_by_state ON dispatches (state);

CREATE TABLE dispatch_hosts (
    id BIGSERIAL PRIMARY KEY,
    dispatch_row BIGINT NOT NULL REFERENCES dispatches (id),
    machine_row BIGINT NOT NULL,
    machine_id TEXT NOT NULL,
    hostname TEXT NOT NULL,
    -- Its place in the fan-out: the first `canary` go first.
    position BIGINT NOT NULL,
    -- queued, sent, running, succeeded, failed, refused, cancelled, timed_out, rolled_back,
    -- lost or offline.
    state TEXT NOT NULL,
    job_id TEXT,
    exit_code BIGINT,
    result TEXT,
    refusal_kind TEXT,
    refusal_message TEXT,
    -- Why it ended without being started (not_started: …), or other server notes.
    note TEXT,
    progress TEXT,
    -- The highest output chunk stored with none missing before it.
    last_seq BIGINT NOT NULL DEFAULT 0,
    -- The number of chunks the host said the job made, once it ended.
    end_seq BIGINT,
    output_truncated BIGINT NOT NULL DEFAULT 0,
    -- Bytes of output stored for this part, against the server's cap.
    output_bytes BIGINT NOT NULL DEFAULT 0,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    sent_ms BIGINT,
    updated_ms BIGINT NOT NULL,
    ended_ms BIGINT,
    UNIQUE (dispatch_row, machine_row)
);
CREATE INDEX dispatch_hosts_by_machine ON dispatch_hosts (machine_row, state);

CREATE TABLE dispatch_output (
    id BIGSERIAL PRIMARY KEY,
    dispatch_row BIGINT NOT NULL REFERENCES dispatches (id),
    machine_row BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    "offset" BIGINT NOT NULL,
    data TEXT NOT NULL,
    UNIQUE (dispatch_row, machine_row, seq)
);
