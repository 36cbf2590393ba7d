//! Endpoint handlers, one file per family. A handler runs only after the gate allowed the
//! request, receives it already typed, and never checks permissions itself.

mod introspect;
mod session;

pub(crate) use introspect::StaticStatus;

use serde::Serialize;
use warden_policy::PeerIdentity;
use warden_proto::messages::{
    HealthResult, HelloResult, ListenerInfo, PeerInfo, VersionResult, WhoamiResult,
};
use warden_proto::{Request, Tier};

use crate::dispatch::{Failure, Session};
use crate::server::Shared;

/// A handler's typed result, serialized once, straight into the answer frame.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum Reply<'a> {
    Hello(HelloResult),
    Health(HealthResult),
    Version(VersionResult),
    Whoami(WhoamiResult),
    Status(introspect::StatusReply<'a>),
}

/// Runs the handler for an allowed request. `tier` is the caller's tier on its listener.
pub(crate) fn handle<'a>(
    shared: &'a Shared,
    s: &mut Session,
    request: Request,
    tier: Tier,
) -> Result<Reply<'a>, Failure> {
    Ok(match request {
        Request::Hello(p) => Reply::Hello(session::hello(shared, s, p, tier)?),
        Request::Health => Reply::Health(session::health()),
        Request::Version => Reply::Version(session::version()),
        Request::Whoami => Reply::Whoami(introspect::whoami(shared, s)),
        Request::Status => Reply::Status(introspect::status(shared)),
    })
}

/// The wire view of a caller's identity.
fn peer_info(p: &PeerIdentity) -> PeerInfo {
    PeerInfo {
        uid: p.uid,
        gid: p.gid,
        pid: p.pid,
        groups: p.groups.clone(),
        exe: p.exe.as_ref().map(|e| e.to_string_lossy().into_owned()),
    }
}

/// The wire view of a listener.
fn listener_info(l: &warden_policy::ListenerPolicy) -> ListenerInfo {
    ListenerInfo {
        path: l.path.to_string_lossy().into_owned(),
        max_tier: l.max_tier,
    }
}
