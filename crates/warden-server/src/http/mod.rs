//! The HTTP API under `/v1` and the operator console at `/`: the router and its OpenAPI
//! document, the request limits every route shares (JSON bodies of at most 64 KiB that must
//! arrive within the body deadline), and the security headers every answer carries. One file
//! per endpoint family; every error answer is an [`ApiError`].
//!
//! Handlers here parse, authorize and answer; the decisions live in [`crate::enroll`] and
//! [`crate::auth`], and every SQL statement in [`crate::store`]. No handler logs a key or token.

mod agent;
mod auth;
mod console;
mod dispatches;
mod enroll;
pub mod error;
mod events;
mod link;
mod machines;
pub mod operator;
mod sites;

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use crate::proxy::{Cidr, client_addr};
pub use crate::state::AppState;
pub use error::ApiError;

/// Largest request body.
pub const MAX_BODY: usize = 64 * 1024;

/// The state every handler extracts.
type Shared = State<Arc<AppState>>;

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
        .merge(enroll::routes())
        .merge(agent::routes())
        .merge(link::routes())
        .routes(routes!(health))
        .merge(auth::routes())
        .merge(sites::routes())
        .merge(machines::routes())
        .merge(events::routes())
        .merge(dispatches::routes())
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
        .merge(console::routes())
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            read_body,
        ))
        // The answers of the body limits and deadlines carry the headers too.
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            console::security_headers,
        ))
        // Outermost: a request's whole time, refusals included.
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            crate::metrics::time_requests,
        ))
        .with_state(state)
}

/// The JSON body, or the answer to a body that is not the JSON asked for.
fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(t)| t).map_err(ApiError::Json)
}

/// Reads the whole body (at most [`MAX_BODY`]) within the body deadline before any handler
/// runs: a body that trickles in is answered `408` and its connection closed.
async fn read_body(State(state): Shared, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let too_large = || ApiError::BodyTooLarge { limit: MAX_BODY }.into_response();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large();
    }
    match tokio::time::timeout(state.body_timeout, axum::body::to_bytes(body, MAX_BODY)).await {
        Err(_) => ApiError::RequestTimeout.into_response(),
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
