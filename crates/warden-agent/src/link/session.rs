//! One open link, from the server's Welcome to its end: heartbeats every `heartbeat` ± 10%,
//! closing after `dead_after` of silence, honouring Goodbye, and the agent's half of key
//! rotation (store the new key atomically, only then acknowledge, then close so the caller links
//! again with it at once). It owns the message loop only; reconnecting is the caller's. It must
//! never log a message's text (a NewKey carries a key), and never acknowledge a key it has not
//! read back from the key store.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use warden_fleet_proto::link::{self, AgentMessage, GoodbyeReason, ServerMessage};
use warden_fleet_proto::{KeyVersion, MachineId};

use super::connect::{Link, describe};
use crate::agent::Stop;
use crate::backoff;
use crate::config::{PausePoint, TestHooks, Timings};
use crate::dispatch::Dispatcher;
use crate::keystore::{KeyStore, StoredKey};

/// Shortest and longest liveness timings taken from a Welcome.
const MIN_TIMING: Duration = Duration::from_millis(20);
const MAX_TIMING: Duration = Duration::from_secs(3600);

/// How a link that was open ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// The server said goodbye (and maybe when to return), or closed, or went silent, or the
    /// connection broke. `welcomed` says whether the link got as far as a Welcome.
    Dropped {
        welcomed: bool,
        goodbye: Option<GoodbyeReason>,
        reconnect_after: Option<Duration>,
        why: String,
    },
    /// A new key was stored and acknowledged: link again at once with it.
    Rotated { version: KeyVersion },
    /// The agent is stopping.
    Shutdown,
}

/// What the Welcome said, for the log.
#[derive(Debug, Clone)]
pub struct Welcomed {
    pub machine_id: MachineId,
    pub key_version: KeyVersion,
    pub heartbeat: Duration,
    pub dead_after: Duration,
}

/// Sends one agent message, giving up after `within`.
async fn send(ws: &mut Link, msg: &AgentMessage, within: Duration) -> Result<(), String> {
    let text = serde_json::to_string(msg).map_err(|e| e.to_string())?;
    match tokio::time::timeout(within, ws.send(Message::text(text))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(describe(&e)),
        Err(_) => Err(format!("send not done within {within:?}")),
    }
}

/// Closes our side politely, without waiting long for the peer.
async fn close(ws: &mut Link, code: CloseCode, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(Some(frame))).await;
}

/// Test only (`[test_overrides] pause_at`): at `point`, says so in one line and waits for the
/// stop (the crash tests kill the agent here).
async fn pause(hooks: &TestHooks, point: PausePoint, stop: &Stop) -> Option<SessionEnd> {
    if hooks.pause_at != Some(point) {
        return None;
    }
    tracing::warn!(
        "TEST OVERRIDE: paused at {} (pause_at); waiting to be killed",
        point.as_str()
    );
    stop.wait().await;
    Some(SessionEnd::Shutdown)
}

/// Sleeps until `at`, or forever when there is none.
async fn until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Tells the dispatcher the link is down however the session ends.
struct Down<'a>(&'a Dispatcher);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        self.0.link_down();
    }
}

/// Runs the link until it ends. `held` is the key it was opened with. `rotation_asked` is
/// `[test_overrides] rotate_after_ms`'s memory: it asks once per run. Dispatch messages go to
/// `dispatch`, and what it queues for the server is sent from here.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    ws: &mut Link,
    timings: &Timings,
    hooks: &TestHooks,
    rotation_asked: &mut bool,
    store: &Arc<KeyStore>,
    held: &StoredKey,
    dispatch: &Dispatcher,
    stop: &Stop,
) -> SessionEnd {
    let dropped = |welcomed, why: String| SessionEnd::Dropped {
        welcomed,
        goodbye: None,
        reconnect_after: None,
        why,
    };
    // The Welcome comes first, within the welcome timeout.
    let first = tokio::select! {
        () = stop.wait() => {
            close(ws, CloseCode::Away, "agent stopping").await;
            return SessionEnd::Shutdown;
        }
        m = tokio::time::timeout(timings.welcome_timeout, ws.next()) => m,
    };
    let welcome = match first {
        Err(_) => {
            close(ws, CloseCode::Policy, "no welcome").await;
            return dropped(
                false,
                format!("no Welcome within {:?}", timings.welcome_timeout),
            );
        }
        Ok(None) => return dropped(false, "closed before the Welcome".into()),
        Ok(Some(Err(e))) => return dropped(false, describe(&e)),
        Ok(Some(Ok(Message::Text(t)))) => match link::parse::<ServerMessage>(&t) {
            Ok(Some(ServerMessage::Welcome {
                machine_id,
                key_version,
                heartbeat_ms,
                dead_after_ms,
            })) => Welcomed {
                machine_id,
                key_version,
                heartbeat: timings
                    .heartbeat
                    .unwrap_or(Duration::from_millis(heartbeat_ms))
                    .clamp(MIN_TIMING, MAX_TIMING),
                dead_after: timings
                    .dead_after
                    .unwrap_or(Duration::from_millis(dead_after_ms))
                    .clamp(MIN_TIMING, MAX_TIMING),
            },
            Ok(_) => {
                close(ws, CloseCode::Protocol, "welcome expected").await;
                return dropped(false, "the server's first message was not a Welcome".into());
            }
            Err(e) => {
                close(ws, CloseCode::Protocol, "malformed").await;
                return dropped(false, first_words(&e));
            }
        },
        Ok(Some(Ok(other))) => {
            close(ws, CloseCode::Protocol, "welcome expected").await;
            return dropped(
                false,
                format!("first frame was {} , not a Welcome", frame_kind(&other)),
            );
        }
    };
    tracing::info!(
        machine_id = %welcome.machine_id,
        key_version = %welcome.key_version,
        heartbeat_ms = welcome.heartbeat.as_millis() as u64,
        dead_after_ms = welcome.dead_after.as_millis() as u64,
        "link: up"
    );
    if held.version != Some(welcome.key_version) {
        // Record the version the server knows this key by; the key itself is unchanged.
        let updated = StoredKey {
            key: held.key.clone(),
            version: Some(welcome.key_version),
        };
        let s = Arc::clone(store);
        match tokio::task::spawn_blocking(move || s.store(&updated)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "link: could not record the key version"),
            Err(e) => tracing::warn!(error = %e, "link: could not record the key version"),
        }
    }
    let mut last_rx = Instant::now();
    let mut next_beat = Instant::now()
        + backoff::heartbeat(
            welcome.heartbeat,
            link::HEARTBEAT_JITTER_PERCENT,
            backoff::draw(),
        );
    let mut unknown: u64 = 0;
    // The dispatcher's queue for this link: bounded, so its senders wait while we send.
    let mut outbox = dispatch.link_up();
    let _down = Down(dispatch);
    let mut ask_at = hooks
        .rotate_after
        .filter(|_| !*rotation_asked)
        .map(|d| Instant::now() + d);
    loop {
        let dead_at = last_rx + welcome.dead_after;
        let incoming = tokio::select! {
            () = stop.wait() => {
                close(ws, CloseCode::Away, "agent stopping").await;
                return SessionEnd::Shutdown;
            }
            () = tokio::time::sleep_until(dead_at) => {
                tracing::warn!(
                    silent_ms = welcome.dead_after.as_millis() as u64,
                    "link: nothing from the server for the dead-after interval; closing"
                );
                close(ws, CloseCode::Away, "silent").await;
                return SessionEnd::Dropped {
                    welcomed: true,
                    goodbye: Some(GoodbyeReason::Silent),
                    reconnect_after: None,
                    why: "the server went silent".into(),
                };
            }
            () = tokio::time::sleep_until(next_beat) => {
                if let Err(e) = send(ws, &AgentMessage::Heartbeat {}, welcome.dead_after).await {
                    return dropped(true, format!("sending a heartbeat: {e}"));
                }
                next_beat = Instant::now() + backoff::heartbeat(
                    welcome.heartbeat,
                    link::HEARTBEAT_JITTER_PERCENT,
                    backoff::draw(),
                );
                continue;
            }
            () = until(ask_at) => {
                ask_at = None;
                *rotation_asked = true;
                tracing::info!("link: asking for a new key (test override rotate_after_ms)");
                if let Err(e) = send(ws, &AgentMessage::RotateKey {}, welcome.dead_after).await {
                    return dropped(true, format!("sending RotateKey: {e}"));
                }
                continue;
            }
            Some(m) = outbox.recv() => {
                if let Err(e) = send(ws, &m, welcome.dead_after).await {
                    return dropped(true, format!("sending a dispatch message: {e}"));
                }
                continue;
            }
            m = ws.next() => m,
        };
        let msg = match incoming {
            None => return dropped(true, "the server closed the connection".into()),
            Some(Err(e)) => return dropped(true, describe(&e)),
            Some(Ok(m)) => m,
        };
        last_rx = Instant::now();
        let text = match msg {
            Message::Text(t) => t,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            Message::Close(_) => return dropped(true, "the server closed the link".into()),
            Message::Binary(_) => {
                close(ws, CloseCode::Unsupported, "text only").await;
                return dropped(true, "the server sent a binary message".into());
            }
        };
        match link::parse::<ServerMessage>(&text) {
            Ok(Some(ServerMessage::Heartbeat {})) => {}
            Ok(Some(ServerMessage::Welcome { .. })) => {
                tracing::debug!("link: a second Welcome, ignored");
            }
            Ok(Some(ServerMessage::NewKey {
                key_version,
                machine_key,
            })) => {
                if let Some(end) = pause(hooks, PausePoint::RotationReceived, stop).await {
                    return end;
                }
                let new = StoredKey {
                    key: machine_key,
                    version: Some(key_version),
                };
                // Phase one done on our side only once the key is durable and read back.
                let s = Arc::clone(store);
                let stored = tokio::task::spawn_blocking(move || s.store(&new)).await;
                match stored {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, key_version = %key_version,
                            "link: could not store the new key; keeping the current one");
                        close(ws, CloseCode::Error, "key not stored").await;
                        return dropped(true, "the new key could not be stored".into());
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "link: storing the new key failed");
                        close(ws, CloseCode::Error, "key not stored").await;
                        return dropped(true, "the new key could not be stored".into());
                    }
                }
                tracing::info!(key_version = %key_version, "link: new key stored; acknowledging");
                if let Some(end) = pause(hooks, PausePoint::RotationStored, stop).await {
                    return end;
                }
                let ack = AgentMessage::KeyStored { key_version };
                if let Err(e) = send(ws, &ack, welcome.dead_after).await {
                    // The key is stored: linking with it promotes it all the same.
                    tracing::warn!(error = %e, "link: KeyStored not sent; linking with the new key");
                }
                if let Some(end) = pause(hooks, PausePoint::RotationAcknowledged, stop).await {
                    return end;
                }
                close(ws, CloseCode::Normal, "rotating").await;
                return SessionEnd::Rotated {
                    version: key_version,
                };
            }
            Ok(Some(ServerMessage::Goodbye {
                reason,
                reconnect_after_ms,
            })) => {
                tracing::info!(?reason, reconnect_after_ms, "link: the server said goodbye");
                close(ws, CloseCode::Normal, "goodbye").await;
                return SessionEnd::Dropped {
                    welcomed: true,
                    goodbye: Some(reason),
                    reconnect_after: reconnect_after_ms.map(Duration::from_millis),
                    why: format!("goodbye: {reason:?}"),
                };
            }
            Ok(Some(
                m @ (ServerMessage::Dispatch { .. }
                | ServerMessage::Cancel { .. }
                | ServerMessage::OutputStored { .. }
                | ServerMessage::EndStored { .. }),
            )) => dispatch.on_message(m),
            Ok(None) => {
                unknown += 1;
                if unknown.is_power_of_two() {
                    tracing::info!(count = unknown, "link: ignored messages of unknown types");
                }
            }
            Err(e) => {
                close(ws, CloseCode::Protocol, "malformed").await;
                return dropped(true, first_words(&e));
            }
        }
    }
}

/// A parse error's description, short, without echoing the message (it may hold a key).
fn first_words(e: &link::LinkError) -> String {
    match e {
        link::LinkError::TooLarge(n) => format!("a {n}-byte message over the cap"),
        link::LinkError::Malformed(_) => "a malformed message from the server".into(),
    }
}

fn frame_kind(m: &Message) -> &'static str {
    match m {
        Message::Text(_) => "text",
        Message::Binary(_) => "binary",
        Message::Ping(_) => "ping",
        Message::Pong(_) => "pong",
        Message::Close(_) => "close",
        Message::Frame(_) => "frame",
    }
}
