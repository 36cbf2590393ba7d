//! `POST /v1/enroll`: parses the request (malformed identifiers and labels are `400
//! bad_request`), finds the client's address, runs [`crate::enroll::Gate`] and answers its
//! outcome: the status carries it, a 2xx body is the wire crate's [`Enrolled`]. The enrollment
//! key and the machine key issued are never logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use warden_fleet_proto::{Disposition, EnrollRequest, Enrolled, MachineState};

use super::{ApiError, AppState, Shared, client_addr};
use crate::enroll::{Gate, Outcome};

pub(super) fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(enroll))
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
        (status = 403, description = "The machine id is banned, or the machine is quarantined (kind `quarantined`)"),
        (status = 409, description = "enroll_site_conflict: the machine belongs to another site"),
        (status = 429, description = "Too many failures from this address for this site, or for any site (Retry-After)"),
        (status = 503, description = "Too many enrollments being checked (Retry-After)"),
    )
)]
async fn enroll(
    State(state): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<EnrollRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let metrics = &state.metrics;
    let Json(r) = body
        .map_err(|e| match e {
            // A malformed identifier is a field that fails to parse: a bad request like any other
            // malformed field, not the 422 axum would answer.
            JsonRejection::JsonDataError(e) => ApiError::bad_request(e.body_text()),
            e => ApiError::Json(e),
        })
        .inspect_err(|_| metrics.enrollment("bad_request"))?;
    r.labels
        .check()
        .map_err(ApiError::BadRequest)
        .inspect_err(|_| metrics.enrollment("bad_request"))?;
    let source = client_addr(peer.ip(), &headers, &state.trusted_proxies);
    let gate = Gate {
        db: &state.db,
        verifier: &state.verifier,
        limiter: &state.limiter,
        addr_limiter: &state.enroll_addr_limiter,
        budget: &state.budget,
    };
    let outcome = gate
        .enroll(&r, source)
        .await
        .inspect_err(|_| metrics.enrollment("error"))?;
    metrics.enrollment(match &outcome {
        Outcome::New { .. } => "new",
        Outcome::Reuse { .. } => "reuse",
        Outcome::Pending => "pending",
        Outcome::Rejected => "rejected",
        Outcome::SiteConflict => "site_conflict",
        Outcome::Banned => "banned",
        Outcome::Quarantined => "quarantined",
        Outcome::RateLimited(_) => "rate_limited",
        Outcome::Busy => "busy",
    });
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
        Outcome::Rejected => return Err(ApiError::EnrollRejected),
        Outcome::SiteConflict => return Err(ApiError::EnrollSiteConflict),
        Outcome::Banned => return Err(ApiError::forbidden("this machine may not enroll")),
        Outcome::Quarantined => return Err(ApiError::Quarantined),
        Outcome::RateLimited(wait) => {
            return Err(ApiError::rate_limited(
                "too many failed enrollments from this address",
                wait,
            ));
        }
        Outcome::Busy => {
            return Err(ApiError::unavailable(
                "the server is busy checking enrollments; try again shortly",
                Duration::from_secs(1),
            ));
        }
    })
}
