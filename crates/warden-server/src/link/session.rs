//! One link's task: writes what the hub queued for it, reads what the agent sends, and ends
//! the link when either side closes it. It owns no timer (the hub's wheel decides when to
//! heartbeat and when a link is dead) and touches the database only to offer a rotated key and
//! to store what the agent reports about a dispatch (`dispatch.rs`), answering those reports
//! itself.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};
use warden_fleet_proto::link::{self, AgentMessage, GoodbyeReason, ServerMessage};

use super::Hub;
use super::registry::Link;
use super::rotation;

/// An agent may ask for a key at most this often.
const ROTATE_ASK_EVERY: Duration = Duration::from_secs(10);

/// Runs a registered link until it ends, then unregisters it.
pub async fn run(hub: Arc<Hub>, link: Arc<Link>, mut ws: WebSocket) {
    let welcome = ServerMessage::Welcome {
        machine_id: link.machine_id.clone(),
        key_version: link.key_version,
        heartbeat_ms: u64::try_from(hub.config.heartbeat.as_millis()).unwrap_or(u64::MAX),
        dead_after_ms: u64::try_from(hub.config.dead_after.as_millis()).unwrap_or(u64::MAX),
    };
    if send(&hub, &mut ws, &welcome).await {
        hub.schedule_new(&link);
        hub.relinked(link.machine_row);
        serve(&hub, &link, &mut ws).await;
    }
    hub.closed(&link);
}

async fn serve(hub: &Hub, link: &Link, ws: &mut WebSocket) {
    let mut last_offer: Option<Instant> = None;
    loop {
        let mut goodbye = None;
        for m in link.drain() {
            if let ServerMessage::Goodbye { reason, .. } = &m {
                goodbye = Some(*reason);
            }
            if !send(hub, ws, &m).await {
                return;
            }
        }
        if let Some(reason) = goodbye {
            let code = match reason {
                GoodbyeReason::ServerStopping => close_code::AWAY,
                GoodbyeReason::Silent => close_code::NORMAL,
                _ => close_code::POLICY,
            };
            let frame = CloseFrame {
                code,
                reason: "goodbye".into(),
            };
            let _ = tokio::time::timeout(
                hub.config.send_timeout,
                ws.send(Message::Close(Some(frame))),
            )
            .await;
            return;
        }
        if link.is_closing() {
            // The goodbye was queued after the drain above: send it now.
            continue;
        }
        if link.take_rotation() {
            offer_key(hub, link).await;
            last_offer = Some(Instant::now());
            continue;
        }
        tokio::select! {
            () = link.woken() => {}
            incoming = ws.recv() => {
                let text = match incoming {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                        link.touch(hub.now());
                        continue;
                    }
                    Some(Ok(Message::Binary(_))) => {
                        refuse(hub, ws, close_code::UNSUPPORTED, "text messages only").await;
                        return;
                    }
                    Some(Ok(Message::Text(t))) => t,
                };
                link.touch(hub.now());
                match link::parse::<AgentMessage>(text.as_str()) {
                    Ok(Some(AgentMessage::Heartbeat {})) => {}
                    Ok(Some(AgentMessage::RotateKey {})) => {
                        if last_offer.is_none_or(|t| t.elapsed() >= ROTATE_ASK_EVERY) {
                            last_offer = Some(Instant::now());
                            offer_key(hub, link).await;
                        }
                    }
                    Ok(Some(AgentMessage::KeyStored { key_version })) => {
                        tracing::info!(machine_id = %link.machine_id, %key_version,
                            "the agent stored its next key");
                    }
                    Ok(Some(m)) => {
                        if let Some(reply) = super::dispatch::handle(hub, link, m).await
                            && !send(hub, ws, &reply).await
                        {
                            return;
                        }
                    }
                    Ok(None) => {
                        hub.stats.unknown_messages.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tracing::debug!(machine_id = %link.machine_id, error = %e,
                            "closing a link that sent a malformed message");
                        refuse(hub, ws, close_code::INVALID, "malformed message").await;
                        return;
                    }
                }
            }
        }
    }
}

/// Rotation, phase one: the machine's pending key (the same one until it is used), stored as
/// a hash and sent to the agent.
async fn offer_key(hub: &Hub, link: &Link) {
    let offered = async {
        let (version, _) = hub.db.pending_key_version(link.machine_row).await?;
        let key = rotation::next_key(&hub.secret, &link.machine_id, version, link.key_id);
        hub.db
            .store_pending_key(link.machine_row, version, &key)
            .await?;
        Ok::<_, crate::store::StoreError>(ServerMessage::NewKey {
            key_version: version,
            machine_key: key,
        })
    };
    match offered.await {
        Ok(m) => {
            hub.stats.rotations_offered.fetch_add(1, Ordering::Relaxed);
            tracing::info!(machine_id = %link.machine_id, "offering the agent its next key");
            if !link.send(m) {
                link.close(GoodbyeReason::Silent, None);
            }
        }
        Err(e) => {
            tracing::warn!(machine_id = %link.machine_id, error = %e,
                "cannot issue a rotated key; trying again in a minute");
            link.set_rotate_due_ms(crate::store::now_ms() + 60_000);
        }
    }
}

async fn send(hub: &Hub, ws: &mut WebSocket, m: &ServerMessage) -> bool {
    let Ok(text) = serde_json::to_string(m) else {
        return false;
    };
    matches!(
        tokio::time::timeout(hub.config.send_timeout, ws.send(Message::Text(text.into()))).await,
        Ok(Ok(()))
    )
}

async fn refuse(hub: &Hub, ws: &mut WebSocket, code: u16, why: &'static str) {
    let frame = CloseFrame {
        code,
        reason: why.into(),
    };
    let _ = tokio::time::timeout(
        hub.config.send_timeout,
        ws.send(Message::Close(Some(frame))),
    )
    .await;
}
