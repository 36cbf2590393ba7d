//! The HTTP API under `/v1`: JSON bodies of at most 64 KiB that must arrive within the body
//! deadline, errors as `{"error": {"kind", "message", "correlation_id"}}`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::db::Db;
use warden_fleet_proto::{Disposition, EnrollRequest, Enrolled, MachineState};

use crate::enroll::{Gate, Outcome};
use crate::keys::Verifier;
use crate::limiter::Limiter;
use crate::store::StoreError;

/// Largest request body.
pub const MAX_BODY: usize = 64 * 1024;

/// A network and prefix length, for `--trusted-proxy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not an address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: prefix must be 0 to {max}"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (a, b, bits) = match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => (
                u128::from(u32::from(a)) << 96,
                u128::from(u32::from(b)) << 96,
                self.prefix,
            ),
            (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), self.prefix),
            _ => return false,
        };
        if bits == 0 {
            return true;
        }
        let mask = u128::MAX << (128 - u32::from(bits));
        a & mask == b & mask
    }
}

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    pub db: Db,
    /// Argon2id slots for enrollments.
    pub verifier: Verifier,
    /// Argon2id slots of their own for logins, so an enrollment flood cannot take them.
    pub login_verifier: Verifier,
    /// Failed enrollments per (site code, address).
    pub limiter: Limiter,
    /// Failed enrollments per address, across site codes.
    pub enroll_addr_limiter: Limiter,
    /// Failed logins per (operator name, address): the lockout for a name.
    pub login_limiter: Limiter,
    /// Failed logins per address, across names.
    pub login_addr_limiter: Limiter,
    /// Failed logins per name from anywhere: never a lockout, only a slowdown.
    pub login_name_failures: Limiter,
    /// How long each login for a name that keeps failing waits before it is checked.
    pub login_slowdown: std::time::Duration,
    /// Refusals recorded one by one per window.
    pub budget: crate::budget::EventBudget,
    pub signing: crate::auth::SigningKey,
    pub trusted_proxies: Vec<Cidr>,
    /// Time a request body has to arrive.
    pub body_timeout: std::time::Duration,
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn with_retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs.max(1));
        self
    }
}

/// `{"error": {"kind", "message", "correlation_id"}}`, in that order.
#[derive(Debug, serde::Serialize)]
struct ErrorBody<'a> {
    error: ErrorInner<'a>,
}

#[derive(Debug, serde::Serialize)]
struct ErrorInner<'a> {
    kind: &'a str,
    message: &'a str,
    correlation_id: &'a str,
}

fn correlation_id() -> String {
    crate::keys::random_hex(8)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let cid = correlation_id();
        if self.status.is_server_error() {
            tracing::warn!(correlation_id = %cid, kind = self.kind, "{}", self.message);
        }
        let body = ErrorBody {
            error: ErrorInner {
                kind: self.kind,
                message: &self.message,
                correlation_id: &cid,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            StoreError::BadRequest(m) => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m),
            StoreError::Db(e) => {
                tracing::error!(error = %e, "database error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
            StoreError::Other(e) => {
                tracing::error!(error = %e, "server error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

fn bad_json(e: &JsonRejection) -> ApiError {
    ApiError::new(e.status(), "bad_request", e.body_text())
}

/// The client's address: the peer's, or when the peer is a trusted proxy, the last address in
/// `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    forwarded
        .into_iter()
        .rev()
        .find(|ip| !is_trusted(*ip))
        .unwrap_or(peer)
}

/// What the OpenAPI document says about the whole API.
#[derive(utoipa::OpenApi)]
#[openapi(info(
    title = "warden-server",
    description = "warden's fleet server: sites, enrollment keys, enrollment, machine credentials, operators and the audit trail. Errors are {\"error\": {\"kind\", \"message\", \"correlation_id\"}}."
))]
struct ApiDoc;

/// The router, and the OpenAPI document made from its handlers (served at
/// `/v1/openapi.json`).
pub fn router(state: Arc<AppState>) -> axum::Router {
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(enroll))
        .routes(routes!(agent_whoami))
        .routes(routes!(health))
        .merge(crate::admin::routes())
        .split_for_parts();
    let doc = Arc::new(doc);
    router
        .route(
            "/v1/openapi.json",
            axum::routing::get(move || {
                let doc = Arc::clone(&doc);
                async move { Json(doc) }
            }),
        )
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            read_body,
        ))
        .with_state(state)
}

/// Reads the whole body (at most [`MAX_BODY`]) within the body deadline before any handler
/// runs: a body that trickles in is answered `408` and its connection closed.
async fn read_body(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "bad_request",
            format!("the request body is over {MAX_BODY} bytes"),
        )
        .into_response()
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large();
    }
    match tokio::time::timeout(state.body_timeout, axum::body::to_bytes(body, MAX_BODY)).await {
        Err(_) => {
            let mut r = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request body did not arrive in time",
            )
            .into_response();
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        }
        Ok(Err(_)) => too_large(),
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
    }
}

#[utoipa::path(get, path = "/v1/health", tag = "server", responses((status = 200, description = "{\"status\": \"ok\"}")))]
async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(
    post,
    path = "/v1/enroll",
    tag = "enrollment",
    request_body = EnrollRequest,
    responses(
        (status = 201, description = "A new machine and its key (wmk_), disposition new"),
        (status = 200, description = "The same machine again: a new key, the old ones revoked, disposition reuse"),
        (status = 202, description = "A likely clone: pending, no key until an operator approves"),
        (status = 400, description = "A malformed request"),
        (status = 401, description = "enroll_rejected: unknown site, no active key, wrong or rotated key (one answer for all)"),
        (status = 403, description = "The machine id is banned"),
        (status = 409, description = "enroll_site_conflict: the machine belongs to another site"),
        (status = 429, description = "Too many failures from this address for this site, or for any site (Retry-After)"),
        (status = 503, description = "Too many enrollments being checked (Retry-After)"),
    )
)]
async fn enroll(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<EnrollRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(r) = body.map_err(|e| match e {
        // A malformed identifier is a field that fails to parse: a bad request like any other
        // malformed field, not the 422 axum would answer.
        JsonRejection::JsonDataError(e) => {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text())
        }
        e => bad_json(&e),
    })?;
    r.labels
        .check()
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m))?;
    let source = client_addr(peer.ip(), &headers, &state.trusted_proxies);
    let gate = Gate {
        db: &state.db,
        verifier: &state.verifier,
        limiter: &state.limiter,
        addr_limiter: &state.enroll_addr_limiter,
        budget: &state.budget,
    };
    let outcome = gate.enroll(&r, source).await?;
    let answer = |status, machine_key, state, disposition| {
        let body = Enrolled {
            machine_id: r.machine_id.clone(),
            machine_key,
            state,
            disposition,
        };
        (status, Json(body)).into_response()
    };
    Ok(match outcome {
        Outcome::New { machine_key } => answer(
            StatusCode::CREATED,
            Some(machine_key),
            MachineState::Active,
            Disposition::New,
        ),
        Outcome::Reuse { machine_key } => answer(
            StatusCode::OK,
            Some(machine_key),
            MachineState::Active,
            Disposition::Reuse,
        ),
        Outcome::Pending => answer(
            StatusCode::ACCEPTED,
            None,
            MachineState::Pending,
            Disposition::Pending,
        ),
        Outcome::Rejected => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "enroll_rejected",
                "enrollment rejected: check the site code and enrollment key",
            ));
        }
        Outcome::SiteConflict => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "enroll_site_conflict",
                "this machine is enrolled at another site; an operator must remove it there first",
            ));
        }
        Outcome::Banned => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this machine may not enroll",
            ));
        }
        Outcome::RateLimited(wait) => {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many failed enrollments from this address",
            )
            .with_retry_after(wait.as_secs()));
        }
        Outcome::Busy => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the server is busy checking enrollments; try again shortly",
            )
            .with_retry_after(1));
        }
    })
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
async fn agent_whoami(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let unauthorized = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a live machine key is required",
        )
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: X-Forwarded-For counts only from a trusted proxy, and then its last untrusted
    /// address is the client.
    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.7, 10.1.1.1".parse().unwrap(),
        );
        let proxy: IpAddr = "10.2.3.4".parse().unwrap();
        let stranger: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            client_addr(proxy, &h, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_addr(stranger, &h, &trusted), stranger);
        assert_eq!(client_addr(proxy, &HeaderMap::new(), &trusted), proxy);
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!(!trusted[0].contains("11.0.0.1".parse().unwrap()));
    }
}
