//! What a workspace package is built from, as `cargo metadata` resolves it: for the tests that
//! pin a crate's dependency tree (the root daemon links no network stack; the agent's TLS is
//! rustls on ring).

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use serde_json::Value;

/// `cargo metadata` of the whole workspace, as the lockfile has it.
pub fn metadata() -> Value {
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
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

/// Which dependency kinds a walk follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kinds {
    /// What is linked in normal use.
    Normal,
    /// What is linked, and what builds it (build scripts' dependencies).
    NormalAndBuild,
}

/// Names of every package `package` depends on, transitively, along `kinds` (dev-dependencies
/// never), itself included.
pub fn tree(meta: &Value, package: &str, kinds: Kinds) -> BTreeSet<String> {
    let nodes: HashMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .expect("resolve.nodes")
        .iter()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let names: HashMap<&str, &str> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p["name"].as_str()?)))
        .collect();
    let root = names
        .iter()
        .find(|(_, n)| **n == package)
        .map(|(id, _)| *id)
        .unwrap_or_else(|| panic!("no package {package} in the workspace"));
    let mut seen = BTreeSet::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        if !seen.insert(names[id].to_owned()) {
            continue;
        }
        for dep in nodes[id]["deps"].as_array().into_iter().flatten() {
            let followed = dep["dep_kinds"].as_array().into_iter().flatten().any(|k| {
                k["kind"].is_null() || (kinds == Kinds::NormalAndBuild && k["kind"] == "build")
            });
            if let (true, Some(pkg)) = (followed, dep["pkg"].as_str()) {
                stack.push(pkg);
            }
        }
    }
    seen
}
