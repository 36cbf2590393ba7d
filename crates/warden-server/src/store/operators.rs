//! Operators, their login sessions and API tokens in the database: accounts with Argon2id
//! password hashes, sessions a signed `wop_` token points at, and `wat_` tokens stored only as
//! SHA-256. What a token means (its signature, its prefix, roles) is [`crate::auth`]'s; the
//! rows are here. Passwords and tokens are never logged.

use sqlx::Row;
use warden_fleet_proto::ids::prefixed_hex64;

use super::{Db, Result, StoreError, is_unique_violation, now_ms};
use crate::auth::{
    API_PREFIX, MAX_TOKEN_MS, Operator, OperatorInfo, PURPOSE, Role, SESSION_MS, SESSION_PREFIX,
    SigningKey, TokenInfo, valid_name,
};
use crate::keys::{self, random_hex};

fn role_of(s: &str) -> Result<Role> {
    s.parse()
        .map_err(|e: String| StoreError::Other(anyhow::anyhow!(e)))
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

    /// A new login session for `operator`: its signed token, its id and when it ends.
    pub async fn open_session(
        &self,
        key: &SigningKey,
        operator: i64,
    ) -> Result<(String, String, i64)> {
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
        let token = key.sign(&format!("{PURPOSE}:{id}:{operator}:{expires}"));
        Ok((token, id, expires))
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
                expires_ms: Some(exp),
                by_cookie: false,
                source: String::new(),
            }));
        }
        if !prefixed_hex64(token, API_PREFIX) {
            return Ok(None);
        }
        let hash = keys::secret_hash(token);
        let row = sqlx::query(
            "SELECT t.hash, t.role AS token_role, t.expires_ms, o.id, o.name, o.role FROM api_tokens t
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
            expires_ms: Some(r.try_get("expires_ms")?),
            by_cookie: false,
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
