//! The shipped agent files stay true: `dist/agent.toml` loads (its commented test overrides
//! too), and `dist/warden-agent.service` runs the agent as its own user with no capabilities,
//! keeps a final exit from restarting, and passes `systemd-analyze verify`.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use warden_agent::AgentConfig;

fn dist(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../dist")
        .join(name)
}

/// Pins: the example configuration loads as shipped, and with its `[test_overrides]` block
/// uncommented, each override is then reported.
#[test]
fn the_example_configuration_loads() {
    let text = std::fs::read_to_string(dist("agent.toml")).unwrap();
    let c = AgentConfig::parse(&text, Path::new("dist/agent.toml"), false).unwrap();
    assert!(c.server.tls);
    assert!(c.overrides_used.is_empty());
    assert_eq!(c.state_dir, Path::new("/var/lib/warden-agent"));
    let start = text.find("# [test_overrides]").unwrap();
    let mut uncommented = text[..start].to_owned();
    for line in text[start..].lines() {
        let line = line.trim_start_matches("# ");
        let line = line.split("  #").next().unwrap();
        uncommented.push_str(&line.replace("<64 hex>", &"0".repeat(64)));
        uncommented.push('\n');
    }
    let c = AgentConfig::parse(&uncommented, Path::new("agent.toml"), false).unwrap();
    assert_eq!(c.overrides_used.len(), 13, "{:?}", c.overrides_used);
}

fn settings(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// Pins: the unit runs the agent as warden-agent with no capabilities and a 0700 state
/// directory, hardened like the other units, and does not restart after a final answer.
#[test]
fn the_unit_runs_the_agent_unprivileged() {
    let unit = std::fs::read_to_string(dist("warden-agent.service")).unwrap();
    let s = settings(&unit);
    let last = |key: &str| {
        s.iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(last("User"), Some("warden-agent"));
    assert_eq!(last("CapabilityBoundingSet"), Some(""));
    assert_eq!(last("AmbientCapabilities"), Some(""));
    assert_eq!(last("StateDirectory"), Some("warden-agent"));
    assert_eq!(last("StateDirectoryMode"), Some("0700"));
    assert_eq!(last("NoNewPrivileges"), Some("yes"));
    assert_eq!(last("ProtectSystem"), Some("strict"));
    assert_eq!(last("ProtectHome"), Some("yes"));
    assert_eq!(last("UMask"), Some("0077"));
    assert_eq!(
        last("RestartPreventExitStatus"),
        Some(warden_agent::EXIT_FINAL.to_string().as_str())
    );
    assert!(
        last("ExecStart")
            .unwrap()
            .contains("--config /etc/warden/agent.toml")
    );
    assert!(!unit.contains("--dev"));
}

/// Pins: `systemd-analyze verify` accepts the unit without a complaint, where it is installed.
#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipping: systemd-analyze is not installed");
        return;
    };
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    // verify checks that ExecStart= names an executable; the agent is not installed here.
    let text = std::fs::read_to_string(dist("warden-agent.service"))
        .unwrap()
        .replace("ExecStart=/usr/bin/warden-agent ", "ExecStart=/bin/sh ");
    let unit = dir.path().join("warden-agent.service");
    std::fs::write(&unit, text).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let complaints = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && complaints.trim().is_empty(),
        "{complaints}"
    );
}
