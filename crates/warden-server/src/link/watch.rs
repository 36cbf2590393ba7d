//! The link's background work, in two tasks for the whole process: the wheel's ticks (pure
//! memory work, never waiting on the database), and the database side: polling revocations so
//! that a revoked, removed, banned or quarantined machine's live link closes within a second
//! whichever process or command revoked it, and writing links come up and gone down (within a
//! poll interval) and `last_seen` (every flush interval) in batches.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;
use warden_fleet_proto::link::GoodbyeReason;

use super::Hub;
use crate::store::links::Standing;
use crate::store::now_ms;

/// How far back each poll looks: long enough for a commit that took a lower sequence number
/// to become visible late (PostgreSQL), short enough to stay cheap.
const LOOK_BACK_MS: i64 = 10_000;
/// Revocation rows older than this are deleted.
const KEEP_MS: i64 = 3_600_000;

/// Starts both tasks; they stop when the hub is dropped by everyone else (or when aborted).
pub fn spawn(hub: &Arc<Hub>) -> (tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>) {
    let weak = Arc::downgrade(hub);
    let tick = hub.wheel.tick();
    let wheel = tokio::spawn(async move {
        let mut interval = tokio::time::interval(tick);
        // A late tick still advances the wheel slot by slot, so no deadline is skipped.
        interval.set_missed_tick_behavior(MissedTickBehavior::Burst);
        loop {
            interval.tick().await;
            let Some(hub) = weak.upgrade() else { return };
            hub.sweep();
        }
    });
    let weak = Arc::downgrade(hub);
    let (poll, flush_every) = (hub.config.poll, hub.config.seen_flush);
    let db = tokio::spawn(async move {
        let mut seen: HashMap<i64, Instant> = HashMap::new();
        let mut last_flush = Instant::now();
        let mut last_prune = Instant::now();
        loop {
            tokio::time::sleep(poll).await;
            let Some(hub) = weak.upgrade() else { return };
            revocations(&hub, &mut seen).await;
            let all = last_flush.elapsed() >= flush_every;
            if all {
                last_flush = Instant::now();
            }
            flush(&hub, all).await;
            if last_prune.elapsed() >= Duration::from_secs(600) {
                last_prune = Instant::now();
                if let Err(e) = hub.db.prune_revocations(now_ms() - KEEP_MS).await {
                    tracing::warn!(error = %e, "cannot prune old revocations");
                }
            }
        }
    });
    (wheel, db)
}

/// Closes the live links whose machine had a revocation since the last poll and whose key no
/// longer stands.
async fn revocations(hub: &Hub, seen: &mut HashMap<i64, Instant>) {
    let rows = match hub.db.revocations_since(now_ms() - LOOK_BACK_MS).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot poll revocations");
            return;
        }
    };
    seen.retain(|_, at| at.elapsed() < Duration::from_millis(2 * LOOK_BACK_MS as u64));
    for (seq, machine_row) in rows {
        if seen.insert(seq, Instant::now()).is_some() {
            continue;
        }
        let Some(link) = hub.registry.get(machine_row) else {
            continue;
        };
        let reason = match hub.db.standing(link.key_id).await {
            Ok(Standing::Stands) => continue,
            Ok(Standing::Revoked) => GoodbyeReason::Revoked,
            Ok(Standing::Retired) => GoodbyeReason::Superseded,
            Ok(Standing::Banned) => GoodbyeReason::Banned,
            Ok(Standing::Quarantined) => GoodbyeReason::Quarantined,
            Err(e) => {
                tracing::warn!(error = %e, "cannot check a revoked machine's key");
                // Seen again at the next poll.
                seen.remove(&seq);
                continue;
            }
        };
        tracing::info!(machine_id = %link.machine_id, ?reason, "closing a revoked machine's link");
        link.close(reason, None);
    }
}

/// Writes links come up and gone down and, when `all_seen`, every live link's `last_seen`, in
/// one batch.
pub async fn flush(hub: &Hub, all_seen: bool) {
    let seen: Vec<(i64, i64)> = if all_seen {
        hub.registry
            .all()
            .iter()
            .map(|l| (l.machine_row, hub.unix_ms(l.last_recv())))
            .collect()
    } else {
        Vec::new()
    };
    // Ups before downs: a link that came up and went down since the last batch ends down.
    let ups = hub.take_ups();
    let down = hub.take_down();
    if let Err(e) = hub.db.link_batch(&seen, &ups, &down).await {
        tracing::warn!(error = %e, "cannot write the link batch");
    }
}
