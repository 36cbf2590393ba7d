//! A dispatch to three hosts through the HTTP API with its live stream, and the credential
//! planes (machine key, operator token, viewer).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use warden_fleet_proto::link::AGENT_VERSION_HEADER;

use crate::common::fleet::on_each_backend;
use crate::{Fleet, PASSWORD, SERVER_NAME, Stream, audit};

/// Pins: a dispatch to three hosts runs on all three, each under its own wardend (the job's
/// origin `fleet:olga@<server>` and the dispatch id in the host's audit); progress and output
/// arrive on the live stream; the result is stored (`GET /v1/dispatches/{id}`, each host's
/// output naming its own job). Prints the time from the request to each host's `running` and
/// (its job's first line, stamped by the job) and from the job writing that line to the
/// operator's live stream delivering it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dispatch_runs_on_three_hosts_and_its_result_is_stored() {
    if !warden_testkit::root_or_skip("a_dispatch_runs_on_three_hosts_and_its_result_is_stored") {
        return;
    }
    on_each_backend(|db| async move {
        let f = Fleet::start(db, &["", "", ""], "", false).await;
        let asked = SystemTime::now();
        let created = f.dispatch(json!({"target": {"machines": f.ids}, "action": "greet"}));
        let id = created["dispatch"]["dispatch_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let stream = Stream::open(&f.server, &f.token, &id);
        let end = stream.wait_end().await;
        assert_eq!(end["state"], "done", "{end}");
        assert_eq!(end["summary"]["succeeded"], 3, "{end}");
        let events = stream.events();
        let v = f.show(&id);
        assert_eq!(v["summary"]["succeeded"], 3, "{v:#}");
        eprintln!(
            "{}: dispatch {id} to 3 hosts, since the request:",
            f.server.name()
        );
        for (i, mid) in f.ids.iter().enumerate() {
            let part = Fleet::part(&v, mid);
            assert_eq!(part["state"], "succeeded", "{part}");
            assert_eq!(part["exit_code"], 0, "{part}");
            let job = part["job_id"].as_str().unwrap();
            let (chunks, page) = f.output(&id, mid);
            assert_eq!(page["complete"], true, "{page}");
            let text: String = chunks.iter().map(|c| c.2.as_str()).collect();
            let wrote = text
                .strip_prefix(&format!("job {job} at "))
                .and_then(|t| t.strip_suffix("\ndone\n"))
                .and_then(|ns| ns.parse::<u64>().ok())
                .map(|ns| UNIX_EPOCH + Duration::from_nanos(ns))
                .unwrap_or_else(|| panic!("{}: {text:?}", f.server.name()));
            // The host's own audit names the fleet origin and the dispatch.
            let uid = f.hosts[i].host.uid();
            let records = audit(&f.hosts[i].wardend, uid);
            assert!(
                records.iter().any(
                    |r| r["origin"] == format!("fleet:olga@{SERVER_NAME}").as_str()
                        && r["dispatch_id"] == id.as_str()
                ),
                "{records:#?}"
            );
            let mine =
                |e: &&(SystemTime, String, serde_json::Value)| e.2["machine_id"] == mid.as_str();
            let progressed = events
                .iter()
                .filter(mine)
                .any(|(_, n, d)| n == "host" && d["progress"]["percent"].as_u64().is_some());
            let first = events
                .iter()
                .filter(mine)
                .find(|(_, n, _)| n == "output")
                .map(|e| e.0)
                .unwrap_or_else(|| panic!("no output on the stream: {events:?}"));
            let running = wrote.duration_since(asked).unwrap_or_default();
            let delivered = first.duration_since(wrote).unwrap_or_default();
            eprintln!(
                "  h{i}: request to the job running {running:?}; job's first line to the \
                 operator's stream {delivered:?}; progress on the stream: {progressed}"
            );
        }
        let events = f.server.events("dispatch.create");
        assert!(
            events.iter().any(|e| e.to_string().contains(&id)),
            "{events:?}"
        );
    })
    .await;
}

/// Pins: the credential planes hold with real processes: a machine key cannot create (or
/// list) a dispatch; an operator's token cannot open a link (while the machine's own key can);
/// a viewer reads dispatches but cannot create one; nothing was dispatched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn credential_planes_hold() {
    if !warden_testkit::root_or_skip("credential_planes_hold") {
        return;
    }
    on_each_backend(|db| async move {
        let mut f = Fleet::start(db, &[""], "", false).await;
        let body = json!({"target": {"machines": f.ids}, "action": "greet"});
        let key = f.hosts[0].host.stored_key().unwrap();
        let (code, v) = f.api("POST", "/v1/dispatches", Some(&key), Some(&body));
        assert_eq!(code, 401, "{v}");
        assert_eq!(v["error"]["kind"], "unauthorized", "{v}");
        let (code, _) = f.api("GET", "/v1/dispatches", Some(&key), None);
        assert_eq!(code, 401);

        // The link: the machine's key opens one (its agent stopped, so it is free); olga's
        // token does not.
        f.agents[0].stop().await;
        let upgrade = |token: &str| -> u16 {
            let out = std::process::Command::new("curl")
                .args(["-s", "--http1.1", "--max-time", "2", "-o", "/dev/null"])
                .args(["-w", "%{http_code}", "--cacert"])
                .arg(&f.server.ca)
                .args(["-H", "Connection: Upgrade", "-H", "Upgrade: websocket"])
                .args(["-H", "Sec-WebSocket-Version: 13"])
                .args(["-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="])
                .args([
                    "-H",
                    &format!("{AGENT_VERSION_HEADER}: {}", env!("CARGO_PKG_VERSION")),
                ])
                .args(["-H", &format!("Authorization: Bearer {token}")])
                .arg(format!("{}/v1/agent/link", f.server.url()))
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        assert_eq!(
            upgrade(&key),
            101,
            "the machine key is refused: the check is void"
        );
        assert_eq!(upgrade(&f.token), 401);

        // A viewer reads, and cannot dispatch.
        f.server.admin_stdin(
            &[
                "user",
                "add",
                "vera",
                "--role",
                "viewer",
                "--password-stdin",
            ],
            &format!("{PASSWORD}\n"),
        );
        let viewer = f.login("vera");
        let (code, v) = f.api("GET", "/v1/dispatches", Some(&viewer), None);
        assert_eq!(code, 200, "{v}");
        let (code, v) = f.api("POST", "/v1/dispatches", Some(&viewer), Some(&body));
        assert_eq!(code, 403, "{v}");
        assert_eq!(v["error"]["kind"], "forbidden", "{v}");
        // Nor through the CLI.
        f.token = viewer;
        let (code, _, err) = f.cli(&["run", "--machine", &f.ids[0], "greet"]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("forbidden"), "{err}");
        let (_, v) = f.api("GET", "/v1/dispatches", Some(&f.token), None);
        assert_eq!(v["dispatches"].as_array().map(Vec::len), Some(0), "{v}");
    })
    .await;
}
