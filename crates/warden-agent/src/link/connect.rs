//! Opening the link: TCP, TLS (verified with the shared configuration), and the WebSocket
//! upgrade with the machine key and the agent's version, with explicit small buffers. A refusal
//! before the upgrade is read into a [`Refusal`] by its status and error kind (the table in
//! `warden_fleet_proto::link`). It must never log the request (it carries the key).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use warden_fleet_proto::link::{AGENT_VERSION_HEADER, LINK_PATH, MAX_MESSAGE};
use warden_fleet_proto::{ErrorBody, ErrorKind, MachineKey};

use crate::config::AgentConfig;
use crate::enroll::MAX_RETRY_AFTER;

/// The read buffer: a heartbeat is a few dozen bytes; a larger message grows past it.
pub const READ_BUFFER: usize = 4 * 1024;
/// Most bytes queued for writing before a send fails (backpressure instead of growth).
pub const MAX_WRITE_BUFFER: usize = 64 * 1024 + MAX_MESSAGE;

/// The WebSocket settings of the link: small buffers, messages and frames capped at
/// [`MAX_MESSAGE`].
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// The byte stream under the WebSocket: plain TCP (`--dev`) or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub type Link = WebSocketStream<Box<dyn Io>>;

/// Why the server turned the link away before the upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401: the key is not (or no longer) live.
    Unauthorized,
    /// 403 `quarantined`: a retired key was replayed; an admin must clear the machine.
    Quarantined,
    /// 403 otherwise: banned.
    Forbidden,
    /// 409 `duplicate_link`: this key already holds a live link.
    DuplicateLink,
    /// 503 (or 429): full or stopping.
    Unavailable { retry_after: Option<Duration> },
    /// Any other status (404 before the server has the endpoint, 5xx, …).
    Other { status: u16 },
}

/// Why the link could not be opened.
#[derive(Debug)]
pub enum ConnectError {
    Refused(Refusal),
    /// Network, TLS or handshake failure.
    Failed(String),
}

/// Reads a refusal from its status, `Retry-After` and body.
pub fn refusal(status: u16, retry_after: Option<Duration>, body: &[u8]) -> Refusal {
    let kind = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|b| b.error.kind);
    match (status, kind) {
        (401, _) => Refusal::Unauthorized,
        (403, Some(ErrorKind::Quarantined)) => Refusal::Quarantined,
        (403, _) => Refusal::Forbidden,
        (409, _) => Refusal::DuplicateLink,
        (429 | 503, _) => Refusal::Unavailable { retry_after },
        (status, _) => Refusal::Other { status },
    }
}

/// Opens the link to `cfg.server` with `key`.
pub async fn connect(
    cfg: &AgentConfig,
    tls: &Arc<rustls::ClientConfig>,
    key: &MachineKey,
) -> Result<Link, ConnectError> {
    let failed =
        |what: &str, e: &dyn std::fmt::Display| ConnectError::Failed(format!("{what}: {e}"));
    let deadline = cfg.timings.connect_timeout;
    let addr = (cfg.server.bare_host(), cfg.server.port);
    let tcp = tokio::time::timeout(deadline, TcpStream::connect(addr))
        .await
        .map_err(|e| failed("connect", &e))?
        .map_err(|e| {
            failed(
                &format!("connect to {}:{}", cfg.server.host, cfg.server.port),
                &e,
            )
        })?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = if cfg.server.tls {
        let name = rustls::pki_types::ServerName::try_from(cfg.server.bare_host().to_owned())
            .map_err(|e| failed("server name", &e))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(tls));
        let stream = tokio::time::timeout(deadline, tls.connect(name, tcp))
            .await
            .map_err(|e| failed("TLS handshake", &e))?
            .map_err(|e| failed("TLS handshake", &e))?;
        Box::new(stream)
    } else {
        Box::new(tcp)
    };
    let mut request = cfg
        .server
        .ws(LINK_PATH)
        .into_client_request()
        .map_err(|e| failed("link request", &e))?;
    let mut auth = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
        .map_err(|_| ConnectError::Failed("the machine key is not a header value".into()))?;
    auth.set_sensitive(true);
    let headers = request.headers_mut();
    headers.insert(header::AUTHORIZATION, auth);
    headers.insert(
        AGENT_VERSION_HEADER,
        HeaderValue::from_static(env!("CARGO_PKG_VERSION")),
    );
    let upgrade = tokio_tungstenite::client_async_with_config(request, io, Some(ws_config()));
    match tokio::time::timeout(deadline, upgrade).await {
        Err(e) => Err(failed("upgrade", &e)),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(WsError::Http(resp))) => {
            let retry_after = resp
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
            let body = resp.body().as_deref().unwrap_or_default();
            Err(ConnectError::Refused(refusal(
                resp.status().as_u16(),
                retry_after,
                body,
            )))
        }
        Ok(Err(e)) => Err(failed("upgrade", &describe(&e))),
    }
}

/// A WebSocket error in words, without any request or message content.
pub fn describe(e: &WsError) -> String {
    match e {
        WsError::Io(io) => format!("i/o: {io}"),
        WsError::Tls(t) => format!("TLS: {t}"),
        WsError::Capacity(c) => format!("capacity: {c}"),
        WsError::Protocol(p) => format!("protocol: {p}"),
        WsError::WriteBufferFull(_) => "write buffer full".into(),
        WsError::Url(u) => format!("url: {u}"),
        WsError::Http(r) => format!("HTTP {}", r.status()),
        WsError::HttpFormat(h) => format!("HTTP format: {h}"),
        WsError::ConnectionClosed | WsError::AlreadyClosed => "closed".into(),
        WsError::Utf8(_) => "invalid UTF-8".into(),
        WsError::AttackAttempt => "attack attempt".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: refusals before the upgrade follow the table in warden_fleet_proto::link.
    #[test]
    fn refusal_table() {
        let body =
            |k: &str| format!(r#"{{"error":{{"kind":"{k}","message":"m","correlation_id":"c"}}}}"#);
        let s = Some(Duration::from_secs(3));
        assert_eq!(refusal(401, None, b""), Refusal::Unauthorized);
        assert_eq!(
            refusal(403, None, body("quarantined").as_bytes()),
            Refusal::Quarantined
        );
        assert_eq!(
            refusal(403, None, body("forbidden").as_bytes()),
            Refusal::Forbidden
        );
        assert_eq!(refusal(403, None, b"junk"), Refusal::Forbidden);
        assert_eq!(
            refusal(409, None, body("duplicate_link").as_bytes()),
            Refusal::DuplicateLink
        );
        assert_eq!(
            refusal(503, s, b""),
            Refusal::Unavailable { retry_after: s }
        );
        assert_eq!(refusal(404, None, b""), Refusal::Other { status: 404 });
    }
}
