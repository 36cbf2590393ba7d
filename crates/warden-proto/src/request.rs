//! Typed requests: a method plus its params, parsed once at the edge with unknown fields refused,
//! so handlers never see raw JSON.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::method::Method;

/// Longest client name accepted in `hello`, in characters.
pub const MAX_CLIENT_NAME: usize = 64;
/// Most feature names accepted in `hello`.
pub const MAX_FEATURES: usize = 32;

/// A request whose params have been validated.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Hello(HelloParams),
    Health,
    Version,
    Whoami,
    Status,
}

/// Params of `hello`, the mandatory first request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HelloParams {
    /// Protocol version the client speaks.
    pub protocol: u32,
    /// What the client calls itself; recorded for attribution, never trusted for identity.
    pub client: ClientName,
    /// Optional protocol features the client can use.
    #[serde(default)]
    pub features: Vec<FeatureName>,
}

/// A client's self-chosen name: 1 to 64 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClientName(String);

impl ClientName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ClientName {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let chars = s.chars().count();
        if chars == 0 || chars > MAX_CLIENT_NAME {
            return Err(format!(
                "`client` must be 1 to {MAX_CLIENT_NAME} characters"
            ));
        }
        if s.chars().any(char::is_control) {
            return Err("`client` must not contain control characters".into());
        }
        Ok(ClientName(s))
    }
}

impl From<ClientName> for String {
    fn from(c: ClientName) -> String {
        c.0
    }
}

/// A feature name: 1 to 64 of `a-z 0-9 _ . -`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FeatureName(String);

impl FeatureName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for FeatureName {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
        if ok {
            Ok(FeatureName(s))
        } else {
            Err("a feature name is 1 to 64 of a-z, 0-9, `_`, `.`, `-`".into())
        }
    }
}

impl From<FeatureName> for String {
    fn from(f: FeatureName) -> String {
        f.0
    }
}

/// Params that do not fit the method. An ordinary `bad_request`, not a protocol violation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid params for {method}: {reason}")]
pub struct ParamsError {
    pub method: Method,
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

impl Request {
    /// Types the params of `method`. Params must be a JSON object when present.
    pub fn parse(method: Method, params: Option<&RawValue>) -> Result<Request, ParamsError> {
        let raw = params.map_or("{}", RawValue::get);
        if !raw.trim_start().starts_with('{') {
            return Err(ParamsError {
                method,
                reason: "params must be a JSON object".into(),
            });
        }
        Ok(match method {
            Method::Hello => {
                let p: HelloParams = typed(method, raw)?;
                if p.features.len() > MAX_FEATURES {
                    return Err(ParamsError {
                        method,
                        reason: format!("at most {MAX_FEATURES} features"),
                    });
                }
                Request::Hello(p)
            }
            Method::Health => none(method, raw, Request::Health)?,
            Method::Version => none(method, raw, Request::Version)?,
            Method::Whoami => none(method, raw, Request::Whoami)?,
            Method::Status => none(method, raw, Request::Status)?,
        })
    }

    pub fn method(&self) -> Method {
        match self {
            Request::Hello(_) => Method::Hello,
            Request::Health => Method::Health,
            Request::Version => Method::Version,
            Request::Whoami => Method::Whoami,
            Request::Status => Method::Status,
        }
    }
}

fn typed<T: DeserializeOwned>(method: Method, raw: &str) -> Result<T, ParamsError> {
    serde_json::from_str(raw).map_err(|e| ParamsError {
        method,
        reason: e.to_string(),
    })
}

fn none(method: Method, raw: &str, request: Request) -> Result<Request, ParamsError> {
    typed::<NoParams>(method, raw).map(|_| request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn hello_params_are_typed_and_validated() {
        let r = Request::parse(
            Method::Hello,
            Some(&raw(r#"{"protocol":1,"client":"cli","features":["x.y"]}"#)),
        )
        .unwrap();
        let Request::Hello(p) = r else { panic!() };
        assert_eq!(p.client.as_str(), "cli");
        for bad in [
            r#"{"protocol":1}"#,
            r#"{"protocol":1,"client":""}"#,
            r#"{"protocol":1,"client":"a\u0007b"}"#,
            r#"{"protocol":-1,"client":"a"}"#,
            r#"{"protocol":1,"client":"a","features":["UPPER"]}"#,
            r#"{"protocol":1,"client":"a","extra":true}"#,
            r#"[1,"a"]"#,
        ] {
            assert!(
                Request::parse(Method::Hello, Some(&raw(bad))).is_err(),
                "{bad}"
            );
        }
        let long = format!(r#"{{"protocol":1,"client":"{}"}}"#, "é".repeat(65));
        assert!(Request::parse(Method::Hello, Some(&raw(&long))).is_err());
    }

    #[test]
    fn parameterless_methods_accept_nothing_or_an_empty_object_only() {
        for m in [
            Method::Health,
            Method::Version,
            Method::Whoami,
            Method::Status,
        ] {
            assert_eq!(Request::parse(m, None).unwrap().method(), m);
            assert_eq!(Request::parse(m, Some(&raw("{}"))).unwrap().method(), m);
            let err = Request::parse(m, Some(&raw(r#"{"verbose":true}"#))).unwrap_err();
            assert!(err.to_string().contains("unknown field `verbose`"), "{err}");
            assert!(Request::parse(m, Some(&raw("[]"))).is_err());
        }
    }
}
