//! Enrollment end to end: the real `warden-agent` binary, run as a throwaway user, against a
//! real `warden-server` (on SQLite, and on PostgreSQL when `WARDEN_TEST_DATABASE_URL` is set)
//! over TLS (a CA made for the test, given as `ca_file`), for every outcome: new, re-install,
//! clone, wrong key, another site, rate limited. Every test also checks that no key reached
//! the agent's log.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use common::{Host, assert_no_secret, certificates, field};
use warden_server::{Config, Running};

/// A server over TLS with site `hq` (and `branch`), and their enrollment keys.
struct Fleet {
    running: Running,
    _dir: tempfile::TempDir,
    certs: tempfile::TempDir,
    ca: PathBuf,
    hq_key: String,
    branch_key: String,
}

impl Fleet {
    async fn start(url: Option<&str>) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let certs = warden_testkit::safe_tempdir();
        let (ca, cert, key) = certificates(certs.path());
        let mut config = Config::new(dir.path().join("data"));
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.tls = Some((cert, key));
        config.database_url = match url {
            Some(base) => Some(fresh_schema(base).await),
            None => None,
        };
        let running = warden_server::start(&config).await.unwrap();
        let db = &running.state.db;
        db.add_site("hq", "HQ", "Acme").await.unwrap();
        db.add_site("branch", "Branch", "Acme").await.unwrap();
        let hq_key = db.rotate_key("hq").await.unwrap().key;
        let branch_key = db.rotate_key("branch").await.unwrap().key;
        Fleet {
            running,
            _dir: dir,
            certs,
            ca,
            hq_key,
            branch_key,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.running.addr.port())
    }

    /// An agent.toml for `host` at `site` with `key`, machine id `id`, short timings.
    fn config(&self, host: &Host, site: &str, key: &str, id: &str, hostname: &str) -> PathBuf {
        let extra = format!(
            "ca_file = \"{}\"\nhostname = \"{hostname}\"\n\n[labels]\ntags = [\"test\"]\n\n\
             [test_overrides]\nmachine_id_override = \"{id}\"\nreconnect_first_ms = 200\n\
             reconnect_cap_ms = 1000\nretry_base_ms = 100\nretry_cap_ms = 500\n\
             rejected_base_ms = 300\nrejected_cap_ms = 5000\npending_poll_ms = 300\n",
            self.ca.display()
        );
        host.config(&self.url(), site, key, &extra)
    }

    /// Enrolls `id` as `hostname` directly (an HTTP client of the test's own).
    async fn enroll_directly(&self, site: &str, key: &str, id: &str, hostname: &str) -> u16 {
        let body = serde_json::json!({
            "site_code": site, "enrollment_key": key, "machine_id": id, "hostname": hostname,
        });
        https_status(
            &self.ca,
            &format!("{}/v1/enroll", self.url()),
            &body.to_string(),
        )
        .await
    }
}

/// POSTs `body` to `url` with curl, trusting `ca`; the status.
async fn https_status(ca: &std::path::Path, url: &str, body: &str) -> u16 {
    let (ca, url, body) = (ca.to_owned(), url.to_owned(), body.to_owned());
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "20",
            ])
            .arg("--cacert")
            .arg(&ca)
            .args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(&body)
            .arg(&url)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    })
    .await
    .unwrap()
}

/// The databases every test runs against: SQLite, and PostgreSQL when
/// `WARDEN_TEST_DATABASE_URL` is set (CI always sets it).
fn backends() -> Vec<Option<String>> {
    let mut v = vec![None];
    match std::env::var("WARDEN_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => v.push(Some(url)),
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI must set WARDEN_TEST_DATABASE_URL so the PostgreSQL tests run")
        }
        _ => eprintln!("WARDEN_TEST_DATABASE_URL is not set: PostgreSQL tests skipped"),
    }
    v
}

/// A fresh schema of its own in the database at `base`, as a URL that uses it.
async fn fresh_schema(base: &str) -> String {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let schema = format!("t_{}", warden_testkit::random_hex(6));
    let mut c = sqlx::AnyConnection::connect(base).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut c)
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

fn machine_id() -> String {
    format!("muid_{}", warden_testkit::random_hex(32))
}

const LONG: Duration = Duration::from_secs(30);

/// Pins: a new host gets 201 and stores its key 0600 in its 0700 state directory, owned by the
/// agent's user; the same hardware re-installed (fresh state, same machine id) gets 200 and a
/// new key; the first key is then dead at the server. No key is in either log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_host_enrolls_and_a_reinstall_is_the_same_machine() {
    for url in backends() {
        let fleet = Fleet::start(url.as_deref()).await;
        let id = machine_id();
        let first_host = Host::new();
        let cfg = fleet.config(&first_host, "hq", &fleet.hq_key, &id, "pc-1");
        let mut agent = first_host.start(&["--config", cfg.to_str().unwrap()]);
        let line = agent.wait_log("enrolled; machine key stored", LONG).await;
        assert!(line.contains("New"), "{line}");
        let md = std::fs::metadata(first_host.key_file()).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o600);
        assert_eq!(md.uid(), first_host.uid());
        let dir = std::fs::metadata(&first_host.state).unwrap();
        assert_eq!((dir.mode() & 0o7777, dir.uid()), (0o700, first_host.uid()));
        let k1 = first_host.stored_key().unwrap();
        // It goes on to link with that key, and keeps it.
        agent.wait_log("link: up", LONG).await;
        assert_eq!(agent.stop().await.unwrap().code(), Some(0));
        assert_eq!(first_host.stored_key().unwrap(), k1);
        let log1 = agent.logs();

        // Re-installed: nothing on disk, same hardware.
        let second_host = Host::new();
        let cfg = fleet.config(&second_host, "hq", &fleet.hq_key, &id, "pc-1");
        let mut agent = second_host.start(&["--config", cfg.to_str().unwrap()]);
        let line = agent.wait_log("enrolled; machine key stored", LONG).await;
        assert!(line.contains("Reuse"), "{line}");
        let k2 = second_host.stored_key().unwrap();
        assert_ne!(k1, k2);
        assert_eq!(agent.stop().await.unwrap().code(), Some(0));
        let db = &fleet.running.state.db;
        assert_eq!(db.machine(&id).await.unwrap().state, "active");
        for log in [log1, agent.logs()] {
            assert_no_secret(&log, &[&fleet.hq_key, &k1, &k2]);
        }
    }
}

/// Pins: a clone (same machine id, another hostname, while the original is live) gets 202,
/// keeps no key and keeps polling no faster than its interval; approved, its next poll gets a
/// key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_waits_pending_and_gets_a_key_once_approved() {
    for url in backends() {
        let fleet = Fleet::start(url.as_deref()).await;
        let id = machine_id();
        assert_eq!(
            fleet
                .enroll_directly("hq", &fleet.hq_key, &id, "pc-1")
                .await,
            201
        );
        let host = Host::new();
        let cfg = fleet.config(&host, "hq", &fleet.hq_key, &id, "pc-2");
        let agent = host.start(&["--config", cfg.to_str().unwrap()]);
        let polls = agent.wait_lines("enrollment: pending", 3, LONG).await;
        for p in &polls {
            let wait = field(p, "wait_ms").unwrap();
            assert!((300..=360).contains(&wait), "{p}");
        }
        assert!(host.stored_key().is_none(), "a pending host stored a key");
        fleet.running.state.db.approve(&id).await.unwrap();
        let line = agent.wait_log("enrolled; machine key stored", LONG).await;
        assert!(line.contains("Reuse"), "{line}");
        let key = host.stored_key().unwrap();
        assert_no_secret(&agent.logs(), &[&fleet.hq_key, &key]);
    }
}

/// Pins: a wrong enrollment key is rejected (401), the agent says what to check, backs off
/// from the base doubling, and keeps no key; fixing the key file is picked up on the next try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_enrollment_key_backs_off_and_keeps_no_key() {
    for url in backends() {
        let fleet = Fleet::start(url.as_deref()).await;
        let id = machine_id();
        let host = Host::new();
        let wrong = format!("wek_{}", warden_testkit::random_hex(32));
        let cfg = fleet.config(&host, "hq", &wrong, &id, "pc-1");
        let agent = host.start(&["--config", cfg.to_str().unwrap()]);
        let lines = agent.wait_lines("enrollment: rejected", 3, LONG).await;
        assert!(lines[0].contains("status=401"), "{}", lines[0]);
        assert!(lines[0].contains("enrollment_key_file"), "{}", lines[0]);
        let waits: Vec<u64> = lines.iter().map(|l| field(l, "wait_ms").unwrap()).collect();
        assert!((300..=360).contains(&waits[0]), "{waits:?}");
        assert!((600..=720).contains(&waits[1]), "{waits:?}");
        assert!((1200..=1440).contains(&waits[2]), "{waits:?}");
        assert!(host.stored_key().is_none());
        // The operator fixes the key file: the next attempt enrolls.
        host.write("enrollment.key", &fleet.hq_key);
        agent.wait_log("enrolled; machine key stored", LONG).await;
        let key = host.stored_key().unwrap();
        assert_no_secret(&agent.logs(), &[&wrong, &fleet.hq_key, &key]);
    }
}

/// Pins: a machine bound to another site gets 409; the agent stops with status 3 (so systemd
/// does not restart it) and says why, keeping no key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_bound_to_another_site_stops() {
    for url in backends() {
        let fleet = Fleet::start(url.as_deref()).await;
        let id = machine_id();
        assert_eq!(
            fleet
                .enroll_directly("hq", &fleet.hq_key, &id, "pc-1")
                .await,
            201
        );
        let host = Host::new();
        let cfg = fleet.config(&host, "branch", &fleet.branch_key, &id, "pc-1");
        let mut agent = host.start(&["--config", cfg.to_str().unwrap()]);
        let status = agent.wait_exit(LONG).await.expect("the agent did not stop");
        assert_eq!(status.code(), Some(3), "{}", agent.logs());
        let line = agent.wait_log("enrollment: stopped", LONG).await;
        assert!(
            line.contains("409") && line.contains("another site"),
            "{line}"
        );
        assert!(host.stored_key().is_none());
        assert_no_secret(&agent.logs(), &[&fleet.branch_key]);
    }
}

/// Pins: rate limited (429), the agent waits exactly Retry-After plus at most 20%, as its log
/// line says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_host_waits_retry_after() {
    for url in backends() {
        let fleet = Fleet::start(url.as_deref()).await;
        // Twenty failures from this address lock it out.
        for _ in 0..warden_server::limiter::FAILURES {
            let wrong = format!("wek_{}", warden_testkit::random_hex(32));
            assert_eq!(
                fleet
                    .enroll_directly("hq", &wrong, &machine_id(), "x")
                    .await,
                401
            );
        }
        let host = Host::new();
        let cfg = fleet.config(&host, "hq", &fleet.hq_key, &machine_id(), "pc-1");
        let agent = host.start(&["--config", cfg.to_str().unwrap()]);
        let line = agent.wait_log("waiting Retry-After", LONG).await;
        assert!(line.contains("status=429"), "{line}");
        let after = field(&line, "retry_after_s").unwrap();
        let wait = field(&line, "wait_ms").unwrap();
        assert!(after > 60, "{line}");
        assert!(
            (after * 1000..=after * 1200).contains(&wait),
            "waited {wait} ms for Retry-After {after} s"
        );
        assert!(host.stored_key().is_none());
        assert_no_secret(&agent.logs(), &[&fleet.hq_key]);
    }
}

/// Pins: without the CA file, the server's certificate is not trusted: no enrollment, the
/// agent says why and retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_server_certificate_is_refused() {
    for url in backends() {
        let fleet = Fleet::start(url.as_deref()).await;
        let host = Host::new();
        let extra = format!(
            "[test_overrides]\nmachine_id_override = \"{}\"\nretry_base_ms = 100\n",
            machine_id()
        );
        let cfg = host.config(&fleet.url(), "hq", &fleet.hq_key, &extra);
        let agent = host.start(&["--config", cfg.to_str().unwrap()]);
        let line = agent.wait_log("enrollment: failed", LONG).await;
        assert!(line.to_lowercase().contains("certificate"), "{line}");
        assert!(host.stored_key().is_none());
        drop(fleet.certs);
    }
}

/// Pins: without a machine id override the agent asks wardend; with no wardend listening it
/// does not enroll under a guessed id: it says which socket it asked and tries again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_wardend_no_enrollment_is_attempted() {
    for url in backends() {
        let fleet = Fleet::start(url.as_deref()).await;
        let host = Host::new();
        let extra = format!(
            "ca_file = \"{}\"\n[test_overrides]\nretry_base_ms = 100\nretry_cap_ms = 300\n",
            fleet.ca.display()
        );
        let cfg = host.config(&fleet.url(), "hq", &fleet.hq_key, &extra);
        let agent = host.start(&["--config", cfg.to_str().unwrap()]);
        let lines = agent
            .wait_lines("enrollment: not ready to ask", 3, LONG)
            .await;
        assert!(lines[0].contains("no-wardend.sock"), "{}", lines[0]);
        assert!(agent.lines("enrollment: rejected").is_empty());
        assert!(host.stored_key().is_none());
        let events = fleet
            .running
            .state
            .db
            .events(None, None, 100)
            .await
            .unwrap();
        assert!(
            events.iter().all(|e| !e.kind.starts_with("enroll.")),
            "{events:?}"
        );
    }
}
