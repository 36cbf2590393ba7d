//! Remote dispatch end to end with real processes: the `warden-server` binary over TLS (on
//! SQLite, and on PostgreSQL when `WARDEN_TEST_DATABASE_URL` is set), one real `wardend` per
//! host with its own policy, and one real `warden-agent` per host as its own throwaway user.
//! The operator speaks the server's HTTP API (curl, with a login token) and its CLI. What runs
//! on a host is decided by that host's wardend; these tests check that it is, and that every
//! byte of output arrives once. They need root (real users); they skip with a reason
//! otherwise, and fail instead when WARDEN_REQUIRE_ROOT_TESTS=1.

#![allow(clippy::unwrap_used)]
// Test fixtures holding processes and sockets; nothing here is printed with `{:?}`.
#![allow(missing_debug_implementations)]

#[path = "../common/mod.rs"]
mod common;

mod brakes;
mod output;
mod policy;
mod runs;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::Agent;
use common::fleet::{FleetHost, PATIENCE, QUICK, Server, Wardend, product_uuid};
use serde_json::{Value, json};

pub const PASSWORD: &str = "a long enough password 1";
/// The name the server gives itself in a fleet origin.
pub const SERVER_NAME: &str = "e2e-server";

/// Lines `spew` prints: `seq 1 SPEW` (about 5.7 MB), in 100 rounds 80 ms apart.
pub const SPEW: u64 = 800_000;

/// The actions every host declares. `drift` and `lift` carry a marker comment so a test can
/// take `remote` away or raise the tier with [`Wardend::rewrite`].
pub const ACTIONS: &str = r#"
[[action]]
name = "greet"
description = "names its job and when it wrote that (ns since the epoch)"
argv = ["/bin/sh", "-c", "echo \"job $WARDEN_JOB_ID at $(date +%s%N)\"; echo 'progress 50 halfway' >&3; sleep 0.2; echo done"]
tier = "operator"
mutating = true
remote = true
[[action]]
name = "drift"
argv = ["/bin/echo", "drift ran"]
tier = "operator"
mutating = true
remote = true # drift
[[action]]
name = "lift"
argv = ["/bin/echo", "lift ran"]
tier = "operator" # lift
mutating = true
remote = true
[[action]]
name = "fail"
argv = ["/bin/sh", "-c", "echo failing; exit 3"]
tier = "operator"
mutating = false
remote = true
[[action]]
name = "pause"
argv = ["/bin/sh", "-c", "echo start; sleep 1.2; echo end"]
tier = "read_only"
mutating = false
remote = true
[[action]]
name = "spew"
argv = ["/bin/sh", "-c", "s=$(($1 / 100)); i=0; while [ $i -lt 100 ]; do seq $((i * s + 1)) $((i * s + s)); i=$((i + 1)); sleep 0.08; done", "spew", "{n}"]
tier = "read_only"
mutating = false
remote = true
[action.params.n]
type = "int"
min = 100
max = 10000000
"#;

/// `seq 1 n`'s output.
pub fn expected(n: u64) -> String {
    let mut s = String::new();
    for i in 1..=n {
        s.push_str(&i.to_string());
        s.push('\n');
    }
    s
}

/// A server, its hosts (each with its own wardend and agent), and an operator's login token.
pub struct Fleet {
    pub server: Server,
    pub hosts: Vec<FleetHost>,
    pub agents: Vec<Agent>,
    /// Each host's machine id.
    pub ids: Vec<String>,
    /// An operator's (olga's) login token.
    pub token: String,
    /// The proxy the agents reach the server through, if they do.
    pub proxy: Option<Proxy>,
}

impl Fleet {
    /// A server on `db` and one host per entry of `extras` (its wardend's configuration gets
    /// [`ACTIONS`] and the entry), every agent linked and its actions reported; with
    /// `via_proxy` the agents reach the server through a [`Proxy`].
    pub async fn start(
        db: Option<String>,
        extras: &[&str],
        overrides: &str,
        via_proxy: bool,
    ) -> Fleet {
        let mut flags = QUICK.to_vec();
        flags.extend([
            "--server-name",
            SERVER_NAME,
            "--dispatch-offline-wait",
            "10s",
        ]);
        let (server, ek) = Server::start(db, &flags).await;
        let proxy = match via_proxy {
            true => Some(Proxy::start(server.addr.unwrap()).await),
            false => None,
        };
        let mut hosts = Vec::new();
        let made = extras.iter().enumerate().map(|(i, extra)| {
            let (server, ek) = (&server, &ek);
            async move {
                let config = format!("{ACTIONS}{extra}");
                FleetHost::new_with(server, ek, &product_uuid(), &format!("h{i}"), &config).await
            }
        });
        for mut h in futures_util::future::join_all(made).await {
            if let Some(p) = &proxy {
                h.server_url = format!("https://{}", p.addr);
            }
            hosts.push(h);
        }
        let agents: Vec<Agent> = hosts.iter().map(|h| h.start(overrides)).collect();
        let mut ids = Vec::new();
        for (h, a) in hosts.iter().zip(&agents) {
            a.wait_log("link: up", PATIENCE).await;
            let m = server
                .wait_machine(&h.hostname, "connected", |m| m["connected"] == true)
                .await;
            ids.push(m["machine_id"].as_str().unwrap().to_owned());
        }
        server.admin_stdin(
            &[
                "user",
                "add",
                "olga",
                "--role",
                "operator",
                "--password-stdin",
            ],
            &format!("{PASSWORD}\n"),
        );
        let mut f = Fleet {
            server,
            hosts,
            agents,
            ids,
            token: String::new(),
            proxy,
        };
        f.token = f.login("olga");
        for id in f.ids.clone() {
            f.wait_actions(&id, |a| a.iter().any(|x| x["name"] == "greet"))
                .await;
        }
        f
    }

    /// A login token of operator `name`.
    pub fn login(&self, name: &str) -> String {
        let (code, v) = self.api(
            "POST",
            "/v1/login",
            None,
            Some(&json!({"name": name, "password": PASSWORD})),
        );
        assert_eq!(code, 200, "{v}");
        v["token"].as_str().unwrap().to_owned()
    }

    /// One HTTP request with curl (the server's CA, `token` as Bearer): status and JSON body.
    pub fn api(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        api(&self.server, method, path, token, body)
    }

    /// `POST /v1/dispatches` with `body` as olga: the created dispatch.
    pub fn dispatch(&self, body: Value) -> Value {
        let (code, v) = self.api("POST", "/v1/dispatches", Some(&self.token), Some(&body));
        assert_eq!(code, 201, "{v}");
        v
    }

    pub fn show(&self, id: &str) -> Value {
        let (code, v) = self.api(
            "GET",
            &format!("/v1/dispatches/{id}"),
            Some(&self.token),
            None,
        );
        assert_eq!(code, 200, "{v}");
        v
    }

    /// The part of machine `mid` in a dispatch view.
    pub fn part<'a>(view: &'a Value, mid: &str) -> &'a Value {
        view["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["machine_id"] == mid)
            .unwrap()
    }

    /// Polls the dispatch until `cond` holds; the view.
    pub async fn wait(&self, id: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + PATIENCE;
        loop {
            let v = self.show(id);
            if cond(&v) {
                return v;
            }
            assert!(
                Instant::now() < end,
                "{}: dispatch {id} never {what}: {v:#}",
                self.server.name()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the dispatch is no longer running.
    pub async fn wait_done(&self, id: &str) -> Value {
        self.wait(id, "ended", |v| v["dispatch"]["state"] != "running")
            .await
    }

    /// Waits until the server holds machine `mid`'s actions and they satisfy `cond`.
    pub async fn wait_actions(&self, mid: &str, cond: impl Fn(&[Value]) -> bool) {
        let end = Instant::now() + PATIENCE;
        loop {
            let (code, v) = self.api(
                "GET",
                &format!("/v1/machines/{mid}/actions"),
                Some(&self.token),
                None,
            );
            assert_eq!(code, 200, "{v}");
            if v["actions"].as_array().is_some_and(|a| cond(a)) {
                return;
            }
            assert!(Instant::now() < end, "the actions never arrived: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every stored output chunk of machine `mid`, paged through `after`: (seq, offset, data).
    pub fn output(&self, id: &str, mid: &str) -> (Vec<(i64, i64, String)>, Value) {
        let mut after = 0;
        let mut chunks = Vec::new();
        loop {
            let (code, v) = self.api(
                "GET",
                &format!("/v1/dispatches/{id}/hosts/{mid}/output?after={after}&limit=50"),
                Some(&self.token),
                None,
            );
            assert_eq!(code, 200, "{v}");
            let page = v["chunks"].as_array().unwrap();
            for c in page {
                chunks.push((
                    c["seq"].as_i64().unwrap(),
                    c["offset"].as_i64().unwrap(),
                    c["data"].as_str().unwrap().to_owned(),
                ));
            }
            if page.is_empty() {
                return (chunks, v);
            }
            after = v["next_after"].as_i64().unwrap();
        }
    }

    /// The real `warden-server dispatch …` command as olga: exit code, stdout, stderr.
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let url = self.server.url();
        let out = Command::new(warden_testkit::sibling_bin("warden-server"))
            .args(["dispatch", "--server", &url, "--ca-file"])
            .arg(&self.server.ca)
            .args(args)
            .env("WARDEN_SERVER_TOKEN", &self.token)
            .env("WARDEN_SERVER_LOG", "error")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// One HTTP request to `server` with curl: status and JSON body (`Null` when not JSON).
pub fn api(
    server: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut c = Command::new("curl");
    c.args([
        "-sS",
        "--max-time",
        "20",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
        "--cacert",
    ])
    .arg(&server.ca)
    .arg(format!("{}{path}", server.url()));
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
            "curl {method} {path}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// wardend's audit records of `uid`, oldest first.
pub fn audit(w: &Wardend, uid: u32) -> Vec<Value> {
    let a = warden_testkit::raw::RawClient::hello(&w.socket).call(
        2,
        "audit.query",
        json!({ "uid": uid, "limit": 1000 }),
    );
    a["result"]["records"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A root call to wardend.
pub fn root_call(w: &Wardend, method: &str, params: Value) -> Value {
    warden_testkit::raw::RawClient::hello(&w.socket).call(2, method, params)
}

/// The live stream of a dispatch (`GET /v1/dispatches/{id}/events` through curl), each line
/// stamped with the wall clock when it arrived.
pub struct Stream {
    child: std::process::Child,
    pub lines: Arc<Mutex<Vec<(SystemTime, String)>>>,
}

impl Stream {
    pub fn open(server: &Server, token: &str, id: &str) -> Stream {
        let mut child = Command::new("curl")
            .args(["-sSN", "--max-time", "60", "--cacert"])
            .arg(&server.ca)
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .arg(format!("{}/v1/dispatches/{id}/events", server.url()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push((SystemTime::now(), l));
            }
        });
        Stream { child, lines }
    }

    /// The events so far: (arrival, event name, data).
    pub fn events(&self) -> Vec<(SystemTime, String, Value)> {
        let lines = self.lines.lock().unwrap();
        let mut out = Vec::new();
        let mut name = String::new();
        for (at, l) in lines.iter() {
            if let Some(n) = l.strip_prefix("event: ") {
                name = n.to_owned();
            } else if let Some(d) = l.strip_prefix("data: ") {
                out.push((*at, name.clone(), serde_json::from_str(d).unwrap()));
            }
        }
        out
    }

    /// Waits for the `end` event.
    pub async fn wait_end(&self) -> Value {
        let end = Instant::now() + PATIENCE;
        loop {
            if let Some((_, _, v)) = self.events().into_iter().find(|(_, n, _)| n == "end") {
                return v;
            }
            assert!(Instant::now() < end, "the stream never ended");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy between the agents and the server that a test can cut: every connection
/// through it is dropped, and new ones are refused until it is mended.
pub struct Proxy {
    pub addr: SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    /// The proxy runs on a runtime of its own thread, so a test blocking its own runtime's
    /// workers (curl, admin commands) never stalls the link.
    pub async fn start(to: SocketAddr) -> Proxy {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let (cut, _) = tokio::sync::watch::channel(false);
        let watch = cut.subscribe();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if *watch.borrow() {
                        continue;
                    }
                    let mut watch = watch.clone();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = watch.wait_for(|c| *c) => {}
                        }
                    });
                }
            });
        });
        Proxy { addr, cut }
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn mend(&self) {
        self.cut.send_replace(false);
    }
}
