//! The operator endpoints: login and logout, API tokens, sites and their keys, machines, events.
//! Each needs a `wop_` login token or a `wat_` API token with a high enough role; a machine key
//! is never accepted here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::{ApiError, AppState, client_addr};
use crate::auth::{Operator, Role};
use crate::store::{MAX_BULK, StoreError};

type Shared = State<Arc<AppState>>;

fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "log in (POST /v1/login) or present an API token",
    )
}

impl FromRequestParts<Arc<AppState>> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Operator, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(unauthorized)?;
        let mut op = state
            .db
            .authenticate(&state.signing, token)
            .await?
            .ok_or_else(unauthorized)?;
        if let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
            op.source = client_addr(peer.ip(), &parts.headers, &state.trusted_proxies).to_string();
        }
        Ok(op)
    }
}

fn require(op: &Operator, role: Role) -> Result<(), ApiError> {
    if op.role >= role {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this needs role {}; you have {}",
                role.as_str(),
                op.role.as_str()
            ),
        ))
    }
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(t)| t)
        .map_err(|e| ApiError::new(e.status(), "bad_request", e.body_text()))
}

/// The operator routes, each registered with its OpenAPI description, to merge into the API's
/// router.
pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(create_token, list_tokens))
        .routes(routes!(revoke_token))
        .routes(routes!(add_site, list_sites))
        .routes(routes!(site_key))
        .routes(routes!(rotate_key))
        .routes(routes!(key_usage))
        .routes(routes!(list_machines))
        .routes(routes!(bulk_remove))
        .routes(routes!(get_machine, remove_machine))
        .routes(routes!(approve))
        .routes(routes!(ban))
        .routes(routes!(unban))
        .routes(routes!(machine_keys))
        .routes(routes!(revoke_machine_key))
        .routes(routes!(events))
}

/// Records what operator `op` did to `target`, from where.
async fn audit(s: &AppState, op: &Operator, kind: &str, target: &str) {
    event(
        s,
        kind,
        &format!("operator {}", op.name),
        target,
        &op.source,
    )
    .await;
}

async fn event(s: &AppState, kind: &str, actor: &str, target: &str, source: &str) {
    if let Err(e) = s.db.event(kind, actor, target, source, "").await {
        tracing::error!(kind, error = %e, "cannot record an event");
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Login {
    name: String,
    password: String,
}

/// Longest operator name: a longer one is refused before it costs anything.
pub const MAX_NAME: usize = 64;
/// Failed logins for one name, from anywhere, after which each login for it is slowed down.
pub const SLOWDOWN_AFTER: u32 = 10;

/// Same answer for an unknown name and a wrong password, after the same single verification.
/// A name locks out only the addresses that failed it; from everywhere else it is slowed down,
/// never refused.
#[utoipa::path(post, path = "/v1/login", tag = "operators", request_body = Login, responses((status = 200, description = "A login token (wop_), when it ends, and the role"), (status = 400, description = "A name over 64 bytes"), (status = 401, description = "Wrong name or password (one answer for both)"), (status = 429, description = "Too many failed logins from this address, for this name or for any"), (status = 503, description = "Every login verification slot is busy (Retry-After)")))]
async fn login(
    State(s): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    b: Result<Json<Login>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = body(b)?;
    // Before anything is charged or remembered: no operator has such a name.
    if b.name.is_empty() || b.name.len() > MAX_NAME {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("an operator name is 1 to {MAX_NAME} bytes"),
        ));
    }
    let source = client_addr(peer.ip(), &headers, &s.trusted_proxies);
    let now = Instant::now();
    let user_key = format!("login:{}", b.name);
    let anywhere = std::net::IpAddr::from([0, 0, 0, 0]);
    // The name as the caller typed it, escaped: it goes into the audit trail.
    let shown = b.name.escape_debug().to_string();
    let wait = s
        .login_limiter
        .locked(&user_key, source, now)
        .or_else(|| s.login_addr_limiter.locked("login", source, now));
    if let Some(wait) = wait {
        // Recorded once, when the lockout began (below), not for every knock on it.
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many failed logins from this address; try again later",
        )
        .with_retry_after(wait.as_secs()));
    }
    // A name others keep guessing at: every attempt waits first, the right password too, but
    // none is refused for it.
    if s.login_name_failures.failures(&user_key, anywhere, now) >= SLOWDOWN_AFTER {
        tokio::time::sleep(s.login_slowdown).await;
    }
    let found = if b.password.len() <= 1024 {
        s.db.operator_login(&b.name).await?
    } else {
        None
    };
    let ok = s
        .login_verifier
        .verify(&b.password, found.as_ref().map(|(_, h)| h.as_str()))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the server is busy; try again shortly",
            )
            .with_retry_after(1)
        })?;
    let (Some((op, _)), true) = (found, ok) else {
        let now = Instant::now();
        let by_pair = s.login_limiter.fail(&user_key, source, now);
        let by_address = s.login_addr_limiter.fail("login", source, now);
        s.login_name_failures.fail(&user_key, anywhere, now);
        if by_pair.is_some() || by_address.is_some() {
            event(
                &s,
                "login.rate_limited",
                &format!("operator {shown}"),
                "",
                &source.to_string(),
            )
            .await;
        }
        if s.budget.admit("login.failure") {
            event(
                &s,
                "login.failure",
                &format!("operator {shown}"),
                "",
                &source.to_string(),
            )
            .await;
        }
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "wrong name or password",
        ));
    };
    let (token, expires_ms) = s.db.open_session(&s.signing, op.id).await?;
    event(
        &s,
        "login.success",
        &format!("operator {}", op.name),
        "",
        &source.to_string(),
    )
    .await;
    Ok(Json(json!({"token": token, "expires_ms": expires_ms, "role": op.role})).into_response())
}

#[utoipa::path(post, path = "/v1/logout", tag = "operators", description = "Needs a login (wop_) or API token (wat_) as `Authorization: Bearer`.", responses((status = 204, description = "The session is over"), (status = 401, description = "Not logged in")))]
async fn logout(State(s): Shared, op: Operator) -> Result<Response, ApiError> {
    let Some(session) = &op.session else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "an API token is revoked with DELETE /v1/tokens/{id}, not logged out",
        ));
    };
    s.db.close_session(session).await?;
    audit(&s, &op, "logout", "").await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    /// At most the creator's own; theirs when absent.
    #[serde(default)]
    role: Option<String>,
    expires_in_s: i64,
}

#[utoipa::path(post, path = "/v1/tokens", tag = "operators", description = "Needs a login (wop_) or API token (wat_) as `Authorization: Bearer`.", request_body = NewToken, responses((status = 201, description = "The API token (wat_), shown once"), (status = 400, description = "A role above the caller's, or a bad lifetime")))]
async fn create_token(
    State(s): Shared,
    op: Operator,
    b: Result<Json<NewToken>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = body(b)?;
    let role = match &b.role {
        Some(r) => r
            .parse::<Role>()
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e))?,
        None => op.role,
    };
    let (token, info) =
        s.db.create_token(&op, &b.name, role, b.expires_in_s.saturating_mul(1000))
            .await?;
    audit(&s, &op, "token.create", &format!("token {}", info.id)).await;
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": token, "id": info.id, "name": info.name, "role": info.role, "expires_ms": info.expires_ms})),
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/tokens", tag = "operators", description = "Needs a login (wop_) or API token (wat_) as `Authorization: Bearer`.", responses((status = 200, description = "The caller's API tokens (an admin's: everyone's), without the tokens")))]
async fn list_tokens(State(s): Shared, op: Operator) -> Result<Response, ApiError> {
    let whose = (op.role < Role::Admin).then_some(op.id);
    Ok(Json(json!({"tokens": s.db.tokens(whose).await?})).into_response())
}

#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "operators", description = "Needs a login (wop_) or API token (wat_) as `Authorization: Bearer`.", params(("id" = i64, Path, description = "The token's id")), responses((status = 204, description = "Revoked"), (status = 404, description = "No live token of yours with that id")))]
async fn revoke_token(
    State(s): Shared,
    op: Operator,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    let whose = (op.role < Role::Admin).then_some(op.id);
    if !s.db.revoke_token(id, whose).await? {
        return Err(StoreError::NotFound(format!("no live token {id} of yours")).into());
    }
    audit(&s, &op, "token.revoke", &format!("token {id}")).await;
    Ok(StatusCode::NO_CONTENT.into_response())
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct MachineFilter {
    #[serde(default)]
    site: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/v1/machines", tag = "machines", description = "Needs a login (wop_) or API token (wat_) as `Authorization: Bearer`.", params(MachineFilter), responses((status = 200, description = "Machines (operator)")))]
async fn list_machines(
    State(s): Shared,
    op: Operator,
    Query(f): Query<MachineFilter>,
) -> Result<Response, ApiError> {
    require(&op, Role::Operator)?;
    let limit = f.limit.unwrap_or(100).clamp(1, 1000);
    let machines =
        s.db.machines(
            f.site.as_deref(),
            f.state.as_deref(),
            f.text.as_deref(),
            limit,
        )
        .await?;
    Ok(Json(json!({"machines": machines})).into_response())
}

#[utoipa::path(get, path = "/v1/machines/{id}", tag = "machines", description = "Needs a login (wop_) or API token (wat_) as `Authorization: Bearer`.", params(("id" = String, Path, description = "The machine id (muid_…)")), responses((status = 200, description = "The machine (operator)"), (status = 404, description = "No such machine")))]
async fn get_machine(
    State(s): Shared,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&op, Role::Operator)?;
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
        return Err(StoreError::BadRequest(e.to_string()).into());
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
        return Err(
            StoreError::BadRequest(format!("ids must hold 1 to {MAX_BULK} machine ids")).into(),
        );
    }
    let results = s.db.bulk_remove(&b.ids).await;
    for (id, r) in &results {
        if *r == crate::store::Removal::Removed {
            audit(&s, &op, "machine.remove", &format!("machine {id}")).await;
        }
    }
    let results: Vec<_> = results
        .into_iter()
        .map(|(id, result)| json!({"machine_id": id, "result": result}))
        .collect();
    Ok(Json(json!({"results": results})).into_response())
}

#[utoipa::path(get, path = "/v1/machines/{id}/keys", tag = "machines", description = "Needs a login (wop_) or API token (wat_) as `Authorization: Bearer`.", params(("id" = String, Path, description = "The machine id (muid_…)")), responses((status = 200, description = "The machine's keys, metadata only")))]
async fn machine_keys(
    State(s): Shared,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&op, Role::Operator)?;
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
