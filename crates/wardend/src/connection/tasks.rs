//! The requests of a connection that wait (for the ledger, the audit log, a job): polled by
//! the connection's own task beside its socket, at most [`MAX_IN_FLIGHT`] at once, and ended
//! with the connection.
//!
//! It must never let a request that may change something be dropped mid-way while its peer is
//! merely gone, nor hold a connection open past the daemon's grace once it stops.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use warden_proto::ErrorKind;

use super::Connection;
use crate::call::Outbound;
use crate::dispatch::{self, Later};
use crate::state::Shared;

/// Requests one connection may have running at once.
const MAX_IN_FLIGHT: usize = 16;
/// Notifications waiting to be written, per connection.
const OUTBOUND_QUEUE: usize = 64;
/// How long requests that may change something still get to finish once the daemon stops:
/// less than the daemon's own grace for its connections, so their answers can still be sent.
const FINISH_GRACE: Duration = Duration::from_secs(5);

/// A request that waits for something (the ledger, the audit log, a job), polled by its
/// connection's own task alongside the socket. No task of its own: spawning one per request,
/// and handing its answer back through a channel, cost more than many requests themselves.
pub(super) struct Running {
    /// To answer it if the connection ends first, or if running it panics.
    handle: dispatch::LaterHandle,
    answer: dispatch::CatchUnwind<dyn Future<Output = Option<Vec<u8>>> + Send>,
    shared: Arc<Shared>,
}

impl Future for Running {
    type Output = Option<Vec<u8>>;

    /// A panic costs this request an `internal` answer, not its connection and the other
    /// requests running on it. (One inside the handler is caught closer, so that its audit
    /// record gets an outcome.) A request that panicked is finished: it is not polled again.
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.answer.poll_unpin(cx).map(|answer| match answer {
            Ok(answer) => answer,
            Err(panic) => self.handle.panicked(&self.shared, &*panic),
        })
    }
}

/// What a connection needs once it has requests that wait. Made on the first such request, so
/// a connection that only asks `status` does not pay for it.
pub(super) struct Tasks {
    /// Where running requests send notifications (job output, events) on the way.
    pub(super) tx: Outbound,
    pub(super) rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    pub(super) running: FuturesUnordered<Running>,
    /// Final answers held back until the notifications their requests queued before them are
    /// sent: a request's answer must not overtake its own last output chunk or event.
    pub(super) held: std::collections::VecDeque<Vec<u8>>,
}

impl Connection {
    /// Runs a request that waits beside the others of this connection; returns a refusal to
    /// send instead when too many are already running on it.
    pub(super) fn start_task(&mut self, later: Later) -> Option<Vec<u8>> {
        let tasks = self.tasks.get_or_insert_with(|| {
            let (tx, rx) = tokio::sync::mpsc::channel(OUTBOUND_QUEUE);
            Tasks {
                tx,
                rx,
                running: FuturesUnordered::new(),
                held: std::collections::VecDeque::new(),
            }
        });
        let handle = later.handle();
        if tasks.running.len() >= MAX_IN_FLIGHT {
            return handle.refuse(
                &self.shared,
                ErrorKind::Busy,
                &format!("{MAX_IN_FLIGHT} requests are already running on this connection"),
                Some(Duration::from_millis(100)),
            );
        }
        let answer = dispatch::later(Arc::clone(&self.shared), later, tasks.tx.clone());
        tasks.running.push(Running {
            handle,
            answer: dispatch::CatchUnwind(Box::pin(answer)),
            shared: Arc::clone(&self.shared),
        });
        None
    }

    /// Ends the connection's running requests. Those that only read or wait are stopped where
    /// they stand (answered if their answer is ready, else refused `unavailable`). Those that may
    /// change something run to their end (see [`dispatch::changes_state`]), for a peer that left
    /// too, but once the daemon stops only for [`FINISH_GRACE`]. Unless the peer has left, then
    /// sends the notifications already queued and every answer and refusal.
    pub(super) async fn end_tasks(&mut self, peer_gone: bool) {
        let Some(mut tasks) = self.tasks.take() else {
            return;
        };
        let mut frames = Vec::new();
        while let Ok(frame) = tasks.rx.try_recv() {
            frames.push(frame);
        }
        frames.extend(tasks.held.drain(..));
        // Stopped first, so nothing streams notifications (events, output) while the others
        // finish: what this connection holds stays bounded however long they take.
        let (finish, stop): (Vec<Running>, Vec<Running>) = std::mem::take(&mut tasks.running)
            .into_iter()
            .partition(|r| r.handle.changes_state());
        for mut running in stop {
            match (&mut running).now_or_never() {
                Some(answer) => frames.extend(answer),
                None if !peer_gone => frames.extend(self.closing(&running.handle)),
                None => {}
            }
        }
        drop(tasks);
        let mut finish: FuturesUnordered<Running> = finish.into_iter().collect();
        let stopping = self.shared.shutdown.clone();
        let limit = async move {
            stopping.cancelled().await;
            tokio::time::sleep(FINISH_GRACE).await;
        };
        tokio::pin!(limit);
        loop {
            tokio::select! {
                answer = finish.next() => match answer {
                    Some(answer) => frames.extend(answer),
                    None => break,
                },
                () = &mut limit => break,
            }
        }
        // What is still running now is dropped where it stands (and audited as unfinished).
        if peer_gone {
            return;
        }
        for running in finish.iter() {
            frames.extend(self.closing(&running.handle));
        }
        drop(finish);
        let deadline = Instant::now() + Duration::from_millis(200);
        for frame in frames {
            let Some(frame) = self.wire(frame) else {
                continue;
            };
            let write = tokio::time::timeout_at(deadline, self.stream.write_all(&frame));
            if !matches!(write.await, Ok(Ok(()))) {
                break;
            }
        }
    }

    /// The refusal of a request still running when its connection ends.
    pub(super) fn closing(&self, handle: &dispatch::LaterHandle) -> Option<Vec<u8>> {
        handle.refuse(
            &self.shared,
            ErrorKind::Unavailable,
            "the connection or the daemon is closing",
            None,
        )
    }
}
