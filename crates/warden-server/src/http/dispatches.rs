//! Remote dispatch for operators: `POST /v1/dispatches` (operator role) and its cancel, the
//! reads (viewer role: the list, one dispatch with every host's part and the summary, a host's
//! output chunks in order), the live stream `GET /v1/dispatches/{id}/events` (server-sent
//! events: host states and output chunks, each host's in order), and `GET
//! /v1/machines/{id}/actions`. A machine key is never accepted here (the [`Operator`]
//! extractor takes operator credentials only). Every dispatch, cancel and early refusal is in
//! the audit trail; secret parameter values are never stored, answered or logged.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::operator::{audit, require};
use super::{ApiError, AppState, Shared, body};
use crate::auth::{Operator, Role};
use crate::dispatch::target::{self, Request};
use crate::store::dispatch::read::{HostPart, summary};

pub(super) fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(show))
        .routes(routes!(output))
        .routes(routes!(cancel))
        .routes(routes!(events))
        .routes(routes!(machine_actions))
}

/// A dispatch with every host's part and the counts.
async fn view(s: &AppState, dispatch_id: &str) -> Result<Value, ApiError> {
    let (row, info) = s.db.dispatch(dispatch_id).await?;
    let hosts = s.db.dispatch_parts(row).await?;
    Ok(json!({"dispatch": info, "summary": summary(&hosts), "hosts": hosts}))
}

#[utoipa::path(post, path = "/v1/dispatches", tag = "dispatch", description = "Needs an operator's login (wop_) or API token (wat_) as `Authorization: Bearer`. target is {\"machines\": [ids]}, {\"site\": code} or {\"labels\": {key: value}}; batch defaults to 100; confirm: true is required above 100 targets.", request_body = Request, responses((status = 201, description = "The dispatch, its hosts (refused early ones `refused`/`not_offered`), the machines left out (`excluded`)"), (status = 400, description = "Bad request, no machine to dispatch to, or confirmation required"), (status = 403, description = "Not an operator")))]
async fn create(
    State(s): Shared,
    op: Operator,
    b: Result<Json<Request>, JsonRejection>,
) -> Result<Response, ApiError> {
    require(&op, Role::Operator)?;
    let r = body(b)?;
    let action = r.action.clone();
    let mut spec = serde_json::to_string(&r.target).unwrap_or_default();
    if spec.len() > 512 {
        let cut = (0..=512)
            .rev()
            .find(|i| spec.is_char_boundary(*i))
            .unwrap_or(0);
        spec.truncate(cut);
        spec.push('…');
    }
    let created = target::create(&s.dispatch, &s.db, &op.name, r).await?;
    let target = format!("dispatch {}", created.dispatch_id);
    if let Err(e) =
        s.db.event(
            "dispatch.create",
            &format!("operator {}", op.name),
            &target,
            &op.source,
            &format!(
                "action {action:?} target {spec} hosts {} excluded {} refused {}",
                created.hosts,
                created.excluded.len(),
                created.refused.len()
            ),
        )
        .await
    {
        tracing::error!(error = %e, "cannot record an event");
    }
    for (machine_id, _) in &created.refused {
        if let Err(e) =
            s.db.event(
                "dispatch.refused",
                &format!("machine {machine_id}"),
                &target,
                "server",
                &format!("not_offered: the host does not offer {action:?} to the fleet"),
            )
            .await
        {
            tracing::error!(error = %e, "cannot record an event");
        }
    }
    let v = view(&s, &created.dispatch_id).await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct Page {
    /// Dispatches older than this cursor (`next_before` of the previous page).
    #[serde(default)]
    before: Option<i64>,
    /// Only the dispatches that included this machine (muid_…).
    #[serde(default)]
    machine: Option<String>,
    #[serde(default)]
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/v1/dispatches", tag = "dispatch", description = "Needs a login (wop_) or API token (wat_), viewer role or above.", params(Page), responses((status = 200, description = "Dispatches, newest first (with machine=muid_…: those that included it), and where the next page starts")))]
async fn list(State(s): Shared, op: Operator, Query(p): Query<Page>) -> Result<Response, ApiError> {
    require(&op, Role::Viewer)?;
    let limit = p.limit.unwrap_or(50).clamp(1, 500);
    let machine = p.machine.as_deref().filter(|m| !m.is_empty());
    let rows = s.db.dispatches(p.before, machine, limit).await?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|(id, _)| *id))
        .flatten();
    let list: Vec<_> = rows.into_iter().map(|(_, d)| d).collect();
    Ok(Json(json!({"dispatches": list, "next_before": next})).into_response())
}

#[utoipa::path(get, path = "/v1/dispatches/{id}", tag = "dispatch", description = "Needs a login (wop_) or API token (wat_), viewer role or above.", params(("id" = String, Path, description = "The dispatch id (dsp_…)")), responses((status = 200, description = "The dispatch, every host's part and the summary counts"), (status = 404, description = "No such dispatch")))]
async fn show(
    State(s): Shared,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&op, Role::Viewer)?;
    Ok(Json(view(&s, &id).await?).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct After {
    /// Chunks after this sequence number (0: from the start).
    #[serde(default)]
    after: Option<i64>,
    #[serde(default)]
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/v1/dispatches/{id}/hosts/{machine_id}/output", tag = "dispatch", description = "Needs a login (wop_) or API token (wat_), viewer role or above.", params(("id" = String, Path, description = "The dispatch id"), ("machine_id" = String, Path, description = "The machine id"), After), responses((status = 200, description = "Output chunks after `after`, in order; `next_after` to read on; `complete` once the job ended and every chunk it made is stored"), (status = 404, description = "No such dispatch, or the machine is not in it")))]
async fn output(
    State(s): Shared,
    op: Operator,
    Path((id, machine_id)): Path<(String, String)>,
    Query(a): Query<After>,
) -> Result<Response, ApiError> {
    require(&op, Role::Viewer)?;
    let (row, _) = s.db.dispatch(&id).await?;
    let after = a.after.unwrap_or(0).max(0);
    let limit = a.limit.unwrap_or(1000).clamp(1, 10_000);
    let chunks = s.db.host_output(row, &machine_id, after, limit).await?;
    let part =
        s.db.dispatch_parts(row)
            .await?
            .into_iter()
            .find(|p| p.machine_id == machine_id);
    let next = chunks.last().map_or(after, |c| c.seq);
    let complete = part
        .as_ref()
        .is_some_and(|p| p.end_seq.is_some_and(|e| p.last_seq >= e) && next >= p.last_seq);
    Ok(Json(json!({
        "machine_id": machine_id,
        "chunks": chunks,
        "next_after": next,
        "state": part.as_ref().map(|p| p.state.clone()),
        "complete": complete,
        "output_truncated": part.is_some_and(|p| p.output_truncated),
    }))
    .into_response())
}

#[utoipa::path(post, path = "/v1/dispatches/{id}/cancel", tag = "dispatch", description = "Needs an operator's login (wop_) or API token (wat_). Hosts not started end `cancelled` (not_started) at once; started ones are sent a Cancel and end as their host reports (wardend's rules: past the commit point only a rollback undoes a job).", params(("id" = String, Path, description = "The dispatch id")), responses((status = 200, description = "The dispatch after the cancel, and how many hosts were not started / asked to cancel"), (status = 404, description = "No such dispatch"), (status = 409, description = "It has ended")))]
async fn cancel(
    State(s): Shared,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&op, Role::Operator)?;
    let c = s.dispatch.cancel(&id).await?;
    audit(&s, &op, "dispatch.cancel", &format!("dispatch {id}")).await;
    let mut v = view(&s, &id).await?;
    v["not_started"] = json!(c.not_started);
    v["asked_to_cancel"] = json!(c.asked.len());
    Ok(Json(v).into_response())
}

#[utoipa::path(get, path = "/v1/machines/{id}/actions", tag = "dispatch", description = "Needs a login (wop_) or API token (wat_), viewer role or above.", params(("id" = String, Path, description = "The machine id (muid_…)")), responses((status = 200, description = "The actions the host offers the fleet as its agent last reported them (null: never reported)"), (status = 404, description = "No such machine")))]
async fn machine_actions(
    State(s): Shared,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&op, Role::Viewer)?;
    let (actions, at) = s.db.machine_actions(&id).await?;
    Ok(Json(json!({"machine_id": id, "actions": actions, "reported_ms": at})).into_response())
}

/// How often the live stream looks for news.
const STREAM_POLL: Duration = Duration::from_millis(100);
/// A comment line this often keeps an idle stream (and its connection) alive.
const KEEPALIVE: Duration = Duration::from_secs(15);

fn sse(event: &str, data: &Value) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

fn host_event(p: &HostPart) -> Value {
    json!({
        "machine_id": p.machine_id, "hostname": p.hostname, "state": p.state,
        "job_id": p.job_id, "exit_code": p.exit_code, "result": p.result,
        "refusal_kind": p.refusal_kind, "refusal_message": p.refusal_message,
        "note": p.note, "progress": p.progress, "last_seq": p.last_seq,
        "output_truncated": p.output_truncated,
    })
}

#[utoipa::path(get, path = "/v1/dispatches/{id}/events", tag = "dispatch", description = "Server-sent events (text/event-stream). Needs a login (wop_) or API token (wat_), viewer role or above. `host`: a host's part (every host once at the start, then each change); `output`: a chunk {machine_id, hostname, seq, offset, data}, each host's in order and once; `end`: the dispatch ended {state, summary}, after every stored chunk.", params(("id" = String, Path, description = "The dispatch id")), responses((status = 200, description = "The stream"), (status = 404, description = "No such dispatch")))]
async fn events(
    State(s): Shared,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&op, Role::Viewer)?;
    let (row, _) = s.db.dispatch(&id).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(16);
    tokio::spawn(stream(s, id, row, tx));
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|text| (Ok::<_, Infallible>(text), rx))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}

/// Feeds one live stream until the dispatch ended and everything was sent, or the reader left.
async fn stream(s: Arc<AppState>, id: String, row: i64, tx: tokio::sync::mpsc::Sender<String>) {
    let mut shown: HashMap<String, Value> = HashMap::new();
    let mut sent_seq: HashMap<String, i64> = HashMap::new();
    let mut quiet_since = Instant::now();
    loop {
        let step = async {
            // The state first: when it says ended, the parts and output read after it are final.
            let (_, info) = s.db.dispatch(&id).await?;
            let parts = s.db.dispatch_parts(row).await?;
            let mut out = Vec::new();
            for p in &parts {
                let e = host_event(p);
                if shown.get(&p.machine_id) != Some(&e) {
                    out.push(sse("host", &e));
                    shown.insert(p.machine_id.clone(), e);
                }
                let done = sent_seq.get(&p.machine_id).copied().unwrap_or(0);
                if p.last_seq > done {
                    let chunks = s.db.host_output(row, &p.machine_id, done, 500).await?;
                    for c in chunks.into_iter().take_while(|c| c.seq <= p.last_seq) {
                        sent_seq.insert(p.machine_id.clone(), c.seq);
                        out.push(sse("output", &json!(c)));
                    }
                }
            }
            let caught_up = parts
                .iter()
                .all(|p| sent_seq.get(&p.machine_id).copied().unwrap_or(0) >= p.last_seq);
            if info.state != "running" && caught_up {
                out.push(sse(
                    "end",
                    &json!({"state": info.state, "stopped": info.stopped, "summary": summary(&parts)}),
                ));
                return Ok::<_, crate::store::StoreError>((out, true));
            }
            Ok((out, false))
        };
        let (out, end) = match step.await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "dispatch stream: cannot read; trying again");
                (Vec::new(), false)
            }
        };
        if out.is_empty() && quiet_since.elapsed() >= KEEPALIVE {
            if tx.send(": keepalive\n\n".to_owned()).await.is_err() {
                return;
            }
            quiet_since = Instant::now();
        }
        for text in out {
            quiet_since = Instant::now();
            if tx.send(text).await.is_err() {
                return;
            }
        }
        if end {
            return;
        }
        tokio::time::sleep(STREAM_POLL).await;
    }
}
