//! The enrollment decision: who gets a machine key, who waits for an operator, who is turned
//! away, and what each costs the server.
//!
//! Every rejection for a bad site or key (unknown site, no active key, wrong or rotated key)
//! answers the same body and runs exactly one Argon2id verification (against a dummy hash when
//! there is nothing real), so neither the answer nor the work tells them apart. Failures are
//! charged to (site code, source address), and to the address across site codes (so rotating
//! site codes does not escape a lockout); successes never are. Refusals are recorded one by one
//! only within the [`EventBudget`]; past it they are counted.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use sqlx::Row;
use warden_fleet_proto::{EnrollRequest, MachineKey};

use crate::budget::EventBudget;
use crate::db::{Db, is_unique_violation, now_ms};
use crate::keys::{self, PoolFull, Verifier};
use crate::limiter::Limiter;
use crate::store::{StoreError, TENANT};

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
            Outcome::RateLimited(_) => "enroll.rate_limited",
            Outcome::Busy => "enroll.busy",
        }
    }

    fn is_failure(&self) -> bool {
        matches!(
            self,
            Outcome::Rejected | Outcome::SiteConflict | Outcome::Banned
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
        let row = sqlx::query(
            "SELECT s.id, k.hash, k.version FROM sites s
             LEFT JOIN enrollment_keys k ON k.site_id = s.id AND k.active = 1
             WHERE s.tenant = $1 AND s.site_code = $2",
        )
        .bind(TENANT)
        .bind(r.site_code.as_str())
        .fetch_optional(&self.db.pool)
        .await?;
        let (site_id, hash, version) = match &row {
            Some(row) => (
                Some(row.try_get::<i64, _>("id")?),
                row.try_get::<Option<String>, _>("hash")?,
                row.try_get::<Option<i64>, _>("version")?,
            ),
            None => (None, None, None),
        };
        // Exactly one verification on every path, real or against the dummy.
        let ok = match self
            .verifier
            .verify(r.enrollment_key.expose(), hash.as_deref())
            .await
        {
            Ok(ok) => ok,
            Err(PoolFull) => return Ok(Outcome::Busy),
        };
        let (Some(site_id), Some(version), true) = (site_id, version, ok) else {
            return Ok(Outcome::Rejected);
        };
        let banned = sqlx::query("SELECT machine_id FROM bans WHERE machine_id = $1")
            .bind(r.machine_id.as_str())
            .fetch_optional(&self.db.pool)
            .await?;
        if banned.is_some() {
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
        let mut tx = self.db.pool.begin().await?;
        // A write first: it locks the machine's row (or, in SQLite, the database) until commit.
        let existing = sqlx::query(
            "UPDATE machines SET last_seen_ms = last_seen_ms WHERE machine_id = $1
             RETURNING id, site_id, hostname, state, last_seen_ms, pending_hostname,
             approved_hostname",
        )
        .bind(r.machine_id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let key = keys::new_machine_key();
        let (row_id, outcome) = match existing {
            None => {
                let row = sqlx::query(
                    "INSERT INTO machines (machine_id, site_id, hostname, labels, state,
                     key_version, created_ms, last_seen_ms)
                     VALUES ($1, $2, $3, $4, 'active', $5, $6, $6) RETURNING id",
                )
                .bind(r.machine_id.as_str())
                .bind(site_id)
                .bind(r.hostname.as_str())
                .bind(&labels)
                .bind(version)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                (
                    row.try_get::<i64, _>("id")?,
                    Outcome::New {
                        machine_key: key.clone(),
                    },
                )
            }
            Some(m) => {
                let id: i64 = m.try_get("id")?;
                if m.try_get::<i64, _>("site_id")? != site_id {
                    return Ok(Outcome::SiteConflict);
                }
                let state: String = m.try_get("state")?;
                let hostname: String = m.try_get("hostname")?;
                let last_seen: i64 = m.try_get("last_seen_ms")?;
                let approved: Option<String> = m.try_get("approved_hostname")?;
                let recent = now - last_seen < CLONE_WINDOW_MS;
                let is_clone = state != "removed"
                    && hostname != r.hostname.as_str()
                    && recent
                    && approved.as_deref() != Some(r.hostname.as_str());
                if state == "pending" || is_clone {
                    if state != "pending" {
                        sqlx::query(
                            "UPDATE machines SET state = 'pending', pending_hostname = $1
                             WHERE id = $2",
                        )
                        .bind(r.hostname.as_str())
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                        tx.commit().await?;
                    }
                    return Ok(Outcome::Pending);
                }
                // Re-imaged or re-installed, or approved, or removed and back: a new key, the
                // old ones revoked.
                sqlx::query(
                    "UPDATE machines SET hostname = $1, labels = $2, state = 'active',
                     key_version = $3, last_seen_ms = $4, approved_hostname = NULL,
                     pending_hostname = NULL WHERE id = $5",
                )
                .bind(r.hostname.as_str())
                .bind(&labels)
                .bind(version)
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE machine_keys SET revoked_ms = $1
                     WHERE machine_row = $2 AND revoked_ms IS NULL",
                )
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                (
                    id,
                    Outcome::Reuse {
                        machine_key: key.clone(),
                    },
                )
            }
        };
        sqlx::query("INSERT INTO machine_keys (machine_row, hash, created_ms) VALUES ($1, $2, $3)")
            .bind(row_id)
            .bind(keys::secret_hash(key.expose()))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(outcome)
    }
}
