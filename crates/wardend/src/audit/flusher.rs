//! The flusher thread: takes what callers chained, writes it to the live file in one go, makes
//! one `fdatasync` for everything that came while the last one ran, answers the waiters, then
//! seals, rotates and applies retention.
//!
//! It must never answer a waiter before its record is on disk, nor write a record out of the
//! chain's order.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;

use super::record::{Event, Head, Kind, body_into, hash};
use super::seals::Seals;
use super::segments::{
    append, last_line, remove_segment, rotate, segment_last_seq, segments, sync_dir,
};
use super::{Ack, AuditError, Chain, push};
use crate::events::Bus;

/// The flusher thread's own state: the file and what it holds.
pub(super) struct Flusher {
    pub(super) file: File,
    pub(super) live: PathBuf,
    pub(super) rotate_at: u64,
    /// Closed segments kept (at least 1).
    pub(super) keep_segments: usize,
    /// Bytes of closed segments kept; 0: no limit besides `keep_segments`.
    pub(super) max_bytes: u64,
    /// The live file's length, kept here rather than asked of the kernel every round.
    pub(super) len: u64,
    /// The last record written to the file.
    pub(super) written: Head,
    pub(super) syncs: Arc<AtomicU64>,
    pub(super) seals: Arc<Mutex<Seals>>,
    pub(super) files: Arc<std::sync::RwLock<()>>,
    pub(super) bus: Bus,
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
    pub(super) fn run(mut self, chain: &Chain) {
        // A retention the settings now ask for, or one a crash left half done. (No one reads
        // the files yet.)
        let files = Arc::clone(&self.files);
        if let Ok(_alone) = files.try_write() {
            self.retain(chain);
        }
        // Reused round to round: the buffers keep their capacity.
        let mut spare = Vec::new();
        let mut spare_acks = Vec::new();
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
                    acks: std::mem::replace(&mut p.acks, std::mem::take(&mut spare_acks)),
                    seals: std::mem::take(&mut p.seals),
                    head: p.head.clone(),
                    closing: p.closed,
                }
            };
            let closing = round.closing;
            (spare, spare_acks) = self.round(chain, round);
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

    /// Writes and flushes one round; returns its buffers, emptied, for the next.
    fn round(&mut self, chain: &Chain, round: Round) -> (Vec<u8>, Vec<(Ack, Head)>) {
        let Round {
            mut lines,
            mut acks,
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
                for (ack, _) in acks.drain(..).chain(later) {
                    let _ = ack.send(Err(AuditError::Io(e.to_string())));
                }
                lines.clear();
                return (lines, acks);
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
            }
            // A failed flush is answered as an error: the records stay in the file, but
            // nothing that waited on them is acknowledged, so no request they name goes ahead.
            for (ack, at) in acks.drain(..) {
                let answer = match &flushed {
                    Ok(()) => Ok(at),
                    Err(e) => Err(AuditError::Io(e.to_string())),
                };
                let _ = ack.send(answer);
            }
            // Sealed after the answers: a seal is a write to the ledger database, flushed on
            // its own, that no waiter's record needs (it is on disk already).
            if flushed.is_ok() {
                seals.iter().for_each(|h| self.seal(h));
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
        (lines, acks)
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
            ..Event::new(Kind::AuditRetention)
        };
        let mut body = Vec::new();
        let mut p = chain.lock();
        match body_into(&mut body, &event).and_then(|()| push(&mut p, &body, None)) {
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
