//! Agent link benchmark, in one run on one machine, against the real `warden-server` binary
//! (a process of its own, so its resident memory is the server's alone). The agents' side is a
//! lean load generator in this process speaking the real link protocol (welcome, heartbeats
//! both ways, goodbye), each link with its own machine key.
//!
//! 1. Memory per idle authenticated link: the server's resident memory with 10,000 links up
//!    (heartbeating every 2 s both ways, measured after several rounds), less its memory with
//!    none, measured in the same server just before; without TLS and with TLS.
//! 2. Upgrade admission rate: link upgrades per second (64 at a time, the server's upgrade
//!    limiter set out of the way), against fresh-connection `GET /v1/health` requests per
//!    second on the same server in the same run (the cost of a connection and an HTTP exchange
//!    without the key check and the upgrade).
//! 3. Reconnect spread after a graceful restart: 10,000 links, SIGTERM, a new server on the
//!    same port and database; each generator link waits what its goodbye said (or backs off
//!    with full jitter when refused), and the time each link is back is recorded: the spread
//!    and the busiest second against the mean.
//!
//! Run: `cargo bench -p warden-server --bench link`

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::ServerProcess;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use warden_server::store::{Db, now_ms};

const LINKS: usize = 10_000;
const AT_ONCE: usize = 64;
const HEALTH_REQUESTS: usize = 3_000;
const HEARTBEAT_MS: u64 = 2_000;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

fn key_of(i: usize) -> String {
    format!("wmk_{:064x}", i + 1)
}

/// Site `hq` and `LINKS` active machines, machine `i` with the key [`key_of`]`(i)`, straight
/// into the database.
async fn fill(data: &Path) {
    let db = Db::open(data, None).await.unwrap();
    db.add_site("hq", "HQ", "Acme").await.unwrap();
    let site: i64 = sqlx::query_scalar("SELECT id FROM sites WHERE site_code = 'hq'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let now = now_ms();
    let mut tx = db.pool.begin().await.unwrap();
    for chunk in 0..LINKS / 500 {
        let (mut machines, mut keys) = (String::new(), String::new());
        for i in chunk * 500..(chunk + 1) * 500 {
            let sep = if machines.is_empty() { "" } else { "," };
            machines.push_str(&format!(
                "{sep}({}, 'muid_{i:064x}', {site}, 'host-{i}', '{{}}', 'active', 1, {now}, {now})",
                i + 1
            ));
            keys.push_str(&format!(
                "{sep}({}, '{}', {now}, 1)",
                i + 1,
                warden_server::keys::secret_hash(&key_of(i))
            ));
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO machines (id, machine_id, site_id, hostname, labels, state, key_version,
             created_ms, last_seen_ms) VALUES {machines}"
        )))
        .execute(&mut *tx)
        .await
        .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO machine_keys (machine_row, hash, created_ms, version) VALUES {keys}"
        )))
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    db.pool.close().await;
}

fn serve(
    data: &Path,
    listen: SocketAddr,
    tls: Option<&(PathBuf, PathBuf)>,
    rate: u32,
) -> ServerProcess {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warden-server"));
    cmd.arg("--data-dir")
        .arg(data)
        .args(["serve", "--listen", &listen.to_string()])
        .args(["--link-heartbeat-ms", &HEARTBEAT_MS.to_string()])
        .args(["--link-upgrades-per-second", &rate.to_string()])
        .args(["--link-max", "20000"])
        .env("WARDEN_SERVER_LOG", "warn,warden_server::cli=info");
    if let Some((cert, key)) = tls {
        cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
    }
    ServerProcess::spawn(cmd)
}

/// Runs `openssl` with `args`, panicking with its message when it fails.
fn openssl(args: &[&str]) {
    let made = Command::new("openssl").args(args).output().unwrap();
    assert!(
        made.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&made.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 it signed, and a client configuration trusting
/// only that CA.
fn certificate(dir: &Path) -> ((PathBuf, PathBuf), Arc<rustls::ClientConfig>) {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let p = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "1", "-subj", "/CN=bench CA"];
    ca.extend(ec);
    let (ca_key, ca_cert) = (p("ca.key"), p("ca.pem"));
    ca.extend(["-keyout", &ca_key, "-out", &ca_cert]);
    openssl(&ca);
    let (key, csr, cert, ext) = (p("key.pem"), p("req.csr"), p("cert.pem"), p("ext.cnf"));
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let mut req = vec![
        "req",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &key,
        "-out",
        &csr,
    ];
    req.extend(ec);
    openssl(&req);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca_cert,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &ext,
        "-out",
        &cert,
    ]);
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&ca_cert).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    ((PathBuf::from(cert), PathBuf::from(key)), Arc::new(config))
}

/// A fresh connection to `addr`, in TLS when `tls` is given.
async fn stream(
    addr: SocketAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> std::io::Result<Box<dyn Io>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(match tls {
        None => Box::new(tcp),
        Some(config) => {
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            Box::new(
                tokio_rustls::TlsConnector::from(Arc::clone(config))
                    .connect(name, tcp)
                    .await?,
            )
        }
    })
}

/// How a link attempt ended.
enum Opened {
    Up(Box<WebSocketStream<Box<dyn Io>>>),
    /// Refused with this Retry-After, in seconds.
    Refused(Option<u64>),
    Failed,
}

async fn open(addr: SocketAddr, tls: Option<&Arc<rustls::ClientConfig>>, key: &str) -> Opened {
    let Ok(io) = stream(addr, tls).await else {
        return Opened::Failed;
    };
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let mut req = format!("{scheme}://{addr}/v1/agent/link")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    req.headers_mut()
        .insert("x-warden-agent-version", "bench".parse().unwrap());
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20));
    match tokio_tungstenite::client_async_with_config(req, io, Some(config)).await {
        Ok((mut ws, _)) => match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("\"welcome\"") => Opened::Up(Box::new(ws)),
            _ => Opened::Failed,
        },
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Opened::Refused(
            r.headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
        ),
        Err(_) => Opened::Failed,
    }
}

/// Keeps a link alive (a heartbeat every interval) until the server says goodbye or closes;
/// the goodbye's `reconnect_after_ms`, if any.
async fn hold(mut ws: Box<WebSocketStream<Box<dyn Io>>>) -> Option<u64> {
    let mut tick = tokio::time::interval(Duration::from_millis(HEARTBEAT_MS));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if ws.send(Message::Text(r#"{"type":"heartbeat"}"#.into())).await.is_err() {
                    return None;
                }
            }
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) if t.contains("\"goodbye\"") => {
                    let v: serde_json::Value = serde_json::from_str(&t).ok()?;
                    return v["reconnect_after_ms"].as_u64();
                }
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    }
}

/// Opens every link (`AT_ONCE` at a time) and keeps each alive in its own task until its
/// goodbye; the upgrades per second, and the tasks (each ending with its goodbye's delay).
async fn open_all(
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> (f64, Vec<tokio::task::JoinHandle<Option<u64>>>) {
    let gate = Arc::new(Semaphore::new(AT_ONCE));
    let start = Instant::now();
    let mut opening = Vec::with_capacity(LINKS);
    for i in 0..LINKS {
        let (gate, tls) = (Arc::clone(&gate), tls.clone());
        opening.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.unwrap();
            let ws = loop {
                match open(addr, tls.as_ref(), &key_of(i)).await {
                    Opened::Up(ws) => break ws,
                    Opened::Refused(after) => {
                        tokio::time::sleep(Duration::from_secs(after.unwrap_or(1))).await
                    }
                    Opened::Failed => panic!("link {i} failed"),
                }
            };
            drop(permit);
            ws
        }));
    }
    let mut held = Vec::with_capacity(LINKS);
    for o in opening {
        let ws = o.await.unwrap();
        held.push(ws);
    }
    let rate = LINKS as f64 / start.elapsed().as_secs_f64();
    (
        rate,
        held.into_iter().map(|ws| tokio::spawn(hold(ws))).collect(),
    )
}

/// Fresh-connection `GET /v1/health` per second, `AT_ONCE` at a time.
async fn health_rate(addr: SocketAddr, tls: Option<Arc<rustls::ClientConfig>>) -> f64 {
    let gate = Arc::new(Semaphore::new(AT_ONCE));
    let start = Instant::now();
    let tasks: Vec<_> = (0..HEALTH_REQUESTS)
        .map(|_| {
            let (gate, tls) = (Arc::clone(&gate), tls.clone());
            tokio::spawn(async move {
                let _permit = gate.acquire().await.unwrap();
                let mut s = stream(addr, tls.as_ref()).await.unwrap();
                s.write_all(
                    format!("GET /v1/health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await
                .unwrap();
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out).await;
                assert!(out.starts_with(b"HTTP/1.1 200"));
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    HEALTH_REQUESTS as f64 / start.elapsed().as_secs_f64()
}

/// What one transport gave.
struct Memory {
    base_kib: f64,
    with_links_kib: f64,
    upgrades_per_s: f64,
    health_per_s: f64,
}

async fn memory(
    data: &Path,
    tls: Option<(&(PathBuf, PathBuf), Arc<rustls::ClientConfig>)>,
) -> Memory {
    let server = serve(
        data,
        "127.0.0.1:0".parse().unwrap(),
        tls.as_ref().map(|(files, _)| *files),
        1_000_000,
    );
    let client = tls.map(|(_, c)| c);
    // The baseline also warms what every connection allocates, so the difference is the
    // links' alone.
    let health_per_s = health_rate(server.addr, client.clone()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let base_kib = server.rss_kib();
    let (upgrades_per_s, held) = open_all(server.addr, client).await;
    // Several heartbeat rounds both ways, then idle between them.
    tokio::time::sleep(Duration::from_millis(4 * HEARTBEAT_MS + 500)).await;
    let with_links_kib = server.rss_kib();
    drop(server);
    for h in held {
        let _ = h.await;
    }
    Memory {
        base_kib,
        with_links_kib,
        upgrades_per_s,
        health_per_s,
    }
}

/// The restart: seconds from SIGTERM until each link was back, the goodbyes' delays, and
/// how many attempts were refused or failed on the way.
async fn restart(data: &Path) -> (Vec<f64>, Vec<u64>, u64) {
    let server = serve(data, "127.0.0.1:0".parse().unwrap(), None, 500);
    let addr = server.addr;
    let (_, held) = open_all(addr, None).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let retries = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status();
    let returns: Vec<_> = held
        .into_iter()
        .enumerate()
        .map(|(i, h)| {
            let retries = Arc::clone(&retries);
            tokio::spawn(async move {
                let told = h.await.unwrap();
                tokio::time::sleep(Duration::from_millis(told.unwrap_or(0))).await;
                let mut attempt = 0u32;
                loop {
                    match open(addr, None, &key_of(i)).await {
                        Opened::Up(_ws) => return (t0.elapsed().as_secs_f64(), told),
                        Opened::Refused(after) => {
                            retries.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_secs(after.unwrap_or(1))).await;
                        }
                        Opened::Failed => {
                            // What an agent does after a failed attempt: full jitter, doubling.
                            retries.fetch_add(1, Ordering::Relaxed);
                            attempt += 1;
                            let cap = 1000u64 << attempt.min(8);
                            let wait = warden_server::link::unit() * cap as f64;
                            tokio::time::sleep(Duration::from_millis(wait as u64)).await;
                        }
                    }
                }
            })
        })
        .collect();
    let mut old = server;
    let _ = old.child.wait();
    // The new server on the same port and database, as soon as the old one is gone.
    let new = serve(data, addr, None, 500);
    let mut back = Vec::with_capacity(LINKS);
    let mut told = Vec::with_capacity(LINKS);
    for r in returns {
        let (t, d) = r.await.unwrap();
        back.push(t);
        if let Some(d) = d {
            told.push(d);
        }
    }
    drop(new);
    (back, told, retries.load(Ordering::Relaxed))
}

fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() - 1) as f64 * p) as usize]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // 10,000 links on each side: raise the open-file limit to the hard one (inherited by the
    // server processes).
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        },
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    rt.block_on(fill(&data));
    let (files, client) = certificate(dir.path());
    eprintln!("plain links…");
    let plain = rt.block_on(memory(&data, None));
    eprintln!(
        "plain: {:.1} KiB per link, {:.0} upgrades/s",
        (plain.with_links_kib - plain.base_kib) / LINKS as f64,
        plain.upgrades_per_s
    );
    eprintln!("TLS links…");
    let tls = rt.block_on(memory(&data, Some((&files, client))));
    eprintln!(
        "TLS: {:.1} KiB per link, {:.0} upgrades/s",
        (tls.with_links_kib - tls.base_kib) / LINKS as f64,
        tls.upgrades_per_s
    );
    eprintln!("restart…");
    let (mut back, told, retries) = rt.block_on(restart(&data));
    back.sort_by(f64::total_cmp);
    let mut per_second = std::collections::BTreeMap::<u64, usize>::new();
    for t in &back {
        *per_second.entry(*t as u64).or_default() += 1;
    }
    let busiest = per_second.values().copied().max().unwrap_or(0);
    let span = back.last().copied().unwrap_or(0.0) - back.first().copied().unwrap_or(0.0);

    println!("warden-server link benchmark ({LINKS} links, same machine, same run)");
    let row = |what: &str, v: f64| println!("{what:<70} {v:>10.1}");
    for (name, m) in [("plain", &plain), ("TLS", &tls)] {
        row(
            &format!("server memory with no link, {name}, KiB"),
            m.base_kib,
        );
        row(
            &format!("server memory with {LINKS} idle links, {name}, KiB"),
            m.with_links_kib,
        );
        row(
            &format!("memory per idle link, {name}, KiB (target <= 16)"),
            (m.with_links_kib - m.base_kib) / LINKS as f64,
        );
        row(
            &format!("link upgrades/s, {name}, {AT_ONCE} at a time"),
            m.upgrades_per_s,
        );
        row(
            &format!("fresh-connection GET /v1/health/s, {name} (baseline)"),
            m.health_per_s,
        );
        row(
            &format!("upgrades / health requests, {name} (ratio)"),
            m.upgrades_per_s / m.health_per_s,
        );
    }
    let told_max = told.iter().max().copied().unwrap_or(0);
    row(
        "restart: goodbyes that named a return time",
        told.len() as f64,
    );
    row(
        "restart: latest return time named, s",
        told_max as f64 / 1000.0,
    );
    row("restart: first link back, s after SIGTERM", pct(&back, 0.0));
    row("restart: median link back, s", pct(&back, 0.5));
    row("restart: 90th percentile back, s", pct(&back, 0.9));
    row("restart: last link back, s", pct(&back, 1.0));
    row("restart: links back in the busiest second", busiest as f64);
    row(
        "restart: mean links back per second over the spread",
        LINKS as f64 / span.max(1.0),
    );
    row(
        "restart: attempts refused or failed on the way",
        retries as f64,
    );
}
