//! How many refusals the audit trail records one by one. A flood of rejected enrollments or
//! failed logins must not grow the `events` table at the flood's own rate: each kind of refusal
//! gets a number of rows per window, and past that its refusals are only counted, then written
//! as one `events.suppressed` row per kind when the window closes (and at stop).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::store::Db;

/// Rows of one kind of refusal written one by one per window.
pub const PER_WINDOW: u32 = 20;
/// The window, by default.
pub const WINDOW: Duration = Duration::from_secs(60);
/// The kind of the summary row.
pub const SUPPRESSED: &str = "events.suppressed";

#[derive(Debug, Default)]
struct Counts {
    written: u32,
    suppressed: u64,
}

/// The per-kind budget of the current window.
#[derive(Debug)]
pub struct EventBudget {
    counts: Mutex<BTreeMap<&'static str, Counts>>,
    per_window: u32,
    pub window: Duration,
}

impl EventBudget {
    pub fn new(per_window: u32, window: Duration) -> EventBudget {
        EventBudget {
            counts: Mutex::new(BTreeMap::new()),
            per_window,
            window,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Counts>> {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether one more refusal of `kind` is written as its own row; if not, it is counted.
    pub fn admit(&self, kind: &'static str) -> bool {
        let mut counts = self.lock();
        let c = counts.entry(kind).or_default();
        if c.written < self.per_window {
            c.written += 1;
            true
        } else {
            c.suppressed += 1;
            false
        }
    }

    /// Closes the window: what was counted and not written, per kind, and a fresh budget.
    pub fn close_window(&self) -> Vec<(&'static str, u64)> {
        std::mem::take(&mut *self.lock())
            .into_iter()
            .filter(|(_, c)| c.suppressed > 0)
            .map(|(kind, c)| (kind, c.suppressed))
            .collect()
    }

    /// Closes the window and writes one summary row per kind that had refusals counted only.
    pub async fn flush(&self, db: &Db) {
        for (kind, n) in self.close_window() {
            let detail = format!(
                "{n} more {kind} in this window (up to {} s), not recorded one by one",
                self.window.as_secs()
            );
            if let Err(e) = db.event(SUPPRESSED, "server", kind, "", &detail).await {
                tracing::error!(error = %e, "cannot record an event");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: each kind gets its own rows per window; the rest are counted, handed over once when
    /// the window closes, and the next window starts afresh.
    #[test]
    fn past_the_budget_refusals_are_counted_not_written() {
        let b = EventBudget::new(3, WINDOW);
        let admitted = (0..10).filter(|_| b.admit("enroll.rejected")).count();
        assert_eq!(admitted, 3);
        assert!(b.admit("login.failure"));
        assert_eq!(b.close_window(), vec![("enroll.rejected", 7)]);
        assert_eq!(b.close_window(), vec![]);
        assert!(b.admit("enroll.rejected"));
    }
}
