//! `warden`: the command line for wardend. Short human output by default, `--json` for scripts.
//!
//! Exit status: 0 ok, 1 error, 2 usage, 3 forbidden (by the daemon's gate or the socket's
//! permissions), 4 daemon unavailable.

mod render;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde::Serialize;
use warden_client::{Client, ClientError};
use warden_proto::ErrorKind;
use warden_proto::envelope::Incoming;

/// The name this CLI gives in `hello`.
const CLIENT_NAME: &str = "warden-cli";

#[derive(Debug, Parser)]
#[command(
    name = "warden",
    version,
    about = "Talk to wardend, warden's privilege broker",
    after_help = "Exit status: 0 ok, 1 error, 2 usage, 3 forbidden (by the daemon or the \
                  socket's permissions), 4 daemon not running."
)]
struct Cli {
    /// wardend's socket [default: /run/warden/warden.sock if it exists, else the --dev socket]
    #[arg(long, global = true, value_name = "PATH", env = "WARDEN_SOCKET")]
    socket: Option<PathBuf>,
    /// Print results as JSON, for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the daemon's state: uptime, connections, violations, limits.
    Status,
    /// Show who the daemon thinks you are, your tier, and why.
    Whoami,
    /// Show the versions of this CLI and of the daemon.
    Version,
    /// Send one request and print the daemon's raw JSON-RPC answer (for scripts and debugging).
    Call {
        /// Method name, e.g. `status`.
        method: String,
        /// Params as a JSON object.
        #[arg(default_value = "{}")]
        params: String,
        /// Send the request this many times, pipelined, and print every answer.
        #[arg(long, default_value_t = 1, value_name = "N")]
        repeat: usize,
    },
}

/// Exit statuses, as documented in the README and `warden --help`.
mod exit {
    pub const ERROR: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const FORBIDDEN: u8 = 3;
    pub const UNAVAILABLE: u8 = 4;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warden: cannot start: {e}");
            return ExitCode::from(exit::ERROR);
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(warden_client::default_socket);
    if let Command::Version = cli.command {
        return version(&socket, cli.json).await;
    }
    let mut client = match Client::connect(&socket, CLIENT_NAME).await {
        Ok(c) => c,
        Err(e) => return fail(&e, cli.json),
    };
    let result = match cli.command {
        Command::Status => client
            .status()
            .await
            .map(|s| show(cli.json, &s, render::status)),
        Command::Whoami => client
            .whoami()
            .await
            .map(|w| show(cli.json, &w, render::whoami)),
        Command::Call {
            method,
            params,
            repeat,
        } => return call(&mut client, &method, &params, repeat).await,
        Command::Version => unreachable!("handled above"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e, cli.json),
    }
}

fn show<T: Serialize>(json: bool, value: &T, human: fn(&T) -> String) {
    if json {
        match serde_json::to_string_pretty(value) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("warden: cannot print the result: {e}"),
        }
    } else {
        print!("{}", human(value));
    }
}

async fn version(socket: &std::path::Path, json: bool) -> ExitCode {
    let cli_version = env!("CARGO_PKG_VERSION");
    let daemon = match Client::connect(socket, CLIENT_NAME).await {
        Ok(mut c) => c.version().await,
        Err(e) => Err(e),
    };
    match daemon {
        Ok(d) if json => {
            let v = serde_json::json!({"cli_version": cli_version, "daemon_version": d.daemon_version, "protocol": d.protocol});
            println!("{v:#}");
            ExitCode::SUCCESS
        }
        Ok(d) => {
            println!(
                "warden {cli_version}\nwardend {} (protocol {})",
                d.daemon_version, d.protocol
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            if !json {
                println!("warden {cli_version}");
            }
            fail(&e, json)
        }
    }
}

async fn call(client: &mut Client, method: &str, params: &str, repeat: usize) -> ExitCode {
    let params: serde_json::Value = match serde_json::from_str(params) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        _ => {
            eprintln!("warden: params must be a JSON object, e.g. '{{}}'");
            return ExitCode::from(exit::USAGE);
        }
    };
    let answers = match client.pipeline(method, &params, repeat.max(1)).await {
        Ok(a) => a,
        Err(e) => return fail(&e, true),
    };
    let mut status = if answers.len() < repeat.max(1) {
        exit::ERROR
    } else {
        0
    };
    for frame in &answers {
        println!("{}", String::from_utf8_lossy(frame));
        if status == 0
            && let Ok(Incoming::Response {
                outcome: Err(e), ..
            }) = Incoming::parse(frame)
        {
            status = code_for(&ClientError::Rpc(e));
        }
    }
    ExitCode::from(status)
}

fn code_for(e: &ClientError) -> u8 {
    match e {
        ClientError::Unavailable { .. } => exit::UNAVAILABLE,
        ClientError::PermissionDenied { .. } => exit::FORBIDDEN,
        ClientError::Rpc(r) => match r.kind() {
            ErrorKind::Forbidden => exit::FORBIDDEN,
            ErrorKind::Unavailable => exit::UNAVAILABLE,
            _ => exit::ERROR,
        },
        ClientError::Io(_) | ClientError::Protocol(_) => exit::ERROR,
    }
}

fn fail(e: &ClientError, json: bool) -> ExitCode {
    if json {
        let v = match e {
            ClientError::Rpc(r) => serde_json::json!({"error": r}),
            other => serde_json::json!({"error": {"message": other.to_string()}}),
        };
        println!("{v:#}");
    } else {
        match e {
            ClientError::Rpc(r) => eprintln!(
                "warden: {}: {} (correlation id {})",
                r.kind(),
                r.message,
                r.data.correlation_id
            ),
            other => eprintln!("warden: {other}"),
        }
    }
    ExitCode::from(code_for(e))
}
