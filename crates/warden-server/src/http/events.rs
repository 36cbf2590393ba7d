//! The audit trail for admins: `GET /v1/events`, newest first, paged by id.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::operator::require;
use super::{ApiError, AppState, Shared};
use crate::auth::{Operator, Role};

pub(super) fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(events))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct EventFilter {
    #[serde(default)]
    kind: Option<String>,
    /// Events older than this id (paging backwards).
    #[serde(default)]
    before: Option<i64>,
    #[serde(default)]
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/v1/events", tag = "events", description = "Needs a login (wop_) or API token (wat_) as `Authorization: Bearer`.", params(EventFilter), responses((status = 200, description = "Audit events, newest first, and where the next page starts")))]
async fn events(
    State(s): Shared,
    op: Operator,
    Query(f): Query<EventFilter>,
) -> Result<Response, ApiError> {
    require(&op, Role::Admin)?;
    let limit = f.limit.unwrap_or(100).clamp(1, 1000);
    let events = s.db.events(f.kind.as_deref(), f.before, limit).await?;
    let next = (events.len() as i64 == limit)
        .then(|| events.last().map(|e| e.id))
        .flatten();
    Ok(Json(json!({"events": events, "next_before": next})).into_response())
}
