//! What one uid can make the log record: denials past [`DENIALS_RECORDED`] a minute are
//! counted into one summary, and requests that change something are budgeted per minute
//! ([`Changes`]).

use std::sync::{Mutex, PoisonError};

use super::record::{Event, Kind, Peer};

/// Denial records one uid may cause per [`DENIAL_WINDOW`]; past them its denials are counted
/// and summed up in one record per window, so an unprivileged caller cannot grow the log
/// without bound by asking for what it may not have.
pub(crate) const DENIALS_RECORDED: u32 = 100;

pub(crate) const DENIAL_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Denial counts per uid, for [`DENIALS_RECORDED`].
#[derive(Debug, Default)]
pub(crate) struct Denials {
    windows: Mutex<std::collections::HashMap<u32, Window>>,
}

#[derive(Debug)]
pub(super) struct Window {
    started: std::time::Instant,
    recorded: u32,
    suppressed: u32,
}

impl Denials {
    /// Whether a denial of `uid` now gets a record of its own (if not, it is counted), and
    /// whether this is the first one counted in its window: a flood has begun.
    pub(crate) fn admit(&self, uid: u32, now: std::time::Instant) -> (bool, bool) {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let w = windows.entry(uid).or_insert(Window {
            started: now,
            recorded: 0,
            suppressed: 0,
        });
        if now.duration_since(w.started) >= DENIAL_WINDOW && w.suppressed == 0 {
            // A new minute; one with suppressed denials waits for its summary first.
            *w = Window {
                started: now,
                recorded: 0,
                suppressed: 0,
            };
        }
        if w.recorded < DENIALS_RECORDED {
            w.recorded += 1;
            (true, false)
        } else {
            w.suppressed += 1;
            (false, w.suppressed == 1)
        }
    }

    /// Summary records for every uid with counted denials whose window has passed (all of them
    /// with `all`, at shutdown); their windows start again.
    pub(crate) fn summaries(&self, now: std::time::Instant, all: bool) -> Vec<Event> {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::new();
        windows.retain(|&uid, w| {
            let over = now.duration_since(w.started) >= DENIAL_WINDOW;
            if w.suppressed > 0 && (over || all) {
                out.push(Event {
                    peer: Some(Peer {
                        uid,
                        gid: 0,
                        pid: 0,
                        exe: None,
                        client: None,
                    }),
                    decision: Some("deny".into()),
                    reason: Some(format!(
                        "{} more denials of uid {uid} in {} s, after {} recorded one by one",
                        w.suppressed,
                        now.duration_since(w.started).as_secs().max(1),
                        w.recorded
                    )),
                    ..Event::new(Kind::DeniedSummary)
                });
                *w = Window {
                    started: now,
                    recorded: 0,
                    suppressed: 0,
                };
                true
            } else {
                // Quiet uids are forgotten once their window has passed.
                !over
            }
        });
        out
    }
}

/// Requests that change something (and so are recorded, with the jobs they start) per uid, for
/// `[audit] uid_changes_per_minute`: what bounds the records one uid other than root can make
/// the daemon write. Counted in windows of [`DENIAL_WINDOW`] from a uid's first such request.
#[derive(Debug)]
pub(crate) struct Changes {
    per_window: u32,
    windows: Mutex<std::collections::HashMap<u32, (std::time::Instant, u32)>>,
}

impl Changes {
    pub(crate) fn new(per_window: u32) -> Changes {
        Changes {
            per_window,
            windows: Mutex::default(),
        }
    }

    /// The most one uid may make per window.
    pub(crate) fn per_window(&self) -> u32 {
        self.per_window
    }

    /// Counts one request of `uid` that changes something; `Err` with the time until its window
    /// ends when it has had its share. Root is not counted.
    pub(crate) fn admit(
        &self,
        uid: u32,
        now: std::time::Instant,
    ) -> Result<(), std::time::Duration> {
        if uid == 0 {
            return Ok(());
        }
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if windows.len() >= 4096 {
            windows.retain(|_, (started, _)| now.duration_since(*started) < DENIAL_WINDOW);
        }
        let (started, used) = windows.entry(uid).or_insert((now, 0));
        let age = now.duration_since(*started);
        if age >= DENIAL_WINDOW {
            (*started, *used) = (now, 0);
        }
        if *used < self.per_window {
            *used += 1;
            Ok(())
        } else {
            Err(DENIAL_WINDOW.saturating_sub(now.duration_since(*started)))
        }
    }
}
