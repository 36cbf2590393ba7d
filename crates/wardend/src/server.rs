//! The daemon: shared state, the accept loops, admission of new connections, and shutdown.
//!
//! A connection is admitted in the accept loop (one `SO_PEERCRED` read, then the total and
//! per-uid caps); everything slower happens in the connection's own task so a flood of connects
//! cannot stall the loop. Only when every connection below admin is taken does admission read
//! the caller's groups too, to decide from its tier whether it may take one of the connections
//! kept for administrators. Refused connections get one `busy` frame written without blocking,
//! then close.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warden_policy::{ListenerPolicy, PeerIdentity};
use warden_proto::{ErrorKind, Gid, RpcError, Tier, Uid};

use crate::alerts::Alerts;
use crate::audit::{AuditLog, Changes, DENIAL_WINDOW, Denials, Event, Kind, Seals};
use crate::brakes::Brakes;
use crate::call::{correlation_id, framed_error};
use crate::connection::Connection;
use crate::events::Bus;
use crate::host_identity::HostIdentity;
use crate::identity::DigestCache;
use crate::jobs::{Jobs, JobsError};
use crate::limits::{Admission, Pool, Refusal};
use crate::listener::{self, Bound, ListenError};
use crate::logs::LogLimiter;
use crate::settings::Settings;
use crate::state::Shared;
use crate::stats::{StaticStatus, Stats};

pub use crate::state::Reloaded;

/// A running daemon. Dropping it without [`Daemon::shutdown`] leaves its tasks to the runtime.
#[derive(Debug)]
pub struct Daemon {
    shared: Arc<Shared>,
    /// The warden-protocol sockets (the watchdog probes these).
    sockets: Vec<PathBuf>,
    /// The varlink sockets (`protocol = "varlink"`).
    varlink_sockets: Vec<PathBuf>,
    created: Vec<(PathBuf, u64, u64)>,
    accept_loops: Vec<JoinHandle<()>>,
}

/// Why a daemon did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("cannot start the daemon's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot encode the status of this configuration: {0}")]
    Status(serde_json::Error),
    #[error(transparent)]
    Jobs(#[from] JobsError),
    #[error("cannot open the audit log: {0}")]
    Audit(std::io::Error),
    #[error("cannot read the saved ops toggles or lockdown: {0}")]
    Brakes(std::io::Error),
    #[error("cannot read the resource registry: {0}")]
    Resources(std::io::Error),
}

/// A daemon on its own runtime in a background thread (for tests and embedding). Stopped, with
/// the same graceful shutdown as SIGTERM, by [`DaemonThread::stop`] or on drop.
#[derive(Debug)]
pub struct DaemonThread {
    sockets: Vec<PathBuf>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DaemonThread {
    /// The paths of the sockets being served.
    pub fn socket_paths(&self) -> &[PathBuf] {
        &self.sockets
    }

    /// The first listener's socket. (A policy always has at least one listener: without any
    /// `[[listener]]` it gets the default one.)
    pub fn socket(&self) -> &std::path::Path {
        &self.sockets[0]
    }

    /// Shuts the daemon down and waits until it has.
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for DaemonThread {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// The log budget shared by lines no caller can be named for (accept failures, unreadable
/// credentials): one flood of those cannot silence the lines of callers that can be named.
const UNATTRIBUTED: Uid = Uid(u32::MAX);

/// How long shutdown waits for connections to finish what they already received.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// What a refused connection is told to wait before trying again.
const BUSY_RETRY_MS: u64 = 1_000;

impl Daemon {
    /// Reloads the configuration file (SIGHUP), recorded in the audit log.
    pub fn reload(&self) -> Result<Reloaded, String> {
        let result = self.shared.reload();
        self.shared.audit.record(Event {
            method: Some("policy.reload".into()),
            reason: Some("SIGHUP".into()),
            outcome: Some(match &result {
                Ok(_) => "ok".into(),
                Err(e) => e.clone(),
            }),
            ..Event::new(Kind::Reload)
        });
        result
    }

    /// Prepares directories, binds every listener and starts accepting. Must run inside a tokio
    /// runtime.
    pub async fn start(settings: Settings) -> Result<Daemon, StartError> {
        let Settings {
            policy,
            mode,
            trusted_uid,
            activated,
            pidfd_source,
            config_path,
            config_explicit,
            systemd_notify,
            ..
        } = settings;
        listener::prepare_dirs(&policy, mode, trusted_uid)?;
        let static_status = StaticStatus::new(&policy).map_err(StartError::Status)?;
        let bus = Bus::default();
        let audit = Arc::new(
            Seals::open(&policy.state_dir.join("ledger.db"))
                .and_then(|seals| {
                    AuditLog::open(
                        &policy.state_dir.join("audit"),
                        seals,
                        bus.clone(),
                        &policy.audit,
                    )
                })
                .map_err(StartError::Audit)?,
        );
        audit
            .record_durable(&Event {
                reason: Some(format!("wardend {}", env!("CARGO_PKG_VERSION"))),
                ..Event::new(Kind::DaemonStart)
            })
            .await
            .map_err(|e| StartError::Audit(std::io::Error::other(e.to_string())))?;
        let resources = Arc::new(
            crate::resources::Registry::open(&policy.state_dir, &policy.resources)
                .map_err(StartError::Resources)?,
        );
        let (jobs, lost) = Jobs::open(
            &policy.state_dir,
            policy.jobs.clone(),
            Arc::clone(&audit),
            bus.clone(),
        )
        .await?;
        let bound = match listener::bind_all(&policy, activated, trusted_uid) {
            Ok(b) => b,
            Err(e) => {
                // Nothing ran: undo what the start made, and say in the log why it ends here.
                jobs.abandon();
                audit.record(Event {
                    reason: Some(format!("start failed: {e}")),
                    ..Event::new(Kind::DaemonStop)
                });
                audit.close();
                return Err(e.into());
            }
        };
        // The brakes are read before any reconcile runs: a lockdown or an ops toggle that
        // survived the restart defers the reconciles it stops.
        let brakes = Brakes::open(&policy.state_dir, &policy.ops).map_err(StartError::Brakes)?;
        jobs.recover(lost, &policy, &brakes.ops(), brakes.lockdown().as_ref());
        // Before the first socket is served: `host.identity` answers from memory.
        let host_identity = HostIdentity::compute(&policy.fleet);
        let shared = Arc::new(Shared {
            host_identity,
            static_status,
            jobs,
            audit,
            denials: Denials::default(),
            changes: Changes::new(policy.audit.uid_changes_per_minute),
            alerts: Alerts::new(bus.clone()),
            bus,
            resources,
            brakes,
            admission: Admission::new(policy.limits.clone()),
            limits: policy.limits.clone(),
            policy: std::sync::RwLock::new(Arc::new(policy)),
            config_path,
            config_explicit,
            mode,
            started: Instant::now(),
            stats: Stats::default(),
            logs: LogLimiter::default(),
            digests: DigestCache::default(),
            fs_work: Arc::default(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            next_connection: AtomicU64::new(1),
            pidfd_source,
            systemd_notify,
        });
        let (varlink, warden): (Vec<_>, Vec<_>) = bound
            .iter()
            .map(|b| (b.policy.path.clone(), b.policy.protocol))
            .partition(|(_, p)| *p == warden_policy::config::ListenerProtocol::Varlink);
        let sockets = warden.into_iter().map(|(p, _)| p).collect();
        let varlink_sockets = varlink.into_iter().map(|(p, _)| p).collect();
        let mut created = Vec::new();
        let mut accept_loops = Vec::new();
        for b in bound {
            created.extend(b.created.clone());
            tracing::info!(
                path = %b.policy.path.display(),
                mode = format!("{:04o}", b.policy.mode),
                group = b.policy.group.as_ref().map(|(n, _)| n.as_str()),
                max_tier = %b.policy.max_tier,
                protocol = ?b.policy.protocol,
                activated = b.created.is_none(),
                "listening"
            );
            accept_loops.push(tokio::spawn(accept_loop(Arc::clone(&shared), b)));
        }
        // Summaries of denial floods, once a minute.
        let summaries = Arc::clone(&shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(DENIAL_WINDOW);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = summaries.shutdown.cancelled() => break,
                }
                for summary in summaries
                    .denials
                    .summaries(std::time::Instant::now(), false)
                {
                    summaries.audit.record(summary);
                }
            }
        });
        Ok(Daemon {
            shared,
            sockets,
            varlink_sockets,
            created,
            accept_loops,
        })
    }

    /// The paths of the warden-protocol sockets being served.
    pub fn socket_paths(&self) -> &[PathBuf] {
        &self.sockets
    }

    /// The paths of the varlink sockets being served.
    pub fn varlink_paths(&self) -> &[PathBuf] {
        &self.varlink_sockets
    }

    /// Starts a daemon on a runtime of its own in a new thread and returns once it listens.
    pub fn spawn_thread(settings: Settings) -> Result<DaemonThread, StartError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(StartError::Runtime(e)));
                    return;
                }
            };
            runtime.block_on(async move {
                match Daemon::start(settings).await {
                    Ok(daemon) => {
                        let _ = ready_tx.send(Ok(daemon.socket_paths().to_vec()));
                        let _ = stop_rx.await;
                        daemon.shutdown().await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            });
        });
        let gone = || {
            StartError::Runtime(std::io::Error::other(
                "the daemon thread ended before it was ready",
            ))
        };
        let sockets = ready_rx.recv().map_err(|_| gone())??;
        Ok(DaemonThread {
            sockets,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Stops accepting, stops jobs (cancelling what may be cancelled, giving committed ones the
    /// grace period), lets every connection answer what it already received, then returns with
    /// every job's final state in the ledger.
    pub async fn shutdown(self) {
        self.shared.shutdown.cancel();
        for l in self.accept_loops {
            let _ = l.await;
        }
        listener::remove_created(&self.created);
        self.shared.jobs.shutdown().await;
        self.shared.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.shared.admission.open(),
                "connections still open after the shutdown grace period; closing them"
            );
        }
        // Every job's final state and every answer is recorded by now; denials still being
        // counted are summed up; the stop is the log's last record.
        for summary in self
            .shared
            .denials
            .summaries(std::time::Instant::now(), true)
        {
            self.shared.audit.record(summary);
        }
        if let Err(e) = self
            .shared
            .audit
            .record_durable(&Event::new(Kind::DaemonStop))
            .await
        {
            tracing::error!(error = %e, "cannot record the daemon's stop in the audit log");
        }
        self.shared.audit.close();
    }
}

async fn accept_loop(shared: Arc<Shared>, bound: Bound) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            r = bound.listener.accept() => r,
        };
        match accepted {
            Ok((stream, _)) => admit(&shared, &bound.policy, stream),
            Err(e) => {
                // Out of descriptors or memory: back off briefly instead of spinning.
                if shared.logs.admit(UNATTRIBUTED).is_some() {
                    tracing::warn!(error = %e, path = %bound.policy.path.display(), "accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn admit(shared: &Arc<Shared>, listener: &Arc<ListenerPolicy>, stream: UnixStream) {
    let cred = match warden_sys::peer::peer_cred(stream.as_fd()) {
        Ok(c) => c,
        Err(e) => {
            shared.stats.identity_unreadable.inc();
            if shared.logs.admit(UNATTRIBUTED).is_some() {
                tracing::warn!(error = %e, "refused a connection: SO_PEERCRED unreadable");
            }
            return;
        }
    };
    let uid = Uid(cred.uid);
    let now = Instant::now();
    let admitted = match shared.admission.admit(uid, Pool::Shared, now) {
        Err(Refusal::Total { .. }) if may_use_reserve(shared, listener, &stream, cred) => {
            shared.admission.admit(uid, Pool::WithReserve, now)
        }
        admitted => admitted,
    };
    let slot = match admitted {
        Ok(slot) => slot,
        Err(refusal) => {
            let message = match refusal {
                Refusal::Total { max } => {
                    shared.stats.busy_total.inc();
                    format!("too many connections (max_connections {max}); try again later")
                }
                Refusal::Reserve { max, reserve } => {
                    shared.stats.busy_total.inc();
                    format!(
                        "too many connections (max_connections {max} and admin_reserve {reserve}); try again later"
                    )
                }
                Refusal::PerUid { max } => {
                    shared.stats.busy_uid.inc();
                    format!(
                        "too many connections from uid {uid} (max_connections_per_uid {max}); close some first"
                    )
                }
            };
            let err = RpcError::new(ErrorKind::Busy, message, correlation_id())
                .retry_after_ms(BUSY_RETRY_MS);
            if let Some(suppressed) = shared.logs.admit(uid) {
                tracing::info!(uid = cred.uid, pid = cred.pid, correlation_id = %err.data.correlation_id,
                    suppressed, "refused a connection: {}", err.message);
            }
            // A fresh socket's send buffer always has room for one small frame; if not, the
            // peer simply sees the close.
            if let Some(frame) = framed_error(None, &err) {
                let _ = stream.try_write(&frame);
            }
            return;
        }
    };
    shared.stats.accepted.inc();
    let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    // The connection's log lines name this span as their parent. It is not entered around every
    // poll: that would cost on each request for the sake of rare log lines.
    let span = tracing::info_span!("conn", id, uid = cred.uid, pid = cred.pid);
    let shared2 = Arc::clone(shared);
    let listener = Arc::clone(listener);
    shared.tracker.spawn(async move {
        if let Some(conn) = Connection::open(shared2, listener, stream, cred, slot, span, id) {
            conn.serve().await;
        }
    });
}

/// Whether the caller may take one of the connections kept for administrators: root always,
/// anyone else if the kernel's credentials (uid, gid and the groups recorded at connect) give
/// it tier admin on this listener. Unreadable groups mean no.
fn may_use_reserve(
    shared: &Shared,
    listener: &ListenerPolicy,
    stream: &UnixStream,
    cred: warden_sys::peer::PeerCred,
) -> bool {
    if cred.uid == 0 {
        return true;
    }
    let Ok(groups) = warden_sys::peer::peer_groups(stream.as_fd()) else {
        return false;
    };
    let peer = PeerIdentity::new(
        Uid(cred.uid),
        Gid(cred.gid),
        groups.into_iter().map(Gid).collect(),
    );
    shared.policy().effective(&peer, listener).tier == Tier::Admin
}
