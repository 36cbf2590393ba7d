//! Endpoint handlers, one file per family. A handler runs only after the gate allowed the
//! request, receives it already typed, and never checks permissions itself.

mod actions;
mod audit;
mod brakes;
mod events;
mod explain;
mod introspect;
pub(crate) mod jobs;
mod resources;
mod session;

use std::sync::Arc;

use serde::Serialize;
use warden_policy::PeerIdentity;
use warden_policy::gate::{Judged, Target};
use warden_proto::jobs::{ActionInfo, ActionList, JobList, JobRecord, JobStarted, LogChunk};
use warden_proto::messages::{
    AlertsResult, AuditQueryResult, AuditVerifyResult, DoctorFinding, DoctorResult, ExplainResult,
    HealthResult, HelloResult, HostIdentityResult, LockdownInfo, LockdownResult, OpsResult,
    PeerInfo, PolicyReloadResult, ResourceInfo, ResourceList, VersionResult, WhoamiResult,
};
use warden_proto::{Request, Tier};

use crate::call::{Caller, Failure, Outbound, Session};
use crate::state::Shared;

/// A handler's typed result, serialized once, straight into the answer frame.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum Reply<'a> {
    Hello(HelloResult),
    Health(HealthResult),
    Version(VersionResult),
    Whoami(WhoamiResult),
    Status(introspect::StatusReply<'a>),
    Actions(ActionList),
    Action(ActionInfo),
    Started(JobStarted),
    Job(Box<JobRecord>),
    Jobs(JobList),
    Logs(LogChunk),
    AuditVerify(AuditVerifyResult),
    AuditQuery(AuditQueryResult),
    Ops(OpsResult),
    Lockdown(LockdownResult),
    Alerts(AlertsResult),
    Reloaded(PolicyReloadResult),
    Explained(ExplainResult),
    Doctor(DoctorResult),
    Resource(ResourceInfo),
    Resources(ResourceList),
    HostIdentity(HostIdentityResult),
}

impl Reply<'_> {
    /// This reply as the framed answer to request `id`.
    pub(crate) fn frame(&self, id: &warden_proto::Id<'_>) -> serde_json::Result<Vec<u8>> {
        match self {
            Reply::Status(status) => status.frame(id),
            other => warden_proto::envelope::result_frame(id, other),
        }
    }
}

/// Whether a request runs on a task of its own (see `dispatch::later`): everything about jobs,
/// which may need the ledger before the gate and may take long, reading the audit log, and
/// resources (their owner is looked up before the gate; their changes touch the disk).
pub(crate) fn runs_later(request: &Request) -> bool {
    matches!(
        request,
        Request::JobStart(_)
            | Request::JobGet(_)
            | Request::JobList(_)
            | Request::JobCancel(_)
            | Request::JobWait(_)
            | Request::JobLogs(_)
            | Request::JobWatch(_)
            | Request::AuditVerify
            | Request::AuditQuery(_)
            | Request::OpsSet(_)
            | Request::LockdownEngage(_)
            | Request::LockdownRelease
            | Request::EventsSubscribe(_)
            | Request::PolicyReload
            | Request::Doctor
            | Request::ResourceCreate(_)
            | Request::ResourceDelete(_)
            | Request::ResourceList(_)
            | Request::ResourceGet(_)
    )
}

/// Runs a request that [`runs_later`], on its own task. `tier`, `target` and `judged` are what
/// the gate decided with: the caller's tier, the owner of what the request names as the gate
/// saw it, and the declarations it judged (which run as judged, whatever a reload did since).
pub(crate) async fn run_later(
    shared: Arc<Shared>,
    caller: Arc<Caller>,
    request: Request,
    out: Outbound,
    tier: Tier,
    target: Target,
    judged: Judged,
) -> Result<Reply<'static>, Failure> {
    // The owner the gate allowed: a resource that changed hands since is answered as missing.
    let seen = match target {
        Target::Resource { owner } => owner,
        _ => None,
    };
    match (request, judged) {
        (Request::ResourceCreate(p), Judged::Create { kind, hook }) => {
            resources::create(&shared, &caller, p, &kind, hook.as_ref()).await
        }
        (Request::ResourceDelete(p), Judged::Delete { hook }) => {
            resources::delete(&shared, &caller, p, seen, hook.as_ref()).await
        }
        (Request::JobStart(p), Judged::Action(action)) => {
            jobs::start(&shared, &caller, p, &action).await
        }
        (Request::ResourceCreate(_) | Request::ResourceDelete(_) | Request::JobStart(_), _) => Err(
            Failure::internal("the gate allowed a request without judging its declarations"),
        ),
        (request, _) => run_judged_nothing(shared, caller, request, out, tier, seen).await,
    }
}

/// [`run_later`] for requests whose gate judged no declaration.
async fn run_judged_nothing(
    shared: Arc<Shared>,
    caller: Arc<Caller>,
    request: Request,
    out: Outbound,
    tier: Tier,
    seen: Option<warden_proto::Uid>,
) -> Result<Reply<'static>, Failure> {
    match request {
        Request::ResourceGet(p) => resources::get(&shared, &p, seen),
        Request::ResourceList(p) => Ok(resources::list(&shared, &caller, tier, &p)),
        Request::AuditVerify => audit::verify(&shared).await,
        Request::AuditQuery(p) => audit::query(&shared, p).await,
        Request::OpsSet(p) => brakes::set_op(&shared, &caller, p),
        Request::LockdownEngage(p) => brakes::engage(&shared, &caller, p),
        Request::LockdownRelease => brakes::release(&shared, &caller),
        Request::EventsSubscribe(p) => events::subscribe(&shared, &caller, p, &out).await,
        Request::Doctor => {
            let config = shared
                .config_path
                .clone()
                .unwrap_or_else(|| std::path::PathBuf::from("(built-in configuration)"));
            let policy = shared.policy();
            // Reads files and the whole audit log: off the runtime's threads.
            let findings =
                tokio::task::spawn_blocking(move || crate::doctor::run(&config, &policy))
                    .await
                    .map_err(|e| Failure::internal(e.to_string()))?;
            Ok(Reply::Doctor(DoctorResult {
                findings: findings
                    .into_iter()
                    .map(|f| DoctorFinding {
                        severity: f.severity.as_str().to_owned(),
                        what: f.what,
                        fix: f.fix,
                    })
                    .collect(),
            }))
        }
        Request::PolicyReload => match shared.reload() {
            Ok(r) => Ok(Reply::Reloaded(PolicyReloadResult {
                needs_restart: r.needs_restart,
                warnings: r.warnings,
            })),
            Err(e) => Err(Failure::new(
                warden_proto::ErrorKind::BadRequest,
                format!("the running policy stays: {e}"),
            )),
        },
        request => jobs::run(shared, caller, request, out).await,
    }
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
        Request::ActionsList(p) if p.fleet => Reply::Actions(actions::fleet_list(shared, s)),
        Request::ActionsList(_) => Reply::Actions(actions::list(shared, s)),
        Request::ActionsDescribe(p) => Reply::Action(actions::describe(shared, &p)?),
        Request::OpsGet => Reply::Ops(brakes::get(shared)),
        // Computed at start and reload: no file is read here.
        Request::HostIdentity => Reply::HostIdentity(
            shared
                .host_identity
                .answer()
                .map_err(|m| Failure::new(warden_proto::ErrorKind::Unavailable, m))?,
        ),
        Request::PolicyExplain(p) => return explain::explain(shared, &p),
        Request::AlertsList(p) => Reply::Alerts(AlertsResult {
            alerts: shared.alerts.list(p.limit.unwrap_or(50) as usize),
        }),
        Request::JobStart(_)
        | Request::JobGet(_)
        | Request::JobList(_)
        | Request::JobCancel(_)
        | Request::JobWait(_)
        | Request::JobLogs(_)
        | Request::JobWatch(_)
        | Request::AuditVerify
        | Request::AuditQuery(_)
        | Request::OpsSet(_)
        | Request::LockdownEngage(_)
        | Request::LockdownRelease
        | Request::EventsSubscribe(_)
        | Request::PolicyReload
        | Request::Doctor
        | Request::ResourceCreate(_)
        | Request::ResourceDelete(_)
        | Request::ResourceList(_)
        | Request::ResourceGet(_) => {
            return Err(Failure::internal(
                "a request that runs on its own task reached the inline handlers",
            ));
        }
    })
}

/// The wire view of a lockdown.
fn lockdown_info(l: &warden_policy::Lockdown) -> LockdownInfo {
    LockdownInfo {
        reason: l.reason.clone(),
        by_uid: l.by_uid,
        since: l.since.clone(),
    }
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
