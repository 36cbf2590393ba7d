-- The operator console's machine list: keyset pages ordered by hostname then machine id, over
-- every machine, one site's, one state's, or one site's in one state, each walked on its own
-- index so a page never scans or sorts the machines before it. The index of the whole list
-- also holds the link state, so a `connected` or last-seen filter that few machines pass is
-- judged on the index alone (no table read per machine passed over); it costs one index entry
-- per `last_seen` write.
CREATE INDEX machines_by_hostname ON machines (hostname, machine_id, linked_ms, last_seen_ms);
CREATE INDEX machines_by_site_hostname ON machines (site_id, hostname, machine_id);
CREATE INDEX machines_by_state_hostname ON machines (state, hostname, machine_id);
CREATE INDEX machines_by_site_state_hostname ON machines (site_id, state, hostname, machine_id);

-- A machine's dispatches, newest first, for its page.
CREATE INDEX dispatch_hosts_by_machine_id ON dispatch_hosts (machine_id, dispatch_row);
