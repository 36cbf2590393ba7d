//! Enrolling: building the request (machine id from wardend, hostname, the enrollment key read
//! from its file at each attempt), and what to do on each answer (store, poll, back off, stop),
//! with one log line per attempt saying why and for how long. It must never log the enrollment
//! key or a machine key, and never remove a key: only a 201/200 replaces one.

use std::sync::Arc;

use warden_fleet_proto::{EnrollRequest, EnrollmentKey, ErrorKind, MachineId};

use super::{AgentError, Stop, ms, store_key};
use crate::backoff::{self, draw};
use crate::config::AgentConfig;
use crate::enroll::{Answer, EnrollClient};
use crate::identity;
use crate::keystore::{KeyStore, StoredKey};

/// What enrollment ended with.
pub(super) enum Held {
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
pub(super) async fn again(
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
pub(super) async fn until_key(
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
        let answer = tokio::select! {
            a = client.attempt(&req) => a,
            () = stop.wait() => return Ok(None),
        };
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
                let fix = if kind == Some(ErrorKind::Quarantined) {
                    "this machine is QUARANTINED (a retired key of it was presented: a clone or a \
                     stolen key); an admin must investigate and clear it (warden-server machines \
                     clear ID)"
                } else if status == 403 {
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
