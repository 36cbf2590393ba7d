//! Counts for `/metrics`: how many dispatches and host parts are in each state. Read at each
//! scrape, two grouped counts over indexed columns; nothing here writes or sees a secret.

use sqlx::Row;

use super::{Db, Result};

impl Db {
    /// (state, count) of every dispatch state present.
    pub async fn dispatch_counts(&self) -> Result<Vec<(String, i64)>> {
        self.state_counts("SELECT state, COUNT(*) AS n FROM dispatches GROUP BY state")
            .await
    }

    /// (state, count) of every host-part state present.
    pub async fn dispatch_host_counts(&self) -> Result<Vec<(String, i64)>> {
        self.state_counts("SELECT state, COUNT(*) AS n FROM dispatch_hosts GROUP BY state")
            .await
    }

    async fn state_counts(&self, sql: &'static str) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(sql).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| Ok((r.try_get("state")?, r.try_get("n")?)))
            .collect()
    }
}
