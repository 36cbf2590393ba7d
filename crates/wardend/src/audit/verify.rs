//! Checking the chain: each record must follow the one before (its `seq`, and the hash of the
//! line before it), from the anchor (or the first record) to the daemon's head and last seal.
//! The first record where that fails is named, with what is wrong there.

use std::io;
use std::path::Path;

use serde::Serialize;

use super::record::{GENESIS, Head, hash};
use super::segments::{Line, Lines, files_after};

/// What is wrong with a log, at the first record where it shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Problem {
    /// The record's bytes are not what the next record (or the daemon) says they were.
    Modified,
    /// Records from this `seq` on are not in the log.
    Missing,
    /// The record is in the log, but not in its place.
    Reordered,
    /// The log ends before the last record the daemon wrote.
    Truncated,
}

impl Problem {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Problem::Modified => "modified",
            Problem::Missing => "missing",
            Problem::Reordered => "reordered",
            Problem::Truncated => "truncated",
        }
    }
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Intact { records: u64 },
    Broken { seq: u64, problem: Problem },
}

/// What [`verify`] reads of a line: its place and the hash it names as the one before.
#[derive(serde::Deserialize)]
pub(super) struct Link {
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    prev: Option<String>,
}

/// One line's `seq`, `prev` and hash (`None`s for a line that is not a record).
pub(super) fn link(line: &Line<'_>) -> (Option<u64>, Option<String>, String) {
    match line {
        Line::Text(l) => {
            let link = serde_json::from_slice::<Link>(l).ok();
            let (seq, prev) = link.map_or((None, None), |l| (l.seq, l.prev));
            (seq, prev, hash(l))
        }
        Line::TooLong => (None, None, String::new()),
    }
}

/// Checks the chain of the log at `path`. `head` is the last record the daemon knows it wrote,
/// `seals` what was sealed (both make a changed last record and a cut-off end detectable too).
#[cfg(test)]
pub(crate) fn verify(path: &Path, head: Option<&Head>, seals: &[Head]) -> io::Result<Verdict> {
    verify_from(path, head, seals, None)
}

/// [`verify`] of a log whose records up to `anchor` were removed by retention: the first record
/// kept must follow it (its `seq` + 1, naming its hash). Segments are read one after the other,
/// line by line; a line is held only while it is checked.
pub(crate) fn verify_from(
    path: &Path,
    head: Option<&Head>,
    seals: &[Head],
    anchor: Option<&Head>,
) -> io::Result<Verdict> {
    let start = anchor.map_or(0, |a| a.seq);
    let mut lines = Lines::new(files_after(path, start)?);
    verify_lines(&mut lines, head, seals, anchor)
}

pub(super) fn verify_lines(
    lines: &mut Lines,
    head: Option<&Head>,
    seals: &[Head],
    anchor: Option<&Head>,
) -> io::Result<Verdict> {
    let start = anchor.map_or(0, |a| a.seq);
    let seals: Vec<&Head> = seals.iter().filter(|s| s.seq > start).collect();
    let mut next_seal = seals.iter().peekable();
    let mut expected = start + 1;
    let mut prev_hash = anchor.map_or_else(|| GENESIS.to_owned(), |a| a.hash.clone());
    while let Some(line) = lines.next_line()? {
        let (seq, prev, line_hash) = link(&line);
        let chained = prev.as_deref() == Some(prev_hash.as_str());
        match seq {
            Some(seq) if seq == expected && chained => {}
            // In sequence, but the line before is not what this one says it was: that line was
            // changed (or, for the first record kept, this one's own `prev`).
            Some(seq) if seq == expected => {
                let seq = if expected > start + 1 {
                    expected - 1
                } else {
                    expected
                };
                return broken(seq, Problem::Modified);
            }
            // Unreadable, or in its place with its own number changed.
            None => return broken(expected, Problem::Modified),
            Some(_) if chained => return broken(expected, Problem::Modified),
            Some(_) => {
                // Is the record that belongs here further on? Read on, a line at a time.
                let mut later = false;
                while let Some(rest) = lines.next_line()? {
                    if let Line::Text(l) = rest
                        && serde_json::from_slice::<Link>(l).is_ok_and(|l| l.seq == Some(expected))
                    {
                        later = true;
                        break;
                    }
                }
                let problem = if later {
                    Problem::Reordered
                } else {
                    Problem::Missing
                };
                return broken(expected, problem);
            }
        }
        while next_seal.next_if(|s| s.seq < expected).is_some() {}
        if let Some(seal) = next_seal.next_if(|s| s.seq == expected)
            && seal.hash != line_hash
        {
            return broken(expected, Problem::Modified);
        }
        prev_hash = line_hash;
        expected += 1;
    }
    let last = expected - 1;
    if let Some(seal) = seals.last()
        && seal.seq > last
    {
        return broken(last + 1, Problem::Truncated);
    }
    if let Some(head) = head {
        if head.seq > last {
            return broken(last + 1, Problem::Truncated);
        }
        if head.seq == last && head.seq > start && head.hash != prev_hash {
            return broken(last, Problem::Modified);
        }
    }
    Ok(Verdict::Intact {
        records: last - start,
    })
}

pub(super) fn broken(seq: u64, problem: Problem) -> io::Result<Verdict> {
    Ok(Verdict::Broken { seq, problem })
}
