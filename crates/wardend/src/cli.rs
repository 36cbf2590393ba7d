//! wardend's command line as clap declares it: the flags `main.rs` parses, and what the man
//! page and the shell completions are generated from (`warden-docgen`). Declarations only: it
//! must never load a configuration, open a socket or act on a flag.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "wardend",
    version,
    about = "warden's privilege broker daemon",
    long_about = "warden's privilege broker daemon. Serves the local control plane on Unix sockets, \
                  identifies every caller from the kernel and judges every request in one gate.",
    after_help = "Running the daemon (no subcommand) prints nothing to parse: it logs to journald, \
                  or to stderr without it, and has no --json; check-config and doctor take \
                  --json. Log lines are coloured only on a terminal and never when NO_COLOR is set."
)]
pub struct Cli {
    /// Configuration file [default: /etc/warden/warden.toml; built-in default if it is absent]
    #[arg(long, value_name = "FILE", conflicts_with = "dev")]
    pub config: Option<PathBuf>,
    /// Run unprivileged with a demo configuration on a private socket, for trying warden out.
    #[arg(long)]
    pub dev: bool,
    /// Serve the first listener on PATH instead of its configured path.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Keep state in DIR instead of the configured state directory.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a configuration file and print its problems as FILE:LINE: message.
    /// Exit status: 0 valid (warnings may be printed), 1 invalid or unreadable.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
        /// Print {"valid", "files", "problems": [{"file", "line", "column", "severity",
        /// "message"}]} on stdout instead.
        #[arg(long)]
        json: bool,
    },
    /// Check the installation's security posture: file owners and modes, sockets, the systemd
    /// unit, the audit chain, the ledger. Each finding says how to fix it.
    /// Exit status: 0 no errors (warnings may be printed), 1 errors found.
    Doctor {
        /// The configuration to check against.
        #[arg(default_value = crate::DEFAULT_CONFIG)]
        file: PathBuf,
        /// Print {"findings": [{"severity", "what", "fix"}], "errors": N} on stdout instead.
        #[arg(long)]
        json: bool,
    },
}
