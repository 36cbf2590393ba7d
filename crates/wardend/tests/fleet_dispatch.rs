//! Fleet requests against a real daemon, sent by real users through the kernel's credentials:
//! the `[fleet] agent_user` starting a `remote = true` action for a fleet operator (origin and
//! dispatch id in the job's record and in the audit log, the dispatch id as a lasting
//! idempotency key), and every way the host refuses one: another uid naming a fleet origin, an
//! action the host does not offer to the fleet, a claimed tier above `[fleet] max_tier`, the
//! lockdown. Also `actions.list {fleet: true}` and `policy.explain` of a fleet start. These
//! tests need root (real users); they skip with a reason otherwise, and fail instead when
//! WARDEN_REQUIRE_ROOT_TESTS=1.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::TestDaemon;
use serde_json::{Value, json};
use warden_testkit::raw::{RawClient, error_kind};
use warden_testkit::users::TestUser;

const DISPATCH: &str = "dsp_0123456789abcdef0123456789abcdef";

/// The host's policy: `greet` and `peek` are offered to the fleet, `local-only` is not, and
/// `wipe` is remote but needs admin, above this host's `max_tier`.
fn policy(agent: &str) -> String {
    format!(
        r#"
[fleet]
enabled = true
agent_user = "{agent}"
max_tier = "operator"
[[action]]
name = "greet"
argv = ["/bin/echo", "hello from the fleet"]
tier = "operator"
mutating = true
remote = true
[[action]]
name = "hold"
argv = ["/bin/sleep", "30"]
tier = "operator"
mutating = true
remote = true
[action.cancel]
grace_s = 1
[[action]]
name = "peek"
argv = ["/bin/true"]
tier = "read_only"
remote = true
[[action]]
name = "local-only"
argv = ["/bin/true"]
tier = "operator"
mutating = true
[[action]]
name = "wipe"
argv = ["/bin/true"]
tier = "admin"
mutating = true
remote = true
"#
    )
}

fn origin(tier: &str) -> Value {
    json!({
        "operator": "alice",
        "server": "hq.example",
        "dispatch_id": DISPATCH,
        "tier": tier,
    })
}

fn fleet_start(action: &str, tier: &str) -> Value {
    json!({
        "action": action,
        "params": {},
        "idempotency_key": DISPATCH,
        "fleet": origin(tier),
    })
}

/// One host with its agent and another local user, and the test binary where both can run it.
struct Host {
    daemon: TestDaemon,
    agent: TestUser,
    other: TestUser,
    bin: PathBuf,
}

fn host() -> Host {
    let agent = TestUser::create(&[]);
    let other = TestUser::create(&[]);
    let daemon = TestDaemon::start(&policy(&agent.name));
    let bin = warden_testkit::runnable_copy(&std::env::current_exe().unwrap(), daemon.dir.path());
    Host {
        daemon,
        agent,
        other,
        bin,
    }
}

/// Run as a throwaway user by [`calls_as`]: when `WARDEN_TEST_FLEET_SOCKET` is set, greets the
/// daemon there, makes each `[method, params]` call of `WARDEN_TEST_FLEET_CALLS` on that one
/// connection, and prints each answer as one line `ANSWER {json}`.
#[test]
#[ignore = "run by other tests as a throwaway user"]
fn fleet_helper() {
    let Some(sock) = std::env::var_os("WARDEN_TEST_FLEET_SOCKET") else {
        return;
    };
    let calls: Vec<(String, Value)> =
        serde_json::from_str(&std::env::var("WARDEN_TEST_FLEET_CALLS").unwrap()).unwrap();
    let mut c = RawClient::hello(Path::new(&sock));
    for (i, (method, params)) in calls.into_iter().enumerate() {
        let answer = c.call(i as u64 + 2, &method, params);
        println!("ANSWER {answer}");
    }
}

/// The answers to `calls`, made by `user` over one connection of its own.
fn calls_as(h: &Host, user: &TestUser, calls: &[(&str, Value)]) -> Vec<Value> {
    let out = user
        .command(&h.bin)
        .args(["--exact", "fleet_helper", "--ignored", "--nocapture"])
        .env("WARDEN_TEST_FLEET_SOCKET", h.daemon.socket())
        .env(
            "WARDEN_TEST_FLEET_CALLS",
            serde_json::to_string(calls).unwrap(),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let answers: Vec<Value> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("ANSWER "))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        answers.len(),
        calls.len(),
        "answers as {}: {stdout}{}",
        user.name,
        String::from_utf8_lossy(&out.stderr)
    );
    answers
}

fn call_as(h: &Host, user: &TestUser, method: &str, params: Value) -> Value {
    calls_as(h, user, &[(method, params)]).remove(0)
}

fn root(h: &Host, method: &str, params: Value) -> Value {
    RawClient::hello(h.daemon.socket()).call(2, method, params)
}

/// The audit records of `uid`, oldest first, as written.
fn audit_of(h: &Host, uid: u32) -> Vec<Value> {
    let a = root(h, "audit.query", json!({ "uid": uid, "limit": 1000 }));
    a["result"]["records"].as_array().unwrap().clone()
}

fn message(answer: &Value) -> &str {
    answer["error"]["message"].as_str().unwrap_or("")
}

/// Pins: the agent user starts a `remote = true` action for a fleet operator: the job runs,
/// its record names the origin `fleet:alice@hq.example` and the dispatch id, its requester is
/// the agent's uid (whose `job.get`, `job.logs` and `job.list` reach it though its tier is
/// none, and no job that is not its own), and the audit log's request,
/// outcome and job records carry origin and dispatch id.
#[test]
fn a_fleet_start_from_the_agent_runs_with_its_origin_and_dispatch_id() {
    if !warden_testkit::root_or_skip("a_fleet_start_from_the_agent_runs_with_its_origin") {
        return;
    }
    let h = host();
    let started = call_as(&h, &h.agent, "job.start", fleet_start("greet", "operator"));
    assert_eq!(started["result"]["existing"], false, "{started}");
    let job_id = started["result"]["job_id"].as_str().unwrap().to_owned();

    let done = root(
        &h,
        "job.wait",
        json!({ "job_id": job_id, "timeout_ms": 20000 }),
    );
    let r = &done["result"];
    assert_eq!(r["state"], "succeeded", "{done}");
    assert_eq!(r["origin"], "fleet:alice@hq.example", "{done}");
    assert_eq!(r["dispatch_id"], DISPATCH, "{done}");
    assert_eq!(r["requester"]["uid"], h.agent.uid, "{done}");

    let own = calls_as(
        &h,
        &h.agent,
        &[
            ("job.get", json!({ "job_id": job_id })),
            ("job.logs", json!({ "job_id": job_id })),
            ("job.list", json!({})),
            ("job.get", json!({ "job_id": "job_0000000000000001" })),
        ],
    );
    // Any other job (here one that does not exist) is out of its reach as for any tier none.
    assert_eq!(error_kind(&own[3]), Some("forbidden"), "{}", own[3]);
    assert_eq!(own[0]["result"]["dispatch_id"], DISPATCH, "{}", own[0]);
    let logs = own[1]["result"]["data"].as_str().unwrap();
    assert!(logs.contains("hello from the fleet"), "{}", own[1]);
    let listed = &own[2]["result"]["jobs"][0];
    assert_eq!(listed["dispatch_id"], DISPATCH, "{listed}");
    assert_eq!(listed["origin"], "fleet:alice@hq.example", "{listed}");

    let records = audit_of(&h, h.agent.uid);
    for event in ["request", "request.outcome", "job"] {
        let rec = records
            .iter()
            .find(|r| r["event"] == event)
            .unwrap_or_else(|| panic!("no {event} record: {records:?}"));
        assert_eq!(rec["origin"], "fleet:alice@hq.example", "{rec}");
        assert_eq!(rec["dispatch_id"], DISPATCH, "{rec}");
    }
}

/// Pins: the same dispatch sent again (a new connection, as after an agent restart) returns
/// the same job with `existing: true`, and no second job is made.
#[test]
fn the_same_dispatch_id_twice_gives_the_same_job() {
    if !warden_testkit::root_or_skip("the_same_dispatch_id_twice_gives_the_same_job") {
        return;
    }
    let h = host();
    let first = call_as(&h, &h.agent, "job.start", fleet_start("greet", "operator"));
    let job_id = first["result"]["job_id"].clone();
    assert!(job_id.is_string(), "{first}");
    root(
        &h,
        "job.wait",
        json!({ "job_id": job_id, "timeout_ms": 20000 }),
    );
    // The agent may leave out the key: a fleet start is keyed by its dispatch id anyway.
    let mut again = fleet_start("greet", "operator");
    again.as_object_mut().unwrap().remove("idempotency_key");
    let second = call_as(&h, &h.agent, "job.start", again);
    assert_eq!(second["result"]["job_id"], job_id, "{second}");
    assert_eq!(second["result"]["existing"], true, "{second}");
    let all = root(&h, "job.list", json!({ "scope": "all" }));
    assert_eq!(all["result"]["jobs"].as_array().unwrap().len(), 1, "{all}");
}

/// Pins: a local user other than the agent (and root too) naming a fleet origin is refused
/// `forbidden`, nothing runs, and the refusal is audited with the origin it claimed.
#[test]
fn a_user_other_than_the_agent_naming_a_fleet_origin_is_forbidden_and_audited() {
    if !warden_testkit::root_or_skip("a_user_other_than_the_agent_naming_a_fleet_origin") {
        return;
    }
    let h = host();
    let refused = call_as(&h, &h.other, "job.start", fleet_start("greet", "operator"));
    assert_eq!(error_kind(&refused), Some("forbidden"), "{refused}");
    assert!(
        message(&refused).contains("only the [fleet] agent_user may name a fleet origin"),
        "{refused}"
    );
    let by_root = root(&h, "job.start", fleet_start("greet", "admin"));
    assert_eq!(error_kind(&by_root), Some("forbidden"), "{by_root}");

    let records = audit_of(&h, h.other.uid);
    let denial = records
        .iter()
        .find(|r| r["event"] == "denied")
        .unwrap_or_else(|| panic!("no denial: {records:?}"));
    assert_eq!(denial["origin"], "fleet:alice@hq.example", "{denial}");
    assert_eq!(denial["dispatch_id"], DISPATCH, "{denial}");
    assert_eq!(denial["action"], "greet", "{denial}");
    let all = root(&h, "job.list", json!({ "scope": "all" }));
    assert!(
        all["result"]["jobs"].as_array().unwrap().is_empty(),
        "{all}"
    );
}

/// Pins: the host's policy wins over what the fleet asks: an action without `remote = true`
/// is refused `forbidden` saying the host does not offer it to the fleet; a claimed admin tier
/// is capped at `[fleet] max_tier` (operator), so an admin action is refused; both refusals
/// are audited with the origin.
#[test]
fn the_host_refuses_actions_it_does_not_offer_or_above_its_cap() {
    if !warden_testkit::root_or_skip("the_host_refuses_actions_it_does_not_offer") {
        return;
    }
    let h = host();
    let answers = calls_as(
        &h,
        &h.agent,
        &[
            ("job.start", fleet_start("local-only", "admin")),
            ("job.start", fleet_start("wipe", "admin")),
            ("job.start", fleet_start("ghost", "admin")),
        ],
    );
    assert_eq!(error_kind(&answers[0]), Some("forbidden"), "{}", answers[0]);
    assert!(
        message(&answers[0]).contains("not offered to the fleet by this host"),
        "{}",
        answers[0]
    );
    assert_eq!(error_kind(&answers[1]), Some("forbidden"), "{}", answers[1]);
    assert_eq!(
        message(&answers[1]),
        "action wipe needs tier admin; you have operator"
    );
    assert_eq!(error_kind(&answers[2]), Some("not_found"), "{}", answers[2]);

    let denials: Vec<Value> = audit_of(&h, h.agent.uid)
        .into_iter()
        .filter(|r| r["event"] == "denied")
        .collect();
    assert_eq!(denials.len(), 3, "{denials:?}");
    assert!(
        denials
            .iter()
            .all(|d| d["origin"] == "fleet:alice@hq.example" && d["dispatch_id"] == DISPATCH),
        "{denials:?}"
    );
}

/// Pins: the lockdown stops a fleet job as it stops a local one (`locked_down`).
#[test]
fn lockdown_refuses_a_fleet_job() {
    if !warden_testkit::root_or_skip("lockdown_refuses_a_fleet_job") {
        return;
    }
    let h = host();
    let engaged = root(&h, "lockdown.engage", json!({ "reason": "incident 14" }));
    assert!(engaged.get("result").is_some(), "{engaged}");
    let refused = call_as(&h, &h.agent, "job.start", fleet_start("greet", "operator"));
    assert_eq!(error_kind(&refused), Some("locked_down"), "{refused}");
    assert!(message(&refused).contains("incident 14"), "{refused}");
}

/// Pins: `actions.list {fleet: true}` shows the agent the remote actions within the cap (not
/// `local-only`, not the admin `wipe`) with their params as `describe` shows them; anyone
/// else asking for it is refused `forbidden`.
#[test]
fn actions_list_fleet_shows_remote_actions_within_the_cap() {
    if !warden_testkit::root_or_skip("actions_list_fleet_shows_remote_actions_within_the_cap") {
        return;
    }
    let h = host();
    let list = call_as(&h, &h.agent, "actions.list", json!({ "fleet": true }));
    let names: Vec<&str> = list["result"]["actions"]
        .as_array()
        .unwrap_or_else(|| panic!("{list}"))
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["greet", "hold", "peek"], "{list}");
    let described = root(&h, "actions.describe", json!({ "action": "greet" }));
    assert_eq!(list["result"]["actions"][0], described["result"]);

    let refused = call_as(&h, &h.other, "actions.list", json!({ "fleet": true }));
    assert_eq!(error_kind(&refused), Some("forbidden"), "{refused}");
    let by_root = root(&h, "actions.list", json!({ "fleet": true }));
    assert_eq!(error_kind(&by_root), Some("forbidden"), "{by_root}");
}

/// Pins: `policy.explain` with the same fleet params shows the fleet rule: the agent user,
/// the capped tier, `remote = true`.
#[test]
fn policy_explain_shows_the_fleet_rule() {
    if !warden_testkit::root_or_skip("policy_explain_shows_the_fleet_rule") {
        return;
    }
    let h = host();
    let explained = root(
        &h,
        "policy.explain",
        json!({
            "uid": h.agent.uid,
            "method": "job.start",
            "action": "greet",
            "fleet": origin("admin"),
        }),
    );
    let text = explained["result"].to_string();
    assert!(text.contains("[fleet] agent_user"), "{explained}");
    assert!(
        text.contains("the fleet principal has tier operator"),
        "{explained}"
    );
    assert!(text.contains("remote = true"), "{explained}");
}

/// Pins: the agent cancels a fleet job it started (its uid is the requester), and the job
/// ends `cancelled`.
#[test]
fn the_agent_cancels_its_fleet_job() {
    if !warden_testkit::root_or_skip("the_agent_cancels_its_fleet_job") {
        return;
    }
    let h = host();
    let started = call_as(&h, &h.agent, "job.start", fleet_start("hold", "operator"));
    let job_id = started["result"]["job_id"].clone();
    assert!(job_id.is_string(), "{started}");
    let cancelled = call_as(&h, &h.agent, "job.cancel", json!({ "job_id": job_id }));
    assert!(cancelled.get("result").is_some(), "{cancelled}");
    let done = root(
        &h,
        "job.wait",
        json!({ "job_id": job_id, "timeout_ms": 20000 }),
    );
    assert_eq!(done["result"]["state"], "cancelled", "{done}");
}

/// Run as the agent user by [`the_agents_typed_client_calls_work`]: when
/// `WARDEN_TEST_FLEET_CLIENT_SOCKET` is set, calls `Client::fleet_actions` and
/// `Client::start_fleet` twice, and prints the answers as one line `ANSWER {json}`.
#[test]
#[ignore = "run by other tests as a throwaway user"]
fn fleet_client_helper() {
    let Some(sock) = std::env::var_os("WARDEN_TEST_FLEET_CLIENT_SOCKET") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = warden_client::Client::connect(Path::new(&sock), "fleet-test")
            .await
            .unwrap();
        let listed = c.fleet_actions().await.unwrap();
        let origin: warden_proto::request::FleetOrigin =
            serde_json::from_value(origin("operator")).unwrap();
        let first = c
            .start_fleet("greet", &serde_json::Map::new(), &origin)
            .await
            .unwrap();
        let again = c
            .start_fleet("greet", &serde_json::Map::new(), &origin)
            .await
            .unwrap();
        let answer = json!({ "listed": listed, "first": first, "again": again });
        println!("ANSWER {answer}");
    });
}

/// Pins: the typed calls the agent uses (`Client::fleet_actions`, `Client::start_fleet`) speak
/// the wire shapes wardend takes: the list shows the remote actions, and a start sent twice
/// gives one job, the second time `existing: true`.
#[test]
fn the_agents_typed_client_calls_work() {
    if !warden_testkit::root_or_skip("the_agents_typed_client_calls_work") {
        return;
    }
    let h = host();
    let out = h
        .agent
        .command(&h.bin)
        .args(["--exact", "fleet_client_helper", "--ignored", "--nocapture"])
        .env("WARDEN_TEST_FLEET_CLIENT_SOCKET", h.daemon.socket())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ANSWER "))
        .unwrap_or_else(|| panic!("{stdout}{}", String::from_utf8_lossy(&out.stderr)));
    let a: Value = serde_json::from_str(line).unwrap();
    let names: Vec<&str> = a["listed"]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["greet", "hold", "peek"], "{a}");
    assert_eq!(a["first"]["existing"], false, "{a}");
    assert_eq!(a["again"]["existing"], true, "{a}");
    assert_eq!(a["first"]["job_id"], a["again"]["job_id"], "{a}");
    let job = root(&h, "job.get", json!({ "job_id": a["first"]["job_id"] }));
    assert_eq!(job["result"]["dispatch_id"], DISPATCH, "{job}");
}
