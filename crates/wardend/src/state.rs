//! The state every connection and handler shares ([`Shared`]): the policy in force and its
//! reload, the brakes, the stores (jobs, audit, resources), the machine identity, the limits
//! and counters. It sits below the request path: the server builds it, `dispatch` and the
//! handlers read it, and it imports none of them.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warden_policy::Policy;
use warden_proto::messages::DaemonMode;

use crate::alerts::Alerts;
use crate::audit::{AuditLog, Changes, Denials};
use crate::brakes::Brakes;
use crate::events::Bus;
use crate::host_identity::HostIdentity;
use crate::identity::{DigestCache, PidfdSource};
use crate::jobs::Jobs;
use crate::limits::Admission;
use crate::logs::LogLimiter;
use crate::settings::Settings;
use crate::stats::{StaticStatus, Stats};

/// State every connection shares.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The policy in force; `policy.reload` and SIGHUP swap it whole.
    /// Swapped whole by [`Shared::reload`]; read through [`Shared::policy`].
    pub(crate) policy: std::sync::RwLock<Arc<Policy>>,
    /// The limits in force, which only a restart changes: read on every frame, without the
    /// policy's lock.
    pub limits: warden_proto::Limits,
    /// The file the policy came from; `None` for a built-in configuration.
    pub config_path: Option<PathBuf>,
    /// Whether that file was named on the command line: then a reload needs it to exist; if
    /// not, a reload without it applies the built-in default and the drop-ins, as the start did.
    pub config_explicit: bool,
    /// Ops toggles and the lockdown in force.
    pub brakes: Brakes,
    pub mode: DaemonMode,
    /// For `status` uptime.
    pub started: Instant,
    /// Connection caps and per-uid request buckets.
    pub admission: Arc<Admission>,
    pub stats: Stats,
    /// The unchanging part of `status`, serialized once for this policy.
    pub static_status: StaticStatus,
    /// Every job: live ones, concurrency groups, the ledger.
    pub jobs: Arc<Jobs>,
    /// The hash-chained record of what happened.
    pub audit: Arc<AuditLog>,
    /// Denial records per uid, so a flood is summed up instead of filling the audit log.
    pub denials: Denials,
    /// Recorded requests per uid (`[audit] uid_changes_per_minute`).
    pub changes: Changes,
    /// What an administrator should look at now.
    pub alerts: Alerts,
    /// Events for `events.subscribe`.
    pub bus: Bus,
    /// The machine identity, computed at start and reload so `host.identity` reads no file.
    pub host_identity: HostIdentity,
    /// Owned resources and the one lock of their changes.
    pub resources: Arc<crate::resources::Registry>,
    /// Keeps peer-caused log lines from flooding the log.
    pub logs: LogLimiter,
    /// Executable digests for `[guards]`, so each binary is hashed once.
    pub digests: DigestCache,
    /// Threads for file-system work a caller steers (its path parameters, its executable),
    /// bounded per uid because a stalled file system may keep them for good.
    pub fs_work: Arc<crate::fswork::FsWork>,
    /// Cancelled once at shutdown; every loop watches it.
    pub shutdown: CancellationToken,
    /// Tracks connection tasks so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// The number the next connection gets.
    pub(crate) next_connection: AtomicU64,
    pub pidfd_source: PidfdSource,
    /// Whether reloads are announced to systemd (see `Settings::systemd_notify`).
    pub systemd_notify: bool,
}

/// What a reload changed, and what it could not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Parts of the file that changed but take effect only after a restart.
    pub needs_restart: Vec<String>,
    /// Problems that do not stop the new policy (as `check-config` prints them).
    pub warnings: Vec<String>,
}

impl Shared {
    /// Reads the configuration file and its drop-ins again and puts their policy in force at
    /// once: tiers, actions, guards and new ops toggles. What only a restart can change
    /// (listeners, limits, directories, `[jobs]`, `[audit]`) keeps its running value and is
    /// named in the answer. A file (main or drop-in) that does not load changes nothing; the
    /// error names its problems with their files and lines.
    pub(crate) fn reload(&self) -> Result<Reloaded, String> {
        if self.systemd_notify {
            crate::notify::reloading();
        }
        let result = self.reload_files();
        if self.systemd_notify {
            crate::notify::reloaded(match &result {
                Ok(_) => "configuration reloaded",
                Err(_) => "reload failed; the running policy stays",
            });
        }
        result
    }

    fn reload_files(&self) -> Result<Reloaded, String> {
        let Some(path) = &self.config_path else {
            return Err(
                "this daemon runs a built-in configuration: there is no file to reload".into(),
            );
        };
        // One problem per line in the file's report; one line here, where it becomes an error
        // message and a log line.
        let settings = Settings::system(path, self.config_explicit)
            .map_err(|e| e.to_string().replace('\n', "; "))?;
        let old = self.policy();
        let mut new = settings.policy;
        let mut needs_restart = Vec::new();
        if new.listeners != old.listeners {
            needs_restart.push("[[listener]]".to_owned());
            new.listeners.clone_from(&old.listeners);
        }
        if new.limits != old.limits {
            needs_restart.push("[limits]".to_owned());
            new.limits = old.limits.clone();
        }
        if new.state_dir != old.state_dir || new.runtime_dir != old.runtime_dir {
            needs_restart.push("[daemon]".to_owned());
            new.state_dir.clone_from(&old.state_dir);
            new.runtime_dir.clone_from(&old.runtime_dir);
        }
        if new.jobs != old.jobs {
            needs_restart.push("[jobs]".to_owned());
            new.jobs = old.jobs.clone();
        }
        if new.audit != old.audit {
            needs_restart.push("[audit]".to_owned());
            new.audit = old.audit.clone();
        }
        self.brakes.reconfigure(&new.ops);
        // `[fleet.identity]` may name other files, and the hardware may have changed.
        self.host_identity.refresh(&new.fleet);
        *self
            .policy
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(new);
        Ok(Reloaded {
            needs_restart,
            warnings: settings
                .warnings
                .iter()
                .map(|w| w.display_warning().to_string())
                .collect(),
        })
    }

    /// The policy in force now.
    pub(crate) fn policy(&self) -> Arc<Policy> {
        Arc::clone(
            &self
                .policy
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}
