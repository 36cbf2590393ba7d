//! The audit log: what happened, who asked for it and what came of it, in
//! `state_dir/audit/audit.log` (directory 0700, file 0600). One JSON object per line; each names
//! its place (`seq`, from 1) and the SHA-256 of the line before it (`prev`; the first names
//! [`GENESIS`]), so a line that is changed, removed or moved breaks the chain where it was.
//!
//! It is a sink of its own, never a log level. A caller chains its record under one lock (the
//! order of the chain is the order of that lock) and leaves it in a buffer; one flusher thread
//! writes what the buffer holds and, if anyone waits, flushes it with one `fdatasync`. A caller
//! that must not answer before its record is on disk (a mutating request) waits for
//! [`AuditLog::record_durable`]; records chained while a flush runs go to disk with the next
//! one, so concurrent requests share one `fdatasync` (group commit), and no record costs a
//! hand-off to another thread unless the flusher is idle. Records handed to
//! [`AuditLog::record`] are written at once and reach the disk with the next flush.
//!
//! Secrets never reach it: callers pass parameters already redacted.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use rusqlite::OptionalExtension;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use warden_policy::AuditSettings;

use crate::events::Bus;

/// What the first record names as the line before it.
pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The log's file name in its directory.
pub(crate) const FILE: &str = "audit.log";

/// Who a record is about, as the kernel reported them at connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
    pub exe: Option<String>,
    pub client: Option<String>,
}

/// One thing that happened. Fields that do not apply are left out of the line.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Event {
    /// What kind of thing: `daemon.start`, `request`, `denied`, `job`, …
    pub event: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<Peer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// With secret values already replaced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

impl Event {
    pub(crate) fn new(event: &str) -> Event {
        Event {
            event: event.to_owned(),
            ..Event::default()
        }
    }
}

/// A record as written: its place in the chain (`seq`, `ts`, `prev`), then the fields of the
/// event `body` (the event as JSON). Spliced by hand: `#[serde(flatten)]` goes through a map
/// serializer, which showed in profiles of the write path.
fn encode(seq: u64, ts: &str, prev: &str, body: &[u8]) -> serde_json::Result<Vec<u8>> {
    let mut line = Vec::with_capacity(body.len() + 128);
    line.extend_from_slice(format!("{{\"seq\":{seq},\"ts\":").as_bytes());
    serde_json::to_writer(&mut line, ts)?;
    line.extend_from_slice(b",\"prev\":");
    serde_json::to_writer(&mut line, prev)?;
    // `body` is an object with at least `event`: splice its fields in after ours.
    line.push(b',');
    line.extend_from_slice(&body[1..]);
    Ok(line)
}

/// The last record written: where the chain continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub seq: u64,
    /// Hex SHA-256 of the last line (without its newline), or [`GENESIS`].
    pub hash: String,
}

/// Why a record could not be made durable.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuditError {
    #[error("cannot write the audit log: {0}")]
    Io(String),
    #[error("the audit log is closed")]
    Closed,
}

/// A waiter's answer: the record's place in the chain once it is on disk.
type Ack = oneshot::Sender<Result<Head, AuditError>>;

/// What is chained but not yet on disk, and who waits for it.
struct Pending {
    /// The last record chained (written or not).
    head: Head,
    /// Lines chained but not yet written, each ending in a newline.
    lines: Vec<u8>,
    /// Who waits, and the place each is answered with once it is on disk.
    acks: Vec<(Ack, Head)>,
    /// Heads to seal once they are on disk.
    seals: Vec<Head>,
    /// The flusher waits for work: the next record must wake it.
    idle: bool,
    /// No more records are taken; the flusher writes what is left and stops.
    closed: bool,
}

/// The chain shared by callers and the flusher.
struct Chain {
    pending: Mutex<Pending>,
    work: Condvar,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain").finish_non_exhaustive()
    }
}

impl Chain {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

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
fn segments(live: &Path) -> io::Result<Vec<PathBuf>> {
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

/// Records between seals.
pub(crate) const SEAL_EVERY: u64 = 1000;

/// Seals: `(seq, hash)` of the log's head every [`SEAL_EVERY`] records and at shutdown, kept in
/// the ledger database, away from the log. A log cut short, even while the daemon was stopped,
/// no longer reaches its last seal.
#[derive(Debug)]
pub(crate) struct Seals {
    conn: rusqlite::Connection,
}

impl Seals {
    /// Opens the seal table in the database at `path` (created 0600 if missing).
    pub(crate) fn open(path: &Path) -> io::Result<Seals> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        let sql = |e: rusqlite::Error| io::Error::other(e.to_string());
        let conn = rusqlite::Connection::open(path).map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        // A seal is rare and must hold: each one is flushed to disk.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS audit_seals (
                 seq INTEGER PRIMARY KEY, hash TEXT NOT NULL, ts TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS audit_anchor (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 seq INTEGER NOT NULL, hash TEXT NOT NULL, ts TEXT NOT NULL);",
        )
        .map_err(sql)?;
        Ok(Seals { conn })
    }

    /// Where the retained log begins: the last record removed by retention (`seq`, hash), from
    /// which the chain of what remains is checked. `None` while nothing was removed.
    pub(crate) fn anchor(&self) -> io::Result<Option<Head>> {
        self.conn
            .query_row("SELECT seq, hash FROM audit_anchor WHERE id = 1", [], |r| {
                Ok(Head {
                    seq: r.get::<_, i64>(0)? as u64,
                    hash: r.get(1)?,
                })
            })
            .optional()
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// Moves the anchor to `head` (records up to it are about to be removed) and drops the seals
    /// it covers, in one transaction flushed to disk.
    fn set_anchor(&mut self, head: &Head) -> io::Result<()> {
        let sql = |e: rusqlite::Error| io::Error::other(e.to_string());
        let tx = self.conn.transaction().map_err(sql)?;
        tx.execute(
            "INSERT OR REPLACE INTO audit_anchor (id, seq, hash, ts) VALUES (1, ?1, ?2, ?3)",
            rusqlite::params![head.seq as i64, head.hash, now_text()],
        )
        .map_err(sql)?;
        tx.execute("DELETE FROM audit_seals WHERE seq <= ?1", [head.seq as i64])
            .map_err(sql)?;
        tx.commit().map_err(sql)
    }

    fn put(&self, head: &Head) -> io::Result<()> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO audit_seals (seq, hash, ts) VALUES (?1, ?2, ?3)",
                rusqlite::params![head.seq as i64, head.hash, now_text()],
            )
            .map(|_| ())
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// Every seal, oldest first.
    pub(crate) fn all(&self) -> io::Result<Vec<Head>> {
        let sql = |e: rusqlite::Error| io::Error::other(e.to_string());
        let mut stmt = self
            .conn
            .prepare("SELECT seq, hash FROM audit_seals ORDER BY seq")
            .map_err(sql)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Head {
                    seq: r.get::<_, i64>(0)? as u64,
                    hash: r.get(1)?,
                })
            })
            .map_err(sql)?;
        rows.collect::<Result<_, _>>().map_err(sql)
    }
}

/// Handle to the audit log and its flusher thread.
#[derive(Debug)]
pub(crate) struct AuditLog {
    path: PathBuf,
    /// Shared with the flusher, which adds to them.
    seals: Arc<Mutex<Seals>>,
    /// Held (read) while the log's files are read; the flusher closes or removes segments only
    /// when it can take it (write) at once, and otherwise writes on and tries again next round.
    files: Arc<std::sync::RwLock<()>>,
    /// How many times the log was flushed to disk (group commit shows in it; read by tests).
    #[cfg_attr(not(test), allow(dead_code))]
    syncs: Arc<AtomicU64>,
    chain: Arc<Chain>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Hex SHA-256 of `line`. (By table: `format!` per byte showed in profiles of the write path.)
pub(crate) fn hash(line: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in Sha256::digest(line) {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
    out
}

impl AuditLog {
    /// Opens (creating) the log in `dir` and finds where its chain continues. A last line
    /// without its newline was cut off by a crash mid-write; it was never acknowledged (records
    /// are acknowledged only once flushed whole), so it is removed.
    ///
    /// The live file is closed as a segment at `settings.segment_bytes`; closed segments past
    /// `keep_segments` or `max_bytes` are removed, oldest first (see [`Flusher::retain`]).
    pub(crate) fn open(
        dir: &Path,
        seals: Seals,
        bus: Bus,
        settings: &AuditSettings,
    ) -> io::Result<AuditLog> {
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let path = dir.join(FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)?;
        let mut head = recover(&mut file)?;
        if head.seq == 0
            && let Some(last) = segments(&path)?.pop()
        {
            // The live file was begun by a rotation and holds nothing yet.
            head = recover(
                &mut std::fs::OpenOptions::new()
                    .read(true)
                    .append(true)
                    .open(last)?,
            )?;
        }
        // A log behind its last seal was cut short while the daemon was stopped. The chain goes
        // on from the seal, so the gap stays visible to `verify` instead of being written over.
        if let Some(last) = seals.all()?.pop()
            && last.seq > head.seq
        {
            tracing::error!(
                log_ends_at = head.seq,
                sealed = last.seq,
                "the audit log ends before its last seal: records were removed"
            );
            head = last;
        }
        let seals = Arc::new(Mutex::new(seals));
        let chain = Arc::new(Chain {
            pending: Mutex::new(Pending {
                head: head.clone(),
                lines: Vec::new(),
                acks: Vec::new(),
                seals: Vec::new(),
                idle: false,
                closed: false,
            }),
            work: Condvar::new(),
        });
        let syncs = Arc::new(AtomicU64::new(0));
        let files = Arc::new(std::sync::RwLock::new(()));
        let thread = std::thread::Builder::new()
            .name("warden-audit".into())
            .spawn({
                let flusher = Flusher {
                    len: file.metadata()?.len(),
                    file,
                    live: path.clone(),
                    rotate_at: settings.segment_bytes,
                    keep_segments: settings.keep_segments.max(1),
                    max_bytes: settings.max_bytes,
                    written: head,
                    syncs: Arc::clone(&syncs),
                    seals: Arc::clone(&seals),
                    files: Arc::clone(&files),
                    bus,
                };
                let chain = Arc::clone(&chain);
                move || flusher.run(&chain)
            })?;
        Ok(AuditLog {
            path,
            seals,
            files,
            syncs,
            chain,
            thread: Mutex::new(Some(thread)),
        })
    }

    #[cfg(test)]
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Every seal so far, oldest first.
    #[cfg(test)]
    pub(crate) fn seals(&self) -> io::Result<Vec<Head>> {
        self.seals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .all()
    }

    /// Checks the chain of the log's files against `head` (the last record the daemon knows it
    /// wrote), its seals and its anchor, whose `seq` comes back with the verdict. Blocks: run it
    /// off the runtime's threads. The flusher closes and removes no segment meanwhile.
    pub(crate) fn verify(&self, head: Option<&Head>) -> io::Result<(Verdict, Option<u64>)> {
        let _reading = self.files.read().unwrap_or_else(PoisonError::into_inner);
        let (seals, anchor) = {
            let store = self.seals.lock().unwrap_or_else(PoisonError::into_inner);
            (store.all()?, store.anchor()?)
        };
        let verdict = verify_from(&self.path, head, &seals, anchor.as_ref())?;
        Ok((verdict, anchor.map(|a| a.seq)))
    }

    /// [`query`] of the log's files. Blocks: run it off the runtime's threads. The flusher
    /// closes and removes no segment meanwhile.
    pub(crate) fn query(&self, filter: &Filter, limit: usize) -> io::Result<(Vec<Value>, bool)> {
        let _reading = self.files.read().unwrap_or_else(PoisonError::into_inner);
        query(&self.path, filter, limit)
    }

    /// Flushes to disk so far.
    #[cfg(test)]
    pub(crate) fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Chains `body` (an event as JSON) onto the log; `ack` is answered once it is on disk.
    /// Encoding is done before, outside the lock; under it only what fixes the order.
    fn chain(&self, body: &[u8], ack: Option<Ack>) -> Result<(), AuditError> {
        let mut p = self.chain.lock();
        if p.closed {
            return Err(AuditError::Closed);
        }
        push(&mut p, body, ack)?;
        self.wake(&mut p);
        Ok(())
    }

    /// Wakes the flusher if it waits for work. While it writes or flushes it is not woken: it
    /// looks for more before it waits.
    fn wake(&self, p: &mut Pending) {
        if p.idle {
            p.idle = false;
            self.chain.work.notify_one();
        }
    }

    /// Appends `event`; it reaches the disk with the next flush.
    pub(crate) fn record(&self, event: Event) {
        if let Err(e) = body_of(&event).and_then(|body| self.chain(&body, None)) {
            tracing::error!(error = %e, "an audit record was lost");
        }
    }

    /// Appends `event` and returns once it is on disk, with its place in the chain.
    pub(crate) async fn record_durable(&self, event: &Event) -> Result<Head, AuditError> {
        let body = body_of(event)?;
        let (ack, done) = oneshot::channel();
        self.chain(&body, Some(ack))?;
        done.await.map_err(|_| AuditError::Closed)?
    }

    /// Returns once every record chained before is on disk, with the chain's head.
    pub(crate) async fn flush(&self) -> Result<Head, AuditError> {
        let (ack, done) = oneshot::channel();
        {
            let mut p = self.chain.lock();
            if p.closed {
                return Err(AuditError::Closed);
            }
            let head = p.head.clone();
            p.acks.push((ack, head));
            self.wake(&mut p);
        }
        done.await.map_err(|_| AuditError::Closed)?
    }

    /// Writes and flushes what is chained, then stops the flusher.
    pub(crate) fn close(&self) {
        {
            let mut p = self.chain.lock();
            p.closed = true;
            self.chain.work.notify_one();
        }
        if let Some(t) = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = t.join();
        }
    }
}

/// Chains `body` (an event as JSON) after the head in `p`; `ack` is answered once it is on disk.
fn push(p: &mut Pending, body: &[u8], ack: Option<Ack>) -> Result<(), AuditError> {
    let line = encode(p.head.seq + 1, &now_text(), &p.head.hash, body)
        .map_err(|e| AuditError::Io(format!("cannot encode a record: {e}")))?;
    p.head = Head {
        seq: p.head.seq + 1,
        hash: hash(&line),
    };
    if p.head.seq.is_multiple_of(SEAL_EVERY) {
        let head = p.head.clone();
        p.seals.push(head);
    }
    p.lines.extend_from_slice(&line);
    p.lines.push(b'\n');
    if let Some(ack) = ack {
        let head = p.head.clone();
        p.acks.push((ack, head));
    }
    Ok(())
}

/// `event` as JSON, for [`encode`]: an object with at least `event`.
fn body_of(event: &Event) -> Result<Vec<u8>, AuditError> {
    serde_json::to_vec(event).map_err(|e| AuditError::Io(format!("cannot encode a record: {e}")))
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.close();
    }
}

/// The head of the chain in `file`, cutting off a last line the daemon never finished.
fn recover(file: &mut File) -> io::Result<Head> {
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
fn last_line(mut file: &File) -> io::Result<(Option<Vec<u8>>, u64)> {
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

fn now_text() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// The flusher thread's own state: the file and what it holds.
struct Flusher {
    file: File,
    live: PathBuf,
    rotate_at: u64,
    /// Closed segments kept (at least 1).
    keep_segments: usize,
    /// Bytes of closed segments kept; 0: no limit besides `keep_segments`.
    max_bytes: u64,
    /// The live file's length, kept here rather than asked of the kernel every round.
    len: u64,
    /// The last record written to the file.
    written: Head,
    syncs: Arc<AtomicU64>,
    seals: Arc<Mutex<Seals>>,
    files: Arc<std::sync::RwLock<()>>,
    bus: Bus,
}

/// One round of the flusher: what it took from the chain.
struct Round {
    lines: Vec<u8>,
    acks: Vec<(Ack, Head)>,
    seals: Vec<Head>,
    /// The head of the chain when the round was taken: the last of `lines`.
    head: Head,
    closing: bool,
}

impl Flusher {
    /// Takes what is chained, writes it in one go, flushes once if anyone waits, answers, and
    /// goes round again; waits only when nothing is chained. Records chained meanwhile go with
    /// the next round, so each flush covers all that came while the one before it ran.
    fn run(mut self, chain: &Chain) {
        // A retention the settings now ask for, or one a crash left half done. (No one reads
        // the files yet.)
        let files = Arc::clone(&self.files);
        if let Ok(_alone) = files.try_write() {
            self.retain(chain);
        }
        // Reused round to round: the buffer keeps its capacity.
        let mut spare = Vec::new();
        loop {
            let round = {
                let mut p = chain.lock();
                while p.lines.is_empty() && p.acks.is_empty() && !p.closed {
                    p.idle = true;
                    p = chain.work.wait(p).unwrap_or_else(PoisonError::into_inner);
                }
                p.idle = false;
                spare.clear();
                Round {
                    lines: std::mem::replace(&mut p.lines, std::mem::take(&mut spare)),
                    acks: std::mem::take(&mut p.acks),
                    seals: std::mem::take(&mut p.seals),
                    head: p.head.clone(),
                    closing: p.closed,
                }
            };
            let closing = round.closing;
            spare = self.round(chain, round);
            if closing {
                break;
            }
        }
        match self.file.sync_data() {
            Ok(()) if self.written.seq > 0 => self.seal(&self.written),
            Ok(()) => {}
            Err(e) => tracing::error!(error = %e, "cannot flush the audit log at close"),
        }
    }

    /// Writes and flushes one round; returns its buffer for the next.
    fn round(&mut self, chain: &Chain, round: Round) -> Vec<u8> {
        let Round {
            mut lines,
            acks,
            seals,
            head,
            ..
        } = round;
        if !lines.is_empty() {
            if let Err(e) = self.append(&lines) {
                // What this round chained is lost, and so is what was chained onto it since:
                // the chain goes on from the last record the file holds.
                let mut p = chain.lock();
                let later = std::mem::take(&mut p.acks);
                p.lines.clear();
                p.seals.clear();
                p.head = self.written.clone();
                drop(p);
                tracing::error!(error = %e, "cannot write the audit log; the records not yet written are lost");
                for (ack, _) in acks.into_iter().chain(later) {
                    let _ = ack.send(Err(AuditError::Io(e.to_string())));
                }
                lines.clear();
                return lines;
            }
            self.written = head;
            if self.bus.listened() {
                for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    if let Ok(record) = serde_json::from_slice::<Value>(line) {
                        self.bus.publish("audit", None, record);
                    }
                }
            }
        }
        // A seal may only name records that are on disk.
        if !acks.is_empty() || !seals.is_empty() {
            self.syncs.fetch_add(1, Ordering::Relaxed);
            let flushed = self.file.sync_data();
            if let Err(e) = &flushed {
                tracing::error!(error = %e, "cannot flush the audit log; the requests waiting on it are refused");
            } else {
                seals.iter().for_each(|h| self.seal(h));
            }
            // A failed flush is answered as an error: the records stay in the file, but
            // nothing that waited on them is acknowledged, so no request they name goes ahead.
            for (ack, at) in acks {
                let answer = match &flushed {
                    Ok(()) => Ok(at),
                    Err(e) => Err(AuditError::Io(e.to_string())),
                };
                let _ = ack.send(answer);
            }
        }
        if self.len >= self.rotate_at {
            // Not while a reader goes through the files: the live file grows a little past its
            // size instead, and is closed in a later round.
            let files = Arc::clone(&self.files);
            if let Ok(_alone) = files.try_write() {
                self.rotate();
                self.retain(chain);
            }
        }
        lines
    }

    fn append(&mut self, lines: &[u8]) -> io::Result<()> {
        append(&self.file, &mut self.len, lines)
    }

    /// Closes the live file as a segment; on failure writes on where it is.
    fn rotate(&mut self) {
        match rotate(&self.file, &self.live, self.written.seq) {
            Ok(next) => self.file = next,
            Err(e) => {
                tracing::error!(error = %e, "cannot close the audit log's segment; writing on");
            }
        }
        // Whichever file a rotation left live, half done or not.
        self.len = self.file.metadata().map_or(self.len, |m| m.len());
    }

    /// Removes the oldest closed segments past `keep_segments` or `max_bytes` (the newest
    /// closed one always stays). First the anchor moves to the last record removed (its `seq`
    /// and the hash of its line, in the seal database, flushed), then the files go, then a
    /// record `audit.retention` names what went and is sealed: what remains still verifies,
    /// from the anchor on, and removing more than retention did shows as records missing.
    fn retain(&mut self, chain: &Chain) {
        let cut = match self.cut() {
            Ok(Some(cut)) => cut,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, "cannot remove old audit segments; keeping them");
                return;
            }
        };
        tracing::info!(
            segments = cut.segments.len(),
            first_seq = cut.first_seq,
            last_seq = cut.last_seq,
            "removed old audit segments"
        );
        let event = Event {
            reason: Some(format!(
                "retention removed {} segment(s), records {} to {}; the chain goes on from \
                 record {} (hash {})",
                cut.segments.len(),
                cut.first_seq,
                cut.last_seq,
                cut.last_seq,
                cut.hash
            )),
            params: Some(serde_json::json!({
                "segments": cut.segments,
                "first_seq": cut.first_seq,
                "last_seq": cut.last_seq,
                "hash": cut.hash,
            })),
            ..Event::new("audit.retention")
        };
        let mut p = chain.lock();
        match body_of(&event).and_then(|body| push(&mut p, &body, None)) {
            Ok(()) => {
                let head = p.head.clone();
                p.seals.push(head);
            }
            Err(e) => tracing::error!(error = %e, "an audit record was lost"),
        }
    }

    /// Chooses the segments to remove, moves the anchor past them and removes them.
    fn cut(&mut self) -> io::Result<Option<Cut>> {
        let anchor = self
            .seals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .anchor()?;
        let anchored = anchor.as_ref().map_or(0, |a| a.seq);
        let mut segs = Vec::new();
        let mut left_over = false;
        for seg in segments(&self.live)? {
            if segment_last_seq(&seg).is_some_and(|last| last <= anchored) {
                // Behind the anchor: a cut a crash interrupted after moving the anchor.
                remove_segment(&seg)?;
                left_over = true;
            } else {
                segs.push(seg);
            }
        }
        let sizes: Vec<u64> = segs
            .iter()
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .collect();
        let mut total: u64 = sizes.iter().sum();
        let mut n = 0;
        while segs.len() - n > 1
            && (segs.len() - n > self.keep_segments
                || (self.max_bytes > 0 && total > self.max_bytes))
        {
            total -= sizes[n];
            n += 1;
        }
        if n == 0 {
            if left_over {
                sync_dir(&self.live)?;
            }
            return Ok(None);
        }
        let cut = &segs[..n];
        let last = &cut[n - 1];
        let last_seq = segment_last_seq(last).unwrap_or(0);
        let (line, _) = last_line(&File::open(last)?)?;
        let Some(line) = line else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} holds no record", last.display()),
            ));
        };
        let head = Head {
            seq: last_seq,
            hash: hash(&line),
        };
        self.seals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set_anchor(&head)?;
        for seg in cut {
            remove_segment(seg)?;
        }
        sync_dir(&self.live)?;
        Ok(Some(Cut {
            segments: cut
                .iter()
                .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
                .collect(),
            first_seq: anchored + 1,
            last_seq,
            hash: head.hash,
        }))
    }

    fn seal(&self, head: &Head) {
        let store = self.seals.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = store.put(head) {
            tracing::error!(error = %e, seq = head.seq, "cannot store an audit seal");
        }
    }
}
/// What one retention removed.
struct Cut {
    /// File names, oldest first.
    segments: Vec<String>,
    first_seq: u64,
    last_seq: u64,
    /// Hash of the last removed record's line: the anchor.
    hash: String,
}

fn remove_segment(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Flushes the directory of `live`, so a rename or removal in it survives a crash.
fn sync_dir(live: &Path) -> io::Result<()> {
    match live.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Closes the live file as the segment ending at `last_seq` and returns the new live file.
fn rotate(file: &File, live: &Path, last_seq: u64) -> io::Result<File> {
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
fn append(mut file: &File, len: &mut u64, buf: &[u8]) -> io::Result<()> {
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
struct Window {
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
                    ..Event::new("denied.summary")
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

/// The longest line [`verify`] and [`query`] hold in memory; a longer one is not a record the
/// daemon wrote (a request's parameters are far smaller), and is read past, not kept.
pub(crate) const MAX_LINE: usize = 32 << 20;

/// One line of a log as [`Lines`] reads it.
enum Line<'a> {
    Text(&'a [u8]),
    /// Longer than [`MAX_LINE`]; skipped.
    TooLong,
}

/// The lines of a log's files, oldest file first, read one at a time through one buffer: what
/// [`verify`] and [`query`] hold is one file handle and one line, whatever the log's size.
pub(crate) struct Lines {
    files: std::vec::IntoIter<PathBuf>,
    current: Option<io::BufReader<File>>,
    line: Vec<u8>,
    /// Files opened so far (read by tests).
    #[cfg_attr(not(test), allow(dead_code))]
    opened: usize,
}

impl Lines {
    fn new(files: Vec<PathBuf>) -> Lines {
        Lines {
            files: files.into_iter(),
            current: None,
            line: Vec::new(),
            opened: 0,
        }
    }

    /// The next non-empty line, without its newline; `None` at the end of the last file.
    fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        loop {
            let Some(reader) = &mut self.current else {
                let Some(path) = self.files.next() else {
                    return Ok(None);
                };
                match File::open(&path) {
                    Ok(f) => {
                        self.opened += 1;
                        self.current = Some(io::BufReader::with_capacity(64 * 1024, f));
                    }
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

use io::BufRead as _;

/// What [`verify`] reads of a line: its place and the hash it names as the one before.
#[derive(serde::Deserialize)]
struct Link {
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    prev: Option<String>,
}

/// One line's `seq`, `prev` and hash (`None`s for a line that is not a record).
fn link(line: &Line<'_>) -> (Option<u64>, Option<String>, String) {
    match line {
        Line::Text(l) => {
            let link = serde_json::from_slice::<Link>(l).ok();
            let (seq, prev) = link.map_or((None, None), |l| (l.seq, l.prev));
            (seq, prev, hash(l))
        }
        Line::TooLong => (None, None, String::new()),
    }
}

/// The files of the log at `live` still to be read for records after `after` (closed segments
/// that end at or before it are left out), oldest first.
fn files_after(live: &Path, after: u64) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = segments(live)?
        .into_iter()
        .filter(|p| segment_last_seq(p).is_none_or(|last| last > after))
        .collect();
    files.push(live.to_owned());
    Ok(files)
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

fn verify_lines(
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

/// What [`query`] selects; every field narrows it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub since: Option<std::time::SystemTime>,
    pub until: Option<std::time::SystemTime>,
    pub uid: Option<u32>,
    pub action: Option<String>,
    pub job_id: Option<String>,
    pub decision: Option<String>,
    pub after_seq: Option<u64>,
}

impl Filter {
    fn matches(&self, r: &Value) -> bool {
        let text = |key: &str, want: &Option<String>| {
            want.as_deref().is_none_or(|w| r[key].as_str() == Some(w))
        };
        let ts = || {
            r["ts"]
                .as_str()
                .and_then(|t| humantime::parse_rfc3339(t).ok())
        };
        self.after_seq
            .is_none_or(|after| r["seq"].as_u64().is_some_and(|s| s > after))
            && self
                .uid
                .is_none_or(|u| r["peer"]["uid"].as_u64() == Some(u64::from(u)))
            && text("action", &self.action)
            && text("job_id", &self.job_id)
            && text("decision", &self.decision)
            && self.since.is_none_or(|t| ts().is_some_and(|ts| ts >= t))
            && self.until.is_none_or(|t| ts().is_some_and(|ts| ts < t))
    }
}

/// Records of the log at `path` that match `filter`, oldest first, at most `limit` of them,
/// and whether matching records were left out. With `filter.after_seq`, the first `limit`
/// after it (so a caller pages on from the last one it got, and gets each record once);
/// without, the newest `limit`. Reads a line at a time and keeps at most `limit` records.
pub(crate) fn query(path: &Path, filter: &Filter, limit: usize) -> io::Result<(Vec<Value>, bool)> {
    let mut kept = std::collections::VecDeque::with_capacity(limit.min(1024));
    let mut more = false;
    if limit == 0 {
        return Ok((Vec::new(), false));
    }
    let mut lines = Lines::new(files_after(path, filter.after_seq.unwrap_or(0))?);
    while let Some(line) = lines.next_line()? {
        let Line::Text(line) = line else {
            continue;
        };
        let Ok(record) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        if !filter.matches(&record) {
            continue;
        }
        if kept.len() == limit {
            more = true;
            if filter.after_seq.is_some() {
                break;
            }
            kept.pop_front();
        }
        kept.push_back(record);
    }
    Ok((kept.into(), more))
}

fn broken(seq: u64, problem: Problem) -> io::Result<Verdict> {
    Ok(Verdict::Broken { seq, problem })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log in `dir/audit` with its seals in `dir/ledger.db`.
    fn open_in(dir: &Path) -> AuditLog {
        AuditLog::open(
            &dir.join("audit"),
            Seals::open(&dir.join("ledger.db")).unwrap(),
            Bus::default(),
            &AuditSettings::default(),
        )
        .unwrap()
    }

    fn event(n: u32) -> Event {
        Event {
            job_id: Some(format!("job_{n:016x}")),
            ..Event::new("job")
        }
    }

    /// A log of `n` records in a fresh directory; returns the directory, the log and its head.
    async fn log_of(n: u32) -> (tempfile::TempDir, PathBuf, Head) {
        let dir = tempfile::tempdir().unwrap();
        let log = open_in(dir.path());
        for i in 1..n {
            log.record(event(i));
        }
        let head = log.record_durable(&event(n)).await.unwrap();
        let path = log.path().to_owned();
        log.close();
        (dir, path, head)
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn write_lines(path: &Path, lines: &[String]) {
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(path, text).unwrap();
    }

    /// Pins: a record's line is the event's fields after seq, ts and prev, as one JSON object.
    #[test]
    fn a_record_is_one_object_seq_first() {
        let body = body_of(&event(3)).unwrap();
        let line = encode(7, "2026-11-29T23:00:00.000Z", GENESIS, &body).unwrap();
        let text = String::from_utf8(line).unwrap();
        assert!(
            text.starts_with("{\"seq\":7,\"ts\":\"2026-11-29T23:00:00.000Z\",\"prev\":\"000"),
            "{text}"
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["event"], "job");
        assert_eq!(v["job_id"], format!("job_{:016x}", 3));
        assert_eq!(v.as_object().unwrap().len(), 5);
    }

    /// Pins: a durable record returns only after a flush of the log; a plain one causes none.
    #[tokio::test]
    async fn a_durable_record_is_flushed_before_it_is_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let log = open_in(dir.path());
        log.record(event(1));
        log.record_durable(&event(2)).await.unwrap();
        assert_eq!(log.syncs(), 1, "acknowledged after exactly one flush");
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert_eq!(text.lines().count(), 2);
        log.close();
    }

    /// Pins: records the disk refuses (every write fails with ENOSPC, every flush with EINVAL)
    /// are answered with errors, never acknowledged, and the log goes on answering.
    #[tokio::test]
    async fn a_record_that_cannot_be_written_is_refused_not_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir.path().join("audit"))
            .unwrap();
        std::os::unix::fs::symlink("/dev/full", dir.path().join("audit").join(FILE)).unwrap();
        let log = open_in(dir.path());
        for n in 0..3 {
            let refused = log.record_durable(&event(n)).await;
            assert!(matches!(refused, Err(AuditError::Io(_))), "{refused:?}");
        }
        log.record(event(3));
        assert!(log.flush().await.is_err());
        assert!(matches!(
            log.record_durable(&event(4)).await,
            Err(AuditError::Io(_))
        ));
        log.close();
    }

    /// Pins: records chain from GENESIS with consecutive seq, the files are private, and an
    /// untouched log verifies.
    #[tokio::test]
    async fn an_untouched_log_verifies_and_is_private() {
        let (dir, path, head) = log_of(10).await;
        assert_eq!(head.seq, 10);
        let all = lines(&path);
        assert_eq!(all.len(), 10);
        let first: Value = serde_json::from_str(&all[0]).unwrap();
        assert_eq!(
            (first["seq"].as_u64(), first["prev"].as_str()),
            (Some(1), Some(GENESIS))
        );
        assert_eq!(first["event"], "job");
        assert_eq!(hash(all[9].as_bytes()), head.hash);
        assert_eq!(
            hash(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "SHA-256, in lowercase hex"
        );
        assert_eq!(
            verify(&path, Some(&head), &[]).unwrap(),
            Verdict::Intact { records: 10 }
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("audit")), 0o700);
    }

    /// Pins: each kind of tampering is found at the first record it touches.
    #[tokio::test]
    async fn tampering_is_named_at_its_first_bad_record() {
        let (_dir, path, head) = log_of(10).await;
        let good = lines(&path);
        let check = |lines: Vec<String>, head: Option<&Head>| {
            write_lines(&path, &lines);
            verify(&path, head, &[]).unwrap()
        };
        // A byte changed inside record 4 (not its seq).
        let mut edited = good.clone();
        edited[3] = edited[3].replace("\"job\"", "\"jab\"");
        assert_eq!(
            check(edited, Some(&head)),
            Verdict::Broken {
                seq: 4,
                problem: Problem::Modified
            }
        );
        // The last record changed: only the daemon's head can tell.
        let mut last = good.clone();
        last[9] = last[9].replace("\"job\"", "\"jab\"");
        assert_eq!(
            check(last.clone(), Some(&head)),
            Verdict::Broken {
                seq: 10,
                problem: Problem::Modified
            }
        );
        assert_eq!(check(last, None), Verdict::Intact { records: 10 });
        // Record 5 deleted.
        let mut deleted = good.clone();
        deleted.remove(4);
        assert_eq!(
            check(deleted, Some(&head)),
            Verdict::Broken {
                seq: 5,
                problem: Problem::Missing
            }
        );
        // Records 6 and 7 swapped.
        let mut swapped = good.clone();
        swapped.swap(5, 6);
        assert_eq!(
            check(swapped, Some(&head)),
            Verdict::Broken {
                seq: 6,
                problem: Problem::Reordered
            }
        );
        // The last three cut off.
        let cut = good[..7].to_vec();
        assert_eq!(
            check(cut, Some(&head)),
            Verdict::Broken {
                seq: 8,
                problem: Problem::Truncated
            }
        );
        // A record's own number changed.
        let mut renumbered = good.clone();
        renumbered[2] = renumbered[2].replacen("\"seq\":3", "\"seq\":30", 1);
        assert_eq!(
            check(renumbered, Some(&head)),
            Verdict::Broken {
                seq: 3,
                problem: Problem::Modified
            }
        );
        // Garbage in place of a record.
        let mut garbage = good.clone();
        garbage[0] = "not json".into();
        assert_eq!(
            check(garbage, Some(&head)),
            Verdict::Broken {
                seq: 1,
                problem: Problem::Modified
            }
        );
        assert_eq!(check(good, Some(&head)), Verdict::Intact { records: 10 });
    }

    /// Pins: a reopened log continues the chain, after cutting off a last line a crash left half
    /// written.
    #[tokio::test]
    async fn a_reopened_log_continues_its_chain_past_a_torn_line() {
        let (dir, path, _) = log_of(3).await;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"seq\":4,\"ts\":\"2026").unwrap();
        drop(f);
        let log = open_in(dir.path());
        let head = log.record_durable(&event(4)).await.unwrap();
        log.close();
        assert_eq!(head.seq, 4);
        assert_eq!(
            verify(&path, Some(&head), &[]).unwrap(),
            Verdict::Intact { records: 4 }
        );
    }

    /// Pins: concurrent durable records all land, each acknowledged only once on disk, in one
    /// unbroken chain.
    /// Pins: the head is sealed every SEAL_EVERY records and at close; a log cut short while
    /// the daemon was stopped is found short of its last seal, and a reopened log goes on from
    /// the seal so the gap stays visible.
    #[tokio::test]
    async fn seals_find_a_log_cut_short_while_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let log = open_in(dir.path());
        for i in 0..2499 {
            log.record(event(i));
        }
        log.record_durable(&event(2499)).await.unwrap();
        let path = log.path().to_owned();
        log.close();
        drop(log);
        let seals = Seals::open(&dir.path().join("ledger.db"))
            .unwrap()
            .all()
            .unwrap();
        let sealed: Vec<u64> = seals.iter().map(|h| h.seq).collect();
        assert_eq!(sealed, [1000, 2000, 2500]);
        assert_eq!(
            verify(&path, None, &seals).unwrap(),
            Verdict::Intact { records: 2500 }
        );

        let cut: Vec<String> = lines(&path)[..1500].to_vec();
        write_lines(&path, &cut);
        assert_eq!(
            verify(&path, None, &seals).unwrap(),
            Verdict::Broken {
                seq: 1501,
                problem: Problem::Truncated
            }
        );
        let log = open_in(dir.path());
        let head = log.record_durable(&event(9)).await.unwrap();
        assert_eq!(head.seq, 2501, "the chain goes on from the last seal");
        let seals = log.seals().unwrap();
        assert_eq!(
            verify(&path, Some(&head), &seals).unwrap(),
            Verdict::Broken {
                seq: 1501,
                problem: Problem::Missing
            }
        );
        log.close();
    }

    /// Pins: a query selects by uid, action, job, decision, time and position, newest `limit`
    /// last.
    #[tokio::test]
    async fn queries_narrow_by_each_field() {
        let dir = tempfile::tempdir().unwrap();
        let log = open_in(dir.path());
        for uid in [1000, 1001, 1000] {
            log.record(Event {
                peer: Some(Peer {
                    uid,
                    gid: uid,
                    pid: 1,
                    exe: None,
                    client: None,
                }),
                action: Some("restart-unit".into()),
                decision: Some(if uid == 1000 { "deny" } else { "allow" }.into()),
                ..Event::new("request")
            });
        }
        let head = log.record_durable(&event(7)).await.unwrap();
        let path = log.path().to_owned();
        log.close();
        let seqs = |f: Filter, limit| -> Vec<u64> {
            query(&path, &f, limit)
                .unwrap()
                .0
                .iter()
                .map(|r| r["seq"].as_u64().unwrap())
                .collect()
        };
        assert_eq!(seqs(Filter::default(), 100), [1, 2, 3, 4]);
        assert_eq!(
            seqs(Filter::default(), 2),
            [3, 4],
            "the newest, oldest first"
        );
        assert_eq!(
            seqs(
                Filter {
                    uid: Some(1000),
                    ..Filter::default()
                },
                100
            ),
            [1, 3]
        );
        assert_eq!(
            seqs(
                Filter {
                    decision: Some("allow".into()),
                    ..Filter::default()
                },
                100
            ),
            [2]
        );
        assert_eq!(
            seqs(
                Filter {
                    job_id: Some(format!("job_{:016x}", 7)),
                    ..Filter::default()
                },
                100
            ),
            [4]
        );
        assert_eq!(
            seqs(
                Filter {
                    after_seq: Some(2),
                    ..Filter::default()
                },
                100
            ),
            [3, 4]
        );
        let future = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        assert!(
            seqs(
                Filter {
                    since: Some(future),
                    ..Filter::default()
                },
                100
            )
            .is_empty()
        );
        assert_eq!(
            seqs(
                Filter {
                    until: Some(future),
                    ..Filter::default()
                },
                100
            )
            .len(),
            4
        );
        assert_eq!(head.seq, 4);
    }

    /// Pins: the live file is closed into segments as it fills; verify and query read across
    /// them as one chain; a restart on a freshly begun (empty) live file goes on from the last
    /// segment.
    #[tokio::test]
    async fn the_chain_goes_on_across_rotated_segments() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            AuditLog::open(
                &dir.path().join("audit"),
                Seals::open(&dir.path().join("ledger.db")).unwrap(),
                Bus::default(),
                &AuditSettings {
                    segment_bytes: 4096,
                    keep_segments: 1_000_000,
                    ..AuditSettings::default()
                },
            )
            .unwrap()
        };
        let log = open();
        for i in 0..200 {
            log.record_durable(&event(i)).await.unwrap();
        }
        let path = log.path().to_owned();
        log.close();
        drop(log);
        let segs = segments(&path).unwrap();
        assert!(segs.len() > 3, "{segs:?}");
        use std::os::unix::fs::PermissionsExt;
        for s in &segs {
            let mode = std::fs::metadata(s).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", s.display());
        }
        let seals = Seals::open(&dir.path().join("ledger.db"))
            .unwrap()
            .all()
            .unwrap();
        assert_eq!(
            verify(&path, None, &seals).unwrap(),
            Verdict::Intact { records: 200 }
        );
        assert_eq!(query(&path, &Filter::default(), 1000).unwrap().0.len(), 200);

        // As if the daemon stopped right after closing a segment.
        let last = lines(&path).len() as u64;
        let closed = path.with_file_name(format!("audit.{:012}.log", 200));
        std::fs::rename(&path, &closed).unwrap();
        std::fs::write(&path, b"").unwrap();
        assert!(last > 0);
        let log = open();
        let head = log.record_durable(&event(201)).await.unwrap();
        assert_eq!(head.seq, 201);
        log.close();
        let seals = Seals::open(&dir.path().join("ledger.db"))
            .unwrap()
            .all()
            .unwrap();
        assert_eq!(
            verify(&path, Some(&head), &seals).unwrap(),
            Verdict::Intact { records: 201 }
        );
    }

    /// Pins: a uid gets DENIALS_RECORDED denial records per window, the rest are counted into
    /// one summary, and another uid is not affected.
    #[test]
    fn denial_floods_are_summed_up_per_uid() {
        let d = Denials::default();
        let t0 = std::time::Instant::now();
        let verdicts: Vec<(bool, bool)> = (0..250).map(|_| d.admit(1000, t0)).collect();
        assert_eq!(
            verdicts.iter().filter(|v| v.0).count(),
            DENIALS_RECORDED as usize
        );
        assert_eq!(
            verdicts.iter().filter(|v| v.1).count(),
            1,
            "the flood begins once"
        );
        assert!(verdicts[DENIALS_RECORDED as usize].1);
        assert!(d.admit(1001, t0).0, "another uid has its own share");
        assert!(
            d.summaries(t0, false).is_empty(),
            "the window is still open"
        );
        let later = t0 + DENIAL_WINDOW;
        let sums = d.summaries(later, false);
        assert_eq!(sums.len(), 1);
        assert_eq!(sums[0].peer.as_ref().unwrap().uid, 1000);
        assert!(
            sums[0]
                .reason
                .as_ref()
                .unwrap()
                .starts_with("150 more denials"),
            "{:?}",
            sums[0].reason
        );
        assert!(d.admit(1000, later).0, "a new window records again");
    }

    /// A log in `dir/audit` closing segments at 4 KiB and keeping `keep` of them.
    fn open_small(dir: &Path, keep: usize) -> AuditLog {
        AuditLog::open(
            &dir.join("audit"),
            Seals::open(&dir.join("ledger.db")).unwrap(),
            Bus::default(),
            &AuditSettings {
                segment_bytes: 4096,
                keep_segments: keep,
                ..AuditSettings::default()
            },
        )
        .unwrap()
    }

    /// The seals and anchor of the log in `dir`.
    fn sealed(dir: &Path) -> (Vec<Head>, Option<Head>) {
        let s = Seals::open(&dir.join("ledger.db")).unwrap();
        (s.all().unwrap(), s.anchor().unwrap())
    }

    /// Pins: retention removes the oldest segments past `keep_segments`, records what it removed
    /// (segments, seq range, hash at the cut) and seals; what remains verifies from the anchor,
    /// and tampering in a kept segment, removing more than retention did, or truncating the
    /// newest records is still found.
    #[tokio::test]
    async fn retention_removes_old_segments_and_what_remains_still_proves_itself() {
        let dir = tempfile::tempdir().unwrap();
        let log = open_small(dir.path(), 3);
        // Durable every few records: the live file is closed between rounds of the flusher.
        for i in 0..400 {
            log.record(event(i));
            if i % 4 == 0 {
                log.flush().await.unwrap();
            }
        }
        let head = log.record_durable(&event(400)).await.unwrap();
        let path = log.path().to_owned();
        // The log may be checked while the daemon writes (see `AuditLog::verify`).
        let (verdict, anchored) = log.verify(Some(&head)).unwrap();
        assert!(anchored.is_some());
        assert!(matches!(verdict, Verdict::Intact { .. }), "{verdict:?}");
        log.close();
        let segs = segments(&path).unwrap();
        assert_eq!(segs.len(), 3, "{segs:?}");
        let (seals, anchor) = sealed(dir.path());
        let anchor = anchor.expect("an anchor once segments were removed");
        assert_eq!(
            anchor.seq + 1,
            segment_last_seq(&segs[0]).unwrap() + 1 - lines(&segs[0]).len() as u64,
            "the anchor is the record just before the oldest kept"
        );
        let first_kept: Value = serde_json::from_str(&lines(&segs[0])[0]).unwrap();
        assert_eq!(first_kept["prev"], anchor.hash.as_str());
        // What retention removed is on record, and sealed.
        let cuts: Vec<Value> = query(&path, &Filter::default(), 1000)
            .unwrap()
            .0
            .into_iter()
            .filter(|r| r["event"] == "audit.retention")
            .collect();
        let last_cut = cuts.last().expect("a retention record");
        assert_eq!(last_cut["params"]["last_seq"], anchor.seq);
        assert_eq!(last_cut["params"]["hash"], anchor.hash.as_str());
        let cut_seq = last_cut["seq"].as_u64().unwrap();
        assert!(seals.iter().any(|s| s.seq == cut_seq), "the cut is sealed");
        assert_eq!(
            verify_from(&path, Some(&head), &seals, Some(&anchor)).unwrap(),
            Verdict::Intact {
                records: head.seq - anchor.seq
            }
        );

        // A changed record in a kept segment.
        let good = lines(&segs[1]);
        let mut edited = good.clone();
        edited[2] = edited[2].replace("\"job\"", "\"jab\"");
        let edited_seq = serde_json::from_str::<Value>(&good[2]).unwrap()["seq"]
            .as_u64()
            .unwrap();
        write_lines(&segs[1], &edited);
        assert_eq!(
            verify_from(&path, None, &seals, Some(&anchor)).unwrap(),
            Verdict::Broken {
                seq: edited_seq,
                problem: Problem::Modified
            }
        );
        write_lines(&segs[1], &good);
        // The oldest kept segment removed too, beyond what retention did.
        let oldest = lines(&segs[0]);
        std::fs::remove_file(&segs[0]).unwrap();
        assert_eq!(
            verify_from(&path, None, &seals, Some(&anchor)).unwrap(),
            Verdict::Broken {
                seq: anchor.seq + 1,
                problem: Problem::Missing
            }
        );
        write_lines(&segs[0], &oldest);
        // The newest records cut off.
        let live = lines(&path);
        let cut_at = serde_json::from_str::<Value>(&live[live.len() - 3]).unwrap()["seq"]
            .as_u64()
            .unwrap();
        write_lines(&path, &live[..live.len() - 3]);
        let (seals, anchor) = sealed(dir.path());
        assert_eq!(
            verify_from(&path, None, &seals, anchor.as_ref()).unwrap(),
            Verdict::Broken {
                seq: cut_at,
                problem: Problem::Truncated
            }
        );
    }

    /// Pins: a cut that a crash interrupted after moving the anchor (its segments still there)
    /// is finished at the next open, and the log goes on verifying.
    #[tokio::test]
    async fn a_cut_interrupted_by_a_crash_is_finished_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let log = open_small(dir.path(), 1_000_000);
        for i in 0..200 {
            log.record_durable(&event(i)).await.unwrap();
        }
        let path = log.path().to_owned();
        log.close();
        drop(log);
        let segs = segments(&path).unwrap();
        assert!(segs.len() > 3);
        // As if the anchor was moved past the first two segments, then the daemon died.
        let last = lines(&segs[1]).pop().unwrap();
        let mut seals = Seals::open(&dir.path().join("ledger.db")).unwrap();
        seals
            .set_anchor(&Head {
                seq: segment_last_seq(&segs[1]).unwrap(),
                hash: hash(last.as_bytes()),
            })
            .unwrap();
        drop(seals);
        let log = open_small(dir.path(), 1_000_000);
        let head = log.record_durable(&event(9)).await.unwrap();
        log.close();
        assert!(!segs[0].exists() && !segs[1].exists() && segs[2].exists());
        let (seals, anchor) = sealed(dir.path());
        assert!(matches!(
            verify_from(&path, Some(&head), &seals, anchor.as_ref()).unwrap(),
            Verdict::Intact { .. }
        ));
    }

    /// Pins: `verify` holds one line at a time, not the log: checking a 36 MiB log in three
    /// segments, a child process peaks well below the log's size (its `VmHWM`).
    #[test]
    fn verify_holds_a_line_at_a_time_not_the_log() {
        const CHILD: &str = "WARDEN_TEST_VERIFY_LOG";
        if let Some(live) = std::env::var_os(CHILD) {
            let verdict = verify_from(Path::new(&live), None, &[], None).unwrap();
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let hwm = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .unwrap()
                .trim()
                .trim_end_matches("kB")
                .trim()
                .to_owned();
            println!("verdict={verdict:?} hwm_kib={hwm}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join(FILE);
        // Records of 4 KiB, chained, in three segments of 12 MiB each.
        let pad = "x".repeat(4000);
        let mut head = Head {
            seq: 0,
            hash: GENESIS.to_owned(),
        };
        let per_segment = (12 << 20) / 4096;
        for segment in 0..3 {
            let mut text = Vec::with_capacity(13 << 20);
            for _ in 0..per_segment {
                let body = body_of(&Event {
                    reason: Some(pad.clone()),
                    ..Event::new("job")
                })
                .unwrap();
                let line =
                    encode(head.seq + 1, "2026-11-29T23:00:00.000Z", &head.hash, &body).unwrap();
                head = Head {
                    seq: head.seq + 1,
                    hash: hash(&line),
                };
                text.extend_from_slice(&line);
                text.push(b'\n');
            }
            let file = if segment < 2 {
                live.with_file_name(format!("audit.{:012}.log", head.seq))
            } else {
                live.clone()
            };
            std::fs::write(file, text).unwrap();
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "audit::tests::verify_holds_a_line_at_a_time_not_the_log",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, &live)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        let records = 3 * per_segment;
        assert!(
            text.contains(&format!("verdict=Intact {{ records: {records} }}")),
            "{text}"
        );
        let hwm: u64 = text
            .split("hwm_kib=")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .and_then(|t| t.parse().ok())
            .unwrap();
        println!("verifying a 36 MiB log peaked at {hwm} KiB");
        assert!(
            hwm < 24 << 10,
            "verifying a 36 MiB log peaked at {hwm} KiB: it holds the log"
        );
    }

    /// Pins: a query with `after_seq` answers the first `limit` records after it and says
    /// there are more, so paging from 0 returns every record exactly once; limit 0 answers
    /// nothing, and without `after_seq` the newest `limit` come with `more` too.
    #[tokio::test]
    async fn paging_with_after_seq_returns_every_record_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = open_small(dir.path(), 1_000_000);
        for i in 0..249 {
            log.record(event(i));
            if i % 4 == 0 {
                log.flush().await.unwrap();
            }
        }
        let head = log.record_durable(&event(249)).await.unwrap();
        let path = log.path().to_owned();
        log.close();
        assert!(segments(&path).unwrap().len() > 2);
        let mut seen = Vec::new();
        let mut after = 0;
        loop {
            let f = Filter {
                after_seq: Some(after),
                ..Filter::default()
            };
            let (page, more) = query(&path, &f, 40).unwrap();
            assert!(page.len() <= 40);
            seen.extend(page.iter().map(|r| r["seq"].as_u64().unwrap()));
            if !more {
                break;
            }
            after = *seen.last().unwrap();
        }
        assert_eq!(seen, (1..=head.seq).collect::<Vec<_>>());
        assert_eq!(query(&path, &Filter::default(), 0).unwrap().0.len(), 0);
        let (newest, more) = query(&path, &Filter::default(), 10).unwrap();
        assert!(more);
        assert_eq!(newest.last().unwrap()["seq"], head.seq);
    }

    /// Pins: a uid gets `per_window` recorded requests a minute, then waits for its window;
    /// another uid and root are not affected.
    #[test]
    fn recorded_requests_are_budgeted_per_uid() {
        let c = Changes::new(3);
        let t0 = std::time::Instant::now();
        for _ in 0..3 {
            assert!(c.admit(1000, t0).is_ok());
        }
        let wait = c
            .admit(1000, t0 + std::time::Duration::from_secs(10))
            .unwrap_err();
        assert_eq!(wait, std::time::Duration::from_secs(50));
        assert!(c.admit(1001, t0).is_ok());
        for _ in 0..10 {
            assert!(c.admit(0, t0).is_ok(), "root is not counted");
        }
        assert!(c.admit(1000, t0 + DENIAL_WINDOW).is_ok(), "a new window");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_durable_records_share_flushes_and_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let log = std::sync::Arc::new(open_in(dir.path()));
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.record_durable(&event(i)).await.unwrap().seq })
            })
            .collect();
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap());
        }
        // Without group commit, 200 durable records would take 200 flushes.
        let syncs = log.syncs();
        assert!(syncs < 200, "{syncs} flushes for 200 durable records");
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(seqs.len(), 200, "every record got a place of its own");
        let head = log.flush().await.unwrap();
        assert_eq!(head.seq, 200);
        assert_eq!(
            verify(log.path(), Some(&head), &[]).unwrap(),
            Verdict::Intact { records: 200 }
        );
    }
}
