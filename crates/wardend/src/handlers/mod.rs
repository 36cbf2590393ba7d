//! Endpoint handlers, one file per family. A handler runs only after the gate allowed the
//! request, receives it already typed, and never checks permissions itself.

mod introspect;
mod session;

use serde::Serialize;
use serde_json::value::RawValue;
use warden_policy::PeerIdentity;
use warden_proto::messages::{ListenerInfo, PeerInfo};
use warden_proto::{Request, Tier};

use crate::dispatch::{Failure, Session};
use crate::server::Shared;

/// Runs the handler for an allowed request. `tier` is the caller's tier on its listener.
pub(crate) fn handle(
    shared: &Shared,
    s: &mut Session,
    request: Request,
    tier: Tier,
) -> Result<Box<RawValue>, Failure> {
    match request {
        Request::Hello(p) => reply(&session::hello(shared, s, p, tier)?),
        Request::Health => reply(&session::health()),
        Request::Version => reply(&session::version()),
        Request::Whoami => reply(&introspect::whoami(shared, s)),
        Request::Status => reply(&introspect::status(shared)),
    }
}

fn reply<T: Serialize>(result: &T) -> Result<Box<RawValue>, Failure> {
    serde_json::value::to_raw_value(result)
        .map_err(|e| Failure::internal(format!("cannot encode the result: {e}")))
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
