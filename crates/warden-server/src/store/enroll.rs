//! The enrollment's statements: the site and its active key a request is checked against, the
//! ban list, and the one transaction ([`Placement`]) that creates or updates a machine's row and
//! stores its new key's hash. Which of them run is decided by [`crate::enroll`]; nothing here
//! decides, and no key is stored except as its SHA-256.

use sqlx::Row;
use warden_fleet_proto::{Hostname, MachineId, SiteCode};

use super::{Db, Result, TENANT};

/// The site a request names and its active enrollment key, if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollTarget {
    pub site_id: i64,
    /// The active key's Argon2id hash and version; `None` when the site has no key yet.
    pub key: Option<(String, i64)>,
}

/// A machine's row as an enrollment finds it, locked until its [`Placement`] ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingMachine {
    /// The row's id.
    pub id: i64,
    pub site_id: i64,
    pub hostname: String,
    pub state: String,
    pub last_seen_ms: i64,
    /// The hostname an operator approved for a pending clone, if any.
    pub approved_hostname: Option<String>,
}

impl Db {
    /// The site called `code` and its active key.
    pub async fn enroll_target(&self, code: &SiteCode) -> Result<Option<EnrollTarget>> {
        let row = sqlx::query(
            "SELECT s.id, k.hash, k.version FROM sites s
             LEFT JOIN enrollment_keys k ON k.site_id = s.id AND k.active = 1
             WHERE s.tenant = $1 AND s.site_code = $2",
        )
        .bind(TENANT)
        .bind(code.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let hash: Option<String> = row.try_get("hash")?;
        let version: Option<i64> = row.try_get("version")?;
        Ok(Some(EnrollTarget {
            site_id: row.try_get("id")?,
            key: hash.zip(version),
        }))
    }

    /// Whether `machine_id` is banned.
    pub async fn is_banned(&self, machine_id: &MachineId) -> Result<bool> {
        let banned = sqlx::query("SELECT machine_id FROM bans WHERE machine_id = $1")
            .bind(machine_id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(banned.is_some())
    }

    /// Starts the transaction that places one machine. Dropped without [`Placement::commit`],
    /// it changes nothing.
    pub async fn begin_placement(&self) -> Result<Placement> {
        Ok(Placement(self.pool.begin().await?))
    }
}

/// One enrollment's transaction.
#[derive(Debug)]
pub struct Placement(sqlx::Transaction<'static, sqlx::Any>);

impl Placement {
    /// The machine's row, if any, locked until commit: a write first, so it locks the row (or,
    /// in SQLite, the database) at once.
    pub async fn lock_machine(
        &mut self,
        machine_id: &MachineId,
    ) -> Result<Option<ExistingMachine>> {
        let row = sqlx::query(
            "UPDATE machines SET last_seen_ms = last_seen_ms WHERE machine_id = $1
             RETURNING id, site_id, hostname, state, last_seen_ms, pending_hostname,
             approved_hostname",
        )
        .bind(machine_id.as_str())
        .fetch_optional(&mut *self.0)
        .await?;
        let Some(m) = row else { return Ok(None) };
        Ok(Some(ExistingMachine {
            id: m.try_get("id")?,
            site_id: m.try_get("site_id")?,
            hostname: m.try_get("hostname")?,
            state: m.try_get("state")?,
            last_seen_ms: m.try_get("last_seen_ms")?,
            approved_hostname: m.try_get("approved_hostname")?,
        }))
    }

    /// A machine first seen, active: its row's id.
    pub async fn insert_machine(
        &mut self,
        machine_id: &MachineId,
        site_id: i64,
        hostname: &Hostname,
        labels: &str,
        key_version: i64,
        now_ms: i64,
    ) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO machines (machine_id, site_id, hostname, labels, state,
             key_version, created_ms, last_seen_ms)
             VALUES ($1, $2, $3, $4, 'active', $5, $6, $6) RETURNING id",
        )
        .bind(machine_id.as_str())
        .bind(site_id)
        .bind(hostname.as_str())
        .bind(labels)
        .bind(key_version)
        .bind(now_ms)
        .fetch_one(&mut *self.0)
        .await?;
        Ok(row.try_get("id")?)
    }

    /// Marks row `id` pending under `hostname`, a likely clone waiting for an operator.
    pub async fn mark_pending(&mut self, id: i64, hostname: &Hostname) -> Result<()> {
        sqlx::query("UPDATE machines SET state = 'pending', pending_hostname = $1 WHERE id = $2")
            .bind(hostname.as_str())
            .bind(id)
            .execute(&mut *self.0)
            .await?;
        Ok(())
    }

    /// Row `id` active again under `hostname`, its approval used up and all its keys revoked.
    pub async fn reactivate(
        &mut self,
        id: i64,
        hostname: &Hostname,
        labels: &str,
        key_version: i64,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE machines SET hostname = $1, labels = $2, state = 'active',
             key_version = $3, last_seen_ms = $4, approved_hostname = NULL,
             pending_hostname = NULL WHERE id = $5",
        )
        .bind(hostname.as_str())
        .bind(labels)
        .bind(key_version)
        .bind(now_ms)
        .bind(id)
        .execute(&mut *self.0)
        .await?;
        sqlx::query(
            "UPDATE machine_keys SET revoked_ms = $1
             WHERE machine_row = $2 AND revoked_ms IS NULL",
        )
        .bind(now_ms)
        .bind(id)
        .execute(&mut *self.0)
        .await?;
        // A link still held with an old key closes.
        super::links::ring(&mut self.0, id, now_ms).await?;
        Ok(())
    }

    /// Stores a new key of row `id` by its hash.
    pub async fn add_key(&mut self, id: i64, key_hash: &str, now_ms: i64) -> Result<()> {
        // Versions count up per machine, across re-enrollments and rotations.
        sqlx::query(
            "INSERT INTO machine_keys (machine_row, hash, created_ms, version) VALUES ($1, $2, $3,
             (SELECT COALESCE(MAX(version), 0) + 1 FROM machine_keys WHERE machine_row = $1))",
        )
        .bind(id)
        .bind(key_hash)
        .bind(now_ms)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    pub async fn commit(self) -> Result<()> {
        Ok(self.0.commit().await?)
    }
}
