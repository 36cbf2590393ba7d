//! The fleet's error body and its stable kinds. Every non-2xx answer of the server's HTTP API
//! is `{"error": {"kind", "message", "correlation_id"}}`; the kind is the contract, the message
//! is for people, and the correlation id is also in the server's log line for that answer.

use serde::{Deserialize, Serialize};

/// A stable error kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Malformed request: bad JSON, unknown field, invalid value.
    BadRequest,
    /// No valid credential for this plane.
    Unauthorized,
    /// A credential, but not allowed to do this (or the machine is banned).
    Forbidden,
    NotFound,
    /// The request conflicts with the current state.
    Conflict,
    /// Enrollment: unknown site, no active key, wrong or rotated key (one answer for all).
    EnrollRejected,
    /// Enrollment: the machine is bound to another site.
    EnrollSiteConflict,
    /// The link: the machine is quarantined until an admin clears it.
    Quarantined,
    /// The link: this key already holds a live link.
    DuplicateLink,
    /// Too many failures; see `Retry-After`.
    RateLimited,
    /// The server is busy or stopping; see `Retry-After`.
    Unavailable,
    /// The request body did not arrive in time.
    RequestTimeout,
    Internal,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::EnrollRejected => "enroll_rejected",
            ErrorKind::EnrollSiteConflict => "enroll_site_conflict",
            ErrorKind::Quarantined => "quarantined",
            ErrorKind::DuplicateLink => "duplicate_link",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{"error": {...}}`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorInfo,
}

/// What went wrong, in the order the fields are written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorInfo {
    pub kind: ErrorKind,
    pub message: String,
    pub correlation_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: every kind's wire spelling is the one `as_str` gives.
    #[test]
    fn kinds_spell_the_same_on_the_wire() {
        for k in [
            ErrorKind::BadRequest,
            ErrorKind::Unauthorized,
            ErrorKind::Forbidden,
            ErrorKind::NotFound,
            ErrorKind::Conflict,
            ErrorKind::EnrollRejected,
            ErrorKind::EnrollSiteConflict,
            ErrorKind::Quarantined,
            ErrorKind::DuplicateLink,
            ErrorKind::RateLimited,
            ErrorKind::Unavailable,
            ErrorKind::RequestTimeout,
            ErrorKind::Internal,
        ] {
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.as_str())
            );
        }
    }
}
