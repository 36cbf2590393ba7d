//! Sites, enrollment keys, machines, machine keys, bans and events in the database. Every
//! change that must not interleave with another is one transaction whose first statement
//! writes (so SQLite takes its write lock at once and PostgreSQL locks the row it orders by).

use serde::Serialize;
use sqlx::Row;
use warden_fleet_proto::{MachineId, SiteCode};

use crate::db::{Db, is_unique_violation, now_ms};

/// The columns of [`Machine`], for `concat!` (static SQL, nothing spliced in at run time).
macro_rules! machine_select {
    () => {
        "SELECT m.machine_id, s.site_code, m.hostname, m.labels, m.state,
         m.key_version, m.created_ms, m.last_seen_ms,
         (SELECT COUNT(*) FROM bans b WHERE b.machine_id = m.machine_id) AS banned
         FROM machines m JOIN sites s ON s.id = m.site_id"
    };
}
use crate::keys;

/// Errors of the store, by what the caller should answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Other(#[from] anyhow::Error),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The tenant of this server's sites (one for now).
pub const TENANT: &str = "default";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Site {
    pub id: i64,
    pub site_code: String,
    pub display_name: String,
    pub company: String,
    /// The active enrollment key's version (0: none issued yet).
    pub key_version: i64,
}

/// A new enrollment key, shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IssuedKey {
    pub key: String,
    pub version: i64,
    pub fingerprint: String,
    pub fingerprint_label: String,
}

/// The non-secret part of a site's active key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    pub version: i64,
    pub fingerprint: String,
    pub fingerprint_label: String,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Machine {
    pub machine_id: String,
    pub site_code: String,
    pub hostname: String,
    pub labels: serde_json::Value,
    pub state: String,
    pub banned: bool,
    pub key_version: i64,
    pub created_ms: i64,
    pub last_seen_ms: i64,
}

/// One audit event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub id: i64,
    pub ts_ms: i64,
    pub kind: String,
    pub actor: String,
    pub target: String,
    pub source: String,
    pub detail: String,
}

fn label(version: i64, fingerprint: &str) -> String {
    format!("v{version} ({fingerprint})")
}

impl Db {
    pub async fn add_site(&self, code: &str, display_name: &str, company: &str) -> Result<Site> {
        if code.parse::<SiteCode>().is_err() {
            return Err(StoreError::BadRequest(
                "site_code must be 1 to 64 of a-z, 0-9, `-`, `_`, starting with a letter or digit"
                    .into(),
            ));
        }
        for (what, v) in [("display_name", display_name), ("company", company)] {
            if v.chars().count() > 128 || v.chars().any(char::is_control) {
                return Err(StoreError::BadRequest(format!(
                    "{what} must be at most 128 characters, without control characters"
                )));
            }
        }
        let row = sqlx::query(
            "INSERT INTO sites (tenant, site_code, display_name, company, created_ms)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(TENANT)
        .bind(code)
        .bind(display_name)
        .bind(company)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("site `{code}` already exists"))
            } else {
                e.into()
            }
        })?;
        Ok(Site {
            id: row.try_get("id")?,
            site_code: code.to_owned(),
            display_name: display_name.to_owned(),
            company: company.to_owned(),
            key_version: 0,
        })
    }

    pub async fn sites(&self) -> Result<Vec<Site>> {
        let rows = sqlx::query(
            "SELECT id, site_code, display_name, company, key_version FROM sites
             WHERE tenant = $1 ORDER BY site_code",
        )
        .bind(TENANT)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(site_of).collect()
    }

    pub async fn site(&self, code: &str) -> Result<Site> {
        let row = sqlx::query(
            "SELECT id, site_code, display_name, company, key_version FROM sites
             WHERE tenant = $1 AND site_code = $2",
        )
        .bind(TENANT)
        .bind(code)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no site `{code}`")))?;
        site_of(&row)
    }

    /// Issues a new enrollment key for `code`, the only active one from now on. One
    /// transaction: concurrent rotations get distinct versions and leave exactly one active.
    pub async fn rotate_key(&self, code: &str) -> Result<IssuedKey> {
        let key = keys::new_enrollment_key();
        let fingerprint = keys::fingerprint(&key);
        // Slow on purpose (Argon2id): before the transaction, off the async threads.
        let secret = key.clone();
        let hash = tokio::task::spawn_blocking(move || keys::hash_secret(&secret))
            .await
            .map_err(|e| anyhow::anyhow!("hashing: {e}"))??;
        let mut tx = self.pool.begin().await?;
        // The write that orders rotations: the site row is locked until commit.
        let row = sqlx::query(
            "UPDATE sites SET key_version = key_version + 1
             WHERE tenant = $1 AND site_code = $2 RETURNING id, key_version",
        )
        .bind(TENANT)
        .bind(code)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no site `{code}`")))?;
        let (site_id, version): (i64, i64) = (row.try_get("id")?, row.try_get("key_version")?);
        sqlx::query("UPDATE enrollment_keys SET active = 0 WHERE site_id = $1 AND active = 1")
            .bind(site_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO enrollment_keys (site_id, version, hash, fingerprint, active, created_ms)
             VALUES ($1, $2, $3, $4, 1, $5)",
        )
        .bind(site_id)
        .bind(version)
        .bind(&hash)
        .bind(&fingerprint)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(IssuedKey {
            fingerprint_label: label(version, &fingerprint),
            key,
            version,
            fingerprint,
        })
    }

    /// The site's active key, without its secret.
    pub async fn active_key(&self, code: &str) -> Result<KeyInfo> {
        let row = sqlx::query(
            "SELECT k.version, k.fingerprint, k.created_ms FROM enrollment_keys k
             JOIN sites s ON s.id = k.site_id
             WHERE s.tenant = $1 AND s.site_code = $2 AND k.active = 1",
        )
        .bind(TENANT)
        .bind(code)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("site `{code}` has no active key")))?;
        let version: i64 = row.try_get("version")?;
        let fingerprint: String = row.try_get("fingerprint")?;
        Ok(KeyInfo {
            fingerprint_label: label(version, &fingerprint),
            version,
            fingerprint,
            created_ms: row.try_get("created_ms")?,
        })
    }

    /// Machines per enrollment key version of site `site_id`.
    pub async fn key_usage(&self, site_id: i64) -> Result<Vec<(i64, i64)>> {
        let rows = sqlx::query(
            "SELECT key_version, COUNT(*) AS n FROM machines
             WHERE site_id = $1 AND state <> 'removed' GROUP BY key_version ORDER BY key_version",
        )
        .bind(site_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("key_version")?, r.try_get("n")?)))
            .collect()
    }

    /// Records an event. Never given key material: callers pass ids, names and outcomes.
    pub async fn event(
        &self,
        kind: &str,
        actor: &str,
        target: &str,
        source: &str,
        detail: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO events (ts_ms, kind, actor, target, source, detail)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(now_ms())
        .bind(kind)
        .bind(actor)
        .bind(target)
        .bind(source)
        .bind(detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Events, newest first, of one kind when given, before `before_id` when given.
    pub async fn events(
        &self,
        kind: Option<&str>,
        before_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Event>> {
        let rows = sqlx::query(
            "SELECT id, ts_ms, kind, actor, target, source, detail FROM events
             WHERE ($1 = '' OR kind = $1) AND id < $2 ORDER BY id DESC LIMIT $3",
        )
        .bind(kind.unwrap_or(""))
        .bind(before_id.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Event {
                    id: r.try_get("id")?,
                    ts_ms: r.try_get("ts_ms")?,
                    kind: r.try_get("kind")?,
                    actor: r.try_get("actor")?,
                    target: r.try_get("target")?,
                    source: r.try_get("source")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }

    /// Machines, of one site and one state when given, whose machine id or hostname contains
    /// `text` when given; at most `limit`, by machine id.
    pub async fn machines(
        &self,
        site: Option<&str>,
        state: Option<&str>,
        text: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Machine>> {
        let pattern = text.map(|t| format!("%{}%", t.replace(['%', '_'], "")));
        let rows = sqlx::query(concat!(
            machine_select!(),
            " WHERE ($1 = '' OR s.site_code = $1) AND ($2 = '' OR m.state = $2)
             AND ($3 = '' OR m.machine_id LIKE $3 OR m.hostname LIKE $3)
             ORDER BY m.machine_id LIMIT $4"
        ))
        .bind(site.unwrap_or(""))
        .bind(state.unwrap_or(""))
        .bind(pattern.as_deref().unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(machine_of).collect()
    }

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
        let Ok(key) = key.parse::<warden_fleet_proto::MachineKey>() else {
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
}

fn site_of(r: &sqlx::any::AnyRow) -> Result<Site> {
    Ok(Site {
        id: r.try_get("id")?,
        site_code: r.try_get("site_code")?,
        display_name: r.try_get("display_name")?,
        company: r.try_get("company")?,
        key_version: r.try_get("key_version")?,
    })
}

fn machine_of(r: &sqlx::any::AnyRow) -> Result<Machine> {
    let labels: String = r.try_get("labels")?;
    let banned: i64 = r.try_get("banned")?;
    Ok(Machine {
        machine_id: r.try_get("machine_id")?,
        site_code: r.try_get("site_code")?,
        hostname: r.try_get("hostname")?,
        labels: serde_json::from_str(&labels).unwrap_or(serde_json::Value::Null),
        state: r.try_get("state")?,
        banned: banned > 0,
        key_version: r.try_get("key_version")?,
        created_ms: r.try_get("created_ms")?,
        last_seen_ms: r.try_get("last_seen_ms")?,
    })
}

/// A machine key's record, never the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MachineKey {
    pub id: i64,
    pub created_ms: i64,
    pub revoked: bool,
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
    pub async fn site_by_id(&self, id: i64) -> Result<Site> {
        let row = sqlx::query(
            "SELECT id, site_code, display_name, company, key_version FROM sites
             WHERE tenant = $1 AND id = $2",
        )
        .bind(TENANT)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no site {id}")))?;
        site_of(&row)
    }

    /// A machine's keys, newest first.
    pub async fn machine_keys(&self, machine_id: &str) -> Result<Vec<MachineKey>> {
        self.machine(machine_id).await?;
        let rows = sqlx::query(
            "SELECT k.id, k.created_ms, k.revoked_ms FROM machine_keys k
             JOIN machines m ON m.id = k.machine_row WHERE m.machine_id = $1 ORDER BY k.id DESC",
        )
        .bind(machine_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(MachineKey {
                    id: r.try_get("id")?,
                    created_ms: r.try_get("created_ms")?,
                    revoked: r.try_get::<Option<i64>, _>("revoked_ms")?.is_some(),
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
        sqlx::query("UPDATE machine_keys SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL")
            .bind(now_ms())
            .bind(key_id)
            .execute(&self.pool)
            .await?;
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
