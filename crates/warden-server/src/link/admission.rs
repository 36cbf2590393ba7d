//! Admission of link upgrades: a token bucket on upgrades per second for the whole process.
//! Past it an agent gets `503` with an exact `Retry-After`, before its key is even looked up.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Admission {
    per_second: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl Admission {
    pub fn new(per_second: u32) -> Admission {
        let per_second = f64::from(per_second.max(1));
        Admission {
            per_second,
            burst: per_second,
            state: Mutex::new((per_second, Instant::now())),
        }
    }

    /// Takes one upgrade; `Err(wait)` is how long until one is free.
    pub fn take(&self, now: Instant) -> Result<(), Duration> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = *s;
        let tokens = (tokens + now.saturating_duration_since(last).as_secs_f64() * self.per_second)
            .min(self.burst);
        if tokens >= 1.0 {
            *s = (tokens - 1.0, now);
            Ok(())
        } else {
            *s = (tokens, now);
            Err(Duration::from_secs_f64((1.0 - tokens) / self.per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: the bucket admits its burst, then refuses with the wait until the next token.
    #[test]
    fn bucket_admits_burst_then_names_the_wait() {
        let a = Admission::new(2);
        let t = Instant::now();
        assert!(a.take(t).is_ok());
        assert!(a.take(t).is_ok());
        let wait = a.take(t).unwrap_err();
        assert!(wait <= Duration::from_millis(500) && wait > Duration::from_millis(400));
        assert!(a.take(t + Duration::from_millis(500)).is_ok());
    }
}
