//! `policy.explain`: how the gate would decide a request from a given caller, step by step. The
//! decision comes from the gate's own function (`Policy::explain` is `authorize` writing down
//! its steps), so the explanation cannot drift from what the daemon does.

use std::path::Path;

use warden_policy::{Decision, PeerIdentity, Runtime};
use warden_proto::messages::ExplainResult;
use warden_proto::request::{ExplainParams, JobStartParams};
use warden_proto::{ErrorKind, Gid, Method, Request, Uid};

use super::Reply;
use crate::call::Failure;
use crate::state::Shared;

fn bad(message: String) -> Failure {
    Failure::new(ErrorKind::BadRequest, message)
}

/// The caller to explain for: its uid, primary gid and groups, from the system's user database
/// (as the kernel would report them after a login). No executable: a guard on executables is
/// explained as unmet.
fn caller(p: &ExplainParams) -> Result<PeerIdentity, Failure> {
    let lookup = |e: std::io::Error| Failure::internal(format!("looking up the user: {e}"));
    let (name, uid, gid) = match (&p.user, p.uid) {
        (Some(name), None) => {
            let (uid, gid) = warden_sys::users::user_by_name(name)
                .map_err(lookup)?
                .ok_or_else(|| bad(format!("no user `{name}`")))?;
            (Some(name.clone()), uid, gid)
        }
        (None, Some(uid)) => match warden_sys::users::user_name(uid).map_err(lookup)? {
            Some(name) => {
                let (_, gid) = warden_sys::users::user_by_name(&name)
                    .map_err(lookup)?
                    .unwrap_or((uid, uid));
                (Some(name), uid, gid)
            }
            None => (None, uid, uid),
        },
        _ => return Err(bad("give exactly one of uid and user".into())),
    };
    let groups = match &name {
        Some(n) => warden_sys::users::group_list(n, gid).map_err(lookup)?,
        None => vec![gid],
    };
    Ok(PeerIdentity::new(
        Uid(uid),
        Gid(gid),
        groups.into_iter().map(Gid).collect(),
    ))
}

pub(super) fn explain(shared: &Shared, p: &ExplainParams) -> Result<Reply<'static>, Failure> {
    let policy = shared.policy();
    let peer = caller(p)?;
    let listener = match &p.listener {
        Some(path) => policy
            .listener(Path::new(path))
            .ok_or_else(|| bad(format!("no listener at {path}")))?,
        None => policy
            .listeners
            .first()
            .ok_or_else(|| Failure::internal("no listener"))?,
    };
    let method =
        Method::from_name(&p.method).ok_or_else(|| bad(format!("no method `{}`", p.method)))?;
    let request = match method {
        Method::JobStart => {
            let action = p
                .action
                .clone()
                .ok_or_else(|| bad("job.start needs `action`".into()))?;
            Request::JobStart(JobStartParams {
                action: action.try_into().map_err(bad)?,
                params: p.params.clone().unwrap_or_default().into_iter().collect(),
                idempotency_key: None,
                fleet: p.fleet.clone(),
            })
        }
        m => {
            let raw = p
                .params
                .as_ref()
                .map(serde_json::value::to_raw_value)
                .transpose()
                .map_err(|e| bad(e.to_string()))?;
            Request::parse(m, raw.as_deref())
                .map_err(|e| bad(format!("{e}; give the method's params in `params`")))?
        }
    };
    let (decision, mut steps) = {
        let ops = shared.brakes.ops();
        let lockdown = shared.brakes.lockdown();
        let runtime = Runtime {
            ops: &ops,
            lockdown: lockdown.as_ref(),
            target: warden_policy::gate::Target::Nothing,
        };
        policy.explain(&peer, listener, &request, &runtime)
    };
    if request.job().is_some() {
        steps.push("(explain looks up no job: a real request reaches only its own jobs)".into());
    }
    if request.resource().is_some() {
        steps.push(
            "(explain looks up no resource: a real request reaches only the owner's own)".into(),
        );
    }
    let params = match (&decision, &request) {
        (Decision::Allow { .. }, Request::JobStart(start)) if p.params.is_some() => policy
            .actions
            .get(&start.action)
            .map(|a| match a.check_params(&start.params) {
                Ok(_) => "ok".to_owned(),
                Err(e) => e.to_string(),
            }),
        _ => None,
    };
    Ok(Reply::Explained(match decision {
        Decision::Allow { tier, .. } => ExplainResult {
            decision: "allow".into(),
            tier,
            kind: None,
            reason: None,
            steps,
            params,
        },
        Decision::Deny { tier, kind, reason } => ExplainResult {
            decision: "deny".into(),
            tier,
            kind: Some(kind),
            reason: Some(reason),
            steps,
            params,
        },
    }))
}
