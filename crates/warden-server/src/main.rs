//! `warden-server`: the fleet server and its admin commands, on one binary. This file only
//! parses the flags, sets up logging and the async runtime, and calls [`warden_server::cli`].

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;
use warden_server::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
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
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warden-server: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Whether standard error is the journal's own stream: systemd names it in `JOURNAL_STREAM`
/// (`device:inode`) for a service whose output goes to the journal.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(named) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = named.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(stderr) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(stderr.dev()) && ino.parse::<u64>().ok() == Some(stderr.ino())
}

/// Logs to journald with each field its own journal field when the service's output is the
/// journal; else plain lines on standard error (coloured only on a terminal without
/// `NO_COLOR`, see <https://no-color.org>).
fn init_logging() {
    let filter =
        || EnvFilter::try_from_env("WARDEN_SERVER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if stderr_is_journal()
        && let Ok(layer) = tracing_journald::layer()
    {
        tracing_subscriber::registry()
            .with(filter())
            .with(layer)
            .init();
        return;
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
}
