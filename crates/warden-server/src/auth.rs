//! Operators: accounts with Argon2id passwords and a role, login sessions carried by signed
//! tokens (`wop_`, at most an hour, revocable by logout), and API tokens (`wat_`, scoped to a
//! role no higher than their owner's, expiring, revocable, stored only as SHA-256).
//!
//! Which token goes where is fixed by its prefix: an operator endpoint takes `wop_` and `wat_`
//! only, the agent endpoint `wmk_` only.

use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;
use sqlx::Row;
use subtle::ConstantTimeEq;
use warden_fleet_proto::ids::prefixed_hex64;

use crate::db::{Db, is_unique_violation, now_ms};
use crate::keys::{self, hex, random_hex};
use crate::store::{Result, StoreError};

/// Prefix of a login session token.
pub const SESSION_PREFIX: &str = "wop_";
/// Prefix of an API token.
pub const API_PREFIX: &str = "wat_";
/// What a login token is for, signed into it: a token signed for anything else is refused.
pub const PURPOSE: &str = "operator";
/// How long a login lasts.
pub const SESSION_MS: i64 = 60 * 60 * 1000;
/// Longest an API token may live.
pub const MAX_TOKEN_MS: i64 = 365 * 24 * 60 * 60 * 1000;

/// What an operator may do, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("role must be viewer, operator or admin, not `{s}`")),
        }
    }
}

/// An authenticated caller of the operator endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    pub id: i64,
    pub name: String,
    /// What this credential may do (an API token's role, capped by its owner's).
    pub role: Role,
    /// The session behind a login token, to log out.
    pub session: Option<String>,
    /// Where the request came from (set by the HTTP layer), for the audit trail.
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OperatorInfo {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    pub id: i64,
    pub operator: String,
    pub name: String,
    pub role: Role,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub revoked: bool,
}

/// The key that signs session tokens: 32 random bytes kept in the database (`server_secrets`),
/// made by the first server to start on it, so every server sharing the database signs and
/// accepts the same tokens.
#[derive(Clone)]
pub struct SigningKey([u8; 32]);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(…)")
    }
}

impl PartialEq for SigningKey {
    fn eq(&self, other: &SigningKey) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }
}

impl Eq for SigningKey {}

/// The signing key's name in `server_secrets`.
pub const SIGNING_KEY: &str = "session_signing_key";

impl SigningKey {
    /// The database's signing key, made now if it has none. Servers starting at once on one
    /// database all end up with the one key that was stored first: the insert does nothing when
    /// a key is there, and every server reads back what is stored.
    pub async fn load_or_create(db: &Db) -> anyhow::Result<SigningKey> {
        let mut fresh = [0u8; 32];
        getrandom::fill(&mut fresh).map_err(|e| anyhow::anyhow!("random: {e}"))?;
        sqlx::query(
            "INSERT INTO server_secrets (name, value, created_ms) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(SIGNING_KEY)
        .bind(hex(&fresh))
        .bind(now_ms())
        .execute(&db.pool)
        .await
        .map_err(|e| anyhow::anyhow!("cannot store the token signing key: {e}"))?;
        let stored: String = sqlx::query("SELECT value FROM server_secrets WHERE name = $1")
            .bind(SIGNING_KEY)
            .fetch_one(&db.pool)
            .await
            .map_err(|e| anyhow::anyhow!("cannot read the token signing key: {e}"))?
            .try_get("value")?;
        let key = unhex(&stored)
            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "the token signing key in the database is not 32 bytes of hex; delete its row \
                     (server_secrets, name {SIGNING_KEY}) to make a new one (every login ends)"
                )
            })?;
        Ok(SigningKey(key))
    }

    fn mac(&self, payload: &str) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("any key length");
        m.update(payload.as_bytes());
        m
    }

    /// `wop_` + hex(payload) + `.` + hex(HMAC-SHA256(payload)).
    fn sign(&self, payload: &str) -> String {
        let tag = self.mac(payload).finalize().into_bytes();
        format!("{SESSION_PREFIX}{}.{}", hex(payload.as_bytes()), hex(&tag))
    }

    /// The payload of a token this key signed.
    fn open(&self, token: &str) -> Option<String> {
        let (payload, tag) = token.strip_prefix(SESSION_PREFIX)?.split_once('.')?;
        let payload = String::from_utf8(unhex(payload)?).ok()?;
        self.mac(&payload).verify_slice(&unhex(tag)?).ok()?;
        Some(payload)
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 512 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn role_of(s: &str) -> Result<Role> {
    s.parse()
        .map_err(|e: String| StoreError::Other(anyhow::anyhow!(e)))
}

/// An operator name: 1 to 64 of `a-z 0-9 . _ -`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

impl Db {
    pub async fn add_operator(
        &self,
        name: &str,
        role: Role,
        password: &str,
    ) -> Result<OperatorInfo> {
        if !valid_name(name) {
            return Err(StoreError::BadRequest(
                "an operator name is 1 to 64 of a-z, 0-9, `.`, `_`, `-`".into(),
            ));
        }
        if password.chars().count() < 12 || password.len() > 1024 {
            return Err(StoreError::BadRequest(
                "a password is 12 to 1024 characters".into(),
            ));
        }
        let secret = password.to_owned();
        let hash = tokio::task::spawn_blocking(move || keys::hash_secret(&secret))
            .await
            .map_err(|e| anyhow::anyhow!("hashing: {e}"))??;
        let created = now_ms();
        let row = sqlx::query(
            "INSERT INTO operators (name, role, password_hash, created_ms)
             VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(name)
        .bind(role.as_str())
        .bind(&hash)
        .bind(created)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("operator `{name}` already exists"))
            } else {
                e.into()
            }
        })?;
        Ok(OperatorInfo {
            id: row.try_get("id")?,
            name: name.to_owned(),
            role,
            created_ms: created,
        })
    }

    pub async fn operators(&self) -> Result<Vec<OperatorInfo>> {
        let rows = sqlx::query("SELECT id, name, role, created_ms FROM operators ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(OperatorInfo {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    role: role_of(&r.try_get::<String, _>("role")?)?,
                    created_ms: r.try_get("created_ms")?,
                })
            })
            .collect()
    }

    /// The operator called `name` and their password hash.
    pub async fn operator_login(&self, name: &str) -> Result<Option<(OperatorInfo, String)>> {
        let row = sqlx::query(
            "SELECT id, name, role, created_ms, password_hash FROM operators WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some((
            OperatorInfo {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                role: role_of(&r.try_get::<String, _>("role")?)?,
                created_ms: r.try_get("created_ms")?,
            },
            r.try_get("password_hash")?,
        )))
    }

    /// A new login session for `operator`: its signed token and when it ends.
    pub async fn open_session(&self, key: &SigningKey, operator: i64) -> Result<(String, i64)> {
        let id = random_hex(16);
        let now = now_ms();
        let expires = now + SESSION_MS;
        sqlx::query(
            "INSERT INTO sessions (id, operator_id, created_ms, expires_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(&id)
        .bind(operator)
        .bind(now)
        .bind(expires)
        .execute(&self.pool)
        .await?;
        Ok((
            key.sign(&format!("{PURPOSE}:{id}:{operator}:{expires}")),
            expires,
        ))
    }

    pub async fn close_session(&self, session: &str) -> Result<()> {
        sqlx::query("UPDATE sessions SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL")
            .bind(now_ms())
            .bind(session)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The operator a bearer token stands for, if it is a live session or API token.
    pub async fn authenticate(&self, key: &SigningKey, token: &str) -> Result<Option<Operator>> {
        let now = now_ms();
        if token.starts_with(SESSION_PREFIX) {
            let Some(payload) = key.open(token) else {
                return Ok(None);
            };
            let mut parts = payload.split(':');
            let (Some(PURPOSE), Some(sid), Some(op), Some(exp), None) = (
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
            ) else {
                return Ok(None);
            };
            let (Ok(op), Ok(exp)) = (op.parse::<i64>(), exp.parse::<i64>()) else {
                return Ok(None);
            };
            if exp <= now {
                return Ok(None);
            }
            let row = sqlx::query(
                "SELECT o.id, o.name, o.role FROM sessions s JOIN operators o ON o.id = s.operator_id
                 WHERE s.id = $1 AND s.operator_id = $2 AND s.revoked_ms IS NULL AND s.expires_ms > $3",
            )
            .bind(sid)
            .bind(op)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
            let Some(r) = row else { return Ok(None) };
            return Ok(Some(Operator {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                role: role_of(&r.try_get::<String, _>("role")?)?,
                session: Some(sid.to_owned()),
                source: String::new(),
            }));
        }
        if !prefixed_hex64(token, API_PREFIX) {
            return Ok(None);
        }
        let hash = keys::secret_hash(token);
        let row = sqlx::query(
            "SELECT t.hash, t.role AS token_role, o.id, o.name, o.role FROM api_tokens t
             JOIN operators o ON o.id = t.operator_id
             WHERE t.hash = $1 AND t.revoked_ms IS NULL AND t.expires_ms > $2",
        )
        .bind(&hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        if !keys::same_hash(&r.try_get::<String, _>("hash")?, &hash) {
            return Ok(None);
        }
        let own = role_of(&r.try_get::<String, _>("role")?)?;
        let scoped = role_of(&r.try_get::<String, _>("token_role")?)?;
        Ok(Some(Operator {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            role: own.min(scoped),
            session: None,
            source: String::new(),
        }))
    }

    /// A new API token for `operator`: the token (shown once) and its record.
    pub async fn create_token(
        &self,
        operator: &Operator,
        name: &str,
        role: Role,
        lifetime_ms: i64,
    ) -> Result<(String, TokenInfo)> {
        if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err(StoreError::BadRequest(
                "a token name is 1 to 64 characters, without control characters".into(),
            ));
        }
        if role > operator.role {
            return Err(StoreError::BadRequest(format!(
                "a token may not do more than you: role {} is above your {}",
                role.as_str(),
                operator.role.as_str()
            )));
        }
        if !(1..=MAX_TOKEN_MS).contains(&lifetime_ms) {
            return Err(StoreError::BadRequest(
                "expires_in_s must be 1 to 31536000 (a year)".into(),
            ));
        }
        let token = format!("{API_PREFIX}{}", random_hex(32));
        let now = now_ms();
        let row = sqlx::query(
            "INSERT INTO api_tokens (operator_id, name, role, hash, created_ms, expires_ms)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(operator.id)
        .bind(name)
        .bind(role.as_str())
        .bind(keys::secret_hash(&token))
        .bind(now)
        .bind(now + lifetime_ms)
        .fetch_one(&self.pool)
        .await?;
        Ok((
            token,
            TokenInfo {
                id: row.try_get("id")?,
                operator: operator.name.clone(),
                name: name.to_owned(),
                role,
                created_ms: now,
                expires_ms: now + lifetime_ms,
                revoked: false,
            },
        ))
    }

    /// API tokens: `operator`'s own, or everyone's for `None`.
    pub async fn tokens(&self, operator: Option<i64>) -> Result<Vec<TokenInfo>> {
        let rows = sqlx::query(
            "SELECT t.id, o.name AS operator, t.name, t.role, t.created_ms, t.expires_ms,
             t.revoked_ms FROM api_tokens t JOIN operators o ON o.id = t.operator_id
             WHERE ($1 = 0 OR t.operator_id = $1) ORDER BY t.id",
        )
        .bind(operator.unwrap_or(0))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TokenInfo {
                    id: r.try_get("id")?,
                    operator: r.try_get("operator")?,
                    name: r.try_get("name")?,
                    role: role_of(&r.try_get::<String, _>("role")?)?,
                    created_ms: r.try_get("created_ms")?,
                    expires_ms: r.try_get("expires_ms")?,
                    revoked: r.try_get::<Option<i64>, _>("revoked_ms")?.is_some(),
                })
            })
            .collect()
    }

    /// Revokes token `id`: `operator`'s own, or anyone's for `None`. `Ok(false)` if there was no
    /// such live token to revoke.
    pub async fn revoke_token(&self, id: i64, operator: Option<i64>) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_ms = $1
             WHERE id = $2 AND ($3 = 0 OR operator_id = $3) AND revoked_ms IS NULL",
        )
        .bind(now_ms())
        .bind(id)
        .bind(operator.unwrap_or(0))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: a signed payload opens with its key only, and any change to it is refused.
    #[test]
    fn session_tokens_open_only_unchanged_and_with_their_key() {
        let k = SigningKey([7; 32]);
        let t = k.sign("abc:1:99");
        assert_eq!(k.open(&t).as_deref(), Some("abc:1:99"));
        assert_eq!(SigningKey([8; 32]).open(&t), None);
        let forged = t.replacen(&hex(b"abc:1:99"), &hex(b"abc:2:99"), 1);
        assert_eq!(k.open(&forged), None);
        assert_eq!(k.open("wop_zz.00"), None);
    }
}
