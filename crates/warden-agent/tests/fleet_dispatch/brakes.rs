//! Fan-out brakes and cancel with real hosts: batch, max_failures, canary; a cancel before and
//! past each host's commit point.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::fleet::{PATIENCE, on_each_backend};
use crate::{Fleet, audit};

/// Whether any of wardend's audit records names dispatch `id`.
fn host_saw(f: &Fleet, i: usize, id: &str) -> bool {
    audit(&f.hosts[i].wardend, f.hosts[i].host.uid())
        .iter()
        .any(|r| r["dispatch_id"] == id)
}

fn states(v: &Value) -> Vec<String> {
    v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["state"].as_str().unwrap().to_owned())
        .collect()
}

/// Pins: with four real hosts, `batch = 2` never has more than two hosts sent or running at
/// once (and does use two) and all four succeed; `max_failures = 1` with `batch = 1` stops
/// after the second failure (`stopped: max_failures passed`), the rest never reach their
/// wardend and end `cancelled` (not_started); a failing canary stops all the others the same
/// way (`stopped: canary failed`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fan_out_brakes_hold_with_real_hosts() {
    if !warden_testkit::root_or_skip("fan_out_brakes_hold_with_real_hosts") {
        return;
    }
    on_each_backend(|db| async move {
        let f = Fleet::start(db, &["", "", "", ""], "", false).await;

        // batch
        let d = f.dispatch(json!({"target": {"machines": f.ids}, "action": "pause", "batch": 2}));
        let id = d["dispatch"]["dispatch_id"].as_str().unwrap().to_owned();
        let mut most = 0;
        let end = Instant::now() + PATIENCE;
        let v = loop {
            let v = f.show(&id);
            let flight = states(&v)
                .iter()
                .filter(|s| *s == "sent" || *s == "running")
                .count();
            most = most.max(flight);
            if v["dispatch"]["state"] != "running" {
                break v;
            }
            assert!(Instant::now() < end, "{v:#}");
            tokio::time::sleep(Duration::from_millis(30)).await;
        };
        assert_eq!(most, 2, "in flight at most: {most}");
        assert_eq!(v["summary"]["succeeded"], 4, "{v:#}");
        eprintln!(
            "{}: batch 2 of 4 hosts: at most {most} in flight",
            f.server.name()
        );

        // max_failures
        let d = f.dispatch(json!({"target": {"machines": f.ids}, "action": "fail",
            "batch": 1, "max_failures": 1}));
        let id = d["dispatch"]["dispatch_id"].as_str().unwrap().to_owned();
        let v = f.wait_done(&id).await;
        assert_eq!(v["dispatch"]["stopped"], "max_failures passed", "{v:#}");
        assert_eq!(v["summary"]["failed"], 2, "{v:#}");
        assert_eq!(v["summary"]["not_started"], 2, "{v:#}");
        for (i, mid) in f.ids.iter().enumerate() {
            let part = Fleet::part(&v, mid);
            if part["state"] == "cancelled" {
                assert!(
                    part["note"].as_str().unwrap().starts_with("not_started"),
                    "{part}"
                );
                assert!(!host_saw(&f, i, &id), "h{i} was asked");
            } else {
                assert_eq!(part["state"], "failed", "{part}");
                assert_eq!(part["exit_code"], 3, "{part}");
                assert!(host_saw(&f, i, &id));
            }
        }

        // canary
        let d = f.dispatch(json!({"target": {"machines": f.ids}, "action": "fail",
            "canary": 1}));
        let id = d["dispatch"]["dispatch_id"].as_str().unwrap().to_owned();
        let v = f.wait_done(&id).await;
        assert_eq!(v["dispatch"]["stopped"], "canary failed", "{v:#}");
        assert_eq!(v["summary"]["failed"], 1, "{v:#}");
        assert_eq!(v["summary"]["not_started"], 3, "{v:#}");
        let asked = (0..4).filter(|i| host_saw(&f, *i, &id)).count();
        assert_eq!(asked, 1, "only the canary's wardend was asked");
    })
    .await;
}

/// Each host's own `stage`: h0's has no commit point, h1's commits and has a rollback, h2's
/// commits and has none (it finishes a few seconds later).
const STAGES: [&str; 3] = [
    "[[action]]\nname = \"stage\"\nargv = [\"/bin/sh\", \"-c\", \"echo waiting; sleep 30\"]\n\
     tier = \"operator\"\nmutating = true\nremote = true\n",
    "[[action]]\nname = \"stage\"\nargv = [\"/bin/sh\", \"-c\", \"echo commit >&3; echo committed; \
     sleep 30\"]\nrollback = [\"/bin/echo\", \"rolled back\"]\ntier = \"operator\"\n\
     mutating = true\nremote = true\n",
    "[[action]]\nname = \"stage\"\nargv = [\"/bin/sh\", \"-c\", \"echo commit >&3; echo committed; \
     sleep 4; echo finished\"]\ntier = \"operator\"\nmutating = true\nremote = true\n",
];

/// Pins: a cancel mid-dispatch goes to every started host and wardend decides each: the job
/// before its commit point ends `cancelled`; past it, the one with a rollback ends
/// `rolled_back`, the one without goes on and ends `succeeded` (wardend refused to stop it);
/// a host not started yet (batch) ends `cancelled` (not_started); the dispatch is
/// `cancelled` and its summary counts each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_mid_dispatch_before_and_past_the_commit_point() {
    if !warden_testkit::root_or_skip("cancel_mid_dispatch_before_and_past_the_commit_point") {
        return;
    }
    on_each_backend(|db| async move {
        let mut extras = STAGES.to_vec();
        extras.push(STAGES[0]);
        let f = Fleet::start(db, &extras, "", false).await;
        let d = f.dispatch(json!({"target": {"machines": f.ids}, "action": "stage",
            "batch": 3}));
        let id = d["dispatch"]["dispatch_id"].as_str().unwrap().to_owned();
        // The three started hosts have said they are past their first line.
        f.wait(&id, "started three", |v| {
            f.ids[..3]
                .iter()
                .all(|m| Fleet::part(v, m)["last_seq"].as_i64().unwrap_or(0) >= 1)
        })
        .await;
        let (code, c) = f.api(
            "POST",
            &format!("/v1/dispatches/{id}/cancel"),
            Some(&f.token),
            None,
        );
        assert_eq!(code, 200, "{c}");
        let v = f.wait_done(&id).await;
        assert_eq!(v["dispatch"]["state"], "cancelled", "{v:#}");
        let st: Vec<&str> = f
            .ids
            .iter()
            .map(|m| Fleet::part(&v, m)["state"].as_str().unwrap())
            .collect();
        assert_eq!(
            st,
            ["cancelled", "rolled_back", "succeeded", "cancelled"],
            "{v:#}"
        );
        let last = Fleet::part(&v, &f.ids[3]);
        assert!(
            last["note"].as_str().unwrap().starts_with("not_started"),
            "{last}"
        );
        assert!(Fleet::part(&v, &f.ids[0])["note"].is_null());
        for (state, n) in [
            ("cancelled", 1),
            ("not_started", 1),
            ("rolled_back", 1),
            ("succeeded", 1),
        ] {
            assert_eq!(v["summary"][state], n, "{v:#}");
        }
        let (out, _) = f.output(&id, &f.ids[2]);
        let text: String = out.iter().map(|c| c.2.as_str()).collect();
        assert_eq!(text, "committed\nfinished\n");
        eprintln!(
            "{}: cancel: h2's agent heard from wardend: {:?}",
            f.server.name(),
            f.agents[2].lines(&id)
        );
    })
    .await;
}
