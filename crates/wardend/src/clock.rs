//! The one way the daemon writes a point in time on the wire, in the audit log and in the
//! ledger: RFC 3339 in UTC with milliseconds (`2026-12-06T05:25:15.123Z`), so that every time a
//! client reads (job, audit record, alert, lockdown, resource) has the same shape. It only
//! formats; it never decides anything from the clock.

use std::time::SystemTime;

/// `t` as RFC 3339 UTC with milliseconds.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Now, as [`rfc3339`] writes it.
pub(crate) fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: the daemon's times are RFC 3339 UTC with milliseconds and a `Z`.
    #[test]
    fn times_are_rfc3339_utc_millis() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_796_016_315_123);
        assert_eq!(rfc3339(t), "2026-11-30T05:25:15.123Z");
        let now = now_rfc3339();
        assert!(now.len() == 24 && now.ends_with('Z'), "{now}");
    }
}
