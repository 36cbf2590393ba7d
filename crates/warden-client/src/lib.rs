//! warden-client: talk to `wardend` over its Unix socket.
//!
//! [`Client::connect`] opens the socket and performs the `hello` handshake; typed helpers call
//! the daemon's methods; [`Client::call`] sends any method with JSON params. The daemon decides
//! who the caller is from the kernel, so there is nothing here to claim an identity with.

use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use tokio::net::UnixStream;
use warden_proto::envelope::{self, Incoming};
use warden_proto::frame::{read_frame, write_frame};
use warden_proto::jobs::{ActionInfo, ActionList, JobList, JobRecord, JobStarted, JobState};
use warden_proto::messages::{
    AuditVerifyResult, HealthResult, HelloResult, HostIdentityResult, StatusResult, VersionResult,
    WhoamiResult,
};
use warden_proto::{DEFAULT_MAX_FRAME, ErrorKind, Method, PROTOCOL_VERSION, RpcError};

/// Why a call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing is listening (no socket file, or a dead daemon's socket).
    #[error("wardend is not running at {path}: {source}")]
    Unavailable { path: PathBuf, source: io::Error },
    /// The socket's permissions exclude this user.
    #[error("permission denied opening {path}: ask an administrator for access to its group")]
    PermissionDenied { path: PathBuf },
    /// The daemon answered with an error.
    #[error("{0}")]
    Rpc(RpcError),
    /// The connection failed or the daemon closed it.
    #[error("connection to wardend failed: {0}")]
    Io(#[from] io::Error),
    /// The daemon sent something this client does not understand.
    #[error("unexpected answer from wardend: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The daemon's error kind, if the daemon answered with an error.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            ClientError::Rpc(e) => Some(e.kind()),
            _ => None,
        }
    }
}

/// The socket to use when none is given: `$WARDEN_SOCKET`, else the system socket if it exists,
/// else the socket of a `--dev` daemon run by this user.
pub fn default_socket() -> PathBuf {
    if let Some(p) = std::env::var_os("WARDEN_SOCKET").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let system = Path::new(warden_proto::paths::SYSTEM_SOCKET);
    if system.exists() {
        system.to_path_buf()
    } else {
        warden_proto::paths::dev_socket()
    }
}

/// The socket and the request counter, before and after the handshake.
#[derive(Debug)]
struct Wire {
    stream: UnixStream,
    next_id: u64,
    max_frame: u32,
}

impl Wire {
    async fn send<P: Serialize>(&mut self, method: &str, params: &P) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let body = envelope::request(id, method, params)
            .map_err(|e| ClientError::Protocol(format!("cannot encode {method}: {e}")))?;
        write_frame(&mut self.stream, &body, u32::MAX).await?;
        Ok(id)
    }

    async fn receive(&mut self) -> Result<Vec<u8>, ClientError> {
        read_frame(&mut self.stream, self.max_frame)
            .await?
            .ok_or_else(|| ClientError::Io(io::ErrorKind::UnexpectedEof.into()))
    }

    async fn call_raw<P: Serialize>(
        &mut self,
        method: &str,
        params: &P,
    ) -> Result<Box<RawValue>, ClientError> {
        let id = self.send(method, params).await?;
        loop {
            let frame = self.receive().await?;
            match Incoming::parse(&frame).map_err(|e| ClientError::Protocol(e.to_string()))? {
                Incoming::Response { id: got, outcome } if got == id => {
                    return outcome.map_err(ClientError::Rpc);
                }
                // An error the daemon could not tie to a request (e.g. just before it closes).
                Incoming::Response {
                    id: serde_json::Value::Null,
                    outcome: Err(e),
                } => return Err(ClientError::Rpc(e)),
                Incoming::Response { .. } | Incoming::Notification { .. } => continue,
            }
        }
    }
}

impl Wire {
    /// Sends `n` copies of one request while reading the answers, so neither side's socket
    /// buffer can fill up and stall the other. Returns the raw answer frames in arrival order;
    /// fewer than `n` if the daemon closed the connection.
    async fn pipeline<P: Serialize>(
        &mut self,
        method: &str,
        params: &P,
        n: usize,
    ) -> Result<Vec<Vec<u8>>, ClientError> {
        let mut frames = Vec::with_capacity(n);
        for _ in 0..n {
            let id = self.next_id;
            self.next_id += 1;
            let body = envelope::request(id, method, params)
                .map_err(|e| ClientError::Protocol(format!("cannot encode {method}: {e}")))?;
            frames.push(body);
        }
        let max_frame = self.max_frame;
        let (mut r, mut w) = self.stream.split();
        let write = async {
            for body in &frames {
                write_frame(&mut w, body, u32::MAX).await?;
            }
            Ok::<_, io::Error>(())
        };
        let read = async {
            let mut answers = Vec::with_capacity(n);
            while answers.len() < n {
                match read_frame(&mut r, max_frame).await {
                    Ok(Some(f)) => answers.push(f),
                    Ok(None) | Err(_) => break,
                }
            }
            answers
        };
        let (_written, answers) = tokio::join!(write, read);
        Ok(answers)
    }
}

fn decode<R: DeserializeOwned>(method: &str, raw: &RawValue) -> Result<R, ClientError> {
    serde_json::from_str(raw.get())
        .map_err(|e| ClientError::Protocol(format!("{method} result: {e}")))
}

/// A connection to the daemon, past its handshake.
#[derive(Debug)]
pub struct Client {
    wire: Wire,
    hello: HelloResult,
}

impl Client {
    /// Connects to `path` and says hello as `client_name`.
    pub async fn connect(path: &Path, client_name: &str) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::PermissionDenied => {
                    ClientError::PermissionDenied { path: path.into() }
                }
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                    ClientError::Unavailable {
                        path: path.into(),
                        source: e,
                    }
                }
                _ => ClientError::Io(e),
            })?;
        let mut wire = Wire {
            stream,
            next_id: 1,
            max_frame: DEFAULT_MAX_FRAME,
        };
        let params = serde_json::json!({
            "protocol": PROTOCOL_VERSION,
            "client": client_name,
            "features": [],
        });
        let hello: HelloResult = decode("hello", &wire.call_raw("hello", &params).await?)?;
        wire.max_frame = hello.max_frame.max(DEFAULT_MAX_FRAME);
        Ok(Client { wire, hello })
    }

    /// The daemon's answer to `hello`: who it thinks we are and what it allows.
    pub fn hello(&self) -> &HelloResult {
        &self.hello
    }

    /// Calls `method` and decodes its result.
    pub async fn call<P: Serialize, R: DeserializeOwned>(
        &mut self,
        method: &str,
        params: &P,
    ) -> Result<R, ClientError> {
        decode(method, &self.wire.call_raw(method, params).await?)
    }

    /// Calls `method` and returns its result as raw JSON.
    pub async fn call_raw<P: Serialize>(
        &mut self,
        method: &str,
        params: &P,
    ) -> Result<Box<RawValue>, ClientError> {
        self.wire.call_raw(method, params).await
    }

    /// Sends one request without waiting for its answer; returns its id. For pipelining.
    pub async fn send<P: Serialize>(
        &mut self,
        method: &str,
        params: &P,
    ) -> Result<u64, ClientError> {
        self.wire.send(method, params).await
    }

    /// Sends `n` copies of a request pipelined and returns the raw answer frames.
    pub async fn pipeline<P: Serialize>(
        &mut self,
        method: &str,
        params: &P,
        n: usize,
    ) -> Result<Vec<Vec<u8>>, ClientError> {
        self.wire.pipeline(method, params, n).await
    }

    /// Receives the next frame, whatever it is. For pipelining.
    pub async fn receive(&mut self) -> Result<Vec<u8>, ClientError> {
        self.wire.receive().await
    }

    pub async fn health(&mut self) -> Result<HealthResult, ClientError> {
        self.call("health", &serde_json::json!({})).await
    }

    /// The newest alerts (operator).
    pub async fn alerts(
        &mut self,
        limit: Option<u32>,
    ) -> Result<warden_proto::messages::AlertsResult, ClientError> {
        self.call("alerts.list", &serde_json::json!({ "limit": limit }))
            .await
    }

    /// The ops toggles in force.
    pub async fn ops(&mut self) -> Result<warden_proto::messages::OpsResult, ClientError> {
        self.call("ops.get", &serde_json::json!({})).await
    }

    /// Switches an ops toggle (admin).
    pub async fn set_op(
        &mut self,
        name: &str,
        enabled: bool,
        reason: &str,
    ) -> Result<warden_proto::messages::OpsResult, ClientError> {
        let p = serde_json::json!({ "name": name, "enabled": enabled, "reason": reason });
        self.call("ops.set", &p).await
    }

    /// Engages the lockdown (admin).
    pub async fn lockdown_engage(
        &mut self,
        reason: &str,
    ) -> Result<warden_proto::messages::LockdownResult, ClientError> {
        self.call("lockdown.engage", &serde_json::json!({ "reason": reason }))
            .await
    }

    /// Releases the lockdown (admin).
    pub async fn lockdown_release(
        &mut self,
    ) -> Result<warden_proto::messages::LockdownResult, ClientError> {
        self.call("lockdown.release", &serde_json::json!({})).await
    }

    /// Makes a resource of `kind` called `name`. `owner` counts only from root: anyone else
    /// owns what they create.
    pub async fn resource_create(
        &mut self,
        kind: &str,
        name: &str,
        owner: Option<warden_proto::request::OwnerRef>,
    ) -> Result<warden_proto::messages::ResourceInfo, ClientError> {
        let p = warden_proto::request::ResourceCreateParams {
            kind: kind.to_owned(),
            name: name.to_owned(),
            owner,
        };
        self.call("resource.create", &p).await
    }

    /// Deletes one of your resources (any, for an admin).
    pub async fn resource_delete(
        &mut self,
        kind: &str,
        name: &str,
    ) -> Result<warden_proto::messages::ResourceInfo, ClientError> {
        let p = serde_json::json!({ "kind": kind, "name": name });
        self.call("resource.delete", &p).await
    }

    /// One of your resources (any, for an admin).
    pub async fn resource_get(
        &mut self,
        kind: &str,
        name: &str,
    ) -> Result<warden_proto::messages::ResourceInfo, ClientError> {
        let p = serde_json::json!({ "kind": kind, "name": name });
        self.call("resource.get", &p).await
    }

    /// Your resources (everyone's, for an admin), of one kind if given.
    pub async fn resources(
        &mut self,
        kind: Option<&str>,
    ) -> Result<warden_proto::messages::ResourceList, ClientError> {
        let p = warden_proto::request::ResourceListParams {
            kind: kind.map(str::to_owned),
        };
        self.call("resource.list", &p).await
    }

    /// Reads audit records (admin).
    pub async fn audit_query(
        &mut self,
        params: &warden_proto::request::AuditQueryParams,
    ) -> Result<warden_proto::messages::AuditQueryResult, ClientError> {
        self.call("audit.query", params).await
    }

    /// Checks the audit log's hash chain (admin).
    pub async fn audit_verify(&mut self) -> Result<AuditVerifyResult, ClientError> {
        self.call("audit.verify", &serde_json::json!({})).await
    }

    pub async fn version(&mut self) -> Result<VersionResult, ClientError> {
        self.call("version", &serde_json::json!({})).await
    }

    pub async fn whoami(&mut self) -> Result<WhoamiResult, ClientError> {
        self.call("whoami", &serde_json::json!({})).await
    }

    pub async fn status(&mut self) -> Result<StatusResult, ClientError> {
        self.call("status", &serde_json::json!({})).await
    }

    /// The host's machine identity (the fleet agent's uid while `[fleet]` is enabled, and
    /// admins); `unavailable` when the host has no usable identity source.
    pub async fn host_identity(&mut self) -> Result<HostIdentityResult, ClientError> {
        self.call(Method::HostIdentity.as_str(), &serde_json::json!({}))
            .await
    }

    /// The actions this caller could start.
    pub async fn actions(&mut self) -> Result<ActionList, ClientError> {
        self.call("actions.list", &serde_json::json!({})).await
    }

    /// The host's `remote = true` actions the fleet may run here, within `[fleet] max_tier`
    /// (the fleet agent's uid only; anyone else is refused `forbidden`).
    pub async fn fleet_actions(&mut self) -> Result<ActionList, ClientError> {
        self.call("actions.list", &serde_json::json!({ "fleet": true }))
            .await
    }

    /// Starts a job for a fleet dispatch (the fleet agent's uid only). The dispatch id is the
    /// idempotency key: the same dispatch sent again returns the same job (`existing: true`)
    /// as long as the host keeps the job's record.
    pub async fn start_fleet(
        &mut self,
        action: &str,
        params: &serde_json::Map<String, serde_json::Value>,
        fleet: &warden_proto::request::FleetOrigin,
    ) -> Result<JobStarted, ClientError> {
        let p = serde_json::json!({
            "action": action,
            "params": params,
            "idempotency_key": fleet.dispatch_id,
            "fleet": fleet,
        });
        self.call("job.start", &p).await
    }

    pub async fn describe(&mut self, action: &str) -> Result<ActionInfo, ClientError> {
        self.call("actions.describe", &serde_json::json!({ "action": action }))
            .await
    }

    /// Starts a job. The same `idempotency_key` within 10 minutes returns the same job.
    pub async fn start(
        &mut self,
        action: &str,
        params: &serde_json::Map<String, serde_json::Value>,
        idempotency_key: Option<&str>,
    ) -> Result<JobStarted, ClientError> {
        let mut p = serde_json::json!({ "action": action, "params": params });
        if let Some(k) = idempotency_key {
            p["idempotency_key"] = k.into();
        }
        self.call("job.start", &p).await
    }

    pub async fn job(&mut self, job_id: &str) -> Result<JobRecord, ClientError> {
        self.call("job.get", &serde_json::json!({ "job_id": job_id }))
            .await
    }

    /// Jobs newest first: the caller's own, or with `all` everyone's (operators and admins).
    pub async fn jobs(
        &mut self,
        all: bool,
        state: Option<JobState>,
        limit: Option<u32>,
    ) -> Result<JobList, ClientError> {
        let p = serde_json::json!({
            "scope": if all { "all" } else { "mine" },
            "state": state,
            "limit": limit,
        });
        self.call("job.list", &p).await
    }

    /// Cancels a job; answers once it is final.
    pub async fn cancel(&mut self, job_id: &str) -> Result<JobRecord, ClientError> {
        self.call("job.cancel", &serde_json::json!({ "job_id": job_id }))
            .await
    }

    /// Waits until the job is final, at most `timeout_ms`.
    pub async fn wait(&mut self, job_id: &str, timeout_ms: u64) -> Result<JobRecord, ClientError> {
        let p = serde_json::json!({ "job_id": job_id, "timeout_ms": timeout_ms });
        self.call("job.wait", &p).await
    }
}
