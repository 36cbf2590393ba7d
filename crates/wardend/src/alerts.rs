//! Alerts: things an administrator should look at now (a flood of denials or protocol
//! violations from one uid, a connection closed for them, a lockdown, an ops switch, a broken
//! audit chain), in a bounded ring
//! that `alerts.list` reads. A flood raises one alert per source and minute, not one per event.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use warden_proto::messages::Alert;

use crate::events::Bus;

/// Alerts kept; older ones make room.
const RING: usize = 256;
/// One alert per source within this time.
const QUIET: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub(crate) struct Alerts {
    state: Mutex<State>,
    bus: Bus,
}

#[derive(Debug, Default)]
struct State {
    ring: VecDeque<Alert>,
    next_id: u64,
    /// When each throttled source last raised one.
    last: HashMap<String, Instant>,
    /// Protocol violations per uid in the current minute: (minute began, count).
    violations: HashMap<u32, (Instant, u32)>,
}

/// Protocol violations from one uid within a minute that raise an alert.
const VIOLATIONS: u32 = 10;

impl Alerts {
    /// Alerts published on `bus` too (topic `alert`).
    pub(crate) fn new(bus: Bus) -> Alerts {
        Alerts {
            state: Mutex::default(),
            bus,
        }
    }

    /// Raises an alert of `kind`.
    pub(crate) fn raise(&self, kind: &str, message: String, uid: Option<u32>) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.next_id += 1;
        let alert = Alert {
            id: st.next_id,
            ts: crate::clock::now_rfc3339(),
            kind: kind.to_owned(),
            message,
            uid,
        };
        // One line whatever the message holds (an admin's reason is free text).
        let line = crate::logs::cut_escaped(&alert.message, crate::logs::MESSAGE_MAX);
        tracing::warn!(kind = %alert.kind, uid = ?alert.uid, "alert: {line}");
        if st.ring.len() == RING {
            st.ring.pop_front();
        }
        if self.bus.listened() {
            self.bus.publish(
                "alert",
                None,
                serde_json::to_value(&alert).unwrap_or_default(),
            );
        }
        st.ring.push_back(alert);
    }

    /// Raises an alert unless `source` raised one within the last minute.
    pub(crate) fn raise_once_a_minute(
        &self,
        source: &str,
        kind: &str,
        message: String,
        uid: Option<u32>,
    ) {
        let now = Instant::now();
        {
            let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if st
                .last
                .get(source)
                .is_some_and(|t| now.duration_since(*t) < QUIET)
            {
                return;
            }
            st.last.retain(|_, t| now.duration_since(*t) < QUIET);
            st.last.insert(source.to_owned(), now);
        }
        self.raise(kind, message, uid);
    }

    /// Counts a protocol violation (a bad frame, a timeout, a missing hello, invalid JSON-RPC)
    /// by `uid`; the VIOLATIONS-th within a minute raises one `protocol_violations` alert.
    pub(crate) fn violation(&self, uid: u32) {
        let now = Instant::now();
        let count = {
            let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let w = st.violations.entry(uid).or_insert((now, 0));
            if now.duration_since(w.0) >= QUIET {
                *w = (now, 0);
            }
            w.1 += 1;
            let count = w.1;
            if st.violations.len() > 4096 {
                st.violations.retain(|_, w| now.duration_since(w.0) < QUIET);
            }
            count
        };
        if count == VIOLATIONS {
            self.raise_once_a_minute(
                &format!("violations of uid {uid}"),
                "protocol_violations",
                format!("uid {uid} broke the protocol {VIOLATIONS} times within a minute"),
                Some(uid),
            );
        }
    }

    /// The newest `limit`, oldest first.
    pub(crate) fn list(&self, limit: usize) -> Vec<Alert> {
        let st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let skip = st.ring.len().saturating_sub(limit);
        st.ring.iter().skip(skip).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: the ring keeps the newest RING alerts, and a throttled source raises once a minute.
    #[test]
    fn alerts_are_bounded_and_floods_raise_one() {
        let a = Alerts::default();
        for i in 0..(RING + 10) {
            a.raise("test", format!("alert {i}"), None);
        }
        let all = a.list(usize::MAX);
        assert_eq!(all.len(), RING);
        assert_eq!(all.last().unwrap().message, format!("alert {}", RING + 9));
        assert_eq!(a.list(2).len(), 2);
        let b = Alerts::default();
        for _ in 0..50 {
            b.raise_once_a_minute("uid 1000", "denial_flood", "flood".into(), Some(1000));
        }
        b.raise_once_a_minute("uid 1001", "denial_flood", "flood".into(), Some(1001));
        assert_eq!(b.list(100).len(), 2);
        let c = Alerts::default();
        for _ in 0..(VIOLATIONS * 5) {
            c.violation(1000);
        }
        let raised = c.list(100);
        assert_eq!(raised.len(), 1, "{raised:?}");
        assert_eq!(raised[0].kind, "protocol_violations");
    }
}
