//! The threat model's regression ledger (`docs/THREAT_MODEL.md`, "Regression ledger") names, for
//! each attack class, the tests that pin its defence. This keeps it honest: every row names at
//! least one test, and every test it names exists as a function in the file the row says.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// The ledger's rows: (attack class, [`file::function`, …]).
fn rows(text: &str) -> Vec<(String, Vec<String>)> {
    let start = text
        .find("## Regression ledger")
        .expect("THREAT_MODEL.md has no regression ledger");
    let section = &text[start..];
    let section = match section[3..].find("\n## ") {
        Some(end) => &section[..end + 3],
        None => section,
    };
    section
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| attack class"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").collect();
            assert_eq!(cells.len(), 2, "a ledger row has two cells: {l}");
            let tests = cells[1]
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect();
            (cells[0].trim().to_owned(), tests)
        })
        .collect()
}

/// Pins: every attack class in the ledger names a test, and every named test is a function in
/// the named file, so the ledger cannot claim a defence no test pins.
#[test]
fn every_ledger_row_names_tests_that_exist() {
    let root = repo();
    let text = std::fs::read_to_string(root.join("docs/THREAT_MODEL.md")).unwrap();
    let rows = rows(&text);
    assert!(rows.len() >= 25, "the ledger lost rows: {}", rows.len());
    let mut missing = Vec::new();
    for (class, tests) in &rows {
        assert!(!tests.is_empty(), "no test pins `{class}`");
        for test in tests {
            let (file, function) = test
                .rsplit_once("::")
                .unwrap_or_else(|| panic!("`{test}` is not file::function"));
            let source = std::fs::read_to_string(root.join("crates").join(file))
                .unwrap_or_else(|e| panic!("{file} (for `{class}`): {e}"));
            if !source.contains(&format!("fn {function}(")) {
                missing.push(format!("{test} (for `{class}`)"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "named in the ledger but not found: {missing:#?}"
    );
}
