//! The brakes of a real daemon: ops toggles and the lockdown, what they refuse and stop, and
//! that they survive a restart.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use serde_json::{Map, Value};
use warden_client::{Client, ClientError};
use warden_proto::ErrorKind;
use warden_proto::jobs::JobState;
use warden_proto::messages::DaemonMode;
use wardend::{Daemon, DaemonThread, Settings};

fn daemon(dir: &Path) -> DaemonThread {
    let text = warden_testkit::config(
        r#"[daemon]
runtime_dir = "{dir}/run"
state_dir = "{dir}/state"
[[listener]]
path = "{dir}/run/admin.sock"
mode = "0600"
[[listener]]
path = "{dir}/run/ro.sock"
mode = "0600"
max_tier = "read_only"
[ops]
storage = true
[[action]]
name = "hold"
argv = ["/bin/sleep", "30"]
tier = "read_only"
ops = ["storage"]
mutating = true
[action.cancel]
grace_s = 1
[[action]]
name = "look"
argv = ["/bin/true"]
tier = "read_only"
mutating = false
"#,
        dir,
    );
    Daemon::spawn_thread(Settings::from_toml(&text, "test", DaemonMode::System).unwrap()).unwrap()
}

async fn admin(dir: &Path) -> Client {
    Client::connect(&dir.join("run/admin.sock"), "brakes-test")
        .await
        .unwrap()
}

/// A client on the read-only socket: root there is a viewer.
async fn viewer(dir: &Path) -> Client {
    Client::connect(&dir.join("run/ro.sock"), "brakes-test")
        .await
        .unwrap()
}

fn none() -> Map<String, Value> {
    Map::new()
}

fn kind(e: &ClientError) -> Option<ErrorKind> {
    e.kind()
}

/// Pins: a lockdown refuses every change to everyone, root included, with its reason; stops
/// running jobs that change state; leaves read-only work alone; shows in hello and status;
/// survives a restart; is recorded in the audit log; and lifts on release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lockdown_refuses_changes_from_everyone_until_released() {
    if !warden_testkit::root_or_skip("a_lockdown_refuses_changes_from_everyone_until_released") {
        return;
    }
    let dir = warden_testkit::safe_tempdir();
    let d = daemon(dir.path());
    let mut c = admin(dir.path()).await;
    let held = c.start("hold", &none(), None).await.unwrap().job_id;
    let engaged = c.lockdown_engage("incident 42").await.unwrap();
    assert_eq!(engaged.stopping, std::slice::from_ref(&held));
    assert_eq!(
        c.wait(held.as_str(), 30_000).await.unwrap().state,
        JobState::Cancelled
    );
    let err = c.start("hold", &none(), None).await.unwrap_err();
    assert_eq!(kind(&err), Some(ErrorKind::LockedDown));
    assert!(err.to_string().contains("incident 42"), "{err}");
    let look = c.start("look", &none(), None).await.unwrap().job_id;
    assert_eq!(
        c.wait(look.as_str(), 30_000).await.unwrap().state,
        JobState::Succeeded
    );
    assert_eq!(
        c.status().await.unwrap().lockdown.unwrap().reason,
        "incident 42"
    );
    let alerts = c.alerts(None).await.unwrap().alerts;
    assert!(
        alerts
            .iter()
            .any(|a| a.kind == "lockdown" && a.message.contains("incident 42")),
        "{alerts:?}"
    );
    drop(c);
    d.stop();

    // A restart keeps it.
    let d = daemon(dir.path());
    let mut c = admin(dir.path()).await;
    assert_eq!(c.hello().lockdown.as_ref().unwrap().by_uid, 0);
    let err = c.start("hold", &none(), None).await.unwrap_err();
    assert_eq!(kind(&err), Some(ErrorKind::LockedDown));
    // Only an admin may lift it.
    let mut viewer = viewer(dir.path()).await;
    assert_eq!(
        kind(&viewer.lockdown_release().await.unwrap_err()),
        Some(ErrorKind::Forbidden)
    );
    assert!(c.lockdown_release().await.unwrap().lockdown.is_none());
    let again = c.start("hold", &none(), None).await.unwrap().job_id;
    c.cancel(again.as_str()).await.unwrap();
    drop((c, viewer));
    d.stop();

    let audit = std::fs::read_to_string(dir.path().join("state/audit/audit.log")).unwrap();
    let methods: Vec<String> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["event"] == "request")
        .map(|r| r["method"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        methods.contains(&"lockdown.engage".to_owned())
            && methods.contains(&"lockdown.release".to_owned()),
        "{methods:?}"
    );
}

/// Pins: switching an op off stops the running jobs that need it and refuses new ones; the
/// switch is saved (0600) and survives a restart; only an admin may switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_an_op_off_stops_its_jobs_and_refuses_new_ones() {
    if !warden_testkit::root_or_skip("switching_an_op_off_stops_its_jobs_and_refuses_new_ones") {
        return;
    }
    let dir = warden_testkit::safe_tempdir();
    let d = daemon(dir.path());
    let mut c = admin(dir.path()).await;
    let held = c.start("hold", &none(), None).await.unwrap().job_id;
    let mut viewer = viewer(dir.path()).await;
    let err = viewer.set_op("storage", false, "try").await.unwrap_err();
    assert_eq!(kind(&err), Some(ErrorKind::Forbidden));
    assert!(viewer.ops().await.unwrap().ops["storage"]);
    let off = c
        .set_op("storage", false, "disk replacement")
        .await
        .unwrap();
    assert!(!off.ops["storage"]);
    assert_eq!(off.stopping, std::slice::from_ref(&held));
    assert_eq!(
        c.wait(held.as_str(), 30_000).await.unwrap().state,
        JobState::Cancelled
    );
    let err = c.start("hold", &none(), None).await.unwrap_err();
    assert_eq!(kind(&err), Some(ErrorKind::Forbidden));
    assert!(err.to_string().contains("storage"), "{err}");
    let err = c.set_op("nope", false, "typo").await.unwrap_err();
    assert_eq!(kind(&err), Some(ErrorKind::NotFound));
    drop((c, viewer));
    d.stop();

    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("state/ops.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let d = daemon(dir.path());
    let mut c = admin(dir.path()).await;
    assert!(!c.hello().ops["storage"], "the switch survived the restart");
    c.set_op("storage", true, "done").await.unwrap();
    let again = c.start("hold", &none(), None).await.unwrap().job_id;
    c.cancel(again.as_str()).await.unwrap();
    drop(c);
    d.stop();
}

/// Pins: `policy.reload` puts a changed file's actions and new ops toggles in force at once,
/// names what only a restart can change (and keeps it), and a broken file changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_the_file_and_names_what_needs_a_restart() {
    if !warden_testkit::root_or_skip("a_reload_applies_the_file_and_names_what_needs_a_restart") {
        return;
    }
    let dir = warden_testkit::safe_tempdir();
    let path = dir.path().join("warden.toml");
    let write = |extra: &str, mode: &str| {
        let text = format!(
            "[daemon]\nruntime_dir = \"{{dir}}/run\"\nstate_dir = \"{{dir}}/state\"\n\
             [[listener]]\npath = \"{{dir}}/run/admin.sock\"\nmode = \"{mode}\"\n{extra}"
        );
        std::fs::write(&path, warden_testkit::config(&text, dir.path())).unwrap();
    };
    write("", "0600");
    let settings = Settings::system(&path, true).unwrap();
    let d = Daemon::spawn_thread(settings).unwrap();
    let mut c = admin(dir.path()).await;
    assert!(c.actions().await.unwrap().actions.is_empty());

    write(
        "[ops]\nnetwork = false\n[[action]]\nname = \"look\"\nargv = [\"/bin/true\"]\n\
         tier = \"read_only\"\nmutating = false\ntimeout_s = 5\n",
        "0660",
    );
    let r: Value = c
        .call("policy.reload", &serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(r["needs_restart"], serde_json::json!(["[[listener]]"]));
    let names: Vec<String> = c
        .actions()
        .await
        .unwrap()
        .actions
        .into_iter()
        .map(|a| a.name.to_string())
        .collect();
    assert_eq!(names, ["look"]);
    assert_eq!(c.ops().await.unwrap().ops.get("network"), Some(&false));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("run/admin.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the socket keeps its mode until a restart"
    );

    write("[[action]]\nname = 7\n", "0600");
    let err = c
        .call::<_, Value>("policy.reload", &serde_json::json!({}))
        .await
        .unwrap_err();
    assert_eq!(kind(&err), Some(ErrorKind::BadRequest));
    assert!(err.to_string().contains("warden.toml:"), "{err}");
    assert_eq!(
        c.actions().await.unwrap().actions.len(),
        1,
        "the running policy stays"
    );
    drop(c);
    d.stop();
}

/// Pins: `policy.explain` answers as the gate decides a real request: a refused caller gets the
/// very reason the real request gets, the steps name the ops toggle, and values are checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_answers_as_the_gate_decides() {
    if !warden_testkit::root_or_skip("explain_answers_as_the_gate_decides") {
        return;
    }
    let dir = warden_testkit::safe_tempdir();
    let d = daemon(dir.path());
    let mut c = admin(dir.path()).await;
    let ask = |p: Value| p;
    let r: Value = c
        .call(
            "policy.explain",
            &ask(serde_json::json!({"uid": 0, "method": "job.start", "action": "hold", "params": {}})),
        )
        .await
        .unwrap();
    assert_eq!(r["decision"], "allow", "{r}");
    assert_eq!(r["params"], "ok");
    assert!(
        r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "ops `storage` is on"),
        "{r}"
    );
    // Root on the read-only socket, as explained and as it really goes.
    let ro = dir.path().join("run/ro.sock").display().to_string();
    let r: Value = c
        .call(
            "policy.explain",
            &serde_json::json!({"uid": 0, "listener": ro, "method": "audit.verify"}),
        )
        .await
        .unwrap();
    assert_eq!(r["decision"], "deny");
    let mut viewer = viewer(dir.path()).await;
    let real = viewer.audit_verify().await.unwrap_err();
    match real {
        ClientError::Rpc(e) => {
            assert_eq!(r["kind"], e.kind().as_str());
            assert_eq!(r["reason"], e.message.as_str());
        }
        other => panic!("{other}"),
    }
    // Non-admins may not ask.
    let err = viewer
        .call::<_, Value>(
            "policy.explain",
            &serde_json::json!({"uid": 0, "method": "status"}),
        )
        .await
        .unwrap_err();
    assert_eq!(kind(&err), Some(ErrorKind::Forbidden));
    drop((c, viewer));
    d.stop();
}

/// Pins: `doctor` through the API runs the daemon's own checks for admins only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_through_the_api_is_for_admins() {
    if !warden_testkit::root_or_skip("doctor_through_the_api_is_for_admins") {
        return;
    }
    let dir = warden_testkit::safe_tempdir();
    let d = daemon(dir.path());
    let mut c = admin(dir.path()).await;
    let r: Value = c.call("doctor", &serde_json::json!({})).await.unwrap();
    let whats: Vec<&str> = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "ok")
        .map(|f| f["what"].as_str().unwrap())
        .collect();
    assert!(
        whats.iter().any(|w| w.starts_with("audit log intact")),
        "{r}"
    );
    assert!(whats.contains(&"ledger integrity check passes"), "{r}");
    let mut viewer = viewer(dir.path()).await;
    let err = viewer
        .call::<_, Value>("doctor", &serde_json::json!({}))
        .await
        .unwrap_err();
    assert_eq!(kind(&err), Some(ErrorKind::Forbidden));
    drop((c, viewer));
    d.stop();
}

/// Pins: ten protocol violations from one uid within a minute (here zero-length frames, each
/// on a connection of its own) raise one `protocol_violations` alert naming the uid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_protocol_violations_raises_one_alert() {
    if !warden_testkit::root_or_skip("a_flood_of_protocol_violations_raises_one_alert") {
        return;
    }
    let dir = warden_testkit::safe_tempdir();
    let d = daemon(dir.path());
    let sock = dir.path().join("run/admin.sock");
    for _ in 0..15 {
        let mut c = warden_testkit::raw::RawClient::connect(&sock);
        c.write(&0u32.to_be_bytes());
        assert_eq!(
            warden_testkit::raw::error_kind(&c.recv()),
            Some("bad_request")
        );
        assert!(c.is_closed());
    }
    let mut c = admin(dir.path()).await;
    let alerts = c.alerts(None).await.unwrap().alerts;
    let violations: Vec<_> = alerts
        .iter()
        .filter(|a| a.kind == "protocol_violations")
        .collect();
    assert_eq!(violations.len(), 1, "{alerts:?}");
    assert_eq!(violations[0].uid, Some(0));
    drop(c);
    d.stop();
}

/// Pins: what the gate judged is what runs. A read_only caller starts an action while reloads
/// flip its declaration between one it may start (touching `judged`) and one only an admin may
/// start (touching `unjudged`); no start may run the declaration its gate never saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_racing_starts_never_runs_an_unjudged_spec() {
    if !warden_testkit::root_or_skip("a_reload_racing_starts_never_runs_an_unjudged_spec") {
        return;
    }
    let dir = warden_testkit::safe_tempdir();
    let path = dir.path().join("warden.toml");
    let text = |tier: &str, mark: &str| {
        warden_testkit::config(
            &format!(
                "[daemon]\nruntime_dir = \"{{dir}}/run\"\nstate_dir = \"{{dir}}/state\"\n\
                 [limits]\nrequests_per_second = 100000\nburst = 100000\n\
                 uid_requests_per_second = 100000\nuid_burst = 100000\n\
                 [[listener]]\npath = \"{{dir}}/run/admin.sock\"\nmode = \"0600\"\n\
                 [[listener]]\npath = \"{{dir}}/run/ro.sock\"\nmode = \"0600\"\nmax_tier = \"read_only\"\n\
                 [[action]]\nname = \"flip\"\nargv = [\"/usr/bin/touch\", \"{{dir}}/{mark}\"]\n\
                 tier = \"{tier}\"\nmutating = true\n"
            ),
            dir.path(),
        )
    };
    let judged = text("read_only", "judged");
    let unjudged = text("admin", "unjudged");
    std::fs::write(&path, &judged).unwrap();
    let d = Daemon::spawn_thread(Settings::system(&path, true).unwrap()).unwrap();
    let mut admin = admin(dir.path()).await;

    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut starters = Vec::new();
    for _ in 0..4 {
        let mut c = viewer(dir.path()).await;
        let done = std::sync::Arc::clone(&done);
        starters.push(tokio::spawn(async move {
            let mut started = Vec::new();
            // Bounded: at most 2,000 attempts each, whatever the reloads do.
            for _ in 0..2_000 {
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                if let Ok(s) = c.start("flip", &none(), None).await {
                    started.push(s.job_id);
                }
            }
            (c, started)
        }));
    }
    let mut reloads = 0;
    while reloads < 40 && !starters.iter().all(|s| s.is_finished()) {
        let next = if reloads % 2 == 0 { &unjudged } else { &judged };
        std::fs::write(&path, next).unwrap();
        admin
            .call::<_, Value>("policy.reload", &serde_json::json!({}))
            .await
            .unwrap();
        reloads += 1;
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut ran = 0;
    for s in starters {
        let (mut c, started) = s.await.unwrap();
        for id in started {
            c.wait(id.as_str(), 30_000).await.unwrap();
            ran += 1;
        }
    }
    assert!(ran > 0 && reloads > 10, "{ran} jobs, {reloads} reloads");
    assert!(
        !dir.path().join("unjudged").exists(),
        "a read_only caller ran the admin-only declaration"
    );
    assert!(dir.path().join("judged").exists());
    drop(admin);
    d.stop();
}
