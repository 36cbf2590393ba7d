//! The agent link: one outbound WebSocket to the server (`GET /v1/agent/link`, the protocol in
//! `warden_fleet_proto::link`). [`connect`] opens it (TLS, upgrade, refusals before the
//! upgrade); [`session`] runs an open link until it ends. When to link again is
//! [`crate::agent`]'s decision, so this module never sleeps between links.

pub mod connect;
pub mod session;

pub use connect::{ConnectError, Link, Refusal, connect};
pub use session::SessionEnd;
