//! Fleet server benchmark, in one run on one machine:
//!
//! 1. Raw Argon2id verifications per second, one thread per CPU (the server's ceiling: every
//!    enrollment costs one), against enrollments per second through the real `warden-server`
//!    binary with its verification pool at its default size (one slot per CPU).
//! 2. `GET /v1/machines` p50 with 100,000 machines, on SQLite, and on PostgreSQL when
//!    `WARDEN_TEST_DATABASE_URL` is set.
//! 3. The server's resident memory with 100,000 machines.
//!
//! Run: `cargo bench -p warden-server --bench fleet`

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::ServerProcess;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use warden_server::auth::Role;
use warden_server::store::{Db, now_ms};

const MACHINES: usize = 100_000;
const FLOOD: Duration = Duration::from_secs(3);
/// Rounds of (raw verifications, enrollments), alternating so both see the same moments.
const ROUNDS: usize = 3;
const CLIENTS: usize = 16;
const LISTS: usize = 300;

/// Argon2id verifications per second with one thread per CPU.
fn raw_verifications() -> f64 {
    use argon2::password_hash::PasswordVerifier;
    use argon2::password_hash::phc::PasswordHash;
    let key = warden_server::keys::new_enrollment_key();
    let phc = Arc::new(warden_server::keys::hash_secret(&key).unwrap());
    let cpus = std::thread::available_parallelism().map_or(2, usize::from);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let threads: Vec<_> = (0..cpus)
        .map(|_| {
            let (phc, done, stop, key) = (phc.clone(), done.clone(), stop.clone(), key.clone());
            std::thread::spawn(move || {
                let parsed = PasswordHash::new(&phc).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    assert!(
                        argon2::Argon2::default()
                            .verify_password(key.as_bytes(), &parsed)
                            .is_ok()
                    );
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(FLOOD);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Puts 100,000 machines of site `hq` straight into the database, in one transaction.
async fn fill(db: &Db) {
    let site: i64 = sqlx::query_scalar("SELECT id FROM sites WHERE site_code = 'hq'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    let now = now_ms();
    for chunk in 0..(MACHINES / 500) {
        let mut sql = String::from(
            "INSERT INTO machines (machine_id, site_id, hostname, labels, state, key_version,
             created_ms, last_seen_ms) VALUES ",
        );
        for i in 0..500 {
            let n = chunk * 500 + i;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "('muid_{n:064x}', {site}, 'host-{n}', '{{}}', 'active', 1, {now}, {now})"
            ));
        }
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
}

fn serve(data: &std::path::Path, url: Option<&str>) -> ServerProcess {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warden-server"));
    cmd.arg("--data-dir")
        .arg(data)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("WARDEN_SERVER_LOG", "warn,warden_server=info");
    if let Some(url) = url {
        cmd.arg("--database-url").arg(url);
    }
    ServerProcess::spawn(cmd)
}

/// Enrollments per second: `CLIENTS` clients enrolling new machines for `FLOOD`.
async fn enrollments(addr: SocketAddr, key: &str) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, done, key) = (stop.clone(), done.clone(), key.to_owned());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let b = common::body("hq", &key, &common::machine_id(), "bench");
                    let r =
                        common::http(addr, "POST", "/v1/enroll", Some(b.to_string()), &[]).await;
                    assert!(r.status == 201 || r.status == 503, "{}", r.raw);
                    if r.status == 201 {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(FLOOD).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// p50 in milliseconds of `GET /v1/machines` (a page of 100) as given by `path_of(i)`.
async fn list_p50(addr: SocketAddr, token: &str, path_of: impl Fn(usize) -> String) -> f64 {
    let auth = format!("Bearer {token}");
    let mut samples = Vec::with_capacity(LISTS);
    for i in 0..LISTS {
        let t = Instant::now();
        let r = common::http(addr, "GET", &path_of(i), None, &[("Authorization", &auth)]).await;
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(r.status, 200, "{}", r.raw);
        assert!(!r.json["machines"].as_array().unwrap().is_empty());
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// What one database gave.
struct Figures {
    /// Enrollments/s, median of the rounds.
    rate: f64,
    /// Raw verifications/s, median of the rounds.
    raw: f64,
    /// Median of the rounds' enrollments / raw verifications.
    ratio: f64,
    list_p50: f64,
    search_p50: f64,
    rss: f64,
}

/// Makes the site, its key, an operator token and 100,000 machines; serves; measures.
async fn measure(label: &str, url: Option<String>) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let url = match url {
        Some(base) => Some(common::fresh_schema(&base).await),
        None => None,
    };
    let db = Db::open(&data, url.as_deref()).await.unwrap();
    db.add_site("hq", "HQ", "Acme").await.unwrap();
    let key = db.rotate_key("hq").await.unwrap().key;
    let op = db
        .add_operator("bench", Role::Admin, "benchmark password")
        .await
        .unwrap();
    let operator = warden_server::auth::Operator {
        id: op.id,
        name: op.name,
        role: Role::Admin,
        session: None,
        expires_ms: None,
        by_cookie: false,
        source: String::new(),
    };
    let (token, _) = db
        .create_token(&operator, "bench", Role::Operator, 3_600_000)
        .await
        .unwrap();
    fill(&db).await;
    db.pool.close().await;
    let server = serve(&data, url.as_deref());
    eprintln!("{label}: enrolling");
    let (mut rates, mut raws, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let raw = tokio::task::spawn_blocking(raw_verifications)
            .await
            .unwrap();
        let rate = enrollments(server.addr, &key).await;
        ratios.push(rate / raw);
        rates.push(rate);
        raws.push(raw);
    }
    eprintln!("{label}: listing");
    let list = list_p50(server.addr, &token, |i| {
        let _ = i;
        "/v1/machines?limit=100".to_owned()
    })
    .await;
    let search = list_p50(server.addr, &token, |i| {
        format!("/v1/machines?limit=100&text=host-{}", (i * 331) % MACHINES)
    })
    .await;
    let rss = server.rss_kib() / 1024.0;
    eprintln!("{label}: done");
    Figures {
        rate: median(rates),
        raw: median(raws),
        ratio: median(ratios),
        list_p50: list,
        search_p50: search,
        rss,
    }
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
    let sqlite = rt.block_on(measure("sqlite", None));
    let pg = std::env::var("WARDEN_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .map(|url| rt.block_on(measure("postgres", Some(url))));

    println!("warden-server benchmark (same machine, same run)");
    let row = |what: &str, v: f64| println!("{what:<64} {v:>10.2}");
    for (db, f) in [("SQLite", Some(&sqlite)), ("PostgreSQL", pg.as_ref())] {
        let Some(f) = f else {
            println!("PostgreSQL: skipped (set WARDEN_TEST_DATABASE_URL)");
            continue;
        };
        row(
            &format!("raw Argon2id verifications/s, one thread per CPU ({db} run)"),
            f.raw,
        );
        row(
            &format!("enrollments/s through warden-server, {db}"),
            f.rate,
        );
        row(
            &format!("GET /v1/machines p50 (page of 100 of 100,000), {db}, ms"),
            f.list_p50,
        );
        row(
            &format!("GET /v1/machines?text= p50 (search of 100,000), {db}, ms"),
            f.search_p50,
        );
        row(
            &format!("server memory with 100,000 machines, after the floods, {db}, MiB"),
            f.rss,
        );
    }
    println!();
    println!(
        "enrollments / raw verifications, SQLite:      {:.2}  (target >= 0.8; median of {ROUNDS} alternating rounds)",
        sqlite.ratio
    );
    if let Some(f) = &pg {
        println!(
            "enrollments / raw verifications, PostgreSQL:  {:.2}  (target >= 0.8)",
            f.ratio
        );
    }
}
