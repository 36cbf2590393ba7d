//! `warden-server`: the fleet server and its admin commands, on one binary. The admin commands
//! work on the database directly, on the machine the server runs on.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde::Serialize;
use warden_server::Cidr;
use warden_server::store::Db;
use warden_server::store::StoreError;

#[derive(Debug, Parser)]
#[command(
    name = "warden-server",
    version,
    about = "warden's fleet server: sites, enrollment, machine credentials."
)]
struct Cli {
    /// Where the embedded SQLite database lives.
    #[arg(long, global = true, default_value = "./warden-server-data")]
    data_dir: PathBuf,
    /// A PostgreSQL database instead of the embedded one (postgres://…).
    #[arg(long, global = true, env = "WARDEN_SERVER_DATABASE_URL")]
    database_url: Option<String>,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API.
    Serve {
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: std::net::SocketAddr,
        /// A proxy (address or CIDR) whose X-Forwarded-For is believed; repeat for more.
        #[arg(long = "trusted-proxy")]
        trusted_proxies: Vec<Cidr>,
        /// PEM certificate chain: serve HTTPS (with --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Time for a request's head (and a TLS handshake) to arrive; also how long a kept-alive
        /// connection waits for its next request.
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
        header_timeout_ms: u64,
        /// Time for a request's body to arrive.
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
        body_timeout_ms: u64,
        /// A connection on which nothing moves this long, with no request being handled, is
        /// closed.
        #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
        idle_timeout_ms: u64,
        /// Connections served at once (lowered to fit the open-file limit); past it new ones
        /// are closed at once.
        #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        max_connections: u64,
        /// At SIGTERM or SIGINT, how long requests in flight may take to finish before they are
        /// cut.
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(0..=600_000))]
        drain_timeout_ms: u64,
    },
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
    /// The audit trail, newest first.
    Events {
        #[arg(long)]
        kind: Option<String>,
        #[arg(short = 'n', long, default_value_t = 50)]
        limit: i64,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Add an operator; the password is asked for (or read from stdin).
    Add {
        name: String,
        #[arg(long, value_parser = ["admin", "operator", "viewer"])]
        role: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    List,
}

#[derive(Debug, Subcommand)]
enum SiteCommand {
    /// Add a site.
    Add {
        code: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        company: String,
    },
    List,
    /// Issue a new enrollment key (shown once); the previous one stops working at once.
    RotateKey {
        code: String,
    },
    /// The active key's version and fingerprint (never the key).
    Key {
        code: String,
    },
}

#[derive(Debug, Subcommand)]
enum MachinesCommand {
    List {
        #[arg(long)]
        site: Option<String>,
        /// active, pending or removed.
        #[arg(long)]
        state: Option<String>,
        /// Part of a machine id or hostname.
        #[arg(long)]
        text: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Let a pending machine (a likely clone) in: its next enrollment gets a key.
    Approve {
        machine_id: String,
    },
    /// Remove a machine: its keys stop working; it may enroll again.
    Remove {
        machine_id: String,
    },
    /// Refuse a machine id's enrollments and revoke its keys.
    Ban {
        machine_id: String,
    },
    Unban {
        machine_id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WARDEN_SERVER_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warden-server: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warden-server: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Tells systemd (when it runs the server as `Type=notify`) how the server is doing.
fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

fn print<T: Serialize>(json: bool, value: &T, text: impl FnOnce(&T) -> String) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        print!("{}", text(value));
    }
}

fn ms(t: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(t.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let json = cli.json;
    if let Command::Serve {
        listen,
        trusted_proxies,
        tls_cert,
        tls_key,
        header_timeout_ms,
        body_timeout_ms,
        idle_timeout_ms,
        max_connections,
        drain_timeout_ms,
    } = cli.command
    {
        use tokio::signal::unix::{SignalKind, signal};
        // In place before anything is served, so a stop at any moment is a graceful one.
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut config = warden_server::Config::new(cli.data_dir);
        config.database_url = cli.database_url;
        config.listen = listen;
        config.trusted_proxies = trusted_proxies;
        config.tls = tls_cert.zip(tls_key);
        config.limits = warden_server::serve::Limits {
            header_timeout: Duration::from_millis(header_timeout_ms),
            body_timeout: Duration::from_millis(body_timeout_ms),
            idle_timeout: Duration::from_millis(idle_timeout_ms),
            max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
            drain_timeout: Duration::from_millis(drain_timeout_ms),
        };
        let mut running = warden_server::start(&config).await?;
        tracing::info!(listen = %running.addr, tls = config.tls.is_some(), "warden-server serving");
        notify(&[sd_notify::NotifyState::Ready]);
        let signal = tokio::select! {
            r = running.wait() => return Ok(r?),
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        notify(&[sd_notify::NotifyState::Stopping]);
        tracing::info!(
            signal,
            drain_ms = drain_timeout_ms,
            "stopping: finishing the requests in flight"
        );
        running.stop().await?;
        tracing::info!("stopped");
        return Ok(());
    }
    let db = Db::open(&cli.data_dir, cli.database_url.as_deref()).await?;
    let done = |e: StoreError| anyhow::anyhow!("{e}");
    match cli.command {
        Command::Serve { .. } => {}
        Command::User { command } => match command {
            UserCommand::Add {
                name,
                role,
                password_stdin,
            } => {
                let password = if password_stdin {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line.trim_end_matches(['\n', '\r']).to_owned()
                } else {
                    let first = rpassword::prompt_password(format!("password for {name}: "))?;
                    let again = rpassword::prompt_password("again: ")?;
                    anyhow::ensure!(first == again, "the passwords differ; nothing was changed");
                    first
                };
                let role = role.parse().map_err(|e: String| anyhow::anyhow!(e))?;
                let op = db
                    .add_operator(&name, role, &password)
                    .await
                    .map_err(done)?;
                db.event(
                    "user.add",
                    "cli",
                    &format!("operator {name}"),
                    "local",
                    role.as_str(),
                )
                .await
                .map_err(done)?;
                print(json, &op, |o| {
                    format!("operator {} added ({})\n", o.name, o.role.as_str())
                });
            }
            UserCommand::List => {
                let ops = db.operators().await.map_err(done)?;
                print(json, &ops, |ops| {
                    ops.iter()
                        .map(|o| {
                            format!(
                                "{:<24} {:<9} since {}\n",
                                o.name,
                                o.role.as_str(),
                                ms(o.created_ms)
                            )
                        })
                        .collect()
                });
            }
        },
        Command::Site { command } => match command {
            SiteCommand::Add {
                code,
                name,
                company,
            } => {
                let site = db.add_site(&code, &name, &company).await.map_err(done)?;
                db.event("site.add", "cli", &format!("site {code}"), "local", "")
                    .await
                    .map_err(done)?;
                print(json, &site, |s| format!("site {} added\n", s.site_code));
            }
            SiteCommand::List => {
                let sites = db.sites().await.map_err(done)?;
                print(json, &sites, |sites| {
                    sites
                        .iter()
                        .map(|s| {
                            format!(
                                "{:<20} {:<30} {:<20} key v{}\n",
                                s.site_code, s.display_name, s.company, s.key_version
                            )
                        })
                        .collect()
                });
            }
            SiteCommand::RotateKey { code } => {
                let key = db.rotate_key(&code).await.map_err(done)?;
                db.event(
                    "key.rotate",
                    "cli",
                    &format!("site {code}"),
                    "local",
                    &key.fingerprint_label,
                )
                .await
                .map_err(done)?;
                print(json, &key, |k| {
                    format!(
                        "{}\nenrollment key {} of site {code}: shown once, store it now; the previous key no longer works\n",
                        k.key, k.fingerprint_label
                    )
                });
            }
            SiteCommand::Key { code } => {
                let key = db.active_key(&code).await.map_err(done)?;
                print(json, &key, |k| {
                    format!("{} (issued {})\n", k.fingerprint_label, ms(k.created_ms))
                });
            }
        },
        Command::Machines { command } => {
            let event = |kind: &'static str, id: String| {
                let db = db.clone();
                async move {
                    db.event(kind, "cli", &format!("machine {id}"), "local", "")
                        .await
                        .map_err(done)
                }
            };
            match command {
                MachinesCommand::List {
                    site,
                    state,
                    text,
                    limit,
                } => {
                    let machines = db
                        .machines(site.as_deref(), state.as_deref(), text.as_deref(), limit)
                        .await
                        .map_err(done)?;
                    print(json, &machines, |ms_| {
                        ms_.iter()
                            .map(|m| {
                                format!(
                                    "{}  {:<12} {:<24} {:<8}{} seen {}\n",
                                    m.machine_id,
                                    m.site_code,
                                    m.hostname,
                                    m.state,
                                    if m.banned { " banned" } else { "" },
                                    ms(m.last_seen_ms)
                                )
                            })
                            .collect()
                    });
                }
                MachinesCommand::Approve { machine_id } => {
                    db.approve(&machine_id).await.map_err(done)?;
                    event("machine.approve", machine_id.clone()).await?;
                    println!("{machine_id} approved: its next enrollment gets a key");
                }
                MachinesCommand::Remove { machine_id } => {
                    let removed = db.remove(&machine_id).await.map_err(done)?;
                    event("machine.remove", machine_id.clone()).await?;
                    println!(
                        "{machine_id} {}",
                        if removed {
                            "removed"
                        } else {
                            "was already removed"
                        }
                    );
                }
                MachinesCommand::Ban { machine_id } => {
                    db.ban(&machine_id).await.map_err(done)?;
                    event("machine.ban", machine_id.clone()).await?;
                    println!("{machine_id} banned");
                }
                MachinesCommand::Unban { machine_id } => {
                    let was = db.unban(&machine_id).await.map_err(done)?;
                    event("machine.unban", machine_id.clone()).await?;
                    println!(
                        "{machine_id} {}",
                        if was { "unbanned" } else { "was not banned" }
                    );
                }
            }
        }
        Command::Events { kind, limit } => {
            let events = db
                .events(kind.as_deref(), None, limit)
                .await
                .map_err(done)?;
            print(json, &events, |evs| {
                evs.iter()
                    .map(|e| {
                        format!(
                            "{} {:<22} {:<28} {:<40} {} {}\n",
                            ms(e.ts_ms),
                            e.kind,
                            e.actor,
                            e.target,
                            e.source,
                            e.detail
                        )
                    })
                    .collect()
            });
        }
    }
    Ok(())
}
