//! The operator's command line against a live server: `warden-server dispatch …`.

use crate::harness::*;
use serde_json::Value;
use warden_server::auth::Role;

/// Runs the real `warden-server` binary with `args`: (exit code, stdout, stderr).
async fn cli(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden-server"))
            .args(&args)
            .env_remove("WARDEN_SERVER_TOKEN")
            .env("WARDEN_SERVER_LOG", "error")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// Pins: `warden-server dispatch run … --watch` dispatches through the HTTP API, prints each
/// host's states and its output prefixed with the host name, a summary, and exits 0 when
/// every host succeeded and 2 when one did not; `show`, `output` and `list` read it back
/// (`--json` too); a machine key is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_runs_watches_and_reads_dispatches() {
    let (s, key) = server(None).await;
    let tok = token(&s, "olga", Role::Operator).await;
    let f = fleet(&s, &key, vec![Behavior::ok(&["one\n", "two\n"], 100); 2]).await;
    let url = format!("http://{}", s.running.addr);
    let base = |rest: &[&str]| {
        let mut v: Vec<String> = ["dispatch", "--server", &url, "--token", &tok]
            .iter()
            .map(|x| (*x).to_owned())
            .collect();
        v.extend(rest.iter().map(|x| (*x).to_owned()));
        v
    };
    let (m0, m1) = (f.hosts[0].0.as_str(), f.hosts[1].0.as_str());
    let (code, out, err) = cli(base(&[
        "run",
        "--machine",
        m0,
        "--machine",
        m1,
        "restart-service",
        "service=nginx",
        "--watch",
    ]))
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    for line in [
        "h0| h0: one",
        "h0| h0: two",
        "h1| h1: one",
        "h1| h1: two",
        "[h0] succeeded",
        "[h1] succeeded",
    ] {
        assert!(out.contains(line), "{line} missing from {out}");
    }
    assert!(out.contains("2 hosts: succeeded 2"), "{out}");
    let id = out
        .split_whitespace()
        .find(|w| w.starts_with("dsp_"))
        .unwrap()
        .trim_end_matches(':')
        .to_owned();
    let (code, out, _) = cli(base(&["output", &id, m1])).await;
    assert_eq!((code, out.as_str()), (0, "h1: one\nh1: two\n"));
    let (code, out, _) = cli([vec!["--json".to_owned()], base(&["show", &id])].concat()).await;
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["summary"]["succeeded"], 2);
    let (_, out, _) = cli(base(&["list"])).await;
    assert!(out.contains(&id), "{out}");
    // A host that fails: exit status 2.
    let bad = fleet(&s, &key, vec![Behavior::failing(0)]).await;
    let (code, out, err) = cli(base(&["run", "--machine", &bad.hosts[0].0, "a", "--watch"])).await;
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(out.contains("[h0] failed"), "{out}");
    // A machine key is no operator credential.
    let (_, mk) = enrolled(&s, &key, "x").await;
    let mut args = base(&["list"]);
    args[4] = mk;
    let (code, _, err) = cli(args).await;
    assert_eq!(code, 1);
    assert!(err.contains("unauthorized"), "{err}");
    s.running.stop().await.unwrap();
}
