//! What the agent is built from: rustls with the ring provider, and nothing that needs a C
//! toolchain beyond cc (no aws-lc, no OpenSSL, no cmake or nasm at build time).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use warden_testkit::deps::{Kinds, metadata, tree};

/// Names of every package the `warden-agent` package links or builds with (normal and build
/// dependencies, transitively; dev-dependencies left out).
fn agent_tree() -> BTreeSet<String> {
    tree(&metadata(), "warden-agent", Kinds::NormalAndBuild)
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
