//! The log's files: the live `audit.log` and the closed segments `audit.<last seq>.log` beside
//! it; finding, closing and removing them; recovering where the chain stands after a crash; and
//! reading their lines one at a time ([`Lines`]), so no reader holds more than one line.

use std::fs::File;
use std::io::{self, BufRead as _, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::record::{GENESIS, Head, hash};

/// The log's file name in its directory.
pub(crate) const FILE: &str = "audit.log";

/// The last `seq` of the closed segment at `path`, from its name (`audit.<12 digits>.log`).
pub(crate) fn segment_last_seq(path: &Path) -> Option<u64> {
    let digits = path
        .file_name()?
        .to_str()?
        .strip_prefix("audit.")?
        .strip_suffix(".log")?;
    if digits.len() != 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Closed segments beside `live` (`audit.<last seq, 12 digits>.log`), oldest first.
pub(super) fn segments(live: &Path) -> io::Result<Vec<PathBuf>> {
    let Some(dir) = live.parent() else {
        return Ok(Vec::new());
    };
    let mut out: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| segment_last_seq(p).is_some())
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    out.sort();
    Ok(out)
}

/// The closed segments beside the live file at `live`, oldest first (none if unreadable).
pub(crate) fn closed_segments(live: &Path) -> Vec<PathBuf> {
    segments(live).unwrap_or_default()
}

/// The head of the chain in `file`, cutting off a last line the daemon never finished.
pub(super) fn recover(file: &mut File) -> io::Result<Head> {
    let len = file.metadata()?.len();
    let (line, end) = last_line(file)?;
    if end < len {
        file.set_len(end)?;
    }
    let Some(line) = line else {
        return Ok(Head {
            seq: 0,
            hash: GENESIS.to_owned(),
        });
    };
    let seq = serde_json::from_slice::<Value>(&line)
        .ok()
        .and_then(|v| v["seq"].as_u64())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "the audit log's last record is unreadable; run `warden audit verify`",
            )
        })?;
    Ok(Head {
        seq,
        hash: hash(&line),
    })
}

/// The last whole line of `file` (without its newline), if any, and where its whole lines end
/// (past that is a line cut off mid-write). Reads backwards from the end, never the whole file.
pub(super) fn last_line(mut file: &File) -> io::Result<(Option<Vec<u8>>, u64)> {
    let len = file.metadata()?.len();
    let mut chunk = 64 * 1024u64;
    loop {
        let from = len.saturating_sub(chunk);
        file.seek(SeekFrom::Start(from))?;
        let mut tail = Vec::with_capacity((len - from) as usize);
        file.take(len - from).read_to_end(&mut tail)?;
        let Some(end) = tail.iter().rposition(|&b| b == b'\n').map(|i| i + 1) else {
            if from == 0 {
                // Not one whole line.
                return Ok((None, 0));
            }
            chunk *= 2;
            continue;
        };
        let start = match tail[..end - 1].iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            None if from == 0 => 0,
            None => {
                chunk *= 2;
                continue;
            }
        };
        return Ok((Some(tail[start..end - 1].to_vec()), from + end as u64));
    }
}

pub(super) fn remove_segment(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Flushes the directory of `live`, so a rename or removal in it survives a crash.
pub(super) fn sync_dir(live: &Path) -> io::Result<()> {
    match live.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Closes the live file as the segment ending at `last_seq` and returns the new live file.
pub(super) fn rotate(file: &File, live: &Path, last_seq: u64) -> io::Result<File> {
    file.sync_data()?;
    let closed = live.with_file_name(format!("audit.{last_seq:012}.log"));
    std::fs::rename(live, &closed)?;
    let next = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(live)?;
    sync_dir(live)?;
    Ok(next)
}

/// Appends `buf` whole or not at all (a failed write is cut back off to `len`, the file's
/// length, which is moved on by what was written). Reaching the disk is the flusher's part.
pub(super) fn append(mut file: &File, len: &mut u64, buf: &[u8]) -> io::Result<()> {
    let result = file.write_all(buf);
    match result {
        Ok(()) => *len += buf.len() as u64,
        Err(_) => {
            let _ = file.set_len(*len);
            // Should even the cut fail, go on from what the file holds.
            *len = file.metadata().map_or(*len, |m| m.len());
        }
    }
    result
}

/// The longest line [`verify`] and [`query`] hold in memory; a longer one is not a record the
/// daemon wrote (a request's parameters are far smaller), and is read past, not kept.
pub(crate) const MAX_LINE: usize = 32 << 20;

/// One line of a log as [`Lines`] reads it.
pub(super) enum Line<'a> {
    Text(&'a [u8]),
    /// Longer than [`MAX_LINE`]; skipped.
    TooLong,
}

/// The lines of a log's files, oldest file first, read one at a time through one buffer: what
/// [`verify`] and [`query`] hold is one file handle and one line, whatever the log's size.
pub(super) struct Lines {
    files: std::vec::IntoIter<PathBuf>,
    current: Option<io::BufReader<File>>,
    line: Vec<u8>,
}

impl Lines {
    pub(super) fn new(files: Vec<PathBuf>) -> Lines {
        Lines {
            files: files.into_iter(),
            current: None,
            line: Vec::new(),
        }
    }

    /// The next non-empty line, without its newline; `None` at the end of the last file.
    pub(super) fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        loop {
            let Some(reader) = &mut self.current else {
                let Some(path) = self.files.next() else {
                    return Ok(None);
                };
                match File::open(&path) {
                    Ok(f) => self.current = Some(io::BufReader::with_capacity(64 * 1024, f)),
                    // Removed since it was listed (retention): nothing of it to read.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
                continue;
            };
            self.line.clear();
            let mut too_long = false;
            loop {
                let buf = reader.fill_buf()?;
                if buf.is_empty() {
                    break;
                }
                let (take, done) = match buf.iter().position(|&b| b == b'\n') {
                    Some(i) => (i + 1, true),
                    None => (buf.len(), false),
                };
                if !too_long {
                    let body = if done { &buf[..take - 1] } else { buf };
                    if self.line.len() + body.len() > MAX_LINE {
                        too_long = true;
                        self.line = Vec::new();
                    } else {
                        self.line.extend_from_slice(body);
                    }
                }
                reader.consume(take);
                if done {
                    break;
                }
            }
            if too_long {
                return Ok(Some(Line::TooLong));
            }
            if self.line.is_empty() {
                // An empty line, or the end of this file: go on with the next.
                if reader.fill_buf()?.is_empty() {
                    self.current = None;
                }
                continue;
            }
            return Ok(Some(Line::Text(&self.line)));
        }
    }
}

/// The files of the log at `live` still to be read for records after `after` (closed segments
/// that end at or before it are left out), oldest first.
pub(super) fn files_after(live: &Path, after: u64) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = segments(live)?
        .into_iter()
        .filter(|p| segment_last_seq(p).is_none_or(|last| last > after))
        .collect();
    files.push(live.to_owned());
    Ok(files)
}
