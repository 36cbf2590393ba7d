//! The JSON-RPC 2.0 envelope: splitting an incoming frame into id, method and raw params, and
//! writing responses and notifications.
//!
//! A frame that is not JSON (`-32700`) or not a JSON-RPC 2.0 request (`-32600`) is an
//! [`EnvelopeError`]: the daemon counts those as protocol violations. Unknown methods and bad
//! params are ordinary errors handled later, by [`crate::Method`] and [`crate::Request`].

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{RpcError, code};

/// Longest request id echoed back, in bytes of JSON.
pub const MAX_ID_LEN: usize = 128;

/// A request id: a JSON number or string, echoed back byte for byte. Borrowed from the frame it
/// came in, or owned.
#[derive(Debug, Clone)]
pub struct Id<'a>(Cow<'a, RawValue>);

impl Id<'static> {
    /// A numeric id (what warden's own clients send).
    pub fn number(n: u64) -> Id<'static> {
        // A decimal integer is always valid JSON, so this cannot fail.
        Id(Cow::Owned(
            RawValue::from_string(n.to_string()).expect("a decimal integer is valid JSON"),
        ))
    }
}

impl Id<'_> {
    pub fn as_json(&self) -> &str {
        self.0.get()
    }

    /// The id detached from the frame it came in (for answers sent later).
    pub fn into_owned(self) -> Id<'static> {
        Id(Cow::Owned(self.0.into_owned()))
    }
}

impl PartialEq for Id<'_> {
    fn eq(&self, other: &Id<'_>) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Eq for Id<'_> {}

impl Serialize for Id<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (*self.0).serialize(s)
    }
}

/// A frame that is not a JSON-RPC 2.0 request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("frame is not valid JSON: {0}")]
    Parse(String),
    #[error("frame is not a JSON-RPC 2.0 request: {0}")]
    Invalid(String),
}

impl From<serde_json::Error> for EnvelopeError {
    /// Data errors (valid JSON of the wrong shape) are invalid requests; everything else is a
    /// parse error.
    fn from(e: serde_json::Error) -> Self {
        if e.is_data() {
            EnvelopeError::Invalid(e.to_string())
        } else {
            EnvelopeError::Parse(e.to_string())
        }
    }
}

impl EnvelopeError {
    /// The JSON-RPC code for this failure.
    pub fn code(&self) -> i32 {
        match self {
            EnvelopeError::Parse(_) => code::PARSE_ERROR,
            EnvelopeError::Invalid(_) => code::INVALID_REQUEST,
        }
    }
}

/// An incoming request, split but not yet typed.
#[derive(Debug)]
pub struct Envelope<'a> {
    pub id: Id<'a>,
    pub method: Cow<'a, str>,
    /// Raw params; `None` when absent or `null`.
    pub params: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireRequest<'a> {
    #[serde(borrow)]
    jsonrpc: Cow<'a, str>,
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(default, borrow)]
    params: Option<&'a RawValue>,
}

impl<'a> Envelope<'a> {
    /// Splits one frame body. Batches (arrays) and notifications (no id) are not part of this
    /// protocol and are refused as invalid requests.
    pub fn parse(frame: &'a [u8]) -> Result<Envelope<'a>, EnvelopeError> {
        let wire: WireRequest<'a> = serde_json::from_slice(frame)?;
        if wire.jsonrpc != "2.0" {
            return Err(EnvelopeError::Invalid(format!(
                "`jsonrpc` must be \"2.0\", not {:?}",
                wire.jsonrpc
            )));
        }
        let id = wire
            .id
            .ok_or_else(|| EnvelopeError::Invalid("`id` is required".into()))?;
        let raw = id.get();
        let is_number_or_string = raw.starts_with('"')
            || raw.starts_with('-')
            || raw.starts_with(|c: char| c.is_ascii_digit());
        if !is_number_or_string {
            return Err(EnvelopeError::Invalid(
                "`id` must be a number or a string".into(),
            ));
        }
        if raw.len() > MAX_ID_LEN {
            return Err(EnvelopeError::Invalid(format!(
                "`id` is longer than {MAX_ID_LEN} bytes"
            )));
        }
        let params = wire.params.filter(|p| p.get() != "null");
        Ok(Envelope {
            id: Id(Cow::Borrowed(id)),
            method: wire.method,
            params,
        })
    }
}

#[derive(Serialize)]
struct ResultResponse<'a, T> {
    jsonrpc: &'static str,
    id: &'a Id<'a>,
    result: &'a T,
}

#[derive(Serialize)]
struct ErrorResponse<'a> {
    jsonrpc: &'static str,
    id: Option<&'a Id<'a>>,
    error: &'a RpcError,
}

#[derive(Serialize)]
struct OutgoingRequest<'a, P> {
    jsonrpc: &'static str,
    id: u64,
    method: &'a str,
    params: &'a P,
}

#[derive(Serialize)]
struct Notification<'a, T> {
    jsonrpc: &'static str,
    method: &'a str,
    params: &'a T,
}

/// `{"jsonrpc":"2.0","id":N,"method":…,"params":…}`: a client's request.
pub fn request<P: Serialize>(id: u64, method: &str, params: &P) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&OutgoingRequest {
        jsonrpc: "2.0",
        id,
        method,
        params,
    })
}

/// Serializes `message` straight into a frame: a 4-byte length, then the JSON, written into one
/// buffer with no intermediate copy.
fn framed<T: Serialize>(message: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&[0; crate::frame::HEADER_LEN]);
    serde_json::to_writer(&mut out, message)?;
    let len = u32::try_from(out.len() - crate::frame::HEADER_LEN)
        .map_err(|_| <serde_json::Error as serde::ser::Error>::custom("message exceeds 4 GiB"))?;
    out[..crate::frame::HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// A framed `{"jsonrpc":"2.0","method":…,"params":…}`.
pub fn notification_frame<T: Serialize>(method: &str, params: &T) -> serde_json::Result<Vec<u8>> {
    framed(&Notification {
        jsonrpc: "2.0",
        method,
        params,
    })
}

/// A framed `{"jsonrpc":"2.0","id":…,"result":…}`.
pub fn result_frame<T: Serialize>(id: &Id<'_>, result: &T) -> serde_json::Result<Vec<u8>> {
    framed(&ResultResponse {
        jsonrpc: "2.0",
        id,
        result,
    })
}

/// A framed `{"jsonrpc":"2.0","id":…|null,"error":{…}}`.
pub fn error_frame(id: Option<&Id<'_>>, error: &RpcError) -> serde_json::Result<Vec<u8>> {
    framed(&ErrorResponse {
        jsonrpc: "2.0",
        id,
        error,
    })
}

/// `{"jsonrpc":"2.0","id":…,"result":…}`
pub fn result_response<T: Serialize>(id: &Id<'_>, result: &T) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&ResultResponse {
        jsonrpc: "2.0",
        id,
        result,
    })
}

/// `{"jsonrpc":"2.0","id":…|null,"error":{…}}`. `id` is `None` when the request's id could not
/// be read.
pub fn error_response(id: Option<&Id<'_>>, error: &RpcError) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&ErrorResponse {
        jsonrpc: "2.0",
        id,
        error,
    })
}

/// `{"jsonrpc":"2.0","method":…,"params":…}`: a server push.
pub fn notification<T: Serialize>(method: &str, params: &T) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&Notification {
        jsonrpc: "2.0",
        method,
        params,
    })
}

/// A message a client receives: the answer to one of its requests, or a server push.
#[derive(Debug)]
pub enum Incoming {
    Response {
        id: serde_json::Value,
        outcome: Result<Box<RawValue>, RpcError>,
    },
    Notification {
        method: String,
        params: Option<Box<RawValue>>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireIncoming {
    jsonrpc: String,
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    result: Option<Box<RawValue>>,
    #[serde(default)]
    error: Option<RpcError>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    params: Option<Box<RawValue>>,
}

impl Incoming {
    /// Parses a frame sent by the daemon.
    pub fn parse(frame: &[u8]) -> Result<Incoming, EnvelopeError> {
        let w: WireIncoming = serde_json::from_slice(frame)?;
        if w.jsonrpc != "2.0" {
            return Err(EnvelopeError::Invalid("`jsonrpc` must be \"2.0\"".into()));
        }
        match (w.method, w.result, w.error) {
            (Some(method), None, None) if w.id.is_none() => Ok(Incoming::Notification {
                method,
                params: w.params,
            }),
            (None, Some(result), None) => Ok(Incoming::Response {
                id: w.id.unwrap_or(serde_json::Value::Null),
                outcome: Ok(result),
            }),
            (None, None, Some(error)) => Ok(Incoming::Response {
                id: w.id.unwrap_or(serde_json::Value::Null),
                outcome: Err(error),
            }),
            _ => Err(EnvelopeError::Invalid(
                "neither a response nor a notification".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn a_request_splits_into_id_method_and_params() {
        let e =
            Envelope::parse(br#"{"jsonrpc":"2.0","id":7,"method":"status","params":{}}"#).unwrap();
        assert_eq!(e.id.as_json(), "7");
        assert_eq!(e.method, "status");
        assert_eq!(e.params.unwrap().get(), "{}");
    }

    #[test]
    fn string_ids_are_echoed_verbatim_and_null_params_are_absent() {
        let e = Envelope::parse(br#"{"jsonrpc":"2.0","id":"a\u0041","method":"x","params":null}"#)
            .unwrap();
        assert_eq!(e.id.as_json(), r#""a\u0041""#);
        assert!(e.params.is_none());
    }

    #[test]
    fn malformed_frames_are_parse_or_invalid_request_errors() {
        let cases: &[(&[u8], i32)] = &[
            (b"{", code::PARSE_ERROR),
            (b"\xff\xfe", code::PARSE_ERROR),
            (b"[]", code::INVALID_REQUEST),
            (b"42", code::INVALID_REQUEST),
            (
                br#"{"jsonrpc":"1.0","id":1,"method":"x"}"#,
                code::INVALID_REQUEST,
            ),
            (br#"{"jsonrpc":"2.0","method":"x"}"#, code::INVALID_REQUEST),
            (
                br#"{"jsonrpc":"2.0","id":null,"method":"x"}"#,
                code::INVALID_REQUEST,
            ),
            (
                br#"{"jsonrpc":"2.0","id":{},"method":"x"}"#,
                code::INVALID_REQUEST,
            ),
            (
                br#"{"jsonrpc":"2.0","id":true,"method":"x"}"#,
                code::INVALID_REQUEST,
            ),
            (br#"{"jsonrpc":"2.0","id":1}"#, code::INVALID_REQUEST),
            (
                br#"{"jsonrpc":"2.0","id":1,"method":"x","extra":1}"#,
                code::INVALID_REQUEST,
            ),
            (
                br#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
                code::INVALID_REQUEST,
            ),
        ];
        for (frame, want) in cases {
            let err = Envelope::parse(frame).unwrap_err();
            assert_eq!(err.code(), *want, "{}", String::from_utf8_lossy(frame));
        }
        let long = format!(
            r#"{{"jsonrpc":"2.0","id":"{}","method":"x"}}"#,
            "a".repeat(200)
        );
        assert_eq!(
            Envelope::parse(long.as_bytes()).unwrap_err().code(),
            code::INVALID_REQUEST
        );
    }

    #[test]
    fn framed_answers_are_the_unframed_ones_with_their_length_in_front() {
        let id = Id::number(9);
        let result = serde_json::json!({"status": "ok"});
        let plain = result_response(&id, &result).unwrap();
        let framed = result_frame(&id, &result).unwrap();
        assert_eq!(framed[..4], (plain.len() as u32).to_be_bytes());
        assert_eq!(framed[4..], plain[..]);
        let err = RpcError::new(ErrorKind::Busy, "full", "c".into());
        let plain = error_response(None, &err).unwrap();
        let framed = error_frame(None, &err).unwrap();
        assert_eq!(
            (&framed[..4], &framed[4..]),
            (&(plain.len() as u32).to_be_bytes()[..], &plain[..])
        );
    }

    #[test]
    fn responses_and_notifications_parse_back_on_the_client_side() {
        let id = Id::number(3);
        let ok = result_response(&id, &serde_json::json!({"a":1})).unwrap();
        match Incoming::parse(&ok).unwrap() {
            Incoming::Response { id, outcome } => {
                assert_eq!(id, 3);
                assert_eq!(outcome.unwrap().get(), r#"{"a":1}"#);
            }
            other => panic!("{other:?}"),
        }
        let err = RpcError::new(ErrorKind::Busy, "full", "c".into()).retry_after_ms(5);
        let bytes = error_response(None, &err).unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32004,"message":"full","data":{"kind":"busy","correlation_id":"c","retry_after_ms":5}}}"#
        );
        match Incoming::parse(&bytes).unwrap() {
            Incoming::Response { outcome, .. } => assert_eq!(outcome.unwrap_err(), err),
            other => panic!("{other:?}"),
        }
        let n = notification("lagged", &serde_json::json!({"dropped": 2})).unwrap();
        assert!(
            matches!(Incoming::parse(&n).unwrap(), Incoming::Notification { method, .. } if method == "lagged")
        );
    }
}
