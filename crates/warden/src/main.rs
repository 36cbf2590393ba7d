//! `warden`: the command line for wardend. Short human output by default, `--json` for scripts.
//!
//! Exit statuses and the one shape of an error live in `failure.rs`: 0 ok, 1 error, 2 usage,
//! 3 refused (forbidden or locked down), 4 daemon unavailable, 5 to 10 a job's state.

mod failure;
mod jobs;
mod render;
mod time;

use std::process::ExitCode;

use clap::Parser;
use serde::Serialize;
use warden_client::{Client, ClientError};
use warden_proto::envelope::Incoming;

use warden::cli::{
    AuditCommand, Cli, Command, HostCommand, LockdownCommand, OpsCommand, PolicyCommand,
    ResourceCommand,
};

use crate::failure::{Failure, exit, fail};

/// The name this CLI gives in `hello`.
const CLIENT_NAME: &str = "warden-cli";

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
        if !follow {
            // One answer: a JSON array under --json (empty when there is nothing), else one
            // line per record, or a line that says there is none.
            if json {
                print_json(&got.records);
            } else if got.records.is_empty() {
                println!("no audit records");
            }
        }
        for r in &got.records {
            if json && follow {
                println!("{r}");
            } else if !json {
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
