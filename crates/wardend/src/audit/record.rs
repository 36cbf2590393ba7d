//! One record of the audit log: who it is about ([`Peer`]), what happened ([`Event`]), and
//! how it is written as a line that names its place (`seq`) and the hash of the line before
//! (`prev`); [`Head`] is where a chain stands.

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::AuditError;

/// What the first record names as the line before it.
pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who a record is about, as the kernel reported them at connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
    pub exe: Option<String>,
    pub client: Option<String>,
}

/// What kind of thing a record says happened: its `event` field, spelled as on the wire (the
/// names are part of the audit log's format; tools filter on them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) enum Kind {
    /// The daemon started (its policy's origin in `reason`).
    #[default]
    #[serde(rename = "daemon.start")]
    DaemonStart,
    /// The daemon stopped, or its start failed (why, in `reason`).
    #[serde(rename = "daemon.stop")]
    DaemonStop,
    /// The policy was reloaded.
    #[serde(rename = "reload")]
    Reload,
    /// A request that changes something, allowed, before it runs.
    #[serde(rename = "request")]
    Request,
    /// How such a request ended.
    #[serde(rename = "request.outcome")]
    RequestOutcome,
    /// A request the gate refused.
    #[serde(rename = "denied")]
    Denied,
    /// How many refusals of one uid were counted instead of recorded.
    #[serde(rename = "denied.summary")]
    DeniedSummary,
    /// A job's state changed.
    #[serde(rename = "job")]
    Job,
    /// Retention removed old segments (which, and the hash at the cut).
    #[serde(rename = "audit.retention")]
    AuditRetention,
}

/// One thing that happened. Fields that do not apply are left out of the line.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Event {
    /// What kind of thing happened.
    pub event: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<Peer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// With secret values already replaced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// `fleet:<operator>@<server>` for a request or job that came through the fleet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// The fleet dispatch the request or job belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dispatch_id: Option<String>,
}

impl Event {
    pub(crate) fn new(event: Kind) -> Event {
        Event {
            event,
            ..Event::default()
        }
    }
}

/// A record as written: its place in the chain (`seq`, `ts`, `prev`), then the fields of the
/// event `body` (the event as JSON). Spliced by hand: `#[serde(flatten)]` goes through a map
/// serializer, which showed in profiles of the write path.
#[cfg(test)]
pub(super) fn encode(seq: u64, ts: &str, prev: &str, body: &[u8]) -> serde_json::Result<Vec<u8>> {
    let mut line = Vec::with_capacity(body.len() + 128);
    encode_into(&mut line, seq, ts, prev, body)?;
    Ok(line)
}

/// [`encode`] appended to `out`, the buffer of lines to write, so a record costs no buffer of
/// its own. `ts` is the clock's text (digits and `-:.TZ`, nothing JSON escapes); `prev` is a
/// hash in hex and written as it is, unless it holds anything else (a seal database changed
/// by hand), which is escaped. On an error `out` is left as it was.
pub(super) fn encode_into(
    out: &mut Vec<u8>,
    seq: u64,
    ts: &str,
    prev: &str,
    body: &[u8],
) -> serde_json::Result<()> {
    use std::io::Write as _;
    let start = out.len();
    // Writing to a Vec does not fail.
    let _ = write!(out, "{{\"seq\":{seq},\"ts\":\"");
    out.extend_from_slice(ts.as_bytes());
    out.extend_from_slice(b"\",\"prev\":");
    if prev.bytes().all(|b| b.is_ascii_alphanumeric()) {
        out.push(b'"');
        out.extend_from_slice(prev.as_bytes());
        out.push(b'"');
    } else if let Err(e) = serde_json::to_writer(&mut *out, prev) {
        out.truncate(start);
        return Err(e);
    }
    // `body` is an object with at least `event`: splice its fields in after ours.
    out.push(b',');
    out.extend_from_slice(&body[1..]);
    Ok(())
}

/// The last record written: where the chain continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub seq: u64,
    /// Hex SHA-256 of the last line (without its newline), or [`GENESIS`].
    pub hash: String,
}

/// Hex SHA-256 of `line`. (By table: `format!` per byte showed in profiles of the write path.)
pub(crate) fn hash(line: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in Sha256::digest(line) {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
    out
}

/// `event` as JSON, for [`encode`]: an object with at least `event`.
#[cfg(test)]
pub(super) fn body_of(event: &Event) -> Result<Vec<u8>, AuditError> {
    let mut body = Vec::new();
    body_into(&mut body, event)?;
    Ok(body)
}

/// [`body_of`] into `body` (cleared first), whose capacity is reused record to record.
pub(super) fn body_into(body: &mut Vec<u8>, event: &Event) -> Result<(), AuditError> {
    body.clear();
    serde_json::to_writer(&mut *body, event)
        .map_err(|e| AuditError::Io(format!("cannot encode a record: {e}")))
}

pub(super) fn now_text() -> String {
    crate::clock::now_rfc3339()
}
