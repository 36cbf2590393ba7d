//! The job endpoints: `job.start`, `job.get`, `job.list`, `job.cancel`, `job.wait`, `job.logs`
//! and `job.watch`. Each runs on its own task after the gate allowed it (ownership included);
//! streaming ones send notifications through the connection's outbound queue.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use warden_policy::{ActionSpec, Checked};
use warden_proto::jobs::{JobList, LogChunk, Requester, notification};
use warden_proto::request::{
    JobListParams, JobLogsParams, JobParams, JobStartParams, JobWaitParams, Scope,
};
use warden_proto::{ErrorKind, JobId, Request};
use warden_sys::fs::Beneath;

use super::Reply;
use crate::call::{Caller, Failure, Outbound, framed_notification};
use crate::fswork::FsWorkError;
use crate::jobs::output::{self, Chunk};
use crate::jobs::{CancelError, StartError, StartRequest};
use crate::state::Shared;

/// Largest piece of output in one answer or notification.
const LOG_CHUNK: usize = 64 * 1024;
/// `job.list` without a limit.
const DEFAULT_LIST: u32 = 50;
/// `job.wait` without a timeout.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// How long resolving one path parameter may take before the start is refused.
const RESOLVE_DEADLINE: Duration = Duration::from_secs(5);

/// Runs one job request; the gate has allowed it.
pub(crate) async fn run(
    shared: Arc<Shared>,
    caller: Arc<Caller>,
    request: Request,
    out: Outbound,
) -> Result<Reply<'static>, Failure> {
    match request {
        Request::JobGet(p) => get(&shared, &p.job_id).await,
        Request::JobList(p) => list(&shared, &caller, p).await,
        Request::JobCancel(p) => cancel(&shared, &p).await,
        Request::JobWait(p) => wait(&shared, p).await,
        Request::JobLogs(p) => logs(&shared, p, &out).await,
        Request::JobWatch(p) => watch(&shared, &p, &out).await,
        _ => Err(Failure::internal("not a job request")),
    }
}

fn ledger_failure(e: impl std::fmt::Display) -> Failure {
    Failure::internal(format!("ledger: {e}"))
}

fn bad(message: String) -> Failure {
    Failure::new(ErrorKind::BadRequest, message)
}

/// Starts `action`, the spec the gate judged this request against (never one looked up again:
/// a reload may have changed the policy since).
pub(super) async fn start(
    shared: &Shared,
    caller: &Caller,
    p: JobStartParams,
    action: &Arc<ActionSpec>,
) -> Result<Reply<'static>, Failure> {
    let checked = action
        .check_params(&p.params)
        .map_err(|e| bad(e.to_string()))?;
    let mut values = BTreeMap::new();
    for (name, value) in checked {
        let text = match value {
            Checked::Text(t) => t,
            Checked::Path {
                full,
                prefix,
                rel,
                must_exist,
            } => {
                resolve_param(shared, caller, &name, prefix, rel, must_exist).await?;
                full.to_string_lossy().into_owned()
            }
        };
        values.insert(name, text);
    }
    let secrets = action
        .params
        .iter()
        .filter(|(_, spec)| spec.secret)
        .filter_map(|(name, _)| values.get(name).map(|v| v.as_bytes().to_vec()))
        .collect();
    let shown: BTreeMap<String, Value> = action.redact(&p.params);
    let peer = &caller.peer;
    let request = StartRequest {
        action: Arc::clone(action),
        values,
        shown,
        secrets,
        requester: Requester {
            uid: peer.uid,
            gid: peer.gid,
            pid: peer.pid,
            exe: peer.exe.as_ref().map(|e| e.to_string_lossy().into_owned()),
            client: caller.client.clone(),
            connection: caller.connection,
        },
        origin: p
            .fleet
            .as_ref()
            .map_or_else(|| "local".to_owned(), |f| f.origin()),
        dispatch_id: p.fleet.as_ref().map(|f| f.dispatch_id.clone()),
        // A fleet start is keyed by its dispatch id, whether or not the agent repeated it.
        idempotency_key: p
            .fleet
            .as_ref()
            .map(|f| f.dispatch_id.clone())
            .or(p.idempotency_key),
    };
    match shared.jobs.start(request).await {
        Ok(started) => {
            tracing::info!(parent: &caller.span, job = %started.job_id, action = %p.action,
                existing = started.existing, "job started");
            Ok(Reply::Started(started))
        }
        Err(StartError::Busy(group)) => Err(Failure::new(
            ErrorKind::Conflict,
            StartError::Busy(group).to_string(),
        )),
        Err(e @ StartError::TooMany(_)) => Err(Failure::new(ErrorKind::Busy, e.to_string())),
        Err(e @ StartError::Stopping) => Err(Failure::new(ErrorKind::Unavailable, e.to_string())),
        Err(StartError::Ledger(e)) => Err(ledger_failure(e)),
    }
}

/// Proves on the file system that path parameter `name` resolves under `prefix` with no
/// symlink on the way. The file system may be one the caller controls (a FUSE mount under the
/// prefix) and may never answer, so this runs on a thread of its own and is given up after
/// [`RESOLVE_DEADLINE`]: nothing is started then, and the caller is told why.
async fn resolve_param(
    shared: &Shared,
    caller: &Caller,
    name: &str,
    prefix: PathBuf,
    rel: PathBuf,
    must_exist: bool,
) -> Result<(), Failure> {
    let shown = prefix.display().to_string();
    let resolved = shared
        .fs_work
        .run(caller.peer.uid, RESOLVE_DEADLINE, move |_| {
            warden_sys::fs::resolve_beneath(&prefix, &rel)
        })
        .await;
    match resolved {
        Ok(Ok(Beneath::Exists)) => Ok(()),
        Ok(Ok(Beneath::Missing)) if !must_exist => Ok(()),
        Ok(Ok(Beneath::Missing)) => Err(bad(format!("param `{name}`: must exist"))),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Err(bad(format!(
            "param `{name}`: its directory must exist under {shown}"
        ))),
        Ok(Err(_)) => Err(bad(format!(
            "param `{name}`: must resolve under {shown} with no symlink on the way"
        ))),
        Err(e @ FsWorkError::TimedOut(_)) => Err(Failure::new(
            ErrorKind::Unavailable,
            format!("param `{name}`: resolving it under {shown} failed: {e}; nothing was started"),
        )),
        Err(e @ FsWorkError::Busy) => Err(Failure::new(
            ErrorKind::Busy,
            format!("param `{name}`: {e}; nothing was started"),
        )
        .retry_after(Duration::from_secs(1))),
        Err(e @ FsWorkError::Thread(_)) => {
            Err(Failure::internal(format!("resolving param `{name}`: {e}")))
        }
    }
}

fn gone(_id: &JobId) -> Failure {
    Failure::new(ErrorKind::NotFound, "no such job")
}

async fn get(shared: &Shared, id: &JobId) -> Result<Reply<'static>, Failure> {
    match shared.jobs.record(id).await.map_err(ledger_failure)? {
        Some(r) => Ok(Reply::Job(Box::new(r))),
        None => Err(gone(id)),
    }
}

async fn list(
    shared: &Shared,
    caller: &Caller,
    p: JobListParams,
) -> Result<Reply<'static>, Failure> {
    let uid = match p.scope {
        Scope::Mine => Some(caller.peer.uid),
        // The gate let only operators and admins ask for everyone's.
        Scope::All => None,
    };
    let jobs = shared
        .jobs
        .list(uid, p.state, p.limit.unwrap_or(DEFAULT_LIST))
        .await
        .map_err(ledger_failure)?;
    Ok(Reply::Jobs(JobList { jobs }))
}

async fn cancel(shared: &Shared, p: &JobParams) -> Result<Reply<'static>, Failure> {
    match shared.jobs.cancel(&p.job_id).await {
        Ok(r) => Ok(Reply::Job(Box::new(r))),
        Err(CancelError::PastCommit) => Err(Failure::new(
            ErrorKind::Conflict,
            CancelError::PastCommit.to_string(),
        )),
        Err(CancelError::Gone) => Err(gone(&p.job_id)),
        Err(CancelError::Ledger(e)) => Err(ledger_failure(e)),
    }
}

async fn wait(shared: &Shared, p: JobWaitParams) -> Result<Reply<'static>, Failure> {
    let limit = p.timeout_ms.map_or(DEFAULT_WAIT, Duration::from_millis);
    match shared
        .jobs
        .wait(&p.job_id, limit)
        .await
        .map_err(ledger_failure)?
    {
        Some(r) => Ok(Reply::Job(Box::new(r))),
        None => Err(gone(&p.job_id)),
    }
}

/// A chunk of text from raw output, ending on a whole character.
fn chunk(id: &JobId, from: u64, read: Chunk, truncated: bool, ended: bool) -> LogChunk {
    let keep = output::utf8_boundary(&read.data);
    LogChunk {
        job_id: id.clone(),
        from,
        next: from + keep as u64,
        data: String::from_utf8_lossy(&read.data[..keep]).into_owned(),
        truncated,
        ended,
    }
}

async fn logs(
    shared: &Shared,
    p: JobLogsParams,
    out: &Outbound,
) -> Result<Reply<'static>, Failure> {
    let id = p.job_id;
    let Some(job) = shared.jobs.live(&id) else {
        // Long finished: everything is in its log file.
        let read = output::read_file(&shared.jobs.log_file(&id), p.from, LOG_CHUNK);
        let whole = read.data.len() < LOG_CHUNK;
        return Ok(Reply::Logs(chunk(&id, p.from, read, false, whole)));
    };
    let mut grew = job.output.subscribe();
    let mut updates = job.subscribe();
    let mut from = p.from;
    loop {
        // Read the state before the output, so output written before the end is never missed.
        let finished = job.record().state.is_terminal();
        let read = job.output.read(from, LOG_CHUNK);
        let got = !read.data.is_empty();
        let more = read.data.len() == LOG_CHUNK;
        let c = chunk(&id, from, read, job.output.truncated(), finished && !more);
        if !p.follow {
            return Ok(Reply::Logs(c));
        }
        if c.ended {
            if got {
                send(out, notification::JOB_OUTPUT, &c).await?;
                return Ok(Reply::Logs(chunk(
                    &id,
                    c.next,
                    Chunk {
                        data: Vec::new(),
                        next: c.next,
                    },
                    c.truncated,
                    true,
                )));
            }
            return Ok(Reply::Logs(c));
        }
        if got {
            from = c.next;
            send(out, notification::JOB_OUTPUT, &c).await?;
            continue;
        }
        tokio::select! {
            r = grew.changed() => if r.is_err() { return Ok(Reply::Logs(c)) },
            r = updates.changed() => if r.is_err() { return Ok(Reply::Logs(c)) },
        }
    }
}

async fn watch(shared: &Shared, p: &JobParams, out: &Outbound) -> Result<Reply<'static>, Failure> {
    let Some(job) = shared.jobs.live(&p.job_id) else {
        return get(shared, &p.job_id).await;
    };
    let mut updates = job.subscribe();
    loop {
        let record = updates.borrow_and_update().clone();
        if record.state.is_terminal() {
            return Ok(Reply::Job(Box::new(record)));
        }
        send(out, notification::JOB_UPDATE, &record).await?;
        if updates.changed().await.is_err() {
            return Ok(Reply::Job(Box::new(job.record())));
        }
    }
}

/// Sends a notification; fails when the connection is gone.
pub(super) async fn send<T: serde::Serialize>(
    out: &Outbound,
    method: &str,
    params: &T,
) -> Result<(), Failure> {
    let frame = framed_notification(method, params)
        .ok_or_else(|| Failure::internal("cannot encode a notification"))?;
    out.send(frame)
        .await
        .map_err(|_| Failure::new(ErrorKind::Unavailable, "the connection closed"))
}
