//! Enrolled machines: `/v1/machines` (the keyset-paged list with its filters and their link
//! state, show, approve, remove, bulk remove, ban, unban, quarantine, clear) and their keys
//! (metadata only, revocation). Viewers read; admins change. Every
//! change is recorded in the audit trail; a change that takes a machine's link away closes it
//! (through the revocation the store records).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::operator::{audit, require};
use super::{ApiError, AppState, Shared, body};
use crate::auth::{Operator, Role};
use crate::store::{Cursor, MAX_BULK, MachineQuery, Removal};

pub(super) fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list_machines))
        .routes(routes!(bulk_remove))
        .routes(routes!(get_machine, remove_machine))
        .routes(routes!(approve))
        .routes(routes!(ban))
        .routes(routes!(unban))
        .routes(routes!(quarantine))
        .routes(routes!(clear))
        .routes(routes!(machine_keys))
        .routes(routes!(revoke_machine_key))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct MachineFilter {
    /// A site code.
    #[serde(default)]
    site: Option<String>,
    /// active, pending, quarantined or removed.
    #[serde(default)]
    state: Option<String>,
    /// Part of a machine id or hostname.
    #[serde(default)]
    text: Option<String>,
    /// Only machines with (true) or without (false) a live link.
    #[serde(default)]
    connected: Option<bool>,
    /// Only machines last seen after this time (ms since the epoch).
    #[serde(default)]
    seen_after: Option<i64>,
    /// Only machines last seen before this time (ms since the epoch).
    #[serde(default)]
    seen_before: Option<i64>,
    /// 1 to 1000 (default 100).
    #[serde(default)]
    limit: Option<i64>,
    /// Where the page starts: the previous page's `next`.
    #[serde(default)]
    after: Option<String>,
}

#[utoipa::path(get, path = "/v1/machines", tag = "machines", description = "Needs a login (wop_) or API token (wat_), viewer role or above. Ordered by hostname then machine id, keyset-paged: pass `next` as `after` for the next page (null on the last).", params(MachineFilter), responses((status = 200, description = "{\"machines\": [...], \"next\": cursor or null}"), (status = 400, description = "A bad filter or cursor")))]
async fn list_machines(
    State(s): Shared,
    op: Operator,
    Query(f): Query<MachineFilter>,
) -> Result<Response, ApiError> {
    require(&op, Role::Viewer)?;
    let after = match f.after.as_deref() {
        None | Some("") => None,
        Some(c) => Some(Cursor::decode(c)?),
    };
    let query = MachineQuery {
        site: f.site.filter(|v| !v.is_empty()),
        state: f.state.filter(|v| !v.is_empty()),
        text: f.text.filter(|v| !v.is_empty()),
        connected: f.connected,
        seen_after: f.seen_after,
        seen_before: f.seen_before,
        after,
        limit: f.limit.unwrap_or(100).clamp(1, 1000),
    };
    let (machines, next) = s.db.machines(&query).await?;
    Ok(Json(json!({"machines": machines, "next": next.map(|c| c.encode())})).into_response())
}

#[utoipa::path(get, path = "/v1/machines/{id}", tag = "machines", description = "Needs a login (wop_) or API token (wat_) as `Authorization: Bearer`.", params(("id" = String, Path, description = "The machine id (muid_…)")), responses((status = 200, description = "The machine (viewer)"), (status = 404, description = "No such machine")))]
async fn get_machine(
    State(s): Shared,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&op, Role::Viewer)?;
    Ok(Json(s.db.machine(&id).await?).into_response())
}

#[utoipa::path(post, path = "/v1/machines/{id}/approve", tag = "machines", description = "Needs a login (wop_) or API token (wat_) as `Authorization: Bearer`.", params(("id" = String, Path, description = "The machine id (muid_…)")), responses((status = 200, description = "Approved: the clone's next enrollment gets a key"), (status = 409, description = "Not pending")))]
async fn approve(
    State(s): Shared,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&op, Role::Admin)?;
    s.db.approve(&id).await?;
    audit(&s, &op, "machine.approve", &format!("machine {id}")).await;
    Ok(Json(s.db.machine(&id).await?).into_response())
}

#[utoipa::path(delete, path = "/v1/machines/{id}", tag = "machines", description = "Needs a login (wop_) or API token (wat_) as `Authorization: Bearer`.", params(("id" = String, Path, description = "The machine id (muid_…)")), responses((status = 200, description = "removed or already_removed: its keys stop working; it may enroll again")))]
async fn remove_machine(
    State(s): Shared,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&op, Role::Admin)?;
    let removed = s.db.remove(&id).await?;
    audit(&s, &op, "machine.remove", &format!("machine {id}")).await;
    Ok(Json(
        json!({"machine_id": id, "result": if removed { "removed" } else { "already_removed" }}),
    )
    .into_response())
}

#[utoipa::path(post, path = "/v1/machines/{id}/ban", tag = "machines", description = "Needs a login (wop_) or API token (wat_) as `Authorization: Bearer`.", params(("id" = String, Path, description = "The machine id (muid_…)")), responses((status = 204, description = "Banned: it may not enroll; its keys stop working")))]
async fn ban(State(s): Shared, op: Operator, Path(id): Path<String>) -> Result<Response, ApiError> {
    require(&op, Role::Admin)?;
    if let Err(e) = id.parse::<warden_fleet_proto::MachineId>() {
        return Err(ApiError::bad_request(e.to_string()));
    }
    s.db.ban(&id).await?;
    audit(&s, &op, "machine.ban", &format!("machine {id}")).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(post, path = "/v1/machines/{id}/unban", tag = "machines", description = "Needs a login (wop_) or API token (wat_) as `Authorization: Bearer`.", params(("id" = String, Path, description = "The machine id (muid_…)")), responses((status = 204, description = "Unbanned")))]
async fn unban(
    State(s): Shared,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&op, Role::Admin)?;
    s.db.unban(&id).await?;
    audit(&s, &op, "machine.unban", &format!("machine {id}")).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(post, path = "/v1/machines/{id}/quarantine", tag = "machines", description = "Needs a login (wop_) or API token (wat_) as `Authorization: Bearer`.", params(("id" = String, Path, description = "The machine id (muid_…)")), responses((status = 200, description = "Quarantined (admin): its live link closes, it gets no link and no dispatch until cleared"), (status = 404, description = "No such machine")))]
async fn quarantine(
    State(s): Shared,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&op, Role::Admin)?;
    let done = s.db.quarantine(&id).await?;
    audit(&s, &op, "machine.quarantine", &format!("machine {id}")).await;
    Ok(
        Json(json!({"machine_id": id, "result": if done { "quarantined" } else { "unchanged" }}))
            .into_response(),
    )
}

#[utoipa::path(post, path = "/v1/machines/{id}/clear", tag = "machines", description = "Needs a login (wop_) or API token (wat_) as `Authorization: Bearer`.", params(("id" = String, Path, description = "The machine id (muid_…)")), responses((status = 204, description = "Cleared (admin): it may link again with its current key"), (status = 404, description = "No such machine"), (status = 409, description = "It is not quarantined")))]
async fn clear(
    State(s): Shared,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&op, Role::Admin)?;
    s.db.clear_quarantine(&id).await?;
    audit(&s, &op, "machine.clear", &format!("machine {id}")).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Bulk {
    ids: Vec<String>,
}

#[utoipa::path(post, path = "/v1/machines/bulk-remove", tag = "machines", description = "Needs a login (wop_) or API token (wat_) as `Authorization: Bearer`.", request_body = Bulk, responses((status = 200, description = "One result per id: removed, already_removed, not_found, invalid or failed")))]
async fn bulk_remove(
    State(s): Shared,
    op: Operator,
    b: Result<Json<Bulk>, JsonRejection>,
) -> Result<Response, ApiError> {
    require(&op, Role::Admin)?;
    let b = body(b)?;
    if b.ids.is_empty() || b.ids.len() > MAX_BULK {
        return Err(ApiError::bad_request(format!(
            "ids must hold 1 to {MAX_BULK} machine ids"
        )));
    }
    let results = s.db.bulk_remove(&b.ids).await;
    for (id, r) in &results {
        if *r == Removal::Removed {
            audit(&s, &op, "machine.remove", &format!("machine {id}")).await;
        }
    }
    let results: Vec<_> = results
        .into_iter()
        .map(|(id, result)| json!({"machine_id": id, "result": result}))
        .collect();
    Ok(Json(json!({"results": results})).into_response())
}

#[utoipa::path(get, path = "/v1/machines/{id}/keys", tag = "machines", description = "Needs a login (wop_) or API token (wat_) as `Authorization: Bearer`.", params(("id" = String, Path, description = "The machine id (muid_…)")), responses((status = 200, description = "The machine's keys, metadata only (viewer)")))]
async fn machine_keys(
    State(s): Shared,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&op, Role::Viewer)?;
    Ok(Json(json!({"keys": s.db.machine_keys(&id).await?})).into_response())
}

#[utoipa::path(delete, path = "/v1/machines/{id}/keys/{key_id}", tag = "machines", description = "Needs a login (wop_) or API token (wat_) as `Authorization: Bearer`.", params(("id" = String, Path, description = "The machine id (muid_…)"), ("key_id" = i64, Path, description = "The key's id")), responses((status = 204, description = "Revoked")))]
async fn revoke_machine_key(
    State(s): Shared,
    op: Operator,
    Path((id, key_id)): Path<(String, i64)>,
) -> Result<Response, ApiError> {
    require(&op, Role::Admin)?;
    s.db.revoke_machine_key(&id, key_id).await?;
    audit(
        &s,
        &op,
        "machine.key_revoke",
        &format!("machine {id} key {key_id}"),
    )
    .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}
