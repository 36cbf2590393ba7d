//! The varlink face of the daemon: NUL-terminated JSON messages on a listener configured with
//! `protocol = "varlink"`, translated one to one into the daemon's own JSON-RPC requests, so every
//! call goes through the same [`crate::dispatch`] path (identity from the kernel, gate, tiers,
//! brakes, rate limits, audit) as on the warden socket.
//!
//! It owns only the translation and `org.varlink.service` introspection. It must never decide
//! who the caller is or whether a call is allowed: nothing in a varlink message reaches the gate
//! except as the parameters of an ordinary request.

mod idl;

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use serde_json::{Map, Value, json};
use warden_proto::FrameError;

pub(crate) use idl::IDL;

/// The varlink name of each method, the daemon method it stands for, and the reply field that
/// carries the daemon's answer (`None`: the answer's own fields are the reply's).
const METHODS: &[(&str, &str, Option<&str>)] = &[
    ("Status", "status", Some("status")),
    ("Whoami", "whoami", Some("whoami")),
    ("ListActions", "actions.list", None),
    ("StartJob", "job.start", Some("job")),
    ("GetJob", "job.get", Some("job")),
    ("WaitJob", "job.wait", Some("job")),
    ("CancelJob", "job.cancel", Some("job")),
    ("JobLogs", "job.logs", None),
    ("WatchJob", "job.watch", Some("job")),
];

/// What one varlink message became.
pub(crate) enum Inbound {
    /// A JSON-RPC request body for [`crate::dispatch::handle`].
    Request(Bytes),
    /// An answer the translation gives itself (introspection, unknown methods, malformed
    /// messages); `close` after a message that was not a varlink call.
    Reply { bytes: Vec<u8>, close: bool },
}

/// A call waiting for its answer.
struct Pending {
    oneway: bool,
    more: bool,
    field: Option<&'static str>,
}

/// Per-connection translation state.
pub(crate) struct Codec {
    max_frame: u32,
    /// JSON-RPC ids given to the calls translated so far.
    next_id: u64,
    /// Why: the answer comes back by id, and the varlink reply needs to know whether the call
    /// was oneway (no reply) or `more` (progress as `continues`).
    pending: HashMap<u64, Pending>,
}

/// The daemon version in `GetInfo`.
const VERSION: &str = env!("CARGO_PKG_VERSION");

impl Codec {
    pub(crate) fn new(max_frame: u32) -> Codec {
        Codec {
            max_frame,
            next_id: 1,
            pending: HashMap::new(),
        }
    }

    /// Whether a call still waits for its reply.
    pub(crate) fn busy(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The implicit `hello` that opens every varlink connection (varlink has no handshake).
    pub(crate) fn hello() -> Vec<u8> {
        json!({"jsonrpc": "2.0", "id": 0, "method": "hello",
            "params": {"protocol": 1, "client": "varlink"}})
        .to_string()
        .into_bytes()
    }

    /// Takes one message off `buf`. A message without its NUL within `max_frame` bytes is a
    /// framing violation, as an oversized frame is on the warden socket.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, FrameError> {
        let Some(end) = buf.iter().position(|b| *b == 0) else {
            if buf.len() > self.max_frame as usize {
                return Err(FrameError::TooLarge {
                    len: u32::try_from(buf.len()).unwrap_or(u32::MAX),
                    max: self.max_frame,
                });
            }
            return Ok(None);
        };
        if end > self.max_frame as usize {
            return Err(FrameError::TooLarge {
                len: u32::try_from(end).unwrap_or(u32::MAX),
                max: self.max_frame,
            });
        }
        if end == 0 {
            let _ = buf.split_to(1);
            return Err(FrameError::Empty {
                max: self.max_frame,
            });
        }
        let msg = buf.split_to(end + 1);
        Ok(Some(self.translate(&msg[..end])))
    }

    fn translate(&mut self, msg: &[u8]) -> Inbound {
        let Ok(Value::Object(mut call)) = serde_json::from_slice::<Value>(msg) else {
            return Inbound::Reply {
                bytes: error_reply(
                    "org.varlink.service.InvalidParameter",
                    json!({"parameter": "message", "message": "not a JSON object"}),
                ),
                close: true,
            };
        };
        let Some(Value::String(method)) = call.remove("method") else {
            return Inbound::Reply {
                bytes: error_reply(
                    "org.varlink.service.InvalidParameter",
                    json!({"parameter": "method", "message": "a call names its method"}),
                ),
                close: true,
            };
        };
        let oneway = call.get("oneway").and_then(Value::as_bool).unwrap_or(false);
        let more = call.get("more").and_then(Value::as_bool).unwrap_or(false);
        let params = match call.remove("parameters") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m,
            Some(_) => {
                return self.reply_unless_oneway(
                    oneway,
                    error_reply(
                        "org.varlink.service.InvalidParameter",
                        json!({"parameter": "parameters"}),
                    ),
                );
            }
        };
        let (iface, name) = method.rsplit_once('.').unwrap_or(("", method.as_str()));
        match iface {
            "org.varlink.service" => {
                let reply = match name {
                    "GetInfo" => ok_reply(json!({
                        "vendor": "warden",
                        "product": "wardend",
                        "version": VERSION,
                        "url": "https://github.com/warden/warden",
                        "interfaces": ["org.varlink.service", "io.warden"],
                    })),
                    "GetInterfaceDescription" => {
                        match params.get("interface").and_then(Value::as_str) {
                            Some("io.warden") => ok_reply(json!({"description": IDL})),
                            Some("org.varlink.service") => {
                                ok_reply(json!({"description": idl::SERVICE_IDL}))
                            }
                            Some(other) => error_reply(
                                "org.varlink.service.InterfaceNotFound",
                                json!({"interface": cut(other)}),
                            ),
                            None => error_reply(
                                "org.varlink.service.InvalidParameter",
                                json!({"parameter": "interface"}),
                            ),
                        }
                    }
                    _ => method_not_found(&method),
                };
                self.reply_unless_oneway(oneway, reply)
            }
            "io.warden" => match METHODS.iter().find(|(v, _, _)| *v == name) {
                Some((_, daemon_method, field)) => {
                    let id = self.next_id;
                    self.next_id += 1;
                    self.pending.insert(
                        id,
                        Pending {
                            oneway,
                            more,
                            field: *field,
                        },
                    );
                    let body = json!({"jsonrpc": "2.0", "id": id, "method": daemon_method,
                        "params": Value::Object(params)});
                    Inbound::Request(Bytes::from(body.to_string()))
                }
                None => self.reply_unless_oneway(oneway, method_not_found(&method)),
            },
            _ => self.reply_unless_oneway(
                oneway,
                error_reply(
                    "org.varlink.service.InterfaceNotFound",
                    json!({"interface": cut(iface)}),
                ),
            ),
        }
    }

    fn reply_unless_oneway(&self, oneway: bool, bytes: Vec<u8>) -> Inbound {
        Inbound::Reply {
            bytes: if oneway { Vec::new() } else { bytes },
            close: false,
        }
    }

    /// Turns one framed JSON-RPC answer or notification into a varlink reply; `None` when the
    /// caller asked for none (oneway) or nothing waits for it.
    pub(crate) fn encode(&mut self, frame: &[u8]) -> Option<Vec<u8>> {
        let body = frame.get(warden_proto::frame::HEADER_LEN..)?;
        let Ok(Value::Object(mut answer)) = serde_json::from_slice::<Value>(body) else {
            return None;
        };
        let id = answer.get("id").and_then(Value::as_u64);
        let Some(id) = id else {
            if answer.contains_key("method") {
                // A notification (job progress, output): it belongs to a `more` call.
                let field = self.pending.values().find(|p| p.more)?.field;
                let params = answer.remove("params").unwrap_or(Value::Null);
                return Some(reply_bytes(
                    json!({"parameters": wrap(field, params), "continues": true}),
                ));
            }
            // An error about no readable request (framing): said once before the close.
            return answer.remove("error").map(error_from);
        };
        if id == 0 {
            // The implicit hello's answer is not the caller's.
            return answer.remove("error").map(error_from);
        }
        let pending = self.pending.remove(&id)?;
        if pending.oneway {
            return None;
        }
        if let Some(err) = answer.remove("error") {
            return Some(error_from(err));
        }
        let result = answer.remove("result").unwrap_or(Value::Null);
        Some(ok_reply(wrap(pending.field, result)))
    }
}

/// The refusal of a call answered here when the peer's request tokens ran out.
pub(crate) fn rate_limited(retry_after_ms: u64) -> Vec<u8> {
    error_reply(
        "io.warden.RateLimited",
        json!({"message": "too many requests", "correlation_id": crate::call::correlation_id(),
            "retry_after_ms": retry_after_ms}),
    )
}

/// Varlink parameters are always an object: the answer under its field, or its own fields.
fn wrap(field: Option<&str>, v: Value) -> Value {
    match (field, v) {
        (Some(f), v) => json!({ f: v }),
        (None, v @ Value::Object(_)) => v,
        (None, Value::Null) => json!({}),
        (None, other) => json!({"result": other}),
    }
}

fn reply_bytes(v: Value) -> Vec<u8> {
    let mut out = v.to_string().into_bytes();
    out.push(0);
    out
}

fn ok_reply(params: Value) -> Vec<u8> {
    reply_bytes(json!({"parameters": params}))
}

fn error_reply(error: &str, params: Value) -> Vec<u8> {
    reply_bytes(json!({"error": error, "parameters": params}))
}

fn method_not_found(method: &str) -> Vec<u8> {
    error_reply(
        "org.varlink.service.MethodNotFound",
        json!({"method": cut(method)}),
    )
}

/// Caller text quoted back, cut short.
fn cut(s: &str) -> String {
    s.chars().take(200).collect()
}

/// A daemon error as `io.warden.<Kind>` with `{message, correlation_id, …}`.
fn error_from(err: Value) -> Vec<u8> {
    let message = err.get("message").cloned().unwrap_or(Value::Null);
    let data = err.get("data").cloned().unwrap_or(Value::Null);
    let kind = data
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("internal")
        .to_owned();
    let mut params = Map::new();
    params.insert("message".into(), message);
    if let Value::Object(d) = data {
        for (k, v) in d {
            if k != "kind" {
                params.insert(k, v);
            }
        }
    }
    error_reply(
        &format!("io.warden.{}", camel(&kind)),
        Value::Object(params),
    )
}

/// `rate_limited` → `RateLimited`.
fn camel(kind: &str) -> String {
    kind.split('_')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_uppercase().chain(c).collect::<String>(),
                None => String::new(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(i: Inbound) -> Value {
        match i {
            Inbound::Reply { bytes, .. } => {
                assert_eq!(bytes.last(), Some(&0));
                serde_json::from_slice(&bytes[..bytes.len() - 1]).unwrap()
            }
            Inbound::Request(_) => panic!("expected a reply"),
        }
    }

    /// Pins: a message is complete only at its NUL, and one past max_frame without it is refused.
    #[test]
    fn messages_end_at_nul_and_are_bounded() {
        let mut c = Codec::new(64);
        let mut buf = BytesMut::from(&b"{\"method\":\"io.warden.Status\"}"[..]);
        assert!(c.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"\0");
        match c.decode(&mut buf).unwrap() {
            Some(Inbound::Request(b)) => {
                let v: Value = serde_json::from_slice(&b).unwrap();
                assert_eq!(v["method"], "status");
                assert_eq!(v["id"], 1);
            }
            _ => panic!("expected a request"),
        }
        let mut big = BytesMut::from(&[b'x'; 65][..]);
        assert!(matches!(
            c.decode(&mut big),
            Err(FrameError::TooLarge { .. })
        ));
    }

    /// Pins: docs/PROTOCOL.md shows the io.warden IDL exactly as GetInterfaceDescription
    /// returns it.
    #[test]
    fn the_protocol_doc_shows_the_idl() {
        let doc = include_str!("../../../../docs/PROTOCOL.md");
        assert!(
            doc.contains(IDL),
            "docs/PROTOCOL.md is missing the current io.warden IDL"
        );
    }

    /// Pins: unknown methods and interfaces get the standard org.varlink.service errors.
    #[test]
    fn unknown_methods_and_interfaces_are_named() {
        let mut c = Codec::new(1024);
        let mut buf =
            BytesMut::from(&b"{\"method\":\"io.warden.Nope\"}\0{\"method\":\"x.y.Z\"}\0"[..]);
        let a = reply(c.decode(&mut buf).unwrap().unwrap());
        assert_eq!(a["error"], "org.varlink.service.MethodNotFound");
        let b = reply(c.decode(&mut buf).unwrap().unwrap());
        assert_eq!(b["error"], "org.varlink.service.InterfaceNotFound");
    }

    /// Pins: daemon errors become io.warden.<Kind> with the message and correlation id.
    #[test]
    fn daemon_errors_keep_kind_and_correlation() {
        let mut c = Codec::new(1024);
        let mut buf = BytesMut::from(&b"{\"method\":\"io.warden.Status\"}\0"[..]);
        let _ = c.decode(&mut buf).unwrap();
        let body = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32005,"message":"slow down","data":{"kind":"rate_limited","correlation_id":"ab"}}}"#;
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        let out = c.encode(&frame).unwrap();
        let v: Value = serde_json::from_slice(&out[..out.len() - 1]).unwrap();
        assert_eq!(v["error"], "io.warden.RateLimited");
        assert_eq!(v["parameters"]["message"], "slow down");
        assert_eq!(v["parameters"]["correlation_id"], "ab");
    }
}
