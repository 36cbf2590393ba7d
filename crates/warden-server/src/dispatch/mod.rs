//! Remote dispatch's fan-out engine: one task for the whole process that drives every open
//! dispatch from the database. Per dispatch it keeps at most `batch` parts in flight (`sent`
//! or `running`), starts the first `canary` hosts alone and the rest only once all of them
//! succeeded, stops starting hosts once failures pass `max_failures` (or a canary fails), marks
//! a host whose turn comes while it has no link `offline` (it gets the dispatch when it links,
//! while the dispatch is open, and ends `offline` after `offline_wait`), sends what a machine
//! is owed when it links again or when it left one unanswered for `resend_after` (a Dispatch
//! not yet answered, a Cancel), and ends the dispatch
//! when no part is left to wait for. The database is the truth, so a restarted server simply
//! goes on.
//!
//! Secret parameter values are kept only in this process's memory (the database holds them
//! redacted): a dispatch with secret parameters whose server restarted before every part was
//! sent stops starting hosts (`not_started: secret parameters are not kept across a restart`).
//! It never sends a redacted value as a parameter, and never logs a parameter.

pub mod target;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use warden_fleet_proto::DispatchId;
use warden_fleet_proto::link::ServerMessage;

use crate::link::Hub;
use crate::store::dispatch::{FAILURES, OpenDispatch, Part};
use crate::store::{Db, StoreError, now_ms};

/// How dispatch behaves; tests shorten it.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// How often the engine looks at open dispatches when nothing rang its bell.
    pub tick: Duration,
    /// How long a host whose turn came while it had no link may still link and run it.
    pub offline_wait: Duration,
    /// The name this server gives itself in the fleet origin (`fleet:<operator>@<server>`).
    pub server_name: String,
    /// A Dispatch (or Cancel) not answered this long on a live link is sent again (the agent
    /// answers one it already took with what it knows).
    pub resend_after: Duration,
}

impl Default for DispatchConfig {
    fn default() -> DispatchConfig {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "warden-server".to_owned());
        DispatchConfig {
            tick: Duration::from_millis(250),
            offline_wait: Duration::from_secs(15 * 60),
            server_name: host,
            resend_after: Duration::from_secs(60),
        }
    }
}

/// Why new hosts stopped being started.
pub const STOP_MAX_FAILURES: &str = "max_failures passed";
pub const STOP_CANARY: &str = "canary failed";
pub const STOP_SECRETS: &str = "secret parameters are not kept across a server restart";

/// The engine.
#[derive(Debug)]
pub struct Engine {
    hub: Arc<Hub>,
    db: Db,
    pub config: DispatchConfig,
    /// The full parameters of open dispatches that have secret ones, by dispatch id.
    secrets: Mutex<HashMap<String, serde_json::Map<String, serde_json::Value>>>,
    /// Machines owed their unanswered Dispatches and Cancels (they linked again, or their
    /// outbox was full).
    owed: Mutex<HashSet<i64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    pub fn new(hub: Arc<Hub>, db: Db, config: DispatchConfig) -> Arc<Engine> {
        Arc::new(Engine {
            hub,
            db,
            config,
            secrets: Mutex::new(HashMap::new()),
            owed: Mutex::new(HashSet::new()),
        })
    }

    /// Starts the engine's task (it stops when aborted or when the engine is dropped).
    pub fn spawn(self: &Arc<Engine>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let tick = self.config.tick;
        let bell = Arc::clone(&self.hub);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = bell.dispatch_bell.notified() => {}
                    () = tokio::time::sleep(tick) => {}
                }
                let Some(engine) = weak.upgrade() else { return };
                if let Err(e) = engine.drive().await {
                    tracing::warn!(error = %e, "dispatch engine: trying again at the next tick");
                }
            }
        })
    }

    /// Remembers a new dispatch's full parameters (only when some are secret) and wakes the
    /// engine.
    pub fn created(
        &self,
        dispatch_id: &str,
        secret_params: Option<serde_json::Map<String, serde_json::Value>>,
    ) {
        if let Some(p) = secret_params {
            lock(&self.secrets).insert(dispatch_id.to_owned(), p);
        }
        self.hub.dispatch_bell.notify_one();
    }

    /// Cancels a dispatch: parts not started end now, started ones get a Cancel.
    pub async fn cancel(
        &self,
        dispatch_id: &str,
    ) -> Result<crate::store::dispatch::Cancelled, StoreError> {
        let (_, cancelled) = self.db.request_cancel(dispatch_id).await?;
        lock(&self.owed).extend(cancelled.asked.iter().copied());
        self.hub.dispatch_bell.notify_one();
        Ok(cancelled)
    }

    /// One pass: what relinked machines are owed, then every open dispatch.
    pub async fn drive(&self) -> Result<(), StoreError> {
        {
            let linked = self.hub.take_relinked();
            lock(&self.owed).extend(linked);
        }
        self.pay_owed().await?;
        for d in self.db.open_dispatches().await? {
            self.step(&d).await?;
        }
        Ok(())
    }

    /// The parameters to send for `d`, or `None` when its secret ones are not known here.
    fn params(&self, d: &OpenDispatch) -> Option<serde_json::Map<String, serde_json::Value>> {
        if d.has_secrets {
            lock(&self.secrets).get(&d.dispatch_id).cloned()
        } else {
            Some(d.params.clone())
        }
    }

    fn dispatch_message(&self, d: &OpenDispatch) -> Option<ServerMessage> {
        let dispatch_id: DispatchId = d.dispatch_id.parse().ok()?;
        Some(ServerMessage::Dispatch {
            dispatch_id,
            action: d.action.clone(),
            params: self.params(d)?,
            operator: d.operator.clone(),
            server: self.config.server_name.clone(),
        })
    }

    /// Sends each owed machine (that is linked) its unanswered Dispatches and its Cancels; a
    /// machine whose outbox is full stays owed.
    async fn pay_owed(&self) -> Result<(), StoreError> {
        let rows: Vec<i64> = lock(&self.owed).drain().collect();
        for (i, &row) in rows.iter().enumerate() {
            let Some(link) = self.hub.registry.get(row) else {
                continue;
            };
            let owed = match self.db.owed(row).await {
                Ok(o) => o,
                Err(e) => {
                    // Still owed, this machine and the ones not looked at yet.
                    lock(&self.owed).extend(&rows[i..]);
                    return Err(e);
                }
            };
            let mut ok = true;
            for o in owed {
                let m = if o.cancel_requested {
                    o.dispatch
                        .dispatch_id
                        .parse()
                        .ok()
                        .map(|dispatch_id| ServerMessage::Cancel { dispatch_id })
                } else {
                    self.dispatch_message(&o.dispatch)
                };
                if let Some(m) = m {
                    ok &= link.send(m);
                }
            }
            if !ok {
                lock(&self.owed).insert(row);
            }
        }
        Ok(())
    }

    /// Drives one dispatch a step.
    async fn step(&self, d: &OpenDispatch) -> Result<(), StoreError> {
        let mut parts = self.db.parts(d.id).await?;
        let waiting = |p: &Part| p.state == "queued" || p.state == "offline";
        let wait_ms = i64::try_from(self.config.offline_wait.as_millis()).unwrap_or(i64::MAX);
        let now = now_ms();
        let expired = |p: &Part| p.state == "offline" && now - p.updated_ms >= wait_ms;
        if !d.cancel_requested {
            let failures = parts
                .iter()
                .filter(|p| FAILURES.contains(&p.state.as_str()))
                .count() as i64;
            let canary = usize::try_from(d.canary).unwrap_or(0).min(parts.len());
            let canary_failed = parts[..canary].iter().any(|p| {
                FAILURES.contains(&p.state.as_str()) || p.state == "cancelled" || expired(p)
            });
            let stop = if d.max_failures.is_some_and(|m| failures > m) {
                Some(STOP_MAX_FAILURES)
            } else if canary_failed {
                Some(STOP_CANARY)
            } else if d.has_secrets && self.params(d).is_none() && parts.iter().any(waiting) {
                Some(STOP_SECRETS)
            } else {
                None
            };
            if let Some(why) = stop {
                if parts.iter().any(waiting) {
                    let n = self.db.stop_dispatch(d.id, why).await?;
                    tracing::info!(dispatch_id = %d.dispatch_id, not_started = n, why,
                        "dispatch stops starting hosts");
                    parts = self.db.parts(d.id).await?;
                }
            } else {
                self.start(d, &parts, canary).await?;
                parts = self.db.parts(d.id).await?;
            }
        }
        // Unanswered for too long on a live link: owed again.
        let resend_ms = i64::try_from(self.config.resend_after.as_millis()).unwrap_or(i64::MAX);
        for p in &parts {
            let waiting_answer = p.state == "sent" || (p.state == "running" && p.cancel_requested);
            if waiting_answer
                && now - p.updated_ms >= resend_ms
                && self.hub.registry.contains(p.machine_row)
                && self.db.part_touched(p.id).await?
            {
                lock(&self.owed).insert(p.machine_row);
                self.hub.dispatch_bell.notify_one();
            }
        }
        let open = parts.iter().any(|p| {
            matches!(p.state.as_str(), "queued" | "sent" | "running")
                || (p.state == "offline" && !expired(p))
        });
        if !open {
            let state = if d.cancel_requested {
                "cancelled"
            } else {
                "done"
            };
            self.db.finish_dispatch(d.id, state).await?;
            lock(&self.secrets).remove(&d.dispatch_id);
            tracing::info!(dispatch_id = %d.dispatch_id, state, "dispatch ended");
        }
        Ok(())
    }

    /// Starts waiting parts while fewer than `batch` are in flight: the canaries first, the
    /// rest once every canary succeeded. A host without a link is marked `offline` and takes
    /// no slot.
    async fn start(
        &self,
        d: &OpenDispatch,
        parts: &[Part],
        canary: usize,
    ) -> Result<(), StoreError> {
        let canaries_ok = parts[..canary].iter().all(|p| p.state == "succeeded");
        let mut active = parts
            .iter()
            .filter(|p| p.state == "sent" || p.state == "running")
            .count() as i64;
        let mut sending = Vec::new();
        let mut offline = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            if active >= d.batch {
                break;
            }
            if !(p.state == "queued" || p.state == "offline") || (i >= canary && !canaries_ok) {
                continue;
            }
            match self.hub.registry.get(p.machine_row) {
                Some(link) => {
                    active += 1;
                    sending.push((p, link));
                }
                None if p.state == "queued" => offline.push(p.id),
                None => {}
            }
        }
        if sending.is_empty() && offline.is_empty() {
            return Ok(());
        }
        // Never marked sent without a message to send (secret values unknown here).
        let Some(m) = self.dispatch_message(d) else {
            return Ok(());
        };
        let ids: Vec<i64> = sending.iter().map(|(p, _)| p.id).collect();
        let sent: HashSet<i64> = self
            .db
            .parts_started(&ids, &offline)
            .await?
            .into_iter()
            .collect();
        for (p, link) in sending {
            if sent.contains(&p.id) && !link.send(m.clone()) {
                // Sent from the owed list once the link's outbox has room.
                lock(&self.owed).insert(p.machine_row);
            }
        }
        Ok(())
    }
}
