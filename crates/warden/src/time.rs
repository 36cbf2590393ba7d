//! The one way the CLI prints a point in time: RFC 3339 in UTC to the second
//! (`2026-12-06T05:25:15Z`), whatever precision the daemon's value has. Durations stay
//! durations (`up 3d 4h`, `in 1.2s`) and are not this module's business. It never reads the
//! clock: it only reformats the times the daemon sent, and prints one it cannot read as given.

/// `raw` (an RFC 3339 time from the daemon) as the CLI prints every time.
pub fn timestamp(raw: &str) -> String {
    match humantime::parse_rfc3339_weak(raw) {
        Ok(t) => humantime::format_rfc3339_seconds(t).to_string(),
        Err(_) => raw.to_owned(),
    }
}

/// An optional time, `-` when there is none.
pub fn optional(raw: Option<&str>) -> String {
    raw.map_or_else(|| "-".to_owned(), timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: milliseconds and seconds from the daemon print alike, in UTC with a `Z`; what is
    /// not a time is printed as it came.
    #[test]
    fn every_time_prints_as_rfc3339_utc_seconds() {
        assert_eq!(
            timestamp("2026-12-06T05:25:15.123Z"),
            "2026-12-06T05:25:15Z"
        );
        assert_eq!(timestamp("2026-12-06T05:25:15Z"), "2026-12-06T05:25:15Z");
        assert_eq!(timestamp("2026-12-06 05:25:15"), "2026-12-06T05:25:15Z");
        assert_eq!(timestamp("yesterday"), "yesterday");
        assert_eq!(optional(None), "-");
    }
}
