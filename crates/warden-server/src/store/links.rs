//! The link's rows: who a presented machine key belongs to and whether it stands, promotion of
//! a rotated-in key on its first use, pending keys, quarantine, the link state operators see,
//! `last_seen` in batches, and the revocations every server watches.
//!
//! Keys are looked up by their SHA-256 and compared again in constant time; no plaintext key
//! is ever stored or returned from here.

use sqlx::Row;
use warden_fleet_proto::{KeyVersion, MachineId, MachineKey};

use super::{Db, Result, StoreError, now_ms};
use crate::keys;

/// A key that stands, and the machine it opens a link for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkKey {
    pub machine_row: i64,
    pub machine_id: MachineId,
    pub key_id: i64,
    pub key_version: KeyVersion,
    /// This use promoted a pending key: the keys before it are retired now.
    pub promoted: bool,
    /// When the key is due for rotation, if set.
    pub next_rotation_ms: Option<i64>,
}

/// A link that came up, written with the next batch.
#[derive(Debug, Clone)]
pub struct LinkUp {
    pub machine_row: i64,
    pub linked_ms: i64,
    pub agent_version: Box<str>,
    /// When a machine without a rotation due time gets its first.
    pub first_rotation_ms: i64,
}

/// Why a known machine gets no link. A machine *pending* approval is not among them: its
/// state says a second claimant without a key (a likely clone) waits for an operator, while
/// the host that holds the machine's live key keeps its link; else anyone holding the site's
/// enrollment key could take a host off the fleet by enrolling its machine id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Banned,
    Quarantined,
}

/// What a presented machine key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkAuth {
    /// No such key, a revoked one, or a removed machine: 401, nothing learned.
    Unknown,
    /// A key retired by rotation, presented again: a clone or theft signal.
    Replayed {
        machine_row: i64,
        machine_id: MachineId,
    },
    /// A known machine that may not link now.
    Refused { machine_id: MachineId, why: Refusal },
    /// Linking may go on.
    Live(LinkKey),
}

/// Whether a live link's key still stands, checked again after a revocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Stands,
    Revoked,
    Retired,
    Banned,
    Quarantined,
}

impl Db {
    /// Who `key` opens a link for. A pending key is promoted here, in one transaction that
    /// retires the keys before it and rings the revocation bell for the machine (so a link still
    /// held with an older key, on any server, closes); `next_rotation_ms` is set for the new
    /// key.
    pub async fn authenticate_link(
        &self,
        key: &MachineKey,
        next_rotation_ms: i64,
    ) -> Result<LinkAuth> {
        let hash = keys::secret_hash(key.expose());
        let row = sqlx::query(
            "SELECT k.id, k.hash, k.version, k.pending, k.revoked_ms, k.retired_ms,
                    m.id AS machine_row, m.machine_id, m.state, m.next_rotation_ms,
                    (SELECT COUNT(*) FROM bans b WHERE b.machine_id = m.machine_id) AS banned
             FROM machine_keys k JOIN machines m ON m.id = k.machine_row WHERE k.hash = $1",
        )
        .bind(&hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(LinkAuth::Unknown);
        };
        let stored: String = row.try_get("hash")?;
        if !keys::same_hash(&stored, &hash) {
            return Ok(LinkAuth::Unknown);
        }
        let machine_row: i64 = row.try_get("machine_row")?;
        let machine_id = parse_machine_id(&row)?;
        let state: String = row.try_get("state")?;
        let revoked: Option<i64> = row.try_get("revoked_ms")?;
        let retired: Option<i64> = row.try_get("retired_ms")?;
        let banned: i64 = row.try_get("banned")?;
        // Banned first, whatever the key (a ban also revokes them all): the agent is told it
        // is banned and stops, instead of backing off and knocking again for hours.
        if banned > 0 {
            return Ok(LinkAuth::Refused {
                machine_id,
                why: Refusal::Banned,
            });
        }
        if retired.is_some() && revoked.is_none() && state != "removed" {
            return Ok(LinkAuth::Replayed {
                machine_row,
                machine_id,
            });
        }
        if revoked.is_some() || state == "removed" {
            return Ok(LinkAuth::Unknown);
        }
        if state == "quarantined" {
            return Ok(LinkAuth::Refused {
                machine_id,
                why: Refusal::Quarantined,
            });
        }
        let key_id: i64 = row.try_get("id")?;
        let version: i64 = row.try_get("version")?;
        let pending: i64 = row.try_get("pending")?;
        let mut next: Option<i64> = row.try_get("next_rotation_ms")?;
        let promoted = pending > 0 && self.promote(machine_row, key_id, next_rotation_ms).await?;
        if promoted {
            next = Some(next_rotation_ms);
        }
        Ok(LinkAuth::Live(LinkKey {
            machine_row,
            machine_id,
            key_id,
            key_version: KeyVersion(u64::try_from(version).unwrap_or(0)),
            promoted,
            next_rotation_ms: next,
        }))
    }

    /// Makes a pending key current and retires every other live key of its machine. `false`
    /// when another server promoted it first (the key is current either way).
    async fn promote(&self, machine_row: i64, key_id: i64, next_rotation_ms: i64) -> Result<bool> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE machine_keys SET pending = 0 WHERE id = $1 AND pending = 1 AND revoked_ms IS NULL",
        )
        .bind(key_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE machine_keys SET retired_ms = $1 WHERE machine_row = $2 AND id <> $3
             AND revoked_ms IS NULL AND retired_ms IS NULL",
        )
        .bind(now)
        .bind(machine_row)
        .bind(key_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE machines SET next_rotation_ms = $1 WHERE id = $2")
            .bind(next_rotation_ms)
            .bind(machine_row)
            .execute(&mut *tx)
            .await?;
        ring(&mut tx, machine_row, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The version the machine's pending key has, or the one a new pending key gets (the
    /// highest so far plus one), and whether one is out.
    pub async fn pending_key_version(&self, machine_row: i64) -> Result<(KeyVersion, bool)> {
        let row = sqlx::query(
            "SELECT MAX(version) AS top,
                    MAX(CASE WHEN pending = 1 AND revoked_ms IS NULL THEN version END) AS pending
             FROM machine_keys WHERE machine_row = $1",
        )
        .bind(machine_row)
        .fetch_one(&self.pool)
        .await?;
        let top: Option<i64> = row.try_get("top")?;
        let pending: Option<i64> = row.try_get("pending")?;
        let v = |n: i64| KeyVersion(u64::try_from(n).unwrap_or(0));
        Ok(match pending {
            Some(p) => (v(p), true),
            None => (v(top.unwrap_or(0) + 1), false),
        })
    }

    /// Stores `key` as the machine's pending key of `version` (the key is derived, so asking
    /// again stores nothing new). A pending key of that version with another hash (the
    /// derivation secret changed) is revoked first.
    pub async fn store_pending_key(
        &self,
        machine_row: i64,
        version: KeyVersion,
        key: &MachineKey,
    ) -> Result<()> {
        let hash = keys::secret_hash(key.expose());
        let version =
            i64::try_from(version.0).map_err(|_| StoreError::BadRequest("key version".into()))?;
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE machine_keys SET revoked_ms = $1 WHERE machine_row = $2 AND pending = 1
             AND revoked_ms IS NULL AND hash <> $3",
        )
        .bind(now)
        .bind(machine_row)
        .bind(&hash)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO machine_keys (machine_row, hash, created_ms, version, pending)
             VALUES ($1, $2, $3, $4, 1) ON CONFLICT (hash) DO NOTHING",
        )
        .bind(machine_row)
        .bind(&hash)
        .bind(now)
        .bind(version)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether the key a live link was opened with still stands.
    pub async fn standing(&self, key_id: i64) -> Result<Standing> {
        let row = sqlx::query(
            "SELECT k.revoked_ms, k.retired_ms, m.state,
                    (SELECT COUNT(*) FROM bans b WHERE b.machine_id = m.machine_id) AS banned
             FROM machine_keys k JOIN machines m ON m.id = k.machine_row WHERE k.id = $1",
        )
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(Standing::Revoked);
        };
        let revoked: Option<i64> = row.try_get("revoked_ms")?;
        let retired: Option<i64> = row.try_get("retired_ms")?;
        let state: String = row.try_get("state")?;
        let banned: i64 = row.try_get("banned")?;
        Ok(if banned > 0 {
            Standing::Banned
        } else if revoked.is_some() || state == "removed" {
            Standing::Revoked
        } else if state == "quarantined" {
            Standing::Quarantined
        } else if retired.is_some() {
            Standing::Retired
        } else {
            Standing::Stands
        })
    }

    /// Quarantines a machine (from active): no link, no dispatch until an admin clears it.
    /// `false` if it was not active.
    pub async fn quarantine(&self, machine_id: &str) -> Result<bool> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE machines SET state = 'quarantined' WHERE machine_id = $1 AND state = 'active'
             RETURNING id",
        )
        .bind(machine_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            drop(tx);
            self.machine(machine_id).await?;
            return Ok(false);
        };
        ring(&mut tx, row.try_get("id")?, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Lets a quarantined machine link again with its current key.
    pub async fn clear_quarantine(&self, machine_id: &str) -> Result<()> {
        let done = sqlx::query(
            "UPDATE machines SET state = 'active' WHERE machine_id = $1 AND state = 'quarantined'",
        )
        .bind(machine_id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            self.machine(machine_id).await?;
            return Err(StoreError::Conflict(format!(
                "machine `{machine_id}` is not quarantined"
            )));
        }
        Ok(())
    }

    /// Sets when a machine's key is next due for rotation.
    pub async fn set_next_rotation(&self, machine_row: i64, at_ms: i64) -> Result<()> {
        sqlx::query("UPDATE machines SET next_rotation_ms = $1 WHERE id = $2")
            .bind(at_ms)
            .bind(machine_row)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Writes a batch of links come up (when, the agent's version, and a first rotation due
    /// time for a machine without one), `last_seen` times and links gone down, in one
    /// transaction: the link never writes once per heartbeat, nor once per upgrade.
    pub async fn link_batch(
        &self,
        seen: &[(i64, i64)],
        ups: &[LinkUp],
        down: &[i64],
    ) -> Result<()> {
        if seen.is_empty() && ups.is_empty() && down.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for up in ups {
            sqlx::query(
                "UPDATE machines SET linked_ms = $1, last_seen_ms = $1, agent_version = $2,
                 next_rotation_ms = COALESCE(next_rotation_ms, $3) WHERE id = $4",
            )
            .bind(up.linked_ms)
            .bind(&*up.agent_version)
            .bind(up.first_rotation_ms)
            .bind(up.machine_row)
            .execute(&mut *tx)
            .await?;
        }
        for (row, ms) in seen {
            sqlx::query(
                "UPDATE machines SET last_seen_ms = $1 WHERE id = $2 AND last_seen_ms < $1",
            )
            .bind(ms)
            .bind(row)
            .execute(&mut *tx)
            .await?;
        }
        for row in down {
            sqlx::query("UPDATE machines SET linked_ms = NULL WHERE id = $1")
                .bind(row)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Revocations recorded at or after `since_ms`: (sequence number, machine row).
    pub async fn revocations_since(&self, since_ms: i64) -> Result<Vec<(i64, i64)>> {
        let rows = sqlx::query(
            "SELECT seq, machine_row FROM machine_revocations WHERE created_ms >= $1 ORDER BY seq",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("seq")?, r.try_get("machine_row")?)))
            .collect()
    }

    /// Drops revocations older than `before_ms` (servers only look back seconds).
    pub async fn prune_revocations(&self, before_ms: i64) -> Result<()> {
        sqlx::query("DELETE FROM machine_revocations WHERE created_ms < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Rings the revocation bell for a machine outside any other change.
    pub async fn ring_revocation(&self, machine_row: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        ring(&mut tx, machine_row, now_ms()).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Records, inside the transaction that changed it, that a machine's live link must be checked
/// again.
pub(crate) async fn ring(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    machine_row: i64,
    now: i64,
) -> Result<()> {
    sqlx::query("INSERT INTO machine_revocations (machine_row, created_ms) VALUES ($1, $2)")
        .bind(machine_row)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn parse_machine_id(row: &sqlx::any::AnyRow) -> Result<MachineId> {
    let id: String = row.try_get("machine_id")?;
    id.parse()
        .map_err(|_| StoreError::Other(anyhow::anyhow!("stored machine id `{id}` is malformed")))
}
