//! `whoami` and `status`: what the daemon knows about the caller and about itself.

use serde::Serialize;
use serde_json::value::RawValue;
use warden_proto::messages::{
    ConnectionCounts, DaemonMode, JobCounts, LockdownInfo, RefusalCounts, ViolationCounts,
    WhoamiResult,
};
use warden_proto::{HEADER_LEN, Id, PROTOCOL_VERSION};

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

impl StatusReply<'_> {
    /// The framed answer to `status` request `id`, byte for byte what
    /// `envelope::result_frame(id, self)` writes (a test holds it to that), with the names
    /// written as the literals they are. Through serde, every one of its ~40 names was escaped
    /// character by character on every answer: a third of the daemon's own CPU time per
    /// `status`. Values that may need escaping still go through serde.
    pub(super) fn frame(&self, id: &Id<'_>) -> serde_json::Result<Vec<u8>> {
        let StatusReply {
            daemon_version,
            protocol,
            mode,
            uptime_ms,
            connections: ConnectionCounts { open, accepted },
            violations:
                ViolationCounts {
                    frame_empty,
                    frame_too_large,
                    frame_truncated,
                    frame_timeout,
                    hello_timeout,
                    hello_missing,
                    invalid_jsonrpc,
                    closed_for_violations,
                    write_timeout,
                },
            refusals:
                RefusalCounts {
                    busy_total,
                    busy_uid,
                    rate_limited_connection,
                    rate_limited_uid,
                    identity_unreadable,
                },
            jobs:
                JobCounts {
                    running,
                    queued,
                    cgroups,
                    cgroup_note,
                },
            limits,
            listeners,
            lockdown,
        } = self;
        let mut out =
            Vec::with_capacity(HEADER_LEN + 640 + limits.get().len() + listeners.get().len());
        out.extend_from_slice(&[0; HEADER_LEN]);
        out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
        serde_json::to_writer(&mut out, id)?;
        out.extend_from_slice(br#","result":{"daemon_version":"#);
        serde_json::to_writer(&mut out, daemon_version)?;
        field(&mut out, br#","protocol":"#, u64::from(*protocol))?;
        out.extend_from_slice(br#","mode":"#);
        serde_json::to_writer(&mut out, mode)?;
        field(&mut out, br#","uptime_ms":"#, *uptime_ms)?;
        field(&mut out, br#","connections":{"open":"#, *open)?;
        field(&mut out, br#","accepted":"#, *accepted)?;
        field(&mut out, br#"},"violations":{"frame_empty":"#, *frame_empty)?;
        field(&mut out, br#","frame_too_large":"#, *frame_too_large)?;
        field(&mut out, br#","frame_truncated":"#, *frame_truncated)?;
        field(&mut out, br#","frame_timeout":"#, *frame_timeout)?;
        field(&mut out, br#","hello_timeout":"#, *hello_timeout)?;
        field(&mut out, br#","hello_missing":"#, *hello_missing)?;
        field(&mut out, br#","invalid_jsonrpc":"#, *invalid_jsonrpc)?;
        field(
            &mut out,
            br#","closed_for_violations":"#,
            *closed_for_violations,
        )?;
        field(&mut out, br#","write_timeout":"#, *write_timeout)?;
        field(&mut out, br#"},"refusals":{"busy_total":"#, *busy_total)?;
        field(&mut out, br#","busy_uid":"#, *busy_uid)?;
        field(
            &mut out,
            br#","rate_limited_connection":"#,
            *rate_limited_connection,
        )?;
        field(&mut out, br#","rate_limited_uid":"#, *rate_limited_uid)?;
        field(
            &mut out,
            br#","identity_unreadable":"#,
            *identity_unreadable,
        )?;
        field(&mut out, br#"},"jobs":{"running":"#, *running)?;
        field(&mut out, br#","queued":"#, *queued)?;
        out.extend_from_slice(match cgroups {
            true => br#","cgroups":true,"cgroup_note":"#,
            false => br#","cgroups":false,"cgroup_note":"#,
        });
        serde_json::to_writer(&mut out, cgroup_note)?;
        out.extend_from_slice(br#"},"limits":"#);
        out.extend_from_slice(limits.get().as_bytes());
        out.extend_from_slice(br#","listeners":"#);
        out.extend_from_slice(listeners.get().as_bytes());
        if let Some(lockdown) = lockdown {
            out.extend_from_slice(br#","lockdown":"#);
            serde_json::to_writer(&mut out, lockdown)?;
        }
        out.extend_from_slice(b"}}");
        let len = u32::try_from(out.len() - HEADER_LEN).map_err(|_| {
            <serde_json::Error as serde::ser::Error>::custom("answer exceeds 4 GiB")
        })?;
        out[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
        Ok(out)
    }
}

/// Writes a literal `name` (its quotes, colon and any punctuation before it), then `n`.
fn field(out: &mut Vec<u8>, name: &[u8], n: u64) -> serde_json::Result<()> {
    out.extend_from_slice(name);
    serde_json::to_writer(out, &n)
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
    use warden_proto::envelope::result_frame;
    use warden_proto::messages::StatusResult;

    /// A status with every counter distinct, and the typed answer it must read as.
    fn both<'a>(
        fixed: &'a StaticStatus,
        policy: &warden_policy::Policy,
        jobs: JobCounts,
        lockdown: Option<LockdownInfo>,
    ) -> (StatusReply<'a>, StatusResult) {
        let connections = ConnectionCounts {
            open: 3,
            accepted: 9,
        };
        let violations = ViolationCounts {
            frame_empty: 10,
            frame_too_large: 11,
            frame_truncated: 12,
            frame_timeout: 2,
            hello_timeout: 13,
            hello_missing: 14,
            invalid_jsonrpc: 15,
            closed_for_violations: 16,
            write_timeout: u64::MAX,
        };
        let refusals = RefusalCounts {
            busy_total: 20,
            busy_uid: 1,
            rate_limited_connection: 21,
            rate_limited_uid: 22,
            identity_unreadable: 23,
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
            lockdown: lockdown.clone(),
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
            lockdown,
        };
        (reply, typed)
    }

    /// Pins: the spliced status answer, and the frame written for it by hand, are byte for byte
    /// the protocol's `StatusResult` and its answer frame, with and without a lockdown and a
    /// cgroup note (text that needs escaping included).
    #[test]
    fn the_status_reply_serializes_exactly_like_the_protocol_type() {
        let settings = Settings::from_toml(
            "[limits]\nrequests_per_second = 2.5\n[[listener]]\npath = \"/run/w/a.sock\"\n\
             [[listener]]\npath = \"/run/w/b \\\"quoted\\\".sock\"\nmax_tier = \"read_only\"\n",
            "t",
            DaemonMode::Dev,
        )
        .unwrap();
        let policy = &settings.policy;
        let fixed = StaticStatus::new(policy).unwrap();
        let without_cgroups = JobCounts {
            running: 1,
            queued: 0,
            cgroups: false,
            cgroup_note: Some("no cgroup2 hierarchy is mounted: \"/sys\"\n\u{7}é".into()),
        };
        let with_cgroups = JobCounts {
            running: 0,
            queued: 7,
            cgroups: true,
            cgroup_note: None,
        };
        let lockdown = LockdownInfo {
            reason: "incident \"42\"\tsee\\ops\n\u{1}ü".into(),
            by_uid: 0,
            since: "2026-12-06T07:00:00Z".into(),
        };
        for (jobs, lockdown) in [
            (without_cgroups.clone(), None),
            (with_cgroups.clone(), Some(lockdown.clone())),
            (without_cgroups, Some(lockdown)),
            (with_cgroups, None),
        ] {
            let (reply, typed) = both(&fixed, policy, jobs, lockdown);
            assert_eq!(
                serde_json::to_string(&reply).unwrap(),
                serde_json::to_string(&typed).unwrap()
            );
            let text = warden_proto::Envelope::parse(
                br#"{"jsonrpc":"2.0","id":"a \"b\" \u00e9","method":"status"}"#,
            )
            .unwrap()
            .id;
            for id in [Id::number(7), Id::number(u64::MAX), text] {
                let by_hand = reply.frame(&id).unwrap();
                let by_serde = result_frame(&id, &typed).unwrap();
                assert_eq!(
                    String::from_utf8_lossy(&by_hand),
                    String::from_utf8_lossy(&by_serde)
                );
                assert_eq!(by_hand, by_serde);
            }
        }
    }
}
