//! What the agent is built from: rustls with the ring provider, and nothing that needs a C
//! toolchain beyond cc (no aws-lc, no OpenSSL, no cmake or nasm at build time).

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use serde_json::Value;

/// Names of every package the `warden-agent` package links or builds with (normal and build
/// dependencies, transitively; dev-dependencies left out).
fn agent_tree() -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--manifest-path",
        ])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let nodes: HashMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let names: HashMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let root = names
        .iter()
        .find(|(_, n)| **n == "warden-agent")
        .map(|(id, _)| *id)
        .unwrap();
    let mut seen = BTreeSet::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        if !seen.insert(names[id].to_owned()) {
            continue;
        }
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let used = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null() || k["kind"] == "build");
            if used {
                stack.push(dep["pkg"].as_str().unwrap());
            }
        }
    }
    seen
}

/// Pins: the agent's TLS stack is rustls on ring; aws-lc, OpenSSL and their build tools are
/// not in its tree.
#[test]
fn the_agent_uses_rustls_on_ring_only() {
    let tree = agent_tree();
    for wanted in [
        "rustls",
        "ring",
        "reqwest",
        "tokio-tungstenite",
        "warden-fleet-proto",
    ] {
        assert!(tree.contains(wanted), "no {wanted} in {tree:?}");
    }
    let banned = [
        "aws-lc-rs",
        "aws-lc-sys",
        "aws-lc-fips-sys",
        "openssl",
        "openssl-sys",
        "native-tls",
        "cmake",
        "warden-server",
        "wardend",
    ];
    let found: Vec<&str> = banned
        .iter()
        .copied()
        .filter(|b| tree.contains(*b))
        .collect();
    assert!(found.is_empty(), "warden-agent depends on {found:?}");
}
