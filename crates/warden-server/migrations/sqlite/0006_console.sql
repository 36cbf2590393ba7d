-- The operator console's machine list: keyset pages ordered by hostname then machine id, over
-- every machine, one site's, one state's, or one site's in one state, each walked on its own
-- index so a page never scans or sorts the machines before it.
CREATE INDEX machines_by_hostname ON machines (hostname, machine_id);
CREATE INDEX machines_by_site_hostname ON machines (site_id, hostname, machine_id);
CREATE INDEX machines_by_state_hostname ON machines (state, hostname, machine_id);
CREATE INDEX machines_by_site_state_hostname ON machines (site_id, state, hostname, machine_id);

-- A machine's dispatches, newest first, for its page.
CREATE INDEX dispatch_hosts_by_machine_id ON dispatch_hosts (machine_id, dispatch_row);
