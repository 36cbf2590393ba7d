//! Limits that keep one caller from harming the others: token buckets for request rates, and
//! admission of connections against the total and per-uid caps, with a reserve of connections
//! beyond the total that only administrators may take.
//!
//! Refusals are answers (`busy`, `rate_limited` with a retry time), never silence. All clocks are
//! tokio's, so tests can pause time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use warden_proto::{Limits, Uid};

/// A token bucket: `burst` tokens, refilled at `rate` per second.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate: f64, burst: u32, now: Instant) -> Self {
        TokenBucket {
            rate,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// Takes one token, or says how long until one is available.
    pub(crate) fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        self.try_take_n(1.0, now)
    }

    /// Takes `n` tokens (at most the burst, so any cost can be paid once the bucket is full),
    /// or says how long until they are available.
    pub(crate) fn try_take_n(&mut self, n: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        let n = n.min(self.burst);
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((n - self.tokens) / self.rate))
        }
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Every connection a caller below admin may take is taken.
    Total {
        max: u32,
    },
    /// The reserve for administrators is taken too.
    Reserve {
        max: u32,
        reserve: u32,
    },
    PerUid {
        max: u32,
    },
}

/// Which connections a caller may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pool {
    /// Up to `max_connections`.
    Shared,
    /// Up to `max_connections + admin_reserve`: root and admin-tier callers only.
    WithReserve,
}

/// Per-uid state. Kept after the uid's last connection closes until its bucket is full again,
/// so reconnecting does not reset a flooder's rate.
#[derive(Debug)]
struct UidEntry {
    connections: u32,
    bucket: TokenBucket,
}

#[derive(Debug, Default)]
struct AdmissionState {
    total: u32,
    uids: HashMap<Uid, UidEntry>,
}

/// Connection counts and per-uid rate buckets, shared by every listener.
#[derive(Debug)]
pub(crate) struct Admission {
    limits: Limits,
    state: Mutex<AdmissionState>,
    /// Copy of `state.total` for `status`, readable without taking the lock every request needs.
    open: AtomicU32,
}

/// Entries kept for uids without connections before a sweep drops the idle ones.
const IDLE_UID_SWEEP: usize = 1024;

impl Admission {
    pub(crate) fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Admission {
            limits,
            state: Mutex::new(AdmissionState::default()),
            open: AtomicU32::new(0),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, AdmissionState> {
        // No code panics while holding this lock; if one ever did, the counts are still
        // consistent integers, so carrying on is safe.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a connection from `uid` out of `pool`, or says which cap refused it.
    pub(crate) fn admit(
        self: &Arc<Self>,
        uid: Uid,
        pool: Pool,
        now: Instant,
    ) -> Result<Slot, Refusal> {
        let limits = &self.limits;
        let mut st = self.state();
        match pool {
            Pool::Shared if st.total >= limits.max_connections => {
                return Err(Refusal::Total {
                    max: limits.max_connections,
                });
            }
            Pool::WithReserve
                if st.total >= limits.max_connections.saturating_add(limits.admin_reserve) =>
            {
                return Err(match limits.admin_reserve {
                    0 => Refusal::Total {
                        max: limits.max_connections,
                    },
                    reserve => Refusal::Reserve {
                        max: limits.max_connections,
                        reserve,
                    },
                });
            }
            _ => {}
        }
        let entry = st.uids.entry(uid).or_insert_with(|| UidEntry {
            connections: 0,
            bucket: TokenBucket::new(limits.uid_requests_per_second, limits.uid_burst, now),
        });
        if entry.connections >= limits.max_connections_per_uid {
            return Err(Refusal::PerUid {
                max: limits.max_connections_per_uid,
            });
        }
        entry.connections += 1;
        st.total += 1;
        self.open.store(st.total, Ordering::Relaxed);
        Ok(Slot {
            admission: Arc::clone(self),
            uid,
        })
    }

    /// Takes one request token from `uid`'s bucket.
    pub(crate) fn take_uid_token(&self, uid: Uid, now: Instant) -> Result<(), Duration> {
        match self.state().uids.get_mut(&uid) {
            Some(e) => e.bucket.try_take(now),
            // Only admitted connections make requests, and an admitted uid has an entry.
            None => Ok(()),
        }
    }

    pub(crate) fn open(&self) -> u32 {
        self.open.load(Ordering::Relaxed)
    }

    fn release(&self, uid: Uid) {
        let now = Instant::now();
        let mut st = self.state();
        st.total = st.total.saturating_sub(1);
        self.open.store(st.total, Ordering::Relaxed);
        if let Some(e) = st.uids.get_mut(&uid) {
            e.connections = e.connections.saturating_sub(1);
            if e.connections == 0 && e.bucket.is_full(now) {
                st.uids.remove(&uid);
            }
        }
        if st.uids.len() > IDLE_UID_SWEEP {
            st.uids
                .retain(|_, e| e.connections > 0 || !e.bucket.is_full(now));
        }
    }
}

/// An admitted connection's place; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Slot {
    admission: Arc<Admission>,
    uid: Uid,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.release(self.uid);
    }
}

/// Milliseconds to tell a caller to wait, never 0 (a 0 would invite an immediate retry).
pub(crate) fn retry_ms(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: u32, per_uid: u32) -> Limits {
        Limits {
            max_connections: total,
            max_connections_per_uid: per_uid,
            admin_reserve: 2,
            uid_requests_per_second: 10.0,
            uid_burst: 3,
            ..Limits::default()
        }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_its_rate() {
        let now = Instant::now();
        let mut b = TokenBucket::new(10.0, 2, now);
        assert!(b.try_take(now).is_ok());
        assert!(b.try_take(now).is_ok());
        let wait = b.try_take(now).unwrap_err();
        assert_eq!(retry_ms(wait), 100);
        assert!(b.try_take(now + Duration::from_millis(100)).is_ok());
        assert!(b.try_take(now + Duration::from_millis(100)).is_err());
    }

    impl Admission {
        fn admit_shared(self: &Arc<Self>, uid: Uid, now: Instant) -> Result<Slot, Refusal> {
            self.admit(uid, Pool::Shared, now)
        }
    }

    /// Pins: once callers below admin fill `max_connections`, an administrator still gets one
    /// of the `admin_reserve` connections, and only those.
    #[test]
    fn the_reserve_beyond_the_total_is_for_administrators_only() {
        let a = Admission::new(limits(2, 10));
        let now = Instant::now();
        let _s1 = a.admit_shared(Uid(1), now).unwrap();
        let _s2 = a.admit_shared(Uid(2), now).unwrap();
        assert_eq!(
            a.admit_shared(Uid(3), now).unwrap_err(),
            Refusal::Total { max: 2 }
        );
        let _r1 = a.admit(Uid(0), Pool::WithReserve, now).unwrap();
        let _r2 = a.admit(Uid(0), Pool::WithReserve, now).unwrap();
        assert_eq!(
            a.admit(Uid(0), Pool::WithReserve, now).unwrap_err(),
            Refusal::Reserve { max: 2, reserve: 2 }
        );
        assert_eq!(
            a.admit_shared(Uid(3), now).unwrap_err(),
            Refusal::Total { max: 2 }
        );
        assert_eq!(a.open(), 4);
    }

    #[test]
    fn admission_enforces_total_and_per_uid_caps_and_frees_on_drop() {
        let a = Admission::new(limits(3, 2));
        let now = Instant::now();
        let s1 = a.admit_shared(Uid(1), now).unwrap();
        let _s2 = a.admit_shared(Uid(1), now).unwrap();
        assert_eq!(
            a.admit_shared(Uid(1), now).unwrap_err(),
            Refusal::PerUid { max: 2 }
        );
        let _s3 = a.admit_shared(Uid(2), now).unwrap();
        assert_eq!(
            a.admit_shared(Uid(3), now).unwrap_err(),
            Refusal::Total { max: 3 }
        );
        drop(s1);
        assert_eq!(a.open(), 2);
        assert!(a.admit_shared(Uid(3), now).is_ok());
    }

    #[test]
    fn reconnecting_does_not_refill_a_uid_bucket() {
        let a = Admission::new(limits(10, 10));
        let now = Instant::now();
        let slot = a.admit_shared(Uid(7), now).unwrap();
        for _ in 0..3 {
            a.take_uid_token(Uid(7), now).unwrap();
        }
        assert!(a.take_uid_token(Uid(7), now).is_err());
        drop(slot);
        let _again = a.admit_shared(Uid(7), now).unwrap();
        assert!(a.take_uid_token(Uid(7), now).is_err());
        // Another uid has its own bucket.
        let _other = a.admit_shared(Uid(8), now).unwrap();
        assert!(a.take_uid_token(Uid(8), now).is_ok());
    }
}
