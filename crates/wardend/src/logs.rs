//! What a peer can put into the daemon's log and its error messages, and how much of it.
//!
//! Each uid may cause a few lines a second and a few KiB of them; the rest are counted and the
//! count is reported on that uid's next line, so a flood shows up in the log as one line with a
//! number instead of a million lines. Every string a peer chose (a field name, a topic, a value
//! quoted by a parser) is cut to a few hundred bytes and has its control characters escaped
//! before it reaches a log line or an error message, so no peer can grow the log by megabytes
//! per line or start a line of its own. This module must never let a peer's bytes through
//! unescaped.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};

use tokio::time::Instant;
use warden_proto::Uid;

use crate::limits::TokenBucket;

/// Log lines per second one uid may cause, and its burst.
const LINES_PER_SECOND: f64 = 5.0;
const LINES_BURST: u32 = 20;
/// Bytes of log lines per second one uid may cause, and its burst: what bounds the log's growth
/// whatever the lines hold.
const BYTES_PER_SECOND: f64 = 2048.0;
const BYTES_BURST: u32 = 16 * 1024;
/// What a line without peer text is charged: its fixed text, span and fields.
pub(crate) const PLAIN_LINE: usize = 256;
/// uids tracked before the table is cleared (a cleared table only forgets suppression counts).
const MAX_TRACKED: usize = 4096;

/// Bytes of one peer-chosen string kept in a log line or an error message.
pub(crate) const PEER_TEXT_MAX: usize = 200;
/// Bytes kept of a parser's error text, which quotes what the peer sent.
pub(crate) const PARSER_TEXT_MAX: usize = 400;
/// Bytes kept of a whole error message (daemon text and the peer text in it).
pub(crate) const MESSAGE_MAX: usize = 1024;
/// Characters kept of one quoted span in a parser's error text.
const QUOTED_MAX: usize = 64;

#[derive(Debug)]
struct Entry {
    lines: TokenBucket,
    bytes: TokenBucket,
    suppressed: u64,
}

/// Decides whether a peer-caused log line is written.
#[derive(Debug, Default)]
pub(crate) struct LogLimiter {
    uids: Mutex<HashMap<Uid, Entry>>,
}

impl LogLimiter {
    /// `Some(n)` if a line without peer text for `uid` may be written now, `n` being how many
    /// were suppressed since the last one; `None` if this line is suppressed.
    pub(crate) fn admit(&self, uid: Uid) -> Option<u64> {
        self.admit_line(uid, PLAIN_LINE)
    }

    /// As [`LogLimiter::admit`], for a line of about `bytes` bytes.
    pub(crate) fn admit_line(&self, uid: Uid, bytes: usize) -> Option<u64> {
        self.admit_at(uid, bytes, Instant::now())
    }

    fn admit_at(&self, uid: Uid, bytes: usize, now: Instant) -> Option<u64> {
        let mut map = self.uids.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_TRACKED && !map.contains_key(&uid) {
            map.clear();
        }
        let e = map.entry(uid).or_insert_with(|| Entry {
            lines: TokenBucket::new(LINES_PER_SECOND, LINES_BURST, now),
            bytes: TokenBucket::new(BYTES_PER_SECOND, BYTES_BURST, now),
            suppressed: 0,
        });
        // Both budgets must allow it; the byte budget is asked first, so a line it refuses
        // does not use up a line token.
        let cost = bytes.max(PLAIN_LINE) as f64;
        if e.bytes.try_take_n(cost, now).is_ok() && e.lines.try_take(now).is_ok() {
            Some(std::mem::take(&mut e.suppressed))
        } else {
            e.suppressed += 1;
            None
        }
    }
}

/// `s` fit for a log line or an error message: at most [`PEER_TEXT_MAX`] bytes of it, escaped
/// (see [`cut_escaped`]).
pub(crate) fn peer_text(s: &str) -> String {
    cut_escaped(s, PEER_TEXT_MAX)
}

/// A parser's error text (serde's, which quotes field names and values the peer sent), fit
/// for a log line and an error message: every quoted span shortened, then cut at
/// [`PARSER_TEXT_MAX`] bytes and escaped.
pub(crate) fn parser_text(s: &str) -> String {
    cut_escaped(&shorten_quoted(s), PARSER_TEXT_MAX)
}

/// At most `max` bytes of escaped text from `s`, cut at a character boundary; if anything was
/// cut, a marker saying how many bytes of `s` were left out follows. Escaped are control
/// characters (newlines, carriage returns, tabs, ESC, DEL, C1), and the Unicode line and
/// paragraph separators and bidirectional overrides, which could start or disguise a line.
pub(crate) fn cut_escaped(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max) + 24);
    let mut escaped = String::new();
    for (at, c) in s.char_indices() {
        escaped.clear();
        push_escaped(&mut escaped, c);
        if out.len() + escaped.len() > max {
            let _ = write!(out, "…[{} more bytes]", s.len() - at);
            return out;
        }
        out.push_str(&escaped);
    }
    out
}

/// Whether [`cut_escaped`] escapes `c`.
pub(crate) fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if needs_escape(c) => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

/// `s` with every span between backticks or double quotes longer than [`QUOTED_MAX`]
/// characters cut to that many, marked `…`: a 1 MB field name in "unknown field `…`, expected
/// one of …" leaves room for what was expected.
fn shorten_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(PARSER_TEXT_MAX * 2));
    let mut rest = s;
    while let Some(open) = rest.find(['`', '"']) {
        let quote = rest[open..].chars().next().unwrap_or('`');
        out.push_str(&rest[..=open]);
        let inner = &rest[open + 1..];
        let close = inner.find(quote).unwrap_or(inner.len());
        let span = &inner[..close];
        match span.char_indices().nth(QUOTED_MAX) {
            Some((cut, _)) => {
                out.push_str(&span[..cut]);
                out.push('…');
            }
            None => out.push_str(span),
        }
        if close < inner.len() {
            out.push(quote);
            rest = &inner[close + 1..];
        } else {
            rest = "";
        }
        if out.len() > PARSER_TEXT_MAX * 2 {
            return out;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_the_burst_and_the_rest_is_counted() {
        let l = LogLimiter::default();
        let now = Instant::now();
        let written = (0..1000)
            .filter(|_| l.admit_at(Uid(5), PLAIN_LINE, now).is_some())
            .count();
        assert_eq!(written, LINES_BURST as usize);
        assert!(
            l.admit_at(Uid(6), PLAIN_LINE, now).is_some(),
            "another uid is not silenced"
        );
        let later = now + std::time::Duration::from_secs(1);
        assert_eq!(
            l.admit_at(Uid(5), PLAIN_LINE, later),
            Some(1000 - LINES_BURST as u64)
        );
    }

    /// Pins: a uid's log lines are budgeted in bytes too: long lines run out of the byte budget
    /// well before the line budget, and the budget refills with time.
    #[test]
    fn long_lines_are_cut_off_by_the_byte_budget() {
        let l = LogLimiter::default();
        let now = Instant::now();
        let written = (0..1000)
            .filter(|_| l.admit_at(Uid(5), 4096, now).is_some())
            .count();
        assert_eq!(written, BYTES_BURST as usize / 4096);
        assert!(
            l.admit_at(Uid(6), 4096, now).is_some(),
            "another uid is not silenced"
        );
        let later = now + std::time::Duration::from_secs(2);
        assert_eq!(l.admit_at(Uid(5), 4096, later), Some(1000 - 4));
    }

    /// Pins: peer text is cut at a character boundary with a marker, and nothing in it can
    /// start a line of its own.
    #[test]
    fn peer_text_is_cut_and_escaped() {
        assert_eq!(
            peer_text("a\nWARN alert: x\r\t\u{1b}[31m"),
            "a\\nWARN alert: x\\r\\t\\u{1b}[31m"
        );
        assert_eq!(
            peer_text("line\u{2028}sep\u{202e}"),
            "line\\u{2028}sep\\u{202e}"
        );
        let long = "é".repeat(1000);
        let cut = peer_text(&long);
        assert!(cut.starts_with(&"é".repeat(100)), "{cut}");
        assert!(cut.ends_with("…[1800 more bytes]"), "{cut}");
        assert!(cut.len() <= PEER_TEXT_MAX + 24);
        // Escapes count against the bound too.
        assert!(peer_text(&"\n".repeat(10_000)).len() <= PEER_TEXT_MAX + 24);
        assert_eq!(peer_text("plain"), "plain");
    }

    #[test]
    fn parser_text_keeps_what_was_expected_after_a_huge_field_name() {
        let msg = format!(
            "unknown field `{}`, expected one of `protocol`, `client`, `features` at line 1 column 1000020",
            "A\n".repeat(500_000)
        );
        let shown = parser_text(&msg);
        assert!(shown.len() <= PARSER_TEXT_MAX + 24, "{}", shown.len());
        assert!(!shown.contains('\n'));
        assert!(
            shown.ends_with(
                "expected one of `protocol`, `client`, `features` at line 1 column 1000020"
            ),
            "{shown}"
        );
        let value = format!(
            "invalid type: string \"{}\", expected u32",
            "x".repeat(5000)
        );
        assert!(parser_text(&value).ends_with("…\", expected u32"));
        assert_eq!(parser_text("unterminated `abc"), "unterminated `abc");
    }
}
