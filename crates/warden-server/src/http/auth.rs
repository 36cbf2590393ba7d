//! Operator sessions and API tokens: `POST /v1/login` (the token in the body, or for the
//! console in an `HttpOnly` cookie with a CSRF token in the body), `GET /v1/session`,
//! `/v1/logout`, and `/v1/tokens`. A wrong name and a wrong password get one answer after one
//! verification; a name is locked out only from the addresses that failed it. Passwords,
//! tokens and CSRF tokens are never logged.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::operator::{audit, event, session_clear_cookie, session_set_cookie};
use super::{ApiError, AppState, Shared, body, client_addr};
use crate::auth::{Operator, Role};

pub(super) fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(session))
        .routes(routes!(create_token, list_tokens))
        .routes(routes!(revoke_token))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Login {
    name: String,
    password: String,
    /// For the console: the token goes into an `HttpOnly` cookie, never into the body, and the
    /// body carries the session's CSRF token instead.
    #[serde(default)]
    cookie: bool,
}

/// Longest operator name: a longer one is refused before it costs anything.
pub const MAX_NAME: usize = 64;
/// Failed logins for one name, from anywhere, after which each login for it is slowed down.
pub const SLOWDOWN_AFTER: u32 = 10;

/// Same answer for an unknown name and a wrong password, after the same single verification.
/// A name locks out only the addresses that failed it; from everywhere else it is slowed down,
/// never refused.
#[utoipa::path(post, path = "/v1/login", tag = "operators", request_body = Login, responses((status = 200, description = "A login token (wop_), when it ends, and the role; with \"cookie\": true the token is set as the HttpOnly cookie warden_session instead and the body is {name, role, expires_ms, csrf}"), (status = 400, description = "A name over 64 bytes"), (status = 401, description = "Wrong name or password (one answer for both)"), (status = 429, description = "Too many failed logins from this address, for this name or for any"), (status = 503, description = "Every login verification slot is busy (Retry-After)")))]
async fn login(
    State(s): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    b: Result<Json<Login>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = body(b)?;
    // Before anything is charged or remembered: no operator has such a name.
    if b.name.is_empty() || b.name.len() > MAX_NAME {
        return Err(ApiError::bad_request(format!(
            "an operator name is 1 to {MAX_NAME} bytes"
        )));
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
        return Err(ApiError::rate_limited(
            "too many failed logins from this address; try again later",
            wait,
        ));
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
            ApiError::unavailable(
                "the server is busy; try again shortly",
                Duration::from_secs(1),
            )
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
        return Err(ApiError::unauthorized("wrong name or password"));
    };
    let (token, session, expires_ms) = s.db.open_session(&s.signing, op.id).await?;
    event(
        &s,
        "login.success",
        &format!("operator {}", op.name),
        "",
        &source.to_string(),
    )
    .await;
    if !b.cookie {
        return Ok(
            Json(json!({"token": token, "expires_ms": expires_ms, "role": op.role}))
                .into_response(),
        );
    }
    let max_age_s = (expires_ms - crate::store::now_ms()).max(0) / 1000;
    Ok((
        [(
            header::SET_COOKIE,
            session_set_cookie(&token, max_age_s, s.tls),
        )],
        Json(json!({
            "name": op.name,
            "role": op.role,
            "expires_ms": expires_ms,
            "csrf": s.signing.csrf(&session),
        })),
    )
        .into_response())
}

#[utoipa::path(post, path = "/v1/logout", tag = "operators", description = "Needs a login (wop_) as `Authorization: Bearer` or the console's cookie (with X-CSRF-Token).", responses((status = 204, description = "The session is over (the same token fails as bearer and as cookie); with the cookie, it is cleared"), (status = 401, description = "Not logged in"), (status = 403, description = "Cookie without the right CSRF token")))]
async fn logout(State(s): Shared, op: Operator) -> Result<Response, ApiError> {
    let Some(session) = &op.session else {
        return Err(ApiError::bad_request(
            "an API token is revoked with DELETE /v1/tokens/{id}, not logged out",
        ));
    };
    s.db.close_session(session).await?;
    audit(&s, &op, "logout", "").await;
    if op.by_cookie {
        return Ok((
            StatusCode::NO_CONTENT,
            [(header::SET_COOKIE, session_clear_cookie(s.tls))],
        )
            .into_response());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(get, path = "/v1/session", tag = "operators", description = "Who the caller is: any login or API token, as bearer or the console's cookie. csrf is the session's CSRF token for cookie authentication (null for bearer); expires_ms is when the credential ends.", responses((status = 200, description = "{name, role, expires_ms, csrf}"), (status = 401, description = "Not logged in")))]
async fn session(State(s): Shared, op: Operator) -> Result<Response, ApiError> {
    let csrf = match (&op.session, op.by_cookie) {
        (Some(session), true) => Some(s.signing.csrf(session)),
        _ => None,
    };
    Ok(Json(json!({
        "name": op.name,
        "role": op.role,
        "expires_ms": op.expires_ms,
        "csrf": csrf,
    }))
    .into_response())
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
        Some(r) => r.parse::<Role>().map_err(ApiError::BadRequest)?,
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
        return Err(ApiError::not_found(format!("no live token {id} of yours")));
    }
    audit(&s, &op, "token.revoke", &format!("token {id}")).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}
