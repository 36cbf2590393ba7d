//! A new dispatch: its target resolved once into machines (pending, banned, quarantined and
//! removed machines left out and listed, with unknown ids), a host refused early when its
//! reported actions do not include the action (a host that never reported is still sent it:
//! wardend decides), secret parameters redacted for the records, the confirmation asked above
//! [`CONFIRM_ABOVE`] targets, and the dispatch recorded with one part per host in one
//! transaction.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use warden_fleet_proto::ids::DISPATCH_ID_PREFIX;

use super::Engine;
use crate::store::dispatch::{NewDispatch, NewHost};
use crate::store::{Db, StoreError};

/// Above this many targets, `confirm: true` is required.
pub const CONFIRM_ABOVE: usize = 100;
/// Default hosts in flight at once.
pub const DEFAULT_BATCH: i64 = 100;
/// Largest `batch`.
pub const MAX_BATCH: i64 = 10_000;
/// Longest action name.
pub const MAX_ACTION: usize = 128;
/// How a secret parameter's value is recorded.
pub const REDACTED: &str = "<redacted>";

/// What a dispatch is sent to.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Target {
    /// These machine ids.
    Machines(Vec<String>),
    /// Every machine of this site.
    Site(String),
    /// Every machine whose labels hold each `key: value` (a list label holds it when it
    /// contains the value).
    Labels(BTreeMap<String, String>),
}

/// A dispatch as an operator asks for it.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub target: Target,
    pub action: String,
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub batch: Option<i64>,
    #[serde(default)]
    pub max_failures: Option<i64>,
    #[serde(default)]
    pub canary: Option<i64>,
    #[serde(default)]
    pub confirm: bool,
}

/// A machine the target named that gets nothing, and why (`not_found`, `pending`, `banned`,
/// `quarantined`, `removed`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Excluded {
    pub machine_id: String,
    pub reason: String,
}

/// A recorded dispatch.
#[derive(Debug, Clone)]
pub struct Created {
    pub dispatch_id: String,
    pub hosts: usize,
    pub excluded: Vec<Excluded>,
    /// Hosts refused early (machine id, hostname).
    pub refused: Vec<(String, String)>,
}

fn label_holds(labels: &serde_json::Value, key: &str, value: &str) -> bool {
    match labels.get(key) {
        Some(serde_json::Value::String(s)) => s == value,
        Some(serde_json::Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(value)),
        // A number or boolean label, written as it is in JSON.
        Some(v) => serde_json::from_str::<serde_json::Value>(value).is_ok_and(|p| p == *v),
        None => false,
    }
}

fn bad(m: impl Into<String>) -> StoreError {
    StoreError::BadRequest(m.into())
}

/// Records the dispatch `r` of `operator`; the engine starts it.
pub async fn create(
    engine: &Engine,
    db: &Db,
    operator: &str,
    r: Request,
) -> Result<Created, StoreError> {
    if r.action.is_empty() || r.action.len() > MAX_ACTION {
        return Err(bad(format!("action must be 1 to {MAX_ACTION} bytes")));
    }
    let batch = r.batch.unwrap_or(DEFAULT_BATCH);
    if !(1..=MAX_BATCH).contains(&batch) {
        return Err(bad(format!("batch must be 1 to {MAX_BATCH}")));
    }
    if r.max_failures.is_some_and(|m| m < 0) || r.canary.is_some_and(|c| c < 0) {
        return Err(bad("max_failures and canary must not be negative"));
    }
    let candidates = match &r.target {
        crate::dispatch::target::Target::Site(code) => {
            db.site(code).await?;
            db.candidates(Some(code)).await?
        }
        _ => db.candidates(None).await?,
    };
    let named: Vec<_> = match &r.target {
        Target::Machines(ids) => {
            if ids.is_empty() || ids.len() > 100_000 {
                return Err(bad("target.machines must hold 1 to 100000 machine ids"));
            }
            let mut seen = HashSet::new();
            let by_id: BTreeMap<&str, _> = candidates
                .iter()
                .map(|c| (c.machine_id.as_str(), c))
                .collect();
            let mut out = Vec::new();
            for id in ids {
                if seen.insert(id.as_str()) {
                    out.push((id.clone(), by_id.get(id.as_str()).copied()));
                }
            }
            out
        }
        Target::Site(_) => candidates
            .iter()
            .map(|c| (c.machine_id.clone(), Some(c)))
            .collect(),
        Target::Labels(want) => {
            if want.is_empty() {
                return Err(bad("target.labels must hold at least one label"));
            }
            candidates
                .iter()
                .filter(|c| want.iter().all(|(k, v)| label_holds(&c.labels, k, v)))
                .map(|c| (c.machine_id.clone(), Some(c)))
                .collect()
        }
    };
    let mut excluded = Vec::new();
    let mut chosen = Vec::new();
    for (id, c) in named {
        let reason = match c {
            None => Some("not_found"),
            Some(c) if c.banned => Some("banned"),
            Some(c) if c.state != "active" => Some(match c.state.as_str() {
                "pending" => "pending",
                "quarantined" => "quarantined",
                _ => "removed",
            }),
            Some(c) => {
                chosen.push(c);
                None
            }
        };
        if let Some(reason) = reason {
            excluded.push(Excluded {
                machine_id: id,
                reason: reason.to_owned(),
            });
        }
    }
    if chosen.is_empty() {
        return Err(bad(format!(
            "the target names no machine that can be dispatched to ({} left out)",
            excluded.len()
        )));
    }
    if chosen.len() > CONFIRM_ABOVE && !r.confirm {
        return Err(bad(format!(
            "this dispatch targets {} machines: above {CONFIRM_ABOVE}, send \"confirm\": true",
            chosen.len()
        )));
    }
    let offered = db.all_machine_actions().await?;
    let mut secret = HashSet::new();
    let mut hosts = Vec::with_capacity(chosen.len());
    let mut refused = Vec::new();
    for c in &chosen {
        let action = offered
            .get(&c.machine_row)
            .map(|list| list.iter().find(|a| a.name == r.action));
        let refusal = match action {
            Some(None) => {
                refused.push((c.machine_id.clone(), c.hostname.clone()));
                Some((
                    "not_offered".to_owned(),
                    format!("the host does not offer `{}` to the fleet", r.action),
                ))
            }
            Some(Some(a)) => {
                for (name, info) in &a.params {
                    if info.get("secret").and_then(serde_json::Value::as_bool) == Some(true) {
                        secret.insert(name.clone());
                    }
                }
                None
            }
            None => None,
        };
        hosts.push(NewHost {
            machine_row: c.machine_row,
            machine_id: c.machine_id.clone(),
            hostname: c.hostname.clone(),
            refused: refusal,
        });
    }
    let mut recorded = r.params.clone();
    let mut has_secrets = false;
    for (k, v) in recorded.iter_mut() {
        if secret.contains(k) {
            *v = serde_json::Value::String(REDACTED.to_owned());
            has_secrets = true;
        }
    }
    let dispatch_id = format!("{DISPATCH_ID_PREFIX}{}", crate::keys::random_hex(16));
    let new = NewDispatch {
        dispatch_id: dispatch_id.clone(),
        operator: operator.to_owned(),
        action: r.action.clone(),
        params: recorded,
        has_secrets,
        target: serde_json::to_value(&r.target).map_err(anyhow::Error::from)?,
        excluded: serde_json::to_value(&excluded).map_err(anyhow::Error::from)?,
        batch,
        max_failures: r.max_failures,
        canary: r.canary.unwrap_or(0),
    };
    db.create_dispatch(&new, &hosts).await?;
    engine.created(&dispatch_id, has_secrets.then_some(r.params));
    Ok(Created {
        dispatch_id,
        hosts: hosts.len(),
        excluded,
        refused,
    })
}
