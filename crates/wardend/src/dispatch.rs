//! The request path of one frame: envelope → rate limits → method → handshake order → typed
//! params → the gate → the handler → the answer. This is the only caller of the gate, and every
//! handler runs behind it.
//!
//! Error answers carry a random correlation id, which is also on the daemon's log line for that
//! error (log lines a peer causes are rate-limited per uid). Internal causes (`detail`) are sent
//! only to admin-tier callers.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use warden_policy::{Decision, ListenerPolicy, PeerIdentity, Runtime};
use warden_proto::envelope::{self, Envelope, Id};
use warden_proto::error::code;
use warden_proto::request::ClientName;
use warden_proto::{ErrorKind, Method, Request, RpcError, Tier};

use crate::handlers::{self, Reply};
use crate::limits::{TokenBucket, retry_ms};
use crate::server::Shared;

/// Invalid (non-JSON-RPC) frames after which a connection is closed.
pub(crate) const MAX_INVALID_FRAMES: u8 = 3;

/// Per-connection state the request path reads and updates.
#[derive(Debug)]
pub(crate) struct Session {
    /// This connection's log span (connection id, uid, pid); the parent of its log lines.
    pub span: tracing::Span,
    /// Who is calling, from the kernel at connect.
    pub peer: PeerIdentity,
    /// The socket it came in through.
    pub listener: Arc<ListenerPolicy>,
    /// This connection's request rate.
    pub bucket: TokenBucket,
    /// The name given in `hello`; `None` until the handshake is done.
    pub client: Option<ClientName>,
    /// Frames that were not JSON-RPC so far.
    pub invalid_frames: u8,
}

/// The answer to one frame.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// The framed answer; `None` if it could not be encoded (the connection then closes).
    pub frame: Option<Vec<u8>>,
    /// Close after sending.
    pub close: bool,
}

/// A request that did not succeed, before it is turned into a wire error.
#[derive(Debug)]
pub(crate) struct Failure {
    code: i32,
    kind: ErrorKind,
    message: String,
    detail: Option<String>,
    retry_after: Option<Duration>,
}

impl Failure {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Failure {
            code: kind.default_code(),
            kind,
            message: message.into(),
            detail: None,
            retry_after: None,
        }
    }

    fn coded(code: i32, kind: ErrorKind, message: impl Into<String>) -> Self {
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

    fn rate_limited(message: String, wait: Duration) -> Self {
        Failure {
            retry_after: Some(wait),
            ..Failure::new(ErrorKind::RateLimited, message)
        }
    }
}

/// Answers one frame.
pub(crate) fn handle(shared: &Shared, s: &mut Session, frame: &[u8]) -> Outcome {
    let before_hello = s.client.is_none();
    let env = match Envelope::parse(frame) {
        Ok(env) => env,
        Err(e) => {
            shared.stats.invalid_jsonrpc.inc();
            s.invalid_frames = s.invalid_frames.saturating_add(1);
            let last = s.invalid_frames >= MAX_INVALID_FRAMES;
            let mut message = e.to_string();
            if before_hello {
                shared.stats.hello_missing.inc();
                message.push_str("; the first request must be hello");
            } else if last {
                shared.stats.closed_for_violations.inc();
                message.push_str(&format!(
                    "; closing after {MAX_INVALID_FRAMES} invalid frames"
                ));
            }
            let f = Failure::coded(e.code(), ErrorKind::BadRequest, message);
            return failed(shared, s, None, None, f, before_hello || last);
        }
    };
    let method = Method::from_name(&env.method);
    match respond(shared, s, &env, method, before_hello) {
        Ok(reply) => Outcome {
            frame: encoded(envelope::result_frame(&env.id, &reply)),
            close: false,
        },
        // Before the handshake completes, any error ends the connection.
        Err(f) => failed(shared, s, Some(&env.id), method, f, before_hello),
    }
}

fn respond<'a>(
    shared: &'a Shared,
    s: &mut Session,
    env: &Envelope<'_>,
    method: Option<Method>,
    before_hello: bool,
) -> Result<Reply<'a>, Failure> {
    let now = Instant::now();
    let limits = &shared.policy.limits;
    if let Err(wait) = s.bucket.try_take(now) {
        shared.stats.rate_limited_connection.inc();
        return Err(Failure::rate_limited(
            format!(
                "too many requests on this connection ({}/s, burst {})",
                limits.requests_per_second, limits.burst
            ),
            wait,
        ));
    }
    if let Err(wait) = shared.admission.take_uid_token(s.peer.uid, now) {
        shared.stats.rate_limited_uid.inc();
        return Err(Failure::rate_limited(
            format!(
                "too many requests from uid {} ({}/s, burst {})",
                s.peer.uid, limits.uid_requests_per_second, limits.uid_burst
            ),
            wait,
        ));
    }
    let Some(method) = method else {
        if before_hello {
            shared.stats.hello_missing.inc();
        }
        return Err(Failure::coded(
            code::METHOD_NOT_FOUND,
            ErrorKind::NotFound,
            format!("unknown method `{}`", shown(&env.method)),
        ));
    };
    if before_hello && method != Method::Hello {
        shared.stats.hello_missing.inc();
        return Err(Failure::coded(
            code::INVALID_REQUEST,
            ErrorKind::BadRequest,
            format!("the first request must be hello, not {method}"),
        ));
    }
    if !before_hello && method == Method::Hello {
        return Err(Failure::coded(
            code::INVALID_REQUEST,
            ErrorKind::BadRequest,
            "hello was already done on this connection",
        ));
    }
    let request = Request::parse(method, env.params)
        .map_err(|e| Failure::coded(code::INVALID_PARAMS, ErrorKind::BadRequest, e.to_string()))?;
    let runtime = Runtime { ops: &shared.ops };
    let tier = match shared
        .policy
        .authorize(&s.peer, &s.listener, &request, &runtime)
    {
        Decision::Allow { tier } => tier,
        Decision::Deny { kind, reason, .. } => return Err(Failure::new(kind, reason)),
    };
    // A bug in a handler must cost one request, not the daemon.
    match catch_unwind(AssertUnwindSafe(|| {
        handlers::handle(shared, s, request, tier)
    })) {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(Failure::internal(format!(
                "{method} handler panicked: {what}"
            )))
        }
    }
}

/// A method name fit for an error message and a log line: at most 64 characters, escaped.
fn shown(name: &str) -> String {
    let mut s: String = name
        .chars()
        .take(64)
        .collect::<String>()
        .escape_debug()
        .to_string();
    if name.chars().count() > 64 {
        s.push('…');
    }
    s
}

fn failed(
    shared: &Shared,
    s: &Session,
    id: Option<&Id<'_>>,
    method: Option<Method>,
    f: Failure,
    close: bool,
) -> Outcome {
    let admin =
        f.detail.is_some() && shared.policy.effective(&s.peer, &s.listener).tier == Tier::Admin;
    let err = to_rpc(&f, admin);
    log_failure(shared, s, method, &err, f.detail.as_deref());
    Outcome {
        frame: framed_error(id, &err),
        close,
    }
}

/// The wire error for `f`; its internal `detail` only when `admin`.
fn to_rpc(f: &Failure, admin: bool) -> RpcError {
    let mut err = RpcError::with_code(f.code, f.kind, f.message.clone(), correlation_id());
    if let Some(wait) = f.retry_after {
        err = err.retry_after_ms(retry_ms(wait));
    }
    if admin && let Some(detail) = &f.detail {
        err = err.detail(detail.clone());
    }
    err
}

/// Logs a refused or failed request under its correlation id, within the peer's log budget.
pub(crate) fn log_refusal(shared: &Shared, s: &Session, method: Option<Method>, err: &RpcError) {
    log_failure(shared, s, method, err, None);
}

fn log_failure(
    shared: &Shared,
    s: &Session,
    method: Option<Method>,
    err: &RpcError,
    detail: Option<&str>,
) {
    let Some(suppressed) = shared.logs.admit(s.peer.uid) else {
        return;
    };
    let method = method.map(Method::as_str);
    let cid = err.data.correlation_id.as_str();
    let kind = err.data.kind.as_str();
    if err.data.kind == ErrorKind::Internal {
        tracing::error!(
            correlation_id = cid,
            kind,
            method,
            detail,
            suppressed,
            "{}",
            err.message
        );
    } else {
        tracing::info!(
            correlation_id = cid,
            kind,
            method,
            suppressed,
            "refused: {}",
            err.message
        );
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
fn encoded(frame: serde_json::Result<Vec<u8>>) -> Option<Vec<u8>> {
    frame
        .map_err(|e| tracing::error!(error = %e, "cannot encode an answer"))
        .ok()
}

/// An error answer, framed.
pub(crate) fn framed_error(id: Option<&Id<'_>>, err: &RpcError) -> Option<Vec<u8>> {
    encoded(envelope::error_frame(id, err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlation_ids_are_16_hex_digits_and_differ() {
        let a = correlation_id();
        let b = correlation_id();
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn internal_detail_reaches_admins_only() {
        let f = Failure::internal("disk on fire");
        let admin = to_rpc(&f, true);
        assert_eq!(admin.data.detail.as_deref(), Some("disk on fire"));
        assert_eq!(admin.message, "internal error");
        let other = to_rpc(&f, false);
        assert_eq!(other.data.detail, None);
        assert!(!serde_json::to_string(&other).unwrap().contains("disk"));
    }

    #[test]
    fn rate_limited_failures_carry_a_nonzero_retry_time() {
        let f = Failure::rate_limited("slow down".into(), Duration::from_micros(10));
        assert_eq!(to_rpc(&f, false).data.retry_after_ms, Some(1));
    }

    #[test]
    fn hostile_method_names_are_cut_and_escaped() {
        assert_eq!(shown("a\nb"), "a\\nb");
        assert_eq!(shown(&"x".repeat(100)).chars().count(), 65);
    }
}
