//! The shipped example actions (dist/examples/actions.toml) in a real daemon: the read-only one
//! runs for real, as its unprivileged run_as user, for a caller capped at read_only; the ones
//! that change the host are out of that caller's reach.

#![allow(clippy::unwrap_used)]

mod common;

use common::TestDaemon;
use serde_json::{Map, Value, json};
use warden_client::Client;
use warden_proto::jobs::JobState;
use warden_proto::{ErrorKind, Tier};

/// A daemon with the example actions and the ops they need, whose only socket caps every caller
/// at read_only (so even root, running these tests, is a viewer there).
fn daemon() -> TestDaemon {
    let examples = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../dist/examples/actions.toml"
    ))
    .unwrap();
    TestDaemon::start(&format!(
        "[ops]\nstorage = true\nsystem = true\n\n\
         [[listener]]\npath = \"{{dir}}/ro.sock\"\nmode = \"0666\"\nmax_tier = \"read_only\"\n\n\
         {examples}"
    ))
}

async fn viewer(d: &TestDaemon) -> Client {
    let c = Client::connect(d.socket(), "examples-test").await.unwrap();
    assert_eq!(c.hello().tier, Tier::ReadOnly);
    c
}

/// Pins: a viewer runs disk-usage for real (df as `nobody`), and it succeeds with a report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_runs_disk_usage_and_gets_a_report() {
    if !warden_testkit::root_or_skip("a_viewer_runs_disk_usage_and_gets_a_report") {
        return;
    }
    let d = daemon();
    let mut c = viewer(&d).await;
    let id = c
        .start("disk-usage", &Map::new(), None)
        .await
        .unwrap()
        .job_id
        .to_string();
    let r = c.wait(&id, 30_000).await.unwrap();
    let logs: Value = c.call("job.logs", &json!({ "job_id": id })).await.unwrap();
    let report = logs["data"].as_str().unwrap();
    assert_eq!(
        (r.state, r.exit_code),
        (JobState::Succeeded, Some(0)),
        "{r:?}\n{report}"
    );
    let mut lines = report.lines();
    let header = lines.next().unwrap_or_default();
    assert!(
        header.starts_with("Filesystem") && header.ends_with("Mounted on"),
        "{report}"
    );
    assert!(lines.next().is_some(), "no file system reported: {report}");
}

/// Pins: the example actions that change the host are hidden from a viewer, in the list and as
/// `not_found` when it tries to start them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_cannot_start_the_actions_that_change_the_host() {
    let d = daemon();
    let mut c = viewer(&d).await;
    let listed: Vec<String> = c
        .actions()
        .await
        .unwrap()
        .actions
        .into_iter()
        .map(|a| a.name.to_string())
        .collect();
    assert_eq!(listed, ["disk-usage"]);
    for (action, params) in [
        ("restart-unit", json!({"unit": "nginx.service"})),
        (
            "mount-image",
            json!({"image": "/srv/images/a.img", "name": "a"}),
        ),
        ("unmount-image", json!({"name": "a"})),
    ] {
        let err = c
            .start(action, params.as_object().unwrap(), None)
            .await
            .unwrap_err();
        // Above the viewer's tier: answered exactly as an action that does not exist.
        assert_eq!(err.kind(), Some(ErrorKind::NotFound), "{action}: {err}");
    }
    assert!(c.jobs(false, None, None).await.unwrap().jobs.is_empty());
}
