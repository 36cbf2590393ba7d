//! The agent plane's HTTP endpoints: `GET /v1/agent/whoami`. Only a machine key (`wmk_`) is
//! accepted here, never an operator's token; the key is never logged.

use std::sync::Arc;

use axum::Json;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use axum::extract::State;

use super::{ApiError, AppState, Shared};

pub(super) fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(agent_whoami))
}

/// The machine a `Bearer wmk_…` key belongs to.
#[utoipa::path(
    get,
    path = "/v1/agent/whoami",
    tag = "agent",
    description = "Needs a machine key (wmk_) as `Authorization: Bearer`; nothing else is accepted here.",
    responses(
        (status = 200, description = "The machine the key belongs to"),
        (status = 401, description = "No live machine key"),
    )
)]
async fn agent_whoami(State(state): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    let unauthorized = || ApiError::unauthorized("a live machine key is required");
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(unauthorized)?;
    let machine = state
        .db
        .machine_by_key(key)
        .await?
        .ok_or_else(unauthorized)?;
    Ok(Json(machine).into_response())
}
