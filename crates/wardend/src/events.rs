//! The event bus behind `events.subscribe`: job state changes, ops and lockdown changes, alerts
//! and audit records, each published once into one bounded ring (a broadcast channel) that
//! every subscriber reads at its own pace. A subscriber that falls more than the ring behind
//! loses the oldest events and is told how many; the daemon's memory does not grow with it.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast;

/// Events the ring holds; a subscriber further behind than this loses the oldest.
pub(crate) const RING: usize = 1024;

/// The topics a subscriber may ask for.
pub(crate) const TOPICS: [&str; 6] = ["job", "resource", "ops", "lockdown", "alert", "audit"];

/// One event.
#[derive(Debug)]
pub(crate) struct Event {
    pub topic: &'static str,
    /// For job and resource events: the requester or owner (others see it only as operators or
    /// admins).
    pub owner: Option<u32>,
    pub payload: Value,
}

/// The publishing side, shared by everything that publishes.
#[derive(Debug, Clone)]
pub(crate) struct Bus {
    tx: broadcast::Sender<Arc<Event>>,
}

impl Default for Bus {
    fn default() -> Self {
        Bus {
            tx: broadcast::channel(RING).0,
        }
    }
}

impl Bus {
    /// Whether anyone listens (so publishers can skip building an event nobody reads).
    pub(crate) fn listened(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    pub(crate) fn publish(&self, topic: &'static str, owner: Option<u32>, payload: Value) {
        if self.listened() {
            let _ = self.tx.send(Arc::new(Event {
                topic,
                owner,
                payload,
            }));
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }
}
