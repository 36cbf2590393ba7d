//! The agent's log: `tracing` to stderr, filtered by `WARDEN_AGENT_LOG` (default `info`), with
//! the network crates held at `info` at the most whatever the filter says. Their debug and trace
//! output prints what crosses the wire (tungstenite traces the upgrade request with its
//! `Authorization` header, and every frame's payload, a NewKey included), so it must never
//! reach the log. This module owns that rule; nothing else sets up logging.

use tracing::{Level, Metadata};
use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::prelude::*;

/// Crates whose events above `info` could carry a key.
const WIRE_CRATES: &[&str] = &[
    "tungstenite",
    "tokio_tungstenite",
    "reqwest",
    "hyper",
    "hyper_util",
    "h2",
    "rustls",
    "tokio_rustls",
    "http",
];

/// Whether an event or span of `target` at `level` may be logged at all.
pub fn allowed(target: &str, level: &Level) -> bool {
    let krate = target.split("::").next().unwrap_or(target);
    !(WIRE_CRATES.contains(&krate) && *level > Level::INFO)
}

fn permitted(meta: &Metadata<'_>) -> bool {
    allowed(meta.target(), meta.level())
}

/// Sets up the log for the binary: `spec` is `WARDEN_AGENT_LOG` (an `EnvFilter` directive).
pub fn init(spec: Option<&str>) {
    let filter = spec
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_filter(filter)
        .with_filter(filter_fn(permitted));
    tracing_subscriber::registry().with(layer).init();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: the network crates never log above info, the agent's own modules may.
    #[test]
    fn wire_crates_are_held_at_info() {
        assert!(!allowed("tungstenite::handshake::client", &Level::TRACE));
        assert!(!allowed("tungstenite", &Level::DEBUG));
        assert!(!allowed("hyper_util::client::legacy", &Level::DEBUG));
        assert!(allowed("tungstenite::protocol", &Level::WARN));
        assert!(allowed("warden_agent::link::session", &Level::TRACE));
        assert!(allowed("tungstenite_like", &Level::TRACE));
    }
}
