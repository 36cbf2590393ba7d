//! The agent's life: open the key store (refusing to start when it is unsafe), enroll until it
//! holds a key, then keep the link up, deciding after each outcome how long to wait
//! ([`crate::backoff`]) and saying why in one log line. It owns these decisions; the exchanges
//! themselves are [`crate::enroll`]'s and [`crate::link`]'s. It must never discard a key it
//! holds: a key is only ever replaced by one the server just issued, and never logged.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use warden_fleet_proto::{EnrollRequest, EnrollmentKey, MachineId};

use crate::backoff::{self, draw};
use crate::config::AgentConfig;
use crate::enroll::{Answer, ClientError, EnrollClient};
use crate::identity;
use crate::keystore::{KeyStore, KeyStoreError, StoredKey};
use crate::link::{self, ConnectError, Refusal, SessionEnd};
use crate::tls::{self, TlsError};

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
    #[error("key store task failed: {0}")]
    Task(String),
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

/// Runs the agent until `stop` or a final answer.
pub async fn run(cfg: AgentConfig, stop: Stop) -> Result<Exit, AgentError> {
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
    let store = Arc::new(KeyStore::open(&cfg.state_dir)?);
    let tls = tls::client_config(cfg.ca_file.as_deref())?;
    let client = EnrollClient::new(&cfg, &tls)?;
    tracing::info!(
        server = %cfg.server.base,
        site = %cfg.site_code,
        state_dir = %cfg.state_dir.display(),
        "warden-agent starting"
    );

    // A key held from before means a restart (perhaps a crash): spread the first link.
    let mut delay = match load_key(&store).await? {
        Some(_) => backoff::reconnect(
            cfg.timings.reconnect_first,
            cfg.timings.reconnect_cap,
            0,
            draw(),
        ),
        None => Duration::ZERO,
    };
    if !delay.is_zero() {
        tracing::info!(
            wait_ms = ms(delay),
            "link: holding a key from before (a restart): first attempt spread out"
        );
    }
    let mut attempt: u32 = 1;
    let mut rejected: u32 = 0;
    let mut unauthorized: u32 = 0;
    loop {
        if !delay.is_zero() && !stop.sleep(delay).await {
            return Ok(Exit::Shutdown);
        }
        let held = match load_key(&store).await? {
            Some(k) => k,
            None => match enroll_until_key(&cfg, &client, &store, &stop).await? {
                None => return Ok(Exit::Shutdown),
                Some(Held::Final(why)) => return Ok(Exit::Final(why)),
                Some(Held::Key(k)) => k,
            },
        };
        let backoff_next = |attempt: &mut u32| {
            let d = backoff::reconnect(
                cfg.timings.reconnect_first,
                cfg.timings.reconnect_cap,
                *attempt,
                draw(),
            );
            *attempt = attempt.saturating_add(1);
            d
        };
        let mut ws = match link::connect(&cfg, &tls, &held.key).await {
            Ok(ws) => ws,
            Err(ConnectError::Failed(why)) => {
                delay = backoff_next(&mut attempt);
                tracing::warn!(error = %why, wait_ms = ms(delay), "link: cannot connect; trying again");
                continue;
            }
            Err(ConnectError::Refused(r)) => {
                if r != Refusal::Unauthorized {
                    unauthorized = 0;
                }
                match r {
                    Refusal::Unauthorized => {
                        unauthorized += 1;
                        if unauthorized >= REENROLL_AFTER_401S
                            && reenroll(&cfg, &client, &store).await?
                        {
                            tracing::info!(
                                "link: enrolled again after repeated 401s; linking with the new key"
                            );
                            unauthorized = 0;
                            rejected = 0;
                            delay = Duration::ZERO;
                            continue;
                        }
                        delay = backoff::rejected(
                            cfg.timings.rejected_base,
                            cfg.timings.rejected_cap,
                            rejected,
                            draw(),
                        );
                        rejected = rejected.saturating_add(1);
                        tracing::warn!(
                            status = 401,
                            refusals = unauthorized,
                            wait_ms = ms(delay),
                            key_file = %store.key_path().display(),
                            "link: the server does not accept this host's machine key; keeping it \
                             (one 401 proves nothing). If the machine was removed it enrolls \
                             again after {REENROLL_AFTER_401S} refusals"
                        );
                    }
                    Refusal::Pending { retry_after } => {
                        delay = match retry_after {
                            Some(ra) => backoff::retry_after(ra, draw()),
                            None => backoff::pending_poll(cfg.timings.pending_poll, draw()),
                        };
                        tracing::info!(
                            status = 403,
                            wait_ms = ms(delay),
                            "link: this machine is pending approval; an operator must approve it \
                             (warden-server machines approve MACHINE_ID)"
                        );
                    }
                    Refusal::Quarantined => {
                        delay = backoff::rejected(
                            cfg.timings.rejected_base,
                            cfg.timings.rejected_cap,
                            rejected,
                            draw(),
                        );
                        rejected = rejected.saturating_add(1);
                        tracing::error!(
                            status = 403,
                            wait_ms = ms(delay),
                            "link: this machine is QUARANTINED: a retired key of it was presented \
                             (a clone or a stolen key). An admin must investigate and clear it \
                             (warden-server machines clear MACHINE_ID)"
                        );
                    }
                    Refusal::Forbidden => {
                        let why = "the server refuses this machine (403 forbidden: banned); \
                                   an operator must unban it (warden-server machines unban \
                                   MACHINE_ID), then restart warden-agent";
                        tracing::error!(status = 403, "link: stopped: {why}");
                        return Ok(Exit::Final(why.into()));
                    }
                    Refusal::DuplicateLink => {
                        delay = backoff_next(&mut attempt);
                        tracing::warn!(
                            status = 409,
                            wait_ms = ms(delay),
                            "link: this key already holds a live link (an old connection not yet \
                             timed out, or a clone of this host); backing off"
                        );
                    }
                    Refusal::Unavailable { retry_after } => {
                        delay = match retry_after {
                            Some(ra) => backoff::retry_after(ra, draw()),
                            None => backoff_next(&mut attempt),
                        };
                        tracing::info!(
                            status = 503,
                            retry_after_s = retry_after.map(|d| d.as_secs()),
                            wait_ms = ms(delay),
                            "link: the server is busy or stopping; waiting as it asked"
                        );
                    }
                    Refusal::Other { status } => {
                        delay = backoff_next(&mut attempt);
                        tracing::warn!(status, wait_ms = ms(delay), "link: refused; trying again");
                    }
                }
                continue;
            }
        };
        unauthorized = 0;
        rejected = 0;
        match link::session::run(&mut ws, &cfg.timings, &store, &held, &stop).await {
            SessionEnd::Shutdown => return Ok(Exit::Shutdown),
            SessionEnd::Rotated { version } => {
                tracing::info!(key_version = %version, "link: linking again with the new key");
                attempt = 0;
                delay = Duration::ZERO;
            }
            SessionEnd::Dropped {
                welcomed,
                goodbye,
                reconnect_after,
                why,
            } => {
                if welcomed {
                    attempt = 0;
                }
                delay = match reconnect_after {
                    // The server spreads its agents' returns: honour its choice.
                    Some(d) => d.min(crate::enroll::MAX_RETRY_AFTER),
                    None => backoff_next(&mut attempt),
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

/// What enrollment ended with.
enum Held {
    Key(StoredKey),
    Final(String),
}

/// Reads the enrollment key file (each attempt, so a fixed file is picked up).
fn enrollment_key(cfg: &AgentConfig) -> Result<EnrollmentKey, String> {
    let path = &cfg.enrollment_key_file;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read enrollment_key_file {}: {e}", path.display()))?;
    text.trim().parse().map_err(|_| {
        format!(
            "enrollment_key_file {} does not hold an enrollment key",
            path.display()
        )
    })
}

/// One enrollment request for this host: identity, hostname, key.
async fn request(cfg: &AgentConfig) -> Result<(EnrollRequest, identity::Identity), String> {
    let id = identity::machine_id(cfg).await.map_err(|e| e.to_string())?;
    let hostname = identity::hostname(cfg).map_err(|e| e.to_string())?;
    let enrollment_key = enrollment_key(cfg)?;
    Ok((
        EnrollRequest {
            site_code: cfg.site_code.clone(),
            enrollment_key,
            machine_id: id.machine_id.clone(),
            hostname,
            labels: cfg.labels.clone(),
        },
        id,
    ))
}

/// A single enrollment after repeated 401s on the link: stores the new key on 201/200
/// (`true`); anything else keeps the key held.
async fn reenroll(
    cfg: &AgentConfig,
    client: &EnrollClient,
    store: &Arc<KeyStore>,
) -> Result<bool, AgentError> {
    let (req, _) = match request(cfg).await {
        Ok(r) => r,
        Err(why) => {
            tracing::warn!(error = %why, "link: cannot try to enroll again; keeping the key");
            return Ok(false);
        }
    };
    match client.attempt(&req).await {
        Answer::Enrolled { key, disposition } => {
            store_key(store, StoredKey { key, version: None }).await?;
            tracing::info!(?disposition, machine_id = %req.machine_id, "enrollment: new key stored");
            Ok(true)
        }
        other => {
            tracing::info!(answer = %summary(&other), "link: enrolling again did not issue a key; keeping the held one");
            Ok(false)
        }
    }
}

fn summary(a: &Answer) -> String {
    match a {
        Answer::Enrolled { .. } => "enrolled".into(),
        Answer::Pending => "202 pending".into(),
        Answer::Rejected { status, kind, .. } => format!("{status} {kind:?}"),
        Answer::SiteConflict { .. } => "409 site conflict".into(),
        Answer::RetryAfter { status, after } => {
            format!("{status} retry after {}s", after.as_secs())
        }
        Answer::Failed { reason } => reason.clone(),
    }
}

/// Enrolls until a key is stored (`Some(Held::Key)`), a final answer (`Some(Held::Final)`), or
/// stop (`None`).
async fn enroll_until_key(
    cfg: &AgentConfig,
    client: &EnrollClient,
    store: &Arc<KeyStore>,
    stop: &Stop,
) -> Result<Option<Held>, AgentError> {
    let t = &cfg.timings;
    let mut failures: u32 = 0;
    let mut rejections: u32 = 0;
    let mut warned_degraded = false;
    loop {
        let (req, id) = match request(cfg).await {
            Ok(r) => r,
            Err(why) => {
                let wait = backoff::full_jitter(t.retry_base, t.retry_cap, failures, draw());
                failures = failures.saturating_add(1);
                tracing::warn!(error = %why, wait_ms = ms(wait), "enrollment: not ready to ask; trying again");
                if !stop.sleep(wait).await {
                    return Ok(None);
                }
                continue;
            }
        };
        if id.degraded && !warned_degraded {
            warned_degraded = true;
            tracing::warn!(
                machine_id = %id.machine_id,
                source = %id.source,
                "enrollment: the machine id is DEGRADED (no usable hardware identity); a \
                 reinstall will look like a new machine"
            );
        }
        let machine: &MachineId = &req.machine_id;
        let answer = client.attempt(&req).await;
        if !matches!(answer, Answer::Failed { .. }) {
            // The server answered: the network backoff starts over.
            failures = 0;
        }
        let wait = match answer {
            Answer::Enrolled { key, disposition } => {
                store_key(
                    store,
                    StoredKey {
                        key: key.clone(),
                        version: None,
                    },
                )
                .await?;
                tracing::info!(
                    ?disposition,
                    machine_id = %machine,
                    key_file = %store.key_path().display(),
                    "enrollment: enrolled; machine key stored"
                );
                return Ok(Some(Held::Key(StoredKey { key, version: None })));
            }
            Answer::Pending => {
                let wait = backoff::pending_poll(t.pending_poll, draw());
                tracing::info!(
                    status = 202,
                    machine_id = %machine,
                    hostname = %req.hostname,
                    wait_ms = ms(wait),
                    "enrollment: pending: this machine id is already enrolled under another \
                     hostname (a clone?); an operator must approve it (warden-server machines \
                     approve {machine}); polling"
                );
                wait
            }
            Answer::Rejected {
                status,
                kind,
                message,
            } => {
                let wait = backoff::rejected(t.rejected_base, t.rejected_cap, rejections, draw());
                rejections = rejections.saturating_add(1);
                let fix = if status == 403 {
                    "this machine id is banned: an operator must unban it (warden-server machines \
                     unban ID)"
                } else if status == 400 {
                    "the server refused the request as malformed (see server_message): check \
                     hostname and [labels] in agent.toml"
                } else {
                    "check site_code and the key in enrollment_key_file: it must be the site's \
                     current enrollment key (warden-server site key SITE shows its version; \
                     site rotate-key issues a new one)"
                };
                tracing::warn!(
                    status,
                    kind = kind.map(|k| k.as_str()),
                    server_message = %message,
                    site = %cfg.site_code,
                    key_file = %cfg.enrollment_key_file.display(),
                    wait_ms = ms(wait),
                    "enrollment: rejected: {fix}; no key kept, backing off"
                );
                wait
            }
            Answer::SiteConflict { message } => {
                let why = format!(
                    "machine {machine} is bound to another site than {} (409: {message}); \
                     nothing will change until an operator removes it there or site_code is \
                     corrected",
                    cfg.site_code
                );
                tracing::error!(status = 409, "enrollment: stopped: {why}");
                return Ok(Some(Held::Final(why)));
            }
            Answer::RetryAfter { status, after } => {
                let wait = backoff::retry_after(after, draw());
                tracing::info!(
                    status,
                    retry_after_s = after.as_secs(),
                    wait_ms = ms(wait),
                    "enrollment: the server asked to come back later; waiting Retry-After plus \
                     jitter"
                );
                wait
            }
            Answer::Failed { reason } => {
                let wait = backoff::full_jitter(t.retry_base, t.retry_cap, failures, draw());
                failures = failures.saturating_add(1);
                tracing::warn!(error = %reason, wait_ms = ms(wait), "enrollment: failed; trying again");
                wait
            }
        };
        if !stop.sleep(wait).await {
            return Ok(None);
        }
    }
}
