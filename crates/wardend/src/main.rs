//! `wardend`: parses flags, sets up logging, takes systemd's sockets, loads the configuration,
//! then runs the daemon until SIGTERM or SIGINT. Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use warden_proto::messages::DaemonMode;
use wardend::cli::{Cli, Command};
use wardend::{DEFAULT_CONFIG, Daemon, Settings, notify};

/// `e` and its causes, each cause only where the message before does not already say it (many
/// of our errors name their cause in their own message).
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::CheckConfig { file, json }) => {
            return ExitCode::from(wardend::offline::check_config(file, *json));
        }
        Some(Command::Doctor { file, json }) => {
            return ExitCode::from(wardend::offline::doctor(file, *json));
        }
        None => {}
    }
    let logs_to_stderr = init_logging(cli.dev);
    let dev = cli.dev;
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let text = describe(&e);
            tracing::error!("{text}");
            if !logs_to_stderr {
                eprintln!("wardend: {text}");
            }
            if dev && e.downcast_ref::<wardend::StartError>().is_some() {
                eprintln!(
                    "wardend: hint: --dev needs a socket directory only you can write to; \
                     set XDG_RUNTIME_DIR or pass --socket PATH"
                );
            }
            ExitCode::FAILURE
        }
    }
}

/// Sends logs to journald when it is there, else to stderr. Returns whether logs go to stderr.
fn init_logging(dev: bool) -> bool {
    let filter = EnvFilter::try_from_env("WARDEN_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = !dev && std::path::Path::new("/run/systemd/journal/socket").exists();
    if journald && let Ok(layer) = tracing_journald::layer() {
        tracing_subscriber::registry()
            .with(filter)
            .with(layer)
            .init();
        return false;
    }
    // No journald (containers, dev mode, this machine's CI): plain lines on stderr.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .with_target(false)
        .init();
    true
}

/// Whether log lines may be coloured: only on a terminal, and never when `NO_COLOR` is set to
/// anything but the empty string (https://no-color.org).
fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

fn load(cli: &Cli) -> anyhow::Result<Settings> {
    let mut settings = if cli.dev {
        Settings::dev(cli.socket.clone(), cli.state_dir.clone())?
    } else {
        let (path, explicit) = match &cli.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        let mut s = Settings::system(&path, explicit)?;
        if let Some(socket) = &cli.socket {
            s.override_socket(socket.clone())?;
        }
        if let Some(dir) = &cli.state_dir {
            s.override_state_dir(dir.clone())?;
        }
        s
    };
    for w in &settings.warnings {
        tracing::warn!("{}", w.display_warning());
    }
    if !settings.dropins.is_empty() {
        tracing::info!(dropins = ?settings.dropins, "read drop-in configuration");
    }
    settings.activated =
        warden_sys::activation::take_listen_fds().context("adopting sockets passed by systemd")?;
    settings.systemd_notify = true;
    Ok(settings)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = load(&cli)?;
    // Files and sockets the daemon creates are private until it sets their modes explicitly.
    warden_sys::process::set_umask(0o077);
    match warden_sys::process::raise_nofile_limit() {
        Ok(n) => tracing::debug!(limit = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    if settings.mode == DaemonMode::System && warden_sys::users::effective_uid() != 0 {
        tracing::warn!("wardend is not running as root; use --dev to try it unprivileged");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(settings))
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let mode = settings.mode;
    let origin = settings.origin.clone();
    let admin = settings.trusted_uid;
    // Before the first socket is served: a SIGTERM that arrives as soon as a client (or
    // systemd) sees the daemon must stop it gracefully, not kill it by the default action.
    let signals = StopSignals::install()?;
    let daemon = Daemon::start(settings).await?;
    let sockets: Vec<String> = daemon
        .socket_paths()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    if mode == DaemonMode::Dev {
        announce_dev(&sockets, daemon.varlink_paths(), admin);
    }
    tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %origin, sockets = ?sockets, "wardend ready");
    notify::ready(&format!("serving {}", sockets.join(", ")));
    let stopping = tokio_util::sync::CancellationToken::new();
    let stop_watchdog = tokio_util::sync::CancellationToken::new();
    wardend::watchdog::spawn(
        daemon.socket_paths().to_vec(),
        stopping.clone(),
        stop_watchdog.clone(),
    );

    signals.wait(&daemon).await;
    // From here the sockets close on purpose: the watchdog pings from its timer alone.
    stopping.cancel();
    notify::stopping();
    tracing::info!("shutting down: no new connections; answering what was received");
    daemon.shutdown().await;
    stop_watchdog.cancel();
    tracing::info!("stopped");
    Ok(())
}

fn announce_dev(sockets: &[String], varlink: &[std::path::PathBuf], admin: u32) {
    let socket = sockets.first().map_or("", String::as_str);
    let varlink = varlink
        .first()
        .map_or_else(String::new, |p| p.display().to_string());
    eprintln!(
        "\n  wardend DEV MODE: unprivileged, demo configuration, not for production\n\
         \n    socket  {socket} (mode 0600: only you can connect)\
         \n    varlink {varlink} (varlinkctl introspect unix:{varlink})\
         \n    admin   uid {admin} (you)\
         \n    try     cargo run --bin warden -- status\
         \n            WARDEN_SOCKET={socket} warden whoami\n"
    );
    tracing::warn!(socket, "running in dev mode with the demo configuration");
}

/// The signals the daemon acts on, caught from before it serves until it stops.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }

    /// Waits for SIGTERM or SIGINT; SIGHUP reloads the configuration file meanwhile.
    async fn wait(mut self, daemon: &wardend::Daemon) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => match daemon.reload() {
                    Ok(r) => {
                        for w in &r.warnings {
                            tracing::warn!("{w}");
                        }
                        tracing::info!(needs_restart = ?r.needs_restart, "configuration reloaded");
                    }
                    Err(e) => tracing::error!("reload failed; the running policy stays: {e}"),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::colour;
    use std::ffi::OsStr;

    /// Pins: colour only on a terminal, and a non-empty NO_COLOR turns it off.
    #[test]
    fn no_color_turns_colour_off() {
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
    }
}
