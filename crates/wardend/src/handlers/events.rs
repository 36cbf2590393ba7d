//! `events.subscribe`: streams the bus's events of the topics asked for as `event`
//! notifications until the connection closes. Which topics a caller may ask for is the gate's
//! decision; here a caller below operator sees only its own jobs' events, as with `job.list`.

use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use warden_proto::jobs::notification;
use warden_proto::request::SubscribeParams;
use warden_proto::{ErrorKind, Tier};

use super::Reply;
use super::jobs::send;
use crate::call::{Caller, Failure, Outbound};
use crate::events::TOPICS;
use crate::state::Shared;

pub(super) async fn subscribe(
    shared: &Shared,
    caller: &Caller,
    p: SubscribeParams,
    out: &Outbound,
) -> Result<Reply<'static>, Failure> {
    if let Some(bad) = p.topics.iter().find(|t| !TOPICS.contains(&t.as_str())) {
        return Err(Failure::new(
            ErrorKind::BadRequest,
            format!(
                "no topic `{}`; topics are {}",
                crate::logs::peer_text(bad),
                TOPICS.join(", ")
            ),
        ));
    }
    let all_jobs = shared
        .policy()
        .effective(&caller.peer, &caller.listener)
        .tier
        >= Tier::Operator;
    let uid = caller.peer.uid.0;
    // Subscribed before saying so: nothing published after the first notification is missed.
    let mut rx = shared.bus.subscribe();
    send(
        out,
        notification::EVENT,
        &json!({ "topic": "subscribed", "event": { "topics": p.topics } }),
    )
    .await?;
    loop {
        match rx.recv().await {
            Ok(ev) => {
                if !p.topics.iter().any(|t| t == ev.topic) {
                    continue;
                }
                if matches!(ev.topic, "job" | "resource") && !all_jobs && ev.owner != Some(uid) {
                    continue;
                }
                send(
                    out,
                    notification::EVENT,
                    &json!({ "topic": ev.topic, "event": &ev.payload }),
                )
                .await?;
            }
            Err(RecvError::Lagged(dropped)) => {
                send(out, notification::LAGGED, &json!({ "dropped": dropped })).await?;
            }
            Err(RecvError::Closed) => {
                return Err(Failure::new(
                    ErrorKind::Unavailable,
                    "the daemon is shutting down",
                ));
            }
        }
    }
}
