//! The agent's waiting rules, as pure functions of the attempt number and a random draw: how
//! long to wait after each enrollment outcome and before each link attempt, and how far apart
//! heartbeats go. It owns the schedule math only: no clock, no sleeping, no randomness of its
//! own (the caller passes `r`, any `u64`; [`draw`] gives a fresh one), so every rule is
//! unit-tested with chosen draws.

use std::time::Duration;

/// A fresh random draw for the functions below.
pub fn draw() -> u64 {
    let mut b = [0u8; 8];
    // The OS random source failing leaves zeros: the shortest wait of each rule, still bounded.
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

/// Uniform in `0..=max`, from the draw `r`.
fn uniform(max: Duration, r: u64) -> Duration {
    let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(match max_ms.checked_add(1) {
        Some(span) => r % span,
        None => r,
    })
}

/// `base · 2^attempt`, at most `cap`.
fn doubled(base: Duration, cap: Duration, attempt: u32) -> Duration {
    base.checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(cap)
        .min(cap)
}

/// Exponential backoff with full jitter (network errors, 5xx, dropped links): uniform in
/// `0..=min(cap, base · 2^attempt)`.
pub fn full_jitter(base: Duration, cap: Duration, attempt: u32, r: u64) -> Duration {
    uniform(doubled(base, cap, attempt), r)
}

/// A rejection (401/403, a quarantined machine): `base · 2^attempt` plus up to 20% more, never
/// past `cap` (5 minutes growing to 6 hours by default). The floor is the full step, so a
/// rejected host never knocks sooner than the schedule says.
pub fn rejected(base: Duration, cap: Duration, attempt: u32, r: u64) -> Duration {
    let step = doubled(base, cap, attempt);
    (step + uniform(step / 5, r)).min(cap)
}

/// The server said when (`Retry-After`): exactly that, plus up to 20% more so the hosts it
/// turned away together do not return together.
pub fn retry_after(after: Duration, r: u64) -> Duration {
    after + uniform(after / 5, r)
}

/// A pending machine polls no more often than every `every`: `every` plus up to 20%.
pub fn pending_poll(every: Duration, r: u64) -> Duration {
    every + uniform(every / 5, r)
}

/// Link reconnects after a drop or a crash: the first attempt is uniform in `0..=first`, later
/// ones back off with full jitter from `first`, up to `cap`.
pub fn reconnect(first: Duration, cap: Duration, attempt: u32, r: u64) -> Duration {
    if attempt == 0 {
        uniform(first.min(cap), r)
    } else {
        full_jitter(first, cap, attempt, r)
    }
}

/// The next heartbeat: `every` ± `percent`%.
pub fn heartbeat(every: Duration, percent: u32, r: u64) -> Duration {
    let spread = every * percent / 100;
    every - spread + uniform(spread * 2, r)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    /// Pins: full jitter stays in `0..=min(cap, base·2^n)`, reaches both ends, and never
    /// overflows on huge attempt numbers.
    #[test]
    fn full_jitter_bounds() {
        assert_eq!(full_jitter(S(2), S(300), 0, 0), S(0));
        assert_eq!(full_jitter(S(2), S(300), 0, 2000), S(2));
        assert_eq!(full_jitter(S(2), S(300), 3, 16_000), S(16));
        assert_eq!(full_jitter(S(2), S(300), 3, 16_001), S(0));
        assert_eq!(full_jitter(S(2), S(300), 30, 300_000), S(300));
        assert!(full_jitter(S(2), S(300), u32::MAX, u64::MAX) <= S(300));
        for r in [0, 1, 12345, u64::MAX] {
            assert!(full_jitter(S(2), S(300), 5, r) <= S(64));
        }
    }

    /// Pins: rejections wait from 5 minutes, doubling, with at most 20% on top, never past
    /// 6 hours, and never less than the step.
    #[test]
    fn rejected_grows_from_5_minutes_to_6_hours() {
        let (base, cap) = (S(300), S(6 * 3600));
        assert_eq!(rejected(base, cap, 0, 0), S(300));
        assert_eq!(rejected(base, cap, 0, 60_000), S(360));
        assert_eq!(rejected(base, cap, 1, 0), S(600));
        assert_eq!(rejected(base, cap, 6, 0), S(19_200));
        assert_eq!(rejected(base, cap, 7, 0), S(6 * 3600));
        assert_eq!(rejected(base, cap, 100, u64::MAX), S(6 * 3600));
        for n in 0..10 {
            for r in [0, 7, 99_999, u64::MAX] {
                let d = rejected(base, cap, n, r);
                assert!(d >= S(300) && d <= cap, "{n} {r} {d:?}");
            }
        }
    }

    /// Pins: Retry-After is honoured exactly, with 0 to 20% on top.
    #[test]
    fn retry_after_is_exact_plus_up_to_a_fifth() {
        assert_eq!(retry_after(S(900), 0), S(900));
        assert_eq!(retry_after(S(900), 180_000), S(1080));
        assert_eq!(retry_after(S(900), 180_001), S(900));
        assert_eq!(retry_after(S(0), u64::MAX), S(0));
    }

    /// Pins: a pending machine polls every 60 s at the most often, 72 s at the least often.
    #[test]
    fn pending_polls_no_faster_than_the_interval() {
        assert_eq!(pending_poll(S(60), 0), S(60));
        assert_eq!(pending_poll(S(60), 12_000), S(72));
    }

    /// Pins: the first reconnect is uniform in 0–30 s; later ones back off up to 5 minutes.
    #[test]
    fn reconnects_spread_then_back_off() {
        let (first, cap) = (S(30), S(300));
        assert_eq!(reconnect(first, cap, 0, 0), S(0));
        assert_eq!(reconnect(first, cap, 0, 30_000), S(30));
        assert_eq!(reconnect(first, cap, 1, 60_000), S(60));
        assert_eq!(reconnect(first, cap, 9, 300_000), S(300));
        assert!(reconnect(first, cap, 9, u64::MAX) <= cap);
    }

    /// Pins: heartbeats go every 30 s ± 10%.
    #[test]
    fn heartbeat_within_ten_percent() {
        assert_eq!(heartbeat(S(30), 10, 0), S(27));
        assert_eq!(heartbeat(S(30), 10, 6_000), S(33));
        for r in [1, 2, 3_000, u64::MAX] {
            let d = heartbeat(S(30), 10, r);
            assert!(d >= S(27) && d <= S(33));
        }
    }
}
