//! The server's own secrets (`server_secrets`): named values made by the first server to start
//! on a database and shared by every server on it. Their values are never logged.

use sqlx::Row;

use super::{Db, Result, now_ms};

impl Db {
    /// The secret called `name`: `fresh` if none was stored yet, else the one stored first.
    /// Servers starting at once all get the same value: the insert does nothing when a value
    /// is there, and every server reads back what is stored.
    pub async fn secret_or_insert(&self, name: &str, fresh: &str) -> Result<String> {
        sqlx::query(
            "INSERT INTO server_secrets (name, value, created_ms) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(fresh)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        let stored: String = sqlx::query("SELECT value FROM server_secrets WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await?
            .try_get("value")?;
        Ok(stored)
    }
}
