//! How the CLI reports that something did not work, and the table of exit statuses.
//!
//! Every failure, whether the daemon refused a request, the socket could not be reached or the
//! command line made no sense, becomes one [`Failure`]: a stable kind, a message and the
//! daemon's correlation id when there is one. With `--json` it is printed on stdout as
//! `{"error": {"kind", "message", "correlation_id"}}` (and nothing else is), without it as one
//! line on stderr. The exit status follows from the kind alone ([`Failure::exit_code`]), so the
//! README's table and the code cannot drift apart unnoticed (a test below reads the README). This
//! module never decides whether something failed; it only says so.

use std::process::ExitCode;

use serde::Serialize;
use warden_client::ClientError;
use warden_proto::ErrorKind;
use warden_proto::jobs::JobState;

/// Exit statuses, as documented in the README and `warden --help`.
pub mod exit {
    pub const OK: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const REFUSED: u8 = 3;
    pub const UNAVAILABLE: u8 = 4;
    pub const JOB_FAILED: u8 = 5;
    pub const JOB_CANCELLED: u8 = 6;
    pub const JOB_TIMED_OUT: u8 = 7;
    pub const JOB_ROLLED_BACK: u8 = 8;
    pub const JOB_LOST: u8 = 9;
    pub const JOB_NOT_ENDED: u8 = 10;
    /// Ctrl-C while following a job that keeps running (128 + SIGINT, as a shell reports it).
    pub const INTERRUPTED: u8 = 130;
}

/// The exit status that reports a job's state: its outcome once it has ended.
pub fn job_code(state: JobState) -> u8 {
    match state {
        JobState::Succeeded => exit::OK,
        JobState::Failed => exit::JOB_FAILED,
        JobState::Cancelled => exit::JOB_CANCELLED,
        JobState::TimedOut => exit::JOB_TIMED_OUT,
        JobState::RolledBack => exit::JOB_ROLLED_BACK,
        JobState::Lost => exit::JOB_LOST,
        JobState::Queued | JobState::Running => exit::JOB_NOT_ENDED,
    }
}

/// What kind of failure: one of the daemon's error kinds, or one the CLI finds itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The daemon's own kind (or, for `unavailable` and `forbidden`, the socket's answer).
    Daemon(ErrorKind),
    /// The command line is wrong: an unknown flag, a value that is not `key=value`, …
    Usage,
    /// The connection broke or the daemon closed it.
    Connection,
    /// The daemon answered something this CLI does not understand.
    Protocol,
}

impl Kind {
    /// The stable name printed as `kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Daemon(k) => k.as_str(),
            Kind::Usage => "usage",
            Kind::Connection => "connection",
            Kind::Protocol => "protocol",
        }
    }

    /// The exit status of a failure of this kind.
    pub fn exit_code(self) -> u8 {
        match self {
            Kind::Daemon(ErrorKind::Forbidden | ErrorKind::LockedDown) => exit::REFUSED,
            Kind::Daemon(ErrorKind::Unavailable) => exit::UNAVAILABLE,
            Kind::Usage => exit::USAGE,
            Kind::Daemon(
                ErrorKind::BadRequest
                | ErrorKind::NotFound
                | ErrorKind::Conflict
                | ErrorKind::Busy
                | ErrorKind::RateLimited
                | ErrorKind::Cancelled
                | ErrorKind::Internal,
            )
            | Kind::Connection
            | Kind::Protocol => exit::ERROR,
        }
    }
}

impl Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One failure, as the user is shown it.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub kind: Kind,
    pub message: String,
    /// The daemon's correlation id (also in its log and audit record); null when the daemon
    /// never answered.
    pub correlation_id: Option<String>,
    /// When to try again, for `busy` and `rate_limited`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// The internal cause, which the daemon gives only to admins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Failure {
    fn local(kind: Kind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
            correlation_id: None,
            retry_after_ms: None,
            detail: None,
        }
    }

    /// A command line the CLI cannot use.
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure::local(Kind::Usage, message)
    }

    pub fn exit_code(&self) -> u8 {
        self.kind.exit_code()
    }

    /// Prints the failure (stdout under `--json`, stderr otherwise) and returns its exit status.
    pub fn report(&self, json: bool) -> ExitCode {
        if json {
            let v = serde_json::json!({ "error": self });
            println!("{v:#}");
        } else {
            match (&self.kind, &self.correlation_id) {
                (Kind::Daemon(k), Some(cid)) => {
                    eprintln!("warden: {k}: {} (correlation id {cid})", self.message);
                }
                _ => eprintln!("warden: {}", self.message),
            }
            if let Some(detail) = &self.detail {
                eprintln!("  detail: {detail}");
            }
        }
        ExitCode::from(self.exit_code())
    }
}

impl From<&ClientError> for Failure {
    fn from(e: &ClientError) -> Failure {
        match e {
            ClientError::Rpc(r) => Failure {
                kind: Kind::Daemon(r.kind()),
                message: r.message.clone(),
                correlation_id: Some(r.data.correlation_id.clone()),
                retry_after_ms: r.data.retry_after_ms,
                detail: r.data.detail.clone(),
            },
            ClientError::Unavailable { .. } => {
                Failure::local(Kind::Daemon(ErrorKind::Unavailable), e.to_string())
            }
            ClientError::PermissionDenied { .. } => {
                Failure::local(Kind::Daemon(ErrorKind::Forbidden), e.to_string())
            }
            ClientError::Io(_) => Failure::local(Kind::Connection, e.to_string()),
            ClientError::Protocol(_) => Failure::local(Kind::Protocol, e.to_string()),
        }
    }
}

/// Reports `e` and returns its exit status.
pub fn fail(e: &ClientError, json: bool) -> ExitCode {
    Failure::from(e).report(json)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Every kind the CLI can report, each once.
    fn all_kinds() -> Vec<Kind> {
        let mut kinds: Vec<Kind> = ErrorKind::ALL.into_iter().map(Kind::Daemon).collect();
        kinds.extend([Kind::Usage, Kind::Connection, Kind::Protocol]);
        kinds
    }

    /// The rows of the README's table of exit statuses: (status, kinds cell, job states cell).
    fn readme_rows() -> Vec<(u8, String, String)> {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("| exit status |")
            .expect("the README has a table of exit statuses");
        readme[start..]
            .lines()
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                assert_eq!(cells.len(), 6, "four columns: {l}");
                let code = cells[1].parse().expect("an exit status");
                (code, cells[3].to_owned(), cells[4].to_owned())
            })
            .collect()
    }

    /// Pins: the README's table of exit statuses names every failure kind in the row of the
    /// status the CLI exits with, and every job state in the row of its status.
    #[test]
    fn the_readme_documents_the_exit_status_of_every_kind_and_job_state() {
        let rows = readme_rows();
        let rows_naming = |name: &str, cell: fn(&(u8, String, String)) -> &String| -> Vec<u8> {
            rows.iter()
                .filter(|r| cell(r).contains(&format!("`{name}`")))
                .map(|r| r.0)
                .collect()
        };
        for kind in all_kinds() {
            assert_eq!(
                rows_naming(kind.as_str(), |r| &r.1),
                vec![kind.exit_code()],
                "README row for kind `{}`",
                kind.as_str()
            );
        }
        for state in JobState::ALL {
            assert_eq!(
                rows_naming(state.as_str(), |r| &r.2),
                vec![job_code(state)],
                "README row for job state `{state}`"
            );
        }
        let codes: Vec<u8> = rows.iter().map(|r| r.0).collect();
        assert_eq!(
            codes,
            vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 130],
            "one row per status"
        );
    }

    /// Pins: the JSON error carries exactly kind, message and correlation_id (plus
    /// retry_after_ms only when the daemon gave one).
    #[test]
    fn the_json_error_has_one_shape() {
        let rpc = warden_proto::RpcError::new(ErrorKind::LockedDown, "locked", "c1".into());
        let v = serde_json::to_value(Failure::from(&ClientError::Rpc(rpc))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"kind": "locked_down", "message": "locked", "correlation_id": "c1"})
        );
        let v = serde_json::to_value(Failure::usage("bad")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"kind": "usage", "message": "bad", "correlation_id": null})
        );
    }
}
