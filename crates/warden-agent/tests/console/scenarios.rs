//! The four browser scenarios, one test each: what the browser script does is in
//! `console/e2e/<scenario>.mjs`; what each test does here is the hosts' part and the checks
//! from outside the browser that the script asks for.

use serde_json::json;

use crate::common::fleet::{PATIENCE, holds, linked_machine_id, product_uuid};
use crate::{Console, PIN, audit, ready};

/// Pins: an admin in the browser logs in, creates a site, rotates its key (shown once, never
/// again after Done or a reload), a host enrolls with that key and shows connected, a clone
/// (same hardware) shows pending and is approved and links, `say` runs from a form generated
/// from the host's parameter types (its secret never shown) with its output arriving live,
/// `linger` is cancelled (the host's job ends cancelled), the trail shows and filters by kind,
/// a bulk removal confirms and reports per machine (removed on the server); after logout the
/// session's cookie is dead in the browser and its token refused on the API (401); no key,
/// token or secret parameter in any log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admin_runs_the_fleet_from_the_browser() {
    let Some((tools, _turn)) = ready("an_admin_runs_the_fleet_from_the_browser").await else {
        return;
    };
    let mut c = Console::start(tools).await;
    let mut b = c.browser("admin", json!({}));
    let mut secrets = vec![PIN.to_owned()];
    let mut uuid = String::new();
    let mut lab_key = String::new();
    while let Some(req) = b.next().await {
        let words: Vec<&str> = req.iter().map(String::as_str).collect();
        match words.as_slice() {
            ["need", "enroll", site, file] => {
                lab_key = c.secret_from(file);
                secrets.push(lab_key.clone());
                uuid = product_uuid();
                let i = c.add_host(site, &lab_key, &uuid, "console-a").await;
                c.linked(i).await;
                b.answer("ok console-a");
            }
            ["need", "clone", hostname] => {
                assert_eq!(*hostname, "console-a");
                let key = lab_key.clone();
                let i = c.add_host("lab", &key, &uuid, "console-b").await;
                c.agents[i].wait_log("enrollment: pending", PATIENCE).await;
                c.server
                    .wait_machine("console-a", "pending", |m| m["state"] == "pending")
                    .await;
                b.answer("ok");
            }
            ["need", "clone-linked", mid] => {
                c.agents[1].wait_log("link: up", PATIENCE).await;
                assert_eq!(linked_machine_id(&c.agents[1]).as_deref(), Some(*mid));
                // The original's keys were revoked by the approval; it is done.
                c.agents[0].stop().await;
                let m = c
                    .server
                    .wait_machine("console-b", "connected", |m| m["connected"] == true)
                    .await;
                assert_eq!(m["machine_id"], *mid, "{m}");
                assert_eq!(m["state"], "active", "{m}");
                c.wait_actions(mid).await;
                b.answer("ok console-b");
            }
            ["check", "cancelled", id, mid] => {
                let v = c
                    .wait_dispatch(id, "ended", |v| v["dispatch"]["state"] != "running")
                    .await;
                assert_eq!(v["dispatch"]["state"], "cancelled", "{v:#}");
                let part = &v["hosts"][0];
                assert_eq!(part["machine_id"], *mid, "{v:#}");
                assert_eq!(part["state"], "cancelled", "{v:#}");
                // The host's own record: its job for this dispatch ended cancelled.
                let records = audit(&c.hosts[1]);
                let job_ends: Vec<_> = records
                    .iter()
                    .filter(|r| r["event"] == "job" && r["dispatch_id"] == *id)
                    .collect();
                assert!(
                    job_ends
                        .iter()
                        .any(|r| r.to_string().contains("\"cancelled\"")),
                    "the host's audit shows no cancelled job for {id}: {job_ends:#?}"
                );
                b.answer("ok");
            }
            ["check", "removed", mid] => {
                let m = c
                    .server
                    .machines()
                    .into_iter()
                    .find(|m| m["machine_id"] == *mid)
                    .unwrap();
                assert_eq!(m["state"], "removed", "{m}");
                // Its key stopped working and its link closed.
                let bye = c.agents[1]
                    .wait_log("the server said goodbye", PATIENCE)
                    .await;
                assert!(bye.contains("reason=Revoked"), "{bye}");
                c.server
                    .wait_machine("console-b", "disconnected", |m| m["connected"] == false)
                    .await;
                b.answer("ok");
            }
            ["check", "session-live", file] => {
                let token = c.secret_from(file);
                assert!(token.starts_with("wop_"), "the cookie holds no login token");
                secrets.push(token.clone());
                let (code, v) = c.api("GET", "/v1/session", Some(&token), None);
                assert_eq!(code, 200, "{v}");
                assert_eq!(v["name"], "ada", "{v}");
                assert_eq!(v["role"], "admin", "{v}");
                b.answer("ok");
            }
            ["check", "session-dead", file] => {
                let token = c.secret_from(file);
                let (code, v) = c.api("GET", "/v1/session", Some(&token), None);
                assert_eq!(code, 401, "the logged-out token still works: {v}");
                let (code, v) = c.api("GET", "/v1/machines", Some(&token), None);
                assert_eq!(code, 401, "the logged-out token still works: {v}");
                b.answer("ok");
            }
            other => panic!("an unknown request from the script: {other:?}"),
        }
    }
    b.finish().await;
    assert_eq!(
        secrets.len(),
        3,
        "the scenario skipped a step: {}",
        secrets.len()
    );
    let logs = c.logs();
    for s in &secrets {
        assert!(!holds(logs.as_bytes(), s), "a secret is in a log");
    }
}

/// Pins: a viewer sees machines, a machine's page, sites and dispatches (a running one too)
/// with no control that changes anything (no Approve/Ban/…/Remove, Create site, Rotate key,
/// Run, Cancel dispatch, no selection checkboxes); changes forced through the API with the
/// viewer's own cookie and CSRF token are refused 403 `forbidden` by role, and nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_viewer_sees_no_control_that_changes_anything_and_the_api_refuses_one() {
    let name = "a_viewer_sees_no_control_that_changes_anything_and_the_api_refuses_one";
    let Some((tools, _turn)) = ready(name).await else {
        return;
    };
    let mut c = Console::start(tools).await;
    let (hostname, mid) = c.one_host().await;
    let done = c.dispatch(&mid, "shout");
    c.wait_dispatch(&done, "done", |v| v["dispatch"]["state"] == "done")
        .await;
    let running = c.dispatch(&mid, "linger");
    c.wait_dispatch(&running, "running", |v| v["hosts"][0]["state"] == "running")
        .await;
    let env = json!({"machine": mid, "hostname": hostname, "running": running, "done": done});
    let mut b = c.browser("viewer", env);
    let mut checked = false;
    while let Some(req) = b.next().await {
        let words: Vec<&str> = req.iter().map(String::as_str).collect();
        match words.as_slice() {
            ["check", "unchanged", m, d] => {
                assert_eq!((*m, *d), (mid.as_str(), running.as_str()));
                let m = c.server.machine(&hostname).unwrap();
                assert_eq!(m["state"], "active", "{m}");
                let v = c.get(&format!("/v1/dispatches/{running}"));
                assert_eq!(v["dispatch"]["state"], "running", "{v:#}");
                let list = c.get("/v1/dispatches");
                assert_eq!(
                    list["dispatches"].as_array().map(Vec::len),
                    Some(2),
                    "{list}"
                );
                let sites = c.get("/v1/sites").to_string();
                assert!(!sites.contains("evil"), "{sites}");
                checked = true;
                b.answer("ok");
            }
            other => panic!("an unknown request from the script: {other:?}"),
        }
    }
    b.finish().await;
    assert!(checked, "the script never asked to check the server");
}

/// Pins: a job's output holding `<script>alert(1)</script>`, an `<img onerror>` and ANSI
/// escapes renders as text on the dispatch page: the `<pre>`'s text holds the literal markup and
/// the escapes made visible (ESC as `␛`), no element or script made from it, no dialog; the
/// server did store the raw bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn output_with_markup_and_terminal_escapes_renders_as_text() {
    let name = "output_with_markup_and_terminal_escapes_renders_as_text";
    let Some((tools, _turn)) = ready(name).await else {
        return;
    };
    let mut c = Console::start(tools).await;
    let (hostname, mid) = c.one_host().await;
    let mut b = c.browser("escapes", json!({"machine": mid, "hostname": hostname}));
    if let Some(req) = b.next().await {
        panic!("an unknown request from the script: {req:?}");
    }
    b.finish().await;
    // The fixture is what the test claims: the raw bytes are what the server stored.
    let list = c.get("/v1/dispatches");
    let id = list["dispatches"][0]["dispatch_id"].as_str().unwrap();
    let out = c.get(&format!("/v1/dispatches/{id}/hosts/{mid}/output?after=0"));
    let text: String = out["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ch| ch["data"].as_str().unwrap())
        .collect();
    assert!(text.contains("<script>alert(1)</script>\n"), "{text:?}");
    assert!(text.contains("\u{1b}[31mred\u{1b}[0m plain"), "{text:?}");
}

/// Pins: across every page of the console the document, its assets and the API answers carry
/// the exact Content-Security-Policy, X-Frame-Options DENY, nosniff, no-referrer and HSTS with
/// their content types; every request the page made went to the server's own origin; no CSP
/// violation and no script error; a cookie-authenticated change without the right CSRF token
/// is refused 403 and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_runs_under_its_csp_and_asks_only_its_own_origin() {
    let name = "the_console_runs_under_its_csp_and_asks_only_its_own_origin";
    let Some((tools, _turn)) = ready(name).await else {
        return;
    };
    let mut c = Console::start(tools).await;
    let (_, mid) = c.one_host().await;
    let done = c.dispatch(&mid, "shout");
    c.wait_dispatch(&done, "done", |v| v["dispatch"]["state"] == "done")
        .await;
    let mut b = c.browser("csp", json!({"machine": mid, "done": done}));
    if let Some(req) = b.next().await {
        panic!("an unknown request from the script: {req:?}");
    }
    b.finish().await;
    let sites = c.get("/v1/sites").to_string();
    assert!(!sites.contains("Forged"), "{sites}");
}
