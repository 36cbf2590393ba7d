//! `warden-server dispatch …`: the operator's remote dispatch from a terminal, through the
//! server's HTTP API (never the database): `run` (with `--watch`, live per-host states, output
//! prefixed with the host name, a summary, and the exit status from the outcome), `list`,
//! `show`, `output`, `cancel`. It authenticates with an API token (`--token` or
//! `WARDEN_SERVER_TOKEN`) or a login (`--user`, the password asked for). HTTPS is verified
//! against `--ca-file` or the system's roots, never skipped. A token or password is never
//! printed or logged.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Subcommand;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};

/// Exit status of a dispatch in which some host did not succeed.
pub const EXIT_NOT_ALL_SUCCEEDED: i32 = 2;

/// Where the server is and who is asking.
#[derive(Debug, clap::Args)]
pub struct DispatchArgs {
    /// The server's URL (http:// or https://).
    #[arg(
        long,
        env = "WARDEN_SERVER_URL",
        default_value = "https://127.0.0.1:8443"
    )]
    pub server: String,
    /// An API token (wat_…) or login token (wop_…).
    #[arg(long, env = "WARDEN_SERVER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Log in as this operator instead of a token (the password is asked for, or read from the
    /// first line of standard input when it is not a terminal).
    #[arg(long, conflicts_with = "token")]
    pub user: Option<String>,
    /// PEM certificates to verify the server against (instead of the system's roots).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: DispatchCommand,
}

#[derive(Debug, Subcommand)]
pub enum DispatchCommand {
    /// Run ACTION with k=v parameters (k:=JSON for a typed value) on the target machines.
    Run {
        /// Every machine of this site.
        #[arg(long, conflicts_with_all = ["machine", "label"])]
        site: Option<String>,
        /// These machines (repeat).
        #[arg(long, conflicts_with = "label")]
        machine: Vec<String>,
        /// Machines whose labels hold key=value (repeat: all must hold).
        #[arg(long)]
        label: Vec<String>,
        /// The action to run, as the hosts declare it (remote = true).
        action: String,
        /// Parameters as k=v (a string) or k:=JSON (a typed value).
        params: Vec<String>,
        /// Hosts in flight at once.
        #[arg(long)]
        batch: Option<i64>,
        /// Stop starting hosts once more than this many failed.
        #[arg(long)]
        max_failures: Option<i64>,
        /// The first N hosts must succeed before the rest start.
        #[arg(long)]
        canary: Option<i64>,
        /// Confirm a dispatch to more than 100 machines.
        #[arg(long)]
        yes: bool,
        /// Follow it live until it ends; the exit status says whether every host succeeded.
        #[arg(long)]
        watch: bool,
    },
    /// Dispatches, newest first.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// One dispatch: every host's state and the summary.
    Show {
        /// The dispatch id.
        id: String,
    },
    /// A host's output, in order.
    Output {
        /// The dispatch id.
        id: String,
        /// The host's machine id (muid_…).
        machine: String,
        /// Only output after this position (a previous answer's next_after).
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
    /// Cancel a dispatch (hosts not started end at once; started ones as wardend decides).
    Cancel {
        /// The dispatch id.
        id: String,
    },
}

/// A client of the server's API.
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

fn tls(ca_file: Option<&std::path::Path>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for c in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("--ca-file {}", path.display()))?
            {
                roots.add(c.with_context(|| format!("--ca-file {}", path.display()))?)?;
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A response's JSON body (null when it is none).
async fn json_body(r: reqwest::Response) -> Value {
    match r.bytes().await {
        Ok(b) => serde_json::from_slice(&b).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

fn error_of(status: reqwest::StatusCode, body: &Value) -> anyhow::Error {
    let kind = body["error"]["kind"].as_str().unwrap_or("error");
    let message = body["error"]["message"].as_str().unwrap_or("");
    anyhow::anyhow!("{status}: {kind}: {message}")
}

impl Api {
    async fn new(a: &DispatchArgs) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls(a.ca_file.as_deref())?)
            .build()?;
        let base = a.server.trim_end_matches('/').to_owned();
        let token = match (&a.token, &a.user) {
            (Some(t), _) => t.clone(),
            (None, Some(user)) => {
                let password = if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                    rpassword::prompt_password(format!("password for {user}: "))?
                } else {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line.trim_end_matches(['\r', '\n']).to_owned()
                };
                let r = http
                    .post(format!("{base}/v1/login"))
                    .header("content-type", "application/json")
                    .body(json!({"name": user, "password": password}).to_string())
                    .send()
                    .await?;
                let status = r.status();
                let body: Value = json_body(r).await;
                if !status.is_success() {
                    return Err(error_of(status, &body));
                }
                body["token"]
                    .as_str()
                    .context("the login answer has no token")?
                    .to_owned()
            }
            (None, None) => bail!("give --token (or WARDEN_SERVER_TOKEN) or --user"),
        };
        Ok(Api { http, base, token })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let r = req.send().await?;
        let status = r.status();
        let body: Value = json_body(r).await;
        if status.is_success() {
            Ok(body)
        } else {
            Err(error_of(status, &body))
        }
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// `k=v` as a string parameter, `k:=JSON` as a typed one.
pub fn parse_params(params: &[String]) -> anyhow::Result<serde_json::Map<String, Value>> {
    let mut out = serde_json::Map::new();
    for p in params {
        if let Some((k, v)) = p.split_once(":=") {
            let v: Value =
                serde_json::from_str(v).with_context(|| format!("`{p}`: not JSON after :="))?;
            out.insert(k.to_owned(), v);
        } else if let Some((k, v)) = p.split_once('=') {
            out.insert(k.to_owned(), Value::String(v.to_owned()));
        } else {
            bail!("parameter `{p}` is not key=value or key:=JSON");
        }
    }
    Ok(out)
}

fn summary_line(summary: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(m) = summary.as_object() {
        for (k, v) in m {
            if k != "total" && v.as_u64().unwrap_or(0) > 0 {
                parts.push(format!("{k} {v}"));
            }
        }
    }
    format!("{} hosts: {}", summary["total"], parts.join(", "))
}

fn show_text(v: &Value) {
    let d = &v["dispatch"];
    println!(
        "{}  {}  by {}  {}{}  created {}{}",
        d["dispatch_id"].as_str().unwrap_or(""),
        d["action"].as_str().unwrap_or(""),
        d["operator"].as_str().unwrap_or(""),
        d["state"].as_str().unwrap_or(""),
        d["stopped"]
            .as_str()
            .map(|s| format!(" (stopped: {s})"))
            .unwrap_or_default(),
        super::rfc3339(d["created_ms"].as_i64().unwrap_or(0)),
        d["ended_ms"]
            .as_i64()
            .map(|t| format!("  ended {}", super::rfc3339(t)))
            .unwrap_or_default()
    );
    for h in v["hosts"].as_array().into_iter().flatten() {
        let why = h["refusal_kind"]
            .as_str()
            .map(|k| format!(" {k}: {}", h["refusal_message"].as_str().unwrap_or("")))
            .or_else(|| h["note"].as_str().map(|n| format!(" {n}")))
            .unwrap_or_default();
        let exit = h["exit_code"]
            .as_i64()
            .map(|c| format!(" exit {c}"))
            .unwrap_or_default();
        println!(
            "  {:<24} {:<12}{exit}{why}",
            h["hostname"].as_str().unwrap_or(""),
            h["state"].as_str().unwrap_or("")
        );
    }
    for e in v["dispatch"]["excluded"].as_array().into_iter().flatten() {
        println!(
            "  left out: {} ({})",
            e["machine_id"].as_str().unwrap_or(""),
            e["reason"].as_str().unwrap_or("")
        );
    }
    println!("{}", summary_line(&v["summary"]));
}

/// Whether every host of a dispatch's summary succeeded.
fn all_succeeded(summary: &Value) -> bool {
    summary["total"].as_u64().is_some_and(|t| t > 0) && summary["succeeded"] == summary["total"]
}

/// Follows a dispatch's live stream until it ends; its summary.
async fn watch(api: &Api, id: &str, json_out: bool) -> anyhow::Result<Value> {
    let mut r = api
        .http
        .get(format!("{}/v1/dispatches/{id}/events", api.base))
        .bearer_auth(&api.token)
        .send()
        .await?;
    if !r.status().is_success() {
        let status = r.status();
        let body: Value = json_body(r).await;
        return Err(error_of(status, &body));
    }
    let mut buf = String::new();
    let mut states: BTreeMap<String, String> = BTreeMap::new();
    // The last line of each host's output, kept until it ends with a newline.
    let mut partial: BTreeMap<String, String> = BTreeMap::new();
    while let Some(chunk) = r.chunk().await? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut event = "";
            let mut data = "";
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = e;
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = d;
                }
            }
            let Ok(v) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            if json_out {
                println!("{}", json!({"event": event, "data": v}));
            }
            let host = v["hostname"].as_str().unwrap_or("").to_owned();
            match event {
                "host" if !json_out => {
                    let state = v["state"].as_str().unwrap_or("").to_owned();
                    if states.get(&host) != Some(&state) {
                        let why = v["refusal_kind"]
                            .as_str()
                            .map(|k| {
                                format!(" ({k}: {})", v["refusal_message"].as_str().unwrap_or(""))
                            })
                            .or_else(|| v["note"].as_str().map(|n| format!(" ({n})")))
                            .unwrap_or_default();
                        println!("[{host}] {state}{why}");
                        states.insert(host, state);
                    }
                }
                "output" if !json_out => {
                    let text = partial.remove(&host).unwrap_or_default()
                        + v["data"].as_str().unwrap_or("");
                    let mut lines: Vec<&str> = text.split('\n').collect();
                    let rest = lines.pop().unwrap_or("");
                    for l in lines {
                        println!("{host}| {l}");
                    }
                    if !rest.is_empty() {
                        partial.insert(host, rest.to_owned());
                    }
                }
                "end" => {
                    if !json_out {
                        for (host, rest) in &partial {
                            println!("{host}| {rest}");
                        }
                        println!(
                            "dispatch {id} {}: {}",
                            v["state"].as_str().unwrap_or(""),
                            summary_line(&v["summary"])
                        );
                        if let Some(s) = v["stopped"].as_str() {
                            println!("stopped starting hosts: {s}");
                        }
                    }
                    return Ok(v["summary"].clone());
                }
                _ => {}
            }
        }
    }
    bail!("the server closed the stream before the dispatch ended")
}

/// Runs a `dispatch` command.
pub async fn run(args: DispatchArgs, json_out: bool) -> anyhow::Result<()> {
    let api = Api::new(&args).await?;
    use reqwest::Method;
    match args.command {
        DispatchCommand::Run {
            site,
            machine,
            label,
            action,
            params,
            batch,
            max_failures,
            canary,
            yes,
            watch: follow,
        } => {
            let target = if let Some(site) = site {
                json!({"site": site})
            } else if !machine.is_empty() {
                json!({"machines": machine})
            } else if !label.is_empty() {
                let mut labels = serde_json::Map::new();
                for l in &label {
                    let (k, v) = l
                        .split_once('=')
                        .with_context(|| format!("--label `{l}` is not key=value"))?;
                    labels.insert(k.to_owned(), Value::String(v.to_owned()));
                }
                json!({"labels": labels})
            } else {
                bail!("give a target: --site, --machine or --label");
            };
            let mut body = json!({"target": target, "action": action,
                "params": parse_params(&params)?, "confirm": yes});
            for (k, v) in [
                ("batch", batch),
                ("max_failures", max_failures),
                ("canary", canary),
            ] {
                if let Some(v) = v {
                    body[k] = json!(v);
                }
            }
            let created = api.call(Method::POST, "/v1/dispatches", Some(body)).await?;
            let id = created["dispatch"]["dispatch_id"]
                .as_str()
                .context("the answer has no dispatch id")?
                .to_owned();
            if json_out && !follow {
                print_json(&created);
                return Ok(());
            }
            if !json_out {
                println!(
                    "dispatch {id}: {} hosts",
                    created["summary"]["total"].as_u64().unwrap_or(0)
                );
                for e in created["dispatch"]["excluded"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    println!(
                        "left out: {} ({})",
                        e["machine_id"].as_str().unwrap_or(""),
                        e["reason"].as_str().unwrap_or("")
                    );
                }
            }
            if follow {
                let summary = watch(&api, &id, json_out).await?;
                if !all_succeeded(&summary) {
                    std::process::exit(EXIT_NOT_ALL_SUCCEEDED);
                }
            }
            Ok(())
        }
        DispatchCommand::List { limit } => {
            let v = api
                .call(Method::GET, &format!("/v1/dispatches?limit={limit}"), None)
                .await?;
            if json_out {
                print_json(&v);
            } else {
                let list = v["dispatches"].as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    println!("no dispatches");
                }
                for d in &list {
                    println!(
                        "{}  {}  {:<10} {:<24} by {}",
                        d["dispatch_id"].as_str().unwrap_or(""),
                        super::rfc3339(d["created_ms"].as_i64().unwrap_or(0)),
                        d["state"].as_str().unwrap_or(""),
                        d["action"].as_str().unwrap_or(""),
                        d["operator"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(())
        }
        DispatchCommand::Show { id } => {
            let v = api
                .call(Method::GET, &format!("/v1/dispatches/{id}"), None)
                .await?;
            if json_out {
                print_json(&v);
            } else {
                show_text(&v);
            }
            Ok(())
        }
        DispatchCommand::Output { id, machine, after } => {
            let mut after = after;
            loop {
                let v = api
                    .call(
                        Method::GET,
                        &format!("/v1/dispatches/{id}/hosts/{machine}/output?after={after}"),
                        None,
                    )
                    .await?;
                let chunks = v["chunks"].as_array().cloned().unwrap_or_default();
                if json_out {
                    print_json(&v);
                } else {
                    for c in &chunks {
                        print!("{}", c["data"].as_str().unwrap_or(""));
                    }
                }
                match v["next_after"].as_i64() {
                    Some(n) if n > after && !chunks.is_empty() => after = n,
                    _ => return Ok(()),
                }
            }
        }
        DispatchCommand::Cancel { id } => {
            let v = api
                .call(Method::POST, &format!("/v1/dispatches/{id}/cancel"), None)
                .await?;
            if json_out {
                print_json(&v);
            } else {
                println!(
                    "dispatch {id}: {} not started, {} asked to cancel",
                    v["not_started"], v["asked_to_cancel"]
                );
            }
            Ok(())
        }
    }
}
