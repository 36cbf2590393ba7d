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
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde_json::json;

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
        state
            .db
            .authenticate(&state.signing, token)
            .await?
            .ok_or_else(unauthorized)
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

/// The operator routes, to merge into the API's router.
pub fn routes() -> axum::Router<Arc<AppState>> {
    axum::Router::new()
        .route("/v1/login", post(login))
        .route("/v1/logout", post(logout))
        .route("/v1/tokens", post(create_token).get(list_tokens))
        .route("/v1/tokens/{id}", delete(revoke_token))
        .route("/v1/sites", post(add_site).get(list_sites))
        .route("/v1/sites/{id}/enrollment-key", get(site_key))
        .route("/v1/sites/{id}/enrollment-key/rotate", post(rotate_key))
        .route("/v1/sites/{id}/enrollment-key/usage", get(key_usage))
        .route("/v1/machines", get(list_machines))
        .route("/v1/machines/bulk-remove", post(bulk_remove))
        .route("/v1/machines/{id}", get(get_machine).delete(remove_machine))
        .route("/v1/machines/{id}/approve", post(approve))
        .route("/v1/machines/{id}/ban", post(ban))
        .route("/v1/machines/{id}/unban", post(unban))
        .route("/v1/machines/{id}/keys", get(machine_keys))
        .route(
            "/v1/machines/{id}/keys/{key_id}",
            delete(revoke_machine_key),
        )
        .route("/v1/events", get(events))
}

async fn event(s: &AppState, kind: &str, actor: &str, target: &str, source: &str) {
    if let Err(e) = s.db.event(kind, actor, target, source, "").await {
        tracing::error!(kind, error = %e, "cannot record an event");
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    name: String,
    password: String,
}

/// Same answer for an unknown name and a wrong password, after the same single verification.
async fn login(
    State(s): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    b: Result<Json<Login>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = body(b)?;
    let source = client_addr(peer.ip(), &headers, &s.trusted_proxies);
    let now = Instant::now();
    let user_key = format!("login:{}", b.name);
    let any = std::net::IpAddr::from([0, 0, 0, 0]);
    let wait = s
        .login_limiter
        .locked(&user_key, any, now)
        .or_else(|| s.login_limiter.locked("login", source, now));
    if let Some(wait) = wait {
        event(
            &s,
            "login.rate_limited",
            &format!("operator {}", b.name),
            "",
            &source.to_string(),
        )
        .await;
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many failed logins; try again later",
        )
        .with_retry_after(wait.as_secs()));
    }
    let found = if b.name.len() <= 64 && b.password.len() <= 1024 {
        s.db.operator_login(&b.name).await?
    } else {
        None
    };
    let ok = s
        .verifier
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
        s.login_limiter.fail(&user_key, any, now);
        s.login_limiter.fail("login", source, now);
        event(
            &s,
            "login.failure",
            &format!("operator {}", b.name),
            "",
            &source.to_string(),
        )
        .await;
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

async fn logout(State(s): Shared, op: Operator) -> Result<Response, ApiError> {
    let Some(session) = &op.session else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "an API token is revoked with DELETE /v1/tokens/{id}, not logged out",
        ));
    };
    s.db.close_session(session).await?;
    event(&s, "logout", &format!("operator {}", op.name), "", "").await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    /// At most the creator's own; theirs when absent.
    #[serde(default)]
    role: Option<String>,
    expires_in_s: i64,
}

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
    event(
        &s,
        "token.create",
        &format!("operator {}", op.name),
        &format!("token {}", info.id),
        "",
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": token, "id": info.id, "name": info.name, "role": info.role, "expires_ms": info.expires_ms})),
    )
        .into_response())
}

async fn list_tokens(State(s): Shared, op: Operator) -> Result<Response, ApiError> {
    let whose = (op.role < Role::Admin).then_some(op.id);
    Ok(Json(json!({"tokens": s.db.tokens(whose).await?})).into_response())
}

async fn revoke_token(
    State(s): Shared,
    op: Operator,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    let whose = (op.role < Role::Admin).then_some(op.id);
    if !s.db.revoke_token(id, whose).await? {
        return Err(StoreError::NotFound(format!("no live token {id} of yours")).into());
    }
    event(
        &s,
        "token.revoke",
        &format!("operator {}", op.name),
        &format!("token {id}"),
        "",
    )
    .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSite {
    site_code: String,
    display_name: String,
    #[serde(default)]
    company: String,
}

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
    event(
        &s,
        "site.add",
        &format!("operator {}", op.name),
        &format!("site {}", site.site_code),
        "",
    )
    .await;
    Ok((StatusCode::CREATED, Json(site)).into_response())
}

async fn list_sites(State(s): Shared, op: Operator) -> Result<Response, ApiError> {
    require(&op, Role::Viewer)?;
    Ok(Json(json!({"sites": s.db.sites().await?})).into_response())
}

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
            "",
            &key.fingerprint_label,
        )
        .await
    {
        tracing::error!(error = %e, "cannot record a key rotation");
    }
    Ok(Json(key).into_response())
}

async fn site_key(
    State(s): Shared,
    op: Operator,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    require(&op, Role::Admin)?;
    let site = s.db.site_by_id(id).await?;
    Ok(Json(s.db.active_key(&site.site_code).await?).into_response())
}

async fn key_usage(
    State(s): Shared,
    op: Operator,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    require(&op, Role::Admin)?;
    let site = s.db.site_by_id(id).await?;
    let usage: Vec<_> =
        s.db.key_usage(&site.site_code)
            .await?
            .into_iter()
            .map(|(version, machines)| json!({"version": version, "machines": machines}))
            .collect();
    Ok(Json(json!({"usage": usage})).into_response())
}

#[derive(Debug, Deserialize)]
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

async fn get_machine(
    State(s): Shared,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&op, Role::Operator)?;
    Ok(Json(s.db.machine(&id).await?).into_response())
}

async fn machine_change(s: &AppState, op: &Operator, kind: &str, id: &str) -> Result<(), ApiError> {
    require(op, Role::Admin)?;
    event(
        s,
        kind,
        &format!("operator {}", op.name),
        &format!("machine {id}"),
        "",
    )
    .await;
    Ok(())
}

async fn approve(
    State(s): Shared,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&op, Role::Admin)?;
    s.db.approve(&id).await?;
    machine_change(&s, &op, "machine.approve", &id).await?;
    Ok(Json(s.db.machine(&id).await?).into_response())
}

async fn remove_machine(
    State(s): Shared,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&op, Role::Admin)?;
    let removed = s.db.remove(&id).await?;
    machine_change(&s, &op, "machine.remove", &id).await?;
    Ok(Json(
        json!({"machine_id": id, "result": if removed { "removed" } else { "already_removed" }}),
    )
    .into_response())
}

async fn ban(State(s): Shared, op: Operator, Path(id): Path<String>) -> Result<Response, ApiError> {
    require(&op, Role::Admin)?;
    if !crate::enroll::valid_machine_id(&id) {
        return Err(
            StoreError::BadRequest("machine_id must match ^muid_[0-9a-f]{64}$".into()).into(),
        );
    }
    s.db.ban(&id).await?;
    machine_change(&s, &op, "machine.ban", &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn unban(
    State(s): Shared,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&op, Role::Admin)?;
    s.db.unban(&id).await?;
    machine_change(&s, &op, "machine.unban", &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Bulk {
    ids: Vec<String>,
}

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
            event(
                &s,
                "machine.remove",
                &format!("operator {}", op.name),
                &format!("machine {id}"),
                "",
            )
            .await;
        }
    }
    let results: Vec<_> = results
        .into_iter()
        .map(|(id, result)| json!({"machine_id": id, "result": result}))
        .collect();
    Ok(Json(json!({"results": results})).into_response())
}

async fn machine_keys(
    State(s): Shared,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&op, Role::Operator)?;
    Ok(Json(json!({"keys": s.db.machine_keys(&id).await?})).into_response())
}

async fn revoke_machine_key(
    State(s): Shared,
    op: Operator,
    Path((id, key_id)): Path<(String, i64)>,
) -> Result<Response, ApiError> {
    require(&op, Role::Admin)?;
    s.db.revoke_machine_key(&id, key_id).await?;
    event(
        &s,
        "machine.key_revoke",
        &format!("operator {}", op.name),
        &format!("machine {id} key {key_id}"),
        "",
    )
    .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
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
