//! The protective limits a daemon enforces, as configured under `[limits]` and as reported by
//! `status`. Defaults are the documented ones.

use serde::{Deserialize, Serialize};

use crate::frame::DEFAULT_MAX_FRAME;

/// Limits that keep one caller from harming the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted frame body in bytes.
    pub max_frame: u32,
    /// Open connections across all callers.
    pub max_connections: u32,
    /// Open connections from one uid.
    pub max_connections_per_uid: u32,
    /// Connections beyond `max_connections` that only root and admin-tier callers may take, so
    /// callers below admin cannot lock an administrator out by filling every slot.
    pub admin_reserve: u32,
    /// Sustained requests per second on one connection.
    pub requests_per_second: f64,
    /// Requests one connection may send at once before the rate applies.
    pub burst: u32,
    /// Sustained requests per second from one uid over all its connections.
    pub uid_requests_per_second: f64,
    /// Requests one uid may send at once before its rate applies.
    pub uid_burst: u32,
    /// Time a new connection has to send `hello`.
    pub hello_timeout_ms: u64,
    /// Time the body of a frame has to arrive once its first byte has.
    pub frame_timeout_ms: u64,
    /// Time after which a connection that sends nothing is closed, unless a request it made is
    /// still running (a wait, a subscription).
    pub idle_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: DEFAULT_MAX_FRAME,
            max_connections: 64,
            max_connections_per_uid: 16,
            admin_reserve: 8,
            requests_per_second: 20.0,
            burst: 40,
            uid_requests_per_second: 50.0,
            uid_burst: 100,
            hello_timeout_ms: 5_000,
            frame_timeout_ms: 10_000,
            idle_timeout_ms: 300_000,
        }
    }
}
