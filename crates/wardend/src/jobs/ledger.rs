//! The ledger: every job and each of its state transitions, in SQLite (`state_dir/ledger.db`,
//! WAL). A transition is committed here before anyone is told about it, so after a crash the
//! ledger knows every job that was acknowledged and which of them were still running.
//!
//! Writes and look-ups by id run on the calling task, under a lock: a commit takes tens of
//! microseconds, less than handing it to another thread and back would. Listing and pruning,
//! which may read many rows, run on the blocking pool. Checkpoints (copying the write-ahead log
//! into the database, with its disk flushes) run on a thread of their own, so no caller waits for
//! a flush. `synchronous = NORMAL`: a commit survives the daemon crashing or being killed; a
//! power loss may lose the transitions since the last checkpoint (syncing each commit would cost
//! a disk flush per transition; the database itself stays consistent).
//!
//! It stores job records with secret parameters already redacted; nothing secret reaches it.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use warden_proto::jobs::{JobRecord, JobState};
use warden_proto::{JobId, Uid};

/// How often the checkpoint thread copies the write-ahead log into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);

/// Why the ledger could not do something.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LedgerError {
    #[error("cannot create the ledger {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ledger: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("ledger: a stored job record is unreadable: {0}")]
    Record(#[from] serde_json::Error),
    #[error("ledger: the transaction failed: {0}")]
    Transaction(String),
    #[error("the ledger has stopped")]
    Stopped,
}

/// Which jobs `list` returns.
#[derive(Debug, Clone)]
pub(crate) struct ListQuery {
    /// Only this requester's jobs; `None` for everyone's.
    pub uid: Option<Uid>,
    pub state: Option<JobState>,
    pub limit: u32,
}

/// What the ledger stores about a job beyond its record, for look-ups.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub record: JobRecord,
    pub idempotency_key: Option<String>,
    /// Milliseconds since the epoch.
    pub created_ms: i64,
    pub ended_ms: Option<i64>,
}

/// Handle to the ledger.
#[derive(Debug)]
pub(crate) struct Ledger {
    /// `None` once closed.
    conn: Arc<Mutex<Option<Connection>>>,
    /// Stops the checkpoint thread (by being dropped) and joins it.
    checkpointer: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    requester_uid INTEGER NOT NULL,
    state TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    ended_ms INTEGER,
    idempotency_key TEXT,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_requester ON jobs (requester_uid, created_ms);
DROP INDEX IF EXISTS jobs_by_state;
DROP INDEX IF EXISTS jobs_by_key;
-- Partial: a transition writes only the index pages that name it. The unfinished ones are
-- what a restart looks for; keys are rare.
CREATE INDEX IF NOT EXISTS jobs_unfinished ON jobs (state) WHERE state IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS jobs_by_idempotency_key ON jobs (requester_uid, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Lost jobs whose reconcile has not run yet: kept until it has, so a reconcile a brake defers
-- (lockdown, an ops toggle off) survives restarts and runs once the brake is released.
CREATE TABLE IF NOT EXISTS reconcile_pending (id TEXT PRIMARY KEY);
";

/// What opening the ledger found owed from earlier runs.
#[derive(Debug, Default)]
pub(crate) struct LostJobs {
    /// Jobs that were queued or running when the daemon stopped, now marked lost.
    pub now: Vec<JobRecord>,
    /// Lost jobs of earlier runs whose reconcile a brake deferred and has not run yet.
    pub earlier: Vec<JobRecord>,
}

impl Ledger {
    /// Opens (creating, mode 0600) `path`, applies the schema, and marks every job that was left
    /// queued or running as `lost` at `now_ms` with `message`. Returns the ledger and those jobs.
    pub(crate) fn open(
        path: &Path,
        now_ms: i64,
        now_text: &str,
        message: &str,
    ) -> Result<(Ledger, LostJobs), LedgerError> {
        // SQLite gives its -wal and -shm files the mode of the database file.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| LedgerError::Create {
                path: path.into(),
                source,
            })?;
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        let lost = mark_lost(&mut conn, now_ms, now_text, message)?;
        // Checkpoints happen on the checkpoint thread, never inside a caller's commit.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let checkpoints = Connection::open(path)?;
        checkpoints.busy_timeout(std::time::Duration::from_secs(5))?;
        // One checkpoint now: it opens the log's files for good (the thread's first one would
        // otherwise open them later) and folds in what an earlier run left.
        checkpoints.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("warden-checkpoint".into())
            .spawn(move || checkpoint(&checkpoints, &stopped))
            .map_err(|source| LedgerError::Create {
                path: path.into(),
                source,
            })?;
        Ok((
            Ledger {
                conn: Arc::new(Mutex::new(Some(conn))),
                checkpointer: Mutex::new(Some((stop, thread))),
            },
            lost,
        ))
    }

    /// Runs `f` in one transaction on the connection, committing when it succeeds.
    fn with<T>(
        conn: &Mutex<Option<Connection>>,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let mut guard: MutexGuard<'_, Option<Connection>> =
            conn.lock().unwrap_or_else(PoisonError::into_inner);
        let conn = guard.as_mut().ok_or(LedgerError::Stopped)?;
        let tx = conn.transaction()?;
        let out = f(&tx)?;
        tx.commit()
            .map_err(|e| LedgerError::Transaction(format!("commit failed: {e}")))?;
        Ok(out)
    }

    /// Runs `f` like [`Ledger::with`], on the blocking pool (for work that may read many rows).
    async fn with_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || Ledger::with(&conn, f))
            .await
            .map_err(|e| LedgerError::Transaction(e.to_string()))?
    }

    /// Runs `f`, one statement, on the connection outside an explicit transaction: SQLite runs
    /// it in a transaction of its own, committed when it completes, or rolled back if it fails
    /// (as atomic and as durable as [`Ledger::with`], without preparing and running `BEGIN` and
    /// `COMMIT` around it).
    fn one<T>(
        conn: &Mutex<Option<Connection>>,
        f: impl FnOnce(&Connection) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let guard: MutexGuard<'_, Option<Connection>> =
            conn.lock().unwrap_or_else(PoisonError::into_inner);
        f(guard.as_ref().ok_or(LedgerError::Stopped)?)
    }

    /// Records a job as it now stands: one statement, committed before this returns.
    pub(crate) async fn put(&self, row: &Row) -> Result<(), LedgerError> {
        Ledger::one(&self.conn, |conn| put(conn, row))
    }

    /// Replaces the stored record of a job that has ended (a lost job's message).
    pub(crate) async fn rewrite(&self, record: &JobRecord) -> Result<(), LedgerError> {
        let text = serde_json::to_string(record)?;
        let id = record.job_id.as_str().to_owned();
        Ledger::with(&self.conn, move |tx| {
            tx.execute(
                "UPDATE jobs SET record = ?1 WHERE id = ?2",
                params![text, id],
            )?;
            Ok(())
        })
    }

    /// Forgets that `id`'s reconcile is owed: it ran, or there is none to run.
    pub(crate) async fn reconciled(&self, id: &JobId) -> Result<(), LedgerError> {
        let id = id.as_str().to_owned();
        Ledger::with(&self.conn, move |tx| {
            tx.execute("DELETE FROM reconcile_pending WHERE id = ?1", params![id])?;
            Ok(())
        })
    }

    pub(crate) async fn get(&self, id: &JobId) -> Result<Option<JobRecord>, LedgerError> {
        Ledger::with(&self.conn, |tx| {
            tx.prepare_cached("SELECT record FROM jobs WHERE id = ?1")?
                .query_row([id.as_str()], |row| row.get::<_, String>(0))
                .optional()?
                .map(decode)
                .transpose()
        })
    }

    pub(crate) async fn owner(&self, id: &JobId) -> Result<Option<Uid>, LedgerError> {
        Ledger::with(&self.conn, |tx| {
            Ok(tx
                .prepare_cached("SELECT requester_uid FROM jobs WHERE id = ?1")?
                .query_row([id.as_str()], |row| row.get::<_, u32>(0))
                .optional()?
                .map(Uid))
        })
    }

    /// Newest first.
    pub(crate) async fn list(&self, q: ListQuery) -> Result<Vec<JobRecord>, LedgerError> {
        self.with_blocking(move |tx| list(tx, &q)).await
    }

    /// The job `uid` started with `key` after `since_ms`, if any.
    pub(crate) async fn idempotent(
        &self,
        uid: Uid,
        key: &str,
        since_ms: i64,
    ) -> Result<Option<JobId>, LedgerError> {
        Ledger::with(&self.conn, |tx| {
            Ok(tx
                .query_row(
                    "SELECT id FROM jobs WHERE requester_uid = ?1 AND idempotency_key = ?2
                     AND created_ms >= ?3 ORDER BY created_ms DESC LIMIT 1",
                    params![uid.0, key, since_ms],
                    |row| row.get::<_, String>(0),
                )
                .optional()?
                .and_then(|s| JobId::try_from(s).ok()))
        })
    }

    /// Deletes finished jobs that ended before `before_ms`, and of each uid's finished jobs all
    /// but the newest `keep_per_uid`; returns their ids.
    pub(crate) async fn prune(
        &self,
        before_ms: i64,
        keep_per_uid: usize,
    ) -> Result<Vec<JobId>, LedgerError> {
        self.with_blocking(move |tx| prune(tx, before_ms, keep_per_uid))
            .await
    }

    /// Finishes outstanding writes and closes the database.
    pub(crate) fn close(&self) {
        let checkpointer = self
            .checkpointer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some((stop, thread)) = checkpointer {
            drop(stop);
            let _ = thread.join();
        }
        // Closing the last connection checkpoints what is left.
        self.conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.close();
    }
}

fn decode(text: String) -> Result<JobRecord, LedgerError> {
    Ok(serde_json::from_str(&text)?)
}

fn mark_lost(
    conn: &mut Connection,
    now_ms: i64,
    now_text: &str,
    message: &str,
) -> Result<LostJobs, LedgerError> {
    let tx = conn.transaction()?;
    let mut lost = Vec::new();
    {
        let mut stmt =
            tx.prepare("SELECT record FROM jobs WHERE state IN ('queued', 'running')")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        for text in rows {
            let mut record = decode(text?)?;
            record.state = JobState::Lost;
            record.ended_at = Some(now_text.to_owned());
            record.message = Some(message.to_owned());
            lost.push(record);
        }
    }
    for record in &lost {
        tx.execute(
            "UPDATE jobs SET state = 'lost', ended_ms = ?1, record = ?2 WHERE id = ?3",
            params![
                now_ms,
                serde_json::to_string(record)?,
                record.job_id.as_str()
            ],
        )?;
        tx.execute(
            "INSERT OR IGNORE INTO reconcile_pending (id) VALUES (?1)",
            params![record.job_id.as_str()],
        )?;
    }
    // Earlier runs' lost jobs whose reconcile a brake deferred come back beside the new ones.
    let mut earlier = Vec::new();
    {
        let mut stmt = tx.prepare(
            "SELECT record FROM jobs WHERE id IN (SELECT id FROM reconcile_pending) ORDER BY created_ms",
        )?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        for text in rows {
            let record = decode(text?)?;
            if !lost.iter().any(|l| l.job_id == record.job_id) {
                earlier.push(record);
            }
        }
    }
    tx.commit()?;
    Ok(LostJobs { now: lost, earlier })
}

fn put(conn: &Connection, row: &Row) -> Result<(), LedgerError> {
    // Cached: a job writes this statement at every transition.
    let mut stmt = conn.prepare_cached(
        "INSERT INTO jobs (id, requester_uid, state, created_ms, ended_ms, idempotency_key, record)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (id) DO UPDATE SET state = excluded.state, ended_ms = excluded.ended_ms,
             record = excluded.record",
    )?;
    stmt.execute(params![
        row.record.job_id.as_str(),
        row.record.requester.uid.0,
        row.record.state.as_str(),
        row.created_ms,
        row.ended_ms,
        row.idempotency_key,
        serde_json::to_string(&row.record)?,
    ])?;
    Ok(())
}

/// The checkpoint thread: copies the write-ahead log into the database every
/// [`CHECKPOINT_EVERY`] until `stopped` says so. `PASSIVE` never waits for writers.
fn checkpoint(conn: &Connection, stopped: &mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY) {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "ledger checkpoint failed");
        }
    }
}

fn list(tx: &rusqlite::Transaction<'_>, q: &ListQuery) -> Result<Vec<JobRecord>, LedgerError> {
    let mut stmt = tx.prepare(
        "SELECT record FROM jobs
         WHERE (?1 IS NULL OR requester_uid = ?1) AND (?2 IS NULL OR state = ?2)
         ORDER BY created_ms DESC LIMIT ?3",
    )?;
    let rows = stmt.query_map(
        params![q.uid.map(|u| u.0), q.state.map(JobState::as_str), q.limit],
        |row| row.get::<_, String>(0),
    )?;
    rows.map(|t| decode(t?)).collect()
}

fn prune(
    tx: &rusqlite::Transaction<'_>,
    before: i64,
    keep_per_uid: usize,
) -> Result<Vec<JobId>, LedgerError> {
    let keep = i64::try_from(keep_per_uid).unwrap_or(i64::MAX);
    // Finished jobs that ended too long ago, and those past the newest `keep` of their uid.
    let mut stmt = tx.prepare(
        "SELECT id FROM (
             SELECT id, ended_ms, ROW_NUMBER() OVER (
                 PARTITION BY requester_uid ORDER BY created_ms DESC, id DESC) AS newer
             FROM jobs WHERE ended_ms IS NOT NULL AND state NOT IN ('queued', 'running'))
         WHERE ended_ms < ?1 OR newer > ?2",
    )?;
    let gone: Vec<String> = stmt
        .query_map(params![before, keep], |row| row.get::<_, String>(0))?
        .collect::<Result<_, _>>()?;
    let mut delete = tx.prepare_cached("DELETE FROM jobs WHERE id = ?1")?;
    let mut ids = Vec::with_capacity(gone.len());
    for id in gone {
        delete.execute([&id])?;
        if let Ok(id) = JobId::try_from(id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_proto::jobs::Requester;
    use warden_proto::{Gid, Pid};

    fn record(id: u8, uid: u32, state: JobState) -> JobRecord {
        JobRecord {
            job_id: JobId::from_random([id; 8]),
            action: "demo".to_owned().try_into().unwrap(),
            state,
            progress: None,
            phase: None,
            message: None,
            committed: false,
            exit_code: None,
            result: None,
            malformed_status_lines: 0,
            requester: Requester {
                uid: Uid(uid),
                gid: Gid(uid),
                pid: Pid(1),
                exe: None,
                client: "t".into(),
                connection: 1,
            },
            origin: "local".into(),
            dispatch_id: None,
            params: Default::default(),
            created_at: "2026-01-01T00:00:00.000Z".into(),
            started_at: None,
            ended_at: None,
        }
    }

    fn row(r: JobRecord, created_ms: i64, key: Option<&str>) -> Row {
        Row {
            ended_ms: r.state.is_terminal().then_some(created_ms + 1),
            record: r,
            idempotency_key: key.map(str::to_owned),
            created_ms,
        }
    }

    #[tokio::test]
    async fn records_round_trip_and_unfinished_jobs_become_lost_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        {
            let (l, lost) = Ledger::open(&path, 0, "t0", "m").unwrap();
            assert!(lost.now.is_empty() && lost.earlier.is_empty());
            l.put(&row(record(1, 1000, JobState::Running), 10, Some("k")))
                .await
                .unwrap();
            l.put(&row(record(2, 1000, JobState::Succeeded), 20, None))
                .await
                .unwrap();
            l.put(&row(record(3, 2000, JobState::Queued), 30, None))
                .await
                .unwrap();
            let got = l.get(&JobId::from_random([2; 8])).await.unwrap().unwrap();
            assert_eq!(got.state, JobState::Succeeded);
            assert_eq!(
                l.owner(&JobId::from_random([3; 8])).await.unwrap(),
                Some(Uid(2000))
            );
            assert_eq!(l.owner(&JobId::from_random([9; 8])).await.unwrap(), None);
            let mine = l
                .list(ListQuery {
                    uid: Some(Uid(1000)),
                    state: None,
                    limit: 10,
                })
                .await
                .unwrap();
            assert_eq!(mine.len(), 2);
            assert_eq!(mine[0].job_id, JobId::from_random([2; 8]), "newest first");
            let found = l.idempotent(Uid(1000), "k", 5).await.unwrap();
            assert_eq!(found, Some(JobId::from_random([1; 8])));
            assert_eq!(l.idempotent(Uid(1000), "k", 11).await.unwrap(), None);
            assert_eq!(l.idempotent(Uid(2000), "k", 0).await.unwrap(), None);
        }
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let (l, lost) = Ledger::open(&path, 99, "t99", "daemon stopped").unwrap();
        let mut ids: Vec<_> = lost.now.iter().map(|r| r.job_id.clone()).collect();
        ids.sort();
        assert_eq!(
            ids,
            [JobId::from_random([1; 8]), JobId::from_random([3; 8])]
        );
        assert!(lost.earlier.is_empty());
        let r = l.get(&JobId::from_random([1; 8])).await.unwrap().unwrap();
        assert_eq!(
            (r.state, r.message.as_deref()),
            (JobState::Lost, Some("daemon stopped"))
        );
        let pruned = l.prune(50, 1000).await.unwrap();
        assert_eq!(pruned.len(), 1, "only the job that ended before 50");
    }

    /// Pins: pruning keeps at most `keep_per_uid` finished jobs of each uid (its newest), never a
    /// queued or running one, and leaves other uids' jobs alone.
    #[tokio::test]
    async fn prune_keeps_the_newest_finished_jobs_of_each_uid() {
        let dir = tempfile::tempdir().unwrap();
        let (l, _) = Ledger::open(&dir.path().join("l.db"), 0, "t", "m").unwrap();
        for i in 0..6u8 {
            l.put(&row(
                record(i, 1000, JobState::Succeeded),
                i64::from(i) * 10,
                None,
            ))
            .await
            .unwrap();
        }
        l.put(&row(record(20, 1000, JobState::Running), 1, None))
            .await
            .unwrap();
        for i in 30..32u8 {
            l.put(&row(record(i, 2000, JobState::Failed), i64::from(i), None))
                .await
                .unwrap();
        }
        // Nothing is older than `before`: only the per-uid bound removes anything.
        let mut pruned = l.prune(0, 3).await.unwrap();
        pruned.sort();
        let mut oldest: Vec<JobId> = (0..3u8).map(|i| JobId::from_random([i; 8])).collect();
        oldest.sort();
        assert_eq!(pruned, oldest, "the three oldest finished jobs of uid 1000");
        let count = |uid| {
            let l = &l;
            async move {
                l.list(ListQuery {
                    uid: Some(Uid(uid)),
                    state: None,
                    limit: 100,
                })
                .await
                .unwrap()
                .len()
            }
        };
        assert_eq!(count(1000).await, 4, "three finished and the running one");
        assert_eq!(count(2000).await, 2);
    }

    /// Pins: the checkpoint thread keeps the write-ahead log from growing without bound (no
    /// caller's commit checkpoints any more).
    #[tokio::test]
    async fn the_write_ahead_log_is_checkpointed_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let wal = dir.path().join("l.db-wal");
        let (l, _) = Ledger::open(&path, 0, "t", "m").unwrap();
        let write = |from: u32| {
            let l = &l;
            async move {
                for i in from..from + 300 {
                    let mut r = record(0, 1, JobState::Succeeded);
                    r.job_id = JobId::from_random((u64::from(i)).to_be_bytes());
                    l.put(&row(r, i64::from(i), None)).await.unwrap();
                }
            }
        };
        write(0).await;
        let first = std::fs::metadata(&wal).unwrap().len();
        tokio::time::sleep(CHECKPOINT_EVERY + Duration::from_millis(500)).await;
        write(300).await;
        let second = std::fs::metadata(&wal).unwrap().len();
        // Reused from its start, the log stays near its first size; without a checkpoint the
        // second batch would double it.
        assert!(
            second < first + first / 2,
            "the log grew from {first} to {second} bytes: it was not checkpointed"
        );
        l.close();
        let all = Ledger::open(&path, 0, "t", "m").unwrap().0;
        let listed = all
            .list(ListQuery {
                uid: None,
                state: None,
                limit: 1000,
            })
            .await
            .unwrap();
        assert_eq!(listed.len(), 600, "every write survived");
    }

    #[tokio::test]
    async fn many_concurrent_writes_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let (l, _) = Ledger::open(&dir.path().join("l.db"), 0, "t", "m").unwrap();
        let l = std::sync::Arc::new(l);
        let writes: Vec<_> = (0..200u8)
            .map(|i| {
                let l = l.clone();
                tokio::spawn(async move {
                    l.put(&row(record(i, 1, JobState::Succeeded), i64::from(i), None))
                        .await
                })
            })
            .collect();
        for w in writes {
            w.await.unwrap().unwrap();
        }
        let all = l
            .list(ListQuery {
                uid: None,
                state: None,
                limit: 1000,
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 200);
    }
}
