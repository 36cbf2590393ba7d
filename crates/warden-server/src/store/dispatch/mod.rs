//! Remote dispatch's rows: the actions each host offers the fleet, dispatches and their host
//! parts (created in one transaction, driven by the fan-out engine), what agents report about
//! a part (in [`agent`]), and the operator's reads (in [`read`]).
//!
//! Parameters are stored with secret values already replaced by the caller; nothing here sees
//! a secret value. Every state change of a part is guarded by the state it comes from, so a
//! message sent again (after a reconnect) changes nothing twice.

pub mod agent;
pub mod read;

use serde::Serialize;
use sqlx::Row;
use warden_fleet_proto::link::RemoteAction;

use super::{Db, Result, StoreError, now_ms};

/// The states of a host's part in which it has ended.
pub const ENDED: &[&str] = &[
    "succeeded",
    "failed",
    "refused",
    "cancelled",
    "timed_out",
    "rolled_back",
    "lost",
];
/// The ended states that count as failures for `max_failures` and canaries.
pub const FAILURES: &[&str] = &["failed", "refused", "timed_out", "rolled_back", "lost"];

/// A machine a target may name, with what decides whether it is dispatched to.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub machine_row: i64,
    pub machine_id: String,
    pub hostname: String,
    pub site_code: String,
    pub labels: serde_json::Value,
    pub state: String,
    pub banned: bool,
}

/// A dispatch to record.
#[derive(Debug, Clone)]
pub struct NewDispatch {
    pub dispatch_id: String,
    pub operator: String,
    pub action: String,
    /// Secret values already redacted.
    pub params: serde_json::Map<String, serde_json::Value>,
    pub has_secrets: bool,
    pub target: serde_json::Value,
    pub excluded: serde_json::Value,
    pub batch: i64,
    pub max_failures: Option<i64>,
    pub canary: i64,
}

/// One target host of a new dispatch; `refused` when the server refuses it early (the host
/// does not offer the action): (kind, message).
#[derive(Debug, Clone)]
pub struct NewHost {
    pub machine_row: i64,
    pub machine_id: String,
    pub hostname: String,
    pub refused: Option<(String, String)>,
}

/// An open dispatch, as the engine drives it.
#[derive(Debug, Clone)]
pub struct OpenDispatch {
    pub id: i64,
    pub dispatch_id: String,
    pub operator: String,
    pub action: String,
    pub params: serde_json::Map<String, serde_json::Value>,
    pub has_secrets: bool,
    pub batch: i64,
    pub max_failures: Option<i64>,
    pub canary: i64,
    pub cancel_requested: bool,
}

/// A host's part, as the engine sees it.
#[derive(Debug, Clone)]
pub struct Part {
    pub id: i64,
    pub machine_row: i64,
    pub machine_id: String,
    pub position: i64,
    pub state: String,
    pub cancel_requested: bool,
    pub updated_ms: i64,
}

/// A part the server owes a machine a message for, at its next link: a dispatch not yet
/// answered, or a cancel.
#[derive(Debug, Clone)]
pub struct Owed {
    pub dispatch: OpenDispatch,
    pub state: String,
    pub cancel_requested: bool,
}

/// What a dispatch's cancel did.
#[derive(Debug, Clone, Serialize)]
pub struct Cancelled {
    /// Parts never started, now `cancelled`.
    pub not_started: u64,
    /// Machines whose running part is asked to cancel.
    pub asked: Vec<i64>,
}

fn params_of(text: &str) -> serde_json::Map<String, serde_json::Value> {
    serde_json::from_str(text).unwrap_or_default()
}

fn open_of(r: &sqlx::any::AnyRow) -> Result<OpenDispatch> {
    let params: String = r.try_get("params")?;
    let has_secrets: i64 = r.try_get("has_secrets")?;
    let cancel: i64 = r.try_get("cancel_requested")?;
    Ok(OpenDispatch {
        id: r.try_get("id")?,
        dispatch_id: r.try_get("dispatch_id")?,
        operator: r.try_get("operator")?,
        action: r.try_get("action")?,
        params: params_of(&params),
        has_secrets: has_secrets != 0,
        batch: r.try_get("batch")?,
        max_failures: r.try_get("max_failures")?,
        canary: r.try_get("canary")?,
        cancel_requested: cancel != 0,
    })
}

/// The columns of [`OpenDispatch`], for `concat!`.
macro_rules! open_cols {
    () => {
        "d.id, d.dispatch_id, d.operator, d.action, d.params, d.has_secrets, d.batch,
         d.max_failures, d.canary, d.cancel_requested"
    };
}

impl Db {
    /// Replaces the actions a machine offers the fleet.
    pub async fn set_machine_actions(
        &self,
        machine_row: i64,
        actions: &[RemoteAction],
    ) -> Result<()> {
        let text = serde_json::to_string(actions).map_err(anyhow::Error::from)?;
        sqlx::query(
            "INSERT INTO machine_actions (machine_row, actions, updated_ms) VALUES ($1, $2, $3)
             ON CONFLICT (machine_row) DO UPDATE SET actions = $2, updated_ms = $3",
        )
        .bind(machine_row)
        .bind(text)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// What a machine offers the fleet (`None`: it never said), and when it said so.
    pub async fn machine_actions(
        &self,
        machine_id: &str,
    ) -> Result<(Option<Vec<RemoteAction>>, Option<i64>)> {
        let row = sqlx::query(
            "SELECT m.id, a.actions, a.updated_ms FROM machines m
             LEFT JOIN machine_actions a ON a.machine_row = m.id WHERE m.machine_id = $1",
        )
        .bind(machine_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no machine `{machine_id}`")))?;
        let actions: Option<String> = row.try_get("actions")?;
        let at: Option<i64> = row.try_get("updated_ms")?;
        Ok((actions.and_then(|a| serde_json::from_str(&a).ok()), at))
    }

    /// The actions every machine that reported some offers, by machine row.
    pub async fn all_machine_actions(
        &self,
    ) -> Result<std::collections::HashMap<i64, Vec<RemoteAction>>> {
        let rows = sqlx::query("SELECT machine_row, actions FROM machine_actions")
            .fetch_all(&self.pool)
            .await?;
        let mut out = std::collections::HashMap::new();
        for r in &rows {
            let text: String = r.try_get("actions")?;
            if let Ok(a) = serde_json::from_str(&text) {
                out.insert(r.try_get("machine_row")?, a);
            }
        }
        Ok(out)
    }

    /// Every machine (of `site` when given), for a target to pick from.
    pub async fn candidates(&self, site: Option<&str>) -> Result<Vec<Candidate>> {
        let rows = sqlx::query(
            "SELECT m.id, m.machine_id, m.hostname, s.site_code, m.labels, m.state,
             (SELECT COUNT(*) FROM bans b WHERE b.machine_id = m.machine_id) AS banned
             FROM machines m JOIN sites s ON s.id = m.site_id
             WHERE ($1 = '' OR s.site_code = $1) ORDER BY m.machine_id",
        )
        .bind(site.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let labels: String = r.try_get("labels")?;
                let banned: i64 = r.try_get("banned")?;
                Ok(Candidate {
                    machine_row: r.try_get("id")?,
                    machine_id: r.try_get("machine_id")?,
                    hostname: r.try_get("hostname")?,
                    site_code: r.try_get("site_code")?,
                    labels: serde_json::from_str(&labels).unwrap_or(serde_json::Value::Null),
                    state: r.try_get("state")?,
                    banned: banned > 0,
                })
            })
            .collect()
    }

    /// Records a dispatch and one part per host, in one transaction; its row id.
    pub async fn create_dispatch(&self, d: &NewDispatch, hosts: &[NewHost]) -> Result<i64> {
        let now = now_ms();
        let json = |v: &serde_json::Value| v.to_string();
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "INSERT INTO dispatches (dispatch_id, operator, action, params, has_secrets, target,
             excluded, batch, max_failures, canary, state, created_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'running', $11) RETURNING id",
        )
        .bind(&d.dispatch_id)
        .bind(&d.operator)
        .bind(&d.action)
        .bind(serde_json::Value::Object(d.params.clone()).to_string())
        .bind(i64::from(d.has_secrets))
        .bind(json(&d.target))
        .bind(json(&d.excluded))
        .bind(d.batch)
        .bind(d.max_failures)
        .bind(d.canary)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let id: i64 = row.try_get("id")?;
        for (position, h) in hosts.iter().enumerate() {
            let (state, kind, message, ended) = match &h.refused {
                Some((k, m)) => ("refused", Some(k.as_str()), Some(m.as_str()), Some(now)),
                None => ("queued", None, None, None),
            };
            sqlx::query(
                "INSERT INTO dispatch_hosts (dispatch_row, machine_row, machine_id, hostname,
                 position, state, refusal_kind, refusal_message, updated_ms, ended_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(id)
            .bind(h.machine_row)
            .bind(&h.machine_id)
            .bind(&h.hostname)
            .bind(i64::try_from(position).unwrap_or(i64::MAX))
            .bind(state)
            .bind(kind)
            .bind(message)
            .bind(now)
            .bind(ended)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(id)
    }

    /// Dispatches still running, oldest first.
    pub async fn open_dispatches(&self) -> Result<Vec<OpenDispatch>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            open_cols!(),
            " FROM dispatches d WHERE d.state = 'running' ORDER BY d.id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(open_of).collect()
    }

    /// A dispatch's parts, in fan-out order.
    pub async fn parts(&self, dispatch_row: i64) -> Result<Vec<Part>> {
        let rows = sqlx::query(
            "SELECT id, machine_row, machine_id, position, state, cancel_requested, updated_ms
             FROM dispatch_hosts WHERE dispatch_row = $1 ORDER BY position",
        )
        .bind(dispatch_row)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let cancel: i64 = r.try_get("cancel_requested")?;
                Ok(Part {
                    id: r.try_get("id")?,
                    machine_row: r.try_get("machine_row")?,
                    machine_id: r.try_get("machine_id")?,
                    position: r.try_get("position")?,
                    state: r.try_get("state")?,
                    cancel_requested: cancel != 0,
                    updated_ms: r.try_get("updated_ms")?,
                })
            })
            .collect()
    }

    /// Parts whose turn came, in one transaction: `sent` ones (`queued`/`offline` → `sent`) and
    /// `offline` ones (`queued` → `offline`, their machine has no link). Answers the sent
    /// parts that really were waiting (another process may have sent one first).
    pub async fn parts_started(&self, sent: &[i64], offline: &[i64]) -> Result<Vec<i64>> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let mut done = Vec::with_capacity(sent.len());
        for &part in sent {
            let r = sqlx::query(
                "UPDATE dispatch_hosts SET state = 'sent', sent_ms = $2, updated_ms = $2
                 WHERE id = $1 AND state IN ('queued', 'offline')",
            )
            .bind(part)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if r.rows_affected() > 0 {
                done.push(part);
            }
        }
        for &part in offline {
            sqlx::query(
                "UPDATE dispatch_hosts SET state = 'offline', updated_ms = $2
                 WHERE id = $1 AND state = 'queued'",
            )
            .bind(part)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(done)
    }

    /// Stops starting hosts: every part not started (`queued`, `offline`) ends `cancelled` with
    /// `note`; the dispatch records why (`stopped`).
    pub async fn stop_dispatch(&self, dispatch_row: i64, why: &str) -> Result<u64> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE dispatches SET stopped = $2 WHERE id = $1 AND stopped IS NULL")
            .bind(dispatch_row)
            .bind(why)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query(
            "UPDATE dispatch_hosts SET state = 'cancelled', note = $2, updated_ms = $3,
             ended_ms = $3 WHERE dispatch_row = $1 AND state IN ('queued', 'offline')",
        )
        .bind(dispatch_row)
        .bind(format!("not_started: {why}"))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// Notes that a part's unanswered message is being sent again (so it is not resent at
    /// every pass). `false` if the part moved on meanwhile.
    pub async fn part_touched(&self, part: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE dispatch_hosts SET updated_ms = $2
             WHERE id = $1 AND (state = 'sent' OR (state = 'running' AND cancel_requested = 1))",
        )
        .bind(part)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Ends a dispatch (`done` or `cancelled`).
    pub async fn finish_dispatch(&self, dispatch_row: i64, state: &str) -> Result<()> {
        sqlx::query(
            "UPDATE dispatches SET state = $2, ended_ms = $3 WHERE id = $1 AND state = 'running'",
        )
        .bind(dispatch_row)
        .bind(state)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Cancels a running dispatch: parts not started end `cancelled` now, started ones are
    /// marked for a Cancel to their host. `NotFound` for no such dispatch, `Conflict` when it
    /// already ended.
    pub async fn request_cancel(&self, dispatch_id: &str) -> Result<(i64, Cancelled)> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE dispatches SET cancel_requested = 1 WHERE dispatch_id = $1 AND state = 'running'",
        )
        .bind(dispatch_id)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query("SELECT id, state FROM dispatches WHERE dispatch_id = $1")
            .bind(dispatch_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no dispatch `{dispatch_id}`")))?;
        let id: i64 = row.try_get("id")?;
        if changed.rows_affected() == 0 {
            let state: String = row.try_get("state")?;
            return Err(StoreError::Conflict(format!(
                "dispatch `{dispatch_id}` has ended ({state})"
            )));
        }
        let not_started = sqlx::query(
            "UPDATE dispatch_hosts SET state = 'cancelled', note = 'not_started: cancelled',
             updated_ms = $2, ended_ms = $2 WHERE dispatch_row = $1 AND state IN ('queued', 'offline')",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(
            "UPDATE dispatch_hosts SET cancel_requested = 1, updated_ms = $2
             WHERE dispatch_row = $1 AND state IN ('sent', 'running')",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let rows = sqlx::query(
            "SELECT machine_row FROM dispatch_hosts WHERE dispatch_row = $1 AND cancel_requested = 1
             AND state IN ('sent', 'running')",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let asked = rows
            .iter()
            .map(|r| r.try_get("machine_row"))
            .collect::<std::result::Result<_, _>>()?;
        Ok((id, Cancelled { not_started, asked }))
    }

    /// What the server owes `machine_row` on its (new) link: parts of running dispatches sent
    /// and not answered (the Dispatch again), and started parts asked to cancel (the Cancel).
    pub async fn owed(&self, machine_row: i64) -> Result<Vec<Owed>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            open_cols!(),
            ", h.state AS part_state, h.cancel_requested AS part_cancel
             FROM dispatch_hosts h JOIN dispatches d ON d.id = h.dispatch_row
             WHERE h.machine_row = $1 AND d.state = 'running'
             AND (h.state = 'sent' OR (h.cancel_requested = 1 AND h.state = 'running'))
             ORDER BY d.id"
        ))
        .bind(machine_row)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let cancel: i64 = r.try_get("part_cancel")?;
                Ok(Owed {
                    dispatch: open_of(r)?,
                    state: r.try_get("part_state")?,
                    cancel_requested: cancel != 0,
                })
            })
            .collect()
    }
}
