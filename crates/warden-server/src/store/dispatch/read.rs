//! The operator's reads of dispatches: the list, one dispatch with every host's part and the
//! summary counts, a host's output chunks in order, and what changed since a cursor (for the
//! live stream). Parameters come back as stored: secret values redacted.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;

use super::super::{Db, Result, StoreError};

/// A dispatch as operators see it.
#[derive(Debug, Clone, Serialize)]
pub struct DispatchInfo {
    pub dispatch_id: String,
    pub operator: String,
    pub action: String,
    pub params: serde_json::Value,
    pub target: serde_json::Value,
    pub excluded: serde_json::Value,
    pub batch: i64,
    pub max_failures: Option<i64>,
    pub canary: i64,
    /// running, done or cancelled.
    pub state: String,
    pub cancel_requested: bool,
    /// Why new hosts stopped being started (`max_failures passed`, `canary failed`), if so.
    pub stopped: Option<String>,
    pub created_ms: i64,
    pub ended_ms: Option<i64>,
}

/// One host's part.
#[derive(Debug, Clone, Serialize)]
pub struct HostPart {
    pub machine_id: String,
    pub hostname: String,
    pub state: String,
    pub job_id: Option<String>,
    pub exit_code: Option<i64>,
    pub result: Option<serde_json::Value>,
    pub refusal_kind: Option<String>,
    pub refusal_message: Option<String>,
    /// `not_started: …` for a part cancelled before it was sent.
    pub note: Option<String>,
    pub progress: Option<serde_json::Value>,
    /// Output chunks stored, none missing.
    pub last_seq: i64,
    /// Chunks the job made, once it ended.
    pub end_seq: Option<i64>,
    pub output_truncated: bool,
    pub cancel_requested: bool,
    pub sent_ms: Option<i64>,
    pub updated_ms: i64,
    pub ended_ms: Option<i64>,
}

/// One stored output chunk.
#[derive(Debug, Clone, Serialize)]
pub struct Chunk {
    /// Cursor of the live stream (global order of storing).
    #[serde(skip)]
    pub id: i64,
    pub machine_id: String,
    pub hostname: String,
    pub seq: i64,
    pub offset: i64,
    pub data: String,
}

/// The columns of [`DispatchInfo`], for `concat!` (static SQL).
macro_rules! dispatch_cols {
    () => {
        "SELECT id, dispatch_id, operator, action, params, target, excluded, batch,
         max_failures, canary, state, cancel_requested, stopped, created_ms, ended_ms
         FROM dispatches"
    };
}

fn json(text: Option<String>) -> Option<serde_json::Value> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

fn info_of(r: &sqlx::any::AnyRow) -> Result<DispatchInfo> {
    let cancel: i64 = r.try_get("cancel_requested")?;
    Ok(DispatchInfo {
        dispatch_id: r.try_get("dispatch_id")?,
        operator: r.try_get("operator")?,
        action: r.try_get("action")?,
        params: json(r.try_get("params")?).unwrap_or_default(),
        target: json(r.try_get("target")?).unwrap_or_default(),
        excluded: json(r.try_get("excluded")?).unwrap_or_default(),
        batch: r.try_get("batch")?,
        max_failures: r.try_get("max_failures")?,
        canary: r.try_get("canary")?,
        state: r.try_get("state")?,
        cancel_requested: cancel != 0,
        stopped: r.try_get("stopped")?,
        created_ms: r.try_get("created_ms")?,
        ended_ms: r.try_get("ended_ms")?,
    })
}

/// Counts of parts by state; `cancelled` splits into those never started (`not_started`) and
/// those the host cancelled.
pub fn summary(hosts: &[HostPart]) -> BTreeMap<&'static str, u64> {
    let mut m: BTreeMap<&'static str, u64> = [
        "queued",
        "sent",
        "running",
        "succeeded",
        "failed",
        "refused",
        "cancelled",
        "not_started",
        "timed_out",
        "rolled_back",
        "lost",
        "offline",
    ]
    .into_iter()
    .map(|k| (k, 0))
    .collect();
    for h in hosts {
        let key = if h.state == "cancelled"
            && h.note
                .as_deref()
                .is_some_and(|n| n.starts_with("not_started"))
        {
            "not_started"
        } else {
            m.keys().copied().find(|k| *k == h.state).unwrap_or("lost")
        };
        *m.entry(key).or_default() += 1;
    }
    m.insert("total", hosts.len() as u64);
    m
}

impl Db {
    /// Dispatches, newest first, before row `before` when given, only those that included
    /// machine `machine` (its `muid_…`) when given.
    pub async fn dispatches(
        &self,
        before: Option<i64>,
        machine: Option<&str>,
        limit: i64,
    ) -> Result<Vec<(i64, DispatchInfo)>> {
        let sql = match machine {
            None => concat!(
                dispatch_cols!(),
                " WHERE id < $1 AND $3 = '' ORDER BY id DESC LIMIT $2"
            ),
            // On dispatch_hosts_by_machine_id: a machine's few rows, not every dispatch's.
            Some(_) => concat!(
                dispatch_cols!(),
                " WHERE id < $1 AND id IN (SELECT h.dispatch_row FROM dispatch_hosts h
                 WHERE h.machine_id = $3) ORDER BY id DESC LIMIT $2"
            ),
        };
        let rows = sqlx::query(sql)
            .bind(before.unwrap_or(i64::MAX))
            .bind(limit)
            .bind(machine.unwrap_or(""))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, info_of(r)?)))
            .collect()
    }

    /// One dispatch: its row id and what operators see.
    pub async fn dispatch(&self, dispatch_id: &str) -> Result<(i64, DispatchInfo)> {
        let row = sqlx::query(concat!(dispatch_cols!(), " WHERE dispatch_id = $1"))
            .bind(dispatch_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no dispatch `{dispatch_id}`")))?;
        Ok((row.try_get("id")?, info_of(&row)?))
    }

    /// Every host's part of a dispatch, in fan-out order.
    pub async fn dispatch_parts(&self, dispatch_row: i64) -> Result<Vec<HostPart>> {
        let rows = sqlx::query(
            "SELECT machine_id, hostname, state, job_id, exit_code, result, refusal_kind,
             refusal_message, note, progress, last_seq, end_seq, output_truncated,
             cancel_requested, sent_ms, updated_ms, ended_ms
             FROM dispatch_hosts WHERE dispatch_row = $1 ORDER BY position",
        )
        .bind(dispatch_row)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let truncated: i64 = r.try_get("output_truncated")?;
                let cancel: i64 = r.try_get("cancel_requested")?;
                Ok(HostPart {
                    machine_id: r.try_get("machine_id")?,
                    hostname: r.try_get("hostname")?,
                    state: r.try_get("state")?,
                    job_id: r.try_get("job_id")?,
                    exit_code: r.try_get("exit_code")?,
                    result: json(r.try_get("result")?),
                    refusal_kind: r.try_get("refusal_kind")?,
                    refusal_message: r.try_get("refusal_message")?,
                    note: r.try_get("note")?,
                    progress: json(r.try_get("progress")?),
                    last_seq: r.try_get("last_seq")?,
                    end_seq: r.try_get("end_seq")?,
                    output_truncated: truncated != 0,
                    cancel_requested: cancel != 0,
                    sent_ms: r.try_get("sent_ms")?,
                    updated_ms: r.try_get("updated_ms")?,
                    ended_ms: r.try_get("ended_ms")?,
                })
            })
            .collect()
    }

    /// A host's output chunks after `after`, in order, at most `limit`. `NotFound` when the
    /// machine has no part in the dispatch.
    pub async fn host_output(
        &self,
        dispatch_row: i64,
        machine_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Chunk>> {
        let host = sqlx::query(
            "SELECT machine_row, hostname FROM dispatch_hosts
             WHERE dispatch_row = $1 AND machine_id = $2",
        )
        .bind(dispatch_row)
        .bind(machine_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("`{machine_id}` is not in this dispatch")))?;
        let machine_row: i64 = host.try_get("machine_row")?;
        let hostname: String = host.try_get("hostname")?;
        let rows = sqlx::query(
            "SELECT id, seq, \"offset\", data FROM dispatch_output
             WHERE dispatch_row = $1 AND machine_row = $2 AND seq > $3 ORDER BY seq LIMIT $4",
        )
        .bind(dispatch_row)
        .bind(machine_row)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Chunk {
                    id: r.try_get("id")?,
                    machine_id: machine_id.to_owned(),
                    hostname: hostname.clone(),
                    seq: r.try_get("seq")?,
                    offset: r.try_get("offset")?,
                    data: r.try_get("data")?,
                })
            })
            .collect()
    }

    /// Output chunks of a dispatch stored after cursor `after_id`, in storing order (for the
    /// live stream; each host's chunks come in seq order as long as the host sent them so).
    pub async fn output_since(
        &self,
        dispatch_row: i64,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<Chunk>> {
        let rows = sqlx::query(
            "SELECT o.id, o.seq, o.\"offset\", o.data, h.machine_id, h.hostname
             FROM dispatch_output o JOIN dispatch_hosts h
               ON h.dispatch_row = o.dispatch_row AND h.machine_row = o.machine_row
             WHERE o.dispatch_row = $1 AND o.id > $2 ORDER BY o.id LIMIT $3",
        )
        .bind(dispatch_row)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Chunk {
                    id: r.try_get("id")?,
                    machine_id: r.try_get("machine_id")?,
                    hostname: r.try_get("hostname")?,
                    seq: r.try_get("seq")?,
                    offset: r.try_get("offset")?,
                    data: r.try_get("data")?,
                })
            })
            .collect()
    }
}
