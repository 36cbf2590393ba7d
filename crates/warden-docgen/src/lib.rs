//! Man pages and shell completions of warden's four binaries, generated from the very clap
//! definitions the binaries parse (`warden::cli`, `wardend::cli`, `warden_agent::cli`,
//! `warden_server::cli`), so they cannot drift from the flags. It owns the list of binaries, the
//! file names the Debian packages install, and the check that every argument and subcommand has
//! help text. It only writes into the directory it is given; it must never install anything.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Command, CommandFactory};
use clap_complete::Shell;

/// The section every page goes in: user commands, as the binaries are all run by hand too.
const SECTION: &str = "1";

/// A file that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct DocgenError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// The four binaries' command lines, as their `main.rs` parse them (not yet built: clap adds
/// its generated parts, such as the `help` subcommand, when a command is built).
pub fn commands() -> Vec<Command> {
    vec![
        warden::cli::Cli::command(),
        wardend::cli::Cli::command(),
        warden_agent::cli::Cli::command(),
        warden_server::cli::Cli::command(),
    ]
}

/// `cmd` as its pages describe it: built (global flags propagated to every subcommand, display
/// names such as `warden-policy-explain` set), without clap's `help` subcommand at any level,
/// which `--help` covers and which has no page of its own.
pub fn page_tree(cmd: &Command) -> Command {
    fn without_help(cmd: Command) -> Command {
        let names: Vec<String> = cmd
            .get_subcommands()
            .map(|s| s.get_name().to_owned())
            .collect();
        names
            .into_iter()
            .fold(cmd.disable_help_subcommand(true), |cmd, name| {
                cmd.mut_subcommand(name, without_help)
            })
    }
    let mut cmd = without_help(cmd.clone());
    cmd.build();
    cmd
}

/// Every argument and visible subcommand under `cmd` (itself included) that has no help text,
/// each named by its path, e.g. `warden cancel <id>` or `warden-server site add`. clap's own
/// `help` subcommand and `--help`/`--version` flags are clap's, not ours, and always have it.
pub fn missing_help(cmd: &Command) -> Vec<String> {
    let mut cmd = cmd.clone();
    cmd.build();
    let mut missing = Vec::new();
    walk(&cmd, cmd.get_name(), &mut missing);
    missing
}

fn walk(cmd: &Command, path: &str, missing: &mut Vec<String>) {
    if !has_text(cmd.get_about()) && !has_text(cmd.get_long_about()) {
        missing.push(path.to_owned());
    }
    for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        if !has_text(arg.get_help()) && !has_text(arg.get_long_help()) {
            let name = match (arg.get_long(), arg.get_short()) {
                (Some(long), _) => format!("--{long}"),
                (None, Some(short)) => format!("-{short}"),
                (None, None) => format!("<{}>", arg.get_id()),
            };
            missing.push(format!("{path} {name}"));
        }
    }
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            // clap's generated `help` subcommand.
            continue;
        }
        walk(sub, &format!("{path} {}", sub.get_name()), missing);
    }
}

fn has_text(s: Option<&clap::builder::StyledStr>) -> bool {
    s.is_some_and(|s| !s.to_string().trim().is_empty())
}

/// `cmd`'s own man page, as roff. `cmd` is a node of a [`page_tree`].
pub fn render_man(cmd: &Command) -> Vec<u8> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .section(SECTION)
        .date(page_date())
        .source(format!("warden {}", env!("CARGO_PKG_VERSION")))
        .manual("warden")
        .render(&mut out)
        // Writing into a Vec cannot fail.
        .unwrap_or_default();
    out
}

/// The date in each page's title line: the day of `SOURCE_DATE_EPOCH` when it is set (so that a
/// build from the same commit makes the same pages; `dist/deb/build` sets the commit's), else
/// today.
fn page_date() -> String {
    let when = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or_else(std::time::SystemTime::now, |secs| {
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)
        });
    let mut day = humantime::format_rfc3339_seconds(when).to_string();
    day.truncate("YYYY-MM-DD".len());
    day
}

/// The pages of `cmd` and of each visible subcommand below it (`warden.1`, `warden-run.1`,
/// `warden-policy-explain.1`, ...), each with its file name.
pub fn man_pages(cmd: &Command) -> Vec<(String, Vec<u8>)> {
    let mut pages = Vec::new();
    collect_pages(&page_tree(cmd), &mut pages);
    pages
}

fn collect_pages(cmd: &Command, pages: &mut Vec<(String, Vec<u8>)>) {
    let name = cmd.get_display_name().unwrap_or_else(|| cmd.get_name());
    pages.push((format!("{name}.{SECTION}"), render_man(cmd)));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        collect_pages(sub, pages);
    }
}

/// The shells completions are made for, each with the file name its packages install
/// (bash-completion looks for the bare command name).
const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

fn completion_file(shell: Shell, bin: &str) -> String {
    match shell {
        Shell::Zsh => format!("_{bin}"),
        Shell::Fish => format!("{bin}.fish"),
        _ => bin.to_owned(),
    }
}

/// `cmd`'s completion script for `shell`.
pub fn render_completion(cmd: &Command, shell: Shell) -> Vec<u8> {
    let mut cmd = cmd.clone();
    let bin = cmd.get_name().to_owned();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, bin, &mut out);
    out
}

/// Writes, for each binary BIN, its man pages to `out/BIN/man/` and its completions to
/// `out/BIN/{bash,zsh,fish}/` under the names the packages install; returns the files written.
pub fn write_all(out: &Path) -> Result<Vec<PathBuf>, DocgenError> {
    let mut written = Vec::new();
    for cmd in commands() {
        let dir = out.join(cmd.get_name());
        for (file, page) in man_pages(&cmd) {
            written.push(write(&dir.join("man").join(file), &page)?);
        }
        for shell in SHELLS {
            let path = dir
                .join(shell.to_string())
                .join(completion_file(shell, cmd.get_name()));
            written.push(write(&path, &render_completion(&cmd, shell))?);
        }
    }
    Ok(written)
}

fn write(path: &Path, bytes: &[u8]) -> Result<PathBuf, DocgenError> {
    let fail = |source| DocgenError {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let mut f = std::fs::File::create(path).map_err(fail)?;
    f.write_all(bytes).map_err(fail)?;
    Ok(path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    /// Pins: the help check names an argument, a flag and a subcommand that lack help text, and
    /// passes a tree that has it everywhere (so the test over the real binaries can fail).
    #[test]
    fn missing_help_names_what_lacks_it() {
        let good = Command::new("t")
            .about("a tool")
            .arg(
                Arg::new("x")
                    .long("x")
                    .help("the x")
                    .action(ArgAction::SetTrue),
            )
            .subcommand(
                Command::new("sub")
                    .about("a sub")
                    .arg(Arg::new("n").help("n")),
            );
        assert_eq!(missing_help(&good), Vec::<String>::new());

        let bad = Command::new("t")
            .about("a tool")
            .arg(Arg::new("x").long("x").action(ArgAction::SetTrue))
            .subcommand(Command::new("sub").arg(Arg::new("n")))
            .subcommand(
                Command::new("ok")
                    .about("fine")
                    .arg(Arg::new("hidden").long("h2").hide(true)),
            );
        assert_eq!(missing_help(&bad), ["t --x", "t sub", "t sub <n>"]);
    }
}
