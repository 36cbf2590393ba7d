//! Supervising one job from its turn to its final state.
//!
//! The rules it keeps:
//! - before `commit`, cancel stops the job and it ends `cancelled`;
//! - after `commit`, cancel is refused unless the action has a rollback, which then runs after
//!   the job is stopped, and the job ends `rolled_back` (or `failed` if the rollback fails);
//! - a job is never reported `cancelled` while its effect may remain: the status pipe is read to
//!   its end after the job stops, and a `commit` found there counts;
//! - stopping sends the action's cancel signal to the job's process group, waits its grace, then
//!   kills the whole cgroup (or the process group without cgroups);
//! - when the job's first process exits, whatever it left behind is killed too;
//! - every final state is in the ledger before it is published.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use warden_policy::ActionSpec;
use warden_policy::actions::render;
use warden_proto::jobs::{JobRecord, JobState};
use warden_sys::spawn::{Exit, Identity};

use super::cgroup::JobCgroup;
use super::spawn::{self, Running};
use super::status::{self, Piece, StatusLine};
use super::{Job, Jobs, now_text};

/// Messages to a job's supervisor.
#[derive(Debug)]
pub(crate) enum Control {
    /// Stop the job if that is allowed; the answer says whether it is.
    Cancel(oneshot::Sender<Result<(), CancelRefused>>),
    /// The daemon is stopping: cancel if possible, else let the job run until `deadline`.
    Shutdown { deadline: Instant },
}

/// Why a cancel was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelRefused {
    PastCommit,
}

/// Why the daemon stopped a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Cancel,
    Timeout,
    Shutdown,
}

/// Progress is published at most this often (a real change is published at once).
const PUBLISH_EVERY: Duration = Duration::from_millis(200);
/// After a job's first process exits, how long its pipes may take to deliver the rest.
const DRAIN: Duration = Duration::from_secs(2);

/// How one process ended.
#[derive(Debug)]
struct Ended {
    exit: Option<Exit>,
    spawn_error: Option<String>,
    stop: Option<Stop>,
    /// Whether the daemon actually signalled the process (a job may finish on its own first).
    signalled: bool,
}

impl Ended {
    fn succeeded(&self) -> bool {
        self.exit.is_some_and(|s| s.success())
    }

    fn exit_code(&self) -> Option<i32> {
        self.exit.and_then(|s| s.code)
    }

    /// "exited with status 3", "killed by signal 9", or why it never ran.
    fn describe(&self) -> String {
        if let Some(e) = &self.spawn_error {
            return format!("could not start: {e}");
        }
        match self.exit {
            Some(s) => match (s.code, s.signal) {
                (Some(c), _) => format!("exited with status {c}"),
                (None, Some(sig)) => format!("killed by signal {sig}"),
                (None, None) => "ended".to_owned(),
            },
            None => "ended without an exit status".to_owned(),
        }
    }
}

/// The state of one running process that the select loop updates.
struct Watch<'a> {
    job: &'a Job,
    run: Running,
    cgroup: Option<&'a JobCgroup>,
    /// Whether status lines are the job's own (not a rollback's or reconcile's).
    main: bool,
    stop: Option<Stop>,
    signalled: bool,
    kill_at: Option<Instant>,
    /// While the daemon shuts down, a committed job may run until here.
    shutdown_deadline: Option<Instant>,
    exit: Option<Exit>,
    drain_until: Option<Instant>,
    lines: status::Lines,
    last_publish: Instant,
    flush_at: Option<Instant>,
    /// The cgroup was found empty when the first process exited: nothing can enter it after.
    found_empty: bool,
}

impl Watch<'_> {
    fn committed(&self) -> bool {
        self.job.lock().committed
    }

    /// Asks the job to stop: its cancel signal to the process group now, SIGKILL to all of it
    /// after the grace period.
    fn begin_stop(&mut self, why: Stop) {
        if self.stop.is_none() {
            self.stop = Some(why);
        }
        if self.exit.is_some() || self.kill_at.is_some() {
            return;
        }
        let sig = warden_sys::spawn::signal_number(&self.job.action.cancel_signal)
            .unwrap_or(warden_sys::spawn::SIGKILL);
        if self.run.signal_group(sig).is_ok() {
            self.signalled = true;
        }
        self.kill_at = Some(Instant::now() + self.job.action.cancel_grace);
    }

    /// SIGKILL to everything of the job.
    fn kill_all(&mut self) {
        if let Some(cg) = self.cgroup {
            let _ = cg.kill();
        }
        if self.run.signal_group(warden_sys::spawn::SIGKILL).is_ok() {
            self.signalled = true;
        }
    }

    /// After the first process exits, before it is reaped (its group can be named only until
    /// then): anything it left behind goes too.
    fn kill_leftovers(&mut self) {
        match self.cgroup {
            Some(cg) if cg.is_populated() => {
                let _ = cg.kill();
            }
            Some(_) => self.found_empty = true,
            None => {
                let _ = self.run.signal_group(warden_sys::spawn::SIGKILL);
            }
        }
    }

    fn on_control(&mut self, c: Control) {
        match c {
            Control::Cancel(reply) => {
                if !self.main || self.stop.is_some() {
                    // A rollback or a stop is already under way.
                    let _ = reply.send(Ok(()));
                } else if self.committed() && self.job.action.rollback.is_none() {
                    let _ = reply.send(Err(CancelRefused::PastCommit));
                } else {
                    let _ = reply.send(Ok(()));
                    self.begin_stop(Stop::Cancel);
                }
            }
            Control::Shutdown { deadline } => {
                if self.main && self.committed() {
                    // Committed work may finish; it is killed only at the deadline.
                    self.stop = Some(Stop::Shutdown);
                    self.shutdown_deadline = Some(deadline);
                } else {
                    self.begin_stop(Stop::Shutdown);
                }
            }
        }
    }

    async fn on_status(&mut self, jobs: &Jobs, data: &[u8]) {
        let mut pieces = Vec::new();
        self.lines.push(data, &mut pieces);
        for piece in pieces {
            self.on_line(jobs, piece).await;
        }
    }

    async fn on_line(&mut self, jobs: &Jobs, piece: Piece) {
        if !self.main {
            return;
        }
        let parsed = match piece {
            // Parsed first, then scrubbed: the keywords (`commit` above all) must be read as
            // the job wrote them, even when a secret equals one; a secret the job echoes in a
            // phase, a message or a result is then replaced before it is stored or shown.
            Piece::Line(l) => {
                status::parse(&l).map(|line| line.scrubbed(|t| self.job.output.scrub_text(t)))
            }
            Piece::TooLong => None,
        };
        let Some(line) = parsed else {
            self.job.update(|r| r.malformed_status_lines += 1);
            return;
        };
        let at_once = match line {
            StatusLine::Progress {
                pct,
                phase,
                message,
            } => {
                let mut changed_phase = false;
                self.job.update(|r| {
                    r.progress = Some(pct);
                    if phase.is_some() && phase != r.phase {
                        r.phase = phase;
                        changed_phase = true;
                    }
                    if message.is_some() {
                        r.message = message;
                    }
                });
                changed_phase
            }
            StatusLine::Phase(p) => {
                self.job.update(|r| {
                    // The message of the phase before would be stale.
                    if r.phase.as_ref() != Some(&p) {
                        r.message = None;
                    }
                    r.phase = Some(p);
                });
                true
            }
            StatusLine::Commit => {
                if !self.committed() {
                    self.job.update(|r| r.committed = true);
                    if let Err(e) = jobs.persist(self.job).await {
                        tracing::error!(job = %self.job.id, error = %e, "cannot record a commit in the ledger");
                    }
                }
                true
            }
            StatusLine::Result(v) => {
                self.job.update(|r| r.result = Some(v));
                true
            }
        };
        let now = Instant::now();
        if at_once || now >= self.last_publish + PUBLISH_EVERY {
            self.publish(now);
        } else if self.flush_at.is_none() {
            self.flush_at = Some(self.last_publish + PUBLISH_EVERY);
        }
    }

    fn publish(&mut self, now: Instant) {
        self.job.publish();
        self.last_publish = now;
        self.flush_at = None;
    }
}

/// Which process of a job a cgroup is for.
#[derive(Debug, Clone, Copy)]
enum Part {
    Main,
    Rollback,
    Reconcile,
}

/// What one process of a job runs.
struct Program {
    argv: Vec<String>,
    /// What it reads on stdin (the action's `stdin`, rendered); `None`: `/dev/null`.
    stdin: Option<String>,
}

/// A timer that never fires when there is no deadline.
async fn at(deadline: Option<Instant>) {
    match deadline {
        Some(d) => sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl Jobs {
    /// A fresh cgroup for one process of `job` (`what`: its program, rollback or reconcile).
    /// Each gets its own: a cgroup that has been killed kills every process later created in it
    /// with `CLONE_INTO_CGROUP` (seen on Linux 6.18), so a rollback must never start in the
    /// cgroup of the job it undoes.
    fn cgroup_for(&self, job: &Job, what: Part) -> Option<JobCgroup> {
        let tree = self.cgroups.as_ref().ok()?;
        let name = match what {
            Part::Main => job.id.to_string(),
            Part::Rollback => format!("{}-rollback", job.id),
            Part::Reconcile => format!("{}-reconcile", job.id),
        };
        match tree.create(&name) {
            Ok(cg) => Some(cg),
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "cannot make the job's cgroup; using its process group");
                None
            }
        }
    }

    /// Runs `argv` as one process of `job` until it and everything it started are gone.
    async fn run_process(
        &self,
        job: &Job,
        program: &Program,
        identity: Option<Identity>,
        cgroup: Option<&JobCgroup>,
        control: &mut mpsc::Receiver<Control>,
        main: bool,
    ) -> Ended {
        let stdin = program.stdin.as_deref().map(str::as_bytes);
        let started = spawn::start(&job.action, identity, &job.id, &program.argv, stdin, cgroup);
        let run = match started.await {
            Ok(r) => r,
            Err(e) => {
                return Ended {
                    exit: None,
                    spawn_error: Some(e.to_string()),
                    stop: None,
                    signalled: false,
                };
            }
        };
        let timeout_at = Instant::now() + job.action.timeout;
        let mut w = Watch {
            job,
            run,
            cgroup,
            main,
            stop: None,
            signalled: false,
            kill_at: None,
            shutdown_deadline: None,
            exit: None,
            drain_until: None,
            lines: status::Lines::default(),
            last_publish: Instant::now(),
            flush_at: None,
            found_empty: false,
        };
        let (mut status_open, mut output_open) = (true, true);
        let mut status_buf = vec![0u8; 4096];
        let mut output_buf = vec![0u8; 16 * 1024];
        while w.exit.is_none() || status_open || output_open {
            let running = w.exit.is_none();
            tokio::select! {
                exited = spawn::exited(&w.run.pidfd), if running => {
                    w.kill_leftovers();
                    // An error means the child cannot be waited for at all; treat it as gone.
                    w.exit = Some(match exited {
                        Ok(()) => w.run.reap(),
                        Err(_) => Exit { code: None, signal: None },
                    });
                    w.drain_until = Some(Instant::now() + DRAIN);
                }
                n = w.run.status.read(&mut status_buf), if status_open => match n {
                    Ok(0) | Err(_) => {
                        status_open = false;
                        if let Some(last) = w.lines.finish() {
                            w.on_line(self, Piece::Line(last)).await;
                        }
                    }
                    Ok(n) => w.on_status(self, &status_buf[..n]).await,
                },
                n = w.run.output.read(&mut output_buf), if output_open => match n {
                    Ok(0) | Err(_) => output_open = false,
                    Ok(n) => job.output.write(&output_buf[..n]),
                },
                Some(c) = control.recv() => w.on_control(c),
                _ = sleep_until(timeout_at), if running && w.stop.is_none() => {
                    w.begin_stop(Stop::Timeout);
                }
                _ = at(w.kill_at), if running && w.kill_at.is_some() => {
                    w.kill_all();
                    w.kill_at = None;
                }
                _ = at(w.shutdown_deadline), if running && w.shutdown_deadline.is_some() => {
                    w.kill_all();
                    w.shutdown_deadline = None;
                }
                _ = at(w.drain_until), if w.drain_until.is_some() => {
                    // Something still holds the pipes open (without a cgroup, a daemon the job
                    // left may): stop waiting for it.
                    status_open = false;
                    output_open = false;
                }
                _ = at(w.flush_at), if w.flush_at.is_some() => w.publish(Instant::now()),
            }
        }
        if w.flush_at.is_some() {
            w.publish(Instant::now());
        }
        if let Some(cg) = cgroup
            && !w.found_empty
        {
            // The first process is gone and the pipes are closed; make sure nothing is left.
            if cg.is_populated() {
                let _ = cg.kill();
                cg.wait_empty(Duration::from_secs(5)).await;
            }
        }
        Ended {
            exit: w.exit,
            spawn_error: None,
            stop: w.stop,
            signalled: w.signalled,
        }
    }

    /// A job's whole life after `job.start` answered.
    pub(super) async fn supervise(
        self: Arc<Self>,
        job: Arc<Job>,
        values: BTreeMap<String, String>,
        turn: Option<oneshot::Receiver<()>>,
        mut control: mpsc::Receiver<Control>,
    ) {
        let queued = turn.is_some();
        if let Some(turn) = turn {
            let got_turn = tokio::select! {
                got = turn => got.is_ok(),
                c = control.recv() => {
                    if let Some(Control::Cancel(reply)) = c {
                        let _ = reply.send(Ok(()));
                    }
                    false
                }
            };
            if !got_turn {
                self.finish(
                    &job,
                    JobState::Cancelled,
                    Some("cancelled before it started".into()),
                    None,
                )
                .await;
                return;
            }
        }

        // A job that never queued was recorded as running by its first write (see
        // `Jobs::start`); only one that waited for its turn has a transition to record here.
        if queued {
            job.update(|r| {
                r.state = JobState::Running;
                r.started_at = Some(now_text());
            });
        }
        if queued && let Err(e) = self.persist(&job).await {
            tracing::error!(job = %job.id, error = %e, "cannot record a job start; not running it");
            self.finish(
                &job,
                JobState::Failed,
                Some("could not be recorded in the ledger".into()),
                None,
            )
            .await;
            return;
        }
        job.publish();

        let identity = match spawn::identity_of(&job.action) {
            Ok(i) => i,
            Err(e) => {
                let msg =
                    format!("could not start: cannot find the groups of its run_as user: {e}");
                self.finish(&job, JobState::Failed, Some(msg), None).await;
                return;
            }
        };
        let cgroup = self.cgroup_for(&job, Part::Main);
        let program = Program {
            argv: render(&job.action.argv, &values),
            stdin: job.action.stdin.as_ref().map(|t| t.render(&values)),
        };
        let ended = self
            .run_process(
                &job,
                &program,
                identity.clone(),
                cgroup.as_ref(),
                &mut control,
                true,
            )
            .await;
        let committed = job.lock().committed;
        let rollback = job.action.rollback.is_some();
        let signalled = ended.signalled;
        // The outcome, by why the daemon stopped the job (if it did) and whether the job had
        // passed its commit point.
        let (state, message) = match ended.stop {
            _ if ended.spawn_error.is_some() => (JobState::Failed, Some(ended.describe())),
            Some(Stop::Cancel) if signalled && committed && rollback => {
                let (s, m) = self
                    .roll_back(
                        &job,
                        &values,
                        identity,
                        &mut control,
                        "cancelled after its commit point",
                    )
                    .await;
                (s, Some(m))
            }
            Some(Stop::Cancel) if signalled && committed => (
                JobState::Failed,
                Some("cancelled after its commit point; its effect may remain".into()),
            ),
            Some(Stop::Cancel) if signalled => (JobState::Cancelled, Some("cancelled".into())),
            Some(Stop::Timeout) if committed && rollback => {
                let (s, m) = self
                    .roll_back(
                        &job,
                        &values,
                        identity,
                        &mut control,
                        "timed out after its commit point",
                    )
                    .await;
                (s, Some(m))
            }
            Some(Stop::Timeout) if committed => (
                JobState::TimedOut,
                Some("timed out after its commit point; its effect may remain".into()),
            ),
            Some(Stop::Timeout) => (JobState::TimedOut, Some("timed out".into())),
            Some(Stop::Shutdown) if signalled && committed => (
                JobState::Failed,
                Some("killed at shutdown after its commit point; its effect may remain".into()),
            ),
            Some(Stop::Shutdown) if signalled => {
                (JobState::Cancelled, Some("cancelled at shutdown".into()))
            }
            // Not stopped by the daemon, or it finished before the signal went out.
            _ if ended.succeeded() => (JobState::Succeeded, None),
            _ => (JobState::Failed, Some(ended.describe())),
        };
        drop(values);
        self.finish(&job, state, message, ended.exit_code()).await;
        // The final state is recorded and published: the cgroup is empty, removing it is
        // housekeeping. (A `job.wait` woken on this same worker thread answers after this
        // `rmdir`; yielding to it first measured no better in the jobs bench.)
        if let Some(cg) = &cgroup {
            cg.remove();
        }
    }

    /// Runs the action's rollback after the job was stopped past its commit point.
    async fn roll_back(
        &self,
        job: &Job,
        values: &BTreeMap<String, String>,
        identity: Option<Identity>,
        control: &mut mpsc::Receiver<Control>,
        why: &str,
    ) -> (JobState, String) {
        let Some(rollback) = &job.action.rollback else {
            return (JobState::Failed, format!("{why}; its effect may remain"));
        };
        job.output.note(&format!("{why}: running the rollback"));
        job.update(|r| r.phase = Some("rollback".into()));
        job.publish();
        let program = Program {
            argv: render(rollback, values),
            stdin: job.action.stdin.as_ref().map(|t| t.render(values)),
        };
        let cgroup = self.cgroup_for(job, Part::Rollback);
        let ended = self
            .run_process(job, &program, identity, cgroup.as_ref(), control, false)
            .await;
        if let Some(cg) = &cgroup {
            cg.remove();
        }
        if ended.succeeded() {
            (JobState::RolledBack, format!("{why}; rolled back"))
        } else {
            (
                JobState::Failed,
                format!(
                    "{why}; the rollback failed ({}); its effect may remain",
                    ended.describe()
                ),
            )
        }
    }

    /// Records `job`'s final state, then tells watchers, then lets its group move on.
    async fn finish(
        &self,
        job: &Job,
        state: JobState,
        message: Option<String>,
        exit_code: Option<i32>,
    ) {
        job.output.finish();
        job.update(|r| {
            r.state = state;
            r.ended_at = Some(now_text());
            if message.is_some() {
                r.message = message;
            }
            r.exit_code = exit_code;
        });
        self.ended(job);
        if let Err(e) = self.persist(job).await {
            tracing::error!(job = %job.id, error = %e, "cannot record a job's final state");
        }
        job.publish();
        self.retire(job);
        tracing::info!(job = %job.id, action = %job.action.name, state = %state, "job ended");
    }

    /// Runs a lost job's `reconcile` and records how it went in the job's message.
    pub(super) async fn reconcile(self: Arc<Self>, action: Arc<ActionSpec>, record: JobRecord) {
        let Some(reconcile) = &action.reconcile else {
            return;
        };
        // Secrets are never stored, and reconcile may not use them (checked at load).
        let values: BTreeMap<String, String> = record
            .params
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                )
            })
            .collect();
        let (control_tx, mut control_rx) = mpsc::channel(1);
        let output = super::output::Output::create(
            self.log_path(&record.job_id),
            self.settings.log_cap_bytes,
            Vec::new(),
        );
        let job = Job {
            id: record.job_id.clone(),
            owner: record.requester.uid,
            action: Arc::clone(&action),
            updates: tokio::sync::watch::channel(record.clone()).0,
            record: std::sync::Mutex::new(record.clone()),
            control: control_tx,
            output,
            created_ms: 0,
            idempotency_key: None,
        };
        job.output
            .note("the daemon stopped while this job ran; running reconcile");
        let identity = match spawn::identity_of(&action) {
            Ok(i) => i,
            Err(e) => {
                tracing::error!(job = %job.id, error = %e, "cannot run reconcile");
                return;
            }
        };
        let cgroup = self.cgroup_for(&job, Part::Reconcile);
        // Reconcile reads nothing: `stdin` may carry secrets, and those are not kept.
        let program = Program {
            argv: render(reconcile, &values),
            stdin: None,
        };
        let ended = self
            .run_process(
                &job,
                &program,
                identity,
                cgroup.as_ref(),
                &mut control_rx,
                false,
            )
            .await;
        if let Some(cg) = &cgroup {
            cg.remove();
        }
        job.output.finish();
        let outcome = format!(
            "lost: the daemon stopped while the job was queued or running; reconcile {}",
            ended.describe()
        );
        tracing::info!(job = %job.id, action = %action.name, outcome = %outcome, "reconciled a lost job");
        job.update(|r| r.message = Some(outcome));
        let mut row = job.row();
        row.created_ms = 0;
        match self.ledger.put(&row).await {
            Ok(()) => self.audit_record(&row.record),
            Err(e) => tracing::error!(job = %job.id, error = %e, "cannot record a reconcile"),
        }
        if let Err(e) = self.ledger.reconciled(&job.id).await {
            tracing::error!(job = %job.id, error = %e, "cannot record a reconcile");
        }
    }
}
