//! The request path of one frame: envelope → rate limits → method → handshake order → typed
//! params → the gate → the handler → the answer. This is the only caller of the gate, and every
//! handler runs behind it.
//!
//! Most requests are answered inline. Requests about jobs first look up what the gate needs to
//! know (whose job it is, possibly in the ledger) and may run for a long time (`job.wait`,
//! `job.watch`, `job.logs` following), so they run as a task of their own ([`later`]) and answer
//! through the connection's outbound queue; they pass the same gate.
//!
//! Error answers carry a random correlation id, which is also on the daemon's log line for that
//! error (log lines a peer causes are budgeted per uid, in lines and in bytes). Internal causes
//! (`detail`) are sent only to admin-tier callers. Error messages are bounded and single-line:
//! what a peer sent (a field name a parser quotes, a topic) is cut and escaped where it is put
//! in, and every message is bounded again as a whole (see [`crate::logs`]).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use warden_policy::gate::{Judged, Target};
use warden_policy::{Decision, ExeDigest, ListenerPolicy, PeerIdentity, Runtime};
use warden_proto::envelope::{self, Envelope, Id};
use warden_proto::error::code;
use warden_proto::{ErrorKind, Method, Request, RpcError, Tier, Uid};

use serde_json::Value;

use crate::audit;
use crate::call::{
    Caller, Failure, Outbound, Session, bounded, correlation_id, encoded, framed_error,
};
use crate::handlers::{self, Reply};
use crate::limits::retry_ms;
use crate::logs::{self, MESSAGE_MAX, PLAIN_LINE};
use crate::state::Shared;

/// Invalid (non-JSON-RPC) frames after which a connection is closed.
pub(crate) const MAX_INVALID_FRAMES: u8 = 3;

/// The answer to one frame.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Answered inline.
    Now {
        /// The framed answer; `None` if it could not be encoded (the connection then closes).
        frame: Option<Vec<u8>>,
        /// Close after sending.
        close: bool,
    },
    /// To be run on its own task by [`later`].
    Later(Later),
}

/// A request that runs on its own task.
#[derive(Debug)]
pub(crate) struct Later {
    id: Id<'static>,
    request: Request,
    caller: Arc<Caller>,
}

impl Later {
    /// What is needed to refuse this request later without holding the request itself.
    pub(crate) fn handle(&self) -> LaterHandle {
        LaterHandle {
            id: self.id.clone(),
            caller: Arc::clone(&self.caller),
            method: self.request.method(),
        }
    }
}

/// Enough of a [`Later`] request to answer it with an error.
#[derive(Debug)]
pub(crate) struct LaterHandle {
    id: Id<'static>,
    caller: Arc<Caller>,
    method: Method,
}

impl LaterHandle {
    /// Whether the request may change something (see [`changes_state`]).
    pub(crate) fn changes_state(&self) -> bool {
        changes_state(self.method)
    }

    /// The answer to the request when running it panicked outside its handler.
    pub(crate) fn panicked(
        &self,
        shared: &Shared,
        panic: &(dyn std::any::Any + Send),
    ) -> Option<Vec<u8>> {
        self.fail(shared, &panicked(self.method, panic))
    }

    /// An error answer to the request (logged like any other).
    pub(crate) fn refuse(
        &self,
        shared: &Shared,
        kind: ErrorKind,
        message: &str,
        retry: Option<Duration>,
    ) -> Option<Vec<u8>> {
        let mut f = Failure::new(kind, message);
        f.retry_after = retry;
        self.fail(shared, &f)
    }

    /// `f` as this request's answer (logged like any other).
    fn fail(&self, shared: &Shared, f: &Failure) -> Option<Vec<u8>> {
        let c = &self.caller;
        failed_for(
            shared,
            &c.peer,
            &c.listener,
            &c.span,
            Some(&self.id),
            Some(self.method),
            f,
        )
    }
}

/// Answers one frame, or hands it to [`later`].
pub(crate) fn handle(shared: &Shared, s: &mut Session, frame: &[u8]) -> Outcome {
    let before_hello = s.client.is_none();
    let env = match Envelope::parse(frame) {
        Ok(env) => env,
        Err(e) => {
            shared.stats.invalid_jsonrpc.inc();
            shared.alerts.violation(s.peer.uid.0);
            s.invalid_frames = s.invalid_frames.saturating_add(1);
            let last = s.invalid_frames >= MAX_INVALID_FRAMES;
            // serde's text quotes what the peer sent (a field name, a value): cut and escaped.
            let mut message = logs::parser_text(&e.to_string());
            if before_hello {
                shared.stats.hello_missing.inc();
                message.push_str("; the first request must be hello");
            } else if last {
                shared.stats.closed_for_violations.inc();
                shared.alerts.raise_once_a_minute(
                    &format!("violations of uid {}", s.peer.uid),
                    "protocol_violations",
                    format!(
                        "a connection of uid {} (pid {}) was closed after {MAX_INVALID_FRAMES} invalid frames",
                        s.peer.uid, s.peer.pid
                    ),
                    Some(s.peer.uid.0),
                );
                message.push_str(&format!(
                    "; closing after {MAX_INVALID_FRAMES} invalid frames"
                ));
            }
            let f = Failure::coded(e.code(), ErrorKind::BadRequest, message);
            return failed(shared, s, None, None, f, before_hello || last);
        }
    };
    let method = Method::from_name(&env.method);
    let request = match prepare(shared, s, &env, method, before_hello) {
        Ok(r) => r,
        // Before the handshake completes, any error ends the connection.
        Err(f) => return failed(shared, s, Some(&env.id), method, f, before_hello),
    };
    if handlers::runs_later(&request)
        && let Some(caller) = s.caller.clone()
    {
        return Outcome::Later(Later {
            id: env.id.into_owned(),
            request,
            caller,
        });
    }
    match run_inline(shared, s, request) {
        Ok(reply) => Outcome::Now {
            frame: encoded(reply.frame(&env.id)),
            close: false,
        },
        Err(f) => failed(shared, s, Some(&env.id), method, f, before_hello),
    }
}

/// Rate limits, method, handshake order and params: everything before the gate.
fn prepare(
    shared: &Shared,
    s: &mut Session,
    env: &Envelope<'_>,
    method: Option<Method>,
    before_hello: bool,
) -> Result<Request, Failure> {
    let now = Instant::now();
    let limits = &shared.limits;
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
    Request::parse(method, env.params).map_err(|e| {
        Failure::coded(
            code::INVALID_PARAMS,
            ErrorKind::BadRequest,
            logs::parser_text(&e.to_string()),
        )
    })
}

/// The gate, then an inline handler.
fn run_inline<'a>(
    shared: &'a Shared,
    s: &mut Session,
    request: Request,
) -> Result<Reply<'a>, Failure> {
    let method = request.method();
    let decision = judge(shared, &s.peer, &s.listener, &request, Target::Nothing);
    let tier = match decision {
        Decision::Allow { tier, .. } => tier,
        Decision::Deny { kind, reason, .. } => {
            let client = s.client.as_ref().map(|c| c.as_str().to_owned());
            return Err(denied(shared, &s.peer, client, &request, kind, reason));
        }
    };
    // A bug in a handler must cost one request, not the daemon.
    catch_unwind(AssertUnwindSafe(|| {
        handlers::handle(shared, s, request, tier)
    }))
    .unwrap_or_else(|panic| Err(panicked(method, panic.as_ref())))
}

fn panicked(method: Method, panic: &(dyn std::any::Any + Send)) -> Failure {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    Failure::internal(format!("{method} handler panicked: {what}"))
}

/// Polls a future, turning a panic into `Err` with its payload: a bug in a handler costs one
/// request, not the daemon, without a task of its own for every request.
pub(crate) struct CatchUnwind<F: ?Sized>(pub(crate) std::pin::Pin<Box<F>>);

impl<F: std::future::Future + ?Sized> std::future::Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let fut = self.0.as_mut();
        match catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
    }
}

/// Runs a request handed over by [`handle`]: looks up its target, asks the gate, runs the
/// handler. Returns the final answer (notifications along the way go to `out`).
pub(crate) async fn later(shared: Arc<Shared>, later: Later, out: Outbound) -> Option<Vec<u8>> {
    let Later {
        id,
        request,
        caller,
    } = later;
    let method = request.method();
    // Every error answer of this request: logged under its correlation id, framed.
    let fail = |f: &Failure| {
        failed_for(
            &shared,
            &caller.peer,
            &caller.listener,
            &caller.span,
            Some(&id),
            Some(method),
            f,
        )
    };
    let target = match (request.job(), request.resource()) {
        (Some(job), _) => match shared.jobs.owner(job).await {
            Ok(owner) => Target::Job { owner },
            Err(e) => {
                let f = Failure::internal(format!("looking up {job}: {e}"));
                return fail(&f);
            }
        },
        (None, Some((kind, name))) => Target::Resource {
            owner: shared.resources.owner(kind, name),
        },
        (None, None) => Target::Nothing,
    };
    // One snapshot of the policy judges the request; what it judged (the action spec, the
    // kind and its hook) travels on in the decision, so a reload landing while the request's
    // record is flushed cannot make it run something the gate never saw.
    let decision = judge(&shared, &caller.peer, &caller.listener, &request, target);
    // A digest guard: the executable is hashed only now, and only when its digest is what
    // stands between this request and an allow.
    let decision = match decision {
        Decision::Deny { .. } => judged_with_digest(&shared, &caller, &request, target)
            .await
            .unwrap_or(decision),
        allow => allow,
    };
    let (tier, judged) = match decision {
        Decision::Allow { tier, judged } => (tier, judged),
        Decision::Deny { kind, reason, .. } => {
            let f = denied(
                &shared,
                &caller.peer,
                Some(caller.client.clone()),
                &request,
                kind,
                reason,
            );
            return fail(&f);
        }
    };
    if let Err(f) = within_changes(&shared, &caller, &request) {
        return fail(&f);
    }
    // A request that changes something is on disk, decided, before anything happens.
    let mut owed = audited(&caller, &request, &judged).map(|event| Owed {
        audit: &shared.audit,
        event: Some(event),
    });
    if let Some(o) = &mut owed
        && let Some(event) = &o.event
        && let Err(e) = shared.audit.record_durable(event).await
    {
        // The log failed and nothing is done: the refusal is the outcome, and a log that
        // cannot take the request's record is owed nothing more.
        o.event = None;
        let mut f = Failure::new(
            ErrorKind::Unavailable,
            "the audit log cannot be written; nothing was done",
        );
        f.detail = Some(e.to_string());
        return fail(&f);
    }
    // A panic in the handler is caught and answered.
    let handler = CatchUnwind(Box::pin(handlers::run_later(
        Arc::clone(&shared),
        Arc::clone(&caller),
        request,
        out,
        tier,
        target,
        judged,
    )));
    let result = match handler.await {
        Ok(r) => r,
        Err(panic) => Err(panicked(method, panic.as_ref())),
    };
    if let Some(mut event) = owed.as_mut().and_then(|o| o.event.take()) {
        event.event = audit::Kind::RequestOutcome;
        match &result {
            Ok(handlers::Reply::Started(s)) => {
                event.outcome = Some("ok".into());
                event.job_id = Some(s.job_id.to_string());
            }
            Ok(handlers::Reply::Job(r)) => event.outcome = Some(r.state.as_str().into()),
            // Who owns it, as decided: for a create, the caller unless root named someone.
            Ok(handlers::Reply::Resource(r)) => {
                event.outcome = Some("ok".into());
                if let Some(Value::Object(params)) = &mut event.params {
                    params.insert("owner_uid".into(), Value::from(r.owner_uid.0));
                    params.insert("owner".into(), Value::from(r.owner.clone()));
                }
                event.job_id = r.hook_job.as_ref().map(ToString::to_string);
            }
            Ok(_) => event.outcome = Some("ok".into()),
            Err(f) => {
                event.outcome = Some(f.kind.as_str().into());
                event.reason = Some(f.message.clone());
            }
        }
        shared.audit.record(event);
    }
    match result {
        Ok(reply) => encoded(envelope::result_frame(&id, &reply)),
        Err(f) => fail(&f),
    }
}

/// The gate's decision on `request` from `peer`, under the brakes in force and one snapshot of
/// the policy. The read guards end here: nothing waits while holding them.
fn judge(
    shared: &Shared,
    peer: &PeerIdentity,
    listener: &ListenerPolicy,
    request: &Request,
    target: Target,
) -> Decision {
    let ops = shared.brakes.ops();
    let lockdown = shared.brakes.lockdown();
    let runtime = Runtime {
        ops: &ops,
        lockdown: lockdown.as_ref(),
        target,
    };
    shared.policy().authorize(peer, listener, request, &runtime)
}

/// The gate's decision on a request it just refused, taken again with the caller's executable
/// hashed, when a `[guards]` sha256 for its path could turn the refusal into an allow: the gate
/// is asked first whether any digest it accepts would allow the request (pure, no I/O), and only
/// then is the pinned executable read, off the runtime threads with a size cap and a deadline.
/// `None` when no digest can matter; a refusal that stands whatever the digest is answered with
/// that refusal's own reason.
async fn judged_with_digest(
    shared: &Arc<Shared>,
    caller: &Caller,
    request: &Request,
    target: Target,
) -> Option<Decision> {
    let pin = caller.exe_pin.as_ref()?;
    let exe = caller.peer.exe.as_deref()?;
    let decide = |digest: ExeDigest| {
        let peer = PeerIdentity {
            exe_sha256: digest,
            ..PeerIdentity::clone(&caller.peer)
        };
        judge(shared, &peer, &caller.listener, request, target)
    };
    let accepted: Vec<[u8; 32]> = shared.policy().guards.digests_for(exe).collect();
    let mut standing = None;
    for want in accepted {
        match decide(ExeDigest::Sha256(want)) {
            Decision::Allow { .. } => {
                let digest = shared
                    .digests
                    .verify(&shared.fs_work, caller.peer.uid, pin)
                    .await;
                return Some(decide(digest));
            }
            deny => standing = standing.or(Some(deny)),
        }
    }
    standing
}

/// The outcome record an audited request owes once its record is on its way to disk. Should
/// the request be dropped before it ends (the daemon stopped it past its grace), the outcome
/// says it did not finish, so no accepted request is left without one.
struct Owed<'a> {
    audit: &'a audit::AuditLog,
    /// The request's record; taken when its real outcome is recorded.
    event: Option<audit::Event>,
}

impl Drop for Owed<'_> {
    fn drop(&mut self) {
        if let Some(mut event) = self.event.take() {
            event.event = audit::Kind::RequestOutcome;
            event.outcome = Some("unfinished".into());
            event.reason = Some("stopped before it finished; what it had done may remain".into());
            self.audit.record(event);
        }
    }
}

/// The audit view of a caller.
fn audit_peer(peer: &PeerIdentity, client: Option<String>) -> audit::Peer {
    audit::Peer {
        uid: peer.uid.0,
        gid: peer.gid.0,
        pid: peer.pid.0,
        exe: peer.exe.as_ref().map(|e| e.to_string_lossy().into_owned()),
        client,
    }
}

/// Whether a request of `method` may change something. Such a request is on disk before it
/// runs, and once past the gate it runs to its end even if its caller leaves or the daemon
/// starts to stop: dropped half way it could leave a change half made, unrecorded and answered
/// as if nothing had happened.
pub(crate) fn changes_state(method: Method) -> bool {
    matches!(
        method,
        Method::JobStart
            | Method::JobCancel
            | Method::OpsSet
            | Method::LockdownEngage
            | Method::LockdownRelease
            | Method::PolicyReload
            | Method::ResourceCreate
            | Method::ResourceDelete
    )
}

/// The audit record of `request` if it changes something: starting a mutating action,
/// cancelling a job, switching an ops toggle, engaging or releasing the lockdown. Parameters
/// come redacted by the action's declaration.
fn audited(caller: &Caller, request: &Request, judged: &Judged) -> Option<audit::Event> {
    if !changes_state(request.method()) {
        return None;
    }
    let mut event = audit::Event {
        peer: Some(audit_peer(&caller.peer, Some(caller.client.clone()))),
        method: Some(request.method().to_string()),
        decision: Some("allow".into()),
        ..audit::Event::new(audit::Kind::Request)
    };
    match request {
        Request::JobStart(p) => {
            let Judged::Action(action) = judged else {
                return None;
            };
            // Every fleet request is recorded, with its origin, even one that changes nothing.
            if !action.mutating && p.fleet.is_none() {
                return None;
            }
            event.action = Some(p.action.to_string());
            event.params = serde_json::to_value(action.redact(&p.params)).ok();
            if let Some(f) = &p.fleet {
                event.origin = Some(f.origin());
                event.dispatch_id = Some(f.dispatch_id.clone());
            }
        }
        Request::JobCancel(p) => event.job_id = Some(p.job_id.to_string()),
        Request::OpsSet(p) => {
            event.params = Some(serde_json::json!({ "name": p.name, "enabled": p.enabled }));
            event.reason = Some(p.reason.clone());
        }
        Request::LockdownEngage(p) => event.reason = Some(p.reason.clone()),
        Request::ResourceCreate(p) => {
            let mut params = serde_json::Map::new();
            params.insert("kind".into(), Value::from(p.kind.clone()));
            params.insert("name".into(), Value::from(p.name.clone()));
            // Only root may name an owner; from anyone else it is ignored, and said so here.
            if let Some(asked) = &p.owner {
                let asked = serde_json::to_value(asked).unwrap_or(Value::Null);
                if caller.peer.uid.0 == 0 {
                    params.insert("owner_asked".into(), asked);
                } else {
                    params.insert("owner_ignored".into(), asked);
                }
            }
            event.params = Some(Value::Object(params));
        }
        Request::ResourceDelete(p) => {
            event.params = Some(serde_json::json!({ "kind": p.kind, "name": p.name }));
        }
        Request::LockdownRelease | Request::PolicyReload => {}
        _ => return None,
    }
    Some(event)
}

/// Counts a request that changes something against its uid's share of recorded requests this
/// minute (`[audit] uid_changes_per_minute`); past it, the request is refused `rate_limited`
/// like a denial (recorded, or counted into its uid's denial summary), so what one uid can make
/// the daemon record stays bounded.
fn within_changes(shared: &Shared, caller: &Caller, request: &Request) -> Result<(), Failure> {
    if !changes_state(request.method()) {
        return Ok(());
    }
    let uid = caller.peer.uid;
    let Err(wait) = shared.changes.admit(uid.0, std::time::Instant::now()) else {
        return Ok(());
    };
    let reason = format!(
        "uid {uid} made {} requests that change something within a minute, the most allowed \
         ([audit] uid_changes_per_minute); try again in {} s",
        shared.changes.per_window(),
        wait.as_secs().max(1)
    );
    let mut f = denied(
        shared,
        &caller.peer,
        Some(caller.client.clone()),
        request,
        ErrorKind::RateLimited,
        reason,
    );
    f.retry_after = Some(wait);
    Err(f)
}

/// The answer to a request the gate refused, and its audit record under the same correlation
/// id (unless this caller's uid is past its share of denial records this minute: then it is
/// only counted, for a summary).
fn denied(
    shared: &Shared,
    peer: &PeerIdentity,
    client: Option<String>,
    request: &Request,
    kind: ErrorKind,
    reason: String,
) -> Failure {
    let reason = bounded(reason);
    let cid = correlation_id();
    let (record, flood) = shared.denials.admit(peer.uid.0, std::time::Instant::now());
    if flood {
        shared.alerts.raise_once_a_minute(
            &format!("denials of uid {}", peer.uid),
            "denial_flood",
            format!(
                "uid {} was refused more than {} times within a minute; further refusals are counted",
                peer.uid,
                audit::DENIALS_RECORDED
            ),
            Some(peer.uid.0),
        );
    }
    if record {
        let action = match request {
            Request::JobStart(p) => Some(p.action.to_string()),
            _ => None,
        };
        // The origin a refused fleet request claimed, whoever sent it.
        let fleet = match request {
            Request::JobStart(p) => p.fleet.as_ref(),
            _ => None,
        };
        shared.audit.record(audit::Event {
            origin: fleet.map(|f| f.origin()),
            dispatch_id: fleet.map(|f| f.dispatch_id.clone()),
            peer: Some(audit_peer(peer, client)),
            method: Some(request.method().to_string()),
            action,
            decision: Some("deny".into()),
            reason: Some(reason.clone()),
            outcome: Some(kind.as_str().into()),
            correlation_id: Some(cid.clone()),
            ..audit::Event::new(audit::Kind::Denied)
        });
    }
    let mut f = Failure::new(kind, reason);
    f.correlation = Some(cid);
    f
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
    Outcome::Now {
        frame: failed_for(shared, &s.peer, &s.listener, &s.span, id, method, &f),
        close,
    }
}

/// The framed error answer for `f`, logged under its correlation id.
fn failed_for(
    shared: &Shared,
    peer: &PeerIdentity,
    listener: &ListenerPolicy,
    span: &tracing::Span,
    id: Option<&Id<'_>>,
    method: Option<Method>,
    f: &Failure,
) -> Option<Vec<u8>> {
    let admin = f.detail.is_some() && shared.policy().effective(peer, listener).tier == Tier::Admin;
    let err = to_rpc(f, admin);
    log_failure(shared, peer.uid, span, method, &err, f.detail.as_deref());
    framed_error(id, &err)
}

/// The wire error for `f`; its internal `detail` only when `admin`.
fn to_rpc(f: &Failure, admin: bool) -> RpcError {
    let cid = f.correlation.clone().unwrap_or_else(correlation_id);
    let mut err = RpcError::with_code(f.code, f.kind, f.message.clone(), cid);
    if let Some(wait) = f.retry_after {
        err = err.retry_after_ms(retry_ms(wait));
    }
    if admin && let Some(detail) = &f.detail {
        err = err.detail(bounded(detail.clone()));
    }
    err
}

/// Logs a refused or failed request under its correlation id, within the peer's log budget.
pub(crate) fn log_refusal(shared: &Shared, s: &Session, method: Option<Method>, err: &RpcError) {
    log_failure(shared, s.peer.uid, &s.span, method, err, None);
}

fn log_failure(
    shared: &Shared,
    uid: Uid,
    span: &tracing::Span,
    method: Option<Method>,
    err: &RpcError,
    detail: Option<&str>,
) {
    let size = PLAIN_LINE + err.message.len() + detail.map_or(0, str::len);
    let Some(suppressed) = shared.logs.admit_line(uid, size) else {
        return;
    };
    // Made by `Failure::new` or by the daemon itself, so already bounded; escaped again because
    // a log line must hold one line whatever a future caller passes here.
    let message = logs::cut_escaped(&err.message, MESSAGE_MAX);
    let detail = detail.map(|d| logs::cut_escaped(d, MESSAGE_MAX));
    let detail = detail.as_deref();
    let method = method.map(Method::as_str);
    let cid = err.data.correlation_id.as_str();
    let kind = err.data.kind.as_str();
    if err.data.kind == ErrorKind::Internal {
        tracing::error!(parent: span, correlation_id = cid, kind, method, detail, suppressed, "{message}");
    } else {
        tracing::info!(parent: span, correlation_id = cid, kind, method, suppressed, "refused: {message}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: a handler that panics, at once or after waiting, becomes an answer naming the
    /// panic, and one that finishes comes through unchanged.
    #[tokio::test]
    async fn a_panicking_handler_becomes_an_error_not_a_lost_request() {
        let at_once = CatchUnwind(Box::pin(async {
            if std::hint::black_box(true) {
                panic!("boom at once");
            }
            1u8
        }))
        .await;
        let f = panicked(Method::JobGet, at_once.unwrap_err().as_ref());
        assert!(f.detail.unwrap().contains("boom at once"));
        let later = CatchUnwind(Box::pin(async {
            tokio::task::yield_now().await;
            if std::hint::black_box(true) {
                panic!("boom later");
            }
            2u8
        }))
        .await;
        assert!(later.is_err());
        assert_eq!(CatchUnwind(Box::pin(async { 3u8 })).await.unwrap(), 3);
    }

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
