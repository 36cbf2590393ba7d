//! warden-agent: the host side of the fleet. It runs unprivileged as its own system user,
//! enrolls the host with `warden-server` (its machine id comes from wardend), keeps the machine
//! key in a checked key store, and holds one outbound WebSocket link to the server. Everything
//! it says on the wire is a type of `warden_fleet_proto`; nothing here defines a wire type.
//!
//! Layout: [`config`] (agent.toml) → [`agent`] (the life cycle and every wait decision, with
//! the pure schedule math in [`backoff`]) → [`enroll`] and [`link`] (the two exchanges, over
//! [`tls`]) → [`keystore`] (the key on disk). [`dispatch`] runs the fleet's dispatches between
//! the link and wardend, with its spool beside the key. [`identity`] asks wardend who this host is.
//! [`cli`] declares the flags `main.rs` parses.

pub mod agent;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod dispatch;
pub mod enroll;
pub mod identity;
pub mod keystore;
pub mod link;
pub mod logging;
pub mod tls;

pub use agent::{Exit, Stop, run};
pub use config::AgentConfig;

/// Exit status when the server gave an answer that waiting will not change (409 at enrollment,
/// banned on the link): systemd's `RestartPreventExitStatus=` keeps it from restarting.
pub const EXIT_FINAL: u8 = 3;
