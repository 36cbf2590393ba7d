//! warden-agent's command line as clap declares it: the flags `main.rs` parses, and what the man
//! page and the shell completions are generated from (`warden-docgen`). Declarations only: it
//! must never read the configuration or act on a flag.

use std::path::PathBuf;

use clap::Parser;

use crate::config::DEFAULT_CONFIG;

#[derive(Debug, Parser)]
#[command(
    name = "warden-agent",
    version,
    about = "warden's host agent: enrolls this host with warden-server and keeps its link.",
    after_help = "warden-agent has no subcommands: it runs until SIGTERM or SIGINT and prints \
                  nothing to parse, so it has no --json (its state is on the server: \
                  warden-server machines list). It logs plain lines to stderr, never coloured."
)]
pub struct Cli {
    /// The configuration file.
    #[arg(long, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Try it out against a local server: allows plain http://, keeps state in a per-user
    /// directory and uses the dev wardend socket. Never on a real host.
    #[arg(long)]
    pub dev: bool,
}
