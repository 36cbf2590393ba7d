//! What a host's agent reports about its part of a dispatch, stored: accepted (the job id),
//! refused, progress, output chunks (each stored once, whatever is sent again) and the end.
//! Every report names the dispatch and comes on the machine's own link, so a host can only
//! ever change its own part.

use sqlx::Row;

use super::super::{Db, Result, now_ms};

/// Most output stored for one host's part of a dispatch: as much as the agent's spool holds for
/// a job. Past it the rest is acknowledged but dropped, and the part says it was truncated, so a
/// host cannot fill the server's database.
pub const MAX_PART_OUTPUT: i64 = 64 * 1024 * 1024;
/// How far past the last chunk stored in order a chunk may be numbered: the agent sends its
/// chunks in order, so a chunk far ahead is not stored (and not acknowledged).
pub const SEQ_WINDOW: i64 = 1024;

/// What an output chunk changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The highest chunk stored with none missing before it (what the agent may drop).
    pub last_seq: u64,
}

/// The part's row id, for `dispatch_id` on `machine_row`.
async fn part_of(db: &Db, dispatch_id: &str, machine_row: i64) -> Result<Option<(i64, i64)>> {
    let row = sqlx::query(
        "SELECT h.id, h.dispatch_row FROM dispatch_hosts h JOIN dispatches d ON d.id = h.dispatch_row
         WHERE d.dispatch_id = $1 AND h.machine_row = $2",
    )
    .bind(dispatch_id)
    .bind(machine_row)
    .fetch_optional(&db.pool)
    .await?;
    row.map(|r| Ok((r.try_get("id")?, r.try_get("dispatch_row")?)))
        .transpose()
}

/// wardend's end states the server records as they are; anything else is `failed`.
fn end_state(state: &str) -> &'static str {
    match state {
        "succeeded" => "succeeded",
        "cancelled" => "cancelled",
        "timed_out" => "timed_out",
        "rolled_back" => "rolled_back",
        "lost" => "lost",
        _ => "failed",
    }
}

impl Db {
    /// wardend took the part as `job_id`: `sent` → `running`. `false` if no such part.
    pub async fn part_accepted(
        &self,
        dispatch_id: &str,
        machine_row: i64,
        job_id: &str,
    ) -> Result<bool> {
        let Some((part, _)) = part_of(self, dispatch_id, machine_row).await? else {
            return Ok(false);
        };
        sqlx::query(
            "UPDATE dispatch_hosts SET state = 'running', job_id = $2, updated_ms = $3
             WHERE id = $1 AND state IN ('queued', 'offline', 'sent')",
        )
        .bind(part)
        .bind(job_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(true)
    }

    /// The host refused the part (wardend's kind and message); a `not_found` answer to a
    /// cancel (the Dispatch never reached the host, nothing ran) ends it `cancelled` instead.
    /// `true` when this report ended it (not when it had ended already).
    pub async fn part_refused(
        &self,
        dispatch_id: &str,
        machine_row: i64,
        kind: &str,
        message: &str,
    ) -> Result<bool> {
        let Some((part, _)) = part_of(self, dispatch_id, machine_row).await? else {
            return Ok(false);
        };
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE dispatch_hosts SET
             state = CASE WHEN cancel_requested = 1 AND $2 = 'not_found' THEN 'cancelled'
                          ELSE 'refused' END,
             note = CASE WHEN cancel_requested = 1 AND $2 = 'not_found'
                         THEN 'not_started: cancelled before the host received it' ELSE note END,
             refusal_kind = $2, refusal_message = $3, updated_ms = $4, ended_ms = $4
             WHERE id = $1 AND state IN ('queued', 'offline', 'sent', 'running')",
        )
        .bind(part)
        .bind(kind)
        .bind(message)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The job's progress (`{state, percent, phase}`); a part still `sent` is `running` now.
    pub async fn part_progress(
        &self,
        dispatch_id: &str,
        machine_row: i64,
        progress: &serde_json::Value,
    ) -> Result<bool> {
        let Some((part, _)) = part_of(self, dispatch_id, machine_row).await? else {
            return Ok(false);
        };
        sqlx::query(
            "UPDATE dispatch_hosts SET progress = $2, updated_ms = $3,
             state = CASE WHEN state = 'sent' THEN 'running' ELSE state END
             WHERE id = $1 AND state IN ('sent', 'running')",
        )
        .bind(part)
        .bind(progress.to_string())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(true)
    }

    /// Stores output chunk `seq` (once: a chunk sent again is ignored) and answers the highest
    /// chunk stored with none missing before it. `None` if no such part.
    pub async fn part_output(
        &self,
        dispatch_id: &str,
        machine_row: i64,
        seq: u64,
        offset: u64,
        data: &str,
    ) -> Result<Option<Stored>> {
        let Some((part, dispatch_row)) = part_of(self, dispatch_id, machine_row).await? else {
            return Ok(None);
        };
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        let len = i64::try_from(data.len()).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin().await?;
        // Written first, so SQLite takes its write lock at once and PostgreSQL locks the part.
        sqlx::query("UPDATE dispatch_hosts SET last_seq = last_seq WHERE id = $1")
            .bind(part)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query("SELECT last_seq, output_bytes FROM dispatch_hosts WHERE id = $1")
            .bind(part)
            .fetch_one(&mut *tx)
            .await?;
        let last: i64 = row.try_get("last_seq")?;
        let bytes: i64 = row.try_get("output_bytes")?;
        if seq <= last || seq > last.saturating_add(SEQ_WINDOW) {
            // Stored already, or too far ahead to keep: nothing changes.
            tx.commit().await?;
            return Ok(Some(Stored {
                last_seq: u64::try_from(last).unwrap_or(0),
            }));
        }
        if bytes.saturating_add(len) > MAX_PART_OUTPUT {
            // Over the cap: in order, the chunk counts as handled (dropped, and said so).
            if seq == last + 1 {
                sqlx::query(
                    "UPDATE dispatch_hosts SET last_seq = $2, output_truncated = 1 WHERE id = $1",
                )
                .bind(part)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            let last = if seq == last + 1 { seq } else { last };
            return Ok(Some(Stored {
                last_seq: u64::try_from(last).unwrap_or(0),
            }));
        }
        let inserted = sqlx::query(
            "INSERT INTO dispatch_output (dispatch_row, machine_row, seq, \"offset\", data)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (dispatch_row, machine_row, seq) DO NOTHING",
        )
        .bind(dispatch_row)
        .bind(machine_row)
        .bind(seq)
        .bind(offset)
        .bind(data)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted > 0 {
            sqlx::query("UPDATE dispatch_hosts SET output_bytes = output_bytes + $2 WHERE id = $1")
                .bind(part)
                .bind(len)
                .execute(&mut *tx)
                .await?;
        }
        let mut last = last;
        // Chunks mostly arrive in order, so this walk is one row long.
        let rows = sqlx::query(
            "SELECT seq FROM dispatch_output WHERE dispatch_row = $1 AND machine_row = $2
             AND seq > $3 ORDER BY seq LIMIT 1000",
        )
        .bind(dispatch_row)
        .bind(machine_row)
        .bind(last)
        .fetch_all(&mut *tx)
        .await?;
        for r in &rows {
            let s: i64 = r.try_get("seq")?;
            if s != last + 1 {
                break;
            }
            last = s;
        }
        sqlx::query("UPDATE dispatch_hosts SET last_seq = $2 WHERE id = $1 AND last_seq < $2")
            .bind(part)
            .bind(last)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(Stored {
            last_seq: u64::try_from(last).unwrap_or(0),
        }))
    }

    /// The job ended. `None` if no such part; else whether every chunk the job made is stored
    /// (the agent may forget the dispatch only then).
    #[allow(clippy::too_many_arguments)]
    pub async fn part_ended(
        &self,
        dispatch_id: &str,
        machine_row: i64,
        state: &str,
        exit_code: Option<i32>,
        result: Option<&serde_json::Value>,
        last_seq: u64,
        output_truncated: bool,
    ) -> Result<Option<bool>> {
        let Some((part, _)) = part_of(self, dispatch_id, machine_row).await? else {
            return Ok(None);
        };
        let now = now_ms();
        sqlx::query(
            "UPDATE dispatch_hosts SET state = $2, exit_code = $3, result = $4, end_seq = $5,
             output_truncated = $6, updated_ms = $7, ended_ms = $7
             WHERE id = $1 AND state IN ('queued', 'offline', 'sent', 'running')",
        )
        .bind(part)
        .bind(end_state(state))
        .bind(exit_code.map(i64::from))
        .bind(result.map(ToString::to_string))
        .bind(i64::try_from(last_seq).unwrap_or(i64::MAX))
        .bind(i64::from(output_truncated))
        .bind(now)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT last_seq FROM dispatch_hosts WHERE id = $1")
            .bind(part)
            .fetch_one(&self.pool)
            .await?;
        let stored: i64 = row.try_get("last_seq")?;
        Ok(Some(u64::try_from(stored).unwrap_or(0) >= last_seq))
    }
}
