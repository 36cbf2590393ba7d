//! One hashed timer wheel for every link's heartbeat, liveness and rotation checks: a ring of
//! slots a single task advances one tick at a time. A link sits in exactly one slot (as a weak
//! reference, so a closed link costs nothing once its slot comes round); no link owns a timer
//! or a task for its timing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::registry::Link;

#[derive(Debug)]
pub struct Wheel {
    tick: Duration,
    slots: Vec<Mutex<Vec<Weak<Link>>>>,
    /// The slot the last advance took.
    cursor: AtomicUsize,
}

impl Wheel {
    /// A wheel of `tick` slots long enough to schedule anything up to `horizon` ahead.
    pub fn new(tick: Duration, horizon: Duration) -> Wheel {
        let tick = tick.max(Duration::from_millis(1));
        let n = usize::try_from(horizon.as_millis() / tick.as_millis().max(1))
            .unwrap_or(1)
            .saturating_add(2);
        Wheel {
            tick,
            slots: (0..n).map(|_| Mutex::new(Vec::new())).collect(),
            cursor: AtomicUsize::new(0),
        }
    }

    pub fn tick(&self) -> Duration {
        self.tick
    }

    /// Puts `link` in the slot `after` from now (at least the next tick, at most the horizon).
    pub fn schedule(&self, link: &Arc<Link>, after: Duration) {
        let len = self.slots.len();
        let ticks = usize::try_from(after.as_millis().div_ceil(self.tick.as_millis().max(1)))
            .unwrap_or(len)
            .clamp(1, len - 1);
        let slot = (self.cursor.load(Ordering::Acquire) + ticks) % len;
        self.slots[slot]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(link));
    }

    /// Moves one tick on and hands back the links whose slot it reached.
    pub fn advance(&self) -> Vec<Weak<Link>> {
        let len = self.slots.len();
        let next = (self.cursor.load(Ordering::Acquire) + 1) % len;
        self.cursor.store(next, Ordering::Release);
        let mut slot = self.slots[next].lock().unwrap_or_else(|p| p.into_inner());
        let due = std::mem::take(&mut *slot);
        // Keep a slot's buffer only if it is busy; an idle fleet's wheel holds next to nothing.
        if slot.capacity() == 0 && due.capacity() > 64 {
            slot.reserve(due.len());
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_fleet_proto::KeyVersion;

    /// Pins: a link comes round after as many ticks as asked (at least one), and a dropped
    /// link is only a dead weak reference.
    #[test]
    fn links_come_round_after_their_delay() {
        let w = Wheel::new(Duration::from_millis(10), Duration::from_millis(100));
        let id = format!("muid_{}", "b".repeat(64)).parse().unwrap();
        let l = Arc::new(Link::new(1, 1, id, 1, KeyVersion(1), "t".into(), 0, 0, 0));
        w.schedule(&l, Duration::from_millis(35));
        let mut when = None;
        for i in 1..=20 {
            if !w.advance().is_empty() {
                when = Some(i);
                break;
            }
        }
        assert_eq!(when, Some(4));
        w.schedule(&l, Duration::ZERO);
        drop(l);
        let due = w.advance();
        assert_eq!(due.len(), 1);
        assert!(due[0].upgrade().is_none());
    }
}
