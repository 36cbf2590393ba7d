//! Machines, their keys and bans: listing and showing machines, approving a pending clone,
//! removing (one or in bulk), banning, the machine a presented key belongs to, and a machine's
//! keys (metadata only; a key is stored as its SHA-256 and never returned).

use serde::Serialize;
use sqlx::Row;
use warden_fleet_proto::{MachineId, MachineKey};

use super::{Db, Result, StoreError, now_ms};
use crate::keys;

/// The columns of [`Machine`] (of `machines m` and `sites s`), for `concat!` (static SQL,
/// nothing spliced in at run time).
macro_rules! machine_cols {
    () => {
        "SELECT m.machine_id, s.site_code, m.hostname, m.labels, m.state,
         m.key_version, m.created_ms, m.last_seen_ms, m.linked_ms, m.agent_version,
         (SELECT COUNT(*) FROM bans b WHERE b.machine_id = m.machine_id) AS banned,
         (SELECT MAX(k.version) FROM machine_keys k WHERE k.machine_row = m.id
          AND k.revoked_ms IS NULL AND k.retired_ms IS NULL AND k.pending = 0)
          AS machine_key_version"
    };
}
pub(super) use machine_cols;

/// [`machine_cols`] with its tables.
macro_rules! machine_select {
    () => {
        concat!(
            machine_cols!(),
            " FROM machines m JOIN sites s ON s.id = m.site_id"
        )
    };
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Machine {
    pub machine_id: String,
    pub site_code: String,
    pub hostname: String,
    pub labels: serde_json::Value,
    pub state: String,
    pub banned: bool,
    /// The enrollment key version it last enrolled with.
    pub key_version: i64,
    pub created_ms: i64,
    /// When anything last came from it: its enrollment, or its link (written in batches).
    pub last_seen_ms: i64,
    /// Whether it holds a live link: one came up and it has been heard from within
    /// [`CONNECTED_WITHIN_MS`] (so a server that died without saying so does not leave
    /// machines shown connected).
    pub connected: bool,
    /// When its live link came up.
    pub linked_ms: Option<i64>,
    /// The version of the machine key in use (the current one; a pending one is not yet).
    pub machine_key_version: Option<i64>,
    /// What its agent said it is, at its last link.
    pub agent_version: Option<String>,
}

/// A linked machine not heard from for this long is shown disconnected: the silent-peer
/// deadline plus the longest `last_seen` batch interval, with room to spare.
pub const CONNECTED_WITHIN_MS: i64 = 120_000;

/// A machine key's record, never the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MachineKeyInfo {
    pub id: i64,
    /// 1 for the machine's first key, one more for each after it.
    pub version: i64,
    pub created_ms: i64,
    pub revoked: bool,
    /// Issued by a rotation and not used yet.
    pub pending: bool,
    /// Retired by a newer key's first use: presenting it again quarantines the machine.
    pub retired: bool,
}

/// What a bulk removal did with one id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Removal {
    Invalid,
    NotFound,
    Removed,
    AlreadyRemoved,
    Failed,
}

/// Most ids one bulk removal takes.
pub const MAX_BULK: usize = 500;

impl Db {
    pub async fn machine(&self, machine_id: &str) -> Result<Machine> {
        let row = sqlx::query(concat!(machine_select!(), " WHERE m.machine_id = $1"))
            .bind(machine_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no machine `{machine_id}`")))?;
        machine_of(&row)
    }

    /// Lets a pending clone in: its next enrollment gets a key.
    pub async fn approve(&self, machine_id: &str) -> Result<()> {
        let done = sqlx::query(
            "UPDATE machines SET state = 'active', approved_hostname = pending_hostname,
             pending_hostname = NULL WHERE machine_id = $1 AND state = 'pending'",
        )
        .bind(machine_id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            self.machine(machine_id).await?;
            return Err(StoreError::Conflict(format!(
                "machine `{machine_id}` is not pending"
            )));
        }
        Ok(())
    }

    /// Soft-deletes a machine: its keys are revoked, it may enroll again. `Ok(false)` if it
    /// was removed already.
    pub async fn remove(&self, machine_id: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE machines SET state = 'removed', pending_hostname = NULL
             WHERE machine_id = $1 AND state <> 'removed' RETURNING id",
        )
        .bind(machine_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            drop(tx);
            self.machine(machine_id).await?;
            return Ok(false);
        };
        let id: i64 = row.try_get("id")?;
        sqlx::query(
            "UPDATE machine_keys SET revoked_ms = $1 WHERE machine_row = $2 AND revoked_ms IS NULL",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        super::links::ring(&mut tx, id, now_ms()).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Bans a machine id (known or not): it may not enroll, and its keys are revoked.
    pub async fn ban(&self, machine_id: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO bans (machine_id, created_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(machine_id)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE machine_keys SET revoked_ms = $1 WHERE revoked_ms IS NULL AND machine_row IN
             (SELECT id FROM machines WHERE machine_id = $2)",
        )
        .bind(now_ms())
        .bind(machine_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO machine_revocations (machine_row, created_ms)
             SELECT id, $1 FROM machines WHERE machine_id = $2",
        )
        .bind(now_ms())
        .bind(machine_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn unban(&self, machine_id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM bans WHERE machine_id = $1")
            .bind(machine_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The machine a presented machine key belongs to, if the key is live (and notes it seen).
    pub async fn machine_by_key(&self, key: &str) -> Result<Option<Machine>> {
        let Ok(key) = key.parse::<MachineKey>() else {
            return Ok(None);
        };
        let hash = keys::secret_hash(key.expose());
        let row = sqlx::query(
            "SELECT k.hash, m.machine_id FROM machine_keys k JOIN machines m ON m.id = k.machine_row
             WHERE k.hash = $1 AND k.revoked_ms IS NULL AND m.state <> 'removed'",
        )
        .bind(&hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let stored: String = row.try_get("hash")?;
        if !keys::same_hash(&stored, &hash) {
            return Ok(None);
        }
        let machine_id: String = row.try_get("machine_id")?;
        sqlx::query("UPDATE machines SET last_seen_ms = $1 WHERE machine_id = $2")
            .bind(now_ms())
            .bind(&machine_id)
            .execute(&self.pool)
            .await?;
        Ok(Some(self.machine(&machine_id).await?))
    }

    /// A machine's keys, newest first.
    pub async fn machine_keys(&self, machine_id: &str) -> Result<Vec<MachineKeyInfo>> {
        self.machine(machine_id).await?;
        let rows = sqlx::query(
            "SELECT k.id, k.version, k.created_ms, k.revoked_ms, k.pending, k.retired_ms
             FROM machine_keys k
             JOIN machines m ON m.id = k.machine_row WHERE m.machine_id = $1 ORDER BY k.id DESC",
        )
        .bind(machine_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(MachineKeyInfo {
                    id: r.try_get("id")?,
                    version: r.try_get("version")?,
                    created_ms: r.try_get("created_ms")?,
                    revoked: r.try_get::<Option<i64>, _>("revoked_ms")?.is_some(),
                    pending: r.try_get::<i64, _>("pending")? > 0,
                    retired: r.try_get::<Option<i64>, _>("retired_ms")?.is_some(),
                })
            })
            .collect()
    }

    /// Revokes one of a machine's keys. `Ok(false)`: it was revoked already.
    pub async fn revoke_machine_key(&self, machine_id: &str, key_id: i64) -> Result<bool> {
        let keys = self.machine_keys(machine_id).await?;
        let Some(key) = keys.iter().find(|k| k.id == key_id) else {
            return Err(StoreError::NotFound(format!(
                "machine `{machine_id}` has no key {key_id}"
            )));
        };
        if key.revoked {
            return Ok(false);
        }
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE machine_keys SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL
             RETURNING machine_row",
        )
        .bind(now_ms())
        .bind(key_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = row {
            super::links::ring(&mut tx, row.try_get("machine_row")?, now_ms()).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Removes each of `ids` on its own: one bad id does not stop the others.
    pub async fn bulk_remove(&self, ids: &[String]) -> Vec<(String, Removal)> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let result = if id.parse::<MachineId>().is_err() {
                Removal::Invalid
            } else {
                match self.remove(id).await {
                    Ok(true) => Removal::Removed,
                    Ok(false) => Removal::AlreadyRemoved,
                    Err(StoreError::NotFound(_)) => Removal::NotFound,
                    Err(e) => {
                        tracing::error!(machine_id = %id, error = %e, "bulk removal of one machine failed");
                        Removal::Failed
                    }
                }
            };
            out.push((id.clone(), result));
        }
        out
    }
}

pub(super) fn machine_of(r: &sqlx::any::AnyRow) -> Result<Machine> {
    let labels: String = r.try_get("labels")?;
    let banned: i64 = r.try_get("banned")?;
    let last_seen_ms: i64 = r.try_get("last_seen_ms")?;
    let linked_ms: Option<i64> = r.try_get("linked_ms")?;
    Ok(Machine {
        machine_id: r.try_get("machine_id")?,
        site_code: r.try_get("site_code")?,
        hostname: r.try_get("hostname")?,
        labels: serde_json::from_str(&labels).unwrap_or(serde_json::Value::Null),
        state: r.try_get("state")?,
        banned: banned > 0,
        key_version: r.try_get("key_version")?,
        created_ms: r.try_get("created_ms")?,
        last_seen_ms,
        connected: linked_ms.is_some() && last_seen_ms >= now_ms() - CONNECTED_WITHIN_MS,
        linked_ms,
        machine_key_version: r.try_get("machine_key_version")?,
        agent_version: r.try_get("agent_version")?,
    })
}
