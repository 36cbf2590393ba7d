//! `hello`, `health`, `version`: what any caller may ask, including tier `none`.

use warden_proto::messages::{HealthResult, HelloResult, VersionResult};
use warden_proto::request::HelloParams;
use warden_proto::{ErrorKind, PROTOCOL_VERSION, Tier};

use super::peer_info;
use crate::call::{Caller, Failure, Session};
use crate::state::Shared;
use crate::stats::listener_info;

/// Optional protocol features this daemon implements (none yet).
const SUPPORTED_FEATURES: &[&str] = &[];

/// The daemon's version, as built.
pub(crate) const DAEMON_VERSION: &str = env!("CARGO_PKG_VERSION");

pub(super) fn hello(
    shared: &Shared,
    s: &mut Session,
    p: HelloParams,
    tier: Tier,
) -> Result<HelloResult, Failure> {
    if p.protocol != PROTOCOL_VERSION {
        return Err(Failure::new(
            ErrorKind::BadRequest,
            format!(
                "protocol {} is not supported; this daemon speaks protocol {PROTOCOL_VERSION}",
                p.protocol
            ),
        ));
    }
    let features = p
        .features
        .iter()
        .map(|f| f.as_str())
        .filter(|f| SUPPORTED_FEATURES.contains(f))
        .map(str::to_owned)
        .collect();
    tracing::debug!(parent: &s.span, client = p.client.as_str(), %tier, "hello");
    s.caller = Some(std::sync::Arc::new(Caller {
        peer: std::sync::Arc::clone(&s.peer),
        exe_pin: s.exe_pin.clone(),
        listener: std::sync::Arc::clone(&s.listener),
        client: p.client.as_str().to_owned(),
        connection: s.connection,
        span: s.span.clone(),
    }));
    s.client = Some(p.client);
    Ok(HelloResult {
        protocol: PROTOCOL_VERSION,
        daemon_version: DAEMON_VERSION.into(),
        features,
        max_frame: shared.limits.max_frame,
        peer: peer_info(&s.peer),
        tier,
        ops: shared.brakes.ops().clone(),
        lockdown: shared.brakes.lockdown().as_ref().map(super::lockdown_info),
        listener: listener_info(&s.listener),
    })
}

pub(super) fn health() -> HealthResult {
    HealthResult {
        status: "ok".into(),
    }
}

pub(super) fn version() -> VersionResult {
    VersionResult {
        daemon_version: DAEMON_VERSION.into(),
        protocol: PROTOCOL_VERSION,
    }
}
