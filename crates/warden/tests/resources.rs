//! Owned resources with real users through the real socket: who owns what (from the kernel,
//! never from the request), what a stranger can learn, what a delete can reach, and that disk and
//! registry agree after every failure. Needs root; skips with a reason otherwise (fails under
//! WARDEN_REQUIRE_ROOT_TESTS=1).

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::{Value, json};
use warden_testkit::raw::RawClient;
use warden_testkit::users::{TestGroup, TestUser};
use wardend::resources::{Fault, inject_fault};

use common::Env;

const KINDS: &str = r#"
[ops]
storage = true
[[action]]
name = "store"
argv = ["/usr/bin/touch", "{path}/.stored"]
ops = ["storage"]
mutating = true
params.path = { type = "string", max_len = 4096 }
[[resource]]
kind = "stored"
base_dir = "{dir}/stored"
max_per_uid = 2
tier = "read_only"
on_create = "store"
[[action]]
name = "provision"
argv = ["/usr/bin/test", "-d", "{path}"]
mutating = true
params.path = { type = "string", max_len = 4096 }
[[action]]
name = "refuse"
argv = ["/bin/false", "{name}"]
mutating = true
params.name = { type = "string" }
[[resource]]
kind = "workspace"
base_dir = "{dir}/ws"
mode = "0750"
max_per_uid = 2
tier = "read_only"
[[resource]]
kind = "share"
base_dir = "{dir}/shares"
max_per_uid = 5
tier = "read_only"
on_create = "provision"
on_delete = "provision"
[[resource]]
kind = "broken"
base_dir = "{dir}/broken"
max_per_uid = 5
tier = "read_only"
on_create = "refuse"
"#;

/// A daemon whose users in `group` are read_only, with the kinds above.
fn start(group: &TestGroup) -> Env {
    Env::start(&format!(
        "[tiers]\nread_only_groups = [\"{}\"]\n{KINDS}",
        group.name
    ))
}

/// What these tests ask of their daemon.
trait Resources {
    fn call_raw(&self, user: &TestUser, method: &str, params: &Value) -> String;
    fn call(&self, user: &TestUser, method: &str, params: &Value) -> Value;
    fn root(&self) -> RawClient;
    fn path(&self, rel: &str) -> PathBuf;
    fn registry(&self) -> Vec<u8>;
    fn registered(&self) -> Vec<(String, String, u64)>;
    fn on_disk(&self, base: &str) -> Vec<String>;
}

impl Resources for Env {
    /// `method` with `params` as `user`: the answer's bytes as the daemon sent them.
    fn call_raw(&self, user: &TestUser, method: &str, params: &Value) -> String {
        let out = self.as_user(user, &["call", method, &params.to_string()]);
        String::from_utf8(out.stdout).unwrap().trim_end().to_owned()
    }

    /// [`Resources::call_raw`], parsed.
    fn call(&self, user: &TestUser, method: &str, params: &Value) -> Value {
        let raw = self.call_raw(user, method, params);
        serde_json::from_str(&raw).unwrap_or_else(|_| panic!("{method}: {raw}"))
    }

    fn root(&self) -> RawClient {
        RawClient::hello(self.daemon.socket())
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn registry(&self) -> Vec<u8> {
        std::fs::read(self.path("state/resources.json")).unwrap_or_default()
    }

    /// The (kind, name, owner_uid) of every registered resource.
    fn registered(&self) -> Vec<(String, String, u64)> {
        let bytes = self.registry();
        if bytes.is_empty() {
            return Vec::new();
        }
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        v["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["kind"].as_str().unwrap().to_owned(),
                    e["name"].as_str().unwrap().to_owned(),
                    e["owner_uid"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    /// Every name in a kind's base directory, work names included.
    fn on_disk(&self, base: &str) -> Vec<String> {
        match std::fs::read_dir(self.path(base)) {
            Ok(rd) => {
                let mut v: Vec<String> = rd
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect();
                v.sort();
                v
            }
            Err(_) => Vec::new(),
        }
    }
}

fn kind(answer: &Value) -> &str {
    answer["error"]["data"]["kind"].as_str().unwrap_or("")
}

fn message(answer: &Value) -> &str {
    answer["error"]["message"].as_str().unwrap_or("")
}

/// An answer's bytes with its per-request parts (the JSON-RPC `id` and the correlation id)
/// replaced, everything else (field order included) as sent.
fn blanked(raw: &str) -> String {
    let v: Value = serde_json::from_str(raw).unwrap();
    let mut out = raw.replacen(&format!("\"id\":{}", v["id"]), "\"id\":ID", 1);
    if let Some(cid) = v["error"]["data"]["correlation_id"].as_str() {
        out = out.replacen(cid, "CID", 1);
    }
    out
}

/// Pins: the owner is the caller as the kernel reports it, whatever owner the request names; the
/// directory has that owner, their primary group and the kind's mode; the audit record says the
/// named owner was ignored; and a stranger learns nothing from get or delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_comes_from_the_kernel_and_strangers_learn_nothing() {
    if !warden_testkit::root_or_skip("the_owner_comes_from_the_kernel_and_strangers_learn_nothing")
    {
        return;
    }
    let users = TestGroup::create();
    let alice = TestUser::create(&[&users]);
    let bob = TestUser::create(&[&users]);
    let env = start(&users);

    let made = env.call(
        &alice,
        "resource.create",
        &json!({"kind": "workspace", "name": "ws1", "owner": bob.name}),
    );
    assert_eq!(made["result"]["owner_uid"], alice.uid, "{made}");
    assert_eq!(made["result"]["owner"], alice.name.as_str());
    let md = std::fs::symlink_metadata(env.path("ws/ws1")).unwrap();
    assert!(md.is_dir());
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (alice.uid, alice.gid, 0o750)
    );
    let base = std::fs::symlink_metadata(env.path("ws")).unwrap();
    assert_eq!((base.uid(), base.mode() & 0o7777), (0, 0o755));
    let registry = std::fs::symlink_metadata(env.path("state/resources.json")).unwrap();
    assert_eq!((registry.uid(), registry.mode() & 0o7777), (0, 0o600));
    assert_eq!(
        env.registered(),
        vec![("workspace".into(), "ws1".into(), u64::from(alice.uid))]
    );

    // The audit trail names the real owner and keeps the one that was asked for.
    let mut root = env.root();
    let records = root.call(2, "audit.query", json!({"uid": alice.uid, "limit": 50}));
    let records = records["result"]["records"].as_array().unwrap().clone();
    let asked = records
        .iter()
        .find(|r| r["event"] == "request" && r["method"] == "resource.create")
        .unwrap_or_else(|| panic!("no request record in {records:?}"));
    assert_eq!(asked["params"]["owner_ignored"], bob.name.as_str());
    let outcome = records
        .iter()
        .find(|r| r["event"] == "request.outcome" && r["method"] == "resource.create")
        .unwrap();
    assert_eq!(outcome["params"]["owner_uid"], alice.uid);
    assert_eq!(outcome["outcome"], "ok");

    // Bob's delete and get of alice's ws1 answer exactly as for a name nobody has.
    for method in ["resource.delete", "resource.get"] {
        let theirs = env.call_raw(&bob, method, &json!({"kind": "workspace", "name": "ws1"}));
        let nobodys = env.call_raw(
            &bob,
            method,
            &json!({"kind": "workspace", "name": "no-such-name"}),
        );
        let parsed: Value = serde_json::from_str(&theirs).unwrap();
        assert_eq!(kind(&parsed), "not_found", "{theirs}");
        let (theirs, nobodys) = (blanked(&theirs), blanked(&nobodys));
        assert!(
            theirs.contains("\"id\":ID") && theirs.contains("CID"),
            "{theirs}"
        );
        assert_eq!(theirs, nobodys, "{method} tells bob that ws1 exists");
        for word in [
            "owner",
            "permission",
            "denied",
            "exists",
            "someone",
            "ws1",
            alice.name.as_str(),
        ] {
            assert!(
                !theirs.to_lowercase().contains(word),
                "{method} answer mentions {word}: {theirs}"
            );
        }
    }
    let listed: Value =
        serde_json::from_slice(&env.as_user(&bob, &["--json", "resource", "list"]).stdout).unwrap();
    assert_eq!(listed["resources"], json!([]));
    let md = std::fs::symlink_metadata(env.path("ws/ws1")).unwrap();
    assert_eq!(
        md.uid(),
        alice.uid,
        "bob's delete touched alice's directory"
    );
    let mine: Value =
        serde_json::from_slice(&env.as_user(&alice, &["--json", "resource", "list"]).stdout)
            .unwrap();
    assert_eq!(mine["resources"][0]["name"], "ws1");
}

/// Pins: the owner's delete removes the directory and the entry, and the name can be made again;
/// a symlink planted inside is removed as a link while what it points at survives; root can
/// make one for a user and is refused, with the exact message, for a uid without an account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_deletes_without_reaching_outside() {
    if !warden_testkit::root_or_skip("the_owner_deletes_without_reaching_outside") {
        return;
    }
    let users = TestGroup::create();
    let alice = TestUser::create(&[&users]);
    let env = start(&users);
    let outside = env.path("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("keep"), "precious").unwrap();

    let ok = |o: Output| {
        assert!(
            o.status.success(),
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    };
    ok(env.as_user(&alice, &["resource", "create", "workspace", "ws1"]));
    let ws1 = env.path("ws/ws1");
    // Alice fills her directory, with links out of it, as herself.
    let run_as = |program: &str, args: &[&str]| {
        let o = alice
            .command(Path::new(program))
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{program} {args:?}: {o:?}");
    };
    run_as("/bin/mkdir", &["-p", ws1.join("a/b/c").to_str().unwrap()]);
    run_as(
        "/bin/ln",
        &[
            "-s",
            outside.join("keep").to_str().unwrap(),
            ws1.join("a/to-file").to_str().unwrap(),
        ],
    );
    run_as(
        "/bin/ln",
        &[
            "-s",
            outside.to_str().unwrap(),
            ws1.join("a/b/to-dir").to_str().unwrap(),
        ],
    );
    run_as("/usr/bin/touch", &[ws1.join("a/b/c/f").to_str().unwrap()]);
    ok(env.as_user(&alice, &["resource", "delete", "workspace", "ws1"]));
    assert!(!ws1.exists());
    assert_eq!(
        std::fs::read_to_string(outside.join("keep")).unwrap(),
        "precious"
    );
    assert!(outside.is_dir());
    assert!(env.registered().is_empty());
    assert!(env.on_disk("ws").is_empty(), "{:?}", env.on_disk("ws"));
    // create → delete → create.
    ok(env.as_user(&alice, &["resource", "create", "workspace", "ws1"]));
    assert_eq!(std::fs::symlink_metadata(&ws1).unwrap().uid(), alice.uid);

    // Root makes one for alice, by name; and for a uid nobody has, gets the exact message.
    let mut root = env.root();
    let made = root.call(
        2,
        "resource.create",
        json!({"kind": "workspace", "name": "given", "owner": alice.name}),
    );
    assert_eq!(made["result"]["owner_uid"], alice.uid, "{made}");
    assert_eq!(
        std::fs::symlink_metadata(env.path("ws/given"))
            .unwrap()
            .uid(),
        alice.uid
    );
    let ghost: u32 = 3_999_999_123;
    let refused = root.call(
        3,
        "resource.create",
        json!({"kind": "workspace", "name": "ghost", "owner": ghost}),
    );
    assert_eq!(kind(&refused), "bad_request", "{refused}");
    assert_eq!(
        message(&refused),
        format!("uid {ghost} has no passwd entry")
    );
    assert!(!env.path("ws/ghost").exists());
    // An admin may delete anyone's.
    let gone = root.call(
        4,
        "resource.delete",
        json!({"kind": "workspace", "name": "given"}),
    );
    assert_eq!(gone["result"]["name"], "given", "{gone}");
}

/// Pins: the per-owner quota, name validation (traversal, slashes, length, look-alike letters),
/// and a name taken by someone else, each answered without changing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_and_names_are_enforced_without_side_effects() {
    if !warden_testkit::root_or_skip("quotas_and_names_are_enforced_without_side_effects") {
        return;
    }
    let users = TestGroup::create();
    let alice = TestUser::create(&[&users]);
    let bob = TestUser::create(&[&users]);
    let env = start(&users);
    let create = |user: &TestUser, name: &str| {
        env.call(
            user,
            "resource.create",
            &json!({"kind": "workspace", "name": name}),
        )
    };
    assert!(create(&alice, "one").get("result").is_some());
    assert!(create(&alice, "two").get("result").is_some());
    let third = create(&alice, "three");
    assert_eq!(kind(&third), "conflict", "{third}");
    assert!(message(&third).contains("max_per_uid"), "{third}");
    let long = "a".repeat(200);
    for bad in [
        "..",
        ".",
        "a/b",
        "../etc",
        long.as_str(),
        "wѕ1",
        ".hidden",
        "",
    ] {
        let refused = create(&bob, bad);
        assert_eq!(kind(&refused), "bad_request", "{bad:?}: {refused}");
    }
    let taken = create(&bob, "one");
    assert_eq!(kind(&taken), "conflict", "{taken}");
    assert_eq!(message(&taken), "resource workspace/one already exists");
    let again = create(&alice, "one");
    assert_eq!(message(&again), "resource workspace/one already exists");
    assert_eq!(env.on_disk("ws"), vec!["one".to_owned(), "two".to_owned()]);
    assert_eq!(env.registered().len(), 2);
    assert!(!env.path("etc").exists());
}

/// Pins: when handing the directory over or saving the registry fails, nothing stays on disk and
/// the registry is byte for byte what it was; and the same create then succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_step_leaves_disk_and_registry_as_they_were() {
    if !warden_testkit::root_or_skip("a_failed_step_leaves_disk_and_registry_as_they_were") {
        return;
    }
    let users = TestGroup::create();
    let alice = TestUser::create(&[&users]);
    let env = start(&users);
    let create = |name: &str| {
        env.call(
            &alice,
            "resource.create",
            &json!({"kind": "workspace", "name": name}),
        )
    };
    assert!(create("first").get("result").is_some());
    let before = env.registry();

    let name = format!("faulty{}", warden_testkit::random_hex(3));
    inject_fault(&name, Fault::Chown);
    let failed = create(&name);
    assert_eq!(kind(&failed), "internal", "{failed}");
    assert_eq!(env.on_disk("ws"), vec!["first".to_owned()]);
    assert_eq!(env.registry(), before);

    // A directory where the registry's temporary file goes: the save itself fails.
    let blocker = env.path("state/.resources.json.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let failed = create("blocked");
    assert_eq!(kind(&failed), "internal", "{failed}");
    assert_eq!(env.on_disk("ws"), vec!["first".to_owned()]);
    assert_eq!(env.registry(), before);
    std::fs::remove_dir(&blocker).unwrap();

    // Each fault fires once: both creates now go through (within the quota of two).
    assert!(create("blocked").get("result").is_some());
    let freed = env.call(
        &alice,
        "resource.delete",
        &json!({"kind": "workspace", "name": "first"}),
    );
    assert!(freed.get("result").is_some(), "{freed}");
    assert!(create(&name).get("result").is_some());
}

/// Pins: two users creating the same name at the same moment: exactly one gets it, the other
/// gets `conflict`, and the directory belongs to the winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_one_name_have_one_winner() {
    if !warden_testkit::root_or_skip("concurrent_creates_of_one_name_have_one_winner") {
        return;
    }
    let users = TestGroup::create();
    let alice = TestUser::create(&[&users]);
    let bob = TestUser::create(&[&users]);
    let env = start(&users);
    for round in 0..5 {
        let name = format!("race{round}");
        let params = json!({"kind": "share", "name": name}).to_string();
        let spawn = |user: &TestUser| {
            let mut cmd = user.command(&env.warden);
            cmd.arg("--socket")
                .arg(env.daemon.socket())
                .args(["call", "resource.create", &params])
                .env_remove("WARDEN_SOCKET")
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (spawn(&alice), spawn(&bob));
        let answers: Vec<Value> = [a, b]
            .into_iter()
            .map(|c| serde_json::from_slice(&c.wait_with_output().unwrap().stdout).unwrap())
            .collect();
        let winners: Vec<&Value> = answers
            .iter()
            .filter(|a| a.get("result").is_some())
            .collect();
        assert_eq!(winners.len(), 1, "{answers:?}");
        let loser = answers.iter().find(|a| a.get("error").is_some()).unwrap();
        assert_eq!(kind(loser), "conflict", "{loser}");
        let owner = winners[0]["result"]["owner_uid"].as_u64().unwrap();
        let md = std::fs::symlink_metadata(env.path(&format!("shares/{name}"))).unwrap();
        assert_eq!(u64::from(md.uid()), owner);
    }
    assert_eq!(env.registered().len(), 5);
}

/// Pins: a kind's on_create runs after the directory has its name (the hook sees it) and its job
/// is named in the answer; a failing on_create undoes the whole create; on_delete runs first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_run_with_the_resource_and_a_failed_one_undoes_the_create() {
    if !warden_testkit::root_or_skip(
        "hooks_run_with_the_resource_and_a_failed_one_undoes_the_create",
    ) {
        return;
    }
    let users = TestGroup::create();
    let alice = TestUser::create(&[&users]);
    let env = start(&users);
    let made = env.call(
        &alice,
        "resource.create",
        &json!({"kind": "share", "name": "docs"}),
    );
    let job = made["result"]["hook_job"]
        .as_str()
        .unwrap_or_else(|| panic!("{made}"));
    let record: Value =
        serde_json::from_slice(&env.as_user(&alice, &["--json", "job", job]).stdout).unwrap();
    assert_eq!(record["state"], "succeeded", "{record}");
    assert_eq!(record["action"], "provision");
    assert_eq!(
        record["params"]["path"],
        env.path("shares/docs").to_str().unwrap()
    );

    let failed = env.call(
        &alice,
        "resource.create",
        &json!({"kind": "broken", "name": "never"}),
    );
    assert_eq!(kind(&failed), "internal", "{failed}");
    assert!(
        message(&failed).contains("on_create action `refuse` ended failed"),
        "{failed}"
    );
    assert!(
        env.on_disk("broken").is_empty(),
        "{:?}",
        env.on_disk("broken")
    );
    assert_eq!(env.registered().len(), 1);

    let gone = env.call(
        &alice,
        "resource.delete",
        &json!({"kind": "share", "name": "docs"}),
    );
    assert!(gone["result"]["hook_job"].is_string(), "{gone}");
    assert!(env.on_disk("shares").is_empty());
}

/// Pins: creates and deletes are events on the `resource` topic, and a subscriber below operator
/// sees only its own resources' events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_events_reach_their_owner_only() {
    use std::io::BufRead;
    if !warden_testkit::root_or_skip("resource_events_reach_their_owner_only") {
        return;
    }
    let users = TestGroup::create();
    let alice = TestUser::create(&[&users]);
    let bob = TestUser::create(&[&users]);
    let env = start(&users);
    let mut watcher = bob
        .command(&env.warden)
        .arg("--socket")
        .arg(env.daemon.socket())
        .args(["--json", "events", "--topic", "resource"])
        .env_remove("WARDEN_SOCKET")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = watcher.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let patience = std::time::Duration::from_secs(20);
    let first = rx.recv_timeout(patience).unwrap();
    assert!(first.contains("subscribed"), "{first}");
    let create = |user: &TestUser, name: &str| {
        let made = env.call(
            user,
            "resource.create",
            &json!({"kind": "workspace", "name": name}),
        );
        assert!(made.get("result").is_some(), "{made}");
    };
    create(&alice, "alices");
    create(&bob, "bobs");
    let seen = rx.recv_timeout(patience).unwrap();
    let _ = watcher.kill();
    let _ = watcher.wait();
    let event: Value = serde_json::from_str(&seen).unwrap();
    assert_eq!(event["topic"], "resource", "{seen}");
    assert_eq!(
        event["event"]["name"], "bobs",
        "bob saw another's event first: {seen}"
    );
    assert_eq!(event["event"]["change"], "created");
    assert_eq!(event["event"]["owner_uid"], bob.uid);
}

/// Kinds whose hooks take a while: one fails after half a second, one runs until stopped, one
/// passes its commit point and then holds on past what a stop waits for it.
const SLOW_KINDS: &str = r#"
[jobs]
shutdown_grace_s = 7
[[action]]
name = "commit_and_hold"
argv = ["/bin/sh", "-c", "echo commit >&\"$WARDEN_STATUS_FD\"; exec sleep 60"]
mutating = true
[[action]]
name = "refuse_late"
argv = ["/bin/sh", "-c", "sleep 0.5; exit 1"]
mutating = true
[[action]]
name = "stall"
argv = ["/bin/sleep", "60"]
mutating = true
[[resource]]
kind = "late"
base_dir = "{dir}/late"
max_per_uid = 5
tier = "read_only"
on_create = "refuse_late"
[[resource]]
kind = "held"
base_dir = "{dir}/held"
max_per_uid = 5
tier = "read_only"
on_create = "commit_and_hold"
[[resource]]
kind = "stalled"
base_dir = "{dir}/stalled"
max_per_uid = 5
tier = "read_only"
on_create = "stall"
"#;

/// Waits (polling, at most 20 s) until `done` holds; fails naming `what` otherwise.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "never saw {what}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// As root, asks for a `kind` resource named `name` and returns once the daemon has made it
/// (its hook then runs), without reading the answer.
fn create_with_hook(env: &Env, kind: &str, name: &str) -> RawClient {
    let mut c = env.root();
    c.send(1, "resource.create", json!({"kind": kind, "name": name}));
    wait_until("the create registered while its hook runs", || {
        env.registered().iter().any(|(_, n, _)| n == name)
    });
    // Registered comes before the hook's job is started: a stop in between would find no job.
    wait_until("the hook's job started", || {
        let jobs = env.root().call(1, "job.list", json!({"scope": "all"}));
        jobs["result"]["jobs"]
            .as_array()
            .is_some_and(|j| j.iter().any(|j| j["state"] != "queued"))
    });
    c
}

/// The `request.outcome` records in the audit log of `dir` for resources named `name`.
fn outcomes(dir: &Path, name: &str) -> Vec<Value> {
    std::fs::read_to_string(dir.join("state/audit/audit.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["event"] == "request.outcome" && r["params"]["name"] == name)
        .collect()
}

/// Pins: a create whose caller hangs up while its on_create hook runs is still run to its end:
/// the hook's failure undoes it (nothing half made stays behind) and its outcome is audited.
#[test]
fn a_create_whose_caller_left_still_runs_to_its_end() {
    if !warden_testkit::root_or_skip("a_create_whose_caller_left_still_runs_to_its_end") {
        return;
    }
    let env = Env::start(SLOW_KINDS);
    drop(create_with_hook(&env, "late", "left"));
    wait_until("the failed hook undoing the create", || {
        env.registered().is_empty() && env.on_disk("late").is_empty()
    });
    wait_until("the create's outcome in the audit log", || {
        !outcomes(env.dir.path(), "left").is_empty()
    });
    let outcome = &outcomes(env.dir.path(), "left")[0];
    assert_eq!(outcome["outcome"], "internal", "{outcome}");
    assert!(
        outcome["reason"]
            .as_str()
            .unwrap()
            .contains("on_create action `refuse_late` ended failed"),
        "{outcome}"
    );
}

/// Pins: a create still waiting on its hook when the daemon stops is answered with what became
/// of it (the stop cancelled the hook, so the create was undone), not with a bare `unavailable`
/// while a half-made resource stays behind.
#[test]
fn a_create_running_when_the_daemon_stops_is_answered_with_what_became_of_it() {
    if !warden_testkit::root_or_skip(
        "a_create_running_when_the_daemon_stops_is_answered_with_what_became_of_it",
    ) {
        return;
    }
    let env = Env::start(SLOW_KINDS);
    let mut c = create_with_hook(&env, "stalled", "cut");
    let registry = env.path("state/resources.json");
    let base = env.path("stalled");
    let Env { daemon, dir, .. } = env;
    daemon.stop();

    let answer = c.recv();
    assert_eq!(answer["id"], 1, "{answer}");
    assert_eq!(kind(&answer), "internal", "{answer}");
    assert!(
        message(&answer).contains("on_create action `stall` ended cancelled"),
        "{answer}"
    );
    assert!(c.is_closed());
    let left: Value = serde_json::from_slice(&std::fs::read(&registry).unwrap()).unwrap();
    assert_eq!(left["resources"], json!([]), "{left}");
    assert_eq!(std::fs::read_dir(&base).unwrap().count(), 0);
    assert_eq!(outcomes(dir.path(), "cut")[0]["outcome"], "internal");
}

/// Pins: a create that is still running when the daemon stops and outlasts the five seconds it
/// gets (its hook is past its commit point, so the stop lets the hook go on) is answered
/// `unavailable`, and its audit record's outcome says it did not finish and may have left
/// something behind: no accepted request is left without an outcome.
#[test]
fn a_create_cut_off_by_the_stop_is_audited_as_unfinished() {
    if !warden_testkit::root_or_skip("a_create_cut_off_by_the_stop_is_audited_as_unfinished") {
        return;
    }
    let env = Env::start(SLOW_KINDS);
    let mut c = create_with_hook(&env, "held", "kept");
    let mut watcher = env.root();
    wait_until("the hook past its commit point", || {
        let list = watcher.call(2, "job.list", json!({}));
        let Some(id) = list["result"]["jobs"][0]["job_id"].as_str() else {
            return false;
        };
        watcher.call(3, "job.get", json!({"job_id": id}))["result"]["committed"] == true
    });
    drop(watcher);
    let Env { daemon, dir, .. } = env;
    daemon.stop();

    let answer = c.recv();
    assert_eq!(answer["id"], 1, "{answer}");
    assert_eq!(kind(&answer), "unavailable", "{answer}");
    let outcome = &outcomes(dir.path(), "kept")[0];
    assert_eq!(outcome["outcome"], "unfinished", "{outcome}");
    assert!(
        outcome["reason"].as_str().unwrap().contains("may remain"),
        "{outcome}"
    );
}

/// Pins: a kind's hook meets its action's brakes: with the hook's ops toggle off, a user's
/// create is refused naming the toggle, before anything is made or any hook runs; under a
/// lockdown likewise; switched on again, the same create runs its hook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_is_refused_when_its_ops_are_off_or_warden_is_locked_down() {
    if !warden_testkit::root_or_skip(
        "a_hook_is_refused_when_its_ops_are_off_or_warden_is_locked_down",
    ) {
        return;
    }
    let users = TestGroup::create();
    let alice = TestUser::create(&[&users]);
    let env = start(&users);
    let mut root = env.root();
    let off = root.call(
        1,
        "ops.set",
        json!({"name": "storage", "enabled": false, "reason": "disk swap"}),
    );
    assert!(off["result"].is_object(), "{off}");
    let refused = env.call(
        &alice,
        "resource.create",
        &json!({"kind": "stored", "name": "data"}),
    );
    assert_eq!(kind(&refused), "forbidden", "{refused}");
    assert!(message(&refused).contains("ops `storage`"), "{refused}");
    assert!(
        env.on_disk("stored").is_empty(),
        "{:?}",
        env.on_disk("stored")
    );
    assert!(env.registered().is_empty());

    root.call(
        2,
        "ops.set",
        json!({"name": "storage", "enabled": true, "reason": "done"}),
    );
    root.call(3, "lockdown.engage", json!({"reason": "incident 7"}));
    let locked = env.call(
        &alice,
        "resource.create",
        &json!({"kind": "stored", "name": "data"}),
    );
    assert_eq!(kind(&locked), "locked_down", "{locked}");
    assert!(env.on_disk("stored").is_empty());
    root.call(4, "lockdown.release", json!({}));

    let made = env.call(
        &alice,
        "resource.create",
        &json!({"kind": "stored", "name": "data"}),
    );
    assert!(made["result"]["hook_job"].is_string(), "{made}");
    assert!(env.path("stored/data/.stored").exists());
}

/// Pins: an action that is a kind's hook cannot be started directly, not even by root with
/// `owner`, `uid` or `path` of its choosing: the answer is exactly that of an undeclared action,
/// and the hook does not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_action_cannot_be_started_directly() {
    if !warden_testkit::root_or_skip("a_hook_action_cannot_be_started_directly") {
        return;
    }
    let users = TestGroup::create();
    let alice = TestUser::create(&[&users]);
    let env = start(&users);
    let target = env.path("planted");
    std::fs::create_dir(&target).unwrap();
    let mut root = env.root();
    let direct = root.call(
        1,
        "job.start",
        json!({"action": "store", "params": {"path": target.to_str().unwrap()}}),
    );
    assert_eq!(kind(&direct), "not_found", "{direct}");
    assert_eq!(message(&direct), "no action `store`");
    let described = root.call(2, "actions.describe", json!({"action": "store"}));
    assert_eq!(kind(&described), "not_found", "{described}");
    let listed = root.call(3, "actions.list", json!({}));
    assert!(!listed.to_string().contains("\"store\""), "{listed}");
    let by_user = env.call(
        &alice,
        "job.start",
        &json!({"action": "provision", "params": {"path": "/etc"}}),
    );
    assert_eq!(kind(&by_user), "not_found", "{by_user}");
    assert!(!target.join(".stored").exists());
}
