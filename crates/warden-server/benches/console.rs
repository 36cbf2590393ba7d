//! The console's machine list with 100,000 machines, in one run on one machine, against the
//! real `warden-server` binary (SQLite, the default): 100,000 machines over 20 sites in four
//! states, a tenth of them linked, written straight into the database; then, over HTTP with a
//! viewer's API token, p50/p99 of
//!
//! - the first page (`GET /v1/machines`, 100 a page),
//! - a filtered page (one site and one state),
//! - a text search (`text=-00042`, which about one machine in 10,000 holds: the worst case,
//!   every machine is looked at),
//! - a page deep in the list (about the 90,000th machine on, reached through the `next`
//!   cursors),
//! - a filtered page deep in its list (one site and one state, about its 2,000th machine on),
//! - connected machines only (`connected=true`: a tenth are linked but nearly all of them
//!   were last seen too long ago, so again about every machine is looked at),
//!
//! next to `GET /v1/health` in the same run (the floor any request pays: connect, parse,
//! answer) and the ratio of each to it. Every request is on a fresh connection.
//!
//! Run: `cargo bench -p warden-server --bench console`

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::ServerProcess;
use warden_server::auth::Role;
use warden_server::store::{Db, now_ms};

const MACHINES: usize = 100_000;
const SITES: usize = 20;
const ROUNDS: usize = 300;

/// Site `sNN` for each of [`SITES`], [`MACHINES`] machines spread over them, and a viewer's API
/// token, straight into the database.
async fn fill(data: &Path) -> String {
    let db = Db::open(data, None).await.unwrap();
    for s in 0..SITES {
        db.add_site(&format!("s{s:02}"), "Site", "Acme")
            .await
            .unwrap();
    }
    let now = now_ms();
    let mut tx = db.pool.begin().await.unwrap();
    for i in 0..MACHINES {
        // A spread of hostnames in no relation to insertion order, some repeated.
        let h = (i as u64).wrapping_mul(2_654_435_761) % 1_000_003;
        let kind = ["web", "db", "pc", "kiosk", "build"][i % 5];
        let state = ["active", "active", "active", "pending", "quarantined"][(i / 5) % 5];
        let linked = (i / 7) % 10 == 0;
        sqlx::query(
            "INSERT INTO machines (machine_id, site_id, hostname, labels, state, key_version,
             created_ms, last_seen_ms, linked_ms) VALUES ($1, $2, $3, '{}', $4, 1, $5, $6, $7)",
        )
        .bind(format!("muid_{:064x}", i as u64 * 7919 + 1))
        .bind((i % SITES) as i64 + 1)
        .bind(format!("{kind}-{h:07}"))
        .bind(state)
        .bind(now)
        .bind(now - (i as i64 % 86_400) * 1000)
        .bind(linked.then_some(now))
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    sqlx::query("ANALYZE").execute(&db.pool).await.unwrap();
    let token = common::api_token(&db, "bench", Role::Viewer).await;
    db.pool.close().await;
    token
}

/// `ROUNDS` GETs of `path`: p50 and p99 in ms, and how many machines the last answer held.
async fn measure(addr: SocketAddr, token: &str, path: &str) -> (f64, f64, usize) {
    let auth = format!("Bearer {token}");
    let mut ms = Vec::with_capacity(ROUNDS);
    let mut n = 0;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let r = common::http(addr, "GET", path, None, &[("Authorization", &auth)]).await;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(r.status, 200, "{path}: {}", r.raw);
        n = r.json["machines"].as_array().map_or(0, Vec::len);
    }
    (
        common::percentile(&mut ms, 0.5),
        common::percentile(&mut ms, 0.99),
        n,
    )
}

/// The cursor after about `skip` machines of `query`, by following `next` 1,000 at a time.
async fn cursor_after(addr: SocketAddr, token: &str, query: &str, skip: usize) -> String {
    let auth = format!("Bearer {token}");
    let mut after = String::new();
    for _ in 0..skip / 1000 {
        let path = format!("/v1/machines?limit=1000&{query}&after={after}");
        let r = common::http(addr, "GET", &path, None, &[("Authorization", &auth)]).await;
        assert_eq!(r.status, 200, "{}", r.raw);
        after = r.json["next"].as_str().unwrap().to_owned();
    }
    after
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let filled = Instant::now();
    let token = rt.block_on(fill(&data));
    eprintln!(
        "filled {MACHINES} machines over {SITES} sites in {:.1} s",
        filled.elapsed().as_secs_f64()
    );
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warden-server"));
    cmd.arg("--data-dir")
        .arg(&data)
        .args(["serve", "--listen", &listen.to_string()])
        .env("WARDEN_SERVER_LOG", "warn,warden_server::cli=info");
    let server = ServerProcess::spawn(cmd);
    let addr = server.addr;
    rt.block_on(async move {
        let deep = cursor_after(addr, &token, "", 90_000).await;
        let deep_filtered = cursor_after(addr, &token, "site=s07&state=active", 2_000).await;
        // Warm both ends the same way before measuring.
        measure(addr, &token, "/v1/health").await;
        let cases = [
            ("first page".to_owned(), "/v1/machines".to_owned()),
            (
                "site + state".to_owned(),
                "/v1/machines?site=s07&state=pending".to_owned(),
            ),
            (
                "text search".to_owned(),
                "/v1/machines?text=-00042".to_owned(),
            ),
            (
                "connected only".to_owned(),
                "/v1/machines?connected=true".to_owned(),
            ),
            (
                "deep page (~90,000th on)".to_owned(),
                format!("/v1/machines?after={deep}"),
            ),
            (
                "deep filtered page".to_owned(),
                format!("/v1/machines?site=s07&state=active&after={deep_filtered}"),
            ),
        ];
        let (h50, h99, _) = measure(addr, &token, "/v1/health").await;
        eprintln!(
            "{:<28} {:>9} {:>9} {:>9} {:>7}",
            "request", "p50 ms", "p99 ms", "machines", "p50/health"
        );
        eprintln!(
            "{:<28} {:>9.3} {:>9.3} {:>9} {:>7.1}",
            "GET /v1/health", h50, h99, "-", 1.0
        );
        for (name, path) in cases {
            let (p50, p99, n) = measure(addr, &token, &path).await;
            eprintln!("{name:<28} {p50:>9.3} {p99:>9.3} {n:>9} {:>7.1}", p50 / h50);
        }
    });
    drop(server);
}
