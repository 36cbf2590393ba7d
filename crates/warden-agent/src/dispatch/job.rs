//! One accepted dispatch's task: follows its job in wardend (output and state), spools the
//! output as numbered chunks, sends them on whichever link is up (waiting for room: never an
//! unbounded queue), resends what the server has not stored after each new link, drops chunks
//! the server acknowledged, and forgets the dispatch once the server stored its end. It holds
//! one chunk in memory at a time (the rest is read back from the spool); it must never send a
//! chunk twice on one link, nor out of order, nor drop one the server has not stored.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use warden_fleet_proto::link::AgentMessage;
use warden_proto::jobs::JobRecord;

use super::LinkOut;
use super::spool::{Chunk, EndRecord, Meta, Spool, SpoolError};
use super::wardend::{self, Followed};
use crate::agent::Stop;

/// Largest output chunk sent on the link (wardend's own pieces are at most this).
pub const MAX_CHUNK: usize = 64 * 1024;

/// What the dispatcher tells a job's task.
#[derive(Debug, Clone)]
pub struct JobCtl {
    /// The highest chunk the server said it stored.
    pub acked: watch::Sender<u64>,
    /// The server stored the end.
    pub end_stored: watch::Sender<bool>,
}

/// The progress last reported.
#[derive(Debug, Clone, PartialEq)]
struct Progress {
    state: String,
    percent: Option<u8>,
    phase: Option<String>,
}

/// Everything a job's task needs.
pub struct JobTask {
    pub spool: Arc<Spool>,
    pub socket: PathBuf,
    pub meta: Meta,
    pub job_id: String,
    pub cap: u64,
    pub links: watch::Receiver<Option<LinkOut>>,
    pub acked: watch::Receiver<u64>,
    pub end_stored: watch::Receiver<bool>,
    pub stop: Stop,
    /// Called when the task is done with the dispatch (the server stored its end).
    pub done: Box<dyn FnOnce() + Send + Sync>,
}

impl std::fmt::Debug for JobTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobTask")
            .field("dispatch_id", &self.meta.dispatch_id)
            .field("job_id", &self.job_id)
            .finish_non_exhaustive()
    }
}

/// Splits `data` into pieces of at most [`MAX_CHUNK`] bytes on character boundaries, each
/// with its byte offset from `offset`.
fn split(offset: u64, data: String) -> Vec<Chunk> {
    if data.len() <= MAX_CHUNK {
        return vec![Chunk { offset, data }];
    }
    let mut out = Vec::new();
    let mut rest = data.as_str();
    let mut at = offset;
    while !rest.is_empty() {
        let mut end = rest.len().min(MAX_CHUNK);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (head, tail) = rest.split_at(end);
        out.push(Chunk {
            offset: at,
            data: head.to_owned(),
        });
        at += head.len() as u64;
        rest = tail;
    }
    out
}

impl JobTask {
    /// Runs until the server stored the end, or the agent stops.
    pub async fn run(mut self) {
        let id = self.meta.dispatch_id.clone();
        let (follow_tx, mut follow_rx) = mpsc::channel::<Followed>(1);
        let (watch_tx, mut watch_rx) = mpsc::channel::<JobRecord>(1);
        let mut following = self.meta.ended.is_none();
        let mut watching = following;
        if following {
            let socket = self.socket.clone();
            let job = self.job_id.clone();
            let from = self.meta.next_offset;
            tokio::spawn(async move { wardend::follow(&socket, &job, from, follow_tx).await });
            let socket = self.socket.clone();
            let job = self.job_id.clone();
            tokio::spawn(async move { wardend::watch(&socket, &job, watch_tx).await });
        }
        let mut link: Option<LinkOut> = self.links.borrow_and_update().clone();
        // On this link: the last chunk sent, whether the end and the latest progress went out.
        let mut sent = self.meta.acked_seq;
        let mut end_sent = false;
        let mut progress: Option<Progress> = None;
        let mut progress_sent = true;
        let mut cap_logged = self.meta.dropped_bytes > 0;
        loop {
            let pending = link.is_some()
                && (sent < self.meta.last_seq
                    || !progress_sent
                    || (self.meta.ended.is_some() && !end_sent));
            let reserve = async {
                match &link {
                    Some(l) => l.permit().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.stop.wait() => return,
                r = self.end_stored.changed() => {
                    if r.is_err() || *self.end_stored.borrow_and_update() {
                        if let Err(e) = self.on_disk({ let id = id.clone(); move |s| s.forget(&id) }).await {
                            tracing::warn!(dispatch_id = %id, error = %e, "dispatch: cannot remove the spooled dispatch");
                        }
                        tracing::info!(dispatch_id = %id, "dispatch: the server stored the end; forgotten");
                        (self.done)();
                        return;
                    }
                }
                r = self.acked.changed() => {
                    if r.is_err() {
                        continue;
                    }
                    let seq = (*self.acked.borrow_and_update()).min(self.meta.last_seq);
                    self.ack(seq).await;
                    sent = sent.max(self.meta.acked_seq);
                }
                r = self.links.changed() => {
                    if r.is_err() {
                        return;
                    }
                    link = self.links.borrow_and_update().clone();
                    // A new link: everything not stored goes again, in order.
                    sent = self.meta.acked_seq;
                    end_sent = false;
                    progress_sent = progress.is_none();
                }
                f = follow_rx.recv(), if following => match f {
                    Some(Followed::Output(piece)) => {
                        for chunk in split(piece.from, piece.data) {
                            self.spool_chunk(chunk, &mut cap_logged).await;
                        }
                        self.meta.next_offset = piece.next;
                        self.save().await;
                    }
                    Some(Followed::Truncated) => {
                        self.meta.truncated = true;
                        self.save().await;
                    }
                    Some(Followed::End(record)) => {
                        following = false;
                        self.meta.ended = Some(EndRecord {
                            state: record.state.as_str().to_owned(),
                            exit_code: record.exit_code,
                            result: record.result.clone(),
                        });
                        self.save().await;
                        tracing::info!(dispatch_id = %id, job_id = %self.job_id,
                            state = record.state.as_str(), last_seq = self.meta.last_seq,
                            output_truncated = self.meta.truncated,
                            dropped_bytes = self.meta.dropped_bytes, "dispatch: the job ended");
                    }
                    Some(Followed::Gone(why)) => {
                        following = false;
                        tracing::warn!(dispatch_id = %id, job_id = %self.job_id, reason = %why,
                            "dispatch: wardend no longer knows the job; reporting it lost");
                        self.meta.ended = Some(EndRecord { state: "lost".into(), exit_code: None, result: None });
                        self.save().await;
                    }
                    None => following = false,
                },
                r = watch_rx.recv(), if watching => match r {
                    Some(r) => {
                        let p = Progress {
                            state: r.state.as_str().to_owned(),
                            percent: r.progress,
                            phase: r.phase.clone(),
                        };
                        // Terminal states arrive in Ended.
                        if !r.state.is_terminal() && progress.as_ref() != Some(&p) {
                            progress = Some(p);
                            progress_sent = false;
                        }
                    }
                    None => watching = false,
                },
                permit = reserve, if pending => {
                    let Some(permit) = permit else {
                        // The link closed; wait for the next one.
                        link = None;
                        continue;
                    };
                    let Some(l) = &link else { continue };
                    let msg = if sent < self.meta.last_seq {
                        let seq = sent + 1;
                        match self.on_disk({ let id = id.clone(); move |s| s.chunk(&id, seq) }).await {
                            Ok(c) => {
                                sent = seq;
                                AgentMessage::Output { dispatch_id: id.clone(), seq, offset: c.offset, data: c.data }
                            }
                            Err(e) => {
                                tracing::error!(dispatch_id = %id, seq, error = %e,
                                    "dispatch: a spooled chunk cannot be read; it is skipped");
                                sent = seq;
                                continue;
                            }
                        }
                    } else if !progress_sent {
                        progress_sent = true;
                        let Some(p) = progress.clone() else { continue };
                        AgentMessage::Progress { dispatch_id: id.clone(), state: p.state, percent: p.percent, phase: p.phase }
                    } else if let Some(end) = &self.meta.ended {
                        end_sent = true;
                        AgentMessage::Ended {
                            dispatch_id: id.clone(),
                            state: end.state.clone(),
                            exit_code: end.exit_code,
                            result: end.result.clone(),
                            last_seq: self.meta.last_seq,
                            output_truncated: self.meta.truncated,
                        }
                    } else {
                        continue;
                    };
                    l.send(permit, msg);
                }
            }
        }
    }

    /// Runs `f` on the spool off the runtime's thread (files are fsynced).
    async fn on_disk<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Spool) -> Result<T, SpoolError> + Send + 'static,
    ) -> Result<T, SpoolError> {
        let spool = Arc::clone(&self.spool);
        tokio::task::spawn_blocking(move || f(&spool))
            .await
            .unwrap_or_else(|e| {
                Err(SpoolError::Io {
                    step: "run",
                    path: self.spool.path().into(),
                    source: std::io::Error::other(e.to_string()),
                })
            })
    }

    async fn save(&self) {
        let meta = self.meta.clone();
        if let Err(e) = self.on_disk(move |s| s.save(&meta)).await {
            tracing::error!(dispatch_id = %self.meta.dispatch_id, error = %e,
                "dispatch: cannot update the spool record");
        }
    }

    /// Spools one chunk, or counts it as dropped past the cap.
    async fn spool_chunk(&mut self, chunk: Chunk, cap_logged: &mut bool) {
        let len = chunk.data.len() as u64;
        if self.meta.dropped_bytes > 0 || self.meta.held_bytes + len > self.cap {
            if !*cap_logged {
                *cap_logged = true;
                tracing::warn!(dispatch_id = %self.meta.dispatch_id, job_id = %self.job_id,
                    cap_bytes = self.cap, offset = chunk.offset,
                    "dispatch: the job's output spool is full; later output is not spooled \
                     (the end reports output_truncated)");
            }
            self.meta.truncated = true;
            self.meta.dropped_bytes += len;
            return;
        }
        let seq = self.meta.last_seq + 1;
        let id = self.meta.dispatch_id.clone();
        if let Err(e) = self.on_disk(move |s| s.put_chunk(&id, seq, &chunk)).await {
            tracing::error!(dispatch_id = %self.meta.dispatch_id, error = %e,
                "dispatch: cannot spool output; it is dropped");
            self.meta.truncated = true;
            self.meta.dropped_bytes += len;
            return;
        }
        self.meta.last_seq = seq;
        self.meta.held_bytes += len;
    }

    /// The server stored chunks up to `seq`: drop them.
    async fn ack(&mut self, seq: u64) {
        if seq <= self.meta.acked_seq {
            return;
        }
        let id = self.meta.dispatch_id.clone();
        let from = self.meta.acked_seq + 1;
        let freed = {
            let id = id.clone();
            self.on_disk(move |s| {
                Ok((from..=seq)
                    .filter_map(|n| s.chunk(&id, n).ok())
                    .map(|c| c.data.len() as u64)
                    .sum::<u64>())
            })
            .await
            .unwrap_or(0)
        };
        // The record first: a crash after it only leaves files that load() removes.
        let before = self.meta.acked_seq;
        self.meta.acked_seq = seq;
        self.meta.held_bytes = self.meta.held_bytes.saturating_sub(freed);
        self.save().await;
        let dropped = {
            let id = id.clone();
            self.on_disk(move |s| s.drop_chunks(&id, before + 1, seq))
                .await
        };
        if let Err(e) = dropped {
            tracing::warn!(dispatch_id = %id, error = %e, "dispatch: cannot drop stored chunks");
        }
    }
}

/// Builds the control pair for a dispatch's task.
pub fn control(acked: u64) -> (JobCtl, watch::Receiver<u64>, watch::Receiver<bool>) {
    let (a_tx, a_rx) = watch::channel(acked);
    let (e_tx, e_rx) = watch::channel(false);
    (
        JobCtl {
            acked: a_tx,
            end_stored: e_tx,
        },
        a_rx,
        e_rx,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: output longer than a chunk is split on character boundaries into pieces of at
    /// most MAX_CHUNK bytes whose offsets follow on, and nothing is lost.
    #[test]
    fn split_keeps_characters_whole_and_offsets_exact() {
        let text = "é".repeat(MAX_CHUNK); // two bytes each
        let pieces = split(100, text.clone());
        assert_eq!(pieces.len(), 2);
        let mut at = 100;
        let mut joined = String::new();
        for p in &pieces {
            assert!(p.data.len() <= MAX_CHUNK);
            assert_eq!(p.offset, at);
            at += p.data.len() as u64;
            joined.push_str(&p.data);
        }
        assert_eq!(joined, text);
        assert_eq!(
            split(7, "short".into()),
            vec![Chunk {
                offset: 7,
                data: "short".into()
            }]
        );
    }
}
