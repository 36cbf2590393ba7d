//! The one error answer of the HTTP API. Each [`ApiError`] variant fixes its status code and
//! its stable [`ErrorKind`] here, in one place, so no handler pairs them by hand. Answering it
//! writes `{"error": {"kind", "message", "correlation_id"}}` (the wire crate's [`ErrorBody`]),
//! sets `Retry-After` where the variant carries a wait, and logs the answer under the same
//! correlation id: 5xx with its cause chain (an internal failure at error, a busy server at
//! warn), 4xx at debug.
//!
//! What the peer sees is the kind and a short message, never the cause: a database error is
//! `internal` with "internal error", its chain only in the log. Messages never hold a secret.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use warden_fleet_proto::{ErrorBody, ErrorInfo, ErrorKind};

use crate::store::StoreError;

/// An error answer: its status, kind and message, by variant.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `bad_request`: a malformed request or a value out of range.
    #[error("{0}")]
    BadRequest(String),
    /// A body that is not the JSON asked for: axum's status for it (400 bad syntax, 415 no
    /// JSON content type, 422 a field of the wrong type or unknown), `bad_request`.
    #[error("{}", .0.body_text())]
    Json(#[from] JsonRejection),
    /// 413 `bad_request`: the body is over `limit` bytes.
    #[error("the request body is over {limit} bytes")]
    BodyTooLarge { limit: usize },
    /// 408 `request_timeout`: the body did not arrive in time; the connection is closed.
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    /// 401 `unauthorized`: no valid credential for this plane.
    #[error("{0}")]
    Unauthorized(String),
    /// 403 `forbidden`: a credential, but not allowed to do this.
    #[error("{0}")]
    Forbidden(String),
    /// 404 `not_found`.
    #[error("{0}")]
    NotFound(String),
    /// 409 `conflict`: the request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// 401 `enroll_rejected`: unknown site, no active key, wrong or rotated key (one answer
    /// for all).
    #[error("enrollment rejected: check the site code and enrollment key")]
    EnrollRejected,
    /// 409 `enroll_site_conflict`: the machine is bound to another site.
    #[error("this machine is enrolled at another site; an operator must remove it there first")]
    EnrollSiteConflict,
    /// 403 `quarantined`: a retired key of this machine was presented; an admin must clear it.
    #[error(
        "this machine is quarantined: an admin must clear it (warden-server machines clear ID)"
    )]
    Quarantined,
    /// 409 `duplicate_link`: this machine key already holds a live link.
    #[error("this machine key already holds a live link")]
    DuplicateLink,
    /// 429 `rate_limited`, with `Retry-After`.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: Duration,
    },
    /// 503 `unavailable`: busy or stopping, with `Retry-After`.
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after: Duration,
    },
    /// 500 `internal`: the peer is told only "internal error"; the cause goes to the log.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    /// 400 `bad_request` with `message`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::BadRequest(message.into())
    }

    /// 401 `unauthorized` with `message`.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::Unauthorized(message.into())
    }

    /// 403 `forbidden` with `message`.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::Forbidden(message.into())
    }

    /// 404 `not_found` with `message`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::NotFound(message.into())
    }

    /// 409 `conflict` with `message`.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::Conflict(message.into())
    }

    /// 429 `rate_limited`: come back after `retry_after`.
    pub fn rate_limited(message: impl Into<String>, retry_after: Duration) -> ApiError {
        ApiError::RateLimited {
            message: message.into(),
            retry_after,
        }
    }

    /// 503 `unavailable`: come back after `retry_after`.
    pub fn unavailable(message: impl Into<String>, retry_after: Duration) -> ApiError {
        ApiError::Unavailable {
            message: message.into(),
            retry_after,
        }
    }

    /// 500 `internal`, keeping `cause` for the log.
    pub fn internal(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> ApiError {
        ApiError::Internal(cause.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Json(e) => e.status(),
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unauthorized(_) | ApiError::EnrollRejected => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::Quarantined => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) | ApiError::EnrollSiteConflict | ApiError::DuplicateLink => {
                StatusCode::CONFLICT
            }
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            ApiError::BadRequest(_) | ApiError::Json(_) | ApiError::BodyTooLarge { .. } => {
                ErrorKind::BadRequest
            }
            ApiError::RequestTimeout => ErrorKind::RequestTimeout,
            ApiError::Unauthorized(_) => ErrorKind::Unauthorized,
            ApiError::Forbidden(_) => ErrorKind::Forbidden,
            ApiError::NotFound(_) => ErrorKind::NotFound,
            ApiError::Conflict(_) => ErrorKind::Conflict,
            ApiError::EnrollRejected => ErrorKind::EnrollRejected,
            ApiError::EnrollSiteConflict => ErrorKind::EnrollSiteConflict,
            ApiError::Quarantined => ErrorKind::Quarantined,
            ApiError::DuplicateLink => ErrorKind::DuplicateLink,
            ApiError::RateLimited { .. } => ErrorKind::RateLimited,
            ApiError::Unavailable { .. } => ErrorKind::Unavailable,
            ApiError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// How long the peer should wait before trying again, for `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::RateLimited { retry_after, .. }
            | ApiError::Unavailable { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

/// The cause chain below `e`, for the log: each cause once, outermost first.
fn causes(e: &ApiError) -> String {
    let mut chain = String::new();
    let mut next = std::error::Error::source(e);
    while let Some(cause) = next {
        let text = cause.to_string();
        if !chain.contains(&text) {
            if !chain.is_empty() {
                chain.push_str(": ");
            }
            chain.push_str(&text);
        }
        next = cause.source();
    }
    chain
}

fn correlation_id() -> String {
    crate::keys::random_hex(8)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let correlation_id = correlation_id();
        let (status, kind) = (self.status(), self.kind());
        let message = self.to_string();
        match &self {
            ApiError::Internal(_) => tracing::error!(
                correlation_id = %correlation_id,
                status = status.as_u16(),
                %kind,
                cause = %causes(&self),
                "{message}"
            ),
            _ if status.is_server_error() => tracing::warn!(
                correlation_id = %correlation_id,
                status = status.as_u16(),
                %kind,
                cause = %causes(&self),
                "{message}"
            ),
            _ => tracing::debug!(
                correlation_id = %correlation_id,
                status = status.as_u16(),
                %kind,
                "{message}"
            ),
        }
        let retry_after = self.retry_after();
        let body = ErrorBody {
            error: ErrorInfo {
                kind,
                message,
                correlation_id,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(wait) = retry_after
            && let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if matches!(self, ApiError::RequestTimeout) {
            // What is left of a body that trickles in is never read: the connection goes.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound(m) => ApiError::NotFound(m),
            StoreError::Conflict(m) => ApiError::Conflict(m),
            StoreError::BadRequest(m) => ApiError::BadRequest(m),
            e @ (StoreError::Db(_) | StoreError::Other(_)) => ApiError::internal(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: each variant answers its own status and kind, a store failure is `internal`
    /// without its cause in the message, and a wait becomes `Retry-After` (at least 1 s).
    #[tokio::test]
    async fn variants_answer_their_status_kind_and_wait() {
        let limited = ApiError::rate_limited("slow down", Duration::from_millis(300));
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited.kind(), ErrorKind::RateLimited);
        let r = limited.into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");

        let db = StoreError::Db(sqlx::Error::PoolTimedOut);
        let e = ApiError::from(db);
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.kind(), ErrorKind::Internal);
        assert!(causes(&e).contains("pool timed out"), "{}", causes(&e));
        let r = e.into_response();
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
        let bytes = axum::body::to_bytes(r.into_body(), 4096).await.unwrap();
        let body: ErrorBody = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body.error.kind, ErrorKind::Internal);
        assert_eq!(body.error.message, "internal error");
        assert_eq!(body.error.correlation_id.len(), 16);

        let gone = ApiError::from(StoreError::NotFound("no site `x`".into()));
        assert_eq!(
            (gone.status(), gone.kind()),
            (StatusCode::NOT_FOUND, ErrorKind::NotFound)
        );
        assert_eq!(ApiError::EnrollSiteConflict.status(), StatusCode::CONFLICT);
        assert_eq!(
            ApiError::RequestTimeout.into_response().headers()[header::CONNECTION],
            "close"
        );
    }

    /// What the log captured while answering `e`, and the answer's body.
    async fn logged(e: ApiError) -> (String, ErrorBody) {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let response = tracing::subscriber::with_default(subscriber, || e.into_response());
        let bytes = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let log = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        (log, serde_json::from_slice(&bytes).unwrap())
    }

    /// Pins: an internal error is logged at ERROR with the answer's correlation id and its
    /// cause chain, which the peer never sees; a 4xx is logged at DEBUG with its correlation id.
    #[tokio::test]
    async fn answers_are_logged_under_their_correlation_id() {
        let (log, body) = logged(ApiError::from(StoreError::Db(sqlx::Error::PoolTimedOut))).await;
        assert!(log.contains("ERROR"), "{log}");
        assert!(log.contains(&body.error.correlation_id), "{log}");
        assert!(log.contains("pool timed out"), "{log}");
        assert!(!body.error.message.contains("pool"));

        let (log, body) = logged(ApiError::not_found("no machine `x`")).await;
        assert!(log.contains("DEBUG"), "{log}");
        assert!(log.contains(&body.error.correlation_id), "{log}");
        assert!(log.contains("no machine `x`"), "{log}");
    }
}
