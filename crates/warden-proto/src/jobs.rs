//! Messages about actions and jobs: what an action takes, what a job is and how it stands.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{ActionName, Gid, JobId, Pid, Uid};
use crate::tier::Tier;

/// Where a job is in its life. Terminal states never change again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for its concurrency group.
    Queued,
    Running,
    /// Exited 0.
    Succeeded,
    /// Exited non-zero, could not start, or was stopped after its commit point.
    Failed,
    /// Stopped before its commit point: nothing it did remains.
    Cancelled,
    /// Stopped because it ran longer than its action allows.
    TimedOut,
    /// Stopped after its commit point, and its action's rollback undid its effect.
    RolledBack,
    /// The daemon stopped while the job was queued or running.
    Lost,
}

impl JobState {
    pub const ALL: [JobState; 8] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::TimedOut,
        JobState::RolledBack,
        JobState::Lost,
    ];

    pub fn is_terminal(self) -> bool {
        !matches!(self, JobState::Queued | JobState::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::TimedOut => "timed_out",
            JobState::RolledBack => "rolled_back",
            JobState::Lost => "lost",
        }
    }

    pub fn from_name(name: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// The type and rules of one action parameter, as `actions.describe` shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ParamKind {
    String {
        max_len: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pattern: Option<String>,
    },
    Enum {
        values: Vec<String>,
    },
    Int {
        min: i64,
        max: i64,
    },
    Bool,
    Path {
        under: Vec<String>,
        must_exist: bool,
    },
}

/// One parameter of an action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ParamInfo {
    #[serde(flatten)]
    pub kind: ParamKind,
    /// Secret values are redacted everywhere the daemon shows or records them.
    pub secret: bool,
}

/// An action as `actions.list` and `actions.describe` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ActionInfo {
    pub name: ActionName,
    pub description: String,
    pub tier: Tier,
    pub ops: Vec<String>,
    pub mutating: bool,
    pub params: BTreeMap<String, ParamInfo>,
    pub timeout_s: u64,
    pub concurrency_group: Option<String>,
    /// Whether cancelling after the commit point undoes the job (the action has a rollback).
    pub rollback: bool,
}

/// Answer to `actions.list`: the actions the caller could run now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ActionList {
    pub actions: Vec<ActionInfo>,
}

/// Who asked for a job, as the daemon saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Requester {
    pub uid: Uid,
    pub gid: Gid,
    pub pid: Pid,
    pub exe: Option<String>,
    /// The client name given in `hello`.
    pub client: String,
    /// The daemon's number for the connection the request came on.
    pub connection: u64,
}

/// A job, as `job.get`, `job.wait` and `job.watch` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct JobRecord {
    pub job_id: JobId,
    pub action: ActionName,
    pub state: JobState,
    /// 0 to 100, once the job has reported progress.
    pub progress: Option<u8>,
    pub phase: Option<String>,
    pub message: Option<String>,
    /// Whether the job passed its commit point.
    pub committed: bool,
    pub exit_code: Option<i32>,
    /// What the job reported with `result JSON`.
    pub result: Option<Value>,
    /// Status lines that were not part of the status protocol (ignored).
    #[serde(default)]
    pub malformed_status_lines: u32,
    pub requester: Requester,
    /// `local`, or `fleet:<operator>@<server>` for remote dispatch.
    pub origin: String,
    /// The fleet dispatch this job runs for (`dsp_…`); `None` for a local job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatch_id: Option<String>,
    /// The parameters, secret values replaced by `"<redacted>"`.
    pub params: BTreeMap<String, Value>,
    /// RFC 3339 times.
    pub created_at: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
}

/// One line of `job.list`: metadata only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct JobSummary {
    pub job_id: JobId,
    pub action: ActionName,
    pub state: JobState,
    pub progress: Option<u8>,
    pub requester_uid: Uid,
    pub origin: String,
    /// The fleet dispatch this job runs for; absent for a local job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatch_id: Option<String>,
    pub created_at: String,
    pub ended_at: Option<String>,
}

/// Answer to `job.list`, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct JobList {
    pub jobs: Vec<JobSummary>,
}

/// Answer to `job.start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct JobStarted {
    pub job_id: JobId,
    /// True when an earlier `job.start` with the same idempotency key made this job.
    pub existing: bool,
}

/// A piece of a job's output: the answer to `job.logs`, and the params of each `job.output`
/// notification while following.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LogChunk {
    pub job_id: JobId,
    /// Byte offset of `data` in the job's log.
    pub from: u64,
    /// Byte offset to ask for next.
    pub next: u64,
    /// The output, as text (invalid UTF-8 shown as U+FFFD).
    pub data: String,
    /// Whether the log reached its size cap and later output was dropped.
    pub truncated: bool,
    /// Whether the job has ended and everything it wrote has been delivered.
    pub ended: bool,
}

/// Notification names.
pub mod notification {
    /// Params: a [`super::JobRecord`]. Sent while `job.watch` runs.
    pub const JOB_UPDATE: &str = "job.update";
    /// Params: a [`super::LogChunk`]. Sent while `job.logs` follows.
    pub const JOB_OUTPUT: &str = "job.output";
    /// Params: `{"topic", "event"}`. Sent while `events.subscribe` runs; the first names the
    /// topics subscribed (topic `subscribed`).
    pub const EVENT: &str = "event";
    /// Params: `{"dropped"}`: events a slow subscriber lost.
    pub const LAGGED: &str = "events.lagged";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_know_which_are_terminal() {
        for s in JobState::ALL {
            assert_eq!(JobState::from_name(s.as_str()), Some(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        let running: Vec<_> = JobState::ALL
            .into_iter()
            .filter(|s| !s.is_terminal())
            .collect();
        assert_eq!(running, [JobState::Queued, JobState::Running]);
    }
}
