//! Who is calling an operator endpoint: the [`Operator`] extractor (a `wop_` login token or a
//! `wat_` API token; a machine key is never accepted here), the role check every operator
//! route makes, and the audit record of what an operator did. Tokens are never logged.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use super::{ApiError, AppState, client_addr};
use crate::auth::{Operator, Role};

fn unauthorized() -> ApiError {
    ApiError::unauthorized("log in (POST /v1/login) or present an API token")
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
