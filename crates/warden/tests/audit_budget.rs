//! What one real, unprivileged user can make the daemon record: its requests that change
//! something are budgeted per minute (`[audit] uid_changes_per_minute`); past the budget they are
//! refused `rate_limited`, while root and other uids go on.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Output;

use serde_json::{Value, json};
use warden_testkit::raw::RawClient;
use warden_testkit::users::{TestGroup, TestUser};

use common::Env;

/// Answers of `warden call --repeat`: (successes, rate_limited answers, other answers).
fn tally(out: &Output) -> (usize, Vec<Value>, Vec<Value>) {
    let (mut ok, mut limited, mut other) = (0, Vec::new(), Vec::new());
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        let v: Value = serde_json::from_str(line).unwrap();
        if v.get("result").is_some() {
            ok += 1;
        } else if v.pointer("/error/data/kind") == Some(&Value::from("rate_limited")) {
            limited.push(v);
        } else {
            other.push(v);
        }
    }
    (ok, limited, other)
}

/// Pins: a read_only user starting jobs as fast as the request limits allow gets
/// `uid_changes_per_minute` of them a minute, then `rate_limited` with a retry time (recorded
/// as denials); another user and root are served in full, so the records one uid can cause
/// per minute are bounded.
#[test]
fn recorded_requests_of_one_uid_are_budgeted_per_minute() {
    if !warden_testkit::root_or_skip("recorded_requests_of_one_uid_are_budgeted_per_minute") {
        return;
    }
    let group = TestGroup::create();
    let env = Env::start(&format!(
        "[tiers]\nread_only_groups = [\"{}\"]\n\
         [limits]\nrequests_per_second = 100000\nburst = 100000\n\
         uid_requests_per_second = 100000\nuid_burst = 100000\n\
         [audit]\nuid_changes_per_minute = 5\n\
         [[action]]\nname = \"noop\"\nargv = [\"/bin/true\"]\ntier = \"read_only\"\n\
         mutating = false\n",
        group.name
    ));
    let user = TestUser::create(&[&group]);
    let other = TestUser::create(&[&group]);
    let start = json!({"action": "noop", "params": {}}).to_string();
    let args = ["call", "job.start", start.as_str(), "--repeat", "12"];

    let (ok, limited, rest) = tally(&env.as_user(&user, &args));
    assert_eq!((ok, limited.len()), (5, 7), "{rest:?}");
    for r in &limited {
        assert!(
            r["error"]["data"]["retry_after_ms"].as_u64().unwrap() > 0,
            "{r}"
        );
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(msg.contains("uid_changes_per_minute"), "{msg}");
    }
    let (ok, limited, _) = tally(&env.as_user(&other, &args));
    assert_eq!(
        (ok, limited.len()),
        (5, 7),
        "another uid has its own budget"
    );

    let mut root = RawClient::hello(env.socket());
    for id in 2..14 {
        let answer = root.call(id, "job.start", json!({"action": "noop", "params": {}}));
        assert!(
            answer.get("result").is_some(),
            "root is not budgeted: {answer}"
        );
    }
    // The refusals are on record as denials of that uid.
    let q = root.call(
        20,
        "audit.query",
        json!({"uid": user.uid, "decision": "deny", "limit": 100}),
    );
    let denials = q["result"]["records"].as_array().unwrap();
    assert_eq!(denials.len(), 7, "{denials:?}");
    assert!(denials.iter().all(|d| d["outcome"] == "rate_limited"));
}
