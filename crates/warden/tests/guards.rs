//! `[guards] mutating_exes` against real users connecting through the real kernel: an
//! executable is hashed only when a request's decision needs it, never on the threads that
//! serve connections, with a size cap; and an allowed path run in another mount namespace does
//! not pass. Needs root; skips with a reason otherwise, and fails instead when
//! WARDEN_REQUIRE_ROOT_TESTS=1.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use warden_testkit::fuse::HangingOpenFuse;
use warden_testkit::raw::{RawClient, error_kind};
use warden_testkit::users::{Groups, TestUser, as_ids};

use common::Env;

/// SHA-256 of `file`, as 64 hex digits (from `sha256sum`, so the test does not share the
/// daemon's code for it).
fn sha256_hex(file: &Path) -> String {
    let out = Command::new("sha256sum").arg(file).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)[..64].to_owned()
}

/// The answer `warden call` printed.
fn answer(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {text:?}, stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn message(v: &Value) -> &str {
    v.pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// An operator user and an action that changes state.
fn policy(user: &TestUser, guards: &str) -> String {
    format!(
        "[tiers.users]\n{} = \"operator\"\n\
         [[action]]\nname = \"touch\"\nargv = [\"/bin/true\"]\ntier = \"operator\"\nmutating = true\n\
         [guards]\nmutating_exes = [{guards}]\n",
        user.name
    )
}

/// Waits for `child` up to `limit`; kills it and fails past that.
fn finish_within(mut child: Child, limit: Duration, what: &str) -> Output {
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not answer within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// Root's hello and status, each answered within `limit` (or the test fails).
fn root_is_served_within(socket: &Path, limit: Duration) {
    let t = Instant::now();
    let mut root = RawClient::connect(socket);
    root.stream.set_read_timeout(Some(limit * 4)).unwrap();
    let h = root.call(1, "hello", json!({"protocol": 1, "client": "root"}));
    assert!(h.get("result").is_some(), "{h}");
    let s = root.call(2, "status", json!({}));
    assert!(s.get("result").is_some(), "{s}");
    assert!(
        t.elapsed() < limit,
        "root's hello and status took {:?}",
        t.elapsed()
    );
}

/// Pins: connections from a 200 GB (sparse) executable listed with a sha256 are not hashed at
/// accept: the user's and root's hello and status answer at once, and a change from that
/// executable is refused, naming the cause ("executable too large to verify").
#[test]
fn a_huge_guarded_executable_is_never_hashed_at_accept_and_fails_closed_with_its_reason() {
    if !warden_testkit::root_or_skip(
        "a_huge_guarded_executable_is_never_hashed_at_accept_and_fails_closed_with_its_reason",
    ) {
        return;
    }
    let user = TestUser::create(&[]);
    let env = Env::start(&policy(
        &user,
        &format!(
            "{{path = \"{{dir}}/warden-huge\", sha256 = \"{}\"}}",
            "ab".repeat(32)
        ),
    ));
    // A copy of the CLI that still runs (the kernel reads only its headers), extended to
    // 200 GB of holes: hashing it would take minutes.
    let huge = env.dir.path().join("warden-huge");
    let status = Command::new("install")
        .args(["-m", "0755"])
        .arg(&env.warden)
        .arg(&huge)
        .status()
        .unwrap();
    assert!(status.success());
    let status = Command::new("truncate")
        .args(["-s", "200G"])
        .arg(&huge)
        .status()
        .unwrap();
    assert!(status.success());

    let statuses: Vec<Child> = (0..3)
        .map(|_| {
            let mut c = as_ids(user.uid, user.gid, Groups::Init, &huge);
            c.arg("--socket")
                .arg(env.socket())
                .args(["--json", "status"])
                .env_remove("WARDEN_SOCKET")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    // Let them connect: root is served while they are (or would be) verified.
    std::thread::sleep(Duration::from_millis(500));
    root_is_served_within(env.socket(), Duration::from_secs(1));
    for child in statuses {
        let out = finish_within(
            child,
            Duration::from_secs(10),
            "status from the huge executable",
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = env.run(
        as_ids(user.uid, user.gid, Groups::Init, &huge),
        &["call", "job.start", r#"{"action": "touch"}"#],
    );
    let a = answer(&out);
    assert_eq!(error_kind(&a), Some("forbidden"), "{a}");
    assert!(
        message(&a).contains("executable too large to verify"),
        "{a}"
    );
    root_is_served_within(env.socket(), Duration::from_secs(1));
}

/// Pins: the executable guard holds only in the daemon's mount namespace: the allowed binary
/// (path and sha256) may change state from there, and the same binary run by the same user in
/// a user and mount namespace of its own (`unshare -Urm`) is refused, saying why.
#[test]
fn an_allowed_executable_in_another_mount_namespace_is_refused_changes() {
    if !warden_testkit::root_or_skip(
        "an_allowed_executable_in_another_mount_namespace_is_refused_changes",
    ) {
        return;
    }
    let user = TestUser::create(&[]);
    let digest = sha256_hex(Path::new(env!("CARGO_BIN_EXE_warden")));
    let env = Env::start(&policy(
        &user,
        &format!("{{path = \"{{dir}}/warden\", sha256 = \"{digest}\"}}"),
    ));
    let start = ["call", "job.start", r#"{"action": "touch"}"#];

    let out = env.as_user(&user, &start);
    let a = answer(&out);
    assert!(
        a.pointer("/result/job_id").is_some(),
        "the allowed binary from the daemon's namespace: {a}"
    );

    let mut unshared = as_ids(user.uid, user.gid, Groups::Init, Path::new("unshare"));
    unshared.arg("-Urm").arg(&env.warden);
    let out = env.run(unshared, &start);
    let a = answer(&out);
    assert_eq!(error_kind(&a), Some("forbidden"), "{a}");
    assert!(
        message(&a).contains("mount namespace other than the daemon's"),
        "{a}"
    );
    // Reading is not guarded: the same caller still gets its status.
    let mut unshared = as_ids(user.uid, user.gid, Groups::Init, Path::new("unshare"));
    unshared.arg("-Urm").arg(&env.warden);
    let out = env.run(unshared, &["call", "status"]);
    assert!(answer(&out).get("result").is_some());
}

/// Pins: hashing a guarded executable whose file system hangs on `open` (a FUSE server that
/// answers only the exec's open) is given up at its deadline: root is served meanwhile, and
/// the change is refused, naming the cause.
#[test]
fn a_guarded_executable_on_a_hanging_file_system_fails_closed_at_the_deadline() {
    if !warden_testkit::root_or_skip(
        "a_guarded_executable_on_a_hanging_file_system_fails_closed_at_the_deadline",
    ) {
        return;
    }
    let user = TestUser::create(&[]);
    let digest = sha256_hex(Path::new(env!("CARGO_BIN_EXE_warden")));
    let env = Env::start(&policy(
        &user,
        &format!("{{path = \"{{dir}}/fuse/exe\", sha256 = \"{digest}\"}}"),
    ));
    let mnt = env.dir.path().join("fuse");
    std::fs::create_dir(&mnt).unwrap();
    let fuse = HangingOpenFuse::mount(&mnt, &env.warden);
    let mut c = as_ids(user.uid, user.gid, Groups::Init, &fuse.exe());
    c.arg("--socket")
        .arg(env.socket())
        .args(["call", "job.start", r#"{"action": "touch"}"#])
        .env_remove("WARDEN_SOCKET")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    let t = Instant::now();
    while fuse.waiting_opens() == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "nobody opened the executable to hash it"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    root_is_served_within(env.socket(), Duration::from_secs(1));
    let out = finish_within(
        child,
        Duration::from_secs(15),
        "the start from the hanging executable",
    );
    let a = answer(&out);
    assert_eq!(error_kind(&a), Some("forbidden"), "{a}");
    assert!(
        message(&a).contains("could not be read to verify within"),
        "{a}"
    );
}
