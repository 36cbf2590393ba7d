//! `resource.create`, `resource.delete`, `resource.list`, `resource.get`. The gate has already
//! judged the caller (the kind's tier for a create; owner or admin for the rest, anyone else
//! answered exactly as for a missing name). Here: the owner from the kernel's uid, never from
//! the request; the disk and registry work off the runtime's threads; the kind's hooks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use warden_policy::{ActionSpec, ResourceKind};
use warden_proto::jobs::JobState;
use warden_proto::messages::{ResourceInfo, ResourceList};
use warden_proto::request::{
    JobStartParams, OwnerRef, ResourceCreateParams, ResourceListParams, ResourceParams,
};
use warden_proto::{ErrorKind, JobId, Tier, Uid};

use super::Reply;
use crate::call::{Caller, Failure};
use crate::resources::{Entry, Owner, ResourceError};
use crate::state::Shared;

/// The answer for a resource the caller may not see or that does not exist: the same text the
/// gate gives, so the two cannot be told apart.
fn missing() -> Failure {
    Failure::new(ErrorKind::NotFound, "no such resource")
}

fn failure(e: ResourceError) -> Failure {
    match e {
        ResourceError::Conflict(m) => Failure::new(ErrorKind::Conflict, m),
        ResourceError::Missing => missing(),
        ResourceError::Io(detail) => Failure::internal(detail),
    }
}

fn bad(message: impl Into<String>) -> Failure {
    Failure::new(ErrorKind::BadRequest, message)
}

/// Runs blocking resource work off the runtime's threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Failure> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Failure::internal(format!("resource work stopped: {e}")))?
}

/// The owner of a new resource. A caller other than root owns what it creates, whatever the
/// request says; root may name a real account, or owns it itself.
fn resolve_owner(caller_uid: u32, asked: Option<&OwnerRef>) -> Result<Owner, Failure> {
    let looked = |e: std::io::Error| Failure::internal(format!("looking up the owner: {e}"));
    let uid = match asked {
        Some(OwnerRef::Name(name)) if caller_uid == 0 => {
            match warden_sys::users::user_by_name(name).map_err(looked)? {
                Some((uid, _)) => uid,
                None => return Err(bad(format!("no user `{}`", name.escape_debug()))),
            }
        }
        Some(OwnerRef::Uid(uid)) if caller_uid == 0 => *uid,
        _ => caller_uid,
    };
    let no_entry = || bad(format!("uid {uid} has no passwd entry"));
    let name = warden_sys::users::user_name(uid)
        .map_err(looked)?
        .ok_or_else(no_entry)?;
    let gid = warden_sys::users::primary_gid(uid)
        .map_err(looked)?
        .ok_or_else(no_entry)?;
    Ok(Owner { uid, gid, name })
}

fn publish(shared: &Shared, change: &str, entry: &Entry, by: u32) {
    shared.bus.publish(
        "resource",
        Some(entry.owner_uid),
        json!({
            "change": change,
            "kind": entry.kind,
            "name": entry.name,
            "owner_uid": entry.owner_uid,
            "by_uid": by,
        }),
    );
}

/// Runs a kind's hook action (the spec the gate judged) with the resource as its parameters
/// and waits for its end. `Err` if it did not succeed, naming the job.
async fn run_hook(
    shared: &Arc<Shared>,
    caller: &Caller,
    which: &str,
    spec: &Arc<ActionSpec>,
    entry: &Entry,
) -> Result<JobId, Failure> {
    let action = &spec.name;
    let declared: Vec<String> = spec.params.keys().cloned().collect();
    let limit = spec.timeout + spec.cancel_grace + Duration::from_secs(5);
    let values = [
        ("kind", Value::from(entry.kind.clone())),
        ("name", Value::from(entry.name.clone())),
        ("owner", Value::from(entry.owner.clone())),
        ("uid", Value::from(entry.owner_uid.to_string())),
        (
            "path",
            Value::from(
                entry
                    .base_dir
                    .join(&entry.name)
                    .to_string_lossy()
                    .into_owned(),
            ),
        ),
    ];
    let params: BTreeMap<String, Value> = values
        .into_iter()
        .filter(|(k, _)| declared.iter().any(|d| d == k))
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let started = super::jobs::start(
        shared,
        caller,
        JobStartParams {
            action: action.clone(),
            params,
            idempotency_key: None,
            fleet: None,
        },
        spec,
    )
    .await?;
    let Reply::Started(started) = started else {
        return Err(Failure::internal("a hook's start answered something else"));
    };
    let id = started.job_id;
    let ended = shared
        .jobs
        .wait(&id, limit)
        .await
        .map_err(|e| Failure::internal(format!("waiting for the {which} job: {e}")))?;
    match ended.map(|r| r.state) {
        Some(JobState::Succeeded) => Ok(id),
        state => Err(Failure::new(
            ErrorKind::Internal,
            format!(
                "the {which} action `{action}` ended {} (job {id})",
                state.map_or("unknown", |s| s.as_str())
            ),
        )),
    }
}

/// Creates a resource of `kind` and runs `hook`, both as the gate judged them.
pub(super) async fn create(
    shared: &Arc<Shared>,
    caller: &Caller,
    p: ResourceCreateParams,
    kind: &Arc<ResourceKind>,
    hook: Option<&Arc<ActionSpec>>,
) -> Result<Reply<'static>, Failure> {
    kind.check_name(&p.name).map_err(bad)?;
    let caller_uid = caller.peer.uid.0;
    let registry = Arc::clone(&shared.resources);
    let (name, asked, made_kind) = (p.name.clone(), p.owner.clone(), Arc::clone(kind));
    let entry = blocking(move || {
        let owner = resolve_owner(caller_uid, asked.as_ref())?;
        registry.create(&made_kind, &name, &owner).map_err(failure)
    })
    .await?;
    let mut hook_job = None;
    if let Some(action) = hook {
        match run_hook(shared, caller, "on_create", action, &entry).await {
            Ok(id) => hook_job = Some(id),
            Err(f) => {
                // Half made is not made: undo the directory and the entry.
                let registry = Arc::clone(&shared.resources);
                let (k, n) = (entry.kind.clone(), entry.name.clone());
                let owner = entry.owner_uid;
                if let Err(e) =
                    blocking(move || registry.delete(&k, &n, Some(owner)).map_err(failure)).await
                {
                    tracing::error!(parent: &caller.span, kind = %entry.kind, name = %entry.name,
                        error = ?e, "cannot undo a resource whose on_create failed");
                }
                return Err(f);
            }
        }
    }
    tracing::info!(parent: &caller.span, kind = %entry.kind, name = %entry.name,
        owner_uid = entry.owner_uid, "resource created");
    publish(shared, "created", &entry, caller_uid);
    Ok(Reply::Resource(ResourceInfo {
        hook_job,
        ..entry.info()
    }))
}

/// The entry `p` names, if it still has the owner the gate allowed.
fn seen_entry(shared: &Shared, p: &ResourceParams, seen: Option<Uid>) -> Result<Entry, Failure> {
    shared
        .resources
        .get(&p.kind, &p.name)
        .filter(|e| Some(Uid(e.owner_uid)) == seen)
        .ok_or_else(missing)
}

/// Deletes the resource the gate allowed, running `hook`, the `on_delete` it judged.
pub(super) async fn delete(
    shared: &Arc<Shared>,
    caller: &Caller,
    p: ResourceParams,
    seen: Option<Uid>,
    hook: Option<&Arc<ActionSpec>>,
) -> Result<Reply<'static>, Failure> {
    let entry = seen_entry(shared, &p, seen)?;
    // The hook runs first: if it fails, the resource stays whole.
    let hook_job = match hook {
        Some(action) => Some(run_hook(shared, caller, "on_delete", action, &entry).await?),
        None => None,
    };
    let registry = Arc::clone(&shared.resources);
    let owner = entry.owner_uid;
    let entry = blocking(move || {
        registry
            .delete(&p.kind, &p.name, Some(owner))
            .map_err(failure)
    })
    .await?;
    tracing::info!(parent: &caller.span, kind = %entry.kind, name = %entry.name,
        owner_uid = entry.owner_uid, "resource deleted");
    publish(shared, "deleted", &entry, caller.peer.uid.0);
    Ok(Reply::Resource(ResourceInfo {
        hook_job,
        ..entry.info()
    }))
}

pub(super) fn get(
    shared: &Shared,
    p: &ResourceParams,
    seen: Option<Uid>,
) -> Result<Reply<'static>, Failure> {
    Ok(Reply::Resource(seen_entry(shared, p, seen)?.info()))
}

/// The caller's own resources; an admin's answer holds everyone's.
pub(super) fn list(
    shared: &Shared,
    caller: &Caller,
    tier: Tier,
    p: &ResourceListParams,
) -> Reply<'static> {
    let uid = (tier < Tier::Admin).then_some(caller.peer.uid.0);
    Reply::Resources(ResourceList {
        resources: shared
            .resources
            .list(uid, p.kind.as_deref())
            .iter()
            .map(Entry::info)
            .collect(),
    })
}
