//! `warden actions`, `run`, `jobs`, `job`, `cancel` and `logs`. What the daemon refuses is shown
//! as the daemon said it (through `failure.rs`); `run` and `job` exit with the job's state.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value};
use tokio::signal::unix::{Signal, SignalKind, signal};
use warden_client::{Client, ClientError};
use warden_proto::ErrorKind;
use warden_proto::envelope::Incoming;
use warden_proto::jobs::{ActionInfo, JobRecord, JobState, LogChunk, ParamKind, notification};

use crate::failure::{Failure, exit, fail, job_code};
use crate::print_json;
use crate::time::{self, timestamp};

fn param_hint(kind: &ParamKind) -> String {
    match kind {
        ParamKind::String { .. } => "<text>".into(),
        ParamKind::Enum { values } => values.join("|"),
        ParamKind::Int { min, max } => format!("<{min}..{max}>"),
        ParamKind::Bool => "true|false".into(),
        ParamKind::Path { .. } => "<path>".into(),
    }
}

/// `warden actions`
pub async fn actions(client: &mut Client, json: bool) -> Result<ExitCode, ClientError> {
    let list = client.actions().await?;
    if json {
        print_json(&list);
        return Ok(ExitCode::SUCCESS);
    }
    if list.actions.is_empty() {
        println!("no actions you could run");
    }
    for a in &list.actions {
        let params: Vec<String> = a
            .params
            .iter()
            .map(|(n, p)| format!("{n}={}", param_hint(&p.kind)))
            .collect();
        println!("{:<20} {:<10} {}", a.name, a.tier, a.description);
        if !params.is_empty() {
            println!("{:<20} {:<10} {}", "", "", params.join(" "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Turns `key=value` arguments into params without a declaration to follow: numbers and
/// booleans as such, the rest as text. The daemon checks them against the action's own.
pub fn untyped_params(pairs: &[String]) -> Result<Map<String, Value>, Failure> {
    let mut out = Map::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(Failure::usage(format!("`{pair}` is not key=value")));
        };
        let value = serde_json::from_str::<Value>(value)
            .ok()
            .filter(|v| v.is_number() || v.is_boolean())
            .unwrap_or_else(|| Value::from(value));
        out.insert(key.to_owned(), value);
    }
    Ok(out)
}

/// Turns `key=value` arguments into typed params, following the action's declaration.
fn parse_params(action: &ActionInfo, pairs: &[String]) -> Result<Map<String, Value>, Failure> {
    let mut out = Map::new();
    for pair in pairs {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| Failure::usage(format!("`{pair}` is not key=value")))?;
        let Some(param) = action.params.get(key) else {
            let known: Vec<&str> = action.params.keys().map(String::as_str).collect();
            return Err(Failure::usage(format!(
                "action {} has no parameter `{key}`; it takes: {}",
                action.name,
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            )));
        };
        let typed = match &param.kind {
            ParamKind::Int { .. } => Value::from(
                value
                    .parse::<i64>()
                    .map_err(|_| Failure::usage(format!("`{key}` must be an integer")))?,
            ),
            ParamKind::Bool => Value::from(match value {
                "true" | "yes" | "1" => true,
                "false" | "no" | "0" => false,
                _ => {
                    return Err(Failure::usage(format!("`{key}` must be true or false")));
                }
            }),
            _ => Value::from(value),
        };
        out.insert(key.to_owned(), typed);
    }
    Ok(out)
}

/// How `run` shows a job while it runs: a progress bar on a terminal, plain lines otherwise.
struct Display {
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: String,
}

impl Display {
    fn new(json: bool) -> Display {
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(100);
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos:>3}% {msg}",
            ) {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Display {
            bar,
            started: Instant::now(),
            last_line: String::new(),
        }
    }

    fn describe(r: &JobRecord) -> String {
        match (&r.phase, &r.message) {
            (Some(p), Some(m)) => format!("{p}: {m}"),
            (Some(p), None) => p.clone(),
            (None, Some(m)) => m.clone(),
            (None, None) => r.state.to_string(),
        }
    }

    fn update(&mut self, r: &JobRecord, quiet: bool) {
        let text = Display::describe(r);
        match &self.bar {
            Some(bar) => {
                bar.set_position(r.progress.unwrap_or(0).into());
                bar.set_message(text);
            }
            None if !quiet => {
                let line = format!("{:>3}% {text}", r.progress.unwrap_or(0));
                if line != self.last_line {
                    eprintln!("[{:>6.1}s] {line}", self.started.elapsed().as_secs_f64());
                    self.last_line = line;
                }
            }
            None => {}
        }
    }

    fn note(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    /// Asks a yes/no question on the terminal, pausing the bar.
    fn ask(&self, question: &str) -> bool {
        let ask = || {
            eprint!("{question} [y/N] ");
            let _ = std::io::stderr().flush();
            let mut answer = String::new();
            let _ = std::io::stdin().read_line(&mut answer);
            matches!(answer.trim(), "y" | "Y" | "yes")
        };
        match &self.bar {
            Some(bar) => bar.suspend(ask),
            None => ask(),
        }
    }
}

/// Options of `warden run`.
pub struct RunOptions {
    pub detach: bool,
    pub json: bool,
    pub cancel_on_interrupt: bool,
    pub idempotency_key: Option<String>,
}

/// `warden run ACTION key=value…`
pub async fn run(client: &mut Client, action: &str, pairs: &[String], o: RunOptions) -> ExitCode {
    // The declaration is needed only to type the values given; without any, the daemon's own
    // check of job.start says all there is to say, one round trip sooner.
    let params = if pairs.is_empty() {
        Map::new()
    } else {
        match client.describe(action).await {
            Ok(info) => match parse_params(&info, pairs) {
                Ok(p) => p,
                Err(e) => return e.report(o.json),
            },
            // The daemon hides an action from whoever could not start it now, for whatever
            // reason: a lockdown, an ops toggle switched off, a missing tier. Only job.start
            // says which (and with which kind), so ask it, with the values as given: the gate
            // decides before the values are checked.
            Err(ClientError::Rpc(e))
                if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Forbidden) =>
            {
                match untyped_params(pairs) {
                    Ok(p) => p,
                    Err(e) => return e.report(o.json),
                }
            }
            Err(e) => return fail(&e, o.json),
        }
    };
    // Ctrl-C is caught from before the job starts: one that comes while the job is being
    // started is then handled like any other instead of killing the CLI.
    let interrupts = match signal(SignalKind::interrupt()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("warden: cannot catch Ctrl-C: {e}");
            return ExitCode::from(exit::ERROR);
        }
    };
    let started = match client
        .start(action, &params, o.idempotency_key.as_deref())
        .await
    {
        Ok(s) => s,
        Err(e) => return fail(&e, o.json),
    };
    let job_id = started.job_id.to_string();
    if o.detach {
        if o.json {
            print_json(&started);
        } else {
            println!("{job_id}");
        }
        return ExitCode::SUCCESS;
    }
    match follow(client, &job_id, &o, interrupts).await {
        Ok(record) => {
            if o.json {
                print_json(&record);
            } else {
                summarize(&record);
            }
            ExitCode::from(job_code(record.state))
        }
        Err(Stopped::Interrupted) => {
            eprintln!(
                "warden: interrupted; {job_id} keeps running (warden cancel {job_id} stops it)"
            );
            ExitCode::from(exit::INTERRUPTED)
        }
        Err(Stopped::Failed(mut f)) => {
            f.message = format!("lost track of {job_id}: {}", f.message);
            f.report(o.json)
        }
    }
}

/// Why `run` stopped following a job before it ended.
enum Stopped {
    /// Ctrl-C when nobody can be asked whether to cancel.
    Interrupted,
    /// The connection broke or the daemon refused to watch the job.
    Failed(Failure),
}

/// Watches the job until it is final, handling Ctrl-C.
async fn follow(
    client: &mut Client,
    job_id: &str,
    o: &RunOptions,
    mut interrupts: Signal,
) -> Result<JobRecord, Stopped> {
    let mut display = Display::new(o.json);
    let fail_with = |display: &Display, e: &ClientError| {
        display.finish();
        Stopped::Failed(Failure::from(e))
    };
    let watch_id = match client
        .send("job.watch", &serde_json::json!({ "job_id": job_id }))
        .await
    {
        Ok(id) => id,
        Err(e) => return Err(fail_with(&display, &e)),
    };
    let mut cancel_id: Option<u64> = None;
    loop {
        tokio::select! {
            frame = client.receive() => {
                let frame = match frame {
                    Ok(f) => f,
                    Err(e) => return Err(fail_with(&display, &e)),
                };
                match Incoming::parse(&frame) {
                    Ok(Incoming::Notification { method, params: Some(p) }) if method == notification::JOB_UPDATE => {
                        if let Ok(r) = serde_json::from_str::<JobRecord>(p.get()) {
                            display.update(&r, o.json);
                        }
                    }
                    Ok(Incoming::Response { id, outcome }) if id == watch_id => {
                        let record = match outcome {
                            Ok(raw) => serde_json::from_str::<JobRecord>(raw.get())
                                .map_err(|e| ClientError::Protocol(format!("job.watch result: {e}"))),
                            Err(e) => Err(ClientError::Rpc(e)),
                        };
                        match record {
                            Ok(r) => {
                                // The last progress may come only with the final record (updates
                                // are throttled): show it like the others.
                                display.update(&r, o.json);
                                display.finish();
                                return Ok(r);
                            }
                            Err(e) => return Err(fail_with(&display, &e)),
                        }
                    }
                    Ok(Incoming::Response { id, outcome: Err(e) }) if Some(id.as_u64().unwrap_or(0)) == cancel_id => {
                        let why = if e.kind() == ErrorKind::Conflict { "cannot cancel" } else { "cancel failed" };
                        display.note(&format!("warden: {why}: {}", e.message));
                        cancel_id = None;
                    }
                    _ => {}
                }
            }
            _ = interrupts.recv(), if cancel_id.is_none() => {
                let cancel = o.cancel_on_interrupt
                    || (std::io::stdin().is_terminal() && display.ask(&format!("Cancel {job_id}?")));
                if !cancel && !std::io::stdin().is_terminal() {
                    display.finish();
                    return Err(Stopped::Interrupted);
                }
                if cancel {
                    display.note(&format!("cancelling {job_id}"));
                    cancel_id = client.send("job.cancel", &serde_json::json!({ "job_id": job_id })).await.ok();
                }
            }
        }
    }
}

fn summarize(r: &JobRecord) {
    let time = |t: &Option<String>| t.as_deref().and_then(|t| humantime::parse_rfc3339(t).ok());
    let took = match (time(&r.started_at), time(&r.ended_at)) {
        (Some(s), Some(e)) => e
            .duration_since(s)
            .map(|d| format!(" in {:.1}s", d.as_secs_f64()))
            .unwrap_or_default(),
        _ => String::new(),
    };
    println!("{} {} {}{took}", r.job_id, r.action, r.state);
    if let Some(m) = &r.message
        && r.state != JobState::Succeeded
    {
        println!("  {m}");
    }
    if let Some(result) = &r.result {
        println!("  result: {result}");
    }
    println!("  output: warden logs {}", r.job_id);
}

/// `warden jobs`
pub async fn list(
    client: &mut Client,
    all: bool,
    state: Option<JobState>,
    limit: Option<u32>,
    json: bool,
) -> Result<ExitCode, ClientError> {
    let jobs = client.jobs(all, state, limit).await?;
    if json {
        print_json(&jobs);
        return Ok(ExitCode::SUCCESS);
    }
    if jobs.jobs.is_empty() {
        println!("no jobs");
        return Ok(ExitCode::SUCCESS);
    }
    let uid = if all {
        format!("{:<7}", "UID")
    } else {
        String::new()
    };
    println!(
        "{:<21} {:<18} {:<12} {:>4}  {uid}CREATED",
        "JOB", "ACTION", "STATE", "%"
    );
    for j in &jobs.jobs {
        let pct = j.progress.map_or("-".into(), |p| p.to_string());
        let uid = if all {
            format!("{:<7}", j.requester_uid)
        } else {
            String::new()
        };
        let created = timestamp(&j.created_at);
        println!(
            "{:<21} {:<18} {:<12} {pct:>4}  {uid}{created}",
            j.job_id, j.action, j.state
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `warden job ID`: exits with the job's outcome, or 10 while it has not ended.
pub async fn show(client: &mut Client, id: &str, json: bool) -> Result<ExitCode, ClientError> {
    let r = client.job(id).await?;
    let code = ExitCode::from(job_code(r.state));
    if json {
        print_json(&r);
        return Ok(code);
    }
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    println!("job        {}", r.job_id);
    println!("action     {}", r.action);
    println!(
        "state      {}{}",
        r.state,
        if r.committed {
            " (past its commit point)"
        } else {
            ""
        }
    );
    if let Some(p) = r.progress {
        println!(
            "progress   {p}%{}",
            r.phase
                .as_ref()
                .map(|ph| format!(" {ph}"))
                .unwrap_or_default()
        );
    }
    if let Some(m) = &r.message {
        println!("message    {m}");
    }
    if let Some(c) = r.exit_code {
        println!("exit code  {c}");
    }
    if let Some(res) = &r.result {
        println!("result     {res}");
    }
    if !r.params.is_empty() {
        let params: Vec<String> = r.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("params     {}", params.join(" "));
    }
    let q = &r.requester;
    println!(
        "requester  uid {} gid {} pid {} ({}, {})",
        q.uid,
        q.gid,
        q.pid,
        q.client,
        opt(&q.exe)
    );
    println!("origin     {}", r.origin);
    println!("created    {}", timestamp(&r.created_at));
    println!("started    {}", time::optional(r.started_at.as_deref()));
    println!("ended      {}", time::optional(r.ended_at.as_deref()));
    Ok(code)
}

/// `warden cancel ID`
pub async fn cancel(client: &mut Client, id: &str, json: bool) -> Result<ExitCode, ClientError> {
    let r = client.cancel(id).await?;
    if json {
        print_json(&r);
    } else {
        println!("{} {}", r.job_id, r.state);
        if let Some(m) = &r.message {
            println!("  {m}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where `warden logs` puts the chunks it gets: the text as written, or with `--json` one merged
/// chunk (one chunk per line when following).
struct LogSink {
    json: bool,
    follow: bool,
    /// The log offset up to which output was shown: a chunk from further on means output
    /// between was not received.
    seen: u64,
    /// Without `--follow`, the chunks so far as one (`--json` prints it at the end).
    merged: Option<LogChunk>,
}

impl LogSink {
    fn put(&mut self, c: LogChunk) {
        self.seen = self.seen.max(c.next);
        if !self.json {
            let mut out = std::io::stdout();
            let _ = out.write_all(c.data.as_bytes());
            let _ = out.flush();
        } else if self.follow {
            match serde_json::to_string(&c) {
                Ok(line) => println!("{line}"),
                Err(e) => eprintln!("warden: cannot print the output: {e}"),
            }
        } else {
            match &mut self.merged {
                None => self.merged = Some(c),
                Some(m) => {
                    m.data.push_str(&c.data);
                    m.next = c.next;
                    m.truncated |= c.truncated;
                    m.ended = c.ended;
                }
            }
        }
    }

    fn finish(self) {
        if let Some(m) = &self.merged {
            print_json(m);
        }
    }
}

/// Reads job `id`'s log from `from` to its end as it stands now, into `sink`.
async fn read_log(
    client: &mut Client,
    id: &str,
    mut from: u64,
    sink: &mut LogSink,
) -> Result<(), ClientError> {
    loop {
        let c: LogChunk = client
            .call(
                "job.logs",
                &serde_json::json!({ "job_id": id, "from": from }),
            )
            .await?;
        let (next, ended) = (c.next, c.ended);
        sink.put(c);
        if next == from || ended {
            return Ok(());
        }
        from = next;
    }
}

/// `warden logs ID [-f]`: the job's output as it wrote it. With `--json`, one [`LogChunk`] with
/// all of it; when following, one compact chunk per line as output comes.
pub async fn logs(
    client: &mut Client,
    id: &str,
    follow: bool,
    json: bool,
) -> Result<ExitCode, ClientError> {
    let mut sink = LogSink {
        json,
        follow,
        seen: 0,
        merged: None,
    };
    if !follow {
        read_log(client, id, 0, &mut sink).await?;
        sink.finish();
        return Ok(ExitCode::SUCCESS);
    }
    let req = client
        .send(
            "job.logs",
            &serde_json::json!({ "job_id": id, "follow": true }),
        )
        .await?;
    loop {
        let frame = client.receive().await?;
        match Incoming::parse(&frame).map_err(|e| ClientError::Protocol(e.to_string()))? {
            Incoming::Notification {
                method,
                params: Some(p),
            } if method == notification::JOB_OUTPUT => {
                if let Ok(c) = serde_json::from_str::<LogChunk>(p.get()) {
                    sink.put(c);
                }
            }
            Incoming::Response { id: got, outcome } if got == req => {
                let raw = outcome.map_err(ClientError::Rpc)?;
                let c = serde_json::from_str::<LogChunk>(raw.get())
                    .map_err(|e| ClientError::Protocol(format!("job.logs result: {e}")))?;
                if c.from > sink.seen {
                    // The daemon may answer before the last output notification it queued
                    // has reached us: read what is missing, to the end, instead.
                    let from = sink.seen;
                    read_log(client, id, from, &mut sink).await?;
                } else {
                    sink.put(c);
                }
                return Ok(ExitCode::SUCCESS);
            }
            _ => {}
        }
    }
}
