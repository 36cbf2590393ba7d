//! The enrollment decision: who gets a machine key, who waits for an operator, who is turned
//! away, and what each costs the server.
//!
//! Every rejection for a bad site or key (unknown site, no active key, wrong or rotated key)
//! answers the same body and runs exactly one Argon2id verification (against a dummy hash when
//! there is nothing real), so neither the answer nor the work tells them apart. Failures are
//! charged to (site code, source address), and to the address across site codes (so rotating
//! site codes does not escape a lockout); successes never are. Refusals are recorded one by one
//! only within the [`EventBudget`]; past it they are counted.
//!
//! This module decides; its statements are [`crate::store::enroll`]'s, and it never logs a key.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use warden_fleet_proto::{EnrollRequest, MachineKey};

use crate::budget::EventBudget;
use crate::keys::{self, PoolFull, Verifier};
use crate::limiter::Limiter;
use crate::store::{Db, EnrollTarget, StoreError, is_unique_violation, now_ms};

/// A machine seen this recently under another hostname is a clone until approved.
pub const CLONE_WINDOW_MS: i64 = 10 * 60 * 1000;
/// Attempts at a first enrollment that lost a race to a concurrent one.
const RETRIES: usize = 3;

/// How an enrollment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A machine first seen: 201.
    New { machine_key: MachineKey },
    /// The same machine again at its site: 200, older keys revoked.
    Reuse { machine_key: MachineKey },
    /// A likely clone: 202, no key until approved.
    Pending,
    /// Unknown site, no active key, wrong or rotated key: 401, one body for all.
    Rejected,
    /// Bound to another site: 409.
    SiteConflict,
    /// Banned machine id: 403.
    Banned,
    /// Quarantined machine (a retired key of it was replayed): 403 `quarantined`, no key, until
    /// an admin clears it. Enrolling again must not lift a quarantine.
    Quarantined,
    /// Too many failures from this address for this site, or for any site: 429.
    RateLimited(Duration),
    /// The verification pool is full: 503.
    Busy,
}

impl Outcome {
    /// The event kind recorded for it.
    pub fn event_kind(&self) -> &'static str {
        match self {
            Outcome::New { .. } => "enroll.new",
            Outcome::Reuse { .. } => "enroll.reuse",
            Outcome::Pending => "enroll.pending",
            Outcome::Rejected => "enroll.rejected",
            Outcome::SiteConflict => "enroll.site_conflict",
            Outcome::Banned => "enroll.banned",
            Outcome::Quarantined => "enroll.quarantined",
            Outcome::RateLimited(_) => "enroll.rate_limited",
            Outcome::Busy => "enroll.busy",
        }
    }

    fn is_failure(&self) -> bool {
        matches!(
            self,
            Outcome::Rejected | Outcome::SiteConflict | Outcome::Banned | Outcome::Quarantined
        )
    }
}

fn bad(message: impl Into<String>) -> StoreError {
    StoreError::BadRequest(message.into())
}

/// What the decision needs besides the database.
#[derive(Debug)]
pub struct Gate<'a> {
    pub db: &'a Db,
    pub verifier: &'a Verifier,
    /// Failures per (site code, address).
    pub limiter: &'a Limiter,
    /// Failures per address, whatever the site code.
    pub addr_limiter: &'a Limiter,
    pub budget: &'a EventBudget,
}

/// The key of the per-address limiter (site codes never contain `*`).
const ANY_SITE: &str = "*";

impl Gate<'_> {
    /// Decides `r` from `source` and records the outcome as an event. Its labels must have
    /// passed [`warden_fleet_proto::Labels::check`].
    pub async fn enroll(&self, r: &EnrollRequest, source: IpAddr) -> Result<Outcome, StoreError> {
        let outcome = self.decide(r, source).await?;
        let (actor, target, from) = (
            format!("machine {}", r.machine_id),
            format!("site {}", r.site_code),
            source.to_string(),
        );
        let record = |kind: &'static str, detail: String| {
            let (actor, target, from) = (&actor, &target, &from);
            async move { self.db.event(kind, actor, target, from, &detail).await }
        };
        match &outcome {
            // Refused before any work: recorded once, when the lockout began (below), and not
            // for every knock on it, nor for a full pool, so neither grows the trail at the
            // rate of a flood.
            Outcome::RateLimited(_) | Outcome::Busy => {}
            // Failures, within the budget; past it they are counted and summed up later.
            o if o.is_failure() && !self.budget.admit(o.event_kind()) => {}
            _ => record(outcome.event_kind(), format!("hostname {}", r.hostname)).await?,
        }
        let now = Instant::now();
        let lockout = if outcome.is_failure() {
            let pair = self.limiter.fail(r.site_code.as_str(), source, now);
            let any = self.addr_limiter.fail(ANY_SITE, source, now);
            pair.or(any)
        } else {
            None
        };
        if let Some(lockout) = lockout {
            record(
                Outcome::RateLimited(lockout).event_kind(),
                format!(
                    "locked out for {} s after repeated failures",
                    lockout.as_secs()
                ),
            )
            .await?;
        }
        Ok(outcome)
    }

    async fn decide(&self, r: &EnrollRequest, source: IpAddr) -> Result<Outcome, StoreError> {
        let now = Instant::now();
        let wait = self
            .limiter
            .locked(r.site_code.as_str(), source, now)
            .or_else(|| self.addr_limiter.locked(ANY_SITE, source, now));
        if let Some(wait) = wait {
            return Ok(Outcome::RateLimited(wait));
        }
        let target = self.db.enroll_target(&r.site_code).await?;
        let hash = target
            .as_ref()
            .and_then(|t| t.key.as_ref())
            .map(|(h, _)| h.as_str());
        // Exactly one verification on every path, real or against the dummy.
        let ok = match self.verifier.verify(r.enrollment_key.expose(), hash).await {
            Ok(ok) => ok,
            Err(PoolFull) => return Ok(Outcome::Busy),
        };
        let (
            Some(EnrollTarget {
                site_id,
                key: Some((_, version)),
            }),
            true,
        ) = (target, ok)
        else {
            return Ok(Outcome::Rejected);
        };
        if self.db.is_banned(&r.machine_id).await? {
            return Ok(Outcome::Banned);
        }
        for _ in 0..RETRIES {
            match self.place(r, site_id, version).await {
                Err(StoreError::Db(e)) if is_unique_violation(&e) => continue,
                other => return other,
            }
        }
        Err(StoreError::Conflict(
            "concurrent enrollments of this machine; try again".into(),
        ))
    }

    /// Creates or updates the machine row and issues its key, in one transaction.
    async fn place(
        &self,
        r: &EnrollRequest,
        site_id: i64,
        version: i64,
    ) -> Result<Outcome, StoreError> {
        let now = now_ms();
        let labels = serde_json::to_string(&r.labels).map_err(|e| bad(e.to_string()))?;
        let mut tx = self.db.begin_placement().await?;
        let existing = tx.lock_machine(&r.machine_id).await?;
        let key = keys::new_machine_key();
        let (row_id, outcome) = match existing {
            None => {
                let id = tx
                    .insert_machine(&r.machine_id, site_id, &r.hostname, &labels, version, now)
                    .await?;
                (
                    id,
                    Outcome::New {
                        machine_key: key.clone(),
                    },
                )
            }
            Some(m) => {
                if m.site_id != site_id {
                    return Ok(Outcome::SiteConflict);
                }
                if m.state == "quarantined" {
                    // Whoever replayed the retired key also has the site's enrollment key; a
                    // new key here would hand the machine to them and end the quarantine.
                    return Ok(Outcome::Quarantined);
                }
                let recent = now - m.last_seen_ms < CLONE_WINDOW_MS;
                let is_clone = m.state != "removed"
                    && m.hostname != r.hostname.as_str()
                    && recent
                    && m.approved_hostname.as_deref() != Some(r.hostname.as_str());
                if m.state == "pending" || is_clone {
                    if m.state != "pending" {
                        tx.mark_pending(m.id, &r.hostname).await?;
                        tx.commit().await?;
                    }
                    return Ok(Outcome::Pending);
                }
                // Re-imaged or re-installed, or approved, or removed and back: a new key, the
                // old ones revoked.
                tx.reactivate(m.id, &r.hostname, &labels, version, now)
                    .await?;
                (
                    m.id,
                    Outcome::Reuse {
                        machine_key: key.clone(),
                    },
                )
            }
        };
        tx.add_key(row_id, &keys::secret_hash(key.expose()), now)
            .await?;
        tx.commit().await?;
        Ok(outcome)
    }
}
