//! `[test_overrides]` in agent.toml: the settings that exist for tests and trying things out
//! only. Each one shortens a safety margin, skips a check or stops the agent on purpose, and the
//! agent logs a warning naming each one it uses. Nothing here may ever be on by default.

use std::time::Duration;

use serde::Deserialize;
use warden_fleet_proto::MachineId;

/// `[test_overrides]`: for tests and trying things out only. Every value shortens a safety
/// margin or skips a check, and the agent logs a warning naming each one it uses.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestOverrides {
    /// Use this machine id instead of asking wardend's `host.identity`.
    pub machine_id_override: Option<MachineId>,
    /// Heartbeat interval and silence limit instead of those the server's Welcome gives.
    pub heartbeat_ms: Option<u64>,
    pub dead_after_ms: Option<u64>,
    /// How long to wait for the server's Welcome after the upgrade.
    pub welcome_timeout_ms: Option<u64>,
    /// Link reconnects: the first attempt's spread, and the backoff cap.
    pub reconnect_first_ms: Option<u64>,
    pub reconnect_cap_ms: Option<u64>,
    /// Network errors and 5xx: the backoff base and cap.
    pub retry_base_ms: Option<u64>,
    pub retry_cap_ms: Option<u64>,
    /// 401/403 (rejected): the backoff base and cap.
    pub rejected_base_ms: Option<u64>,
    pub rejected_cap_ms: Option<u64>,
    /// 202 (pending): the polling interval.
    pub pending_poll_ms: Option<u64>,
    /// Ask the server for a new key (`RotateKey`) this long after the first Welcome of a run.
    pub rotate_after_ms: Option<u64>,
    /// Stop for good at this step of a key rotation (for crash tests: the test kills the agent
    /// there).
    pub pause_at: Option<PausePoint>,
    /// Each dispatched job's spool holds at most this many bytes of unacknowledged output
    /// (default [`crate::dispatch::SPOOL_CAP`]).
    pub spool_cap_bytes: Option<u64>,
    /// How often to ask wardend again for the actions the host offers the fleet.
    pub actions_poll_ms: Option<u64>,
}

/// A step of a key rotation where `[test_overrides] pause_at` stops the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum PausePoint {
    /// A NewKey arrived; it is not stored yet.
    #[serde(rename = "rotation.received")]
    RotationReceived,
    /// The new key is stored; KeyStored is not sent yet.
    #[serde(rename = "rotation.stored")]
    RotationStored,
    /// KeyStored is sent; the agent has not linked again with the new key yet.
    #[serde(rename = "rotation.acknowledged")]
    RotationAcknowledged,
}

impl PausePoint {
    pub fn as_str(self) -> &'static str {
        match self {
            PausePoint::RotationReceived => "rotation.received",
            PausePoint::RotationStored => "rotation.stored",
            PausePoint::RotationAcknowledged => "rotation.acknowledged",
        }
    }
}

/// The test-only hooks of `[test_overrides]` that change what the agent does, not when.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestHooks {
    pub rotate_after: Option<Duration>,
    pub pause_at: Option<PausePoint>,
    pub spool_cap: Option<u64>,
    pub actions_poll: Option<Duration>,
}
