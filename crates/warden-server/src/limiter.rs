//! Failures per (key, source address): enrollments per site code and address, and per address
//! across site codes; logins per name and address, and per address across names; and a count
//! per name alone, which only slows logins down. Only failures are charged: a whole office
//! behind one NAT address enrolling its machines is never slowed down, while one that keeps
//! presenting wrong keys is locked out for a while. The table holds a bounded number of keys and
//! forgets the least recently charged first, so a flood of addresses cannot grow it.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures that lock a key out, by default.
pub const FAILURES: u32 = 20;
/// Failed enrollments from one address, whatever the site codes, that lock the address out.
pub const ADDRESS_FAILURES: u32 = 50;
/// How long a lockout lasts, and the window failures are counted in.
pub const LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// Keys the table keeps.
pub const MAX_KEYS: usize = 100_000;

type Key = (String, IpAddr);

#[derive(Debug)]
struct Entry {
    failures: u32,
    since: Instant,
    locked_until: Option<Instant>,
    /// Position in the eviction order.
    stamp: u64,
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<Key, Entry>,
    /// stamp → key, oldest first.
    order: BTreeMap<u64, Key>,
    next: u64,
}

/// The limiter.
#[derive(Debug)]
pub struct Limiter {
    table: Mutex<Table>,
    max_keys: usize,
    /// Failures in the window that lock a key out.
    threshold: u32,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter::with_capacity(MAX_KEYS)
    }
}

impl Limiter {
    pub fn with_capacity(max_keys: usize) -> Limiter {
        Limiter::new(FAILURES, max_keys)
    }

    /// A limiter that locks a key out at its `threshold`th failure in the window (`u32::MAX`:
    /// never, it only counts).
    pub fn new(threshold: u32, max_keys: usize) -> Limiter {
        Limiter {
            table: Mutex::new(Table::default()),
            max_keys,
            threshold,
        }
    }

    /// Failures charged to `site`/`addr` in the current window.
    pub fn failures(&self, site: &str, addr: IpAddr, now: Instant) -> u32 {
        let t = self.lock();
        t.entries
            .get(&(site.to_owned(), addr))
            .filter(|e| {
                now.duration_since(e.since) < LOCKOUT || e.locked_until.is_some_and(|u| u > now)
            })
            .map_or(0, |e| e.failures)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long `site`/`addr` must still wait, if it is locked out.
    pub fn locked(&self, site: &str, addr: IpAddr, now: Instant) -> Option<Duration> {
        let t = self.lock();
        t.entries
            .get(&(site.to_owned(), addr))
            .and_then(|e| e.locked_until)
            .and_then(|until| until.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    /// Charges one failure; returns the lockout if this one started it.
    pub fn fail(&self, site: &str, addr: IpAddr, now: Instant) -> Option<Duration> {
        let mut t = self.lock();
        let key = (site.to_owned(), addr);
        let stamp = t.next;
        t.next += 1;
        let entry = match t.entries.remove(&key) {
            Some(mut e) => {
                t.order.remove(&e.stamp);
                let expired = now.duration_since(e.since) >= LOCKOUT
                    && e.locked_until.is_none_or(|u| u <= now);
                if expired {
                    e.failures = 0;
                    e.since = now;
                    e.locked_until = None;
                }
                e.stamp = stamp;
                e
            }
            None => Entry {
                failures: 0,
                since: now,
                locked_until: None,
                stamp,
            },
        };
        let mut entry = entry;
        entry.failures = entry.failures.saturating_add(1);
        let locked = if entry.failures >= self.threshold && entry.locked_until.is_none() {
            entry.locked_until = Some(now + LOCKOUT);
            Some(LOCKOUT)
        } else {
            None
        };
        t.order.insert(stamp, key.clone());
        t.entries.insert(key, entry);
        while t.entries.len() > self.max_keys {
            let Some((_, oldest)) = t.order.pop_first() else {
                break;
            };
            t.entries.remove(&oldest);
        }
        locked
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: the 20th failure locks the pair out for 15 minutes, other pairs are untouched, and
    /// the lockout ends when its time is up.
    #[test]
    fn twenty_failures_lock_out_one_pair_for_fifteen_minutes() {
        let l = Limiter::default();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..19 {
            assert_eq!(l.fail("hq", a, t0), None);
        }
        assert_eq!(l.locked("hq", a, t0), None);
        assert_eq!(l.fail("hq", a, t0), Some(LOCKOUT));
        assert_eq!(l.locked("hq", a, t0), Some(LOCKOUT));
        assert_eq!(l.locked("hq", b, t0), None);
        assert_eq!(l.locked("branch", a, t0), None);
        assert_eq!(l.locked("hq", a, t0 + LOCKOUT), None);
    }

    /// Pins: a counting limiter (threshold `u32::MAX`) never locks out, and counts failures in
    /// the window only.
    #[test]
    fn a_counting_limiter_counts_and_never_locks() {
        let l = Limiter::new(u32::MAX, 10);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..100 {
            assert_eq!(l.fail("login:root", a, t0), None);
        }
        assert_eq!(l.locked("login:root", a, t0), None);
        assert_eq!(l.failures("login:root", a, t0), 100);
        assert_eq!(l.failures("login:root", a, t0 + LOCKOUT), 0);
        assert_eq!(l.failures("login:other", a, t0), 0);
    }

    /// Pins: the table never holds more than its 100,000 keys whatever the flood of addresses;
    /// the least recently charged go first.
    #[test]
    fn the_table_is_bounded_and_forgets_the_oldest() {
        let l = Limiter::default();
        let t0 = Instant::now();
        let first: IpAddr = "198.51.100.1".parse().unwrap();
        for _ in 0..FAILURES {
            l.fail("hq", first, t0);
        }
        for i in 0..(MAX_KEYS as u32 + 5000) {
            let addr = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            l.fail("hq", addr, t0);
        }
        assert_eq!(l.len(), MAX_KEYS);
        assert_eq!(
            l.locked("hq", first, t0),
            None,
            "the oldest key was evicted"
        );
    }
}
