//! Rate limiting for log lines a peer can cause. Each uid may cause a few lines a second; the
//! rest are counted and the count is reported on that uid's next line, so a flood shows up in
//! the log as one line with a number instead of a million lines.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use tokio::time::Instant;
use warden_proto::Uid;

use crate::limits::TokenBucket;

/// Log lines per second one uid may cause, and its burst.
const LINES_PER_SECOND: f64 = 5.0;
const LINES_BURST: u32 = 20;
/// uids tracked before the table is cleared (a cleared table only forgets suppression counts).
const MAX_TRACKED: usize = 4096;

#[derive(Debug)]
struct Entry {
    bucket: TokenBucket,
    suppressed: u64,
}

/// Decides whether a peer-caused log line is written.
#[derive(Debug, Default)]
pub(crate) struct LogLimiter {
    uids: Mutex<HashMap<Uid, Entry>>,
}

impl LogLimiter {
    /// `Some(n)` if a line for `uid` may be written now, `n` being how many were suppressed
    /// since the last one; `None` if this line is suppressed.
    pub(crate) fn admit(&self, uid: Uid) -> Option<u64> {
        self.admit_at(uid, Instant::now())
    }

    fn admit_at(&self, uid: Uid, now: Instant) -> Option<u64> {
        let mut map = self.uids.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_TRACKED && !map.contains_key(&uid) {
            map.clear();
        }
        let e = map.entry(uid).or_insert_with(|| Entry {
            bucket: TokenBucket::new(LINES_PER_SECOND, LINES_BURST, now),
            suppressed: 0,
        });
        match e.bucket.try_take(now) {
            Ok(()) => Some(std::mem::take(&mut e.suppressed)),
            Err(_) => {
                e.suppressed += 1;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_the_burst_and_the_rest_is_counted() {
        let l = LogLimiter::default();
        let now = Instant::now();
        let written = (0..1000)
            .filter(|_| l.admit_at(Uid(5), now).is_some())
            .count();
        assert_eq!(written, LINES_BURST as usize);
        assert!(
            l.admit_at(Uid(6), now).is_some(),
            "another uid is not silenced"
        );
        let later = now + std::time::Duration::from_secs(1);
        assert_eq!(l.admit_at(Uid(5), later), Some(1000 - LINES_BURST as u64));
    }
}
