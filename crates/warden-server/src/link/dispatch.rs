//! What an agent reports about dispatch on its link, stored: the actions its host offers the
//! fleet, and for its own part of a dispatch the acceptance, refusal, progress, output chunks
//! and end. Answers [`ServerMessage::OutputStored`] (the highest chunk stored with none
//! missing) and [`ServerMessage::EndStored`], which the link's task sends itself (they never
//! wait in the bounded outbox). A report about a dispatch this machine has no part in is
//! ignored. Holds no state of its own: per-link memory stays what it was. Never logs output
//! or parameters.

use std::sync::atomic::Ordering;

use warden_fleet_proto::link::{AgentMessage, ServerMessage};

use super::Hub;
use super::registry::Link;

/// Most actions one report may list.
pub const MAX_ACTIONS: usize = 1000;

/// Handles one agent message about dispatch; the answer to send, if any.
pub async fn handle(hub: &Hub, link: &Link, m: AgentMessage) -> Option<ServerMessage> {
    match store(hub, link, m).await {
        Ok(reply) => reply,
        Err(e) => {
            // Not acknowledged: the agent keeps the report and sends it again.
            tracing::warn!(machine_id = %link.machine_id, error = %e,
                "cannot store a dispatch report");
            None
        }
    }
}

async fn store(
    hub: &Hub,
    link: &Link,
    m: AgentMessage,
) -> Result<Option<ServerMessage>, crate::store::StoreError> {
    let db = &hub.db;
    let row = link.machine_row;
    let unknown = |what: &str, dispatch_id: &str| {
        hub.stats.unknown_messages.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(machine_id = %link.machine_id, dispatch_id, what,
            "a report about a dispatch this machine has no part in");
    };
    match m {
        AgentMessage::Actions { mut actions } => {
            actions.truncate(MAX_ACTIONS);
            db.set_machine_actions(row, &actions).await?;
        }
        AgentMessage::Accepted {
            dispatch_id,
            job_id,
        } => {
            if db.part_accepted(dispatch_id.as_str(), row, &job_id).await? {
                hub.dispatch_bell.notify_one();
            } else {
                unknown("accepted", dispatch_id.as_str());
            }
        }
        AgentMessage::Refused {
            dispatch_id,
            kind,
            message,
        } => {
            if db
                .part_refused(dispatch_id.as_str(), row, &kind, &message)
                .await?
            {
                hub.dispatch_bell.notify_one();
                let detail = format!("{kind}: {message}");
                if let Err(e) = db
                    .event(
                        "dispatch.refused",
                        &format!("machine {}", link.machine_id),
                        &format!("dispatch {dispatch_id}"),
                        "host",
                        &detail,
                    )
                    .await
                {
                    tracing::error!(error = %e, "cannot record an event");
                }
            }
        }
        AgentMessage::Progress {
            dispatch_id,
            state,
            percent,
            phase,
        } => {
            let p = serde_json::json!({"state": state, "percent": percent, "phase": phase});
            if !db.part_progress(dispatch_id.as_str(), row, &p).await? {
                unknown("progress", dispatch_id.as_str());
            }
        }
        AgentMessage::Output {
            dispatch_id,
            seq,
            offset,
            data,
        } => match db
            .part_output(dispatch_id.as_str(), row, seq, offset, &data)
            .await?
        {
            Some(stored) if stored.last_seq > 0 => {
                return Ok(Some(ServerMessage::OutputStored {
                    dispatch_id,
                    seq: stored.last_seq,
                }));
            }
            Some(_) => {}
            None => {
                // Nothing to keep it for: the agent may drop it.
                unknown("output", dispatch_id.as_str());
                return Ok(Some(ServerMessage::OutputStored { dispatch_id, seq }));
            }
        },
        AgentMessage::Ended {
            dispatch_id,
            state,
            exit_code,
            result,
            last_seq,
            output_truncated,
        } => {
            match db
                .part_ended(
                    dispatch_id.as_str(),
                    row,
                    &state,
                    exit_code,
                    result.as_ref(),
                    last_seq,
                    output_truncated,
                )
                .await?
            {
                Some(all_output) => {
                    hub.dispatch_bell.notify_one();
                    // With chunks still missing, the agent must keep (and send) them: the end is
                    // acknowledged when it comes again after them.
                    if all_output {
                        return Ok(Some(ServerMessage::EndStored { dispatch_id }));
                    }
                }
                None => {
                    unknown("ended", dispatch_id.as_str());
                    return Ok(Some(ServerMessage::EndStored { dispatch_id }));
                }
            }
        }
        // Handled by the link's task itself.
        AgentMessage::Heartbeat {}
        | AgentMessage::RotateKey {}
        | AgentMessage::KeyStored { .. } => {}
    }
    Ok(None)
}
