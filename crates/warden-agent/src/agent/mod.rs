//! The agent's life: open the key store (refusing to start when it is unsafe), enroll until it
//! holds a key, then keep the link up, deciding after each outcome how long to wait
//! ([`crate::backoff`]) and saying why in one log line. It owns these decisions; the exchanges
//! themselves are [`crate::enroll`]'s and [`crate::link`]'s. It must never discard a key it
//! holds: a key is only ever replaced by one the server just issued, and never logged.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::backoff::{self, draw};
use crate::config::{AgentConfig, Timings};
use crate::dispatch::{self, Dispatcher};
use crate::enroll::{ClientError, EnrollClient};
use crate::identity;
use crate::keystore::{KeyStore, KeyStoreError, StoredKey};
use crate::link::{self, ConnectError, Refusal, SessionEnd};
use crate::tls::{self, TlsError};

mod enrolling;
mod refused;

use enrolling::Held;

/// After this many 401s in a row on the link, the agent also tries to enroll again (a removed
/// machine may come back); it keeps its key unless that enrollment issues a new one.
pub const REENROLL_AFTER_401S: u32 = 3;

/// How the agent ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Asked to stop.
    Shutdown,
    /// The server gave an answer that waiting will not change (409 at enrollment, banned on
    /// the link): the service should not be restarted until someone acts.
    Final(String),
}

/// Why the agent cannot run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    KeyStore(#[from] KeyStoreError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error(transparent)]
    Spool(#[from] dispatch::spool::SpoolError),
    #[error("key store task failed: {0}")]
    Task(String),
    #[error(
        "refusing to run as root: warden-agent is the host's only network-facing process and \
         runs as its own unprivileged user (useradd --system warden-agent; dist/warden-agent.service \
         runs it so)"
    )]
    Root,
}

/// The stop signal, cloneable, awaitable any number of times.
#[derive(Debug, Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// A stop signal and its trigger (send `true`, or drop the sender).
    pub fn new() -> (watch::Sender<bool>, Stop) {
        let (tx, rx) = watch::channel(false);
        (tx, Stop(rx))
    }

    /// Resolves once stop was asked for.
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Sleeps `d`; `false` when stop was asked for first.
    pub async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            () = self.wait() => false,
            () = tokio::time::sleep(d) => true,
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn store_key(store: &Arc<KeyStore>, key: StoredKey) -> Result<(), AgentError> {
    let s = Arc::clone(store);
    tokio::task::spawn_blocking(move || s.store(&key))
        .await
        .map_err(|e| AgentError::Task(e.to_string()))??;
    Ok(())
}

async fn load_key(store: &Arc<KeyStore>) -> Result<Option<StoredKey>, AgentError> {
    let s = Arc::clone(store);
    Ok(tokio::task::spawn_blocking(move || s.load())
        .await
        .map_err(|e| AgentError::Task(e.to_string()))??)
}

/// Warns when the enrollment key file can be read by any user (it should be the agent's alone).
fn warn_if_exposed(path: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    if let Ok(md) = std::fs::metadata(path)
        && md.mode() & 0o004 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:04o}", md.mode() & 0o7777),
            "the enrollment key file is readable by every user; make it readable by the agent's \
             user only (e.g. chown root:warden-agent, chmod 0640)"
        );
    }
}

/// The link's retry counters.
#[derive(Debug)]
pub(crate) struct Retry {
    /// Failed link attempts since the last Welcome (picks the reconnect backoff's step).
    pub attempt: u32,
    /// Rejections in a row (401, quarantined): picks the rejected backoff's step.
    pub rejected: u32,
    /// 401s in a row: after [`REENROLL_AFTER_401S`] the agent also tries to enroll again.
    pub unauthorized: u32,
}

impl Default for Retry {
    fn default() -> Retry {
        // The first link of a run is spread already: a failure goes to the next step.
        Retry {
            attempt: 1,
            rejected: 0,
            unauthorized: 0,
        }
    }
}

impl Retry {
    /// The next reconnect wait (full jitter), and one step further.
    pub fn reconnect(&mut self, t: &Timings) -> Duration {
        let d = backoff::reconnect(t.reconnect_first, t.reconnect_cap, self.attempt, draw());
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// The next rejected wait (5 min growing to 6 h), and one step further.
    pub fn rejected(&mut self, t: &Timings) -> Duration {
        let d = backoff::rejected(t.rejected_base, t.rejected_cap, self.rejected, draw());
        self.rejected = self.rejected.saturating_add(1);
        d
    }
}

/// Runs the agent until `stop` or a final answer.
pub async fn run(cfg: AgentConfig, stop: Stop) -> Result<Exit, AgentError> {
    if rustix::process::geteuid().is_root() {
        if !cfg.dev {
            return Err(AgentError::Root);
        }
        tracing::warn!("DEV MODE as root: a real host runs the agent as its own user");
    }
    if cfg.dev {
        tracing::warn!(
            server = %cfg.server.base,
            state_dir = %cfg.state_dir.display(),
            "DEV MODE: plain http:// allowed, state in a per-user directory; never use --dev on a \
             real host"
        );
    }
    for name in &cfg.overrides_used {
        tracing::warn!(
            setting = name,
            "TEST OVERRIDE in [test_overrides]: {name} is set; this shortens a safety margin or \
             skips a check and is for tests only"
        );
    }
    if let Some(id) = &cfg.machine_id_override {
        tracing::warn!(machine_id = %id, "TEST OVERRIDE: machine id taken from agent.toml, not from wardend");
    }
    if cfg.dev
        && let Some(parent) = cfg.state_dir.parent()
    {
        // A try-out's state goes under the user's own directories (~/.local/state may not
        // exist yet); the key store still makes and checks its own directory itself.
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|source| KeyStoreError::Io {
                step: "create",
                path: parent.to_owned(),
                source,
            })?;
    }
    let store = Arc::new(KeyStore::open(&cfg.state_dir)?);
    // After the key store: its lock keeps a second agent away from the spool too.
    let dispatcher = Dispatcher::open(
        dispatch::Settings {
            state_dir: cfg.state_dir.clone(),
            wardend_socket: cfg.wardend_socket.clone(),
            spool_cap: cfg.hooks.spool_cap.unwrap_or(dispatch::SPOOL_CAP),
            actions_poll: cfg.hooks.actions_poll.unwrap_or(dispatch::ACTIONS_POLL),
        },
        stop.clone(),
    )?;
    warn_if_exposed(&cfg.enrollment_key_file);
    let tls = tls::client_config(cfg.ca_file.as_deref())?;
    let client = EnrollClient::new(&cfg, &tls)?;
    tracing::info!(
        server = %cfg.server.base,
        site = %cfg.site_code,
        state_dir = %cfg.state_dir.display(),
        "warden-agent starting"
    );

    // A key held from before means a restart (perhaps a crash): spread the first link.
    // The wait is uniform from zero, so it is logged even when the draw made it zero.
    let mut delay = match load_key(&store).await? {
        Some(_) => {
            let delay = backoff::reconnect(
                cfg.timings.reconnect_first,
                cfg.timings.reconnect_cap,
                0,
                draw(),
            );
            tracing::info!(
                wait_ms = ms(delay),
                "link: holding a key from before (a restart): first attempt spread out"
            );
            delay
        }
        None => Duration::ZERO,
    };
    let mut retry = Retry::default();
    let mut rotation_asked = false;
    loop {
        if !delay.is_zero() && !stop.sleep(delay).await {
            return Ok(Exit::Shutdown);
        }
        let held = match load_key(&store).await? {
            Some(k) => k,
            None => match enrolling::until_key(&cfg, &client, &store, &stop).await? {
                None => return Ok(Exit::Shutdown),
                Some(Held::Final(why)) => return Ok(Exit::Final(why)),
                Some(Held::Key(k)) => k,
            },
        };
        let connected = tokio::select! {
            c = link::connect(&cfg, &tls, &held.key) => c,
            () = stop.wait() => return Ok(Exit::Shutdown),
        };
        let mut ws = match connected {
            Ok(ws) => ws,
            Err(ConnectError::Failed(why)) => {
                delay = retry.reconnect(&cfg.timings);
                tracing::warn!(error = %why, wait_ms = ms(delay), "link: cannot connect; trying again");
                continue;
            }
            Err(ConnectError::Refused(r)) => {
                if r != Refusal::Unauthorized {
                    retry.unauthorized = 0;
                }
                match r {
                    Refusal::Unauthorized => {
                        retry.unauthorized += 1;
                        if retry.unauthorized >= REENROLL_AFTER_401S
                            && enrolling::again(&cfg, &client, &store).await?
                        {
                            tracing::info!(
                                "link: enrolled again after repeated 401s; linking with the new key"
                            );
                            retry = Retry::default();
                            delay = Duration::ZERO;
                            continue;
                        }
                        delay = retry.rejected(&cfg.timings);
                        tracing::warn!(
                            status = 401,
                            refusals = retry.unauthorized,
                            wait_ms = ms(delay),
                            key_file = %store.key_path().display(),
                            "link: the server does not accept this host's machine key; keeping it \
                             (one 401 proves nothing). If the machine was removed it enrolls \
                             again after {REENROLL_AFTER_401S} refusals"
                        );
                    }
                    other => match refused::next(&cfg, other, &mut retry) {
                        refused::Next::Wait(d) => delay = d,
                        refused::Next::Final(why) => return Ok(Exit::Final(why)),
                    },
                }
                continue;
            }
        };
        retry.unauthorized = 0;
        retry.rejected = 0;
        match link::session::run(
            &mut ws,
            &cfg.timings,
            &cfg.hooks,
            &mut rotation_asked,
            &store,
            &held,
            &dispatcher,
            &stop,
        )
        .await
        {
            SessionEnd::Shutdown => return Ok(Exit::Shutdown),
            SessionEnd::Rotated { version } => {
                tracing::info!(key_version = %version, "link: linking again with the new key");
                retry.attempt = 0;
                delay = Duration::ZERO;
            }
            SessionEnd::Dropped {
                welcomed,
                goodbye,
                reconnect_after,
                why,
            } => {
                if welcomed {
                    retry.attempt = 0;
                }
                delay = match reconnect_after {
                    // The server spreads its agents' returns: honour its choice.
                    Some(d) => d.min(crate::enroll::MAX_RETRY_AFTER),
                    None => retry.reconnect(&cfg.timings),
                };
                tracing::info!(
                    reason = %why,
                    goodbye = ?goodbye,
                    wait_ms = ms(delay),
                    "link: down; linking again"
                );
            }
        }
    }
}
