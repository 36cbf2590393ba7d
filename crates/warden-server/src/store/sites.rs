//! Sites and their enrollment keys: adding and listing sites, rotating the one active key (a
//! new version, the previous one inactive, in one transaction), and which key versions machines
//! enrolled with. Only the Argon2id hash of a key is stored; the key itself is returned once.

use serde::Serialize;
use sqlx::Row;
use warden_fleet_proto::SiteCode;

use super::{Db, Result, StoreError, TENANT, is_unique_violation, now_ms};
use crate::keys;

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
