//! The built-in configuration of `wardend --dev`: a demo policy written as configuration text,
//! so it goes through the same parser and checks as any file. It is never used by a system
//! daemon.

use std::path::Path;

/// A TOML string literal for `p`.
pub(super) fn quoted(p: &Path) -> String {
    toml::Value::String(p.display().to_string()).to_string()
}

/// A script of the demo action `demo-progress`: three phases, progress on the status pipe,
/// output on stdout, and a result. (In argv, literal braces are written `{{` and `}}`.)
const DEMO_PROGRESS: &str = r#"n=$1; i=0; total=$((3 * n))
for phase in prepare work finish; do
  echo "phase $phase" >&"$WARDEN_STATUS_FD"
  j=0
  while [ "$j" -lt "$n" ]; do
    j=$((j + 1)); i=$((i + 1))
    echo "progress $((i * 100 / total)) $phase step $j of $n" >&"$WARDEN_STATUS_FD"
    echo "$phase: step $j of $n"
    sleep 0.3
  done
done
echo "result {{\"steps\": $total}}" >&"$WARDEN_STATUS_FD""#;

/// A script of the demo action `demo-commit`: prepares, declares its commit point, makes a file,
/// then lingers so there is time to try cancelling it (which runs the rollback).
const DEMO_COMMIT: &str = r#"dir=$1; name=$2
echo "progress 10 prepare checking $dir" >&"$WARDEN_STATUS_FD"
mkdir -p "$dir"; sleep 1
echo commit >&"$WARDEN_STATUS_FD"
echo "made $dir/$name" > "$dir/$name"; echo "created $dir/$name"
echo "progress 60 settle the change is in place" >&"$WARDEN_STATUS_FD"
sleep 4
echo "progress 100 done" >&"$WARDEN_STATUS_FD""#;

/// A path as literal text of an argv template: its braces doubled, so a directory named with
/// `{` or `}` is not read as a placeholder.
fn literal_arg(p: &Path) -> String {
    p.display()
        .to_string()
        .replace('{', "{{")
        .replace('}', "}}")
}

/// A TOML string literal.
fn quoted_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The demo policy of `--dev`, as configuration text so it goes through the same parser and
/// checks as any file. Actions run as the user running the daemon; with `agent` (that user's
/// name), the fleet is on with that user as its agent, and the demo actions are offered to it.
pub(super) fn dev_config(
    runtime: &Path,
    state: &Path,
    socket: &Path,
    agent: Option<&str>,
) -> String {
    let demo_dir = state.join("demo");
    let fleet = agent.map_or_else(String::new, |name| {
        format!(
            "\n# `warden-agent --dev` runs as you: it may run the remote actions for the fleet.\n\
             [fleet]\nenabled = true\nagent_user = {}\n",
            quoted_str(name)
        )
    });
    format!(
        r#"# Built-in configuration of `wardend --dev`. Not for production.
[daemon]
runtime_dir = {runtime}
state_dir = {state}

[[listener]]
path = {socket}
mode = "0600"

# The same calls for varlink clients (`varlinkctl introspect unix:PATH`).
[[listener]]
path = {varlink}
mode = "0600"
protocol = "varlink"

[ops]
network = true
power = false
storage = true
system = true
update = false

[[action]]
name = "demo-progress"
description = "Counts through three phases, reporting progress and a result"
argv = ["/bin/sh", "-c", {progress}, "demo-progress", "{{steps}}"]
tier = "read_only"
mutating = false
remote = true
timeout_s = 120
[action.params.steps]
type = "int"
min = 1
max = 50

[[action]]
name = "disk-usage"
description = "Reports disk usage of the file system holding a path"
argv = ["/bin/df", "-h", "{{path}}"]
tier = "read_only"
mutating = false
timeout_s = 30
[action.params.path]
type = "path"
under = ["/"]
must_exist = true

[[action]]
name = "demo-commit"
description = "Makes a file after a commit point; cancelling it then runs the rollback"
argv = ["/bin/sh", "-c", {commit}, "demo-commit", {demo_dir}, "{{name}}"]
rollback = ["/bin/rm", "-f", {demo_file}]
tier = "operator"
ops = ["storage"]
remote = true
timeout_s = 60
concurrency_group = "demo"
[action.params.name]
type = "string"
max_len = 32
pattern = "[a-z0-9][a-z0-9-]*"

[[resource]]
kind = "workspace"
base_dir = {workspaces}
max_per_uid = 8
tier = "read_only"
{fleet}"#,
        runtime = quoted(runtime),
        state = quoted(state),
        socket = quoted(socket),
        varlink = quoted(&socket.with_extension("varlink")),
        progress = quoted_str(DEMO_PROGRESS),
        commit = quoted_str(DEMO_COMMIT),
        demo_dir = quoted_str(&literal_arg(&demo_dir)),
        workspaces = quoted(&state.join("workspaces")),
        demo_file = quoted_str(&format!("{}/{{name}}", literal_arg(&demo_dir))),
        fleet = fleet,
    )
}
