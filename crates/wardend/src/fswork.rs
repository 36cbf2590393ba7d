//! File-system work that a caller can steer (resolving its path parameters, reading its
//! executable): run on a thread of its own, never on a runtime thread, and waited for only up
//! to a deadline. A file system can stall for good (a FUSE server its owner stopped), so the
//! thread may never come back: each uid may have only a few such threads outstanding, and the
//! daemon only a bounded number in all, so stalled work cannot take the threads the daemon needs
//! (the blocking pool its ledger and audit log use is never used here).
//!
//! It must never run work on a runtime thread, and never wait past the deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use warden_proto::Uid;

/// Threads one uid may have outstanding; more wait for none of them and are refused.
pub(crate) const PER_UID: usize = 4;
/// Threads the daemon may have outstanding for everyone.
pub(crate) const TOTAL: usize = 64;

/// Why the work did not give an answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FsWorkError {
    #[error("it did not finish within {} ms; the file system may be stalled", .0.as_millis())]
    TimedOut(Duration),
    #[error("too many file-system checks of this uid are still waiting (a stalled file system?)")]
    Busy,
    #[error("no thread could be started for it: {0}")]
    Thread(std::io::Error),
}

/// Counts the outstanding threads, per uid and in all.
#[derive(Debug, Default)]
pub(crate) struct FsWork {
    outstanding: Mutex<HashMap<Uid, usize>>,
}

/// One outstanding thread's place; given back when the thread ends, however late.
struct Slot {
    work: Arc<FsWork>,
    uid: Uid,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.work.lock();
        if let Some(n) = map.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.uid);
            }
        }
    }
}

impl FsWork {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uid, usize>> {
        self.outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn take(self: &Arc<Self>, uid: Uid) -> Option<Slot> {
        let mut map = self.lock();
        let total: usize = map.values().sum();
        let mine = map.entry(uid).or_insert(0);
        if *mine >= PER_UID || total >= TOTAL {
            if *mine == 0 {
                map.remove(&uid);
            }
            return None;
        }
        *mine += 1;
        Some(Slot {
            work: Arc::clone(self),
            uid,
        })
    }

    /// Threads outstanding for `uid` (for tests and status).
    #[cfg(test)]
    pub(crate) fn outstanding(&self, uid: Uid) -> usize {
        self.lock().get(&uid).copied().unwrap_or(0)
    }

    /// Runs `work` for `uid` on a thread of its own and waits for it until `deadline` has
    /// passed. `work` gets the instant it is due by, to stop early where it can (between reads).
    pub(crate) async fn run<T, F>(
        self: &Arc<Self>,
        uid: Uid,
        deadline: Duration,
        work: F,
    ) -> Result<T, FsWorkError>
    where
        T: Send + 'static,
        F: FnOnce(std::time::Instant) -> T + Send + 'static,
    {
        let slot = self.take(uid).ok_or(FsWorkError::Busy)?;
        let due = std::time::Instant::now() + deadline;
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("warden-fs".into())
            .spawn(move || {
                // Held until the work returns, however long after the deadline that is.
                let _slot = slot;
                let _ = tx.send(work(due));
            })
            .map_err(FsWorkError::Thread)?;
        match tokio::time::timeout_at(Instant::now() + deadline, rx).await {
            Ok(Ok(v)) => Ok(v),
            // The thread ended without an answer: only a panic in `work` does that.
            Ok(Err(_)) => Err(FsWorkError::Thread(std::io::Error::other(
                "the work panicked",
            ))),
            Err(_) => Err(FsWorkError::TimedOut(deadline)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: work that does not return in time is given up at its deadline and keeps its
    /// uid's place until it ends; past the per-uid bound that uid is refused, others are not.
    #[tokio::test]
    async fn stalled_work_times_out_and_counts_against_its_uid_until_it_ends() {
        let work = Arc::new(FsWork::default());
        let (release, stalled) = std::sync::mpsc::channel::<()>();
        let stalled = Arc::new(Mutex::new(stalled));
        let (a, b) = (Uid(1001), Uid(1002));
        for _ in 0..PER_UID {
            let stalled = Arc::clone(&stalled);
            let r = work
                .run(a, Duration::from_millis(20), move |_| {
                    let _ = stalled.lock().unwrap().recv();
                })
                .await;
            assert!(matches!(r, Err(FsWorkError::TimedOut(_))), "{r:?}");
        }
        assert_eq!(work.outstanding(a), PER_UID);
        let r = work.run(a, Duration::from_secs(5), |_| 1).await;
        assert!(matches!(r, Err(FsWorkError::Busy)), "{r:?}");
        assert_eq!(work.run(b, Duration::from_secs(5), |_| 2).await.unwrap(), 2);
        for _ in 0..PER_UID {
            release.send(()).unwrap();
        }
        let t = std::time::Instant::now();
        while work.outstanding(a) > 0 && t.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(work.outstanding(a), 0);
        assert_eq!(work.run(a, Duration::from_secs(5), |_| 3).await.unwrap(), 3);
    }
}
