//! Error kinds and the JSON-RPC error object.
//!
//! A peer sees a stable `kind`, a short message, a `correlation_id` that also appears in the
//! daemon's log line and audit record, `retry_after_ms` where waiting helps, and `detail` (the
//! internal cause) only when the caller is an admin. The standard JSON-RPC codes are used where
//! they fit; the rest sit in the implementation-defined range.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The stable error kinds. Clients branch on these, never on messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    BadRequest,
    Forbidden,
    NotFound,
    Conflict,
    Busy,
    RateLimited,
    LockedDown,
    Cancelled,
    Unavailable,
    Internal,
}

/// JSON-RPC 2.0 standard codes.
pub mod code {
    pub const PARSE_ERROR: i32 = -32700;
    pub const INVALID_REQUEST: i32 = -32600;
    pub const METHOD_NOT_FOUND: i32 = -32601;
    pub const INVALID_PARAMS: i32 = -32602;
    pub const INTERNAL_ERROR: i32 = -32603;
    pub const FORBIDDEN: i32 = -32001;
    pub const NOT_FOUND: i32 = -32002;
    pub const CONFLICT: i32 = -32003;
    pub const BUSY: i32 = -32004;
    pub const RATE_LIMITED: i32 = -32005;
    pub const LOCKED_DOWN: i32 = -32006;
    pub const CANCELLED: i32 = -32007;
    pub const UNAVAILABLE: i32 = -32008;
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::BadRequest,
        ErrorKind::Forbidden,
        ErrorKind::NotFound,
        ErrorKind::Conflict,
        ErrorKind::Busy,
        ErrorKind::RateLimited,
        ErrorKind::LockedDown,
        ErrorKind::Cancelled,
        ErrorKind::Unavailable,
        ErrorKind::Internal,
    ];

    /// The code used when nothing more specific applies (`bad_request` is "invalid params" unless
    /// the envelope itself was bad).
    pub fn default_code(self) -> i32 {
        match self {
            ErrorKind::BadRequest => code::INVALID_PARAMS,
            ErrorKind::Forbidden => code::FORBIDDEN,
            ErrorKind::NotFound => code::NOT_FOUND,
            ErrorKind::Conflict => code::CONFLICT,
            ErrorKind::Busy => code::BUSY,
            ErrorKind::RateLimited => code::RATE_LIMITED,
            ErrorKind::LockedDown => code::LOCKED_DOWN,
            ErrorKind::Cancelled => code::CANCELLED,
            ErrorKind::Unavailable => code::UNAVAILABLE,
            ErrorKind::Internal => code::INTERNAL_ERROR,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Busy => "busy",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::LockedDown => "locked_down",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The `data` member of every warden error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ErrorData {
    pub kind: ErrorKind,
    pub correlation_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// Internal cause; present only in answers to admin-tier callers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RpcError {
    pub code: i32,
    pub message: String,
    pub data: ErrorData,
}

impl RpcError {
    /// An error of `kind` with the kind's default code.
    pub fn new(kind: ErrorKind, message: impl Into<String>, correlation_id: String) -> Self {
        Self::with_code(kind.default_code(), kind, message, correlation_id)
    }

    pub fn with_code(
        code: i32,
        kind: ErrorKind,
        message: impl Into<String>,
        correlation_id: String,
    ) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: ErrorData {
                kind,
                correlation_id,
                retry_after_ms: None,
                detail: None,
            },
        }
    }

    pub fn retry_after_ms(mut self, ms: u64) -> Self {
        self.data.retry_after_ms = Some(ms);
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.data.detail = Some(detail.into());
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.data.kind
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.data.kind, self.message)
    }
}

impl std::error::Error for RpcError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_serialize_as_their_stable_names() {
        for k in ErrorKind::ALL {
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.as_str())
            );
        }
    }

    #[test]
    fn optional_data_members_are_omitted_not_null() {
        let e = RpcError::new(ErrorKind::Forbidden, "no", "c1".into());
        let v = serde_json::to_value(&e).unwrap();
        assert!(v["data"].get("retry_after_ms").is_none());
        assert!(v["data"].get("detail").is_none());
    }
}
