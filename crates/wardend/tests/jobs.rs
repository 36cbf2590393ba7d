//! Jobs against a real daemon on a real socket: parameters that must never reach a program,
//! cancel and commit points, rollback, timeouts, whole process trees stopped, idempotency,
//! concurrency groups, output caps, secrets, and no leaks over many jobs.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use common::TestDaemon;
use serde_json::{Map, Value, json};
use warden_client::{Client, ClientError};
use warden_proto::ErrorKind;
use warden_proto::envelope::Incoming;
use warden_proto::jobs::{JobRecord, JobState};

/// A TOML string literal.
fn q(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// An `[[action]]` running `script` with `/bin/sh -c`, passing `args` as `$1`, `$2`, … (`{dir}`
/// is the test's directory, `{name}` a placeholder for param `name`).
fn script_action(name: &str, script: &str, args: &[&str], extra: &str) -> String {
    let args: String = args.iter().map(|a| format!(", {}", q(a))).collect();
    format!(
        "[[action]]\nname = \"{name}\"\nargv = [\"/bin/sh\", \"-c\", {}, \"{name}\"{args}]\n\
         tier = \"read_only\"\nmutating = false\n{extra}\n",
        q(script)
    )
}

async fn client(d: &TestDaemon) -> Client {
    Client::connect(d.socket(), "jobs-test").await.unwrap()
}

fn params(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

async fn start(c: &mut Client, action: &str, p: Value) -> Result<String, ClientError> {
    Ok(c.start(action, &params(p), None).await?.job_id.to_string())
}

async fn wait(c: &mut Client, id: &str) -> JobRecord {
    c.wait(id, 30_000).await.unwrap()
}

async fn logs(c: &mut Client, id: &str) -> String {
    let v: Value = c.call("job.logs", &json!({"job_id": id})).await.unwrap();
    v["data"].as_str().unwrap().to_owned()
}

/// Waits until `cond` holds for the job, polling `job.get`.
async fn until(c: &mut Client, id: &str, cond: impl Fn(&JobRecord) -> bool) -> JobRecord {
    for _ in 0..600 {
        let r = c.job(id).await.unwrap();
        if cond(&r) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("job {id} never reached the expected state");
}

fn kind(e: &ClientError) -> Option<ErrorKind> {
    e.kind()
}

/// Pins: hostile values are refused as bad_request and nothing runs, while a fair value runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_parameters_are_refused_and_nothing_runs() {
    let d = TestDaemon::start(
        r#"
[[action]]
name = "mark"
argv = ["/usr/bin/touch", "{dir}/ran-{name}"]
tier = "read_only"
mutating = false
[action.params.name]
type = "string"
max_len = 32
pattern = "[a-z0-9-]+"
[[action]]
name = "read"
argv = ["/bin/sh", "-c", "touch {dir}/read-ran; cat \"$1\"", "read", "{path}"]
tier = "read_only"
mutating = false
[action.params.path]
type = "path"
under = ["{dir}/allowed"]
must_exist = true
"#,
    );
    let dir = d.dir.path();
    std::fs::create_dir(dir.join("allowed")).unwrap();
    std::fs::write(dir.join("allowed/ok.txt"), b"fine").unwrap();
    std::fs::write(dir.join("secret.txt"), b"outside").unwrap();
    std::os::unix::fs::symlink(dir.join("secret.txt"), dir.join("allowed/link")).unwrap();
    std::os::unix::fs::symlink(dir, dir.join("allowed/up")).unwrap();
    let mut c = client(&d).await;

    let hostile: Vec<Value> = vec![
        "; rm -rf /".into(),
        "$(id)".into(),
        "`id`".into(),
        "a\nb".into(),
        "a\0b".into(),
        "x".repeat(33).into(),
        "../../etc/shadow".into(),
        "ＡＢＣ".into(),
        5.into(),
        json!(["a"]),
    ];
    for value in hostile {
        let err = start(&mut c, "mark", json!({ "name": value }))
            .await
            .unwrap_err();
        assert_eq!(kind(&err), Some(ErrorKind::BadRequest), "{value}: {err}");
        assert!(err.to_string().contains("param `name`"), "{err}");
    }
    for path in [
        "/etc/shadow".to_owned(),
        format!("{}/allowed/../secret.txt", dir.display()),
        format!("{}/allowed/link", dir.display()),
        format!("{}/allowed/up/secret.txt", dir.display()),
        format!("{}/allowed/missing", dir.display()),
    ] {
        let err = start(&mut c, "read", json!({ "path": path }))
            .await
            .unwrap_err();
        assert_eq!(kind(&err), Some(ErrorKind::BadRequest), "{path}: {err}");
    }
    // A frame with invalid UTF-8 inside a string is refused before any parameter is read.
    let mut raw = warden_testkit::raw::RawClient::hello(d.socket());
    raw.send_frame(b"{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"job.start\",\"params\":{\"action\":\"mark\",\"params\":{\"name\":\"\xff\xfe\"}}}");
    assert_eq!(
        warden_testkit::raw::error_kind(&raw.recv()),
        Some("bad_request")
    );

    let ran: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("ran"))
        .collect();
    assert!(ran.is_empty(), "a refused job ran: {ran:?}");
    assert!(c.jobs(false, None, None).await.unwrap().jobs.is_empty());

    // The same actions do run with fair values (so the markers above would have shown a run).
    let id = start(&mut c, "mark", json!({"name": "web-1"}))
        .await
        .unwrap();
    assert_eq!(wait(&mut c, &id).await.state, JobState::Succeeded);
    assert!(dir.join("ran-web-1").exists());
    let ok = format!("{}/allowed/ok.txt", dir.display());
    let id = start(&mut c, "read", json!({ "path": ok })).await.unwrap();
    assert_eq!(wait(&mut c, &id).await.state, JobState::Succeeded);
    assert_eq!(logs(&mut c, &id).await, "fine");
}

/// Pins: a path that need not exist is accepted when its directory exists under the prefix,
/// refused with a message naming the missing directory otherwise, and refused through a symlink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_that_need_not_exist_still_needs_its_directory() {
    let d = TestDaemon::start(
        r#"[[action]]
name = "create"
argv = ["/bin/sh", "-c", "echo made > \"$1\"", "create", "{path}"]
tier = "read_only"
mutating = false
[action.params.path]
type = "path"
under = ["{dir}/allowed"]
must_exist = false
"#,
    );
    let dir = d.dir.path();
    std::fs::create_dir(dir.join("allowed")).unwrap();
    std::os::unix::fs::symlink(dir, dir.join("allowed/up")).unwrap();
    let mut c = client(&d).await;
    let path = |p: &str| json!({ "path": format!("{}/allowed/{p}", dir.display()) });
    let id = start(&mut c, "create", path("new.txt")).await.unwrap();
    assert_eq!(wait(&mut c, &id).await.state, JobState::Succeeded);
    assert_eq!(
        std::fs::read_to_string(dir.join("allowed/new.txt")).unwrap(),
        "made\n"
    );
    let err = start(&mut c, "create", path("nodir/new.txt"))
        .await
        .unwrap_err();
    assert_eq!(kind(&err), Some(ErrorKind::BadRequest), "{err}");
    assert!(
        err.to_string().contains("its directory must exist"),
        "{err}"
    );
    let err = start(&mut c, "create", path("up/new.txt"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no symlink"), "{err}");
    assert!(!dir.join("new.txt").exists());
}

/// A job that leaves a grandchild ignoring SIGTERM and writes the grandchild's pid to a file.
const STUBBORN: &str = r#"sh -c 'trap "" TERM; exec sleep 300' &
echo $! > "$1/gc-$WARDEN_JOB_ID"
echo "progress 10 waiting" >&"$WARDEN_STATUS_FD"
sleep 300"#;

fn pinned_grandchild(dir: &Path, job: &str) -> std::os::fd::OwnedFd {
    let file = dir.join(format!("gc-{job}"));
    for _ in 0..500 {
        if let Ok(text) = std::fs::read_to_string(&file)
            && let Ok(pid) = text.trim().parse::<i32>()
        {
            return warden_sys::process::pidfd_open(pid).unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the job never reported its grandchild");
}

/// Pins: cancel before commit ends `cancelled` and leaves no process of the job, not even a
/// grandchild that ignores SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_before_commit_stops_the_whole_job() {
    let d = TestDaemon::start(&script_action(
        "stubborn",
        STUBBORN,
        &["{dir}"],
        "[action.cancel]\nsignal = \"SIGTERM\"\ngrace_s = 1\n",
    ));
    let mut c = client(&d).await;
    let id = start(&mut c, "stubborn", json!({})).await.unwrap();
    let gc = pinned_grandchild(d.dir.path(), &id);
    until(&mut c, &id, |r| r.progress == Some(10)).await;
    let r = c.cancel(&id).await.unwrap();
    assert_eq!(r.state, JobState::Cancelled);
    assert!(!r.committed);
    assert!(
        !warden_sys::process::pidfd_is_alive(gc.as_fd()).unwrap(),
        "the grandchild survived the cancel"
    );
}

/// A job that commits, then waits; its rollback leaves a marker. It also leaves a process
/// behind, so stopping it always kills what is left in its cgroup before the rollback starts.
fn committing(dir: &Path, rollback: bool) -> String {
    let script = r#"sleep 300 >/dev/null 2>&1 &
echo "progress 20 prepare" >&"$WARDEN_STATUS_FD"
echo commit >&"$WARDEN_STATUS_FD"
echo applied > "$1/applied"
echo "progress 60 applied" >&"$WARDEN_STATUS_FD"
sleep "$2""#;
    let rb = if rollback {
        format!(
            "rollback = [\"/bin/sh\", \"-c\", \"rm \\\"$1/applied\\\"; echo undone > \\\"$1/rolled-back\\\"\", \"rb\", {}]\n",
            q(&dir.display().to_string())
        )
    } else {
        String::new()
    };
    format!(
        "[[action]]\nname = \"apply\"\nargv = [\"/bin/sh\", \"-c\", {}, \"apply\", {}, \"{{secs}}\"]\n{rb}tier = \"read_only\"\n[action.params.secs]\ntype = \"int\"\nmin = 0\nmax = 60\n[action.cancel]\ngrace_s = 1\n",
        q(script),
        q(&dir.display().to_string())
    )
}

/// Pins: after commit without a rollback, cancel is a conflict and the job finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_after_commit_without_rollback_is_refused() {
    let dir = warden_testkit::safe_tempdir();
    let d = TestDaemon::start(&committing(dir.path(), false));
    let mut c = client(&d).await;
    let id = start(&mut c, "apply", json!({"secs": 1})).await.unwrap();
    until(&mut c, &id, |r| r.committed).await;
    let err = c.cancel(&id).await.unwrap_err();
    assert_eq!(kind(&err), Some(ErrorKind::Conflict));
    assert!(err.to_string().contains("past commit point"), "{err}");
    let r = wait(&mut c, &id).await;
    assert_eq!(r.state, JobState::Succeeded);
    assert!(dir.path().join("applied").exists());
}

/// Pins: after commit with a rollback, cancel ends `rolled_back` and the rollback's effect shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_after_commit_with_rollback_rolls_back() {
    let dir = warden_testkit::safe_tempdir();
    let d = TestDaemon::start(&committing(dir.path(), true));
    let mut c = client(&d).await;
    let id = start(&mut c, "apply", json!({"secs": 30})).await.unwrap();
    until(&mut c, &id, |r| r.committed && r.progress == Some(60)).await;
    assert!(dir.path().join("applied").exists());
    let r = c.cancel(&id).await.unwrap();
    assert_eq!(r.state, JobState::RolledBack, "{r:?}");
    assert!(!dir.path().join("applied").exists(), "the effect remains");
    assert!(dir.path().join("rolled-back").exists());
    assert!(logs(&mut c, &id).await.contains("running the rollback"));
}

/// Pins: a job past its timeout ends `timed_out`, and with its whole process tree gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_its_timeout_is_timed_out() {
    let d = TestDaemon::start(&script_action(
        "slow",
        STUBBORN,
        &["{dir}"],
        "timeout_s = 1\n[action.cancel]\ngrace_s = 1\n",
    ));
    let mut c = client(&d).await;
    let id = start(&mut c, "slow", json!({})).await.unwrap();
    let gc = pinned_grandchild(d.dir.path(), &id);
    let r = wait(&mut c, &id).await;
    assert_eq!(r.state, JobState::TimedOut);
    assert!(!warden_sys::process::pidfd_is_alive(gc.as_fd()).unwrap());
}

/// Pins: a cancelled queued job never runs, and a job's exit status decides success; `status`
/// counts the jobs running and queued, and not those that ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_groups_queue_or_refuse() {
    let d = TestDaemon::start(&format!(
        "{}{}{}",
        script_action(
            "hold",
            "sleep \"$1\"",
            &["{secs}"],
            "concurrency_group = \"g\"\n[action.params.secs]\ntype = \"int\"\nmin = 0\nmax = 60\n",
        ),
        script_action(
            "busy",
            "exit 0",
            &[],
            "concurrency_group = \"g\"\nqueue = false\n"
        ),
        script_action("fail", "exit 3", &[], ""),
    ));
    let mut c = client(&d).await;
    let first = start(&mut c, "hold", json!({"secs": 30})).await.unwrap();
    until(&mut c, &first, |r| r.state == JobState::Running).await;
    let second = start(&mut c, "hold", json!({"secs": 0})).await.unwrap();
    let third = start(&mut c, "hold", json!({"secs": 0})).await.unwrap();
    assert_eq!(c.job(&second).await.unwrap().state, JobState::Queued);
    let counts = |s: warden_proto::messages::StatusResult| (s.jobs.running, s.jobs.queued);
    assert_eq!(counts(c.status().await.unwrap()), (1, 2));
    let err = start(&mut c, "busy", json!({})).await.unwrap_err();
    assert_eq!(kind(&err), Some(ErrorKind::Conflict));
    assert!(
        err.to_string().contains("concurrency group `g` is busy"),
        "{err}"
    );
    // Cancelling a queued job: it never runs. Cancelling the holder lets the next one run.
    assert_eq!(c.cancel(&second).await.unwrap().state, JobState::Cancelled);
    assert_eq!(c.job(&second).await.unwrap().started_at, None);
    assert_eq!(counts(c.status().await.unwrap()), (1, 1));
    assert_eq!(c.cancel(&first).await.unwrap().state, JobState::Cancelled);
    assert_eq!(wait(&mut c, &third).await.state, JobState::Succeeded);
    assert_eq!(counts(c.status().await.unwrap()), (0, 0));
    let failed = start(&mut c, "fail", json!({})).await.unwrap();
    let r = wait(&mut c, &failed).await;
    assert_eq!((r.state, r.exit_code), (JobState::Failed, Some(3)));
    assert_eq!(r.message.as_deref(), Some("exited with status 3"));
}

/// Pins: one uid may have at most `max_active_per_uid` jobs queued or running; more are refused
/// with `busy` and leave nothing behind, and a slot frees when a job ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_caller_cannot_start_unlimited_jobs() {
    let d = TestDaemon::start(&format!(
        "[jobs]\nmax_active_per_uid = 2\n{}",
        script_action("hold", "echo holding; sleep 30", &[], "")
    ));
    let mut c = client(&d).await;
    let first = start(&mut c, "hold", json!({})).await.unwrap();
    let _second = start(&mut c, "hold", json!({})).await.unwrap();
    let logs_dir = d.dir.path().join("state/jobs");
    let count_logs = || std::fs::read_dir(&logs_dir).unwrap().count();
    // Each running job has written its line, so its log exists.
    for _ in 0..500 {
        if count_logs() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = count_logs();
    assert_eq!(before, 2);
    let err = start(&mut c, "hold", json!({})).await.unwrap_err();
    assert_eq!(kind(&err), Some(ErrorKind::Busy), "{err}");
    assert!(
        err.to_string().contains("2 jobs queued or running"),
        "{err}"
    );
    assert_eq!(count_logs(), before, "a refused job leaves no log file");
    assert_eq!(c.cancel(&first).await.unwrap().state, JobState::Cancelled);
    start(&mut c, "hold", json!({})).await.unwrap();
}

/// Pins: the same idempotency key from the same caller within the window returns the same job,
/// also when the starts race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_returns_the_same_job() {
    let d = TestDaemon::start(&script_action("noop", "exit 0", &[], ""));
    let mut c = client(&d).await;
    let a = c
        .start("noop", &Map::new(), Some("deploy-42"))
        .await
        .unwrap();
    let b = c
        .start("noop", &Map::new(), Some("deploy-42"))
        .await
        .unwrap();
    assert!(!a.existing && b.existing);
    assert_eq!(a.job_id, b.job_id);
    let other = c
        .start("noop", &Map::new(), Some("deploy-43"))
        .await
        .unwrap();
    assert_ne!(other.job_id, a.job_id);
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let socket = d.socket().to_path_buf();
            tokio::spawn(async move {
                let mut c = Client::connect(&socket, "racer").await.unwrap();
                c.start("noop", &Map::new(), Some("race"))
                    .await
                    .unwrap()
                    .job_id
            })
        })
        .collect();
    let mut ids = Vec::new();
    for r in racers {
        ids.push(r.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "racing starts made several jobs: {ids:?}");
}

/// Pins: output beyond the cap is dropped after a truncation marker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_is_capped_with_a_marker() {
    let d = TestDaemon::start(&format!(
        "[jobs]\nlog_cap_bytes = 4096\n{}",
        script_action(
            "loud",
            "head -c 100000 /dev/zero | tr '\\0' x; echo done",
            &[],
            ""
        )
    ));
    let mut c = client(&d).await;
    let id = start(&mut c, "loud", json!({})).await.unwrap();
    assert_eq!(wait(&mut c, &id).await.state, JobState::Succeeded);
    let v: Value = c.call("job.logs", &json!({"job_id": id})).await.unwrap();
    let data = v["data"].as_str().unwrap();
    assert_eq!(v["truncated"], true);
    assert!(data.starts_with(&"x".repeat(4096)));
    assert!(
        data.ends_with("[warden: output truncated at 4096 bytes]\n"),
        "{}",
        &data[4000..]
    );
    let on_disk = std::fs::metadata(d.dir.path().join(format!("state/jobs/{id}.log"))).unwrap();
    assert!(on_disk.len() < 4200);
}

/// Pins: a secret parameter is redacted in job.get, in the job's output and in the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_parameters_never_show() {
    let d = TestDaemon::start(&script_action(
        "login",
        "echo \"user=$1 token=$2\"",
        &["{user}", "{token}"],
        "[action.params.user]\ntype = \"string\"\n[action.params.token]\ntype = \"string\"\nsecret = true\n",
    ));
    let secret = "s3cr3t-Tok3n-9f2a";
    let mut c = client(&d).await;
    let id = start(&mut c, "login", json!({"user": "bob", "token": secret}))
        .await
        .unwrap();
    let r = wait(&mut c, &id).await;
    assert_eq!(r.state, JobState::Succeeded);
    assert_eq!(r.params["token"], "<redacted>");
    assert_eq!(r.params["user"], "bob");
    assert_eq!(logs(&mut c, &id).await, "user=bob token=<redacted>\n");
    let ledger = std::fs::read(d.dir.path().join("state/ledger.db")).unwrap();
    let wal = std::fs::read(d.dir.path().join("state/ledger.db-wal")).unwrap_or_default();
    for bytes in [&ledger, &wal] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the ledger holds the secret"
        );
    }
    let log = std::fs::read(d.dir.path().join(format!("state/jobs/{id}.log"))).unwrap();
    assert!(!log.windows(secret.len()).any(|w| w == secret.as_bytes()));
    // A rejected secret value is not echoed either.
    let err = start(
        &mut c,
        "login",
        json!({"user": "bob", "token": "zq-hidden\nline"}),
    )
    .await
    .unwrap_err();
    assert_eq!(kind(&err), Some(ErrorKind::BadRequest));
    assert!(!err.to_string().contains("zq-hidden"), "{err}");
}

/// Pins: job.watch streams progress and phase updates, then answers with the final record;
/// malformed status lines are counted and ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_updates_until_the_job_ends() {
    let script = r#"s=$WARDEN_STATUS_FD
echo "phase one" >&"$s"; sleep 0.3
echo "progress 50 two halfway" >&"$s"; echo "nonsense line" >&"$s"; sleep 0.3
echo "phase three" >&"$s"; echo 'result {{"ok": true}}' >&"$s"; echo "progress 100" >&"$s""#;
    let d = TestDaemon::start(&script_action("steps", script, &[], ""));
    let mut c = client(&d).await;
    let id = start(&mut c, "steps", json!({})).await.unwrap();
    let watch = c.send("job.watch", &json!({"job_id": id})).await.unwrap();
    let mut updates: Vec<JobRecord> = Vec::new();
    let last = loop {
        let frame = c.receive().await.unwrap();
        match Incoming::parse(&frame).unwrap() {
            Incoming::Notification { method, params } => {
                assert_eq!(method, "job.update");
                updates.push(serde_json::from_str(params.unwrap().get()).unwrap());
            }
            Incoming::Response { id: got, outcome } => {
                assert_eq!(got, watch);
                break serde_json::from_str::<JobRecord>(outcome.unwrap().get()).unwrap();
            }
        }
    };
    assert_eq!(last.state, JobState::Succeeded);
    assert_eq!(last.result, Some(json!({"ok": true})));
    assert_eq!(last.malformed_status_lines, 1);
    // A new phase drops the message of the phase before.
    assert_eq!(
        (last.phase.as_deref(), last.message.as_deref()),
        (Some("three"), None)
    );
    assert!(
        updates.iter().any(|u| u.phase.as_deref() == Some("one")),
        "{updates:?}"
    );
    assert!(
        updates
            .iter()
            .any(|u| u.progress == Some(50) && u.phase.as_deref() == Some("two"))
    );
    assert!(updates.iter().all(|u| !u.state.is_terminal()));
}

/// Pins: job.logs follow streams output as it is written and ends with the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_streams_output_until_the_end() {
    let d = TestDaemon::start(&script_action(
        "talk",
        "for i in 1 2 3; do echo line $i; sleep 0.2; done",
        &[],
        "",
    ));
    let mut c = client(&d).await;
    let id = start(&mut c, "talk", json!({})).await.unwrap();
    let req = c
        .send("job.logs", &json!({"job_id": id, "follow": true}))
        .await
        .unwrap();
    let mut text = String::new();
    let mut notifications = 0;
    loop {
        let frame = c.receive().await.unwrap();
        match Incoming::parse(&frame).unwrap() {
            Incoming::Notification { params, .. } => {
                notifications += 1;
                let v: Value = serde_json::from_str(params.unwrap().get()).unwrap();
                text.push_str(v["data"].as_str().unwrap());
            }
            Incoming::Response { id: got, outcome } => {
                assert_eq!(got, req);
                let v: Value = serde_json::from_str(outcome.unwrap().get()).unwrap();
                assert_eq!(v["ended"], true);
                text.push_str(v["data"].as_str().unwrap());
                break;
            }
        }
    }
    assert_eq!(text, "line 1\nline 2\nline 3\n");
    assert!(
        notifications >= 2,
        "output arrived all at once: {notifications}"
    );
}

/// Pins: a followed `job.logs` answer never overtakes the job's last output: every chunk the job
/// wrote has arrived (as notifications or in the answer) when the answer does, for jobs that
/// write their last line right as they end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_to_a_followed_log_comes_after_all_its_output() {
    let d = TestDaemon::start(&script_action(
        "burst",
        "i=0; while [ $i -lt 50 ]; do echo line $i; i=$((i+1)); done",
        &[],
        "",
    ));
    let mut c = client(&d).await;
    let want: String = (0..50).map(|i| format!("line {i}\n")).collect();
    // Two requests a round: well within the connection's burst of 40.
    for round in 0..15 {
        let id = start(&mut c, "burst", json!({})).await.unwrap();
        let req = c
            .send("job.logs", &json!({"job_id": id, "follow": true}))
            .await
            .unwrap();
        let mut text = String::new();
        loop {
            let frame = c.receive().await.unwrap();
            match Incoming::parse(&frame).unwrap() {
                Incoming::Notification { params, .. } => {
                    let v: Value = serde_json::from_str(params.unwrap().get()).unwrap();
                    text.push_str(v["data"].as_str().unwrap());
                }
                Incoming::Response { id: got, outcome } => {
                    assert_eq!(got, req);
                    let v: Value = serde_json::from_str(outcome.unwrap().get()).unwrap();
                    text.push_str(v["data"].as_str().unwrap());
                    break;
                }
            }
        }
        assert_eq!(text, want, "round {round}: output missing at the answer");
    }
}

/// Pins: stopping the daemon cancels a running job (recorded `cancelled`, not `lost`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_running_jobs_and_records_it() {
    let mut d = TestDaemon::start(&script_action(
        "long",
        "sleep 300",
        &[],
        "[action.cancel]\ngrace_s = 1\n",
    ));
    let mut c = client(&d).await;
    let id = start(&mut c, "long", json!({})).await.unwrap();
    until(&mut c, &id, |r| r.state == JobState::Running).await;
    drop(c);
    let state = d.dir.path().join("state");
    d.stop();
    let db = rusqlite::Connection::open(state.join("ledger.db")).unwrap();
    let recorded: String = db
        .query_row("SELECT state FROM jobs WHERE id = ?1", [&id], |r| r.get(0))
        .unwrap();
    assert_eq!(recorded, "cancelled");
}

/// Where the cgroup2 hierarchy is mounted on this host.
fn cgroup2_mount() -> std::path::PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            right
                .starts_with("cgroup2 ")
                .then(|| left.split_whitespace().nth(4).unwrap().into())
        })
        .unwrap()
}

/// Pins: a job runs in a cgroup of its own under the daemon's job directory, and a daemon that
/// shuts down cleanly leaves neither behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_leaves_no_cgroup_behind() {
    if !warden_testkit::root_or_skip("a_clean_shutdown_leaves_no_cgroup_behind") {
        return;
    }
    let mut d = TestDaemon::start(&script_action("where", "cat /proc/self/cgroup", &[], ""));
    let mut c = client(&d).await;
    let id = start(&mut c, "where", json!({})).await.unwrap();
    assert_eq!(wait(&mut c, &id).await.state, JobState::Succeeded);
    let out = logs(&mut c, &id).await;
    let rel = out
        .lines()
        .find_map(|l| l.strip_prefix("0::/"))
        .unwrap_or_else(|| panic!("no cgroup2 line in {out}"));
    let job_cgroup = cgroup2_mount().join(rel);
    assert!(
        job_cgroup.ends_with(&id),
        "the job's cgroup is named after it: {}",
        job_cgroup.display()
    );
    let root = job_cgroup.parent().unwrap().to_owned();
    assert!(
        root.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("warden-")
    );
    // Removed right after the job's final state is answered.
    for _ in 0..200 {
        if !job_cgroup.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!job_cgroup.exists(), "a finished job's cgroup is removed");
    assert!(root.exists());
    drop(c);
    d.stop();
    assert!(!root.exists(), "{} is left after shutdown", root.display());
}

/// Pins: a path parameter under a stalled file system (a FUSE mount whose server never
/// answers) is resolved off the runtime threads with a deadline: while four starts wait on it,
/// root's hello and status answer within 1 s; each start is refused `unavailable` at its
/// deadline, naming the cause; a fifth from the same uid is refused `busy` at once; and once the
/// file system is gone the uid is served again.
#[test]
fn a_stalled_file_system_under_a_path_prefix_never_stalls_the_daemon() {
    use warden_testkit::raw::{RawClient, error_kind};
    if !warden_testkit::root_or_skip(
        "a_stalled_file_system_under_a_path_prefix_never_stalls_the_daemon",
    ) {
        return;
    }
    let d = TestDaemon::start(
        r#"
[[action]]
name = "read"
argv = ["/bin/cat", "{path}"]
tier = "read_only"
mutating = false
[action.params.path]
type = "path"
under = ["{dir}/allowed"]
"#,
    );
    let dir = d.dir.path();
    std::fs::create_dir_all(dir.join("allowed/stall")).unwrap();
    let fuse = warden_testkit::fuse::StalledFuse::mount(&dir.join("allowed/stall"));
    let stalled =
        json!({"action": "read", "params": {"path": format!("{}/allowed/stall/x", dir.display())}});
    // As many as one uid may have waiting on file systems at once.
    let mut starters: Vec<RawClient> = (0..4).map(|_| RawClient::hello(d.socket())).collect();
    let sent = std::time::Instant::now();
    for (i, c) in starters.iter_mut().enumerate() {
        c.send(10 + i as u64, "job.start", stalled.clone());
    }
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let mut root = RawClient::connect(d.socket());
        root.stream
            .set_read_timeout(Some(Duration::from_secs(4)))
            .unwrap();
        let h = root.call(1, "hello", json!({"protocol": 1, "client": "root"}));
        assert!(h.get("result").is_some(), "{h}");
        let s = root.call(2, "status", json!({}));
        assert!(s.get("result").is_some(), "{s}");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "hello and status took {:?} while starts waited on a stalled file system",
            t.elapsed()
        );
    }
    for c in &mut starters {
        let r = c.recv();
        assert_eq!(error_kind(&r), Some("unavailable"), "{r}");
        let m = r["error"]["message"].as_str().unwrap();
        assert!(
            m.contains("param `path`") && m.contains("may be stalled"),
            "{m}"
        );
    }
    assert!(
        sent.elapsed() < Duration::from_secs(15),
        "{:?}",
        sent.elapsed()
    );
    let mut more = RawClient::hello(d.socket());
    let r = more.call(20, "job.start", stalled.clone());
    assert_eq!(error_kind(&r), Some("busy"), "{r}");
    assert!(r.pointer("/error/data/retry_after_ms").is_some(), "{r}");

    drop(fuse);
    let mut served = None;
    for i in 0..200 {
        let r = more.call(21 + i, "job.start", stalled.clone());
        if error_kind(&r) != Some("busy") {
            served = Some(r);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The mount is gone, its directory empty: the path resolves (it need not exist) and the job
    // starts.
    let r = served.expect("the uid was never served again after the file system went away");
    assert!(r.pointer("/result/job_id").is_some(), "{r}");
}
