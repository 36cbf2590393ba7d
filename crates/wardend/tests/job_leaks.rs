//! Many jobs in a row leave nothing behind. In a test binary of its own: it counts the
//! process's descriptors and children, which parallel tests in the same process would disturb.

#![allow(clippy::unwrap_used)]

mod common;

use common::TestDaemon;
use serde_json::Map;
use warden_client::Client;
use warden_proto::jobs::JobState;

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn children() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .map(|t| {
            std::fs::read_to_string(t.path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .count()
        })
        .sum()
}

/// Pins: a thousand jobs in a row leave no descriptor, process or growing memory behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_jobs_leave_nothing_behind() {
    let d = TestDaemon::start(&format!(
        "[limits]\nrequests_per_second = 100000\nburst = 100000\nuid_requests_per_second = 100000\nuid_burst = 100000\n[jobs]\nkeep_finished = 100\n{}",
        "[[action]]\nname = \"true\"\nargv = [\"/bin/true\"]\ntier = \"read_only\"\nmutating = false\n"
    ));
    let mut c = Client::connect(d.socket(), "leaks").await.unwrap();
    let mut run = async |n: usize| {
        for _ in 0..n {
            let id = c.start("true", &Map::new(), None).await.unwrap().job_id;
            let r = c.wait(id.as_str(), 30_000).await.unwrap();
            assert_eq!(r.state, JobState::Succeeded);
        }
    };
    run(150).await;
    let (fds, kids, rss) = (fd_count(), children(), warden_testkit::rss_kib());
    run(850).await;
    assert_eq!(fd_count(), fds, "descriptors leaked");
    assert_eq!(children(), kids, "processes left behind");
    assert_eq!(kids, 0);
    let grew = warden_testkit::rss_kib().saturating_sub(rss);
    assert!(grew < 4096, "memory grew by {grew} KiB over 850 jobs");
}
