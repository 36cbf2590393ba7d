//! `warden-agent`: parses flags, sets up logging, reads agent.toml and runs the agent until
//! SIGTERM/SIGINT. Exit status: 0 when stopped, 1 when it cannot run (bad config, an unsafe key
//! store: the message says what to fix), 3 when the server's answer needs an operator first.

use std::process::ExitCode;

use clap::Parser;
use warden_agent::cli::Cli;
use warden_agent::config::AgentConfig;
use warden_agent::{EXIT_FINAL, Exit, Stop};

fn main() -> ExitCode {
    let cli = Cli::parse();
    warden_agent::logging::init(std::env::var("WARDEN_AGENT_LOG").ok().as_deref());
    let cfg = match AgentConfig::load(&cli.config, cli.dev) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let (trigger, stop) = Stop::new();
        tokio::spawn(async move {
            signalled().await;
            tracing::info!("stopping");
            let _ = trigger.send(true);
        });
        match warden_agent::run(cfg, stop).await {
            Ok(Exit::Shutdown) => ExitCode::SUCCESS,
            Ok(Exit::Final(_)) => ExitCode::from(EXIT_FINAL),
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// SIGTERM or SIGINT.
async fn signalled() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
