//! The systemd watchdog, fed only by proof that the daemon serves: at a third of
//! `WATCHDOG_USEC`, an internal client connects to every socket the daemon serves, says `hello`
//! and asks `health`, through the same accept loop, admission, framing, identity, gate and
//! handler as any caller; `WATCHDOG=1` is sent only when every socket answered within that third.
//! A wedged accept loop, a stuck gate or runtime, a socket file that was removed, or a daemon out
//! of descriptors stops the pings, and systemd restarts the daemon.
//!
//! Any answer counts, an error too (`busy` when the connections are all taken, `rate_limited`):
//! the daemon answering is what is proved, not that it has room. Once the daemon is stopping,
//! its sockets close on purpose: the pings go on from the timer alone, and `TimeoutStopSec=`
//! bounds the stop. It never sends `WATCHDOG=1` for a round trip that did not complete.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::future::try_join_all;
use sd_notify::NotifyState;
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;
use warden_proto::envelope::{Incoming, request};
use warden_proto::frame::{read_frame, write_frame};
use warden_proto::request::{ClientName, HelloParams};

/// What the internal client calls itself in `hello`, so its connections can be told apart.
pub const CLIENT: &str = "wardend-watchdog";

/// Why one round trip failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{path}: {step}: {source}")]
    Io {
        path: PathBuf,
        step: &'static str,
        source: std::io::Error,
    },
    #[error("{path}: the daemon closed the connection without answering")]
    Closed { path: PathBuf },
    #[error("{path}: the answer is not JSON-RPC: {detail}")]
    Garbled { path: PathBuf, detail: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Largest answer the probe reads (a `hello` answer is a few hundred bytes).
const MAX_ANSWER: u32 = 1 << 20;

/// One `hello` + `health` round trip on the socket at `path`.
pub async fn probe(path: &Path) -> Result<(), ProbeError> {
    let io = |step| {
        move |source| ProbeError::Io {
            path: path.to_owned(),
            step,
            source,
        }
    };
    let mut stream = UnixStream::connect(path).await.map_err(io("connect"))?;
    let hello = HelloParams {
        protocol: warden_proto::PROTOCOL_VERSION,
        // A fixed, valid name: 1 to 64 printable characters.
        client: ClientName::try_from(CLIENT.to_owned()).map_err(|e| ProbeError::Garbled {
            path: path.to_owned(),
            detail: e.to_string(),
        })?,
        features: Vec::new(),
    };
    for (id, method, params) in [
        (1, "hello", serde_json::to_value(&hello)),
        (2, "health", Ok(serde_json::json!({}))),
    ] {
        let body =
            params
                .and_then(|p| request(id, method, &p))
                .map_err(|e| ProbeError::Garbled {
                    path: path.to_owned(),
                    detail: e.to_string(),
                })?;
        write_frame(&mut stream, &body, MAX_ANSWER)
            .await
            .map_err(io("write"))?;
        let frame = read_frame(&mut stream, MAX_ANSWER)
            .await
            .map_err(io("read"))?
            .ok_or_else(|| ProbeError::Closed {
                path: path.to_owned(),
            })?;
        match Incoming::parse(&frame) {
            // Refused at admission (`busy`, no id): the accept loop answered; nothing follows.
            Ok(Incoming::Response {
                outcome: Err(_), ..
            }) => return Ok(()),
            Ok(Incoming::Response { .. }) => {}
            Ok(Incoming::Notification { method, .. }) => {
                return Err(ProbeError::Garbled {
                    path: path.to_owned(),
                    detail: format!("unexpected notification `{method}`"),
                });
            }
            Err(e) => {
                return Err(ProbeError::Garbled {
                    path: path.to_owned(),
                    detail: e.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// A round trip on every socket in `paths`, all within `budget`.
pub async fn probe_all(paths: &[PathBuf], budget: Duration) -> Result<(), ProbeError> {
    tokio::time::timeout(budget, try_join_all(paths.iter().map(|p| probe(p))))
        .await
        .map_err(|_| ProbeError::Timeout(budget))?
        .map(|_| ())
}

fn ping() {
    if let Err(e) = sd_notify::notify(&[NotifyState::Watchdog]) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// When systemd asked for a watchdog (`WATCHDOG_USEC`), feeds it from round trips through the
/// sockets in `paths` until `stop` is cancelled; after `stopping` is cancelled, from the timer
/// alone.
pub fn spawn(paths: Vec<PathBuf>, stopping: CancellationToken, stop: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    // Three chances per interval: one slow round trip does not cost the daemon its life.
    let period = (interval / 3).max(Duration::from_millis(10));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Logged when the outcome changes, not at every period.
        let mut failing = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            if stopping.is_cancelled() {
                ping();
                continue;
            }
            match probe_all(&paths, period).await {
                Ok(()) => {
                    if failing {
                        tracing::info!("watchdog: the daemon answers again");
                        failing = false;
                    }
                    ping();
                }
                Err(e) => {
                    if !failing {
                        tracing::error!(error = %e, "watchdog: the daemon does not answer on its own socket; not telling systemd it is alive");
                        failing = true;
                    }
                }
            }
        }
    });
}
