//! Replays the committed fuzz corpus (`tests/corpus/`) through the same harness functions the
//! fuzz targets call, on stable, so CI exercises the inputs that crashed or nearly crashed the
//! parsers without nightly or cargo-fuzz. Each file's name says what it must come to:
//! `requests/<ok|envelope|method|params>-….json` (how far the request parser gets) and
//! `frames/f<N>-<ok|broken>-….bin` (N frames decoded, then the stream ended or broke). A new
//! crash found by `cargo +nightly fuzz` is minimised (`cargo fuzz tmin`) and added here, named by
//! what it should have come to.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use warden_proto::harness::{self, Decoded, Parsed};

/// The corpus files of `target`, sorted; fails if there are suspiciously few.
fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "corpus", target]
        .iter()
        .collect();
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let name = file_name(&path);
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 20,
        "{} holds only {} inputs",
        dir.display(),
        files.len()
    );
    files
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// Pins: every committed request body goes exactly as far through the envelope and request
/// parsers as its name says, without a panic.
#[test]
fn request_corpus_replays_to_the_named_outcome() {
    let mut wrong = Vec::new();
    for (name, data) in inputs("requests") {
        let got = harness::parse_request(&data);
        let want = name.split('-').next().unwrap();
        assert!(
            ["ok", "envelope", "method", "params"].contains(&want),
            "{name}: a request input's name starts with ok-, envelope-, method- or params-"
        );
        if got.as_str() != want {
            wrong.push(format!("{name}: {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "outcomes differ from names: {wrong:#?}");
}

/// Pins: every committed byte stream decodes to as many frames as its name says and ends the
/// way it says (broken only on a zero or over-`max_frame` length), without a panic.
#[test]
fn frame_corpus_replays_to_the_named_outcome() {
    let mut wrong = Vec::new();
    for (name, data) in inputs("frames") {
        let mut parts = name.split('-');
        let frames: usize = parts
            .next()
            .and_then(|f| f.strip_prefix('f'))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{name}: a frame input's name starts with f<N>-"));
        let broken = match parts.next() {
            Some("ok") => false,
            Some("broken") => true,
            _ => panic!("{name}: then ok- or broken-"),
        };
        let got = harness::fuzz_frames(&data);
        if got != (Decoded { frames, broken }) {
            wrong.push(format!("{name}: {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "outcomes differ from names: {wrong:#?}");
}

/// Pins: the frame corpus holds both edges of the size limit, so replaying it exercises them.
#[test]
fn frame_corpus_covers_both_sides_of_max_frame() {
    let lengths: Vec<u32> = inputs("frames")
        .iter()
        .filter_map(|(_, d)| d.get(1..5))
        .map(|h| u32::from_be_bytes([h[0], h[1], h[2], h[3]]))
        .collect();
    for want in [
        0,
        harness::FUZZ_MAX_FRAME,
        harness::FUZZ_MAX_FRAME + 1,
        u32::MAX,
    ] {
        assert!(lengths.contains(&want), "no input announces length {want}");
    }
    // A request body that parses, also as the body of a frame (the two targets agree).
    let (_, body) = inputs("requests")
        .into_iter()
        .find(|(n, _)| n == "ok-hello.json")
        .unwrap();
    assert_eq!(harness::parse_request(&body), Parsed::Request);
}

/// Pins: the deepest nesting a default-size frame can carry (half a million brackets, too big to
/// commit) is refused or skipped without exhausting a thread's stack, wherever it sits.
#[test]
fn nesting_as_deep_as_a_frame_allows_does_not_overflow_the_stack() {
    let max = warden_proto::DEFAULT_MAX_FRAME as usize;
    let deep = |open: &str, close: &str, room: usize| -> String {
        let n = room / (open.len() + close.len());
        format!("{}{}", open.repeat(n), close.repeat(n))
    };
    let cases = [
        (
            "status",
            r#"{"jsonrpc":"2.0","id":1,"method":"status","params":"#,
            "}",
        ),
        (
            "job.start",
            r#"{"jsonrpc":"2.0","id":1,"method":"job.start","params":{"action":"a","params":{"v":"#,
            "}}}",
        ),
        ("id", r#"{"jsonrpc":"2.0","method":"status","id":"#, "}"),
    ];
    for (what, head, tail) in cases {
        for (open, close) in [("[", "]"), (r#"{"a":"#, "}")] {
            let room = max - head.len() - tail.len();
            let body = format!("{head}{}{tail}", deep(open, close, room));
            assert!(body.len() <= max);
            // Run on a thread with the stack a runtime worker gets (2 MiB), not the test's.
            let got = std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || harness::parse_request(body.as_bytes()))
                .unwrap()
                .join()
                .unwrap();
            assert_ne!(got, Parsed::Request, "{what} nested in {open}");
        }
    }
}
