//! The ledger: every job and each of its state transitions, in SQLite (`state_dir/ledger.db`,
//! WAL). A transition is committed here before anyone is told about it, so after a crash the
//! ledger knows every job that was acknowledged and which of them were still running.
//!
//! One thread owns the database; callers send it operations and await the answer. Writes that
//! queue up while a transaction commits go into the next transaction together, so many jobs do
//! not cost one commit each. `synchronous = NORMAL`: a commit survives the daemon crashing or
//! being killed; a power loss may lose the transitions since the last checkpoint (syncing each
//! commit would cost a disk flush per transition; the database itself stays consistent).
//!
//! It stores job records with secret parameters already redacted; nothing secret reaches it.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;
use warden_proto::jobs::{JobRecord, JobState};
use warden_proto::{JobId, Uid};

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

type Reply<T> = oneshot::Sender<Result<T, LedgerError>>;

/// Answers one operation's caller once its transaction's fate is known (given the commit
/// error, if any).
type Answer = Box<dyn FnOnce(Option<&str>)>;

enum Op {
    Put(Box<Row>, Reply<()>),
    Get(JobId, Reply<Option<JobRecord>>),
    Owner(JobId, Reply<Option<Uid>>),
    List(ListQuery, Reply<Vec<JobRecord>>),
    Idempotent(Uid, String, i64, Reply<Option<JobId>>),
    Prune(i64, Reply<Vec<JobId>>),
}

/// Handle to the ledger thread.
#[derive(Debug)]
pub(crate) struct Ledger {
    tx: std::sync::Mutex<Option<mpsc::Sender<Op>>>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
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
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state);
CREATE INDEX IF NOT EXISTS jobs_by_key ON jobs (requester_uid, idempotency_key);
";

/// Jobs that were queued or running when the daemon stopped, now marked lost.
pub(crate) type LostJobs = Vec<JobRecord>;

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
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("warden-ledger".into())
            .spawn(move || serve(conn, rx))
            .map_err(|source| LedgerError::Create {
                path: path.into(),
                source,
            })?;
        Ok((
            Ledger {
                tx: std::sync::Mutex::new(Some(tx)),
                thread: std::sync::Mutex::new(Some(thread)),
            },
            lost,
        ))
    }

    async fn ask<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, LedgerError> {
        let (reply, answer) = oneshot::channel();
        {
            let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
            let tx = tx.as_ref().ok_or(LedgerError::Stopped)?;
            tx.send(op(reply)).map_err(|_| LedgerError::Stopped)?;
        }
        answer.await.map_err(|_| LedgerError::Stopped)?
    }

    /// Records a job as it now stands.
    pub(crate) async fn put(&self, row: Row) -> Result<(), LedgerError> {
        self.ask(|r| Op::Put(Box::new(row), r)).await
    }

    pub(crate) async fn get(&self, id: &JobId) -> Result<Option<JobRecord>, LedgerError> {
        self.ask(|r| Op::Get(id.clone(), r)).await
    }

    pub(crate) async fn owner(&self, id: &JobId) -> Result<Option<Uid>, LedgerError> {
        self.ask(|r| Op::Owner(id.clone(), r)).await
    }

    /// Newest first.
    pub(crate) async fn list(&self, q: ListQuery) -> Result<Vec<JobRecord>, LedgerError> {
        self.ask(|r| Op::List(q, r)).await
    }

    /// The job `uid` started with `key` after `since_ms`, if any.
    pub(crate) async fn idempotent(
        &self,
        uid: Uid,
        key: &str,
        since_ms: i64,
    ) -> Result<Option<JobId>, LedgerError> {
        self.ask(|r| Op::Idempotent(uid, key.to_owned(), since_ms, r))
            .await
    }

    /// Deletes finished jobs that ended before `before_ms`; returns their ids.
    pub(crate) async fn prune(&self, before_ms: i64) -> Result<Vec<JobId>, LedgerError> {
        self.ask(|r| Op::Prune(before_ms, r)).await
    }

    /// Finishes outstanding writes and closes the database.
    pub(crate) fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
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
    }
    tx.commit()?;
    Ok(lost)
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

fn serve(mut conn: Connection, rx: mpsc::Receiver<Op>) {
    while let Ok(first) = rx.recv() {
        // Everything already queued goes into one transaction with the first operation.
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let tx = match conn.transaction() {
            Ok(tx) => tx,
            Err(e) => {
                let msg = e.to_string();
                for op in batch {
                    fail(op, &msg);
                }
                continue;
            }
        };
        let mut replies: Vec<Answer> = Vec::new();
        for op in batch {
            replies.push(run(&tx, op));
        }
        let committed = tx.commit().map_err(|e| e.to_string()).err();
        for reply in replies {
            reply(committed.as_deref());
        }
    }
}

/// Answers `op` with an error (the transaction could not start).
fn fail(op: Op, msg: &str) {
    let err = || LedgerError::Transaction(msg.to_owned());
    match op {
        Op::Put(_, r) => drop(r.send(Err(err()))),
        Op::Get(_, r) => drop(r.send(Err(err()))),
        Op::Owner(_, r) => drop(r.send(Err(err()))),
        Op::List(_, r) => drop(r.send(Err(err()))),
        Op::Idempotent(_, _, _, r) => drop(r.send(Err(err()))),
        Op::Prune(_, r) => drop(r.send(Err(err()))),
    }
}

/// Runs `op` inside the open transaction; the returned closure answers the caller once the
/// transaction's fate is known (a write is only acknowledged after its commit).
fn run(tx: &rusqlite::Transaction<'_>, op: Op) -> Answer {
    fn answer<T: 'static>(r: Reply<T>, result: Result<T, LedgerError>) -> Answer {
        Box::new(move |commit_error: Option<&str>| {
            let result = match (result, commit_error) {
                (Ok(_), Some(e)) => Err(LedgerError::Transaction(format!("commit failed: {e}"))),
                (r, _) => r,
            };
            let _ = r.send(result);
        })
    }
    match op {
        Op::Put(row, r) => answer(r, put(tx, &row)),
        Op::Get(id, r) => {
            let got = tx
                .prepare_cached("SELECT record FROM jobs WHERE id = ?1")
                .and_then(|mut s| {
                    s.query_row([id.as_str()], |row| row.get::<_, String>(0))
                        .optional()
                })
                .map_err(LedgerError::from)
                .and_then(|t| t.map(decode).transpose());
            answer(r, got)
        }
        Op::Owner(id, r) => {
            let got = tx
                .prepare_cached("SELECT requester_uid FROM jobs WHERE id = ?1")
                .and_then(|mut s| {
                    s.query_row([id.as_str()], |row| row.get::<_, u32>(0))
                        .optional()
                })
                .map(|o| o.map(Uid))
                .map_err(LedgerError::from);
            answer(r, got)
        }
        Op::List(q, r) => answer(r, list(tx, &q)),
        Op::Idempotent(uid, key, since, r) => {
            let got = tx
                .query_row(
                    "SELECT id FROM jobs WHERE requester_uid = ?1 AND idempotency_key = ?2
                     AND created_ms >= ?3 ORDER BY created_ms DESC LIMIT 1",
                    params![uid.0, key, since],
                    |row| row.get::<_, String>(0),
                )
                .optional()
                .map(|o| o.and_then(|s| JobId::try_from(s).ok()))
                .map_err(LedgerError::from);
            answer(r, got)
        }
        Op::Prune(before, r) => answer(r, prune(tx, before)),
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

fn prune(tx: &rusqlite::Transaction<'_>, before: i64) -> Result<Vec<JobId>, LedgerError> {
    let mut ids = Vec::new();
    {
        let mut stmt = tx.prepare(
            "SELECT id FROM jobs WHERE ended_ms IS NOT NULL AND ended_ms < ?1
             AND state NOT IN ('queued', 'running')",
        )?;
        for id in stmt.query_map([before], |row| row.get::<_, String>(0))? {
            if let Ok(id) = JobId::try_from(id?) {
                ids.push(id);
            }
        }
    }
    tx.execute(
        "DELETE FROM jobs WHERE ended_ms IS NOT NULL AND ended_ms < ?1
         AND state NOT IN ('queued', 'running')",
        [before],
    )?;
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
            assert!(lost.is_empty());
            l.put(row(record(1, 1000, JobState::Running), 10, Some("k")))
                .await
                .unwrap();
            l.put(row(record(2, 1000, JobState::Succeeded), 20, None))
                .await
                .unwrap();
            l.put(row(record(3, 2000, JobState::Queued), 30, None))
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
        let mut ids: Vec<_> = lost.iter().map(|r| r.job_id.clone()).collect();
        ids.sort();
        assert_eq!(
            ids,
            [JobId::from_random([1; 8]), JobId::from_random([3; 8])]
        );
        let r = l.get(&JobId::from_random([1; 8])).await.unwrap().unwrap();
        assert_eq!(
            (r.state, r.message.as_deref()),
            (JobState::Lost, Some("daemon stopped"))
        );
        let pruned = l.prune(50).await.unwrap();
        assert_eq!(pruned.len(), 1, "only the job that ended before 50");
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
                    l.put(row(record(i, 1, JobState::Succeeded), i64::from(i), None))
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
