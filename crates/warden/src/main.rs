//! `warden`: the command line for wardend. Short human output by default, `--json` for scripts.
//!
//! Exit statuses and the one shape of an error live in `failure.rs`: 0 ok, 1 error, 2 usage,
//! 3 refused (forbidden or locked down), 4 daemon unavailable, 5 to 10 a job's state.

mod failure;
mod jobs;
mod render;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde::Serialize;
use warden_client::{Client, ClientError};
use warden_proto::envelope::Incoming;
use warden_proto::jobs::JobState;

use crate::failure::{Failure, exit, fail};

/// The name this CLI gives in `hello`.
const CLIENT_NAME: &str = "warden-cli";

#[derive(Debug, Parser)]
#[command(
    name = "warden",
    version,
    about = "Talk to wardend, warden's privilege broker",
    after_help = "Exit status: 0 ok, 1 error, 2 usage, 3 refused (forbidden by the daemon or the \
                  socket's permissions, or locked down), 4 daemon not running; `run` and `job` \
                  report the job's end with 5 failed, 6 cancelled, 7 timed out, 8 rolled back, \
                  9 lost, and `job` one not ended yet with 10. With --json an error is \
                  {\"error\": {\"kind\", \"message\", \"correlation_id\"}} on stdout."
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
    /// List the actions you could run.
    Actions,
    /// Run an action and follow its job until it ends; the exit status says how it ended.
    Run {
        /// The action's name.
        action: String,
        /// Parameters as key=value.
        params: Vec<String>,
        /// Print the job id and return at once.
        #[arg(long)]
        detach: bool,
        /// On Ctrl-C, cancel the job without asking.
        #[arg(long)]
        cancel_on_interrupt: bool,
        /// Starting again with the same key within 10 minutes returns the same job.
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
    },
    /// List jobs, newest first.
    Jobs {
        /// Everyone's jobs (operators and admins).
        #[arg(long)]
        all: bool,
        /// Only jobs in this state (queued, running, succeeded, failed, cancelled, timed_out,
        /// rolled_back, lost).
        #[arg(long, value_parser = parse_state)]
        state: Option<JobState>,
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
    },
    /// Show one job.
    Job {
        /// The job id (job_…).
        id: String,
    },
    /// Cancel a job (before its commit point; after it only if its action can roll back).
    Cancel { id: String },
    /// Show the ops toggles, or switch one (admin).
    Ops {
        #[command(subcommand)]
        command: Option<OpsCommand>,
    },
    /// Print events as they happen (Ctrl-C stops): job, resource, ops and lockdown unless
    /// --topic says.
    Events {
        /// job, resource, ops, lockdown, alert (operator) or audit (admin); repeat for more.
        #[arg(long = "topic")]
        topics: Vec<String>,
    },
    /// The policy in force (admin).
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Check the installation's security posture through the daemon (admin); exits 1 on errors.
    Doctor,
    /// This host as a fleet sees it (admin, or the fleet agent's user).
    Host {
        #[command(subcommand)]
        command: HostCommand,
    },
    /// Show the newest alerts (operator).
    Alerts {
        /// How many.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: u32,
    },
    /// The kill switch: refuse every request that changes state (admin).
    Lockdown {
        #[command(subcommand)]
        command: LockdownCommand,
    },
    /// Directories you own, made and removed by the daemon: workspaces, shares, mailboxes.
    Resource {
        #[command(subcommand)]
        command: ResourceCommand,
    },
    /// The audit log (admin).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Print a job's output.
    Logs {
        id: String,
        /// Keep printing new output until the job ends.
        #[arg(short, long)]
        follow: bool,
    },
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

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Read the configuration file again and put it in force (as SIGHUP does).
    Reload,
    /// How the gate would decide a request from a user: METHOD, or `run ACTION key=value…`.
    Explain {
        #[arg(long, conflicts_with = "uid", required_unless_present = "uid")]
        user: Option<String>,
        #[arg(long)]
        uid: Option<u32>,
        /// A listener's socket path (the first configured when absent).
        #[arg(long)]
        listener: Option<String>,
        /// A method name, or `run` for job.start.
        method: String,
        /// For `run`: the action, then its values as key=value; for a method: its params as
        /// key=value (e.g. `resource.create kind=workspace name=ws1`).
        rest: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum OpsCommand {
    /// Switch a toggle on or off; off asks the running jobs that need it to stop.
    Set {
        name: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
        /// Why, for the audit log.
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
enum ResourceCommand {
    /// Make a resource of KIND called NAME, owned by you.
    Create {
        kind: String,
        name: String,
        /// Root only: the user (name or uid) to make it for.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Delete one of your resources and everything in it.
    Delete { kind: String, name: String },
    /// Show one of your resources.
    Get { kind: String, name: String },
    /// List your resources (an admin sees everyone's).
    List {
        /// Only this kind.
        #[arg(long)]
        kind: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum HostCommand {
    /// The machine id wardend derives from the hardware, its source, and whether it is degraded.
    Identity,
}

#[derive(Debug, Subcommand)]
enum LockdownCommand {
    /// Engage it; running jobs that change state are asked to stop.
    Engage {
        /// Why, shown to everyone refused meanwhile.
        #[arg(long)]
        reason: String,
    },
    /// Release it.
    Release,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the audit log's hash chain; exits 1 and names the first bad record if it is broken.
    Verify,
    /// Print the latest audit records.
    Tail {
        /// How many.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: u32,
        /// Keep printing new records (Ctrl-C stops).
        #[arg(short, long)]
        follow: bool,
        /// Only records about this uid.
        #[arg(long)]
        uid: Option<u32>,
        /// Only records about this job.
        #[arg(long)]
        job: Option<String>,
    },
}

fn parse_state(s: &str) -> Result<JobState, String> {
    JobState::from_name(s).ok_or_else(|| format!("`{s}` is not a job state"))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
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
    let json = cli.json;
    if let Command::Version = cli.command {
        return version(&socket, json).await;
    }
    let mut client = match Client::connect(&socket, CLIENT_NAME).await {
        Ok(c) => c,
        Err(e) => return fail(&e, json),
    };
    let result = match cli.command {
        Command::Status => client
            .status()
            .await
            .map(|s| show(json, &s, render::status)),
        Command::Whoami => client
            .whoami()
            .await
            .map(|w| show(json, &w, render::whoami)),
        Command::Host {
            command: HostCommand::Identity,
        } => client
            .host_identity()
            .await
            .map(|h| show(json, &h, render::host_identity)),
        Command::Call {
            method,
            params,
            repeat,
        } => return call(&mut client, &method, &params, repeat).await,
        Command::Actions => jobs::actions(&mut client, json).await,
        Command::Run {
            action,
            params,
            detach,
            cancel_on_interrupt,
            idempotency_key,
        } => {
            let o = jobs::RunOptions {
                detach,
                json,
                cancel_on_interrupt,
                idempotency_key,
            };
            return jobs::run(&mut client, &action, &params, o).await;
        }
        Command::Jobs { all, state, limit } => {
            jobs::list(&mut client, all, state, limit, json).await
        }
        Command::Job { id } => jobs::show(&mut client, &id, json).await,
        Command::Cancel { id } => jobs::cancel(&mut client, &id, json).await,
        Command::Logs { id, follow } => jobs::logs(&mut client, &id, follow, json).await,
        Command::Events { topics } => return events(&mut client, topics, json).await,
        Command::Policy {
            command:
                PolicyCommand::Explain {
                    user,
                    uid,
                    listener,
                    method,
                    rest,
                },
        } => {
            let (action, pairs) = if method == "run" {
                let Some((action, pairs)) = rest.split_first() else {
                    return Failure::usage("`run` needs an action").report(json);
                };
                (Some(action.clone()), pairs)
            } else {
                (None, &rest[..])
            };
            let params = match jobs::untyped_params(pairs) {
                Ok(params) => (!params.is_empty() || action.is_some()).then_some(params),
                Err(e) => return e.report(json),
            };
            let method = if action.is_some() {
                "job.start".to_owned()
            } else {
                method
            };
            let p = serde_json::json!({
                "user": user, "uid": uid, "listener": listener,
                "method": method, "action": action, "params": params,
            });
            client
                .call::<_, warden_proto::messages::ExplainResult>("policy.explain", &p)
                .await
                .map(|r| show(json, &r, render::explained))
        }
        Command::Policy {
            command: PolicyCommand::Reload,
        } => client
            .call::<_, warden_proto::messages::PolicyReloadResult>(
                "policy.reload",
                &serde_json::json!({}),
            )
            .await
            .map(|r| show(json, &r, render::reloaded)),
        Command::Doctor => client
            .call::<_, warden_proto::messages::DoctorResult>("doctor", &serde_json::json!({}))
            .await
            .map(|d| {
                let code = show(json, &d, render::doctor);
                if d.findings.iter().any(|f| f.severity == "error") {
                    ExitCode::from(exit::ERROR)
                } else {
                    code
                }
            }),
        Command::Alerts { lines } => client
            .alerts(Some(lines))
            .await
            .map(|a| show(json, &a, render::alerts)),
        Command::Ops { command: None } => client.ops().await.map(|o| show(json, &o, render::ops)),
        Command::Ops {
            command:
                Some(OpsCommand::Set {
                    name,
                    state,
                    reason,
                }),
        } => client
            .set_op(&name, state == "on", &reason)
            .await
            .map(|o| show(json, &o, render::ops)),
        Command::Lockdown {
            command: LockdownCommand::Engage { reason },
        } => client
            .lockdown_engage(&reason)
            .await
            .map(|l| show(json, &l, render::lockdown)),
        Command::Resource {
            command: ResourceCommand::Create { kind, name, owner },
        } => {
            let owner = owner.map(|o| match o.parse::<u32>() {
                Ok(uid) => warden_proto::request::OwnerRef::Uid(uid),
                Err(_) => warden_proto::request::OwnerRef::Name(o),
            });
            client
                .resource_create(&kind, &name, owner)
                .await
                .map(|r| show(json, &r, render::resource))
        }
        Command::Resource {
            command: ResourceCommand::Delete { kind, name },
        } => client
            .resource_delete(&kind, &name)
            .await
            .map(|r| show(json, &r, render::resource_deleted)),
        Command::Resource {
            command: ResourceCommand::Get { kind, name },
        } => client
            .resource_get(&kind, &name)
            .await
            .map(|r| show(json, &r, render::resource)),
        Command::Resource {
            command: ResourceCommand::List { kind },
        } => client
            .resources(kind.as_deref())
            .await
            .map(|r| show(json, &r, render::resources)),
        Command::Lockdown {
            command: LockdownCommand::Release,
        } => client
            .lockdown_release()
            .await
            .map(|l| show(json, &l, render::lockdown)),
        Command::Audit {
            command:
                AuditCommand::Tail {
                    lines,
                    follow,
                    uid,
                    job,
                },
        } => {
            let filter = warden_proto::request::AuditQueryParams {
                uid,
                job_id: job,
                limit: Some(lines),
                ..Default::default()
            };
            return audit_tail(&mut client, filter, follow, json).await;
        }
        Command::Audit {
            command: AuditCommand::Verify,
        } => client.audit_verify().await.map(|v| {
            let code = show(json, &v, render::audit_verify);
            if v.intact {
                code
            } else {
                ExitCode::from(exit::ERROR)
            }
        }),
        Command::Version => unreachable!("handled above"),
    };
    match result {
        Ok(code) => code,
        Err(e) => fail(&e, json),
    }
}

/// `warden events`: subscribes and prints each event on a line until Ctrl-C or the stream ends.
async fn events(client: &mut Client, topics: Vec<String>, json: bool) -> ExitCode {
    let topics = if topics.is_empty() {
        vec![
            "job".to_owned(),
            "resource".to_owned(),
            "ops".to_owned(),
            "lockdown".to_owned(),
        ]
    } else {
        topics
    };
    let params = serde_json::json!({ "topics": topics });
    if let Err(e) = client.send("events.subscribe", &params).await {
        return fail(&e, json);
    }
    loop {
        let frame = tokio::select! {
            f = client.receive() => f,
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        };
        let frame = match frame {
            Ok(f) => f,
            Err(e) => return fail(&e, json),
        };
        match Incoming::parse(&frame) {
            Ok(Incoming::Notification {
                method,
                params: Some(p),
            }) => {
                if json {
                    println!("{}", p.get());
                } else if let Ok(v) = serde_json::from_str::<serde_json::Value>(p.get()) {
                    println!("{}", render::event(&method, &v));
                }
            }
            Ok(Incoming::Response {
                outcome: Err(e), ..
            }) => {
                return fail(&ClientError::Rpc(e), json);
            }
            Ok(Incoming::Response { .. }) => return ExitCode::SUCCESS,
            _ => {}
        }
    }
}

/// `warden audit tail`: the latest records, then (with `follow`) new ones as they come.
async fn audit_tail(
    client: &mut Client,
    mut filter: warden_proto::request::AuditQueryParams,
    follow: bool,
    json: bool,
) -> ExitCode {
    loop {
        let got = match client.audit_query(&filter).await {
            Ok(g) => g,
            Err(e) => return fail(&e, json),
        };
        for r in &got.records {
            if json {
                println!("{r}");
            } else {
                println!("{}", render::audit_record(r));
            }
        }
        if !follow {
            return ExitCode::SUCCESS;
        }
        filter.after_seq = Some(
            got.records
                .last()
                .and_then(|r| r["seq"].as_u64())
                .unwrap_or(got.head_seq)
                .max(filter.after_seq.unwrap_or(0)),
        );
        filter.limit = Some(warden_proto::request::MAX_AUDIT_RECORDS);
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        }
    }
}

fn show<T: Serialize>(json: bool, value: &T, human: fn(&T) -> String) -> ExitCode {
    if json {
        print_json(value);
    } else {
        print!("{}", human(value));
    }
    ExitCode::SUCCESS
}

/// Prints `value` as pretty JSON on stdout.
fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("warden: cannot print the result: {e}"),
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

/// `warden call`: prints the raw answers. Its output is JSON with or without `--json`, so a
/// failure before any answer is the one JSON error shape too.
async fn call(client: &mut Client, method: &str, params: &str, repeat: usize) -> ExitCode {
    let params: serde_json::Value = match serde_json::from_str(params) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        _ => return Failure::usage("params must be a JSON object, e.g. '{}'").report(true),
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
            status = Failure::from(&ClientError::Rpc(e)).exit_code();
        }
    }
    ExitCode::from(status)
}

/// A command line clap refused. Help and version go to stdout as usual; an error is the one
/// error shape on stdout under `--json`, clap's own message otherwise; both exit 2.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind as Clap;
    let json = std::env::args_os().skip(1).any(|a| a == "--json");
    if json && !matches!(e.kind(), Clap::DisplayHelp | Clap::DisplayVersion) {
        let message = e.render().to_string();
        let message = message
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ");
        return Failure::usage(message).report(true);
    }
    let _ = e.print();
    ExitCode::from(match e.kind() {
        Clap::DisplayHelp | Clap::DisplayVersion => exit::OK,
        _ => exit::USAGE,
    })
}
