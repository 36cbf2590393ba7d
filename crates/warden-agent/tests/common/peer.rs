//! A small WebSocket peer speaking `warden_fleet_proto::link` for the link tests: accepts the
//! agent's upgrade (recording its headers) or refuses it before the upgrade, sends server
//! messages, reads agent messages, answers an enrollment, and serves TLS with the test's
//! certificate.

// tungstenite's handshake callback returns its own large error type.
#![allow(clippy::result_large_err)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http;
use warden_fleet_proto::link::{AGENT_VERSION_HEADER, AgentMessage, ServerMessage};
use warden_fleet_proto::{KeyVersion, MachineId};

const LONG: Duration = Duration::from_secs(20);

pub type Ws = WebSocketStream<TcpStream>;

pub fn new_key() -> String {
    format!("wmk_{}", warden_testkit::random_hex(32))
}

pub fn machine() -> MachineId {
    format!("muid_{}", warden_testkit::random_hex(32))
        .parse()
        .unwrap()
}

/// What the agent sent with its upgrade request.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub authorization: String,
    pub version: String,
    pub path: String,
}

/// A refusal before the upgrade: status, error kind, Retry-After seconds.
pub type Refuse = (u16, &'static str, Option<u64>);

/// Accepts the next connection and upgrades it, or refuses it with `refuse`.
pub async fn accept(listener: &TcpListener, refuse: Option<Refuse>) -> (Option<Ws>, Seen) {
    let (tcp, _) = tokio::time::timeout(LONG, listener.accept())
        .await
        .expect("the agent did not connect")
        .unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = Arc::clone(&seen);
    let callback = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let h = |n: &str| {
            req.headers()
                .get(n)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        *record.lock().unwrap() = Seen {
            authorization: h("authorization"),
            version: h(AGENT_VERSION_HEADER),
            path: req.uri().path().to_owned(),
        };
        match refuse {
            None => Ok(resp),
            Some((status, kind, retry_after)) => {
                let body = serde_json::json!({"error": {"kind": kind, "message": "no", "correlation_id": "c1"}});
                let mut b = http::Response::builder().status(status);
                if let Some(s) = retry_after {
                    b = b.header("retry-after", s.to_string());
                }
                Err(b.body(Some(body.to_string())).unwrap())
            }
        }
    };
    let ws = tokio_tungstenite::accept_hdr_async(tcp, callback)
        .await
        .ok();
    let seen = seen.lock().unwrap().clone();
    (ws, seen)
}

pub async fn send(ws: &mut Ws, m: &ServerMessage) {
    ws.send(Message::text(serde_json::to_string(m).unwrap()))
        .await
        .unwrap();
}

pub fn welcome(heartbeat_ms: u64, dead_after_ms: u64, v: u64) -> ServerMessage {
    ServerMessage::Welcome {
        machine_id: machine(),
        key_version: KeyVersion(v),
        heartbeat_ms,
        dead_after_ms,
    }
}

/// The next agent message, skipping control frames; `None` when the link closed.
pub async fn next(ws: &mut Ws, within: Duration) -> Option<AgentMessage> {
    loop {
        match tokio::time::timeout(within, ws.next()).await.ok()?? {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// Answers the next connection, which must be `POST /v1/enroll`, with `status` and `body`;
/// returns the request's JSON.
pub async fn answer_enroll(listener: &TcpListener, status: u16, body: &str) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut tcp, _) = tokio::time::timeout(LONG, listener.accept())
        .await
        .expect("the agent did not enroll")
        .unwrap();
    let mut buf = Vec::new();
    let (head_len, length) = loop {
        let mut chunk = [0u8; 4096];
        let n = tcp.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed mid-request");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..at]).to_lowercase();
            assert!(head.starts_with("post /v1/enroll "), "{head}");
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            break (at + 4, length);
        }
    };
    while buf.len() < head_len + length {
        let mut chunk = [0u8; 4096];
        let n = tcp.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
    let request = serde_json::from_slice(&buf[head_len..head_len + length]).unwrap();
    let reply = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(reply.as_bytes()).await.unwrap();
    let _ = tcp.shutdown().await;
    request
}

/// A TLS acceptor for the test's server certificate.
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}
