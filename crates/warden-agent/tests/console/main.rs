//! The operator console in a real browser, end to end: the `warden-server` binary over TLS (on
//! SQLite), real `wardend` hosts with their own fixture hardware and the real `warden-agent` as
//! throwaway users (the fleet harness of `tests/common/fleet.rs`), and Debian's headless
//! Chromium driven by Playwright (`console/e2e/console.mjs`). The browser does the operator's
//! work through the UI contract's accessible names; this harness does the hosts' (enroll, clone)
//! and checks from outside (the API, the hosts' audit, the logs) when the script asks. Each test
//! is one scenario; they take turns, one browser at a time. Screenshots go to
//! `target/console-screenshots/`. They need root (real users) and Node, the console's
//! `playwright-core` (`npm ci` in console/) and /usr/bin/chromium; they skip with a reason
//! otherwise, and fail instead when WARDEN_REQUIRE_ROOT_TESTS=1. The server and wardend
//! binaries must be built (`cargo test --workspace` does; or `cargo build -p warden-server -p
//! wardend` first).

#![allow(clippy::unwrap_used)]
// Test fixtures holding processes and sockets; nothing here is printed with `{:?}`.
#![allow(missing_debug_implementations)]

#[path = "../common/mod.rs"]
mod common;

mod browser;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use browser::{Browser, Tools, screenshots, tools_or_skip};
use common::Agent;
use common::fleet::{AGENT_QUICK, FleetHost, PATIENCE, QUICK, Server, product_uuid};
use serde_json::{Value, json};

const PASSWORD: &str = "a long enough password 1";

/// The secret parameter the admin scenario types into `say`'s form (`console/e2e/admin.mjs`).
const PIN: &str = "kestrel-9-secret";

/// One browser at a time: the scenarios of this binary take turns.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What every host offers the fleet: a quick `say` with one parameter of each kind (its secret
/// `pin` on stdin, checked, never printed), `linger` (20 s before anything commits, so a cancel
/// ends it), and `shout` (markup and terminal escapes).
const ACTIONS: &str = r#"
[[action]]
name = "say"
description = "writes one line with its parameters"
argv = ["/bin/sh", "-c", "read -r p; [ \"$p\" = kestrel-9-secret ] && s=ok || s=wrong; echo \"said $1, $2, $3 times, loudly=$4\"; echo \"pin $s\"", "say", "{word}", "{tone}", "{times}", "{loudly}"]
stdin = "{pin}\n"
tier = "operator"
mutating = false
remote = true
[action.params.word]
type = "string"
max_len = 32
pattern = "[a-z]+"
[action.params.tone]
type = "enum"
values = ["soft", "loud"]
[action.params.times]
type = "int"
min = 1
max = 3
[action.params.loudly]
type = "bool"
[action.params.pin]
type = "string"
secret = true
pattern = "[a-z0-9-]+"

[[action]]
name = "linger"
description = "waits 20 s before it commits anything; cancellable"
argv = ["/bin/sh", "-c", "echo lingering; sleep 20; echo finished"]
tier = "operator"
mutating = true
remote = true

[[action]]
name = "shout"
description = "prints markup and terminal escapes"
argv = ["/usr/bin/printf", "<script>alert(1)</script>\\n<img src=x onerror=alert(2)>\\n\\033[31mred\\033[0m plain\\n"]
tier = "read_only"
mutating = false
remote = true
"#;

/// A server with the console's operators (ada admin, olga operator, vera viewer), its hosts,
/// and a work directory the browser script hands secrets over in.
struct Console {
    server: Server,
    /// Site `hq`'s enrollment key (the server starts with it).
    hq_key: String,
    /// olga's login token, for the harness's own API calls.
    token: String,
    work: tempfile::TempDir,
    hosts: Vec<FleetHost>,
    agents: Vec<Agent>,
    tools: Tools,
}

impl Console {
    async fn start(tools: Tools) -> Console {
        let mut flags = QUICK.to_vec();
        flags.extend(["--server-name", "console-e2e"]);
        let (server, hq_key) = Server::start(None, &flags).await;
        for (name, role) in [("ada", "admin"), ("olga", "operator"), ("vera", "viewer")] {
            server.admin_stdin(
                &["user", "add", name, "--role", role, "--password-stdin"],
                &format!("{PASSWORD}\n"),
            );
        }
        let mut c = Console {
            server,
            hq_key,
            token: String::new(),
            work: warden_testkit::safe_tempdir(),
            hosts: Vec::new(),
            agents: Vec::new(),
            tools,
        };
        let (code, v) = c.api(
            "POST",
            "/v1/login",
            None,
            Some(&json!({"name": "olga", "password": PASSWORD})),
        );
        assert_eq!(code, 200, "{v}");
        c.token = v["token"].as_str().unwrap().to_owned();
        c.assert_serves_this_console();
        c
    }

    /// The server binary serves the console files of this tree: `cargo test -p warden-agent`
    /// rebuilds warden-server's library, not its binary, and a stale one would test old code.
    fn assert_serves_this_console(&self) {
        let committed =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../warden-server/console/app.js");
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20", "--cacert"])
            .arg(&self.server.ca)
            .arg(format!("{}/assets/app.js", self.server.url()))
            .output()
            .unwrap();
        assert!(
            out.stdout == std::fs::read(&committed).unwrap(),
            "the warden-server binary does not serve {}: rebuild it (cargo build -p \
             warden-server)",
            committed.display()
        );
    }

    /// What the script gets as `WARDEN_E2E`: the server, its CA, the work and screenshot
    /// directories, the password, and `extra`.
    fn env(&self, extra: Value) -> Value {
        let shots = screenshots();
        eprintln!("screenshots: {}", shots.display());
        let mut v = json!({
            "url": self.server.url(),
            "ca": self.server.ca,
            "work": self.work.path(),
            "shots": shots,
            "password": PASSWORD,
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    }

    fn browser(&self, scenario: &str, extra: Value) -> Browser {
        Browser::start(&self.tools, scenario, &self.env(extra))
    }

    /// A new host (its own user, wardend with [`ACTIONS`], hardware `uuid`) whose agent
    /// enrolls in `site` with `key` as `hostname`; its index in `hosts`/`agents`.
    async fn add_host(&mut self, site: &str, key: &str, uuid: &str, hostname: &str) -> usize {
        let h = FleetHost::new_with(&self.server, key, uuid, hostname, ACTIONS).await;
        let key_file = h.host.write("enrollment.key", &format!("{key}\n"));
        let text = format!(
            "server_url = \"{}\"\nsite_code = \"{site}\"\nenrollment_key_file = \"{}\"\n\
             ca_file = \"{}\"\nstate_dir = \"{}\"\nwardend_socket = \"{}\"\nhostname = \"{}\"\n\
             [test_overrides]\n{AGENT_QUICK}",
            self.server.url(),
            key_file.display(),
            self.server.ca.display(),
            h.host.state.display(),
            h.wardend.socket.display(),
            hostname,
        );
        let config = h.host.write("agent.toml", &text);
        self.agents
            .push(h.host.start(&["--config", config.to_str().unwrap()]));
        self.hosts.push(h);
        self.hosts.len() - 1
    }

    /// Host `i` linked, shown connected, and its actions held by the server: its machine id.
    async fn linked(&self, i: usize) -> String {
        let hostname = &self.hosts[i].hostname;
        self.agents[i].wait_log("link: up", PATIENCE).await;
        let m = self
            .server
            .wait_machine(hostname, "connected", |m| m["connected"] == true)
            .await;
        let id = m["machine_id"].as_str().unwrap().to_owned();
        self.wait_actions(&id).await;
        id
    }

    /// One host in `hq`, linked: (hostname, machine id).
    async fn one_host(&mut self) -> (String, String) {
        let key = self.hq_key.clone();
        let i = self.add_host("hq", &key, &product_uuid(), "web-1").await;
        let id = self.linked(i).await;
        (self.hosts[i].hostname.clone(), id)
    }

    /// One HTTP request with curl (the server's CA, `token` as Bearer): status and JSON body.
    fn api(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", "20", "-X", method])
            .args(["-w", "\n%{http_code}", "--cacert"])
            .arg(&self.server.ca)
            .arg(format!("{}{path}", self.server.url()));
        if let Some(t) = token {
            c.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        if let Some(b) = body {
            c.args(["-H", "content-type: application/json", "--data-binary"])
                .arg(b.to_string());
        }
        let out = c.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        let code = code.trim().parse().unwrap_or_else(|_| {
            panic!(
                "curl {method} {path}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (code, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    /// olga's GET of `path`, which must answer 200.
    fn get(&self, path: &str) -> Value {
        let (code, v) = self.api("GET", path, Some(&self.token), None);
        assert_eq!(code, 200, "GET {path}: {v}");
        v
    }

    async fn wait_actions(&self, mid: &str) {
        let end = Instant::now() + PATIENCE;
        loop {
            let v = self.get(&format!("/v1/machines/{mid}/actions"));
            let names: Vec<&str> = v["actions"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x["name"].as_str()).collect())
                .unwrap_or_default();
            if ["say", "linger", "shout"].iter().all(|n| names.contains(n)) {
                return;
            }
            assert!(Instant::now() < end, "the actions never arrived: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// olga dispatches `action` (no parameters) to `mid`: the dispatch id.
    fn dispatch(&self, mid: &str, action: &str) -> String {
        let body = json!({"target": {"machines": [mid]}, "action": action});
        let (code, v) = self.api("POST", "/v1/dispatches", Some(&self.token), Some(&body));
        assert_eq!(code, 201, "{v}");
        v["dispatch"]["dispatch_id"].as_str().unwrap().to_owned()
    }

    /// Polls dispatch `id` until `cond` holds on its view.
    async fn wait_dispatch(&self, id: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + PATIENCE;
        loop {
            let v = self.get(&format!("/v1/dispatches/{id}"));
            if cond(&v) {
                return v;
            }
            assert!(Instant::now() < end, "dispatch {id} never {what}: {v:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A file the script named, which must be in the work directory.
    fn secret_from(&self, file: &str) -> String {
        let p = Path::new(file);
        assert!(
            p.parent() == Some(self.work.path()),
            "the script named a file outside its work directory: {file}"
        );
        std::fs::read_to_string(p).unwrap().trim().to_owned()
    }

    /// Every log of the run: the server's, each wardend's and each agent's.
    fn logs(&self) -> String {
        let mut all = self.server.log();
        for h in &self.hosts {
            all.push_str(&h.wardend.log());
        }
        for a in &self.agents {
            all.push_str(&a.logs());
        }
        all
    }
}

/// wardend's audit records of host `h`'s agent, oldest first.
fn audit(h: &FleetHost) -> Vec<Value> {
    let a = warden_testkit::raw::RawClient::hello(&h.wardend.socket).call(
        2,
        "audit.query",
        json!({ "uid": h.host.uid(), "limit": 1000 }),
    );
    a["result"]["records"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Root, a browser and the turn, or `None` (skipped with a reason).
async fn ready(test: &str) -> Option<(Tools, tokio::sync::MutexGuard<'static, ()>)> {
    if !warden_testkit::root_or_skip(test) {
        return None;
    }
    let tools = tools_or_skip(test)?;
    Some((tools, TURN.lock().await))
}

mod scenarios;
