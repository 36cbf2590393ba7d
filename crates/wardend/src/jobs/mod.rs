//! Jobs: declared actions running as supervised processes, from `job.start` to a final state
//! that is in the ledger before anyone is told.
//!
//! This module owns the live jobs (running, queued, and the most recent finished ones), the
//! concurrency groups, and idempotency keys; [`supervise`] runs each job; [`ledger`] keeps them
//! across restarts. It never decides who may do what: the gate did that before any call here.

mod cgroup;
pub(crate) mod ledger;
pub(crate) mod output;
mod spawn;
mod status;
mod supervise;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use crate::audit::{self, AuditLog};
use crate::events::Bus;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use warden_policy::{ActionSpec, JobSettings, Lockdown, Policy};
use warden_proto::jobs::{JobRecord, JobStarted, JobState, JobSummary, Requester};
use warden_proto::{JobId, Uid};

use self::cgroup::CgroupTree;
pub(crate) use self::ledger::LedgerError;
pub(crate) use self::ledger::LostJobs;
use self::ledger::{Ledger, ListQuery, Row};
use self::output::Output;
pub(crate) use self::supervise::{CancelRefused, Control};

/// How long an idempotency key returns the same job.
const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(600);
/// How often finished jobs older than `history_days` are pruned while the daemon runs.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Milliseconds since the epoch, now.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// RFC 3339 time, now.
fn now_text() -> String {
    crate::clock::now_rfc3339()
}

/// One live job.
#[derive(Debug)]
pub(crate) struct Job {
    pub id: JobId,
    /// The requesting uid.
    pub owner: Uid,
    /// The action as declared when the job started (a later policy does not change it).
    pub action: Arc<ActionSpec>,
    /// The job as it stands; the source of every answer about it.
    record: Mutex<JobRecord>,
    /// Snapshots for `job.wait` and `job.watch`, published at most about every 200 ms for
    /// progress and at once for anything else.
    updates: watch::Sender<JobRecord>,
    /// To the job's supervisor.
    control: mpsc::Sender<Control>,
    pub output: Output,
    created_ms: i64,
    idempotency_key: Option<String>,
}

impl Job {
    fn lock(&self) -> MutexGuard<'_, JobRecord> {
        self.record.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The job as it stands now.
    pub(crate) fn record(&self) -> JobRecord {
        self.lock().clone()
    }

    fn update(&self, f: impl FnOnce(&mut JobRecord)) {
        f(&mut self.lock());
    }

    /// Tells watchers how the job stands.
    fn publish(&self) {
        self.updates.send_replace(self.record());
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<JobRecord> {
        self.updates.subscribe()
    }

    fn row(&self) -> Row {
        let record = self.record();
        Row {
            ended_ms: record.state.is_terminal().then(now_ms),
            record,
            idempotency_key: self.idempotency_key.clone(),
            created_ms: self.created_ms,
        }
    }
}

/// A concurrency group: the job holding it and those queued behind it.
#[derive(Debug, Default)]
struct Group {
    holder: Option<JobId>,
    waiting: VecDeque<(JobId, oneshot::Sender<()>)>,
}

#[derive(Debug, Default)]
struct Table {
    jobs: HashMap<JobId, Arc<Job>>,
    /// Finished jobs still in memory, oldest first, so the oldest is evicted first.
    finished: VecDeque<JobId>,
    /// (requester, idempotency key) → the job it made.
    keys: HashMap<(Uid, String), (JobId, Instant)>,
    groups: HashMap<String, Group>,
    /// How many jobs of each requester are in the table without a final state (queued or
    /// running): what `max_active_per_uid` counts, kept here so that a start need not look at
    /// every job in memory (up to `keep_finished` of them).
    active: HashMap<Uid, usize>,
    /// The jobs in the table without a final state: what `status` counts, so that it need not
    /// look at every finished job kept in memory (up to `keep_finished` of them).
    live: HashSet<JobId>,
    /// Set when the daemon stops its jobs: from then on none is started, so none escapes the
    /// stop (a request already past the gate may still ask).
    closed: bool,
}

/// What `job.start` asks for, after the gate and the parameter checks.
#[derive(Debug)]
pub(crate) struct StartRequest {
    pub action: Arc<ActionSpec>,
    /// Rendered parameter values, secrets included: kept only by the job's supervisor.
    pub values: BTreeMap<String, String>,
    /// The same values with secrets redacted: what is shown and recorded.
    pub shown: BTreeMap<String, Value>,
    /// Secret values, to scrub from the job's output.
    pub secrets: Vec<Vec<u8>>,
    pub requester: Requester,
    pub origin: String,
    /// The fleet dispatch this job runs for. Its idempotency key (the dispatch id) holds as
    /// long as the job's record exists, not only [`IDEMPOTENCY_WINDOW`]: an agent that
    /// restarts and sends the dispatch again gets the same job.
    pub dispatch_id: Option<String>,
    pub idempotency_key: Option<String>,
}

/// Why a job did not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error("concurrency group `{0}` is busy; try again when its job has ended")]
    Busy(String),
    #[error("you have {0} jobs queued or running, the most allowed; start more when one ends")]
    TooMany(usize),
    #[error("the daemon is stopping; the job was not started")]
    Stopping,
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// `job` has left the active count (it ended, or was forgotten before it was recorded). A
/// second call for the same job changes nothing.
fn not_active(t: &mut Table, job: &Job) {
    let uid = job.owner;
    if !t.live.remove(&job.id) {
        return;
    }
    if let Some(n) = t.active.get_mut(&uid) {
        *n -= 1;
        if *n == 0 {
            t.active.remove(&uid);
        }
    }
}

/// What [`Jobs::admit`] decided.
enum Admitted {
    /// Into the table; `Some` when it waits for its concurrency group.
    Run(Option<oneshot::Receiver<()>>),
    /// A job started with the same idempotency key exists.
    Existing(JobId),
}

/// Why a job could not be cancelled.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CancelError {
    #[error("past commit point: the job's effect remains and its action has no rollback")]
    PastCommit,
    #[error("no such job")]
    Gone,
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Why the job system could not start.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error("cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Ledger(String),
}

/// Counts for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Counts {
    pub running: u64,
    pub queued: u64,
}

/// All jobs of the daemon.
#[derive(Debug)]
pub(crate) struct Jobs {
    ledger: Ledger,
    /// Where job cgroups go, or why jobs fall back to process groups.
    cgroups: Result<CgroupTree, String>,
    /// `state_dir/jobs`: one log file per job.
    logs: PathBuf,
    settings: JobSettings,
    table: Mutex<Table>,
    /// The supervisors, so shutdown can wait for them.
    tracker: TaskTracker,
    /// Every state a job enters is recorded here too,
    audit: Arc<AuditLog>,
    /// and published here.
    bus: Bus,
    /// Lost jobs whose `reconcile` a brake holds back (lockdown, an ops toggle off), run by
    /// [`Jobs::resume_deferred`] once the brakes allow. The ledger keeps them owed too, so a
    /// restart does not forget them.
    deferred: Mutex<Vec<JobRecord>>,
}

impl Jobs {
    /// Opens the ledger (marking jobs left unfinished as `lost`), finds the cgroup tree and
    /// clears what lost jobs left in it. Returns the lost jobs, for [`Jobs::recover`].
    pub(crate) async fn open(
        state_dir: &Path,
        settings: JobSettings,
        audit: Arc<AuditLog>,
        bus: Bus,
    ) -> Result<(Arc<Jobs>, LostJobs), JobsError> {
        let logs = state_dir.join("jobs");
        match std::fs::DirBuilder::new().mode(0o700).create(&logs) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(JobsError::Dir { path: logs, source }),
        }
        let (ledger, lost) = Ledger::open(
            &state_dir.join("ledger.db"),
            now_ms(),
            &now_text(),
            "lost: the daemon stopped while the job was queued or running",
        )
        .map_err(|e| JobsError::Ledger(e.to_string()))?;
        let cgroups = CgroupTree::discover(state_dir).map_err(|e| e.to_string());
        match &cgroups {
            Ok(tree) => {
                let left = tree.clear_leftovers().await;
                if left > 0 {
                    tracing::warn!(cgroups = left, "killed what lost jobs left running");
                }
            }
            Err(reason) => tracing::warn!(
                reason = %reason,
                "jobs run without cgroups: stopping a job reaches its process group only"
            ),
        }
        let jobs = Arc::new(Jobs {
            ledger,
            cgroups,
            logs,
            settings,
            table: Mutex::new(Table::default()),
            tracker: TaskTracker::new(),
            audit,
            bus,
            deferred: Mutex::new(Vec::new()),
        });
        for record in &lost.now {
            jobs.audit_record(record);
        }
        jobs.prune().await;
        // And every hour after, so a daemon that runs for months keeps only `history_days`.
        let weak = Arc::downgrade(&jobs);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PRUNE_EVERY).await;
                match weak.upgrade() {
                    Some(jobs) if !jobs.tracker.is_closed() => jobs.prune().await,
                    _ => break,
                }
            }
        });
        Ok((jobs, lost))
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether jobs get cgroups here, and if not, why.
    pub(crate) fn cgroups(&self) -> Result<&Path, &str> {
        match &self.cgroups {
            Ok(tree) => Ok(tree.root()),
            Err(reason) => Err(reason),
        }
    }

    pub(crate) fn counts(&self) -> Counts {
        let t = self.table();
        let mut c = Counts {
            running: 0,
            queued: 0,
        };
        for job in t.live.iter().filter_map(|id| t.jobs.get(id)) {
            match job.lock().state {
                JobState::Running => c.running += 1,
                JobState::Queued => c.queued += 1,
                _ => {}
            }
        }
        c
    }

    fn log_path(&self, id: &JobId) -> PathBuf {
        self.logs.join(format!("{id}.log"))
    }

    /// Deletes ledger history and logs older than `history_days`, and past the newest
    /// `history_per_uid` finished jobs of each uid.
    async fn prune(&self) {
        let before = now_ms() - self.settings.history.as_millis() as i64;
        match self
            .ledger
            .prune(before, self.settings.history_per_uid)
            .await
        {
            Ok(ids) => {
                for id in ids {
                    let _ = std::fs::remove_file(self.log_path(&id));
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot prune old jobs"),
        }
    }

    /// A live job (running, queued, or recently finished).
    pub(crate) fn live(&self, id: &JobId) -> Option<Arc<Job>> {
        self.table().jobs.get(id).cloned()
    }

    /// The requester of job `id`, from memory or the ledger.
    pub(crate) async fn owner(&self, id: &JobId) -> Result<Option<Uid>, LedgerError> {
        if let Some(job) = self.live(id) {
            return Ok(Some(job.owner));
        }
        self.ledger.owner(id).await
    }

    /// Job `id` as it stands.
    pub(crate) async fn record(&self, id: &JobId) -> Result<Option<JobRecord>, LedgerError> {
        if let Some(job) = self.live(id) {
            return Ok(Some(job.record()));
        }
        self.ledger.get(id).await
    }

    /// The log file of job `id`.
    pub(crate) fn log_file(&self, id: &JobId) -> PathBuf {
        self.log_path(id)
    }

    /// Jobs newest first, with live progress where the job is in memory.
    pub(crate) async fn list(
        &self,
        uid: Option<Uid>,
        state: Option<JobState>,
        limit: u32,
    ) -> Result<Vec<JobSummary>, LedgerError> {
        let records = self.ledger.list(ListQuery { uid, state, limit }).await?;
        Ok(records
            .into_iter()
            .map(|r| match self.live(&r.job_id) {
                Some(job) => summary(&job.record()),
                None => summary(&r),
            })
            .collect())
    }

    /// Starts (or queues) a job; answers once it is in the ledger.
    pub(crate) async fn start(
        self: &Arc<Self>,
        req: StartRequest,
    ) -> Result<JobStarted, StartError> {
        let uid = req.requester.uid;
        if let Some(key) = &req.idempotency_key {
            if let Some(id) = self.known_key(uid, key) {
                return Ok(JobStarted {
                    job_id: id,
                    existing: true,
                });
            }
            // A fleet start's key (its dispatch id) holds while the job's record exists.
            let since = if req.dispatch_id.is_some() {
                i64::MIN
            } else {
                now_ms() - IDEMPOTENCY_WINDOW.as_millis() as i64
            };
            if let Some(id) = self.ledger.idempotent(uid, key, since).await? {
                return Ok(JobStarted {
                    job_id: id,
                    existing: true,
                });
            }
        }
        let mut id_bytes = [0u8; 8];
        getrandom::fill(&mut id_bytes).map_err(|e| LedgerError::Transaction(e.to_string()))?;
        let id = JobId::from_random(id_bytes);
        let created = now_text();
        let record = JobRecord {
            job_id: id.clone(),
            action: req.action.name.clone(),
            state: JobState::Queued,
            progress: None,
            phase: None,
            message: None,
            committed: false,
            exit_code: None,
            result: None,
            malformed_status_lines: 0,
            requester: req.requester,
            origin: req.origin,
            dispatch_id: req.dispatch_id.clone(),
            params: req.shown,
            created_at: created,
            started_at: None,
            ended_at: None,
        };
        let (control_tx, control_rx) = mpsc::channel(8);
        let output = Output::create(self.log_path(&id), self.settings.log_cap_bytes, req.secrets);
        let job = Arc::new(Job {
            id: id.clone(),
            owner: uid,
            action: Arc::clone(&req.action),
            updates: watch::channel(record.clone()).0,
            record: Mutex::new(record),
            control: control_tx,
            output,
            created_ms: now_ms(),
            idempotency_key: req.idempotency_key.clone(),
        });

        let turn = match self.admit(&job) {
            Ok(Admitted::Run(turn)) => turn,
            Ok(Admitted::Existing(job_id)) => {
                return Ok(JobStarted {
                    job_id,
                    existing: true,
                });
            }
            Err(e) => return Err(e),
        };
        if turn.is_none() {
            // It runs at once: record it running in this first write instead of queued and then
            // running in two.
            job.update(|r| {
                r.state = JobState::Running;
                r.started_at = Some(r.created_at.clone());
            });
        }
        if let Err(e) = self.persist(&job).await {
            self.forget(&job);
            return Err(e.into());
        }
        job.publish();
        let jobs = Arc::clone(self);
        self.tracker
            .spawn(jobs.supervise(job, req.values, turn, control_rx));
        Ok(JobStarted {
            job_id: id,
            existing: false,
        })
    }

    /// Takes `job` into the table, or says why not: the same idempotency key won meanwhile, the
    /// requester has too many jobs, or its concurrency group is busy and does not queue.
    fn admit(&self, job: &Arc<Job>) -> Result<Admitted, StartError> {
        let uid = job.owner;
        let id = &job.id;
        let mut t = self.table();
        if t.closed {
            return Err(StartError::Stopping);
        }
        // A concurrent start with the same key may have won while the ledger was asked.
        if let Some(key) = &job.idempotency_key
            && let Some(existing) = known(&mut t, uid, key)
        {
            return Ok(Admitted::Existing(existing));
        }
        // Each active job is at least one process: one caller may not fill the host.
        let active = t.active.get(&uid).copied().unwrap_or(0);
        if active >= self.settings.max_active_per_uid {
            return Err(StartError::TooMany(active));
        }
        let turn = match &job.action.concurrency_group {
            None => None,
            Some(g) => {
                let group = t.groups.entry(g.clone()).or_default();
                if group.holder.is_none() {
                    group.holder = Some(id.clone());
                    None
                } else if job.action.queue {
                    let (tx, rx) = oneshot::channel();
                    group.waiting.push_back((id.clone(), tx));
                    Some(rx)
                } else {
                    return Err(StartError::Busy(g.clone()));
                }
            }
        };
        if let Some(key) = &job.idempotency_key {
            t.keys
                .insert((uid, key.clone()), (id.clone(), Instant::now()));
        }
        t.jobs.insert(id.clone(), Arc::clone(job));
        *t.active.entry(uid).or_default() += 1;
        t.live.insert(id.clone());
        Ok(Admitted::Run(turn))
    }

    fn known_key(&self, uid: Uid, key: &str) -> Option<JobId> {
        known(&mut self.table(), uid, key)
    }

    /// Removes a job that never got into the ledger.
    fn forget(&self, job: &Job) {
        let mut t = self.table();
        t.jobs.remove(&job.id);
        not_active(&mut t, job);
        if let Some(key) = &job.idempotency_key {
            t.keys.remove(&(job.owner, key.clone()));
        }
        if let Some(g) = &job.action.concurrency_group {
            self.release_group(&mut t, g, &job.id);
        }
    }

    /// Gives `group` to the next queued job, if `id` held it; drops `id` from its queue.
    fn release_group(&self, t: &mut Table, group: &str, id: &JobId) {
        let Some(g) = t.groups.get_mut(group) else {
            return;
        };
        g.waiting.retain(|(w, _)| w != id);
        if g.holder.as_ref() == Some(id) {
            g.holder = None;
            while let Some((next, turn)) = g.waiting.pop_front() {
                if turn.send(()).is_ok() {
                    g.holder = Some(next);
                    break;
                }
            }
        }
        if g.holder.is_none() && g.waiting.is_empty() {
            t.groups.remove(group);
        }
    }

    /// `job` has just taken its final state: it no longer counts against its requester's
    /// `max_active_per_uid` (from this moment, as when the count looked at each job's state).
    fn ended(&self, job: &Job) {
        not_active(&mut self.table(), job);
    }

    /// Bookkeeping once `job` is final: its group moves on, and old finished jobs leave memory
    /// (running jobs never do).
    fn retire(&self, job: &Job) {
        let mut t = self.table();
        if let Some(g) = &job.action.concurrency_group {
            self.release_group(&mut t, g, &job.id);
        }
        t.finished.push_back(job.id.clone());
        while t.finished.len() > self.settings.keep_finished {
            if let Some(old) = t.finished.pop_front() {
                t.jobs.remove(&old);
            }
        }
        let horizon = Instant::now().checked_sub(IDEMPOTENCY_WINDOW);
        if let Some(horizon) = horizon {
            t.keys.retain(|_, (_, at)| *at >= horizon);
        }
    }

    /// Writes the job as it stands to the ledger.
    async fn persist(&self, job: &Job) -> Result<(), LedgerError> {
        let row = job.row();
        self.ledger.put(&row).await?;
        self.audit_record(&row.record);
        Ok(())
    }

    /// Records in the audit log the state `record` has just been written with.
    fn audit_record(&self, record: &JobRecord) {
        let r = &record.requester;
        let state = if record.committed && !record.state.is_terminal() {
            "committed"
        } else {
            record.state.as_str()
        };
        if self.bus.listened() {
            self.bus.publish(
                "job",
                Some(r.uid.0),
                serde_json::json!({
                    "job_id": record.job_id,
                    "action": record.action,
                    "state": state,
                    "uid": r.uid.0,
                }),
            );
        }
        self.audit.record(audit::Event {
            peer: Some(audit::Peer {
                uid: r.uid.0,
                gid: r.gid.0,
                pid: r.pid.0,
                exe: r.exe.clone(),
                client: Some(r.client.clone()),
            }),
            action: Some(record.action.to_string()),
            params: serde_json::to_value(&record.params).ok(),
            outcome: Some(state.to_owned()),
            reason: record
                .state
                .is_terminal()
                .then(|| record.message.clone())
                .flatten(),
            job_id: Some(record.job_id.to_string()),
            origin: record.dispatch_id.is_some().then(|| record.origin.clone()),
            dispatch_id: record.dispatch_id.clone(),
            ..audit::Event::new(audit::Kind::Job)
        });
    }

    /// Cancels a job: a queued one at once; a running one before its commit point; after it
    /// only if its action can roll back. Returns the job once it is final.
    pub(crate) async fn cancel(&self, id: &JobId) -> Result<JobRecord, CancelError> {
        let Some(job) = self.live(id) else {
            // Not in memory: finished long ago. Cancelling a finished job changes nothing.
            return self.ledger.get(id).await?.ok_or(CancelError::Gone);
        };
        let mut updates = job.subscribe();
        if job.record().state.is_terminal() {
            return Ok(job.record());
        }
        let (reply, answer) = oneshot::channel();
        if job.control.send(Control::Cancel(reply)).await.is_ok() {
            match answer.await {
                Ok(Err(CancelRefused::PastCommit)) => return Err(CancelError::PastCommit),
                Ok(Ok(())) | Err(_) => {}
            }
        }
        let _ = updates.wait_for(|r| r.state.is_terminal()).await;
        Ok(job.record())
    }

    /// Asks every queued or running job whose action `stop` picks to cancel, as `job.cancel`
    /// would (a job past its commit point without a rollback goes on). Returns their ids; the
    /// cancels run in the background.
    pub(crate) fn cancel_where(self: &Arc<Self>, stop: impl Fn(&ActionSpec) -> bool) -> Vec<JobId> {
        let picked: Vec<JobId> = self
            .table()
            .jobs
            .values()
            .filter(|j| !j.record().state.is_terminal() && stop(&j.action))
            .map(|j| j.id.clone())
            .collect();
        for id in &picked {
            let (jobs, id) = (Arc::clone(self), id.clone());
            tokio::spawn(async move {
                if let Err(e) = jobs.cancel(&id).await {
                    tracing::warn!(job = %id, error = %e, "a job asked to stop goes on");
                }
            });
        }
        picked
    }

    /// Waits until job `id` is final, at most `limit`; returns it as it then stands.
    pub(crate) async fn wait(
        &self,
        id: &JobId,
        limit: Duration,
    ) -> Result<Option<JobRecord>, LedgerError> {
        let Some(job) = self.live(id) else {
            return self.ledger.get(id).await;
        };
        let mut updates = job.subscribe();
        let _ = tokio::time::timeout(limit, updates.wait_for(|r| r.state.is_terminal())).await;
        Ok(Some(job.record()))
    }

    /// Stops every job for shutdown: queued and uncommitted ones are cancelled; committed ones
    /// get until the grace period ends, then are killed. Returns once each has a final state in
    /// the ledger.
    pub(crate) async fn shutdown(&self) {
        let deadline = Instant::now() + self.settings.shutdown_grace;
        // Closed and listed under one lock: every job admitted is in the list and told to stop.
        let live: Vec<Arc<Job>> = {
            let mut t = self.table();
            t.closed = true;
            t.jobs.values().cloned().collect()
        };
        for job in &live {
            if !job.record().state.is_terminal() {
                let _ = job.control.try_send(Control::Shutdown { deadline });
            }
        }
        self.tracker.close();
        // Every supervisor ends by the deadline plus its cancel grace and a kill; this bound
        // only guards against a bug.
        let longest = live
            .iter()
            .map(|j| j.action.cancel_grace)
            .max()
            .unwrap_or_default();
        let bound = self.settings.shutdown_grace + longest + Duration::from_secs(10);
        if tokio::time::timeout(bound, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::error!("jobs still running after the shutdown bound");
        }
        // Every job cgroup is gone now; the next start makes the directory again.
        if let Ok(tree) = &self.cgroups {
            tree.remove_root();
        }
        self.ledger.close();
    }

    /// Undoes what opening made, for a daemon whose start failed after it (before any job ran):
    /// the cgroup directory.
    pub(crate) fn abandon(&self) {
        if let Ok(tree) = &self.cgroups {
            tree.remove_root();
        }
    }

    /// Runs the `reconcile` of each lost job whose action declares one (in the background),
    /// unless a brake stops that action now (`ops`, `lockdown`: read before anything runs).
    /// Then the reconcile is deferred: the job's message says why, and it runs when
    /// [`Jobs::resume_deferred`] finds the brakes released.
    pub(crate) fn recover(
        self: &Arc<Self>,
        lost: LostJobs,
        policy: &Policy,
        ops: &BTreeMap<String, bool>,
        lockdown: Option<&Lockdown>,
    ) {
        for record in lost.now {
            tracing::warn!(job = %record.job_id, action = %record.action, "job lost when the daemon stopped");
            self.reconcile_or_defer(record, policy, ops, lockdown);
        }
        for record in lost.earlier {
            self.reconcile_or_defer(record, policy, ops, lockdown);
        }
    }

    /// Runs the reconciles [`Jobs::recover`] deferred whose action no brake stops now.
    pub(crate) fn resume_deferred(
        self: &Arc<Self>,
        policy: &Policy,
        ops: &BTreeMap<String, bool>,
        lockdown: Option<&Lockdown>,
    ) {
        let waiting =
            std::mem::take(&mut *self.deferred.lock().unwrap_or_else(PoisonError::into_inner));
        for record in waiting {
            self.reconcile_or_defer(record, policy, ops, lockdown);
        }
    }

    fn reconcile_or_defer(
        self: &Arc<Self>,
        mut record: JobRecord,
        policy: &Policy,
        ops: &BTreeMap<String, bool>,
        lockdown: Option<&Lockdown>,
    ) {
        let jobs = Arc::clone(self);
        let Some(action) = policy
            .actions
            .get(&record.action)
            .filter(|a| a.reconcile.is_some())
        else {
            // Nothing to run (or the action is no longer declared): nothing is owed.
            self.tracker.spawn(async move {
                if let Err(e) = jobs.ledger.reconciled(&record.job_id).await {
                    tracing::error!(job = %record.job_id, error = %e, "cannot record a reconcile");
                }
            });
            return;
        };
        let Some(brake) = action.braked(ops, lockdown) else {
            self.tracker
                .spawn(jobs.reconcile(Arc::clone(action), record));
            return;
        };
        let message = format!(
            "lost: the daemon stopped while the job was queued or running; reconcile deferred until released: {brake}"
        );
        // Said and stored once per brake: a job still held by the same brake (at a restart,
        // or when another brake was released) is only queued again.
        let changed = record.message.as_deref() != Some(message.as_str());
        if changed {
            tracing::warn!(job = %record.job_id, action = %record.action, brake = %brake,
                "reconcile of a lost job deferred by a brake");
            record.message = Some(message);
        }
        self.deferred
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(record.clone());
        if changed {
            self.tracker.spawn(async move {
                if let Err(e) = jobs.ledger.rewrite(&record).await {
                    tracing::error!(job = %record.job_id, error = %e, "cannot record a deferred reconcile");
                }
            });
        }
    }
}

fn known(t: &mut Table, uid: Uid, key: &str) -> Option<JobId> {
    let (id, at) = t.keys.get(&(uid, key.to_owned()))?;
    (at.elapsed() < IDEMPOTENCY_WINDOW).then(|| id.clone())
}

/// A job's metadata, for `job.list`.
pub(crate) fn summary(r: &JobRecord) -> JobSummary {
    JobSummary {
        job_id: r.job_id.clone(),
        action: r.action.clone(),
        state: r.state,
        progress: r.progress,
        requester_uid: r.requester.uid,
        origin: r.origin.clone(),
        dispatch_id: r.dispatch_id.clone(),
        created_at: r.created_at.clone(),
        ended_at: r.ended_at.clone(),
    }
}
