//! Who this host is: its machine id (from wardend's `host.identity`, which alone can read the
//! root-only hardware files, or from `[test_overrides] machine_id_override`) and its hostname
//! (from the configuration, else the kernel). It must never compute a machine id itself: the
//! id's recipe belongs to wardend.

use warden_fleet_proto::{Hostname, MachineId};

use crate::config::AgentConfig;

/// Why the host's identity is not known.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("asking wardend at {socket} for host.identity: {source}")]
    Wardend {
        socket: String,
        source: Box<warden_client::ClientError>,
    },
    #[error("wardend at {socket} did not answer host.identity in time")]
    Timeout { socket: String },
    #[error("wardend's host.identity answer has no valid machine_id")]
    Malformed,
    #[error(
        "the kernel's hostname {0:?} is not a valid fleet hostname (letters, digits, - and .); \
         set hostname in agent.toml"
    )]
    Hostname(String),
}

/// What wardend said.
#[derive(Debug, Clone)]
pub struct Identity {
    pub machine_id: MachineId,
    pub source: String,
    pub degraded: bool,
}

/// The machine id: the override if configured, else wardend's answer.
pub async fn machine_id(cfg: &AgentConfig) -> Result<Identity, IdentityError> {
    if let Some(id) = &cfg.machine_id_override {
        return Ok(Identity {
            machine_id: id.clone(),
            source: "test_overrides.machine_id_override".into(),
            degraded: false,
        });
    }
    let socket = cfg.wardend_socket.display().to_string();
    let wardend = |source| IdentityError::Wardend {
        socket: socket.clone(),
        source: Box::new(source),
    };
    let ask = async {
        let mut client = warden_client::Client::connect(&cfg.wardend_socket, "warden-agent")
            .await
            .map_err(wardend)?;
        client.host_identity().await.map_err(wardend)
    };
    let answer = tokio::time::timeout(cfg.timings.request_timeout, ask)
        .await
        .map_err(|_| IdentityError::Timeout {
            socket: socket.clone(),
        })??;
    Ok(Identity {
        machine_id: answer
            .machine_id
            .parse()
            .map_err(|_| IdentityError::Malformed)?,
        source: answer.source.as_str().to_owned(),
        degraded: answer.degraded,
    })
}

/// The hostname to enroll with: the configured one, else the kernel's.
pub fn hostname(cfg: &AgentConfig) -> Result<Hostname, IdentityError> {
    if let Some(h) = &cfg.hostname {
        return Ok(h.clone());
    }
    let uname = rustix::system::uname();
    let name = uname.nodename().to_string_lossy().into_owned();
    name.parse().map_err(|_| IdentityError::Hostname(name))
}
