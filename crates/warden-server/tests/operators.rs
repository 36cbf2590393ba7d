//! Operators through the real HTTP API, on SQLite and on PostgreSQL: login and logout, API
//! tokens, roles, the two credential planes kept apart, the admin endpoints and their events.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Response, TestServer, backends, body, machine_id};
use serde_json::{Value, json};
use warden_server::auth::Role;

const PASSWORD: &str = "correct horse battery";

async fn login(s: &TestServer, name: &str, password: &str) -> Response {
    s.request(
        "POST",
        "/v1/login",
        Some(&json!({"name": name, "password": password})),
        &[],
    )
    .await
}

async fn as_bearer(
    s: &TestServer,
    token: &str,
    method: &str,
    path: &str,
    b: Option<&Value>,
) -> Response {
    s.request(
        method,
        path,
        b,
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .await
}

/// A server with an admin and a viewer, the admin logged in, and site `hq` with a key.
async fn setup(url: Option<&str>) -> (TestServer, String, String) {
    let s = TestServer::start(url).await;
    s.db()
        .add_operator("root", Role::Admin, PASSWORD)
        .await
        .unwrap();
    s.db()
        .add_operator("vera", Role::Viewer, PASSWORD)
        .await
        .unwrap();
    let admin = login(&s, "root", PASSWORD).await.json["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let site = as_bearer(
        &s,
        &admin,
        "POST",
        "/v1/sites",
        Some(&json!({"site_code": "hq", "display_name": "HQ", "company": "Acme"})),
    )
    .await;
    assert_eq!(site.status, 201, "{}", site.raw);
    let id = site.json["id"].as_i64().unwrap();
    let key = as_bearer(
        &s,
        &admin,
        "POST",
        &format!("/v1/sites/{id}/enrollment-key/rotate"),
        None,
    )
    .await;
    assert_eq!(key.status, 200, "{}", key.raw);
    (s, admin, key.json["key"].as_str().unwrap().to_owned())
}

/// Pins: a wrong password and an unknown name answer alike after one verification each; a
/// login token works until logout and not a moment after; API tokens carry at most their
/// owner's role, and a revoked one stops at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_and_tokens_work_until_revoked() {
    for url in backends() {
        let (s, admin, _) = setup(url.as_deref()).await;
        let db = s.name();
        let mut bodies = Vec::new();
        for (name, pw) in [("root", "wrong password!"), ("nobody", PASSWORD)] {
            let before = s.running.state.login_verifier.runs();
            let r = login(&s, name, pw).await;
            assert_eq!(
                s.running.state.login_verifier.runs() - before,
                1,
                "{db}: {name}"
            );
            assert_eq!(r.status, 401, "{db}: {}", r.raw);
            let cid = r.json["error"]["correlation_id"]
                .as_str()
                .unwrap()
                .to_owned();
            bodies.push(r.raw.replacen(&cid, "CID", 1));
        }
        assert_eq!(bodies[0], bodies[1], "{db}");

        let viewer = login(&s, "vera", PASSWORD).await;
        assert_eq!(viewer.json["role"], "viewer");
        let viewer = viewer.json["token"].as_str().unwrap().to_owned();
        assert_eq!(
            as_bearer(&s, &viewer, "GET", "/v1/sites", None)
                .await
                .status,
            200
        );
        let read = as_bearer(&s, &viewer, "GET", "/v1/machines", None).await;
        assert_eq!(read.status, 200, "{db}: {}", read.raw);
        let denied = as_bearer(
            &s,
            &viewer,
            "POST",
            "/v1/machines/bulk-remove",
            Some(&json!({"ids": [machine_id()]})),
        )
        .await;
        assert_eq!(denied.status, 403, "{db}: {}", denied.raw);
        let too_much = as_bearer(
            &s,
            &viewer,
            "POST",
            "/v1/tokens",
            Some(&json!({"name": "ci", "role": "admin", "expires_in_s": 3600})),
        )
        .await;
        assert_eq!(too_much.status, 400, "{db}: {}", too_much.raw);

        // An API token scoped below its owner: reads machines, may not rotate keys.
        let made = as_bearer(
            &s,
            &admin,
            "POST",
            "/v1/tokens",
            Some(&json!({"name": "dashboard", "role": "operator", "expires_in_s": 3600})),
        )
        .await;
        assert_eq!(made.status, 201, "{db}: {}", made.raw);
        let api = made.json["token"].as_str().unwrap().to_owned();
        assert!(api.starts_with("wat_"));
        let id = made.json["id"].as_i64().unwrap();
        assert_eq!(
            as_bearer(&s, &api, "GET", "/v1/machines", None)
                .await
                .status,
            200
        );
        let rotate = as_bearer(&s, &api, "POST", "/v1/sites/1/enrollment-key/rotate", None).await;
        assert_eq!(rotate.status, 403, "{db}: {}", rotate.raw);
        let listed = as_bearer(&s, &admin, "GET", "/v1/tokens", None).await;
        assert_eq!(listed.json["tokens"][0]["name"], "dashboard");
        assert!(!listed.raw.contains(&api[4..]), "{db}: the token is listed");
        let revoked = as_bearer(&s, &admin, "DELETE", &format!("/v1/tokens/{id}"), None).await;
        assert_eq!(revoked.status, 204, "{db}: {}", revoked.raw);
        assert_eq!(
            as_bearer(&s, &api, "GET", "/v1/machines", None)
                .await
                .status,
            401
        );

        // Logout: the same token is refused at once.
        assert_eq!(
            as_bearer(&s, &viewer, "POST", "/v1/logout", None)
                .await
                .status,
            204
        );
        assert_eq!(
            as_bearer(&s, &viewer, "GET", "/v1/sites", None)
                .await
                .status,
            401
        );
        // A token whose signature does not match.
        let last = if admin.ends_with('0') { '1' } else { '0' };
        let forged = format!("{}{last}", &admin[..admin.len() - 1]);
        assert_eq!(
            as_bearer(&s, &forged, "GET", "/v1/sites", None)
                .await
                .status,
            401
        );

        let events = as_bearer(&s, &admin, "GET", "/v1/events?limit=1000", None).await;
        let kinds: Vec<&str> = events.json["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        for kind in [
            "login.success",
            "login.failure",
            "token.create",
            "token.revoke",
            "key.rotate",
            "site.add",
            "logout",
        ] {
            assert!(kinds.contains(&kind), "{db}: no {kind} in {kinds:?}");
        }
        assert!(!events.raw.contains(&api[4..]) && !events.raw.contains(PASSWORD));
        let created = events.json["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == "token.create")
            .unwrap();
        assert_eq!(created["source"], "127.0.0.1", "{db}: {created}");
        assert_eq!(created["actor"], "operator root");
        s.running.stop().await.unwrap();
    }
}

/// Pins: a machine key is refused on every operator endpoint, and login and API tokens are
/// refused on the agent endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_and_operator_credentials_stay_on_their_planes() {
    for url in backends() {
        let (s, admin, key) = setup(url.as_deref()).await;
        let m = machine_id();
        let enrolled = s.enroll(&body("hq", &key, &m, "pc-1")).await;
        let machine_key = enrolled.json["machine_key"].as_str().unwrap().to_owned();
        for (method, path) in [
            ("GET", "/v1/sites"),
            ("GET", "/v1/machines"),
            ("GET", "/v1/events"),
            ("GET", "/v1/tokens"),
            ("POST", "/v1/sites/1/enrollment-key/rotate"),
            ("POST", "/v1/logout"),
        ] {
            let r = as_bearer(&s, &machine_key, method, path, None).await;
            assert_eq!(r.status, 401, "{method} {path}: {}", r.raw);
        }
        let api = as_bearer(
            &s,
            &admin,
            "POST",
            "/v1/tokens",
            Some(&json!({"name": "x", "expires_in_s": 60})),
        )
        .await
        .json["token"]
            .as_str()
            .unwrap()
            .to_owned();
        for token in [&admin, &api] {
            let r = as_bearer(&s, token, "GET", "/v1/agent/whoami", None).await;
            assert_eq!(r.status, 401, "{}", r.raw);
        }
        assert_eq!(
            as_bearer(&s, &machine_key, "GET", "/v1/agent/whoami", None)
                .await
                .status,
            200
        );
        s.running.stop().await.unwrap();
    }
}

/// Pins: the machine endpoints: filters, approve, idempotent remove, ban, key listing and
/// revocation (the agent is refused at once), and a bulk removal whose ids each get their own
/// result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_are_managed_over_http() {
    for url in backends() {
        let (s, admin, key) = setup(url.as_deref()).await;
        let db = s.name();
        let (a, b, c) = (machine_id(), machine_id(), machine_id());
        let ka = s.enroll(&body("hq", &key, &a, "alpha")).await.json["machine_key"]
            .as_str()
            .unwrap()
            .to_owned();
        s.enroll(&body("hq", &key, &b, "beta")).await;
        s.enroll(&body("hq", &key, &c, "gamma")).await;
        let pending = s.enroll(&body("hq", &key, &c, "gamma-clone")).await;
        assert_eq!(pending.status, 202);

        let get = |path: String| {
            let (s, admin) = (&s, &admin);
            async move { as_bearer(s, admin, "GET", &path, None).await }
        };
        assert_eq!(
            get("/v1/machines".into()).await.json["machines"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
        let by_text = get("/v1/machines?text=alph".into()).await;
        assert_eq!(
            by_text.json["machines"][0]["machine_id"],
            a.as_str(),
            "{db}"
        );
        let by_state = get("/v1/machines?state=pending".into()).await;
        assert_eq!(
            by_state.json["machines"][0]["machine_id"],
            c.as_str(),
            "{db}"
        );
        assert_eq!(
            get(format!("/v1/machines/{a}")).await.json["hostname"],
            "alpha"
        );
        let approved = as_bearer(
            &s,
            &admin,
            "POST",
            &format!("/v1/machines/{c}/approve"),
            None,
        )
        .await;
        assert_eq!(approved.status, 200, "{db}: {}", approved.raw);

        let keys = get(format!("/v1/machines/{a}/keys")).await;
        let key_id = keys.json["keys"][0]["id"].as_i64().unwrap();
        assert!(!keys.raw.contains(&ka[4..]));
        let revoke = as_bearer(
            &s,
            &admin,
            "DELETE",
            &format!("/v1/machines/{a}/keys/{key_id}"),
            None,
        )
        .await;
        assert_eq!(revoke.status, 204, "{db}: {}", revoke.raw);
        assert_eq!(
            as_bearer(&s, &ka, "GET", "/v1/agent/whoami", None)
                .await
                .status,
            401,
            "{db}"
        );

        let removed = as_bearer(&s, &admin, "DELETE", &format!("/v1/machines/{b}"), None).await;
        assert_eq!(removed.json["result"], "removed", "{db}: {}", removed.raw);
        let again = as_bearer(&s, &admin, "DELETE", &format!("/v1/machines/{b}"), None).await;
        assert_eq!(again.json["result"], "already_removed");
        let banned = as_bearer(&s, &admin, "POST", &format!("/v1/machines/{b}/ban"), None).await;
        assert_eq!(banned.status, 204);
        assert_eq!(s.enroll(&body("hq", &key, &b, "beta")).await.status, 403);

        let unknown = machine_id();
        let bulk = as_bearer(
            &s,
            &admin,
            "POST",
            "/v1/machines/bulk-remove",
            Some(&json!({"ids": [a, b, unknown, "muid_nope"]})),
        )
        .await;
        let results: Vec<(String, String)> = bulk.json["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["machine_id"].as_str().unwrap().to_owned(),
                    r["result"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            results,
            vec![
                (a.clone(), "removed".into()),
                (b.clone(), "already_removed".into()),
                (unknown, "not_found".into()),
                ("muid_nope".into(), "invalid".into()),
            ],
            "{db}"
        );
        let too_many: Vec<String> = (0..501).map(|_| machine_id()).collect();
        let refused = as_bearer(
            &s,
            &admin,
            "POST",
            "/v1/machines/bulk-remove",
            Some(&json!({ "ids": too_many })),
        )
        .await;
        assert_eq!(refused.status, 400);
        s.running.stop().await.unwrap();
    }
}

/// Pins: failures for a name lock out only the addresses they came from: the right password from
/// an address that has not failed is never refused, only slowed down (item 21).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_under_attack_is_slowed_never_refused_to_a_clean_address() {
    let slowdown = std::time::Duration::from_millis(150);
    for url in backends() {
        let s = TestServer::start_with(url.as_deref(), |c| {
            c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
            c.login_slowdown = slowdown;
        })
        .await;
        let db = s.name();
        s.db()
            .add_operator("root", Role::Admin, PASSWORD)
            .await
            .unwrap();
        s.db()
            .add_operator("ops", Role::Operator, PASSWORD)
            .await
            .unwrap();
        let from = |addr: String, name: &'static str, pw: &'static str| {
            let s = &s;
            async move {
                s.request(
                    "POST",
                    "/v1/login",
                    Some(&json!({"name": name, "password": pw})),
                    &[("X-Forwarded-For", &addr)],
                )
                .await
            }
        };
        // Many addresses guess at `root`, once each: none of them is locked out.
        for i in 0..25 {
            let r = from(format!("198.51.100.{i}"), "root", "not the password").await;
            assert_eq!(r.status, 401, "{db}: {}", r.raw);
        }
        // One address keeps guessing: it is locked out, for this name and for any.
        for _ in 0..20 {
            let r = from("203.0.113.66".into(), "root", "not the password").await;
            assert_eq!(r.status, 401, "{db}: {}", r.raw);
        }
        let locked = from("203.0.113.66".into(), "root", PASSWORD).await;
        assert_eq!(locked.status, 429, "{db}: {}", locked.raw);
        assert!(locked.header("retry-after").is_some());
        assert_eq!(
            from("203.0.113.66".into(), "ops", PASSWORD).await.status,
            429
        );
        // The operator, from an address that never failed: slowed down, and let in.
        let started = std::time::Instant::now();
        let ok = from("192.0.2.10".into(), "root", PASSWORD).await;
        assert_eq!(ok.status, 200, "{db}: {}", ok.raw);
        assert!(started.elapsed() >= slowdown, "{db}: not slowed down");
        assert_eq!(from("192.0.2.11".into(), "ops", PASSWORD).await.status, 200);
        let limited = s
            .db()
            .events(Some("login.rate_limited"), None, 10)
            .await
            .unwrap();
        assert_eq!(
            limited.len(),
            1,
            "{db}: one event when the lockout began: {limited:?}"
        );
        assert_eq!(limited[0].source, "203.0.113.66");
        s.running.stop().await.unwrap();
    }
}

/// Pins: a login name over 64 bytes is refused with 400 before it reaches the limiters or the
/// verifier, so it costs no limiter memory (item 22).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlong_login_names_are_refused_before_the_limiter() {
    let s = TestServer::start(None).await;
    let state = &s.running.state;
    for len in [65, 17 * 1024] {
        let r = login(&s, &"a".repeat(len), "not the password").await;
        assert_eq!(r.status, 400, "{}", r.raw);
        assert_eq!(r.kind(), "bad_request");
    }
    assert_eq!(state.login_limiter.len(), 0);
    assert_eq!(state.login_addr_limiter.len(), 0);
    assert_eq!(state.login_name_failures.len(), 0);
    assert_eq!(state.login_verifier.runs(), 0);
    // 64 bytes is still a name: an ordinary failed login, charged as usual.
    let r = login(&s, &"a".repeat(64), "not the password").await;
    assert_eq!(r.status, 401, "{}", r.raw);
    assert_eq!(state.login_limiter.len(), 1);
    s.running.stop().await.unwrap();
}

/// Pins: the OpenAPI document is generated from the handlers: it lists every endpoint with its
/// method, and every endpoint it lists is served (none falls through to "no such endpoint").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_exactly_what_is_served() {
    for url in backends() {
        let s = TestServer::start(url.as_deref()).await;
        let doc = s.request("GET", "/v1/openapi.json", None, &[]).await;
        assert_eq!(doc.status, 200);
        assert!(doc.json["openapi"].as_str().unwrap().starts_with("3."));
        let paths = doc.json["paths"].as_object().unwrap();
        let mut listed: Vec<String> = Vec::new();
        for (path, item) in paths {
            for method in item.as_object().unwrap().keys() {
                if ["get", "post", "delete", "put", "patch"].contains(&method.as_str()) {
                    listed.push(format!("{} {path}", method.to_uppercase()));
                }
            }
        }
        listed.sort();
        let mut expected = vec![
            "POST /v1/enroll",
            "GET /v1/agent/link",
            "GET /v1/agent/whoami",
            "GET /v1/health",
            "POST /v1/login",
            "POST /v1/logout",
            "GET /v1/session",
            "POST /v1/tokens",
            "GET /v1/tokens",
            "DELETE /v1/tokens/{id}",
            "POST /v1/sites",
            "GET /v1/sites",
            "GET /v1/sites/{id}/enrollment-key",
            "POST /v1/sites/{id}/enrollment-key/rotate",
            "GET /v1/sites/{id}/enrollment-key/usage",
            "GET /v1/machines",
            "POST /v1/machines/bulk-remove",
            "GET /v1/machines/{id}",
            "DELETE /v1/machines/{id}",
            "POST /v1/machines/{id}/approve",
            "POST /v1/machines/{id}/ban",
            "POST /v1/machines/{id}/clear",
            "POST /v1/machines/{id}/quarantine",
            "POST /v1/machines/{id}/unban",
            "GET /v1/machines/{id}/keys",
            "DELETE /v1/machines/{id}/keys/{key_id}",
            "GET /v1/events",
            "POST /v1/dispatches",
            "GET /v1/dispatches",
            "GET /v1/dispatches/{id}",
            "GET /v1/dispatches/{id}/hosts/{machine_id}/output",
            "POST /v1/dispatches/{id}/cancel",
            "GET /v1/dispatches/{id}/events",
            "GET /v1/machines/{id}/actions",
        ];
        expected.sort();
        assert_eq!(listed, expected);
        for entry in &listed {
            let (method, path) = entry.split_once(' ').unwrap();
            let concrete = path
                .replace("{id}", "1")
                .replace("{key_id}", "1")
                .replace("{machine_id}", "1");
            let r = s.request(method, &concrete, None, &[]).await;
            assert_ne!(
                r.json["error"]["message"], "no such endpoint",
                "{entry} is documented but not served"
            );
        }
        s.running.stop().await.unwrap();
    }
}

/// Pins: a login outlives a restart of the server (its signing key is kept in the database),
/// and a logout before the restart still holds after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_outlive_a_restart_and_logouts_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = warden_server::Config::new(dir.path().join("data"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    let first = warden_server::start(&config).await.unwrap();
    first
        .state
        .db
        .add_operator("root", Role::Admin, PASSWORD)
        .await
        .unwrap();
    let login_at = |addr| async move {
        common::http(
            addr,
            "POST",
            "/v1/login",
            Some(json!({"name": "root", "password": PASSWORD}).to_string()),
            &[],
        )
        .await
        .json["token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let kept = login_at(first.addr).await;
    let ended = login_at(first.addr).await;
    let bearer = |t: &str| format!("Bearer {t}");
    let out = common::http(
        first.addr,
        "POST",
        "/v1/logout",
        None,
        &[("Authorization", &bearer(&ended))],
    )
    .await;
    assert_eq!(out.status, 204);
    first.stop().await.unwrap();
    let second = warden_server::start(&config).await.unwrap();
    let sites = |t: String| {
        let addr = second.addr;
        async move {
            common::http(
                addr,
                "GET",
                "/v1/sites",
                None,
                &[("Authorization", &format!("Bearer {t}"))],
            )
            .await
            .status
        }
    };
    assert_eq!(sites(kept).await, 200);
    assert_eq!(sites(ended).await, 401);
    assert!(!dir.path().join("data/signing.key").exists());
    second.stop().await.unwrap();
}

/// Pins: key usage counts a site's machines by the key version they enrolled with, and the
/// active key is shown without its secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_usage_counts_machines_per_version() {
    for url in backends() {
        let (s, admin, v1) = setup(url.as_deref()).await;
        let db = s.name();
        for i in 0..2 {
            let r = s
                .enroll(&body("hq", &v1, &machine_id(), &format!("a{i}")))
                .await;
            assert_eq!(r.status, 201, "{db}: {}", r.raw);
        }
        let v2 = as_bearer(
            &s,
            &admin,
            "POST",
            "/v1/sites/1/enrollment-key/rotate",
            None,
        )
        .await;
        let v2 = v2.json["key"].as_str().unwrap().to_owned();
        let r = s.enroll(&body("hq", &v2, &machine_id(), "b0")).await;
        assert_eq!(r.status, 201, "{db}: {}", r.raw);
        let usage = as_bearer(&s, &admin, "GET", "/v1/sites/1/enrollment-key/usage", None).await;
        assert_eq!(
            usage.json["usage"],
            json!([{"version": 1, "machines": 2}, {"version": 2, "machines": 1}]),
            "{db}: {}",
            usage.raw
        );
        let active = as_bearer(&s, &admin, "GET", "/v1/sites/1/enrollment-key", None).await;
        assert_eq!(active.json["version"], 2, "{db}");
        assert!(active.json.get("key").is_none() && !active.raw.contains(&v2[4..]));
        s.running.stop().await.unwrap();
    }
}

/// Pins: servers on machines of their own (each its own data directory) starting at the same
/// moment on one PostgreSQL database all take the one signing key stored first, so a login made
/// on any of them is accepted by every other (item 23).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_starting_together_on_postgres_share_one_signing_key() {
    let Some(base) = backends().into_iter().flatten().next() else {
        return;
    };
    let url = common::fresh_schema(&base).await;
    let dir = tempfile::tempdir().unwrap();
    // The migrations are applied first; then all five race to make the key.
    warden_server::store::Db::open(dir.path(), Some(&url))
        .await
        .unwrap();
    let racing: Vec<_> = (0..5)
        .map(|i| {
            let mut config = warden_server::Config::new(dir.path().join(format!("data-{i}")));
            config.database_url = Some(url.clone());
            config.listen = "127.0.0.1:0".parse().unwrap();
            tokio::spawn(async move { warden_server::start(&config).await.unwrap() })
        })
        .collect();
    let mut servers = Vec::new();
    for r in racing {
        servers.push(r.await.unwrap());
    }
    servers[0]
        .state
        .db
        .add_operator("root", Role::Admin, PASSWORD)
        .await
        .unwrap();
    for s in &servers[1..] {
        assert!(s.state.signing == servers[0].state.signing);
    }
    let login = common::http(
        servers[3].addr,
        "POST",
        "/v1/login",
        Some(json!({"name": "root", "password": PASSWORD}).to_string()),
        &[],
    )
    .await;
    assert_eq!(login.status, 200, "{}", login.raw);
    let bearer = format!("Bearer {}", login.json["token"].as_str().unwrap());
    for s in &servers {
        let r = common::http(
            s.addr,
            "GET",
            "/v1/sites",
            None,
            &[("Authorization", &bearer)],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.raw);
    }
    for s in servers {
        s.stop().await.unwrap();
    }
}
