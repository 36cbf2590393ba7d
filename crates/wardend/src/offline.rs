//! `wardend check-config` and `wardend doctor`: the commands that read the installation without
//! a running daemon, printed for a person or, with `--json`, as one JSON object on stdout.
//! It owns those two output shapes and their exit statuses; it never starts the daemon, opens a
//! socket or changes a file (the checks themselves live in `settings` and `doctor`).

use std::path::Path;

use serde::Serialize;
use serde_json::json;
use warden_policy::Problem;

use crate::doctor::{self, Finding, Severity};
use crate::settings::{Settings, SettingsError};

/// One problem of a configuration, as `check-config --json` prints it.
#[derive(Debug, Serialize)]
struct Issue<'a> {
    file: &'a str,
    line: Option<usize>,
    column: Option<usize>,
    /// `error` (the configuration cannot be used) or `warning`.
    severity: &'static str,
    message: &'a str,
}

impl<'a> Issue<'a> {
    fn new(file: &'a str, p: &'a Problem, severity: &'static str) -> Issue<'a> {
        Issue {
            file,
            line: p.line,
            column: p.column,
            severity,
            message: &p.message,
        }
    }
}

/// Prints `value` as pretty JSON on stdout.
fn print_json(value: &serde_json::Value) {
    println!("{value:#}");
}

/// `wardend check-config FILE [--json]`: 0 when the configuration (drop-ins included) can be
/// used, 1 otherwise. Human output: `FILE:LINE: message` for each problem, `FILE: ok` for each
/// file read. JSON: `{"valid", "files", "problems": [{"file", "line", "column", "severity",
/// "message"}]}`, the problems an empty array when there are none.
pub fn check_config(file: &Path, json: bool) -> u8 {
    let settings = Settings::system(file, true);
    if !json {
        return match settings {
            Ok(s) => {
                for w in &s.warnings {
                    println!("{}", w.display_warning());
                }
                println!("{}: ok", s.origin);
                for d in &s.dropins {
                    println!("{}: ok", d.display());
                }
                0
            }
            Err(e) => {
                eprintln!("{e}");
                1
            }
        };
    }
    match settings {
        Ok(s) => {
            let mut files = vec![s.origin.clone()];
            files.extend(s.dropins.iter().map(|d| d.display().to_string()));
            let problems: Vec<Issue<'_>> = s
                .warnings
                .iter()
                .map(|w| Issue::new(&w.origin, &w.problem, "warning"))
                .collect();
            print_json(&json!({ "valid": true, "files": files, "problems": problems }));
            0
        }
        Err(SettingsError::Config(errors)) => {
            let problems: Vec<Issue<'_>> = errors
                .files
                .iter()
                .flat_map(|f| f.problems.iter().map(|p| Issue::new(&f.origin, p, "error")))
                .collect();
            let files: Vec<&str> = errors.files.iter().map(|f| f.origin.as_str()).collect();
            print_json(&json!({ "valid": false, "files": files, "problems": problems }));
            1
        }
        Err(e) => {
            // Not a problem inside a file: it could not be read, or is not safe to read.
            let path = match &e {
                SettingsError::Read { path, .. } | SettingsError::Unsafe { path, .. } => {
                    path.display().to_string()
                }
                _ => file.display().to_string(),
            };
            let message = e.to_string();
            let problem = Issue {
                file: &path,
                line: None,
                column: None,
                severity: "error",
                message: &message,
            };
            print_json(&json!({ "valid": false, "files": [], "problems": [problem] }));
            1
        }
    }
}

/// `wardend doctor [FILE] [--json]`: 0 without errors, 1 with errors or when the configuration
/// cannot be read. JSON: `{"findings": [{"severity", "what", "fix"}], "errors": N}` (the shape of
/// `warden doctor --json`, plus the count), or `{"error": {"kind": "config", "message"}}`.
pub fn doctor(file: &Path, json: bool) -> u8 {
    let settings = match Settings::system(file, true) {
        Ok(s) => s,
        Err(e) => {
            if json {
                print_json(&json!({"error": {"kind": "config", "message": e.to_string()}}));
            } else {
                eprintln!("{e}");
            }
            return 1;
        }
    };
    let findings = doctor::run(file, &settings.policy);
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    if json {
        let findings: Vec<serde_json::Value> = findings.iter().map(finding_json).collect();
        print_json(&json!({ "findings": findings, "errors": errors }));
    } else {
        if findings.is_empty() {
            println!("no findings");
        }
        for f in &findings {
            println!("{f}");
        }
        if errors > 0 {
            println!("{errors} error(s)");
        }
    }
    u8::from(errors > 0)
}

fn finding_json(f: &Finding) -> serde_json::Value {
    json!({ "severity": f.severity.as_str(), "what": f.what, "fix": f.fix })
}
