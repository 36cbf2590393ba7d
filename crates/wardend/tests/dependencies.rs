//! What the root daemon is built from: no HTTP, WebSocket, TLS-server or SQL-server stack in its
//! dependency tree (network-facing code runs in unprivileged processes), and `unsafe` confined
//! to warden-sys.

#![allow(clippy::unwrap_used)]

use warden_testkit::deps::{Kinds, metadata, tree};

#[test]
fn the_daemon_links_no_http_websocket_or_sql_server_stack() {
    let tree = tree(&metadata(), "wardend", Kinds::Normal);
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
        "tokio-rustls",
        "ring",
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
