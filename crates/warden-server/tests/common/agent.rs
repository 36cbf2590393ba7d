//! A lean agent's side of the link, speaking the real protocol: open a link with a machine key,
//! read the next message, wait for a message type, send one.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::TestServer;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a link: the socket, or the refusal's status, kind and Retry-After.
pub async fn connect(s: &TestServer, key: &str) -> Result<Ws, (u16, String, Option<String>)> {
    connect_at(s.running.addr, key).await
}

/// Opens a link to the server at `addr`.
pub async fn connect_at(addr: SocketAddr, key: &str) -> Result<Ws, (u16, String, Option<String>)> {
    let mut req = format!("ws://{addr}/v1/agent/link")
        .into_client_request()
        .unwrap();
    let h = req.headers_mut();
    h.insert("authorization", format!("Bearer {key}").parse().unwrap());
    h.insert("x-warden-agent-version", "0.1.0-test".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            let body: Value = r
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            Err((
                r.status().as_u16(),
                body["error"]["kind"].as_str().unwrap_or("").to_owned(),
                retry,
            ))
        }
        Err(e) => panic!("link: {e}"),
    }
}

/// The next JSON message, or `None` when the link closed, within `within`.
pub async fn next(ws: &mut Ws, within: Duration) -> Option<Value> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => panic!("nothing arrived within {within:?}"),
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return None,
            Ok(Some(Ok(Message::Text(t)))) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Reads until a message of `kind` arrives (answering nothing); `None` if the link closed.
pub async fn until(ws: &mut Ws, kind: &str, within: Duration) -> Option<Value> {
    let deadline = Instant::now() + within;
    loop {
        let m = next(ws, deadline.saturating_duration_since(Instant::now())).await?;
        if m["type"] == kind {
            return Some(m);
        }
    }
}

pub async fn say(ws: &mut Ws, m: Value) {
    ws.send(Message::Text(m.to_string().into())).await.unwrap();
}

/// Opens a link to `addr`, or `None` for any failure (for agents that retry).
pub async fn try_connect_at(addr: SocketAddr, key: &str) -> Option<Ws> {
    let mut req = format!("ws://{addr}/v1/agent/link")
        .into_client_request()
        .ok()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {key}").parse().ok()?);
    tokio_tungstenite::connect_async(req)
        .await
        .ok()
        .map(|(ws, _)| ws)
}

/// The next message that is not a heartbeat; `None` when the link closed.
pub async fn next_news(ws: &mut Ws, within: Duration) -> Option<Value> {
    let deadline = Instant::now() + within;
    loop {
        let m = next(ws, deadline.saturating_duration_since(Instant::now())).await?;
        if m["type"] != "heartbeat" {
            return Some(m);
        }
    }
}

/// Opens a link again right after this test dropped the machine's previous one: the server
/// frees the key once it has seen that link close, so `duplicate_link` is retried for a while.
pub async fn reconnect(s: &TestServer, key: &str) -> Ws {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match connect(s, key).await {
            Ok(ws) => return ws,
            Err((409, kind, _))
                if kind == "duplicate_link" && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("reconnect: {e:?}"),
        }
    }
}
