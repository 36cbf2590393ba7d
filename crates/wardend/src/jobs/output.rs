//! A job's output: stdout and stderr, in the order written, to `state_dir/jobs/<id>.log`
//! (mode 0600), capped with a truncation marker, with the most recent part kept in memory and a
//! counter that followers wait on. Values of secret parameters are replaced by `<redacted>`
//! before anything is stored.

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use tokio::sync::watch;
use warden_policy::actions::REDACTED;

/// Output kept in memory per job.
const TAIL: usize = 64 * 1024;
/// Secret values shorter than this are not scrubbed from output: replacing every `ab` would
/// mangle the log without protecting anything worth protecting.
pub(crate) const MIN_SCRUBBED: usize = 4;

/// Replaces secret values in a byte stream, including values split across writes.
#[derive(Debug, Default)]
struct Scrubber {
    secrets: Vec<Vec<u8>>,
    /// The end of the stream so far that could still be the start of a secret.
    carry: Vec<u8>,
}

impl Scrubber {
    fn new(secrets: Vec<Vec<u8>>) -> Scrubber {
        let secrets = secrets
            .into_iter()
            .filter(|s| s.len() >= MIN_SCRUBBED)
            .collect();
        Scrubber {
            secrets,
            carry: Vec::new(),
        }
    }

    fn keep(&self) -> usize {
        self.secrets.iter().map(Vec::len).max().unwrap_or(1) - 1
    }

    fn replace_all(&self, mut buf: Vec<u8>) -> Vec<u8> {
        for secret in &self.secrets {
            let mut out = Vec::with_capacity(buf.len());
            let mut i = 0;
            while i < buf.len() {
                if buf[i..].starts_with(secret) {
                    out.extend_from_slice(REDACTED.as_bytes());
                    i += secret.len();
                } else {
                    out.push(buf[i]);
                    i += 1;
                }
            }
            buf = out;
        }
        buf
    }

    /// What may be written now.
    fn push(&mut self, data: &[u8]) -> Vec<u8> {
        if self.secrets.is_empty() {
            return data.to_vec();
        }
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(data);
        let mut buf = self.replace_all(buf);
        let keep = self.keep().min(buf.len());
        self.carry = buf.split_off(buf.len() - keep);
        buf
    }

    /// The rest, at end of stream.
    fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.carry);
        self.replace_all(rest)
    }
}

/// The log file, opened when there is something to write: a job that writes nothing costs no
/// file (and its start no file creation).
#[derive(Debug)]
enum LogFile {
    NotYet,
    Open(std::fs::File),
    /// It could not be opened or written (a full disk): output stays in memory only.
    Failed,
}

#[derive(Debug)]
struct State {
    file: LogFile,
    /// Bytes in the log, marker included.
    written: u64,
    cap: u64,
    truncated: bool,
    tail: VecDeque<u8>,
    scrub: Scrubber,
}

/// A running job's output.
#[derive(Debug)]
pub(crate) struct Output {
    path: PathBuf,
    state: Mutex<State>,
    /// The log's length, for followers to wait on.
    grew: watch::Sender<u64>,
}

/// A read of a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub data: Vec<u8>,
    pub next: u64,
}

impl Output {
    /// Output for the log at `path` (mode 0600), which is created at the first byte to write
    /// and appended to if it exists (a lost job's log, which its reconcile continues). If it
    /// cannot be written, output is still kept in memory.
    pub(crate) fn create(path: PathBuf, cap: u64, secrets: Vec<Vec<u8>>) -> Output {
        let written = std::fs::metadata(&path).map_or(0, |m| m.len());
        let (grew, _) = watch::channel(written);
        Output {
            path,
            state: Mutex::new(State {
                file: LogFile::NotYet,
                written,
                cap,
                truncated: false,
                tail: VecDeque::new(),
                scrub: Scrubber::new(secrets),
            }),
            grew,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `text` with every secret value replaced, for the phases, messages and results a job
    /// reports on its status pipe: they end up in the job's record, which is shown and stored.
    pub(crate) fn scrub_text(&self, text: &str) -> String {
        let st = self.state();
        if st.scrub.secrets.is_empty() {
            return text.to_owned();
        }
        let out = st.scrub.replace_all(text.as_bytes().to_vec());
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }

    /// Appends what the job wrote.
    pub(crate) fn write(&self, data: &[u8]) {
        let mut st = self.state();
        let clean = st.scrub.push(data);
        self.append(&mut st, &clean);
    }

    /// Appends a line from the daemon itself (e.g. that a rollback starts).
    pub(crate) fn note(&self, line: &str) {
        let mut st = self.state();
        let rest = st.scrub.finish();
        self.append(&mut st, &rest);
        self.append(&mut st, format!("[warden: {line}]\n").as_bytes());
    }

    /// Flushes what the scrubber still holds (end of the job's output).
    pub(crate) fn finish(&self) {
        let mut st = self.state();
        let rest = st.scrub.finish();
        self.append(&mut st, &rest);
    }

    fn append(&self, st: &mut State, data: &[u8]) {
        if data.is_empty() || st.truncated {
            return;
        }
        let room = st.cap.saturating_sub(st.written) as usize;
        let (kept, over) = if data.len() > room {
            (&data[..room], true)
        } else {
            (data, false)
        };
        let marker = format!("\n[warden: output truncated at {} bytes]\n", st.cap);
        let mut piece = kept.to_vec();
        if over {
            piece.extend_from_slice(marker.as_bytes());
            st.truncated = true;
        }
        if let LogFile::NotYet = st.file {
            st.file = match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.path)
            {
                Ok(f) => LogFile::Open(f),
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e,
                        "cannot create a job's log file; keeping its output in memory");
                    LogFile::Failed
                }
            };
        }
        if let LogFile::Open(f) = &mut st.file
            && f.write_all(&piece).is_err()
        {
            // A full disk must not stop the job; the tail in memory still has it.
            st.file = LogFile::Failed;
        }
        st.written += piece.len() as u64;
        st.tail.extend(piece);
        let excess = st.tail.len().saturating_sub(TAIL);
        st.tail.drain(..excess);
        self.grew.send_replace(st.written);
    }

    pub(crate) fn truncated(&self) -> bool {
        self.state().truncated
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.grew.subscribe()
    }

    /// Up to `max` bytes from offset `from`: from memory when the tail holds them, else from
    /// the file.
    pub(crate) fn read(&self, from: u64, max: usize) -> Chunk {
        let st = self.state();
        let tail_start = st.written - st.tail.len() as u64;
        if from >= tail_start {
            let skip = (from - tail_start) as usize;
            let data: Vec<u8> = st.tail.iter().skip(skip).take(max).copied().collect();
            let next = from + data.len() as u64;
            return Chunk { data, next };
        }
        drop(st);
        read_file(&self.path, from, max)
    }
}

/// Up to `max` bytes of the log at `path` from offset `from` (for jobs no longer in memory).
pub(crate) fn read_file(path: &Path, from: u64, max: usize) -> Chunk {
    let mut data = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path)
        && f.seek(SeekFrom::Start(from)).is_ok()
    {
        let _ = f.take(max as u64).read_to_end(&mut data);
    }
    let next = from + data.len() as u64;
    Chunk { data, next }
}

/// Cuts `data` back to the last whole UTF-8 character, so a chunk boundary never splits one.
/// Returns how many bytes to keep.
pub(crate) fn utf8_boundary(data: &[u8]) -> usize {
    match std::str::from_utf8(data) {
        Ok(_) => data.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => data.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(dir: &Path, cap: u64, secrets: &[&str]) -> Output {
        let secrets = secrets.iter().map(|s| s.as_bytes().to_vec()).collect();
        Output::create(dir.join("j.log"), cap, secrets)
    }

    #[test]
    fn output_is_capped_with_a_marker_and_the_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let out = log(dir.path(), 10, &[]);
        out.write(b"0123456");
        out.write(b"789abcdef");
        out.write(b"more");
        assert!(out.truncated());
        let text = std::fs::read_to_string(dir.path().join("j.log")).unwrap();
        assert_eq!(text, "0123456789\n[warden: output truncated at 10 bytes]\n");
        let r = out.read(0, 1000);
        assert_eq!(r.data, text.as_bytes());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("j.log"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn status_text_is_scrubbed_of_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let out = log(dir.path(), 1 << 20, &["hunter22"]);
        assert_eq!(
            out.scrub_text("copy using hunter22 now"),
            "copy using <redacted> now"
        );
        assert_eq!(out.scrub_text("commit"), "commit");
    }

    #[test]
    fn secrets_are_scrubbed_even_when_split_across_writes() {
        let dir = tempfile::tempdir().unwrap();
        let out = log(dir.path(), 1 << 20, &["hunter22", "ab"]);
        out.write(b"pass=hun");
        out.write(b"ter22; again hunter");
        out.write(b"22 ab end");
        out.finish();
        let text = std::fs::read_to_string(dir.path().join("j.log")).unwrap();
        assert_eq!(text, "pass=<redacted>; again <redacted> ab end");
    }

    #[test]
    fn reads_come_from_memory_or_the_file_and_follow_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let out = log(dir.path(), 1 << 30, &[]);
        let big = vec![b'x'; TAIL + 100];
        out.write(&big);
        out.write(b"end");
        let early = out.read(0, 10);
        assert_eq!((early.data.len(), early.next), (10, 10), "from the file");
        let late = out.read(big.len() as u64, 100);
        assert_eq!(late.data, b"end", "from memory");
        assert_eq!(*out.subscribe().borrow(), big.len() as u64 + 3);
    }

    #[test]
    fn chunks_end_on_whole_characters() {
        let s = "aé".as_bytes();
        assert_eq!(utf8_boundary(&s[..2]), 1);
        assert_eq!(utf8_boundary(s), 3);
        assert_eq!(
            utf8_boundary(b"\xff\xfe"),
            2,
            "invalid bytes are passed on, not held back"
        );
    }
}
