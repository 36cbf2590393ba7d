//! Who is calling an operator endpoint: the [`Operator`] extractor (a `wop_` login token or a
//! `wat_` API token as `Authorization: Bearer`, else the console's `warden_session` cookie
//! holding a `wop_` token; a machine key is never accepted here), the CSRF check a
//! cookie-authenticated change must pass, the role check every operator route makes, and the
//! audit record of what an operator did. Tokens and CSRF tokens are never logged.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};

use super::{ApiError, AppState, client_addr};
use crate::auth::{Operator, Role, SESSION_PREFIX};

fn unauthorized() -> ApiError {
    ApiError::unauthorized("log in (POST /v1/login) or present an API token")
}

impl FromRequestParts<Arc<AppState>> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Operator, ApiError> {
        // A request that names a bearer token is judged by it alone, cookie or not.
        let (token, by_cookie) = match parts.headers.get(header::AUTHORIZATION) {
            Some(v) => (
                v.to_str()
                    .ok()
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .ok_or_else(unauthorized)?,
                false,
            ),
            None => (
                session_cookie(&parts.headers).ok_or_else(unauthorized)?,
                true,
            ),
        };
        // The cookie carries login sessions only: an API token never lives in a browser.
        if by_cookie && !token.starts_with(SESSION_PREFIX) {
            return Err(unauthorized());
        }
        let mut op = state
            .db
            .authenticate(&state.signing, token)
            .await?
            .ok_or_else(unauthorized)?;
        op.by_cookie = by_cookie;
        // A browser sends the cookie with any request a page makes, a hostile page's too: a
        // change needs the token only the console's own script was given.
        if by_cookie && !matches!(parts.method, Method::GET | Method::HEAD) {
            let presented = parts
                .headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let session = op.session.as_deref().unwrap_or("");
            if session.is_empty() || !state.signing.csrf_matches(session, presented) {
                return Err(ApiError::forbidden(
                    "missing or wrong CSRF token; reload the console",
                ));
            }
        }
        if let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
            op.source = client_addr(peer.ip(), &parts.headers, &state.trusted_proxies).to_string();
        }
        Ok(op)
    }
}

/// The console's session cookie.
pub const SESSION_COOKIE: &str = "warden_session";
/// The header a cookie-authenticated change carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The value of the `warden_session` cookie, from any `Cookie` header.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// The `Set-Cookie` value that gives the browser `token` for `max_age_s` seconds (`Secure`
/// when the server serves TLS).
pub(super) fn session_set_cookie(token: &str, max_age_s: i64, tls: bool) -> String {
    format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{}",
        if tls { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that takes the session cookie away.
pub(super) fn session_clear_cookie(tls: bool) -> String {
    format!(
        "{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{}",
        if tls { "; Secure" } else { "" }
    )
}

pub(super) fn require(op: &Operator, role: Role) -> Result<(), ApiError> {
    if op.role >= role {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "this needs role {}; you have {}",
            role.as_str(),
            op.role.as_str()
        )))
    }
}

/// Records what operator `op` did to `target`, from where.
pub(super) async fn audit(s: &AppState, op: &Operator, kind: &str, target: &str) {
    event(
        s,
        kind,
        &format!("operator {}", op.name),
        target,
        &op.source,
    )
    .await;
}

pub(super) async fn event(s: &AppState, kind: &str, actor: &str, target: &str, source: &str) {
    if let Err(e) = s.db.event(kind, actor, target, source, "").await {
        tracing::error!(kind, error = %e, "cannot record an event");
    }
}
