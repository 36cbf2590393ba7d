//! A blocking client that speaks raw frames, for tests that must send what no well-behaved
//! client would: bad lengths, partial frames, garbage, pipelines.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

/// How long a test waits for the daemon before calling it stuck.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// One raw connection.
#[derive(Debug)]
pub struct RawClient {
    pub stream: UnixStream,
}

impl RawClient {
    pub fn connect(path: &Path) -> RawClient {
        let stream = UnixStream::connect(path).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.set_write_timeout(Some(PATIENCE)).unwrap();
        RawClient { stream }
    }

    /// Connects and completes `hello`.
    pub fn hello(path: &Path) -> RawClient {
        let mut c = RawClient::connect(path);
        let r = c.call(1, "hello", json!({"protocol": 1, "client": "test"}));
        assert!(r.get("result").is_some(), "hello failed: {r}");
        c
    }

    /// Writes raw bytes.
    pub fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Writes one frame with `body`.
    pub fn send_frame(&mut self, body: &[u8]) {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        self.write(&f);
    }

    /// Writes a request.
    pub fn send(&mut self, id: u64, method: &str, params: Value) {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.send_frame(body.to_string().as_bytes());
    }

    /// Reads one frame; `None` if the daemon closed the connection first.
    pub fn recv_frame(&mut self) -> Option<Vec<u8>> {
        let mut header = [0u8; 4];
        match self.stream.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("reading a frame header: {e}"),
        }
        let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
        self.stream.read_exact(&mut body).unwrap();
        Some(body)
    }

    /// Reads one frame as JSON; panics if the connection closed.
    pub fn recv(&mut self) -> Value {
        let f = self.recv_frame().expect("the daemon closed the connection");
        serde_json::from_slice(&f).unwrap()
    }

    /// Sends a request and reads the next frame.
    pub fn call(&mut self, id: u64, method: &str, params: Value) -> Value {
        self.send(id, method, params);
        self.recv()
    }

    /// Whether the daemon closes the connection within `wait`; `false` if it is still open then.
    pub fn closes_within(&mut self, wait: Duration) -> bool {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut b = [0u8; 1];
        let closed = match self.stream.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        };
        self.stream.set_read_timeout(Some(PATIENCE)).unwrap();
        closed
    }

    /// Whether the daemon has closed the connection (reads end of stream, or a reset).
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        match self.stream.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

/// The `error.data.kind` of an answer, if it is an error.
pub fn error_kind(answer: &Value) -> Option<&str> {
    answer.pointer("/error/data/kind").and_then(Value::as_str)
}
