//! Several MiB of output across a cut link and a server restart, mid-job.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::fleet::{PATIENCE, on_each_backend};
use crate::{Fleet, SPEW, expected};

/// Pins: a job writing several MiB (`seq 1 800000`, 5.7 MB, over about 10 s) keeps running
/// while the agent's link is cut (a TCP proxy drops it and refuses new connections for a
/// second) and while the server restarts (SIGTERM, serve again), both mid-job; the stored
/// output is every byte the job wrote exactly once, in order (chunks numbered from 1 with no
/// gap, each at the offset the bytes before it end). After the end was stored, the agent
/// restarting and linking again is not sent the ended dispatch again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_mib_survive_a_cut_link_and_a_server_restart() {
    if !warden_testkit::root_or_skip("several_mib_survive_a_cut_link_and_a_server_restart") {
        return;
    }
    on_each_backend(|db| async move {
        let mut f = Fleet::start(db, &[""], "", true).await;
        let mid = f.ids[0].clone();
        let d = f.dispatch(json!({"target": {"machines": [mid]}, "action": "spew",
            "params": {"n": SPEW}}));
        let id = d["dispatch"]["dispatch_id"].as_str().unwrap().to_owned();
        let stored = |f: &Fleet| {
            let v = f.show(&id);
            let p = Fleet::part(&v, &mid);
            (
                p["last_seq"].as_i64().unwrap(),
                p["state"].as_str().unwrap().to_owned(),
            )
        };
        let wait_stored = |f: &Fleet, n: i64| {
            let end = Instant::now() + PATIENCE;
            loop {
                let (seq, state) = stored(f);
                if seq >= n {
                    return (seq, state);
                }
                assert!(
                    Instant::now() < end,
                    "output stuck at {seq} ({state}); the agent's log:\n{}",
                    f.agents[0].logs()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        };

        // The link is cut mid-job.
        let (at_cut, state) = wait_stored(&f, 5);
        assert_eq!(state, "running");
        f.proxy.as_ref().unwrap().cut();
        tokio::time::sleep(Duration::from_secs(1)).await;
        f.proxy.as_ref().unwrap().mend();
        // The server restarts mid-job.
        let (at_restart, state) = wait_stored(&f, at_cut + 10);
        assert_eq!(state, "running", "the job ended before the restart");
        f.server.stop().await;
        f.server.run().await;
        let v = f.wait_done(&id).await;
        let part = Fleet::part(&v, &mid);
        assert_eq!(part["state"], "succeeded", "{part}");
        assert_eq!(part["output_truncated"], false, "{part}");
        let (chunks, page) = f.output(&id, &mid);
        assert_eq!(page["complete"], true, "{page}");
        let mut text = String::new();
        for (i, (seq, offset, data)) in chunks.iter().enumerate() {
            assert_eq!(*seq, i as i64 + 1, "a gap or a repeat at chunk {seq}");
            assert_eq!(
                *offset,
                text.len() as i64,
                "chunk {seq} at the wrong offset"
            );
            text.push_str(data);
        }
        let want = expected(SPEW);
        assert_eq!(text.len(), want.len(), "bytes stored / written");
        assert!(
            text == want,
            "the stored output differs from what the job wrote"
        );
        let ups = f.agents[0].lines("link: up").len();
        assert!(
            ups >= 3,
            "the link came up {ups} times: {}",
            f.agents[0].logs()
        );
        eprintln!(
            "{}: {} bytes in {} chunks, exactly once; link cut after chunk {at_cut}, server \
             restarted after chunk {at_restart}; the link came up {ups} times",
            f.server.name(),
            text.len(),
            chunks.len()
        );

        // The end is stored: an agent restarted now is not sent the dispatch again.
        f.agents[0].stop().await;
        let agent = f.hosts[0].start("");
        agent.wait_log("link: up", PATIENCE).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(agent.lines(&id).is_empty(), "{}", agent.logs());
    })
    .await;
}
