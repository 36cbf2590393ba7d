//! Jobs and real users: the identity and environment a job runs with, and who may see, follow
//! and cancel whose job. Needs root; skips with a reason otherwise (fails under
//! WARDEN_REQUIRE_ROOT_TESTS=1).

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Output;

use serde_json::{Map, Value, json};
use warden_client::Client;
use warden_proto::jobs::JobState;
use warden_testkit::users::{TestGroup, TestUser};

use common::Env;

/// The root client of `env`'s daemon.
async fn root(env: &Env) -> Client {
    Client::connect(env.socket(), "root-test").await.unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Pins: a job runs as exactly its run_as user (uid, gid, supplementary groups) with only the
/// environment its action allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_with_exactly_its_identity_and_environment() {
    if !warden_testkit::root_or_skip("a_job_runs_with_exactly_its_identity_and_environment") {
        return;
    }
    let (g1, g2) = (TestGroup::create(), TestGroup::create());
    let runner = TestUser::create(&[&g1, &g2]);
    let env = Env::start(&format!(
        r#"
[[action]]
name = "who"
argv = ["/usr/bin/id"]
tier = "read_only"
mutating = false
[action.run_as]
user = "{u}"
[[action]]
name = "envs"
argv = ["/usr/bin/env"]
tier = "read_only"
mutating = false
env_keep = ["CARGO_MANIFEST_DIR", "NOT_SET_IN_THESE_TESTS"]
[action.env]
FOO = "bar"
[action.run_as]
user = "{u}"
"#,
        u = runner.name
    ));
    let mut c = root(&env).await;
    let run = async |c: &mut Client, action: &str| {
        let id = c
            .start(action, &Map::new(), None)
            .await
            .unwrap()
            .job_id
            .to_string();
        let r = c.wait(&id, 30_000).await.unwrap();
        assert_eq!(r.state, JobState::Succeeded, "{r:?}");
        let v: Value = c.call("job.logs", &json!({"job_id": id})).await.unwrap();
        (id, v["data"].as_str().unwrap().to_owned())
    };
    let (_, id_out) = run(&mut c, "who").await;
    // uid=1001(name) gid=1001(name) groups=1001(name),2001(g1),2002(g2)
    let numbers = |field: &str| -> Vec<u32> {
        let part = id_out
            .split_whitespace()
            .find(|p| p.starts_with(field))
            .unwrap();
        part[field.len()..]
            .split(',')
            .map(|g| g[..g.find('(').unwrap_or(g.len())].parse().unwrap())
            .collect()
    };
    assert_eq!(numbers("uid="), [runner.uid], "{id_out}");
    assert_eq!(numbers("gid="), [runner.gid], "{id_out}");
    let mut groups = numbers("groups=");
    groups.sort_unstable();
    let mut want = vec![runner.gid, g1.gid, g2.gid];
    want.sort_unstable();
    assert_eq!(
        groups, want,
        "supplementary groups are exactly the user's: {id_out}"
    );

    let (job, env_out) = run(&mut c, "envs").await;
    let mut names: Vec<&str> = env_out
        .lines()
        .map(|l| l.split('=').next().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "CARGO_MANIFEST_DIR",
            "FOO",
            "PATH",
            "WARDEN_JOB_ID",
            "WARDEN_STATUS_FD"
        ]
    );
    assert!(env_out.contains("FOO=bar\n"));
    assert!(env_out.contains(&format!("WARDEN_JOB_ID={job}\n")));
    assert!(env_out.contains("WARDEN_STATUS_FD=3\n"));
}

/// Pins: another user cannot see, follow or cancel a job and gets exactly the answer a job id
/// that never existed gets; an admin can do all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_requester_and_admins_reach_a_job() {
    if !warden_testkit::root_or_skip("only_the_requester_and_admins_reach_a_job") {
        return;
    }
    let (gops, gadm) = (TestGroup::create(), TestGroup::create());
    let alice = TestUser::create(&[&gops]);
    let bob = TestUser::create(&[&gops]);
    let admin = TestUser::create(&[&gadm]);
    let env = Env::start(&format!(
        r#"
[tiers]
operator_groups = ["{ops}"]
admin_groups = ["{adm}"]
[[action]]
name = "sleepy"
argv = ["/bin/sleep", "300"]
tier = "operator"
mutating = false
"#,
        ops = gops.name,
        adm = gadm.name
    ));
    let started = env.as_user(&alice, &["run", "sleepy", "--detach"]);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let id = stdout(&started).trim().to_owned();
    assert!(id.starts_with("job_"), "{id}");
    let never = "job_0000000000000000";

    // One raw answer with its per-request parts blanked.
    let answer = |user: &TestUser, method: &str, job: &str, extra: &str| -> String {
        let params = format!("{{\"job_id\":\"{job}\"{extra}}}");
        let out = env.as_user(user, &["call", method, &params]);
        let mut v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["id"] = Value::Null;
        v["error"]["data"]["correlation_id"] = Value::Null;
        serde_json::to_string(&v).unwrap()
    };
    for (method, extra) in [
        ("job.get", ""),
        ("job.logs", ""),
        ("job.logs", ",\"follow\":true"),
        ("job.watch", ""),
        ("job.wait", ",\"timeout_ms\":10"),
        ("job.cancel", ""),
    ] {
        let theirs = answer(&bob, method, &id, extra);
        let nobodys = answer(&bob, method, never, extra);
        assert_eq!(
            theirs, nobodys,
            "{method} tells bob that alice's job exists"
        );
        assert!(theirs.contains("\"kind\":\"not_found\""), "{theirs}");
        for word in ["owner", "permission", "denied", "alice", "exists"] {
            assert!(
                !theirs.to_lowercase().contains(word),
                "{method} answer mentions {word}: {theirs}"
            );
        }
    }
    // Bob's listing does not show it; an operator's view of everyone's does, metadata only.
    let mine: Value =
        serde_json::from_slice(&env.as_user(&bob, &["--json", "jobs"]).stdout).unwrap();
    assert_eq!(mine["jobs"].as_array().unwrap().len(), 0);
    let all: Value =
        serde_json::from_slice(&env.as_user(&bob, &["--json", "jobs", "--all"]).stdout).unwrap();
    assert_eq!(all["jobs"][0]["job_id"], id.as_str());
    assert!(all["jobs"][0].get("params").is_none());

    // Alice's job is still running after bob's cancel; alice and an admin can see it.
    let seen: Value =
        serde_json::from_slice(&env.as_user(&alice, &["--json", "job", &id]).stdout).unwrap();
    assert_eq!(seen["state"], "running");
    assert_eq!(seen["requester"]["uid"], alice.uid);
    let out = env.as_user(&admin, &["--json", "job", &id]);
    assert_eq!(
        out.status.code(),
        Some(10),
        "a running job has not ended: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env.as_user(&admin, &["--json", "cancel", &id]);
    let cancelled: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cancelled["state"], "cancelled");
}

/// Pins: `warden run ACTION key=value` of an action the daemon hides from the caller shows the
/// daemon's own refusal of job.start with its exit status (3): `forbidden` naming an ops toggle
/// switched off, `locked_down` with the lockdown's reason, never `not_found` (1); and starts
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_shows_the_daemons_real_refusal_of_a_hidden_action() {
    if !warden_testkit::root_or_skip("run_shows_the_daemons_real_refusal_of_a_hidden_action") {
        return;
    }
    let gops = TestGroup::create();
    let user = TestUser::create(&[&gops]);
    let env = Env::start(&format!(
        r#"
[tiers]
operator_groups = ["{ops}"]
[ops]
storage = false
[[action]]
name = "wipe"
argv = ["/bin/true", "{{disk}}"]
tier = "operator"
mutating = true
ops = ["storage"]
[action.params.disk]
type = "string"
max_len = 16
[[action]]
name = "touch"
argv = ["/bin/true", "{{n}}"]
tier = "operator"
mutating = true
[action.params.n]
type = "int"
min = 0
max = 9
"#,
        ops = gops.name
    ));
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();
    let error = |o: &Output| -> Value {
        let v: Value =
            serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)));
        v["error"].clone()
    };

    // An ops toggle switched off.
    let out = env.as_user(&user, &["run", "wipe", "disk=sda"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with(
            "warden: forbidden: action wipe needs ops `storage`, which is switched off"
        ),
        "{}",
        stderr(&out)
    );
    let out = env.as_user(&user, &["--json", "run", "wipe", "disk=sda"]);
    assert_eq!(out.status.code(), Some(3));
    let e = error(&out);
    assert_eq!(e["kind"], "forbidden", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("switched off"),
        "{e}"
    );
    assert!(e["correlation_id"].is_string(), "{e}");

    // A lockdown, engaged by root: the refusal names its reason.
    let mut c = root(&env).await;
    c.lockdown_engage("incident 42").await.unwrap();
    let out = env.as_user(&user, &["run", "touch", "n=1"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("warden: locked_down: action touch changes state")
            && stderr(&out).contains("incident 42"),
        "{}",
        stderr(&out)
    );
    let out = env.as_user(&user, &["--json", "run", "touch", "n=1"]);
    assert_eq!(out.status.code(), Some(3));
    let e = error(&out);
    assert_eq!(e["kind"], "locked_down", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("incident 42"),
        "{e}"
    );
    let jobs = c.jobs(true, None, None).await.unwrap();
    assert!(
        jobs.jobs.is_empty(),
        "a refused run started {:?}",
        jobs.jobs
    );

    // Released, the same command runs; an action nobody declared is still `not_found`.
    c.lockdown_release().await.unwrap();
    let out = env.as_user(&user, &["run", "touch", "n=1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = env.as_user(&user, &["run", "nothing", "x=1"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("warden: not_found: no action `nothing`"),
        "{}",
        stderr(&out)
    );
}
