//! The operator console's server side through real sockets, on SQLite and on PostgreSQL: its
//! files and the security headers on every answer, cookie sessions with their CSRF token, the
//! viewer's reads, and the keyset-paged machine list with its filters. TLS (the cookie's
//! `Secure`, HSTS) and the log are checked on the real binary.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Response, TestServer, backends, machine_id};
use serde_json::{Value, json};
use warden_server::auth::Role;
use warden_server::store::now_ms;

const PASSWORD: &str = "correct horse battery";
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
const CSRF_REFUSAL: &str = "missing or wrong CSRF token; reload the console";

/// A console login: the answer, the cookie's token and the CSRF token.
struct Console {
    login: Response,
    token: String,
    csrf: String,
}

impl Console {
    fn cookie(&self) -> String {
        format!("warden_session={}", self.token)
    }
}

async fn console_login(s: &TestServer, name: &str) -> Console {
    let login = s
        .request(
            "POST",
            "/v1/login",
            Some(&json!({"name": name, "password": PASSWORD, "cookie": true})),
            &[],
        )
        .await;
    assert_eq!(login.status, 200, "{}", login.raw);
    let set = login.header("set-cookie").unwrap();
    let token = set
        .strip_prefix("warden_session=")
        .and_then(|v| v.split(';').next())
        .unwrap()
        .to_owned();
    let csrf = login.json["csrf"].as_str().unwrap().to_owned();
    Console { login, token, csrf }
}

/// A server with an admin `root` and a viewer `vera`, and site `hq`.
async fn setup(url: Option<&str>) -> TestServer {
    let s = TestServer::start(url).await;
    s.db()
        .add_operator("root", Role::Admin, PASSWORD)
        .await
        .unwrap();
    s.db()
        .add_operator("vera", Role::Viewer, PASSWORD)
        .await
        .unwrap();
    s.db().add_site("hq", "HQ", "Acme").await.unwrap();
    s
}

fn assert_security_headers(r: &Response, what: &str) {
    assert_eq!(r.header("content-security-policy"), Some(CSP), "{what}");
    assert_eq!(r.header("x-frame-options"), Some("DENY"), "{what}");
    assert_eq!(
        r.header("x-content-type-options"),
        Some("nosniff"),
        "{what}"
    );
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{what}");
}

/// Pins: `/` and the two assets are served with their content types and `no-cache`, anything
/// else under `/assets/` is 404, the page loads only this server's style and module script
/// (no inline code), and every answer (page, asset, API, error) carries the security headers,
/// without HSTS on plain HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_with_the_security_headers_on_every_answer() {
    let s = TestServer::start(None).await;
    for (path, ty) in [
        ("/", "text/html; charset=utf-8"),
        ("/assets/app.js", "text/javascript; charset=utf-8"),
        ("/assets/app.css", "text/css; charset=utf-8"),
    ] {
        let r = s.request("GET", path, None, &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(ty), "{path}");
        assert_eq!(r.header("cache-control"), Some("no-cache"), "{path}");
        assert!(!r.raw.is_empty(), "{path}");
        assert_security_headers(&r, path);
        assert_eq!(r.header("strict-transport-security"), None, "{path}");
    }
    let page = s.request("GET", "/", None, &[]).await.raw;
    assert!(
        page.contains(r#"<link rel="stylesheet" href="/assets/app.css">"#),
        "{page}"
    );
    assert!(
        page.contains(r#"<script type="module" src="/assets/app.js"></script>"#),
        "{page}"
    );
    assert_eq!(page.matches("<script").count(), 1, "{page}");
    assert!(
        !page.contains("<style") && !page.contains("style=\""),
        "{page}"
    );
    assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("//cdn"));
    for path in [
        "/assets/other.js",
        "/assets/app.js.map",
        "/assets/",
        "/assets/x/app.js",
    ] {
        let r = s.request("GET", path, None, &[]).await;
        assert_eq!(
            (r.status, r.kind()),
            (404, "not_found"),
            "{path}: {}",
            r.raw
        );
        assert_security_headers(&r, path);
    }
    for (method, path) in [
        ("GET", "/v1/health"),
        ("GET", "/v1/machines"),
        ("GET", "/v1/nothing"),
        ("POST", "/v1/login"),
    ] {
        let r = s.request(method, path, None, &[]).await;
        assert_security_headers(&r, path);
        assert_eq!(r.header("strict-transport-security"), None, "{path}");
    }
    s.running.stop().await.unwrap();
}

/// Pins: a cookie login sets `warden_session` HttpOnly, SameSite=Strict, Path=/, with the
/// seconds left as Max-Age and no `Secure` on plain HTTP, and answers name, role, expiry and
/// CSRF token but no token; `GET /v1/session` answers the same for the cookie, a null CSRF for
/// a bearer, 401 for nobody; a login without `cookie` answers as before, with no cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_login_keeps_the_token_out_of_script_reach() {
    for url in backends() {
        let s = setup(url.as_deref()).await;
        let db = s.name();
        let c = console_login(&s, "root").await;
        let set = c.login.header("set-cookie").unwrap().to_owned();
        let max_age: i64 = set
            .split("; ")
            .find_map(|a| a.strip_prefix("Max-Age="))
            .unwrap()
            .parse()
            .unwrap();
        assert!((3590..=3600).contains(&max_age), "{db}: {set}");
        assert_eq!(
            set,
            format!(
                "warden_session={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}",
                c.token
            ),
            "{db}"
        );
        assert!(c.token.starts_with("wop_"), "{db}");
        let body = c.login.json.as_object().unwrap();
        let keys: BTreeSet<&str> = body.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            BTreeSet::from(["csrf", "expires_ms", "name", "role"]),
            "{db}"
        );
        assert!(
            !c.login.raw.contains(&c.token),
            "{db}: the body holds the token"
        );
        assert_eq!(c.login.json["name"], "root");
        assert_eq!(c.login.json["role"], "admin");
        let expires = c.login.json["expires_ms"].as_i64().unwrap();
        assert_eq!(c.csrf.len(), 64, "{db}");
        assert!(!c.token.contains(&c.csrf) && c.csrf != c.token, "{db}");

        let me = s
            .request("GET", "/v1/session", None, &[("Cookie", &c.cookie())])
            .await;
        assert_eq!(me.status, 200, "{db}: {}", me.raw);
        assert_eq!(
            me.json,
            json!({"name": "root", "role": "admin", "expires_ms": expires, "csrf": c.csrf}),
            "{db}"
        );
        // Other cookies around it do not confuse it.
        let mixed = s
            .request(
                "GET",
                "/v1/session",
                None,
                &[("Cookie", &format!("theme=dark; {}; lang=en", c.cookie()))],
            )
            .await;
        assert_eq!(mixed.json["name"], "root", "{db}: {}", mixed.raw);
        let bearer = s
            .request(
                "GET",
                "/v1/session",
                None,
                &[("Authorization", &format!("Bearer {}", c.token))],
            )
            .await;
        assert_eq!(bearer.status, 200, "{db}: {}", bearer.raw);
        assert_eq!(bearer.json["csrf"], Value::Null, "{db}");
        assert_eq!(bearer.json["expires_ms"], expires, "{db}");
        for headers in [
            vec![],
            vec![("Cookie", "warden_session=wop_00.00")],
            vec![("Cookie", "warden_session=")],
        ] {
            let r = s.request("GET", "/v1/session", None, &headers).await;
            assert_eq!(
                (r.status, r.kind()),
                (401, "unauthorized"),
                "{db}: {headers:?}"
            );
        }
        // A bearer that is wrong is judged alone: the good cookie beside it does not help.
        let both = s
            .request(
                "GET",
                "/v1/session",
                None,
                &[
                    ("Authorization", "Bearer wop_00.00"),
                    ("Cookie", &c.cookie()),
                ],
            )
            .await;
        assert_eq!(both.status, 401, "{db}");

        let plain = s
            .request(
                "POST",
                "/v1/login",
                Some(&json!({"name": "root", "password": PASSWORD})),
                &[],
            )
            .await;
        assert_eq!(plain.status, 200, "{db}");
        assert!(plain.json["token"].as_str().unwrap().starts_with("wop_"));
        assert_eq!(plain.header("set-cookie"), None, "{db}");
        let explicit = s
            .request(
                "POST",
                "/v1/login",
                Some(&json!({"name": "root", "password": PASSWORD, "cookie": false})),
                &[],
            )
            .await;
        assert!(explicit.json["token"].is_string(), "{db}");
        s.running.stop().await.unwrap();
    }
}

/// Pins: a change made with the cookie needs `X-CSRF-Token`: none, a wrong one, or another
/// session's is refused 403 `forbidden` with the console's message and changes nothing; the
/// session's own works; reads need none; a bearer request needs none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_changes_need_their_own_sessions_csrf_token() {
    for url in backends() {
        let s = setup(url.as_deref()).await;
        let db = s.name();
        let c = console_login(&s, "root").await;
        let other = console_login(&s, "root").await;
        assert_ne!(c.csrf, other.csrf, "{db}");
        let site = |code: &str| json!({"site_code": code, "display_name": "B", "company": "Acme"});
        let cookie = c.cookie();
        let wrong = "0".repeat(64);
        for csrf in [
            None,
            Some(wrong.as_str()),
            Some(other.csrf.as_str()),
            Some(""),
        ] {
            let mut headers = vec![("Cookie", cookie.as_str())];
            if let Some(t) = csrf {
                headers.push(("X-CSRF-Token", t));
            }
            let r = s
                .request("POST", "/v1/sites", Some(&site("b1")), &headers)
                .await;
            assert_eq!(
                (r.status, r.kind()),
                (403, "forbidden"),
                "{db}: {csrf:?}: {}",
                r.raw
            );
            assert_eq!(r.json["error"]["message"], CSRF_REFUSAL, "{db}");
        }
        let sites = s
            .request("GET", "/v1/sites", None, &[("Cookie", &cookie)])
            .await;
        assert_eq!(sites.status, 200, "{db}: {}", sites.raw);
        assert_eq!(
            sites.raw.matches("\"b1\"").count(),
            0,
            "{db}: a refused change happened"
        );
        let made = s
            .request(
                "POST",
                "/v1/sites",
                Some(&site("b1")),
                &[("Cookie", &cookie), ("X-CSRF-Token", &c.csrf)],
            )
            .await;
        assert_eq!(made.status, 201, "{db}: {}", made.raw);
        let by_bearer = s
            .request(
                "POST",
                "/v1/sites",
                Some(&site("b2")),
                &[("Authorization", &format!("Bearer {}", c.token))],
            )
            .await;
        assert_eq!(by_bearer.status, 201, "{db}: {}", by_bearer.raw);
        // DELETE is a change too.
        let r = s
            .request(
                "DELETE",
                &format!("/v1/machines/{}", machine_id()),
                None,
                &[("Cookie", &cookie)],
            )
            .await;
        assert_eq!((r.status, r.kind()), (403, "forbidden"), "{db}: {}", r.raw);
        s.running.stop().await.unwrap();
    }
}

/// Pins: logout with the cookie (and its CSRF token) answers 204 and clears the cookie, and
/// the session is closed: the cookie and the same token as a bearer are both 401 after; logout
/// without the CSRF token is refused and ends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_logout_ends_the_session_for_cookie_and_bearer() {
    for url in backends() {
        let s = setup(url.as_deref()).await;
        let db = s.name();
        let c = console_login(&s, "vera").await;
        let cookie = c.cookie();
        let refused = s
            .request("POST", "/v1/logout", None, &[("Cookie", &cookie)])
            .await;
        assert_eq!((refused.status, refused.kind()), (403, "forbidden"), "{db}");
        let still = s
            .request("GET", "/v1/session", None, &[("Cookie", &cookie)])
            .await;
        assert_eq!(still.status, 200, "{db}");
        let out = s
            .request(
                "POST",
                "/v1/logout",
                None,
                &[("Cookie", &cookie), ("X-CSRF-Token", &c.csrf)],
            )
            .await;
        assert_eq!(out.status, 204, "{db}: {}", out.raw);
        assert_eq!(
            out.header("set-cookie"),
            Some("warden_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"),
            "{db}"
        );
        let by_cookie = s
            .request("GET", "/v1/session", None, &[("Cookie", &cookie)])
            .await;
        assert_eq!(
            (by_cookie.status, by_cookie.kind()),
            (401, "unauthorized"),
            "{db}"
        );
        let by_bearer = s
            .request(
                "GET",
                "/v1/sites",
                None,
                &[("Authorization", &format!("Bearer {}", c.token))],
            )
            .await;
        assert_eq!(by_bearer.status, 401, "{db}: {}", by_bearer.raw);
        s.running.stop().await.unwrap();
    }
}

/// Pins: a viewer, by cookie, reads the machine list, a machine, its keys and actions, and
/// reaches the live dispatch stream, but every change to a machine is refused 403 even with
/// the right CSRF token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_reads_machines_and_changes_none() {
    for url in backends() {
        let s = setup(url.as_deref()).await;
        let db = s.name();
        let ids = fill(&s, &[("hq", "active", "pc-1", false)]).await;
        let id = &ids[0];
        let c = console_login(&s, "vera").await;
        let cookie = c.cookie();
        for path in [
            "/v1/machines".to_owned(),
            format!("/v1/machines/{id}"),
            format!("/v1/machines/{id}/keys"),
            format!("/v1/machines/{id}/actions"),
            "/v1/sites".to_owned(),
            "/v1/dispatches".to_owned(),
        ] {
            let r = s.request("GET", &path, None, &[("Cookie", &cookie)]).await;
            assert_eq!(r.status, 200, "{db}: {path}: {}", r.raw);
        }
        // The live stream takes the cookie too (EventSource sends it): past authentication,
        // an unknown dispatch is simply not found.
        let stream = s
            .request(
                "GET",
                &format!("/v1/dispatches/dsp_{}/events", "0".repeat(32)),
                None,
                &[("Cookie", &cookie)],
            )
            .await;
        assert_eq!(
            (stream.status, stream.kind()),
            (404, "not_found"),
            "{db}: {}",
            stream.raw
        );
        for (method, path, b) in [
            ("POST", format!("/v1/machines/{id}/approve"), None),
            ("POST", format!("/v1/machines/{id}/ban"), None),
            ("POST", format!("/v1/machines/{id}/quarantine"), None),
            ("DELETE", format!("/v1/machines/{id}"), None),
            (
                "POST",
                "/v1/machines/bulk-remove".to_owned(),
                Some(json!({"ids": [id]})),
            ),
            (
                "POST",
                "/v1/dispatches".to_owned(),
                Some(json!({"target": {"machines": [id]}, "action": "a", "params": {}})),
            ),
            ("GET", "/v1/events".to_owned(), None),
        ] {
            let r = s
                .request(
                    method,
                    &path,
                    b.as_ref(),
                    &[("Cookie", &cookie), ("X-CSRF-Token", &c.csrf)],
                )
                .await;
            assert_eq!(
                (r.status, r.kind()),
                (403, "forbidden"),
                "{db}: {method} {path}: {r:?}"
            );
            assert_ne!(r.json["error"]["message"], CSRF_REFUSAL, "{db}");
        }
        let m = s.db().machine(id).await.unwrap();
        assert_eq!((m.state.as_str(), m.banned), ("active", false), "{db}");
        s.running.stop().await.unwrap();
    }
}

/// Machines straight into the database: (site, state, hostname, linked now) each; their ids.
async fn fill(s: &TestServer, machines: &[(&str, &str, &str, bool)]) -> Vec<String> {
    let mut ids = Vec::new();
    for (i, (site, state, host, linked)) in machines.iter().enumerate() {
        let id = machine_id();
        let now = now_ms();
        sqlx::query(
            "INSERT INTO machines (machine_id, site_id, hostname, labels, state, key_version,
             created_ms, last_seen_ms, linked_ms)
             VALUES ($1, (SELECT id FROM sites WHERE site_code = $2), $3, '{}', $4, 1, $5, $6, $7)",
        )
        .bind(&id)
        .bind(*site)
        .bind(*host)
        .bind(*state)
        .bind(now)
        // Seen one second apart, the first longest ago.
        .bind(now - 1_000 * (machines.len() - i) as i64)
        .bind(linked.then_some(now))
        .execute(&s.db().pool)
        .await
        .unwrap();
        ids.push(id);
    }
    ids
}

/// Every page of `GET /v1/machines?{q}` at `limit` a page: the machines in order, and the
/// number of pages.
async fn all_pages(s: &TestServer, token: &str, q: &str, limit: usize) -> (Vec<Value>, usize) {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = format!("/v1/machines?limit={limit}&{q}");
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let r = s
            .request(
                "GET",
                &path,
                None,
                &[("Authorization", &format!("Bearer {token}"))],
            )
            .await;
        assert_eq!(r.status, 200, "{path}: {}", r.raw);
        pages += 1;
        let page = r.json["machines"].as_array().unwrap().clone();
        assert!(page.len() <= limit);
        out.extend(page);
        match r.json["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => return (out, pages),
        }
        assert!(pages < 1000, "paging does not end");
    }
}

/// Which of the filled machines (by index) a query should list.
type Wanted = Box<dyn Fn(usize) -> bool>;

/// Pins: paging through `GET /v1/machines` with any filter (site, state, both, text,
/// connected, last seen, banned) returns every matching machine exactly once, in hostname then
/// machine id order (equal hostnames too), in `ceil(n / limit)` pages with `next` null on the
/// last; a forged cursor is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyset_pages_return_every_machine_exactly_once_in_order() {
    for url in backends() {
        let s = setup(url.as_deref()).await;
        let db = s.name();
        s.db().add_site("b2", "B2", "Acme").await.unwrap();
        let mut spec = Vec::new();
        for i in 0..41usize {
            let site = if i % 3 == 0 { "b2" } else { "hq" };
            let state = ["active", "pending", "quarantined", "active"][i % 4];
            // Some hostnames repeat: the machine id orders them.
            let host = format!("host-{:02}", (i * 7) % 29);
            spec.push((site, state, host, i % 5 == 0));
        }
        let rows: Vec<(&str, &str, &str, bool)> = spec
            .iter()
            .map(|(a, b, h, l)| (*a, *b, h.as_str(), *l))
            .collect();
        let ids = fill(&s, &rows).await;
        let token = s
            .request(
                "POST",
                "/v1/login",
                Some(&json!({"name": "vera", "password": PASSWORD})),
                &[],
            )
            .await
            .json["token"]
            .as_str()
            .unwrap()
            .to_owned();
        let seen_mid = s.db().machine(&ids[20]).await.unwrap().last_seen_ms;
        let cases: Vec<(String, Wanted)> = vec![
            (String::new(), Box::new(|_| true)),
            ("site=b2".into(), Box::new(|i| i % 3 == 0)),
            (
                "state=active".into(),
                Box::new(|i| i % 4 == 0 || i % 4 == 3),
            ),
            (
                "site=hq&state=pending".into(),
                Box::new(|i| i % 3 != 0 && i % 4 == 1),
            ),
            ("text=host-0".into(), Box::new(|i| (i * 7) % 29 < 10)),
            ("connected=true".into(), Box::new(|i| i % 5 == 0)),
            (
                "connected=false&site=hq".into(),
                Box::new(|i| i % 5 != 0 && i % 3 != 0),
            ),
            (format!("seen_after={seen_mid}"), Box::new(|i| i > 20)),
            (format!("seen_before={seen_mid}"), Box::new(|i| i < 20)),
            ("site=nowhere".into(), Box::new(|_| false)),
            // A ban is asked for like a state, though a banned machine keeps its own state.
            ("state=banned".into(), Box::new(|i| i % 7 == 0)),
            (
                "site=b2&state=banned".into(),
                Box::new(|i| i % 3 == 0 && i % 7 == 0),
            ),
        ];
        for i in (0..ids.len()).filter(|i| i % 7 == 0) {
            s.db().ban(&ids[i]).await.unwrap();
        }
        for (q, wanted) in cases {
            let mut expected: Vec<(String, String)> = (0..ids.len())
                .filter(|i| wanted(*i))
                .map(|i| (spec[i].2.clone(), ids[i].clone()))
                .collect();
            expected.sort();
            for limit in [1, 4, 1000] {
                let (got, pages) = all_pages(&s, &token, &q, limit).await;
                let got: Vec<(String, String)> = got
                    .iter()
                    .map(|m| {
                        (
                            m["hostname"].as_str().unwrap().to_owned(),
                            m["machine_id"].as_str().unwrap().to_owned(),
                        )
                    })
                    .collect();
                assert_eq!(got, expected, "{db}: {q} limit {limit}");
                assert_eq!(
                    pages,
                    expected.len().div_ceil(limit).max(1),
                    "{db}: {q} limit {limit}"
                );
            }
        }
        for bad in ["zz.muid_x", "nodot", "6869"] {
            let r = s
                .request(
                    "GET",
                    &format!("/v1/machines?after={bad}"),
                    None,
                    &[("Authorization", &format!("Bearer {token}"))],
                )
                .await;
            assert_eq!(
                (r.status, r.kind()),
                (400, "bad_request"),
                "{db}: {bad}: {}",
                r.raw
            );
        }
        s.running.stop().await.unwrap();
    }
}

/// The real binary serving `data` over TLS with `cert`/`key`, its log at trace collected.
struct Served {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn curl(cert: &std::path::Path, args: &[&str]) -> (Vec<(String, String)>, String) {
    let out = Command::new("curl")
        .args(["-s", "-i", "--max-time", "10", "--cacert"])
        .arg(cert)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (headers, body.to_owned())
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Pins: served over TLS by the real binary, the console's cookie is `Secure` (set and
/// cleared), every answer carries HSTS and the other headers, and the server's log at its most
/// verbose holds neither the session token nor the CSRF token after a login, a read, a change
/// and a logout.
#[test]
fn over_tls_the_cookie_is_secure_hsts_is_sent_and_the_log_holds_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = common::certificate(dir.path(), "localhost");
    let data = dir.path().join("data");
    let bin = env!("CARGO_BIN_EXE_warden-server");
    let mut add = Command::new(bin)
        .arg("--data-dir")
        .arg(&data)
        .args(["--init", "user", "add", "root", "--role", "admin"])
        .arg("--password-stdin")
        .env_remove("WARDEN_SERVER_DATABASE_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        add.stdin.as_mut().unwrap(),
        format!("{PASSWORD}\n").as_bytes(),
    )
    .unwrap();
    assert!(add.wait().unwrap().success());
    let mut child = Command::new(bin)
        .arg("--data-dir")
        .arg(&data)
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .env("WARDEN_SERVER_LOG", "trace")
        .env_remove("WARDEN_SERVER_DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (log, rx) = common::tee_lines(stderr);
    let mut served = Served {
        child,
        addr: "127.0.0.1:1".parse().unwrap(),
        log,
    };
    served.addr = loop {
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        if let Some(rest) = line.split("listen=").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    let base = format!("https://{}", served.addr);
    let (h, _) = curl(&cert, &[&format!("{base}/")]);
    assert_eq!(
        header(&h, "strict-transport-security"),
        Some("max-age=31536000")
    );
    assert_eq!(header(&h, "content-security-policy"), Some(CSP));
    let login = json!({"name": "root", "password": PASSWORD, "cookie": true}).to_string();
    let (h, body) = curl(
        &cert,
        &[
            "-H",
            "Content-Type: application/json",
            "--data",
            &login,
            &format!("{base}/v1/login"),
        ],
    );
    assert_eq!(
        header(&h, "strict-transport-security"),
        Some("max-age=31536000")
    );
    let set = header(&h, "set-cookie").unwrap().to_owned();
    assert!(set.ends_with("; Secure"), "{set}");
    assert!(
        set.contains("; HttpOnly; SameSite=Strict; Max-Age="),
        "{set}"
    );
    let token = set
        .strip_prefix("warden_session=")
        .and_then(|v| v.split(';').next())
        .unwrap()
        .to_owned();
    let csrf = serde_json::from_str::<Value>(&body).unwrap()["csrf"]
        .as_str()
        .unwrap()
        .to_owned();
    let cookie = format!("Cookie: warden_session={token}");
    let csrf_header = format!("X-CSRF-Token: {csrf}");
    let (h, body) = curl(&cert, &["-H", &cookie, &format!("{base}/v1/session")]);
    assert_eq!(
        header(&h, "strict-transport-security"),
        Some("max-age=31536000")
    );
    assert!(body.contains(&csrf), "{body}");
    let site = json!({"site_code": "hq", "display_name": "HQ", "company": "Acme"}).to_string();
    let (_, body) = curl(
        &cert,
        &[
            "-H",
            &cookie,
            "-H",
            &csrf_header,
            "-H",
            "Content-Type: application/json",
            "--data",
            &site,
            &format!("{base}/v1/sites"),
        ],
    );
    assert!(body.contains("\"hq\""), "{body}");
    let (h, _) = curl(
        &cert,
        &[
            "-X",
            "POST",
            "-H",
            &cookie,
            "-H",
            &csrf_header,
            &format!("{base}/v1/logout"),
        ],
    );
    assert_eq!(
        header(&h, "set-cookie"),
        Some("warden_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict; Secure")
    );
    let (h, _) = curl(&cert, &["-H", &cookie, &format!("{base}/v1/session")]);
    assert!(h.is_empty() || header(&h, "set-cookie").is_none());
    std::thread::sleep(Duration::from_millis(300));
    let text = served.log.lock().unwrap().clone();
    assert!(
        text.contains("login"),
        "the log is not verbose enough to prove anything: {text}"
    );
    let tag = token.rsplit('.').next().unwrap();
    assert!(!text.contains(tag), "the log holds the session token");
    assert!(
        !text.contains(&token[4..40]),
        "the log holds the session token"
    );
    assert!(!text.contains(&csrf), "the log holds the CSRF token");
}
