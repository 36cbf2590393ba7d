//! The agent's requests to wardend for dispatch: the host's fleet actions (`actions.list
//! {fleet: true}`), starting a job under its fleet origin (`job.start` with `fleet`), following
//! a job's output (`job.logs {follow}`) and state (`job.watch`, `job.get`), and `job.cancel`.
//! It owns the params' shapes on the agent's side; it must never decide anything wardend
//! decides (wardend alone judges a fleet request).

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use warden_client::{Client, ClientError};
use warden_fleet_proto::link::RemoteAction;
use warden_proto::envelope::Incoming;
use warden_proto::jobs::{JobRecord, JobStarted, LogChunk, notification};
use warden_proto::request::FleetOrigin;

/// The name the agent gives wardend in `hello`.
const CLIENT: &str = "warden-agent";
/// Wait between attempts when wardend cannot be reached while following a job.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Serialize)]
struct LogsParams<'a> {
    job_id: &'a str,
    from: u64,
    follow: bool,
}

#[derive(Serialize)]
struct JobParams<'a> {
    job_id: &'a str,
}

async fn connect(socket: &Path) -> Result<Client, ClientError> {
    Client::connect(socket, CLIENT).await
}

/// The host's remote-capable actions as wardend shows them to the agent
/// (`actions.list {fleet: true}`), in the link's shape.
pub async fn fleet_actions(socket: &Path) -> Result<Vec<RemoteAction>, ClientError> {
    let listed = connect(socket).await?.fleet_actions().await?;
    Ok(listed
        .actions
        .into_iter()
        .map(|a| RemoteAction {
            name: a.name.to_string(),
            description: a.description,
            tier: a.tier.to_string(),
            params: a
                .params
                .into_iter()
                .filter_map(|(k, v)| Some((k, serde_json::to_value(v).ok()?)))
                .collect(),
        })
        .collect())
}

/// Starts the dispatch's job under its fleet origin (the dispatch id is the idempotency key).
pub async fn start(
    socket: &Path,
    action: &str,
    params: &serde_json::Map<String, serde_json::Value>,
    fleet: &FleetOrigin,
) -> Result<JobStarted, ClientError> {
    connect(socket)
        .await?
        .start_fleet(action, params, fleet)
        .await
}

/// `job.get`.
pub async fn get(socket: &Path, job_id: &str) -> Result<JobRecord, ClientError> {
    connect(socket)
        .await?
        .call("job.get", &JobParams { job_id })
        .await
}

/// `job.cancel`: answers once the job is final.
pub async fn cancel(socket: &Path, job_id: &str) -> Result<JobRecord, ClientError> {
    connect(socket)
        .await?
        .call("job.cancel", &JobParams { job_id })
        .await
}

/// What following a job yields.
#[derive(Debug)]
pub enum Followed {
    /// A piece of output (never empty).
    Output(LogChunk),
    /// wardend's log dropped output at its cap.
    Truncated,
    /// All output was delivered and the job ended: its final record.
    End(Box<JobRecord>),
    /// wardend no longer knows the job (`not_found`): it cannot be followed.
    Gone(String),
}

/// Follows a job's output from byte `from` until it ended, sending each piece to `out` (which
/// waits for room: at most one piece is in memory at a time). Reconnects while wardend is away.
pub async fn follow(socket: &Path, job_id: &str, mut from: u64, out: mpsc::Sender<Followed>) {
    let mut truncated = false;
    loop {
        match follow_once(socket, job_id, &mut from, &mut truncated, &out).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) if e.kind() == Some(warden_proto::ErrorKind::NotFound) => {
                let _ = out.send(Followed::Gone(e.to_string())).await;
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "dispatch: following a job's output; retrying");
                if out.is_closed() {
                    return;
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    }
    // Everything is delivered; the job's record is final.
    loop {
        match get(socket, job_id).await {
            Ok(r) if r.state.is_terminal() => {
                let _ = out.send(Followed::End(Box::new(r))).await;
                return;
            }
            Ok(_) => tokio::time::sleep(RETRY).await,
            Err(e) if e.kind() == Some(warden_proto::ErrorKind::NotFound) => {
                let _ = out.send(Followed::Gone(e.to_string())).await;
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "dispatch: reading a job's end; retrying");
                if out.is_closed() {
                    return;
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// One `job.logs {follow: true}` request; `Ok(true)` once the job ended with everything read.
async fn follow_once(
    socket: &Path,
    job_id: &str,
    from: &mut u64,
    truncated: &mut bool,
    out: &mpsc::Sender<Followed>,
) -> Result<bool, ClientError> {
    let mut c = connect(socket).await?;
    let id = c
        .send(
            "job.logs",
            &LogsParams {
                job_id,
                from: *from,
                follow: true,
            },
        )
        .await?;
    loop {
        let frame = c.receive().await?;
        let parsed = Incoming::parse(&frame).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let (piece, last) = match parsed {
            Incoming::Notification { method, params } if method == notification::JOB_OUTPUT => {
                let Some(p) = params else { continue };
                let piece: LogChunk = serde_json::from_str(p.get())
                    .map_err(|e| ClientError::Protocol(format!("job.output: {e}")))?;
                (piece, false)
            }
            Incoming::Notification { .. } => continue,
            Incoming::Response { id: got, outcome } if got == serde_json::json!(id) => {
                let raw = outcome.map_err(ClientError::Rpc)?;
                let piece: LogChunk = serde_json::from_str(raw.get())
                    .map_err(|e| ClientError::Protocol(format!("job.logs: {e}")))?;
                (piece, true)
            }
            Incoming::Response { .. } => continue,
        };
        if piece.truncated && !*truncated {
            *truncated = true;
            if out.send(Followed::Truncated).await.is_err() {
                return Ok(true);
            }
        }
        // Only output at the offset we asked for counts (never twice, never a gap).
        if piece.from == *from && piece.next > *from {
            *from = piece.next;
            let ended = piece.ended;
            if !piece.data.is_empty() && out.send(Followed::Output(piece)).await.is_err() {
                return Ok(true);
            }
            if ended {
                return Ok(true);
            }
        } else if piece.ended && piece.from == *from {
            return Ok(true);
        }
        if last {
            return Ok(false);
        }
    }
}

/// What watching a job yields: its record whenever it changes, until it is final.
pub async fn watch(socket: &Path, job_id: &str, out: mpsc::Sender<JobRecord>) {
    loop {
        match watch_once(socket, job_id, &out).await {
            Ok(()) => return,
            Err(e) if e.kind() == Some(warden_proto::ErrorKind::NotFound) => return,
            Err(e) => {
                tracing::debug!(error = %e, "dispatch: watching a job; retrying");
                if out.is_closed() {
                    return;
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

async fn watch_once(
    socket: &Path,
    job_id: &str,
    out: &mpsc::Sender<JobRecord>,
) -> Result<(), ClientError> {
    let mut c = connect(socket).await?;
    let id = c.send("job.watch", &JobParams { job_id }).await?;
    loop {
        let frame = c.receive().await?;
        let parsed = Incoming::parse(&frame).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let (record, last) = match parsed {
            Incoming::Notification { method, params } if method == notification::JOB_UPDATE => {
                let Some(p) = params else { continue };
                let r: JobRecord = serde_json::from_str(p.get())
                    .map_err(|e| ClientError::Protocol(format!("job.update: {e}")))?;
                (r, false)
            }
            Incoming::Notification { .. } => continue,
            Incoming::Response { id: got, outcome } if got == serde_json::json!(id) => {
                let raw = outcome.map_err(ClientError::Rpc)?;
                let r: JobRecord = serde_json::from_str(raw.get())
                    .map_err(|e| ClientError::Protocol(format!("job.watch: {e}")))?;
                (r, true)
            }
            Incoming::Response { .. } => continue,
        };
        if out.send(record).await.is_err() || last {
            return Ok(());
        }
    }
}
