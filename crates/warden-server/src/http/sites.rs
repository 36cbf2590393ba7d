//! Sites and their enrollment keys: `/v1/sites`, the active key's fingerprint, rotation (the
//! new key shown once) and which key versions machines enrolled with. The key is never logged.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::operator::{audit, require};
use super::{ApiError, AppState, Shared, body};
use crate::auth::{Operator, Role};

pub(super) fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(add_site, list_sites))
        .routes(routes!(site_key))
        .routes(routes!(rotate_key))
        .routes(routes!(key_usage))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewSite {
    site_code: String,
    display_name: String,
    #[serde(default)]
    company: String,
}

#[utoipa::path(post, path = "/v1/sites", tag = "sites", description = "Needs a login (wop_) or API token (wat_) as `Authorization: Bearer`.", request_body = NewSite, responses((status = 201, description = "The site"), (status = 409, description = "The site code is taken")))]
async fn add_site(
    State(s): Shared,
    op: Operator,
    b: Result<Json<NewSite>, JsonRejection>,
) -> Result<Response, ApiError> {
    require(&op, Role::Admin)?;
    let b = body(b)?;
    let site =
        s.db.add_site(&b.site_code, &b.display_name, &b.company)
            .await?;
    audit(&s, &op, "site.add", &format!("site {}", site.site_code)).await;
    Ok((StatusCode::CREATED, Json(site)).into_response())
}

#[utoipa::path(get, path = "/v1/sites", tag = "sites", description = "Needs a login (wop_) or API token (wat_) as `Authorization: Bearer`.", responses((status = 200, description = "Every site (viewer)")))]
async fn list_sites(State(s): Shared, op: Operator) -> Result<Response, ApiError> {
    require(&op, Role::Viewer)?;
    Ok(Json(json!({"sites": s.db.sites().await?})).into_response())
}

#[utoipa::path(post, path = "/v1/sites/{id}/enrollment-key/rotate", tag = "sites", description = "Needs a login (wop_) or API token (wat_) as `Authorization: Bearer`.", params(("id" = i64, Path, description = "The site's id")), responses((status = 200, description = "The new key (wek_), shown once, with its version and fingerprint; the previous key stops working")))]
async fn rotate_key(
    State(s): Shared,
    op: Operator,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    require(&op, Role::Admin)?;
    let site = s.db.site_by_id(id).await?;
    let key = s.db.rotate_key(&site.site_code).await?;
    if let Err(e) =
        s.db.event(
            "key.rotate",
            &format!("operator {}", op.name),
            &format!("site {}", site.site_code),
            &op.source,
            &key.fingerprint_label,
        )
        .await
    {
        tracing::error!(error = %e, "cannot record a key rotation");
    }
    Ok(Json(key).into_response())
}

#[utoipa::path(get, path = "/v1/sites/{id}/enrollment-key", tag = "sites", description = "Needs a login (wop_) or API token (wat_) as `Authorization: Bearer`.", params(("id" = i64, Path, description = "The site's id")), responses((status = 200, description = "The active key's version and fingerprint, never the key")))]
async fn site_key(
    State(s): Shared,
    op: Operator,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    require(&op, Role::Admin)?;
    let site = s.db.site_by_id(id).await?;
    Ok(Json(s.db.active_key(&site.site_code).await?).into_response())
}

#[utoipa::path(get, path = "/v1/sites/{id}/enrollment-key/usage", tag = "sites", description = "Needs a login (wop_) or API token (wat_) as `Authorization: Bearer`.", params(("id" = i64, Path, description = "The site's id")), responses((status = 200, description = "Machines per key version")))]
async fn key_usage(
    State(s): Shared,
    op: Operator,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    require(&op, Role::Admin)?;
    let site = s.db.site_by_id(id).await?;
    let usage: Vec<_> =
        s.db.key_usage(site.id)
            .await?
            .into_iter()
            .map(|(version, machines)| json!({"version": version, "machines": machines}))
            .collect();
    Ok(Json(json!({"usage": usage})).into_response())
}
