//! One enrollment exchange (`POST /v1/enroll`) and what its answer means. It owns the HTTPS
//! client (no redirects, no proxies, bounded answers, the shared TLS configuration) and the
//! mapping from status codes to [`Answer`]; what to do next (store, wait how long, stop) is
//! [`crate::agent`]'s. It must never log the enrollment key or a machine key, nor follow a
//! redirect that would carry the enrollment key elsewhere.

use std::sync::Arc;
use std::time::Duration;

use warden_fleet_proto::enroll::ENROLL_PATH;
use warden_fleet_proto::{Disposition, EnrollRequest, Enrolled, ErrorBody, ErrorKind, MachineKey};

use crate::config::AgentConfig;

/// Largest answer body read.
const MAX_BODY: usize = 64 * 1024;
/// Longest `Retry-After` believed (a day); a longer one is read as a day.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// What an enrollment attempt got.
#[derive(Debug)]
pub enum Answer {
    /// 201 or 200: a machine key to store.
    Enrolled {
        key: MachineKey,
        disposition: Disposition,
    },
    /// 202: a likely clone; no key until an operator approves.
    Pending,
    /// 401 (wrong/unknown site or key), 403 (banned), or another 4xx: this request will not
    /// work as it is.
    Rejected {
        status: u16,
        kind: Option<ErrorKind>,
        message: String,
    },
    /// 409: the machine is bound to another site; nothing will change without an operator.
    SiteConflict { message: String },
    /// 429 or 503 with `Retry-After`.
    RetryAfter { status: u16, after: Duration },
    /// No usable answer: network error, 5xx, 429/503 without `Retry-After`, a malformed body.
    Failed { reason: String },
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("building the HTTPS client: {0}")]
pub struct ClientError(String);

/// The enrollment endpoint's client.
#[derive(Debug, Clone)]
pub struct EnrollClient {
    http: reqwest::Client,
    url: String,
}

impl EnrollClient {
    pub fn new(
        cfg: &AgentConfig,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<EnrollClient, ClientError> {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(rustls::ClientConfig::clone(tls))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .https_only(!cfg.dev)
            .connect_timeout(cfg.timings.connect_timeout)
            .timeout(cfg.timings.request_timeout)
            .user_agent(concat!("warden-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError(e.to_string()))?;
        Ok(EnrollClient {
            http,
            url: format!("{}{ENROLL_PATH}", cfg.server.base),
        })
    }

    /// Sends `req` once and says what came back.
    pub async fn attempt(&self, req: &EnrollRequest) -> Answer {
        let body = match serde_json::to_vec(req) {
            Ok(b) => b,
            Err(e) => {
                return Answer::Failed {
                    reason: format!("encoding the request: {e}"),
                };
            }
        };
        let sent = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => {
                return Answer::Failed {
                    reason: format!("cannot reach {}: {}", self.url, chain(&e)),
                };
            }
        };
        let status = resp.status().as_u16();
        let retry_after = retry_after(resp.headers().get(reqwest::header::RETRY_AFTER));
        let mut bytes = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(c)) if bytes.len() + c.len() <= MAX_BODY => bytes.extend_from_slice(&c),
                Ok(Some(_)) => {
                    return Answer::Failed {
                        reason: format!("answer {status} is over {MAX_BODY} bytes"),
                    };
                }
                Ok(None) => break,
                Err(e) => {
                    return Answer::Failed {
                        reason: format!("reading answer {status}: {}", chain(&e)),
                    };
                }
            }
        }
        classify(status, retry_after, &bytes)
    }
}

/// The status, `Retry-After` and body of an answer, read.
pub fn classify(status: u16, retry_after: Option<Duration>, body: &[u8]) -> Answer {
    let error = || {
        serde_json::from_slice::<ErrorBody>(body)
            .ok()
            .map(|b| b.error)
    };
    match status {
        200 | 201 => match serde_json::from_slice::<Enrolled>(body) {
            Ok(Enrolled {
                machine_key: Some(key),
                disposition,
                ..
            }) => Answer::Enrolled { key, disposition },
            Ok(_) => Answer::Failed {
                reason: format!("answer {status} carries no machine key"),
            },
            // serde_json names the position, not the text: no key leaks into the reason.
            Err(e) => Answer::Failed {
                reason: format!("answer {status} is malformed: {e}"),
            },
        },
        202 => Answer::Pending,
        409 => Answer::SiteConflict {
            message: error().map_or_else(|| "bound to another site".into(), |e| e.message),
        },
        429 | 503 => match retry_after {
            Some(after) => Answer::RetryAfter { status, after },
            None => Answer::Failed {
                reason: format!("answer {status} without Retry-After"),
            },
        },
        400..=499 => {
            let e = error();
            Answer::Rejected {
                status,
                kind: e.as_ref().map(|e| e.kind),
                message: e.map(|e| e.message).unwrap_or_default(),
            }
        }
        _ => Answer::Failed {
            reason: format!("answer {status}"),
        },
    }
}

/// `Retry-After` in seconds (the server never sends a date), capped at a day.
pub fn retry_after(v: Option<&reqwest::header::HeaderValue>) -> Option<Duration> {
    let secs: u64 = v?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// An error and its causes on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: each status maps to its outcome, and a 2xx without a key is not success.
    #[test]
    fn statuses() {
        let key = format!("wmk_{}", "ab".repeat(32));
        let id = format!("muid_{}", "cd".repeat(32));
        let ok = format!(
            r#"{{"machine_id":"{id}","machine_key":"{key}","state":"active","disposition":"new"}}"#
        );
        assert!(matches!(
            classify(201, None, ok.as_bytes()),
            Answer::Enrolled {
                disposition: Disposition::New,
                ..
            }
        ));
        let nokey = format!(r#"{{"machine_id":"{id}","state":"pending","disposition":"pending"}}"#);
        assert!(matches!(
            classify(200, None, nokey.as_bytes()),
            Answer::Failed { .. }
        ));
        assert!(matches!(
            classify(202, None, nokey.as_bytes()),
            Answer::Pending
        ));
        let err = br#"{"error":{"kind":"enroll_rejected","message":"no","correlation_id":"c"}}"#;
        assert!(matches!(
            classify(401, None, err),
            Answer::Rejected {
                status: 401,
                kind: Some(ErrorKind::EnrollRejected),
                ..
            }
        ));
        assert!(matches!(
            classify(409, None, err),
            Answer::SiteConflict { .. }
        ));
        let s = Duration::from_secs(7);
        assert!(matches!(
            classify(429, Some(s), b""),
            Answer::RetryAfter { status: 429, after } if after == s
        ));
        assert!(matches!(classify(503, None, b""), Answer::Failed { .. }));
        assert!(matches!(classify(500, None, b""), Answer::Failed { .. }));
        let e = classify(201, None, format!("{{\"machine_key\":\"{key}\"").as_bytes());
        assert!(!format!("{e:?}").contains(&key));
    }
}
