//! The `warden-server` command line: its flags (clap), and each command's run. `serve` starts
//! the server (`serve.rs`); the admin commands work on the database directly (`admin.rs`);
//! `dispatch` talks to a server's HTTP API (`dispatch.rs`). The
//! binary only parses the flags, sets up logging and calls [`run`].

mod admin;
pub mod dispatch;
mod serve;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::Cidr;
use crate::store::Db;

#[derive(Debug, Parser)]
#[command(
    name = "warden-server",
    version,
    about = "warden's fleet server: sites, enrollment, machine credentials."
)]
pub struct Cli {
    /// Where the embedded SQLite database lives.
    #[arg(long, global = true, default_value = "./warden-server-data")]
    pub data_dir: PathBuf,
    /// A PostgreSQL database instead of the embedded one (postgres://…).
    #[arg(long, global = true, env = "WARDEN_SERVER_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Print JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// Create a new, empty database in --data-dir if there is none there. Without it the admin
    /// commands refuse to (a mistyped or missing --data-dir would otherwise leave a stray empty
    /// database); `serve` always creates one.
    #[arg(long, global = true)]
    pub init: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API.
    Serve(ServeArgs),
    /// Operator accounts.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Sites and their enrollment keys.
    Site {
        #[command(subcommand)]
        command: SiteCommand,
    },
    /// Enrolled machines.
    Machines {
        #[command(subcommand)]
        command: MachinesCommand,
    },
    /// Remote dispatch, through the server's HTTP API (not the database).
    Dispatch(dispatch::DispatchArgs),
    /// The audit trail, newest first.
    Events {
        /// Only events of this kind (e.g. enroll.new).
        #[arg(long)]
        kind: Option<String>,
        /// At most this many.
        #[arg(short = 'n', long, default_value_t = 50)]
        limit: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add an operator; the password is asked for (or read from stdin).
    Add {
        /// The operator's login name.
        name: String,
        /// What the operator may do: admin, operator or viewer.
        #[arg(long, value_parser = ["admin", "operator", "viewer"])]
        role: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List the operators and their roles.
    List,
}

#[derive(Debug, Subcommand)]
pub enum SiteCommand {
    /// Add a site.
    Add {
        /// The site's code, as agents name it in agent.toml (site_code).
        code: String,
        /// The site's display name.
        #[arg(long)]
        name: String,
        /// The company the site belongs to.
        #[arg(long, default_value = "")]
        company: String,
    },
    /// List the sites.
    List,
    /// Issue a new enrollment key (shown once); the previous one stops working at once.
    RotateKey {
        /// The site's code.
        code: String,
    },
    /// The active key's version and fingerprint (never the key).
    Key {
        /// The site's code.
        code: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum MachinesCommand {
    /// List machines, a page at a time.
    List {
        /// Only machines of this site (its code).
        #[arg(long)]
        site: Option<String>,
        /// active, pending, quarantined or removed.
        #[arg(long)]
        state: Option<String>,
        /// Part of a machine id or hostname.
        #[arg(long)]
        text: Option<String>,
        /// At most this many (1 to 1000), by hostname then machine id.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// The next page: the cursor the previous page ended with.
        #[arg(long)]
        after: Option<String>,
    },
    /// Let a pending machine (a likely clone) in: its next enrollment gets a key.
    Approve {
        /// The machine id (muid_…).
        machine_id: String,
    },
    /// Remove a machine: its keys stop working; it may enroll again.
    Remove {
        /// The machine id (muid_…).
        machine_id: String,
    },
    /// Refuse a machine id's enrollments and revoke its keys.
    Ban {
        /// The machine id (muid_…).
        machine_id: String,
    },
    /// Lift a ban: the machine id may enroll again.
    Unban {
        /// The machine id (muid_…).
        machine_id: String,
    },
    /// Quarantine a machine: its live link closes; no link and no dispatch until cleared.
    Quarantine {
        /// The machine id (muid_…).
        machine_id: String,
    },
    /// Clear a quarantine: the machine may link again with its current key.
    Clear {
        /// The machine id (muid_…).
        machine_id: String,
    },
}

/// `warden-server serve`: where to listen, TLS, trusted proxies, deadlines and limits.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The address and port to listen on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: std::net::SocketAddr,
    /// A proxy (address or CIDR) whose X-Forwarded-For is believed; repeat for more.
    #[arg(long = "trusted-proxy")]
    pub trusted_proxies: Vec<Cidr>,
    /// PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Time for a request's head (and a TLS handshake) to arrive; also how long a kept-alive
    /// connection waits for its next request.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub header_timeout_ms: u64,
    /// Time for a request's body to arrive.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub body_timeout_ms: u64,
    /// A connection on which nothing moves this long, with no request being handled, is
    /// closed.
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub idle_timeout_ms: u64,
    /// Connections served at once (lowered to fit the open-file limit); past it new ones
    /// are closed at once.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,
    /// At SIGTERM or SIGINT, how long requests in flight may take to finish before they are
    /// cut.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub drain_timeout_ms: u64,
    #[command(flatten)]
    pub link: LinkArgs,
    /// A dispatch's host that had no link when its turn came may link and run it within this
    /// long (while the dispatch is open), e.g. `15m`.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub dispatch_offline_wait: std::time::Duration,
    /// Serve `/metrics` (Prometheus text format, plain HTTP, no login) on this address; off
    /// when not given. Bind it to loopback or a monitoring network only.
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The name this server gives itself in a dispatch's fleet origin
    /// (`fleet:<operator>@<name>`); default: the host name.
    #[arg(long)]
    pub server_name: Option<String>,
}

/// The agent link's timing and bounds (the defaults are the protocol's; see docs/FLEET.md).
#[derive(Debug, clap::Args)]
pub struct LinkArgs {
    /// How often the server heartbeats each link (± 10%), and tells agents to.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(50..=600_000))]
    pub link_heartbeat_ms: u64,
    /// A link on which nothing arrived for this long is closed.
    #[arg(long, default_value_t = 75_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub link_dead_after_ms: u64,
    /// Links held at once (lowered to fit the open-file limit); past it agents get 503.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub link_max: u64,
    /// Link upgrades admitted per second; past it agents get 503 with Retry-After.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub link_upgrades_per_second: u32,
    /// A graceful stop tells agents to come back spread over this long.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub link_restart_spread_ms: u64,
    /// How often last_seen is written (in one batch).
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub link_seen_flush_ms: u64,
    /// How often each machine key is rotated (± 20%), e.g. `7d`, `12h`.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    pub key_rotation_every: std::time::Duration,
    /// Rotations started per minute at most, in thousandths of the links up (at least 1).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub key_rotations_per_minute_permille: u32,
}

impl LinkArgs {
    /// The link's configuration these flags make.
    pub fn config(&self) -> crate::link::LinkConfig {
        use std::time::Duration;
        crate::link::LinkConfig {
            heartbeat: Duration::from_millis(self.link_heartbeat_ms),
            dead_after: Duration::from_millis(self.link_dead_after_ms),
            max_links: usize::try_from(self.link_max).unwrap_or(usize::MAX),
            upgrades_per_second: self.link_upgrades_per_second,
            restart_spread: Duration::from_millis(self.link_restart_spread_ms),
            seen_flush: Duration::from_millis(self.link_seen_flush_ms),
            rotation_every: self.key_rotation_every,
            rotations_per_minute_permille: self.key_rotations_per_minute_permille,
            ..crate::link::LinkConfig::default()
        }
    }
}

/// A time the server stored (milliseconds since the epoch) as the commands print every time:
/// RFC 3339 in UTC, to the second (`2026-12-06T03:07:28Z`); `never` for none (0 or less).
pub fn rfc3339(ms: i64) -> String {
    if ms <= 0 {
        return "never".to_owned();
    }
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.unsigned_abs());
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Runs the command `cli` names.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let Cli {
        data_dir,
        database_url,
        json,
        init,
        command,
    } = cli;
    let command = match command {
        Command::Serve(args) => return serve::run(data_dir, database_url, args, json).await,
        Command::Dispatch(args) => return dispatch::run(args, json).await,
        other => other,
    };
    let file = data_dir.join(crate::store::SQLITE_FILE);
    if database_url.is_none() && !init && !file.exists() {
        anyhow::bail!(
            "no database at {}: give the server's --data-dir, or --init to create a new one",
            file.display()
        );
    }
    let db = Db::open(&data_dir, database_url.as_deref()).await?;
    match command {
        // Run above, without this handle on the database.
        Command::Serve(_) | Command::Dispatch(_) => Ok(()),
        Command::User { command } => admin::user(&db, json, command).await,
        Command::Site { command } => admin::site(&db, json, command).await,
        Command::Machines { command } => admin::machines(&db, json, command).await,
        Command::Events { kind, limit } => admin::events(&db, json, kind, limit).await,
    }
}
