//! The agent's configuration: `/etc/warden/agent.toml`, read strictly (`deny_unknown_fields`)
//! and checked once into an [`AgentConfig`] the rest of the agent trusts. It owns the defaults
//! and the `--dev` relaxations; it must never read a secret (the enrollment key stays in its own
//! file, read only when an enrollment is due) and never accept plain `http://` outside `--dev`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use warden_fleet_proto::enroll::Labels;
use warden_fleet_proto::{Hostname, MachineId, SiteCode};

mod overrides;

pub use overrides::{PausePoint, TestHooks, TestOverrides};

/// Where the configuration is read from by default.
pub const DEFAULT_CONFIG: &str = "/etc/warden/agent.toml";
/// Where the machine key lives by default (systemd's `StateDirectory=warden-agent`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/warden-agent";

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{path}: {field}: {reason}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        reason: String,
    },
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    server_url: String,
    site_code: SiteCode,
    enrollment_key_file: PathBuf,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    state_dir: Option<PathBuf>,
    #[serde(default)]
    wardend_socket: Option<PathBuf>,
    #[serde(default)]
    hostname: Option<Hostname>,
    #[serde(default)]
    labels: Labels,
    #[serde(default)]
    test_overrides: Option<TestOverrides>,
}

/// Every delay the agent uses, in one place; the defaults are the protocol's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timings {
    /// `None`: the server's Welcome decides.
    pub heartbeat: Option<Duration>,
    pub dead_after: Option<Duration>,
    pub welcome_timeout: Duration,
    pub reconnect_first: Duration,
    pub reconnect_cap: Duration,
    pub retry_base: Duration,
    pub retry_cap: Duration,
    pub rejected_base: Duration,
    pub rejected_cap: Duration,
    pub pending_poll: Duration,
    /// Connect and whole-request deadlines of one HTTP exchange.
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

impl Default for Timings {
    fn default() -> Timings {
        use warden_fleet_proto::link;
        Timings {
            heartbeat: None,
            dead_after: None,
            welcome_timeout: link::DEAD_AFTER,
            reconnect_first: link::RECONNECT_FIRST,
            reconnect_cap: link::RECONNECT_CAP,
            retry_base: Duration::from_secs(2),
            retry_cap: link::RECONNECT_CAP,
            rejected_base: Duration::from_secs(5 * 60),
            rejected_cap: Duration::from_secs(6 * 60 * 60),
            pending_poll: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
        }
    }
}

impl Timings {
    fn with(mut self, o: &TestOverrides) -> Timings {
        let ms = Duration::from_millis;
        let set = |slot: &mut Duration, v: Option<u64>| {
            if let Some(v) = v {
                *slot = ms(v);
            }
        };
        if let Some(v) = o.heartbeat_ms {
            self.heartbeat = Some(ms(v));
        }
        if let Some(v) = o.dead_after_ms {
            self.dead_after = Some(ms(v));
        }
        set(&mut self.welcome_timeout, o.welcome_timeout_ms);
        set(&mut self.reconnect_first, o.reconnect_first_ms);
        set(&mut self.reconnect_cap, o.reconnect_cap_ms);
        set(&mut self.retry_base, o.retry_base_ms);
        set(&mut self.retry_cap, o.retry_cap_ms);
        set(&mut self.rejected_base, o.rejected_base_ms);
        set(&mut self.rejected_cap, o.rejected_cap_ms);
        set(&mut self.pending_poll, o.pending_poll_ms);
        self
    }
}

/// The server's address, split once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// `true` for `https://`.
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// The URL as configured, without a trailing `/`.
    pub base: String,
}

impl ServerUrl {
    /// Parses `scheme://host[:port][/]`; no path, query, user or password.
    pub fn parse(s: &str) -> Result<ServerUrl, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err("must start with https:// (or http:// with --dev)".into());
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty()
            || authority.contains(['/', '?', '#', '@'])
            || authority
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err("must be scheme://host[:port] with no path, query or user".into());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or("an IPv6 address needs its closing ]")?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err("unexpected text after the IPv6 address".into()),
            };
            (format!("[{h}]"), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (authority.to_owned(), None),
            }
        };
        let port = match port {
            Some(p) => p.parse::<u16>().map_err(|_| format!("bad port {p:?}"))?,
            None if tls => 443,
            None => 80,
        };
        if host.is_empty() {
            return Err("has no host".into());
        }
        Ok(ServerUrl {
            tls,
            host,
            port,
            base: s.trim_end_matches('/').to_owned(),
        })
    }

    /// The host as TLS and DNS want it (IPv6 without brackets).
    pub fn bare_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }

    /// `ws(s)://host:port{path}`.
    pub fn ws(&self, path: &str) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}:{}{path}", self.host, self.port)
    }
}

/// The configuration, checked.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub server: ServerUrl,
    pub site_code: SiteCode,
    pub enrollment_key_file: PathBuf,
    /// When set, the only certificate authorities the agent trusts (the system's roots are
    /// then not used); when unset, the system's roots.
    pub ca_file: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub wardend_socket: PathBuf,
    /// `None`: the kernel's hostname, read at each enrollment.
    pub hostname: Option<Hostname>,
    pub labels: Labels,
    pub machine_id_override: Option<MachineId>,
    pub timings: Timings,
    pub hooks: TestHooks,
    /// Which `[test_overrides]` were set, for the warning at start.
    pub overrides_used: Vec<&'static str>,
    pub dev: bool,
}

impl AgentConfig {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path, dev: bool) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        AgentConfig::parse(&text, path, dev)
    }

    /// Checks `text` (the contents of `path`).
    pub fn parse(text: &str, path: &Path, dev: bool) -> Result<AgentConfig, ConfigError> {
        let file: File = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            source: Box::new(e),
        })?;
        let invalid = |field, reason: String| ConfigError::Invalid {
            path: path.into(),
            field,
            reason,
        };
        let server = ServerUrl::parse(&file.server_url).map_err(|r| invalid("server_url", r))?;
        if !server.tls && !dev {
            return Err(invalid(
                "server_url",
                "plain http:// is refused: the machine key would cross the network in the \
                 clear; use https:// (http:// only with --dev, against a local server)"
                    .into(),
            ));
        }
        file.labels
            .check()
            .map_err(|r| invalid("labels", r.to_string()))?;
        for (field, p) in [
            ("enrollment_key_file", Some(&file.enrollment_key_file)),
            ("ca_file", file.ca_file.as_ref()),
            ("state_dir", file.state_dir.as_ref()),
            ("wardend_socket", file.wardend_socket.as_ref()),
        ] {
            if let Some(p) = p
                && !p.is_absolute()
            {
                return Err(invalid(
                    field,
                    format!("{} is not an absolute path", p.display()),
                ));
            }
        }
        let overrides = file.test_overrides.unwrap_or_default();
        let mut used = Vec::new();
        for (name, set) in [
            (
                "machine_id_override",
                overrides.machine_id_override.is_some(),
            ),
            ("heartbeat_ms", overrides.heartbeat_ms.is_some()),
            ("dead_after_ms", overrides.dead_after_ms.is_some()),
            ("welcome_timeout_ms", overrides.welcome_timeout_ms.is_some()),
            ("reconnect_first_ms", overrides.reconnect_first_ms.is_some()),
            ("reconnect_cap_ms", overrides.reconnect_cap_ms.is_some()),
            ("retry_base_ms", overrides.retry_base_ms.is_some()),
            ("retry_cap_ms", overrides.retry_cap_ms.is_some()),
            ("rejected_base_ms", overrides.rejected_base_ms.is_some()),
            ("rejected_cap_ms", overrides.rejected_cap_ms.is_some()),
            ("pending_poll_ms", overrides.pending_poll_ms.is_some()),
            ("rotate_after_ms", overrides.rotate_after_ms.is_some()),
            ("pause_at", overrides.pause_at.is_some()),
            ("spool_cap_bytes", overrides.spool_cap_bytes.is_some()),
            ("actions_poll_ms", overrides.actions_poll_ms.is_some()),
        ] {
            if set {
                used.push(name);
            }
        }
        let timings = Timings::default().with(&overrides);
        for (field, d) in [
            ("test_overrides.heartbeat_ms", timings.heartbeat),
            ("test_overrides.dead_after_ms", timings.dead_after),
            (
                "test_overrides.welcome_timeout_ms",
                Some(timings.welcome_timeout),
            ),
            ("test_overrides.retry_base_ms", Some(timings.retry_base)),
            (
                "test_overrides.rejected_base_ms",
                Some(timings.rejected_base),
            ),
            ("test_overrides.pending_poll_ms", Some(timings.pending_poll)),
        ] {
            if d.is_some_and(|d| d.is_zero()) {
                return Err(invalid(field, "must be more than 0".into()));
            }
        }
        let state_dir = match file.state_dir {
            Some(d) => d,
            None if dev => dev_state_dir(),
            None => PathBuf::from(DEFAULT_STATE_DIR),
        };
        let wardend_socket = match file.wardend_socket {
            Some(s) => s,
            None if dev => warden_client::default_socket(),
            None => PathBuf::from(warden_proto::paths::SYSTEM_SOCKET),
        };
        Ok(AgentConfig {
            server,
            site_code: file.site_code,
            enrollment_key_file: file.enrollment_key_file,
            ca_file: file.ca_file,
            state_dir,
            wardend_socket,
            hostname: file.hostname,
            labels: file.labels,
            machine_id_override: overrides.machine_id_override,
            timings,
            hooks: TestHooks {
                rotate_after: overrides.rotate_after_ms.map(Duration::from_millis),
                pause_at: overrides.pause_at,
                spool_cap: overrides.spool_cap_bytes,
                actions_poll: overrides.actions_poll_ms.map(Duration::from_millis),
            },
            overrides_used: used,
            dev,
        })
    }
}

/// The state directory of a `--dev` agent: `$XDG_STATE_HOME/warden-agent`, else
/// `~/.local/state/warden-agent`, else `./warden-agent-dev`.
pub fn dev_state_dir() -> PathBuf {
    let abs = |v: Option<std::ffi::OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(d) = abs(std::env::var_os("XDG_STATE_HOME")) {
        return d.join("warden-agent");
    }
    if let Some(h) = abs(std::env::var_os("HOME")) {
        return h.join(".local/state/warden-agent");
    }
    std::env::current_dir()
        .unwrap_or_else(|_| PathBuf::from("."))
        .join("warden-agent-dev")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
server_url = "https://fleet.example:8443"
site_code = "hq"
enrollment_key_file = "/etc/warden/enrollment.key"
"#;

    fn parse(text: &str, dev: bool) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(text, Path::new("agent.toml"), dev)
    }

    /// Pins: a minimal file gets the documented defaults, and the protocol's timings.
    #[test]
    fn defaults() {
        let c = parse(MINIMAL, false).unwrap();
        assert_eq!(c.server.host, "fleet.example");
        assert_eq!(c.server.port, 8443);
        assert_eq!(
            c.server.ws("/v1/agent/link"),
            "wss://fleet.example:8443/v1/agent/link"
        );
        assert_eq!(c.state_dir, Path::new(DEFAULT_STATE_DIR));
        assert_eq!(c.wardend_socket, Path::new("/run/warden/warden.sock"));
        assert_eq!(c.timings, Timings::default());
        assert!(c.overrides_used.is_empty() && c.machine_id_override.is_none());
    }

    /// Pins: plain http is refused without --dev, unknown keys and relative paths are refused,
    /// and each override shows up in the list that is logged.
    #[test]
    fn strictness() {
        let http = MINIMAL.replace("https://", "http://");
        let e = parse(&http, false).unwrap_err().to_string();
        assert!(e.contains("plain http:// is refused"), "{e}");
        assert!(!parse(&http, true).unwrap().server.tls);
        assert!(parse(&format!("{MINIMAL}\nsurprise = 1\n"), false).is_err());
        let rel = MINIMAL.replace("/etc/warden/enrollment.key", "enrollment.key");
        assert!(parse(&rel, false).is_err());
        assert!(parse(&MINIMAL.replace("8443", "8443/api"), false).is_err());
        let id = format!("muid_{}", "a".repeat(64));
        let o = format!(
            "{MINIMAL}\n[test_overrides]\nmachine_id_override = \"{id}\"\nrejected_base_ms = 50\n"
        );
        let c = parse(&o, false).unwrap();
        assert_eq!(c.machine_id_override.unwrap().as_str(), id);
        assert_eq!(c.timings.rejected_base, Duration::from_millis(50));
        assert_eq!(
            c.overrides_used,
            ["machine_id_override", "rejected_base_ms"]
        );
        let hooks = format!(
            "{MINIMAL}\n[test_overrides]\npause_at = \"rotation.stored\"\nrotate_after_ms = 5\n"
        );
        let c = parse(&hooks, false).unwrap();
        assert_eq!(c.hooks.pause_at, Some(PausePoint::RotationStored));
        assert_eq!(c.hooks.rotate_after, Some(Duration::from_millis(5)));
        assert_eq!(c.overrides_used, ["rotate_after_ms", "pause_at"]);
        assert!(
            parse(
                &format!("{MINIMAL}\n[test_overrides]\npause_at = \"rotation.elsewhere\"\n"),
                false
            )
            .is_err()
        );
        assert!(
            parse(
                &format!("{MINIMAL}\n[test_overrides]\nheartbeat_ms = 0\n"),
                false
            )
            .is_err()
        );
    }

    /// Pins: server URLs split into host and port, IPv6 included, and junk is refused.
    #[test]
    fn server_urls() {
        let u = ServerUrl::parse("https://[::1]:9/").unwrap();
        assert_eq!(
            (u.bare_host(), u.port, u.base.as_str()),
            ("::1", 9, "https://[::1]:9")
        );
        assert_eq!(ServerUrl::parse("https://h").unwrap().port, 443);
        assert_eq!(ServerUrl::parse("http://h").unwrap().port, 80);
        for bad in [
            "ftp://h",
            "https://",
            "https://u@h",
            "https://h:x",
            "https://h/p",
        ] {
            assert!(ServerUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
