//! The agent link: one outbound WebSocket from each host's `warden-agent` to the server,
//! `GET /v1/agent/link`.
//!
//! **Before the upgrade** the server checks the machine key (`Authorization: Bearer wmk_…`), so
//! a bad key costs it no WebSocket state. Refusals are ordinary HTTP answers with an
//! [`crate::ErrorBody`]:
//!
//! | status | kind | the agent |
//! |---|---|---|
//! | 401 | `unauthorized` | no live key: backs off, keeps its key (one 401 proves nothing) |
//! | 403 | `forbidden` | banned: stops linking, says so |
//! | 403 | `quarantined` | a retired key was replayed: waits for an admin, says so |
//! | 409 | `duplicate_link` | this key already holds a live link: backs off |
//! | 503 | `unavailable` | admission is full or the server is stopping: waits `Retry-After` |
//!
//! **After the upgrade** each WebSocket text message is one JSON object with a `type`. The
//! server speaks first, with [`ServerMessage::Welcome`]. Either side sends
//! [`ServerMessage::Heartbeat`]/[`AgentMessage::Heartbeat`] every [`HEARTBEAT`] ±
//! [`HEARTBEAT_JITTER_PERCENT`]%, and closes a link on which nothing arrived for
//! [`DEAD_AFTER`]. A message over [`MAX_MESSAGE`] bytes closes the link. A message of a type
//! the receiver does not know is ignored (and counted), so either end can be upgraded first.
//!
//! **Key rotation** has two phases, so that no crash can lock a host out: the server sends
//! [`ServerMessage::NewKey`] (a pending key; asking again before it is used returns the same
//! one); the agent stores it atomically and only then sends [`AgentMessage::KeyStored`], closes
//! the link and links again with the new key; that first use promotes it and retires the old
//! key. A retired key presented again quarantines the machine.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::{DispatchId, KeyVersion, MachineId, MachineKey};

/// Path of the link endpoint.
pub const LINK_PATH: &str = "/v1/agent/link";
/// Request header carrying the agent's version at the upgrade.
pub const AGENT_VERSION_HEADER: &str = "x-warden-agent-version";
/// Longest agent version string the server keeps.
pub const MAX_AGENT_VERSION: usize = 64;

/// How often each side sends a heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(30);
/// Each heartbeat interval is drawn within this many percent of [`HEARTBEAT`].
pub const HEARTBEAT_JITTER_PERCENT: u32 = 10;
/// A link on which nothing arrived for this long is dead, on either side.
pub const DEAD_AFTER: Duration = Duration::from_secs(75);
/// Largest message either side accepts.
pub const MAX_MESSAGE: usize = 1024 * 1024;

/// After a crash or a dropped link the first attempt is uniform in `0..RECONNECT_FIRST`.
pub const RECONNECT_FIRST: Duration = Duration::from_secs(30);
/// Later attempts back off exponentially with full jitter, up to this.
pub const RECONNECT_CAP: Duration = Duration::from_secs(5 * 60);
/// A graceful server stop spreads its agents' returns over this long.
pub const RESTART_SPREAD: Duration = Duration::from_secs(30);

/// What the server sends on a link.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerMessage {
    /// The first message: who the server takes this link for, and its liveness timing (tests
    /// and operators may shorten it; the agent follows what it is told).
    Welcome {
        machine_id: MachineId,
        key_version: KeyVersion,
        heartbeat_ms: u64,
        dead_after_ms: u64,
    },
    /// I am alive.
    Heartbeat {},
    /// Rotation, phase one: the key to store. Until the agent links with it, the current key
    /// stays valid, and this same key is offered again.
    NewKey {
        key_version: KeyVersion,
        machine_key: MachineKey,
    },
    /// Run `action` with `params` on this host as dispatch `dispatch_id`, for `operator` of
    /// server `server`. The agent submits it to wardend under the fleet origin (wardend judges
    /// it, under the host's own policy) and answers [`AgentMessage::Accepted`] or
    /// [`AgentMessage::Refused`]. Sent again after a reconnect until answered: the agent
    /// answers a dispatch it already took with what it knows.
    Dispatch {
        dispatch_id: DispatchId,
        action: String,
        #[serde(default)]
        params: serde_json::Map<String, serde_json::Value>,
        operator: String,
        server: String,
    },
    /// Cancel the job of a dispatch (wardend's rules apply: past the commit point only a
    /// rollback undoes it).
    Cancel { dispatch_id: DispatchId },
    /// The server has stored a dispatch's output up to chunk `seq` (inclusive): the agent may
    /// drop those chunks from its spool.
    OutputStored { dispatch_id: DispatchId, seq: u64 },
    /// The server has stored the job's end: the agent may forget the dispatch.
    EndStored { dispatch_id: DispatchId },
    /// The server is about to close the link, and why. `reconnect_after_ms` says when to come
    /// back (a graceful stop spreads it over [`RESTART_SPREAD`]); without it the agent uses its
    /// own backoff.
    Goodbye {
        reason: GoodbyeReason,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reconnect_after_ms: Option<u64>,
    },
}

/// An action the host offers the fleet (`remote = true`), as wardend shows it to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteAction {
    pub name: String,
    pub description: String,
    /// The tier it needs on the host (the fleet's principal is capped by `[fleet] max_tier`).
    pub tier: String,
    /// Its parameters as wardend describes them (`name → {type, …}`).
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
}

/// Why the server closes a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GoodbyeReason {
    /// The server is stopping; come back after `reconnect_after_ms`.
    ServerStopping,
    /// The machine's key was revoked or the machine removed; the key will not work again.
    Revoked,
    /// The machine is banned.
    Banned,
    /// A retired key of this machine was presented: no link until an admin clears it.
    Quarantined,
    /// A newer key of this machine was put to use: this link's key is retired.
    Superseded,
    /// Nothing arrived for the dead-after interval.
    Silent,
}

/// What the agent sends on a link.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentMessage {
    /// I am alive.
    Heartbeat {},
    /// Asks for a new key now (the server answers with [`ServerMessage::NewKey`], the same
    /// pending key if one is already out).
    RotateKey {},
    /// Rotation: the key of this version is stored durably; the agent links again with it.
    KeyStored { key_version: KeyVersion },
    /// The actions this host offers the fleet; sent after each Welcome and when they change.
    Actions { actions: Vec<RemoteAction> },
    /// wardend took the dispatch as job `job_id`.
    Accepted {
        dispatch_id: DispatchId,
        job_id: String,
    },
    /// The host refused the dispatch: wardend's error kind (`forbidden`, `locked_down`,
    /// `not_found`, …) and message, or the agent's own when it could not ask.
    Refused {
        dispatch_id: DispatchId,
        kind: String,
        message: String,
    },
    /// The job's state changed (`running`), or its progress moved.
    Progress {
        dispatch_id: DispatchId,
        state: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        percent: Option<u8>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        phase: Option<String>,
    },
    /// Output chunk `seq` (1, 2, … per dispatch, no gaps): the job's output from byte `offset`
    /// on, as wardend logs it. Sent again after a reconnect until the server has stored it.
    Output {
        dispatch_id: DispatchId,
        seq: u64,
        offset: u64,
        data: String,
    },
    /// The job ended: its final state, exit code and result, the number of output chunks it
    /// made (`last_seq`), and whether output was dropped at a cap (wardend's log or the
    /// agent's spool).
    Ended {
        dispatch_id: DispatchId,
        state: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<serde_json::Value>,
        last_seq: u64,
        #[serde(default)]
        output_truncated: bool,
    },
}

/// Reads a message whose `type` is known; `Ok(None)` for a well-formed object of a type this
/// end does not know (to be ignored), `Err` for anything else.
pub fn parse<T: for<'de> Deserialize<'de>>(text: &str) -> Result<Option<T>, LinkError> {
    if text.len() > MAX_MESSAGE {
        return Err(LinkError::TooLarge(text.len()));
    }
    match serde_json::from_str::<T>(text) {
        Ok(m) => Ok(Some(m)),
        Err(e) => {
            #[derive(Deserialize)]
            struct Tagged {
                #[serde(rename = "type")]
                _type: String,
            }
            match serde_json::from_str::<Tagged>(text) {
                Ok(_) if e.is_data() && e.to_string().starts_with("unknown variant") => Ok(None),
                _ => Err(LinkError::Malformed(e.to_string())),
            }
        }
    }
}

/// A link message that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("link message of {0} bytes is over the {MAX_MESSAGE}-byte cap")]
    TooLarge(usize),
    #[error("malformed link message: {0}")]
    Malformed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: the link's messages have one spelling on the wire, and unknown types are set
    /// apart from malformed messages.
    #[test]
    fn link_messages_round_trip_and_unknown_types_are_ignorable() {
        let hb = serde_json::to_string(&AgentMessage::Heartbeat {}).unwrap();
        assert_eq!(hb, r#"{"type":"heartbeat"}"#);
        let stored = serde_json::to_string(&AgentMessage::KeyStored {
            key_version: KeyVersion(3),
        })
        .unwrap();
        assert_eq!(stored, r#"{"type":"key_stored","key_version":3}"#);
        let bye = ServerMessage::Goodbye {
            reason: GoodbyeReason::ServerStopping,
            reconnect_after_ms: Some(1200),
        };
        let text = serde_json::to_string(&bye).unwrap();
        assert_eq!(
            text,
            r#"{"type":"goodbye","reason":"server_stopping","reconnect_after_ms":1200}"#
        );
        assert!(matches!(
            parse::<ServerMessage>(&text),
            Ok(Some(ServerMessage::Goodbye { .. }))
        ));
        assert!(matches!(
            parse::<ServerMessage>(r#"{"type":"dispatch_v9","x":1}"#),
            Ok(None)
        ));
        assert!(parse::<ServerMessage>(r#"{"type":"heartbeat","x":1}"#).is_err());
        assert!(parse::<ServerMessage>("not json").is_err());
        assert!(parse::<AgentMessage>(r#"{"kind":"heartbeat"}"#).is_err());
    }
}
