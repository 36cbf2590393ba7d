//! Jobs turned against the daemon by the users they run as or by the values they are given: a
//! run_as user that stops every process it may (the daemon keeps answering), a secret equal to a
//! status keyword (the commit point still counts), and secrets that must not be readable by
//! other local users while a job runs.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::TestDaemon;
use serde_json::{Value, json};
use warden_testkit::raw::RawClient;
use warden_testkit::users::{Groups, TestUser, as_ids};

/// A TOML string literal.
fn q(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// Whether any process of `uid` is left (zombies included: they are gone but for their parent).
fn processes_of(uid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let real = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|u| u.parse::<u32>().ok());
        let zombie = status.lines().any(|l| l.starts_with("State:\tZ"));
        if real == Some(uid) && !zombie {
            out.push(pid);
        }
    }
    out
}

/// A process of a throwaway user that sends SIGSTOP to every process that user may signal, in a
/// loop. Dropping it kills every process of the user, stopped ones included (SIGKILL needs no
/// SIGCONT), also when the test has failed.
struct Stopper {
    loop_: Child,
    uid: u32,
    gid: u32,
}

impl Stopper {
    fn start(user: &TestUser) -> Stopper {
        let loop_ = as_ids(user.uid, user.gid, Groups::Clear, Path::new("/bin/sh"))
            .args(["-c", "while :; do kill -STOP -1 2>/dev/null; done"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Stopper {
            loop_,
            uid: user.uid,
            gid: user.gid,
        }
    }

    fn kill_all(&mut self) {
        let _ = self.loop_.kill();
        let _ = self.loop_.wait();
        for _ in 0..100 {
            // kill(-1) from a process of the user reaches every other process of the user.
            let _ = as_ids(self.uid, self.gid, Groups::Clear, Path::new("/bin/kill"))
                .args(["-KILL", "--", "-1"])
                .stderr(Stdio::null())
                .status();
            if processes_of(self.uid).is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Stopper {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// What the daemon allows a child from its clone to its exec (`jobs::spawn::EXEC_DEADLINE`).
const EXEC_DEADLINE: Duration = Duration::from_secs(5);

/// Connects, greets and asks `status` on a fresh connection as root; how long each answer took.
fn hello_and_status(socket: &Path) -> (Duration, Duration) {
    let began = Instant::now();
    let mut c = RawClient::connect(socket);
    // A daemon that does not answer fails the test in seconds, not after the default patience.
    c.stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let r = c.call(1, "hello", json!({"protocol": 1, "client": "stall-test"}));
    assert!(r.get("result").is_some(), "hello failed: {r}");
    let hello = began.elapsed();
    let began = Instant::now();
    let r = c.call(2, "status", json!({}));
    assert!(r.get("result").is_some(), "status failed: {r}");
    (hello, began.elapsed())
}

/// The job's record (waiting out the rate limit when polling hits it).
fn job_state(c: &mut RawClient, id: &str) -> Value {
    loop {
        let r = c.call(9, "job.get", json!({"job_id": id}));
        if warden_testkit::raw::error_kind(&r) == Some("rate_limited") {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        assert!(r.get("result").is_some(), "{r}");
        return r["result"].clone();
    }
}

/// Pins: a run_as user that SIGSTOPs all its processes while jobs start never stalls the
/// daemon: root's `hello` and `status` answer within 100 ms each, and every job ends.
#[test]
fn a_run_as_user_stopping_its_processes_does_not_stall_the_daemon() {
    // A stalled daemon stays stalled for as long as the user keeps its child stopped (seconds
    // here); a loaded machine answers within a few hundred milliseconds. A bound between the
    // two tells them apart without failing on a busy CI host.
    const ANSWER_WITHIN: Duration = Duration::from_secs(1);
    if !warden_testkit::root_or_skip(
        "a_run_as_user_stopping_its_processes_does_not_stall_the_daemon",
    ) {
        return;
    }
    let user = TestUser::create(&[]);
    // A deep working directory: entering it is the slowest step between the child's switch to
    // the user and its exec, which widens the moment in which the user's SIGSTOP can catch it.
    let deep = warden_testkit::safe_tempdir();
    let cwd = deep.path().join("d/".repeat(1800));
    std::fs::create_dir_all(&cwd).unwrap();
    let config = format!(
        "[limits]\nrequests_per_second = 1000\nburst = 1000\n\
         uid_requests_per_second = 1000\nuid_burst = 1000\n\
         [jobs]\nmax_active_per_uid = 1000\n\
         [[action]]\nname = \"spin\"\nargv = [\"/bin/true\"]\ntier = \"read_only\"\n\
         mutating = false\ntimeout_s = 2\ncwd = {}\n\
         [action.run_as]\nuser = {}\n[action.cancel]\ngrace_s = 0\n",
        q(&cwd.display().to_string()),
        q(&user.name)
    );
    let d = TestDaemon::start(&config);
    let mut stopper = Stopper::start(&user);

    let mut starter = RawClient::hello(d.socket());
    let mut jobs = Vec::new();
    let mut slowest = (Duration::ZERO, Duration::ZERO);
    let began = Instant::now();
    let mut n = 10;
    while began.elapsed() < Duration::from_secs(4) {
        n += 1;
        let r = starter.call(n, "job.start", json!({"action": "spin", "params": {}}));
        let id = r["result"]["job_id"]
            .as_str()
            .unwrap_or_else(|| panic!("job.start failed: {r}"))
            .to_owned();
        jobs.push(id);
        let (hello, status) = hello_and_status(d.socket());
        slowest = (slowest.0.max(hello), slowest.1.max(status));
        assert!(
            hello < ANSWER_WITHIN && status < ANSWER_WITHIN,
            "the daemon stalled: hello took {hello:?}, status {status:?} after {} jobs",
            jobs.len()
        );
        std::thread::sleep(Duration::from_millis(30));
    }
    // The attack goes on past the exec deadline, so a child it caught before its exec is killed
    // by the daemon rather than by the clean-up.
    while began.elapsed() < Duration::from_secs(4) + EXEC_DEADLINE + Duration::from_secs(1) {
        let (hello, status) = hello_and_status(d.socket());
        slowest = (slowest.0.max(hello), slowest.1.max(status));
        assert!(
            hello < ANSWER_WITHIN && status < ANSWER_WITHIN,
            "the daemon stalled: hello took {hello:?}, status {status:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stopper.kill_all();

    // Every job ends, whether it was stopped before its exec (failed, saying so), after it
    // (timed out, or killed) or not at all (succeeded).
    let mut stopped_before_exec = 0;
    let mut states = std::collections::BTreeMap::<String, usize>::new();
    for id in &jobs {
        let deadline = Instant::now() + Duration::from_secs(20);
        let record = loop {
            let r = job_state(&mut starter, id);
            let state = r["state"].as_str().unwrap_or_default().to_owned();
            if !matches!(state.as_str(), "queued" | "running") {
                break r;
            }
            assert!(Instant::now() < deadline, "job {id} never ended: {r}");
            std::thread::sleep(Duration::from_millis(50));
        };
        let state = record["state"].as_str().unwrap();
        *states.entry(state.to_owned()).or_default() += 1;
        assert!(
            matches!(state, "succeeded" | "failed" | "timed_out"),
            "{record}"
        );
        let message = record["message"].as_str().unwrap_or_default();
        if message.contains("did not reach exec") {
            assert_eq!(state, "failed", "{record}");
            stopped_before_exec += 1;
        }
    }
    eprintln!(
        "{} jobs {states:?}, {stopped_before_exec} stopped before their exec; slowest hello {:?}, status {:?}",
        jobs.len(),
        slowest.0,
        slowest.1
    );
    assert!(
        stopped_before_exec > 0,
        "the loop never caught a child before its exec: nothing was tested"
    );
    let (hello, status) = hello_and_status(d.socket());
    assert!(hello < ANSWER_WITHIN && status < ANSWER_WITHIN);
    drop(stopper);
    drop(d);
    assert!(processes_of(user.uid).is_empty());
}

/// Polls `job.get` until `cond` holds for the job's record.
fn until(c: &mut RawClient, id: &str, cond: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..400 {
        let r = job_state(c, id);
        if cond(&r) {
            return r;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "job {id} never reached the expected state: {}",
        job_state(c, id)
    );
}

/// Pins: a secret equal to `commit` does not hide the commit point: a cancel after it is
/// refused (`conflict: past commit point`), never answered `cancelled`.
#[test]
fn a_secret_equal_to_a_status_keyword_does_not_hide_the_commit_point() {
    let d = TestDaemon::start(
        "[[action]]\nname = \"apply\"\n\
         argv = [\"/bin/sh\", \"-c\", \"echo commit >&3; echo 'progress 50' >&3; sleep 2\", \"apply\", \"{token}\"]\n\
         tier = \"read_only\"\nmutating = false\n\
         [action.params.token]\ntype = \"string\"\nsecret = true\n",
    );
    let mut c = RawClient::hello(d.socket());
    let r = c.call(
        2,
        "job.start",
        json!({"action": "apply", "params": {"token": "commit"}}),
    );
    let id = r["result"]["job_id"].as_str().unwrap().to_owned();
    // Status lines are read in order: progress 50 comes after the commit line.
    until(&mut c, &id, |r| r["progress"] == 50);
    let r = c.call(3, "job.cancel", json!({"job_id": id}));
    assert_eq!(
        warden_testkit::raw::error_kind(&r),
        Some("conflict"),
        "a cancel after the commit point was not refused: {r}"
    );
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("past commit point"),
        "{r}"
    );
    let r = until(&mut c, &id, |r| r["state"] != "running");
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(r["committed"], true, "{r}");
}

/// What `user` reads from `path` with `cat`, and whether it could.
fn read_as(user: &TestUser, path: &str) -> (bool, Vec<u8>) {
    let out = user
        .command(Path::new("/bin/cat"))
        .arg(path)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    (out.status.success(), out.stdout)
}

fn holds(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Pins: a secret passed on `stdin` reaches the job, and while the job runs no other local user
/// (nor root) finds it in the job's /proc/PID/cmdline or /proc/PID/environ.
#[test]
fn a_secret_on_stdin_reaches_the_job_and_no_other_user_can_read_it() {
    if !warden_testkit::root_or_skip(
        "a_secret_on_stdin_reaches_the_job_and_no_other_user_can_read_it",
    ) {
        return;
    }
    let runner = TestUser::create(&[]);
    let other = TestUser::create(&[]);
    let script = "IFS= read -r t; printf '%s\\n' \"$t\" | sed 's/./&-/g'; \
                  echo \"progress 10 started pid $$\" >&3; exec sleep 30";
    let d = TestDaemon::start(&format!(
        "[[action]]\nname = \"login\"\nargv = [\"/bin/sh\", \"-c\", {}, \"login\", \"{{user}}\"]\n\
         stdin = \"{{token}}\\n\"\ntier = \"read_only\"\nmutating = false\n\
         [action.params.user]\ntype = \"string\"\n\
         [action.params.token]\ntype = \"string\"\nsecret = true\n\
         [action.run_as]\nuser = {}\n[action.cancel]\ngrace_s = 0\n",
        q(script),
        q(&runner.name)
    ));
    let secret = "s3cr3t-Tok3n-77c1";
    let mut c = RawClient::hello(d.socket());
    let r = c.call(
        2,
        "job.start",
        json!({"action": "login", "params": {"user": "bob", "token": secret}}),
    );
    let id = r["result"]["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    let r = until(&mut c, &id, |r| {
        r["message"].as_str().is_some_and(|m| m.starts_with("pid "))
    });
    let pid: i32 = r["message"].as_str().unwrap()[4..].parse().unwrap();

    // `exec sleep` kept the pid: the process still is the job's.
    for file in ["cmdline", "environ"] {
        let path = format!("/proc/{pid}/{file}");
        let (_, seen) = read_as(&other, &path);
        assert!(
            !holds(&seen, secret),
            "another user read the secret in {path}"
        );
        let seen = std::fs::read(&path).unwrap();
        assert!(!holds(&seen, secret), "the secret is in {path}");
    }
    let (could, _) = read_as(&other, &format!("/proc/{pid}/environ"));
    assert!(!could, "another user read the job's environment");
    let (could, _) = read_as(&other, &format!("/proc/{pid}/fd/0"));
    assert!(!could, "another user opened the job's stdin");
    let r = c.call(4, "job.cancel", json!({"job_id": id}));
    assert!(r.get("result").is_some(), "{r}");
    until(&mut c, &id, |r| r["state"] == "cancelled");
    // It arrived, whole: the job echoed it with a dash after each character.
    let dashed: String = secret.chars().map(|ch| format!("{ch}-")).collect();
    let logs = c.call(5, "job.logs", json!({"job_id": id}));
    assert_eq!(
        logs["result"]["data"].as_str(),
        Some(format!("{dashed}\n").as_str()),
        "{logs}"
    );
}

/// Pins: `wardend check-config` loads a configuration with a secret placeholder in argv, and
/// warns at its line that other users can read it there, pointing at `stdin`.
#[test]
fn check_config_warns_about_a_secret_in_argv() {
    let dir = warden_testkit::safe_tempdir();
    let path = dir.path().join("warden.toml");
    std::fs::write(
        &path,
        "[[action]]\nname = \"login\"\nargv = [\"/bin/login-helper\", \"--token={token}\"]\n\
         [action.params.token]\ntype = \"string\"\nsecret = true\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wardend"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let want = format!(
        "{}:3: warning: argv passes secret param `token`, which every local user can read in \
         /proc/PID/cmdline while the job runs; pass it on stdin instead (stdin = \"{{token}}\\n\")",
        path.display()
    );
    assert!(stdout.lines().any(|l| l == want), "{stdout}");
    assert!(stdout.ends_with(": ok\n"), "{stdout}");
}
