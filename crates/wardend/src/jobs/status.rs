//! The status protocol a job speaks on `WARDEN_STATUS_FD`, one line per message:
//!
//! ```text
//! progress PCT [PHASE] [MESSAGE]   PCT 0..=100; PHASE one word; MESSAGE the rest of the line
//! phase NAME
//! commit                           from here on the job's effect remains
//! result JSON                      what the job reports back
//! ```
//!
//! Lines are at most 4 KiB. Anything else is malformed: counted and ignored. A line is parsed as
//! the job wrote it; only the text it carries (phase, message, result) is then scrubbed of secret
//! values, never the keywords, so no secret can turn a `commit` into something else.

use serde_json::Value;

/// Longest status line, in bytes (without the newline).
pub(crate) const MAX_LINE: usize = 4096;
/// Longest phase or message kept, in characters.
const MAX_TEXT: usize = 256;

/// One status message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StatusLine {
    Progress {
        pct: u8,
        phase: Option<String>,
        message: Option<String>,
    },
    Phase(String),
    Commit,
    Result(Value),
}

impl StatusLine {
    /// The line with `scrub` applied to every text it carries: the phase, the message, and each
    /// string, key and other scalar of a result. A scalar whose text `scrub` changes (a secret
    /// number, say) becomes that changed text, as a string.
    pub(crate) fn scrubbed(self, scrub: impl Fn(&str) -> String) -> StatusLine {
        match self {
            StatusLine::Progress {
                pct,
                phase,
                message,
            } => StatusLine::Progress {
                pct,
                phase: phase.map(|p| scrub(&p)),
                message: message.map(|m| scrub(&m)),
            },
            StatusLine::Phase(p) => StatusLine::Phase(scrub(&p)),
            StatusLine::Commit => StatusLine::Commit,
            StatusLine::Result(v) => StatusLine::Result(scrub_value(v, &scrub)),
        }
    }
}

fn scrub_value(v: Value, scrub: &impl Fn(&str) -> String) -> Value {
    match v {
        Value::String(s) => Value::String(scrub(&s)),
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|i| scrub_value(i, scrub)).collect())
        }
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (scrub(&k), scrub_value(v, scrub)))
                .collect(),
        ),
        scalar => {
            let text = scalar.to_string();
            let clean = scrub(&text);
            if clean == text {
                scalar
            } else {
                Value::String(clean)
            }
        }
    }
}

/// Text a job supplied, fit to show: control characters removed, length bounded.
fn clean(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(MAX_TEXT)
        .collect()
}

/// Parses one line; `None` if it is malformed.
pub(crate) fn parse(line: &[u8]) -> Option<StatusLine> {
    let line = std::str::from_utf8(line)
        .ok()?
        .trim_end_matches(['\r', '\n']);
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    let rest = rest.trim_start();
    match word {
        "progress" => {
            let mut parts = rest.splitn(3, ' ');
            let pct: u8 = parts.next()?.parse().ok().filter(|p| *p <= 100)?;
            let phase = parts.next().filter(|p| !p.is_empty()).map(clean);
            let message = parts
                .next()
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(clean);
            Some(StatusLine::Progress {
                pct,
                phase,
                message,
            })
        }
        "phase" if !rest.is_empty() && !rest.contains(' ') => Some(StatusLine::Phase(clean(rest))),
        "commit" if rest.is_empty() => Some(StatusLine::Commit),
        "result" => serde_json::from_str(rest).ok().map(StatusLine::Result),
        _ => None,
    }
}

/// Splits a byte stream into lines of at most [`MAX_LINE`] bytes. An over-long line is dropped
/// whole (and reported once as malformed).
#[derive(Debug, Default)]
pub(crate) struct Lines {
    buf: Vec<u8>,
    /// Inside an over-long line: discard until its newline.
    skipping: bool,
}

/// What [`Lines::push`] found.
#[derive(Debug, PartialEq)]
pub(crate) enum Piece {
    Line(Vec<u8>),
    TooLong,
}

impl Lines {
    pub(crate) fn push(&mut self, mut data: &[u8], out: &mut Vec<Piece>) {
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let (head, tail) = (&data[..i], &data[i + 1..]);
                    if self.skipping {
                        self.skipping = false;
                    } else if self.buf.len() + head.len() > MAX_LINE {
                        out.push(Piece::TooLong);
                    } else {
                        self.buf.extend_from_slice(head);
                        out.push(Piece::Line(std::mem::take(&mut self.buf)));
                    }
                    self.buf.clear();
                    data = tail;
                }
                None => {
                    if !self.skipping {
                        if self.buf.len() + data.len() > MAX_LINE {
                            self.buf.clear();
                            self.skipping = true;
                            out.push(Piece::TooLong);
                        } else {
                            self.buf.extend_from_slice(data);
                        }
                    }
                    data = &[];
                }
            }
        }
    }

    /// A last line without a newline, at end of stream.
    pub(crate) fn finish(&mut self) -> Option<Vec<u8>> {
        let rest = std::mem::take(&mut self.buf);
        (!rest.is_empty() && !self.skipping).then_some(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_four_messages_parse() {
        assert_eq!(
            parse(b"progress 40 download fetching 3 of 10\n"),
            Some(StatusLine::Progress {
                pct: 40,
                phase: Some("download".into()),
                message: Some("fetching 3 of 10".into())
            })
        );
        assert_eq!(
            parse(b"progress 100"),
            Some(StatusLine::Progress {
                pct: 100,
                phase: None,
                message: None
            })
        );
        assert_eq!(
            parse(b"phase verify"),
            Some(StatusLine::Phase("verify".into()))
        );
        assert_eq!(parse(b"commit"), Some(StatusLine::Commit));
        assert_eq!(
            parse(br#"result {"bytes": 42}"#),
            Some(StatusLine::Result(serde_json::json!({"bytes": 42})))
        );
    }

    #[test]
    fn malformed_lines_are_none() {
        for bad in [
            &b"progress 101"[..],
            b"progress -1",
            b"progress x",
            b"progress",
            b"phase",
            b"phase two words",
            b"commit now",
            b"result {not json",
            b"hello",
            b"",
            b"\xff\xfe",
        ] {
            assert_eq!(parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        let long = format!("progress 5 p {}\u{7}", "m".repeat(400));
        let Some(StatusLine::Progress {
            message: Some(m), ..
        }) = parse(long.as_bytes())
        else {
            panic!()
        };
        assert_eq!(m.chars().count(), MAX_TEXT);
        assert!(!m.contains('\u{7}'));
    }

    /// Pins: scrubbing touches the text a line carries, never its keyword, and keeps a result
    /// valid JSON.
    #[test]
    fn scrubbing_replaces_text_but_never_keywords() {
        let scrub = |t: &str| {
            t.replace("commit", "<redacted>")
                .replace("4242", "<redacted>")
        };
        let line = |l: &str| parse(l.as_bytes()).unwrap().scrubbed(scrub);
        assert_eq!(line("commit"), StatusLine::Commit);
        assert_eq!(
            line("progress 5 commit about to commit"),
            StatusLine::Progress {
                pct: 5,
                phase: Some("<redacted>".into()),
                message: Some("about to <redacted>".into()),
            }
        );
        assert_eq!(line("phase commit"), StatusLine::Phase("<redacted>".into()));
        assert_eq!(
            line(r#"result {"commit": ["commit", 4242, 7, true]}"#),
            StatusLine::Result(
                serde_json::json!({"<redacted>": ["<redacted>", "<redacted>", 7, true]})
            )
        );
    }

    #[test]
    fn lines_split_across_chunks_and_over_long_lines_are_dropped() {
        let mut l = Lines::default();
        let mut out = Vec::new();
        l.push(b"comm", &mut out);
        l.push(b"it\nphase a\nprogr", &mut out);
        assert_eq!(
            out,
            [
                Piece::Line(b"commit".to_vec()),
                Piece::Line(b"phase a".to_vec())
            ]
        );
        out.clear();
        l.push(&vec![b'x'; MAX_LINE + 10], &mut out);
        l.push(b"yyy\ncommit\n", &mut out);
        assert_eq!(out, [Piece::TooLong, Piece::Line(b"commit".to_vec())]);
        out.clear();
        l.push(b"tail", &mut out);
        assert_eq!(l.finish(), Some(b"tail".to_vec()));
    }
}
