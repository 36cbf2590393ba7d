//! The `warden` command line as clap declares it: the flags and subcommands `main.rs` parses, and
//! what the man pages and the shell completions are generated from (`warden-docgen`).
//! Declarations only: it must never connect to the daemon or act on a flag.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use warden_proto::jobs::JobState;

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
pub struct Cli {
    /// wardend's socket [default: /run/warden/warden.sock if it exists, else the --dev socket]
    #[arg(long, global = true, value_name = "PATH", env = "WARDEN_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Print results as JSON, for scripts.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
        /// At most N jobs, up to 1000 [default: 50].
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
    },
    /// Show one job.
    Job {
        /// The job id (job_…).
        id: String,
    },
    /// Cancel a job (before its commit point; after it only if its action can roll back).
    Cancel {
        /// The job id (job_…).
        id: String,
    },
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
        /// The job id (job_…).
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
pub enum PolicyCommand {
    /// Read the configuration file again and put it in force (as SIGHUP does).
    Reload,
    /// How the gate would decide a request from a user: METHOD, or `run ACTION key=value…`.
    Explain {
        /// The user asking, by name.
        #[arg(long, conflicts_with = "uid", required_unless_present = "uid")]
        user: Option<String>,
        /// The user asking, by uid (one without a passwd entry too).
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
pub enum OpsCommand {
    /// Switch a toggle on or off; off asks the running jobs that need it to stop.
    Set {
        /// The toggle, as `warden ops` lists it.
        name: String,
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: String,
        /// Why, for the audit log.
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ResourceCommand {
    /// Make a resource of KIND called NAME, owned by you.
    Create {
        /// The kind, as the configuration declares it (e.g. workspace).
        kind: String,
        /// The resource's name.
        name: String,
        /// Root only: the user (name or uid) to make it for.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Delete one of your resources and everything in it.
    Delete {
        /// The resource's kind.
        kind: String,
        /// The resource's name.
        name: String,
    },
    /// Show one of your resources.
    Get {
        /// The resource's kind.
        kind: String,
        /// The resource's name.
        name: String,
    },
    /// List your resources (an admin sees everyone's).
    List {
        /// Only this kind.
        #[arg(long)]
        kind: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// The machine id wardend derives from the hardware, its source, and whether it is degraded.
    Identity,
}

#[derive(Debug, Subcommand)]
pub enum LockdownCommand {
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
pub enum AuditCommand {
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
