//! The audit log: what happened, who asked for it and what came of it, in
//! `state_dir/audit/audit.log` (directory 0700, file 0600). One JSON object per line; each names
//! its place (`seq`, from 1) and the SHA-256 of the line before it (`prev`; the first names
//! [`record::GENESIS`]), so a line that is changed, removed or moved breaks the chain where it was.
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
//!
//! Its parts: [`record`] (a record and its line), [`segments`] (the files), [`seals`] (seals and
//! the retention anchor), [`verify`], [`query`], and [`denials`] (what one uid can make it
//! record). This module chains records and runs the flusher, which also closes and removes
//! segments.

mod denials;
mod flusher;
mod query;
mod record;
mod seals;
mod segments;
mod verify;

use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use serde_json::Value;
use tokio::sync::oneshot;
use warden_policy::AuditSettings;

use crate::events::Bus;
use flusher::Flusher;

pub(crate) use denials::{Changes, DENIAL_WINDOW, DENIALS_RECORDED, Denials};
pub(crate) use query::{Filter, query};
pub(crate) use record::{Event, Head, Kind, Peer, hash};
pub(crate) use seals::{SEAL_EVERY, Seals};
pub(crate) use segments::{FILE, closed_segments};
pub(crate) use verify::{Verdict, verify_from};

use record::{body_into, encode_into};
#[cfg(test)]
use record::{body_of, encode};
#[cfg(test)]
use segments::segment_last_seq;
use segments::{recover, segments};

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
    /// The time the last record was stamped with, in ms since the epoch, and its text: records
    /// come many to a millisecond, and each formatting of the time showed in profiles.
    stamp: (u128, String),
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
                stamp: (0, String::new()),
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
        self.syncs.load(std::sync::atomic::Ordering::Relaxed)
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

    /// Encodes `event` and chains it (see [`AuditLog::chain`]), through this thread's body
    /// buffer: a record allocates no buffer of its own.
    fn chain_event(&self, event: &Event, ack: Option<Ack>) -> Result<(), AuditError> {
        thread_local! {
            static BODY: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BODY.with_borrow_mut(|body| {
            body_into(body, event)?;
            let chained = self.chain(body, ack);
            // An unusually large record does not keep its memory on this thread.
            if body.capacity() > 64 * 1024 {
                *body = Vec::new();
            }
            chained
        })
    }

    /// Appends `event`; it reaches the disk with the next flush.
    pub(crate) fn record(&self, event: Event) {
        if let Err(e) = self.chain_event(&event, None) {
            tracing::error!(error = %e, "an audit record was lost");
        }
    }

    /// Appends `event` and returns once it is on disk, with its place in the chain.
    pub(crate) async fn record_durable(&self, event: &Event) -> Result<Head, AuditError> {
        let (ack, done) = oneshot::channel();
        self.chain_event(event, Some(ack))?;
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
/// The line is encoded straight into the buffer of lines to write, and hashed there.
fn push(p: &mut Pending, body: &[u8], ack: Option<Ack>) -> Result<(), AuditError> {
    let start = p.lines.len();
    let seq = p.head.seq + 1;
    let now = std::time::SystemTime::now();
    let ms = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    if ms != p.stamp.0 || p.stamp.1.is_empty() {
        p.stamp = (ms, crate::clock::rfc3339(now));
    }
    let Pending {
        lines, head, stamp, ..
    } = p;
    encode_into(lines, seq, &stamp.1, &head.hash, body)
        .map_err(|e| AuditError::Io(format!("cannot encode a record: {e}")))?;
    p.head = Head {
        seq,
        hash: hash(&p.lines[start..]),
    };
    if p.head.seq.is_multiple_of(SEAL_EVERY) {
        let head = p.head.clone();
        p.seals.push(head);
    }
    p.lines.push(b'\n');
    if let Some(ack) = ack {
        let head = p.head.clone();
        p.acks.push((ack, head));
    }
    Ok(())
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests;
