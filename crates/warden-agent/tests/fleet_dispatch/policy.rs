//! The host's policy wins over what the server believes: actions taken off the fleet or
//! raised above the host's cap after the server last heard of them, and the lockdown.

use serde_json::{Value, json};

use crate::common::fleet::on_each_backend;
use crate::{Fleet, SERVER_NAME, audit, root_call};

/// Pins: the host's wardend refuses what the server sends it when the host's policy says no,
/// and both audit trails record it. The server is made to send it honestly: the host's admin
/// takes `drift` off the fleet (`remote = false`) and raises `lift` to `admin` (above the
/// fleet's tier) after the agent reported its actions, and the agent is told not to report
/// again soon, so the server's list is stale and its early check passes. wardend refuses both
/// (`forbidden`); the part is `refused`; the server's `events` and the host's `audit.query`
/// both hold the refusal with the dispatch id. Then a lockdown on one host refuses there
/// (`locked_down`) while the other two run (through `warden-server dispatch run --watch`,
/// exit status 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hosts_policy_wins_and_both_audit_trails_say_so() {
    if !warden_testkit::root_or_skip("the_hosts_policy_wins_and_both_audit_trails_say_so") {
        return;
    }
    on_each_backend(|db| async move {
        let f = Fleet::start(db, &["", "", ""], "actions_poll_ms = 600000\n", false).await;
        let h0 = &f.hosts[0];
        h0.wardend
            .rewrite("remote = true # drift", "remote = false # drift")
            .await;
        h0.wardend
            .rewrite("tier = \"operator\" # lift", "tier = \"admin\" # lift")
            .await;
        // The server still believes both are offered (its early check would refuse otherwise).
        let (_, offered) = f.api(
            "GET",
            &format!("/v1/machines/{}/actions", f.ids[0]),
            Some(&f.token),
            None,
        );
        for name in ["drift", "lift"] {
            assert!(
                offered["actions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| a["name"] == name),
                "{offered}"
            );
        }
        let uid = h0.host.uid();
        for (action, says) in [
            ("drift", "not offered to the fleet by this host"),
            ("lift", "needs tier admin"),
        ] {
            let d = f.dispatch(json!({"target": {"machines": [f.ids[0]]}, "action": action}));
            let id = d["dispatch"]["dispatch_id"].as_str().unwrap().to_owned();
            let v = f.wait_done(&id).await;
            let part = Fleet::part(&v, &f.ids[0]);
            assert_eq!(part["state"], "refused", "{part}");
            assert_eq!(part["refusal_kind"], "forbidden", "{part}");
            assert!(
                part["refusal_message"].as_str().unwrap().contains(says),
                "{part}"
            );
            assert!(part["job_id"].is_null(), "{part}");
            let events = f.server.events("dispatch.refused");
            assert!(
                events.iter().any(|e| {
                    let t = e.to_string();
                    t.contains(&id) && t.contains("forbidden") && t.contains(says)
                }),
                "{}: {events:#?}",
                f.server.name()
            );
            let denied: Vec<Value> = audit(&h0.wardend, uid)
                .into_iter()
                .filter(|r| r["event"] == "denied" && r["dispatch_id"] == id.as_str())
                .collect();
            assert_eq!(denied.len(), 1, "{denied:#?}");
            assert_eq!(
                denied[0]["origin"],
                format!("fleet:olga@{SERVER_NAME}").as_str(),
                "{denied:#?}"
            );
            assert!(
                !h0.wardend.log().contains(&format!("{action} ran")),
                "the refused action ran"
            );
        }

        // A lockdown on h1: refused there, the others run.
        let engaged = root_call(
            &f.hosts[1].wardend,
            "lockdown.engage",
            json!({"reason": "incident 14"}),
        );
        assert!(engaged.get("result").is_some(), "{engaged}");
        let mut args = vec!["run"];
        for id in &f.ids {
            args.extend(["--machine", id.as_str()]);
        }
        args.extend(["greet", "--watch"]);
        let (code, out, err) = f.cli(&args);
        assert_eq!(code, 2, "{out}\n{err}");
        for line in ["[h0] succeeded", "[h1] refused", "[h2] succeeded"] {
            assert!(out.contains(line), "{line} missing from {out}");
        }
        assert!(out.contains("h0| job "), "{out}");
        let id = out
            .split_whitespace()
            .find(|w| w.starts_with("dsp_"))
            .unwrap()
            .trim_end_matches(':')
            .to_owned();
        let v = f.show(&id);
        let part = Fleet::part(&v, &f.ids[1]);
        assert_eq!(part["refusal_kind"], "locked_down", "{part}");
        assert!(
            part["refusal_message"]
                .as_str()
                .unwrap()
                .contains("incident 14"),
            "{part}"
        );
        let denied = audit(&f.hosts[1].wardend, f.hosts[1].host.uid())
            .into_iter()
            .filter(|r| r["event"] == "denied" && r["dispatch_id"] == id.as_str())
            .count();
        assert_eq!(denied, 1);
        assert!(
            f.server
                .events("dispatch.refused")
                .iter()
                .any(|e| e.to_string().contains(&id) && e.to_string().contains("locked_down"))
        );
    })
    .await;
}
