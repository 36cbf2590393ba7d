//! `whoami` and `status`: what the daemon knows about the caller and about itself.

use warden_proto::PROTOCOL_VERSION;
use warden_proto::messages::{StatusResult, WhoamiResult};

use super::session::DAEMON_VERSION;
use super::{listener_info, peer_info};
use crate::dispatch::Session;
use crate::server::Shared;

pub(super) fn whoami(shared: &Shared, s: &Session) -> WhoamiResult {
    let effective = shared.policy.effective(&s.peer, &s.listener);
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

pub(super) fn status(shared: &Shared) -> StatusResult {
    StatusResult {
        daemon_version: DAEMON_VERSION.into(),
        protocol: PROTOCOL_VERSION,
        mode: shared.mode,
        uptime_ms: shared.started.elapsed().as_millis() as u64,
        connections: shared.stats.connections(shared.admission.open()),
        violations: shared.stats.violations(),
        refusals: shared.stats.refusals(),
        limits: shared.policy.limits.clone(),
        listeners: shared.policy.listeners.iter().map(listener_info).collect(),
    }
}
