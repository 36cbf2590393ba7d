//! The audit trail: recording an event and reading them back, newest first. Callers pass ids,
//! names and outcomes, never key material.

use serde::Serialize;
use sqlx::Row;

use super::{Db, Result, now_ms};

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

impl Db {
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
}
