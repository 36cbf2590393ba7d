//! What a request carries on its way through the daemon, below the request path and the
//! handlers alike: who is calling ([`Caller`], [`Session`]), how a request fails ([`Failure`]),
//! where a waiting request's notifications go ([`Outbound`]), and the framing of answers. Both
//! `dispatch` and the handlers import it; it imports neither, so the request path's modules
//! only import downward.

use std::sync::Arc;
use std::time::Duration;

use warden_policy::{ListenerPolicy, PeerIdentity};
use warden_proto::envelope::{self, Id};
use warden_proto::request::ClientName;
use warden_proto::{ErrorKind, RpcError};

use crate::identity::PinnedExe;
use crate::limits::TokenBucket;
use crate::logs::{self, MESSAGE_MAX};

/// Where a request's answers go when they are sent from a task of their own.
pub(crate) type Outbound = tokio::sync::mpsc::Sender<Vec<u8>>;

/// Who is calling, once `hello` is done: what a request running on its own task carries along.
#[derive(Debug)]
pub(crate) struct Caller {
    pub peer: Arc<PeerIdentity>,
    /// The peer's executable as it was at accept, when a digest guard may need to hash it.
    pub exe_pin: Option<Arc<PinnedExe>>,
    pub listener: Arc<ListenerPolicy>,
    /// The name given in `hello`.
    pub client: String,
    /// The daemon's number for the connection.
    pub connection: u64,
    pub span: tracing::Span,
}

/// Per-connection state the request path reads and updates.
#[derive(Debug)]
pub(crate) struct Session {
    /// This connection's log span (connection id, uid, pid); the parent of its log lines.
    pub span: tracing::Span,
    /// Who is calling, from the kernel at connect.
    pub peer: Arc<PeerIdentity>,
    /// The peer's executable as it was at accept, when a digest guard may need to hash it.
    pub exe_pin: Option<Arc<PinnedExe>>,
    /// The socket it came in through.
    pub listener: Arc<ListenerPolicy>,
    /// The daemon's number for this connection.
    pub connection: u64,
    /// This connection's request rate.
    pub bucket: TokenBucket,
    /// The name given in `hello`; `None` until the handshake is done.
    pub client: Option<ClientName>,
    /// Set by a successful `hello`.
    pub caller: Option<Arc<Caller>>,
    /// Frames that were not JSON-RPC so far.
    pub invalid_frames: u8,
}

/// A request that did not succeed, before it is turned into a wire error.
#[derive(Debug)]
pub(crate) struct Failure {
    pub code: i32,
    pub kind: ErrorKind,
    pub message: String,
    /// The internal cause, for admins and the log only.
    pub detail: Option<String>,
    pub retry_after: Option<Duration>,
    /// Set when the id was already used elsewhere (a denial's audit record).
    pub correlation: Option<String>,
}

impl Failure {
    /// A failure with `message`, bounded to [`MESSAGE_MAX`] bytes on one line (whatever peer
    /// text its maker forgot to cut).
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Failure {
            code: kind.default_code(),
            kind,
            message: bounded(message.into()),
            detail: None,
            retry_after: None,
            correlation: None,
        }
    }

    /// The same failure, telling the caller when to try again.
    pub(crate) fn retry_after(self, wait: Duration) -> Self {
        Failure {
            retry_after: Some(wait),
            ..self
        }
    }

    pub(crate) fn coded(code: i32, kind: ErrorKind, message: impl Into<String>) -> Self {
        Failure {
            code,
            ..Failure::new(kind, message)
        }
    }

    /// An internal error; `detail` reaches admins only.
    pub(crate) fn internal(detail: impl Into<String>) -> Self {
        Failure {
            detail: Some(detail.into()),
            ..Failure::new(ErrorKind::Internal, "internal error")
        }
    }

    pub(crate) fn rate_limited(message: String, wait: Duration) -> Self {
        Failure {
            retry_after: Some(wait),
            ..Failure::new(ErrorKind::RateLimited, message)
        }
    }
}

/// `message` if it is short and has nothing to escape (nearly always), else cut to
/// [`MESSAGE_MAX`] bytes and escaped.
pub(crate) fn bounded(message: String) -> String {
    if message.len() <= MESSAGE_MAX && !message.chars().any(logs::needs_escape) {
        message
    } else {
        logs::cut_escaped(&message, MESSAGE_MAX)
    }
}

/// A random correlation id: 16 hex digits that reveal nothing about the request or the daemon.
pub(crate) fn correlation_id() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // The kernel's random source does not fail on supported kernels; if it ever does, an id
        // from the clock is still unique enough to find the log line, and reveals only a time.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = nanos.to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A framed answer, or `None` (and a log line) if it could not be encoded.
pub(crate) fn encoded(frame: serde_json::Result<Vec<u8>>) -> Option<Vec<u8>> {
    frame
        .map_err(|e| tracing::error!(error = %e, "cannot encode an answer"))
        .ok()
}

/// A notification, framed.
pub(crate) fn framed_notification<T: serde::Serialize>(
    method: &str,
    params: &T,
) -> Option<Vec<u8>> {
    encoded(envelope::notification_frame(method, params))
}

/// An error answer, framed.
pub(crate) fn framed_error(id: Option<&Id<'_>>, err: &RpcError) -> Option<Vec<u8>> {
    encoded(envelope::error_frame(id, err))
}
