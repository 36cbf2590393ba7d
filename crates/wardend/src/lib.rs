//! wardend: the warden daemon as a library, so tests can run it in-process and drive shutdown.
//!
//! The request path, in the order a request meets it:
//! [`listener`] (sockets) → [`server`] (accept, admission) → `connection` (framing, deadlines)
//! → `identity` (who, from the kernel) → `dispatch` (rate limits, the gate) → `handlers` (one
//! file per endpoint family). [`settings`] loads what the daemon runs with; [`cli`] declares the
//! flags; `main.rs` only parses them, sets up logging and signals, and calls [`Daemon::start`].

mod alerts;
mod audit;
mod brakes;
mod call;
pub mod cli;
mod clock;
mod connection;
mod dispatch;
pub mod doctor;
mod events;
mod files;
mod fswork;
mod handlers;
pub mod host_identity;
mod identity;
mod jobs;
mod limits;
pub mod listener;
mod logs;
pub mod notify;
pub mod offline;
pub mod resources;
pub mod server;
pub mod settings;
mod state;
mod stats;
mod varlink;
pub mod watchdog;

pub use jobs::JobsError;
pub use server::{Daemon, DaemonThread, Reloaded, StartError};
pub use settings::{DEFAULT_CONFIG, DROPIN_DIR, Settings, SettingsError, SystemDirectory};
