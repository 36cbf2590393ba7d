//! The man pages and completions of the four binaries, generated from their real clap
//! definitions: every argument and subcommand has help text, every page names every subcommand
//! and option below it, and every completion script parses and knows every subcommand.

use clap::Command;
use clap_complete::Shell;
use warden_docgen::{commands, man_pages, missing_help, page_tree, render_completion, render_man};

/// The four binaries by name, so that a binary dropped from `commands()` fails here.
const BINARIES: [&str; 4] = ["warden", "wardend", "warden-agent", "warden-server"];

/// roff escapes `-` as `\-`; the text a reader sees has plain ones.
fn plain(roff: &[u8]) -> String {
    String::from_utf8_lossy(roff).replace("\\-", "-")
}

fn visible_subcommands(cmd: &Command) -> impl Iterator<Item = &Command> {
    cmd.get_subcommands().filter(|s| !s.is_hide_set())
}

/// Pins: every argument, flag and subcommand of warden, wardend, warden-agent and warden-server
/// has help text (the failure lists each one that lacks it).
#[test]
fn every_argument_and_subcommand_has_help() {
    let cmds = commands();
    let names: Vec<&str> = cmds.iter().map(Command::get_name).collect();
    assert_eq!(names, BINARIES);
    let missing: Vec<String> = cmds.iter().flat_map(missing_help).collect();
    assert!(
        missing.is_empty(),
        "help text missing for:\n  {}",
        missing.join("\n  ")
    );
}

/// Pins: each command's man page names each of its subcommands (as `PARENT-SUB(1)`, the page
/// that describes it) and each of its options, there is a page for every subcommand, and every
/// page a page points to exists.
#[test]
fn each_man_page_names_every_subcommand_and_option() {
    fn check(cmd: &Command, pages: &[String], problems: &mut Vec<String>) {
        let name = cmd.get_display_name().unwrap_or_else(|| cmd.get_name());
        let page = plain(&render_man(cmd));
        if !pages.contains(&format!("{name}.1")) {
            problems.push(format!("no page {name}.1"));
        }
        if !page.contains(&format!(".TH {name} 1")) {
            problems.push(format!("{name}.1 has no title line"));
        }
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            if let Some(long) = arg.get_long()
                && !page.contains(&format!("--{long}"))
            {
                problems.push(format!("{name}.1 does not name --{long}"));
            }
        }
        // Every page it points to exists (clap's `help` subcommand has none, so is not listed).
        for reference in page.split_whitespace() {
            if let Some(target) = reference.strip_suffix("(1)")
                && target.starts_with(&format!("{name}-"))
                && !pages.contains(&format!("{target}.1"))
            {
                problems.push(format!("{name}.1 points to {target}(1), which has no page"));
            }
        }
        for sub in visible_subcommands(cmd) {
            if !page.contains(&format!("{name}-{}(1)", sub.get_name())) {
                problems.push(format!("{name}.1 does not name {}", sub.get_name()));
            }
            check(sub, pages, problems);
        }
    }
    let mut problems = Vec::new();
    for cmd in commands() {
        let pages: Vec<String> = man_pages(&cmd).into_iter().map(|(f, _)| f).collect();
        check(&page_tree(&cmd), &pages, &mut problems);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Pins: the top-level pages of the binaries with subcommands list the ones an administrator
/// reaches for first (a check on the generator's output itself, not only on clap's tree).
#[test]
fn top_level_pages_list_known_subcommands() {
    let cmds = commands();
    let page = |bin: &str| {
        let cmd = cmds
            .iter()
            .find(|c| c.get_name() == bin)
            .expect("listed binary");
        plain(&render_man(&page_tree(cmd)))
    };
    for (bin, subs) in [
        (
            "warden",
            &["status", "run", "jobs", "audit", "resource"][..],
        ),
        ("wardend", &["check-config", "doctor"][..]),
        (
            "warden-server",
            &["serve", "site", "machines", "dispatch"][..],
        ),
    ] {
        let page = page(bin);
        for sub in subs {
            assert!(
                page.contains(&format!("{bin}-{sub}(1)")),
                "{bin}.1 lacks {sub}"
            );
        }
    }
}

/// Pins: the bash, zsh and fish completions of each binary name each of its top-level
/// subcommands, and the bash one is valid bash (`bash -n`).
#[test]
fn completions_know_every_subcommand() {
    for cmd in commands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = String::from_utf8(render_completion(&cmd, shell)).expect("utf-8");
            for sub in visible_subcommands(&cmd) {
                assert!(
                    script.contains(sub.get_name()),
                    "{shell} completion of {} lacks {}",
                    cmd.get_name(),
                    sub.get_name()
                );
            }
            if shell == Shell::Bash {
                let dir = tempfile::tempdir().expect("tempdir");
                let file = dir.path().join(cmd.get_name());
                std::fs::write(&file, &script).expect("write");
                let status = std::process::Command::new("bash")
                    .arg("-n")
                    .arg(&file)
                    .status()
                    .expect("bash runs");
                assert!(status.success(), "bash -n refuses {}", file.display());
            }
        }
    }
}
