//! `GET /v1/agent/link`: the upgrade to a link. Everything that can refuse it happens before
//! the upgrade, in order of cost: the request must be a WebSocket upgrade, the process must
//! admit one more upgrade this second, and the machine key must stand. A refusal is an
//! ordinary HTTP answer and leaves no WebSocket state behind.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use warden_fleet_proto::MachineKey;
use warden_fleet_proto::link::{self, GoodbyeReason};

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState, client_addr};
use crate::link::registry::{Link, Refused};
use crate::link::session;
use crate::store::links::{LinkAuth, Refusal};
use crate::store::now_ms;

pub(super) fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(link))
}

/// The agent's version as it says it: printable ASCII, at most 64 bytes, else `unknown`.
fn agent_version(headers: &HeaderMap) -> Box<str> {
    headers
        .get(link::AGENT_VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= link::MAX_AGENT_VERSION
                && v.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        })
        .unwrap_or("unknown")
        .into()
}

#[utoipa::path(
    get,
    path = "/v1/agent/link",
    tag = "agent",
    description = "The agent link (WebSocket). Needs a machine key (wmk_) as `Authorization: Bearer`, checked before the upgrade. Messages: warden_fleet_proto::link; see docs/FLEET.md.",
    responses(
        (status = 101, description = "Upgraded: the link is up"),
        (status = 400, description = "Not a WebSocket upgrade"),
        (status = 401, description = "unauthorized: no live machine key"),
        (status = 403, description = "forbidden (banned) or quarantined"),
        (status = 409, description = "duplicate_link: this key already holds a live link"),
        (status = 503, description = "unavailable: upgrade rate or link cap reached (Retry-After)"),
    )
)]
pub async fn link(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let ws = ws.map_err(|e| ApiError::bad_request(format!("the link is a WebSocket: {e}")))?;
    let hub = Arc::clone(&state.link);
    if let Err(wait) = hub.admission.take(Instant::now()) {
        hub.stats.refused_rate.fetch_add(1, Ordering::Relaxed);
        // Whole seconds, rounded up: an agent that waits exactly Retry-After finds a token.
        let wait = Duration::from_secs(wait.as_millis().div_ceil(1000).max(1) as u64);
        return Err(ApiError::unavailable(
            "too many links are being set up; come back after Retry-After",
            wait,
        ));
    }
    let refused_key = || {
        state
            .metrics
            .link_refused_key
            .fetch_add(1, Ordering::Relaxed);
    };
    let unauthorized = || {
        refused_key();
        ApiError::unauthorized("a live machine key is required")
    };
    let key: MachineKey = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|k| k.parse().ok())
        .ok_or_else(unauthorized)?;
    let source = client_addr(peer.ip(), &headers, &state.trusted_proxies).to_string();
    let auth = state
        .db
        .authenticate_link(&key, hub.next_rotation_ms())
        .await?;
    let live = match auth {
        LinkAuth::Live(k) => k,
        LinkAuth::Unknown => return Err(unauthorized()),
        LinkAuth::Replayed {
            machine_row,
            machine_id,
        } => {
            // A key its own agent gave up is back: a copy of the host, or a theft. Only this
            // machine is quarantined; its live link (whichever copy holds it) closes.
            let newly = state.db.quarantine(machine_id.as_str()).await?;
            hub.close_machine(machine_row, GoodbyeReason::Quarantined);
            if newly || state.budget.admit("machine.key_replayed") {
                state
                    .db
                    .event(
                        "machine.key_replayed",
                        &format!("machine {machine_id}"),
                        &format!("machine {machine_id}"),
                        &source,
                        "a retired machine key was presented again: the machine is quarantined until an admin clears it",
                    )
                    .await?;
            }
            tracing::warn!(%machine_id, %source, "a retired machine key was presented again: machine quarantined");
            return Err(unauthorized());
        }
        LinkAuth::Refused { why, .. } => {
            refused_key();
            return Err(match why {
                Refusal::Banned => ApiError::forbidden("this machine is banned"),
                Refusal::Quarantined => ApiError::Quarantined,
            });
        }
    };
    let version = agent_version(&headers);
    let link = Arc::new(Link::new(
        hub.next_conn(),
        live.machine_row,
        live.machine_id.clone(),
        live.key_id,
        live.key_version,
        version.clone(),
        now_ms(),
        hub.now(),
        live.next_rotation_ms.unwrap_or(i64::MAX),
    ));
    match hub.registry.admit(&link) {
        Ok(superseded) => {
            if let Some(old) = superseded {
                old.close(GoodbyeReason::Superseded, None);
            }
        }
        Err(Refused::Full) => {
            hub.stats.refused_full.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::unavailable(
                "this server holds as many links as it may; come back after Retry-After",
                hub.config.restart_spread.max(Duration::from_secs(1)),
            ));
        }
        Err(Refused::Duplicate) => {
            hub.stats.refused_duplicate.fetch_add(1, Ordering::Relaxed);
            if state.budget.admit("machine.link_duplicate") {
                state
                    .db
                    .event(
                        "machine.link_duplicate",
                        &format!("machine {}", live.machine_id),
                        &format!("machine {}", live.machine_id),
                        &source,
                        &format!(
                            "a second link with the live key {} was refused",
                            live.key_version
                        ),
                    )
                    .await?;
            }
            return Err(ApiError::DuplicateLink);
        }
    }
    if live.promoted {
        let id = &live.machine_id;
        let _ = state
            .db
            .event(
                "machine.key_rotated",
                &format!("machine {id}"),
                &format!("machine {id}"),
                &source,
                &format!(
                    "machine key {} in use; the keys before it are retired",
                    live.key_version
                ),
            )
            .await;
    }
    let first_rotation = hub.next_rotation_ms();
    if live.next_rotation_ms.is_none() {
        link.set_rotate_due_ms(first_rotation);
    }
    // Written with the next batch (within a poll interval), so admitting a link costs one
    // read of the database and no write.
    hub.up(&link, first_rotation);
    hub.stats.upgrades.fetch_add(1, Ordering::Relaxed);
    tracing::info!(machine_id = %live.machine_id, key_version = %live.key_version, agent_version = %version, "link up");
    let failed = {
        let (hub, link) = (Arc::clone(&hub), Arc::clone(&link));
        move |_| hub.closed(&link)
    };
    let cfg = &hub.config;
    Ok(ws
        .read_buffer_size(cfg.read_buffer)
        .write_buffer_size(0)
        .max_write_buffer_size(link::MAX_MESSAGE + cfg.read_buffer)
        .max_message_size(link::MAX_MESSAGE)
        .max_frame_size(link::MAX_MESSAGE)
        .on_failed_upgrade(failed)
        .on_upgrade(move |socket| session::run(Arc::clone(&hub), link, socket))
        .into_response())
}
