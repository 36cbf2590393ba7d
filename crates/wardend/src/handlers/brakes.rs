//! `ops.get`, `ops.set`, `lockdown.engage`, `lockdown.release`: the brakes. Their audit records
//! are on disk before they act (see `dispatch::later`).

use std::sync::Arc;

use warden_policy::Lockdown;
use warden_proto::ErrorKind;
use warden_proto::messages::{LockdownResult, OpsResult};
use warden_proto::request::{LockdownParams, OpsSetParams};

use super::{Reply, lockdown_info};
use crate::call::{Caller, Failure};
use crate::state::Shared;

/// Longest `reason`, which everyone refused during a lockdown reads.
const MAX_REASON: usize = 256;

fn reason(text: &str) -> Result<String, Failure> {
    let ok =
        (1..=MAX_REASON).contains(&text.chars().count()) && !text.chars().any(char::is_control);
    if ok {
        Ok(text.to_owned())
    } else {
        Err(Failure::new(
            ErrorKind::BadRequest,
            format!("reason must be 1 to {MAX_REASON} characters, without control characters"),
        ))
    }
}

fn saving(e: &std::io::Error) -> Failure {
    Failure::internal(format!("saving the brakes: {e}"))
}

pub(super) fn get(shared: &Shared) -> OpsResult {
    OpsResult {
        ops: shared.brakes.ops().clone(),
        stopping: Vec::new(),
    }
}

/// Switches a toggle; switching one off asks the running jobs whose action needs it to stop.
pub(super) fn set_op(
    shared: &Arc<Shared>,
    caller: &Caller,
    p: OpsSetParams,
) -> Result<Reply<'static>, Failure> {
    reason(&p.reason)?;
    let ops = shared
        .brakes
        .set_op(&p.name, p.enabled)
        .map_err(|e| saving(&e))?
        .ok_or_else(|| {
            Failure::new(
                ErrorKind::NotFound,
                format!("no ops toggle `{}`; [ops] declares them", p.name),
            )
        })?;
    shared.alerts.raise(
        "ops",
        format!(
            "ops `{}` switched {} by uid {}: {}",
            p.name,
            if p.enabled { "on" } else { "off" },
            caller.peer.uid,
            p.reason
        ),
        Some(caller.peer.uid.0),
    );
    shared.bus.publish(
        "ops",
        None,
        serde_json::json!({ "name": p.name, "enabled": p.enabled, "by_uid": caller.peer.uid.0 }),
    );
    let stopping = if p.enabled {
        resume_reconciles(shared);
        Vec::new()
    } else {
        shared
            .jobs
            .cancel_where(|action| action.ops.contains(&p.name))
    };
    Ok(Reply::Ops(OpsResult { ops, stopping }))
}

/// Runs the lost jobs' reconciles that a brake held back and that no brake stops now.
fn resume_reconciles(shared: &Arc<Shared>) {
    let policy = shared.policy();
    let ops = shared.brakes.ops().clone();
    let lockdown = shared.brakes.lockdown().clone();
    shared
        .jobs
        .resume_deferred(&policy, &ops, lockdown.as_ref());
}

/// Engages the lockdown: from now on every request that changes state is refused, and running
/// jobs that change state are asked to stop.
pub(super) fn engage(
    shared: &Arc<Shared>,
    caller: &Caller,
    p: LockdownParams,
) -> Result<Reply<'static>, Failure> {
    let lockdown = Lockdown {
        reason: reason(&p.reason)?,
        by_uid: caller.peer.uid.0,
        since: crate::clock::now_rfc3339(),
    };
    shared
        .brakes
        .engage(lockdown.clone())
        .map_err(|e| saving(&e))?;
    shared.alerts.raise(
        "lockdown",
        format!(
            "lockdown engaged by uid {}: {}",
            lockdown.by_uid, lockdown.reason
        ),
        Some(lockdown.by_uid),
    );
    shared.bus.publish(
        "lockdown",
        None,
        serde_json::json!({ "engaged": true, "lockdown": lockdown_info(&lockdown) }),
    );
    let stopping = shared.jobs.cancel_where(|action| action.mutating);
    Ok(Reply::Lockdown(LockdownResult {
        lockdown: Some(lockdown_info(&lockdown)),
        stopping,
    }))
}

pub(super) fn release(shared: &Arc<Shared>, caller: &Caller) -> Result<Reply<'static>, Failure> {
    if shared.brakes.release().map_err(|e| saving(&e))?.is_some() {
        resume_reconciles(shared);
        shared.alerts.raise(
            "lockdown",
            format!("lockdown released by uid {}", caller.peer.uid),
            Some(caller.peer.uid.0),
        );
        shared.bus.publish(
            "lockdown",
            None,
            serde_json::json!({ "engaged": false, "by_uid": caller.peer.uid.0 }),
        );
    }
    Ok(Reply::Lockdown(LockdownResult {
        lockdown: None,
        stopping: Vec::new(),
    }))
}
