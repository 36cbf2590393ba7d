//! What the root daemon is built from: no HTTP, WebSocket, TLS-server or SQL-server stack in its
//! dependency tree (network-facing code runs in unprivileged processes), and `unsafe` confined
//! to warden-sys.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use serde_json::Value;

fn metadata() -> Value {
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
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Names of every package the `wardend` package links in normal (non-dev, non-build) use.
fn daemon_tree(meta: &Value) -> BTreeSet<String> {
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
        .find(|(_, n)| **n == "wardend")
        .map(|(id, _)| *id)
        .unwrap();
    let mut seen = BTreeSet::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        if !seen.insert(names[id].to_owned()) {
            continue;
        }
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let normal = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null());
            if normal {
                stack.push(dep["pkg"].as_str().unwrap());
            }
        }
    }
    seen
}

#[test]
fn the_daemon_links_no_http_websocket_or_sql_server_stack() {
    let tree = daemon_tree(&metadata());
    let banned = [
        "hyper",
        "h2",
        "http",
        "axum",
        "tower",
        "warp",
        "actix-web",
        "reqwest",
        "tungstenite",
        "tokio-tungstenite",
        "rustls",
        "openssl",
        "native-tls",
        "sqlx",
        "postgres",
        "tokio-postgres",
        "mysql",
        "warden-server",
        "warden-agent",
    ];
    let found: Vec<&str> = banned
        .iter()
        .copied()
        .filter(|b| tree.contains(*b))
        .collect();
    assert!(found.is_empty(), "wardend depends on {found:?}");
    // The walk itself works: it sees the daemon's real dependencies.
    assert!(
        tree.contains("tokio") && tree.contains("warden-policy"),
        "{tree:?}"
    );
}

#[test]
fn every_crate_but_warden_sys_forbids_unsafe_code() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../");
    let workspace = std::fs::read_to_string(format!("{root}Cargo.toml")).unwrap();
    assert!(workspace.contains("[workspace.lints.rust]\nunsafe_code = \"forbid\""));
    let meta = metadata();
    for member in meta["workspace_members"].as_array().unwrap() {
        let pkg = meta["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == *member)
            .unwrap();
        let name = pkg["name"].as_str().unwrap();
        let manifest = std::fs::read_to_string(pkg["manifest_path"].as_str().unwrap()).unwrap();
        let inherits = manifest.contains("[lints]\nworkspace = true");
        assert_eq!(
            inherits,
            name != "warden-sys",
            "{name}: [lints] workspace = true"
        );
    }
}
