//! `whoami` and `status`: what the daemon knows about the caller and about itself.

use serde::Serialize;
use serde_json::value::RawValue;
use warden_proto::PROTOCOL_VERSION;
use warden_proto::messages::{
    ConnectionCounts, DaemonMode, JobCounts, LockdownInfo, RefusalCounts, ViolationCounts,
    WhoamiResult,
};

use super::peer_info;
use super::session::DAEMON_VERSION;
use crate::call::Session;
use crate::state::Shared;
use crate::stats::listener_info;

pub(super) fn whoami(shared: &Shared, s: &Session) -> WhoamiResult {
    let effective = shared.policy().effective(&s.peer, &s.listener);
    // A uid without a passwd entry is shown as such, not as an error: the name is not needed here.
    let user = warden_sys::users::user_name(s.peer.uid.0).ok().flatten();
    WhoamiResult {
        peer: peer_info(&s.peer),
        user,
        tier: effective.tier,
        reason: effective.reason(&s.peer, &s.listener),
        capped: effective.capped,
        granted: effective.granted,
        listener: listener_info(&s.listener),
    }
}

/// The answer to `status`, written exactly as [`StatusResult`] serializes (a test holds it to
/// that) but with the unchanging parts spliced in pre-serialized: `status` is the hottest
/// read-only call, and most of its cost was writing the same keys every time.
#[derive(Debug, Serialize)]
pub(crate) struct StatusReply<'a> {
    daemon_version: &'static str,
    protocol: u32,
    mode: DaemonMode,
    uptime_ms: u64,
    connections: ConnectionCounts,
    violations: ViolationCounts,
    refusals: RefusalCounts,
    jobs: JobCounts,
    limits: &'a RawValue,
    listeners: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    lockdown: Option<LockdownInfo>,
}

pub(super) fn status(shared: &Shared) -> StatusReply<'_> {
    StatusReply {
        daemon_version: DAEMON_VERSION,
        protocol: PROTOCOL_VERSION,
        mode: shared.mode,
        uptime_ms: shared.started.elapsed().as_millis() as u64,
        connections: shared.stats.connections(shared.admission.open()),
        violations: shared.stats.violations(),
        refusals: shared.stats.refusals(),
        jobs: job_counts(shared),
        limits: &shared.static_status.limits,
        listeners: &shared.static_status.listeners,
        lockdown: shared.brakes.lockdown().as_ref().map(super::lockdown_info),
    }
}

fn job_counts(shared: &Shared) -> JobCounts {
    let counts = shared.jobs.counts();
    let cgroups = shared.jobs.cgroups();
    JobCounts {
        running: counts.running,
        queued: counts.queued,
        cgroups: cgroups.is_ok(),
        cgroup_note: cgroups.err().map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;
    use crate::stats::StaticStatus;
    use warden_proto::messages::StatusResult;

    /// Pins: the spliced status answer is byte for byte the protocol's `StatusResult`.
    #[test]
    fn the_status_reply_serializes_exactly_like_the_protocol_type() {
        let settings = Settings::from_toml(
            "[limits]\nrequests_per_second = 2.5\n[[listener]]\npath = \"/run/w/a.sock\"\n\
             [[listener]]\npath = \"/run/w/b.sock\"\nmax_tier = \"read_only\"\n",
            "t",
            DaemonMode::Dev,
        )
        .unwrap();
        let policy = &settings.policy;
        let fixed = StaticStatus::new(policy).unwrap();
        let connections = ConnectionCounts {
            open: 3,
            accepted: 9,
        };
        let violations = ViolationCounts {
            frame_timeout: 2,
            ..Default::default()
        };
        let refusals = RefusalCounts {
            busy_uid: 1,
            ..Default::default()
        };
        let jobs = JobCounts {
            running: 1,
            queued: 0,
            cgroups: false,
            cgroup_note: Some("no cgroup2 hierarchy is mounted".into()),
        };
        let reply = StatusReply {
            daemon_version: DAEMON_VERSION,
            protocol: PROTOCOL_VERSION,
            mode: DaemonMode::Dev,
            uptime_ms: 1234,
            connections,
            violations,
            refusals,
            jobs: jobs.clone(),
            limits: &fixed.limits,
            listeners: &fixed.listeners,
            lockdown: None,
        };
        let typed = StatusResult {
            daemon_version: DAEMON_VERSION.into(),
            protocol: PROTOCOL_VERSION,
            mode: DaemonMode::Dev,
            uptime_ms: 1234,
            connections,
            violations,
            refusals,
            jobs,
            limits: policy.limits.clone(),
            listeners: policy.listeners.iter().map(listener_info).collect(),
            lockdown: None,
        };
        assert_eq!(
            serde_json::to_string(&reply).unwrap(),
            serde_json::to_string(&typed).unwrap()
        );
    }
}
