//! Remote dispatch on the agent's side, with the real `warden-agent` (as a throwaway user, in
//! `--dev` over plain TCP), a real `wardend` running the jobs, and the in-test peer standing for
//! the server: the host's actions reported after the Welcome, a Dispatch taken to wardend and
//! answered (once, then from the spool), a job's output arriving as ordered chunks exactly once
//! across a cut link and an agent killed with SIGKILL, the spool's modes, and its cap.
//! The agent asks wardend as the fleet agent: `actions.list {fleet: true}` and `job.start`
//! with its fleet origin, for the host's `remote = true` actions.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::fleet::{Wardend, product_uuid};
use common::peer::{Ws, accept, machine, new_key, next, send, welcome};
use common::{Agent, Host, assert_no_secret, eventually};
use tokio::net::TcpListener;
use warden_fleet_proto::DispatchId;
use warden_fleet_proto::link::{AgentMessage, ServerMessage};

const LONG: Duration = Duration::from_secs(30);
/// Lines `seq` prints for the big job: about 2.7 MB.
const LINES: u64 = 400_000;

/// `seq 1 n`'s output.
fn expected(n: u64) -> String {
    let mut s = String::new();
    for i in 1..=n {
        s.push_str(&i.to_string());
        s.push('\n');
    }
    s
}

/// wardend's actions for these tests: `spew` prints `seq 1 n` at once; `trickle` prints the
/// same lines in 40 rounds 150 ms apart (so a link can be cut or the agent killed mid-job).
fn actions() -> String {
    let param = "[action.params.n]\ntype = \"int\"\nmin = 1\nmax = 10000000\n";
    format!(
        "[[action]]\nname = \"spew\"\ndescription = \"prints numbers\"\n\
         argv = [\"/bin/sh\", \"-c\", \"seq 1 $1\", \"spew\", \"{{n}}\"]\ntier = \"read_only\"\n\
         mutating = false\nremote = true\n{param}\
         [[action]]\nname = \"trickle\"\ndescription = \"prints numbers slowly\"\n\
         argv = [\"/bin/sh\", \"-c\", \"s=$(($1 / 40)); i=0; while [ $i -lt 40 ]; do \
         seq $((i * s + 1)) $((i * s + s)); i=$((i + 1)); sleep 0.15; done\", \"trickle\", \
         \"{{n}}\"]\ntier = \"read_only\"\nmutating = false\nremote = true\n{param}"
    )
}

/// A host: the agent's user, its wardend (the user may run `spew` and `trickle`), and an
/// agent.toml for the peer at `addr` holding `key`, with `extra` test overrides.
struct Site {
    host: Host,
    wardend: Wardend,
    cfg: PathBuf,
    key: String,
}

impl Site {
    async fn new(addr: std::net::SocketAddr, extra: &str) -> Site {
        let host = Host::new();
        let user = host.user.as_ref().map(|u| u.name.clone()).unwrap();
        let wardend = Wardend::start_with(&user, &product_uuid(), &actions()).await;
        let key = new_key();
        let file = host.key_file();
        std::fs::write(&file, serde_json::json!({ "machine_key": key }).to_string()).unwrap();
        host.give(&file, 0o600);
        let enrollment = host.write(
            "enrollment.key",
            &format!("wek_{}\n", warden_testkit::random_hex(16)),
        );
        let text = format!(
            "server_url = \"http://{addr}\"\nsite_code = \"hq\"\nenrollment_key_file = \"{}\"\n\
             state_dir = \"{}\"\nwardend_socket = \"{}\"\nhostname = \"pc-1\"\n\
             [test_overrides]\nmachine_id_override = \"{}\"\nreconnect_first_ms = 200\n\
             reconnect_cap_ms = 500\nwelcome_timeout_ms = 5000\n{extra}",
            enrollment.display(),
            host.state.display(),
            wardend.socket.display(),
            machine(),
        );
        let cfg = host.write("agent.toml", &text);
        Site {
            host,
            wardend,
            cfg,
            key,
        }
    }

    fn start(&self) -> Agent {
        self.start_logging("info")
    }

    fn start_logging(&self, level: &str) -> Agent {
        self.host
            .start_logging(&["--dev", "--config", self.cfg.to_str().unwrap()], level)
    }

    fn spool(&self) -> PathBuf {
        self.host.state.join("spool")
    }
}

fn dispatch_id() -> DispatchId {
    format!("dsp_{}", warden_testkit::random_hex(16))
        .parse()
        .unwrap()
}

fn dispatch(id: &DispatchId, action: &str, n: u64) -> ServerMessage {
    ServerMessage::Dispatch {
        dispatch_id: id.clone(),
        action: action.into(),
        params: serde_json::json!({ "n": n }).as_object().unwrap().clone(),
        operator: "olga".into(),
        server: "fleet-test".into(),
    }
}

/// Accepts the agent's next link and welcomes it.
async fn link(listener: &TcpListener) -> Ws {
    let (ws, _) = accept(listener, None).await;
    let mut ws = ws.unwrap();
    send(&mut ws, &welcome(1000, 60_000, 1)).await;
    ws
}

/// The server's side of one dispatch's output: deduplicates by seq, checks order and offsets.
#[derive(Default)]
struct Received {
    text: String,
    last_seq: u64,
    /// Chunks that arrived again after a reconnect (already held).
    again: u64,
    /// The first seq on each link.
    resumed_at: Vec<u64>,
    /// Jobs named by Accepted answers that came while reading output.
    accepted: Vec<String>,
}

impl Received {
    fn take(&mut self, seq: u64, offset: u64, data: &str) {
        if seq <= self.last_seq {
            self.again += 1;
            return;
        }
        assert_eq!(
            seq,
            self.last_seq + 1,
            "chunk {seq} after {}: a gap",
            self.last_seq
        );
        assert_eq!(
            offset,
            self.text.len() as u64,
            "chunk {seq} at the wrong offset"
        );
        self.text.push_str(data);
        self.last_seq = seq;
    }
}

/// What the peer saw of a dispatch on one link, until `until` says stop.
enum Step {
    Ended {
        state: String,
        exit_code: Option<i32>,
        last_seq: u64,
        truncated: bool,
    },
    Closed,
}

/// Reads the link: output into `rx` (acknowledging every `ack_every` chunks when set), until
/// the dispatch's Ended, the link closing, or `stop_after` chunks on this link.
async fn pump(
    ws: &mut Ws,
    id: &DispatchId,
    rx: &mut Received,
    ack_every: Option<u64>,
    stop_after: Option<u64>,
) -> Step {
    let mut this_link = 0;
    loop {
        let Some(m) = next(ws, LONG).await else {
            return Step::Closed;
        };
        match m {
            AgentMessage::Output {
                dispatch_id,
                seq,
                offset,
                data,
            } if dispatch_id == *id => {
                if this_link == 0 {
                    rx.resumed_at.push(seq);
                }
                this_link += 1;
                rx.take(seq, offset, &data);
                if let Some(n) = ack_every
                    && seq % n == 0
                {
                    send(
                        ws,
                        &ServerMessage::OutputStored {
                            dispatch_id: id.clone(),
                            seq,
                        },
                    )
                    .await;
                }
                if stop_after.is_some_and(|n| this_link >= n) {
                    return Step::Closed;
                }
            }
            AgentMessage::Accepted {
                dispatch_id,
                job_id,
            } if dispatch_id == *id => rx.accepted.push(job_id),
            AgentMessage::Ended {
                dispatch_id,
                state,
                exit_code,
                last_seq,
                output_truncated,
                ..
            } if dispatch_id == *id => {
                return Step::Ended {
                    state,
                    exit_code,
                    last_seq,
                    truncated: output_truncated,
                };
            }
            _ => {}
        }
    }
}

/// The next Accepted or Refused for `id`, skipping everything else.
async fn answer(ws: &mut Ws, id: &DispatchId) -> AgentMessage {
    loop {
        let m = next(ws, LONG).await.expect("the link closed");
        let about = match &m {
            AgentMessage::Accepted { dispatch_id, .. }
            | AgentMessage::Refused { dispatch_id, .. } => dispatch_id,
            _ => continue,
        };
        if about == id {
            return m;
        }
    }
}

fn accepted_job(m: &AgentMessage) -> String {
    match m {
        AgentMessage::Accepted { job_id, .. } => job_id.clone(),
        other => panic!("expected Accepted, got {other:?}"),
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// Pins: after the Welcome the agent reports wardend's actions; a Dispatch is recorded in the
/// spool (0700 directories, 0600 files, the agent's own) and taken to wardend; the same
/// Dispatch sent again is answered from the spool with the same job; a job writing ~2.7 MB
/// arrives as ordered chunks exactly once and ends `succeeded`; chunks are dropped once stored
/// and the dispatch forgotten once its end is stored; wardend's refusal comes back with its
/// kind; no key reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatch_runs_in_wardend_and_its_output_arrives_once_in_order() {
    if !warden_testkit::is_root() {
        eprintln!("skipped: needs root (a throwaway agent user and wardend)");
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site = Site::new(listener.local_addr().unwrap(), "").await;
    let agent = site.start();
    let mut ws = link(&listener).await;
    let actions = loop {
        if let AgentMessage::Actions { actions } = next(&mut ws, LONG).await.unwrap() {
            break actions;
        }
    };
    let names: Vec<&str> = actions.iter().map(|a| a.name.as_str()).collect();
    assert!(
        names.contains(&"spew") && names.contains(&"trickle"),
        "{names:?}"
    );
    let spew = actions.iter().find(|a| a.name == "spew").unwrap();
    assert_eq!(spew.description, "prints numbers");
    assert_eq!(spew.tier, "read_only");
    assert_eq!(spew.params["n"]["type"], "int");

    let id = dispatch_id();
    send(&mut ws, &dispatch(&id, "spew", LINES)).await;
    let job = accepted_job(&answer(&mut ws, &id).await);
    send(&mut ws, &dispatch(&id, "spew", LINES)).await;
    // Unacknowledged: every chunk stays spooled until the end.
    let mut rx = Received::default();
    let mut again = None;
    let end = loop {
        match next(&mut ws, LONG).await.expect("the link closed") {
            AgentMessage::Accepted { job_id, .. } => again = Some(job_id),
            AgentMessage::Output {
                seq, offset, data, ..
            } => rx.take(seq, offset, &data),
            AgentMessage::Ended {
                state,
                exit_code,
                last_seq,
                output_truncated,
                ..
            } => break (state, exit_code, last_seq, output_truncated),
            _ => {}
        }
    };
    assert_eq!(
        again.as_deref(),
        Some(job.as_str()),
        "answered from the spool"
    );
    agent.wait_log("answered from the spool", LONG).await;
    assert_eq!(
        end,
        ("succeeded".to_owned(), Some(0), rx.last_seq, false),
        "{}",
        agent.logs()
    );
    assert_eq!(rx.again, 0);
    assert!(rx.text == expected(LINES), "the output differs");
    assert!(
        rx.last_seq >= 2,
        "{} chunks for 2.7 MB: at most 64 KiB each",
        rx.last_seq
    );

    // The spool: the agent's own, 0700 directories, 0600 files, every chunk still there.
    let dir = site.spool().join(id.as_str());
    let uid = site.host.uid();
    assert_eq!(mode(&site.spool()), 0o700);
    assert_eq!(mode(&dir), 0o700);
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len() as u64, rx.last_seq + 1, "{files:?}");
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
        assert_eq!(std::fs::metadata(f).unwrap().uid(), uid);
    }
    let meta = std::fs::read_to_string(dir.join("meta.json")).unwrap();
    assert!(
        !meta.contains("\"n\""),
        "the dispatch's params are not spooled: {meta}"
    );

    // Stored: the chunks go; the end stored: the dispatch goes.
    send(
        &mut ws,
        &ServerMessage::OutputStored {
            dispatch_id: id.clone(),
            seq: rx.last_seq,
        },
    )
    .await;
    assert!(
        eventually(LONG, || std::fs::read_dir(&dir).unwrap().count() == 1).await,
        "chunks still spooled"
    );
    send(
        &mut ws,
        &ServerMessage::EndStored {
            dispatch_id: id.clone(),
        },
    )
    .await;
    assert!(eventually(LONG, || !dir.exists()).await, "not forgotten");

    // wardend's refusal, with its kind.
    let bad = dispatch_id();
    send(&mut ws, &dispatch(&bad, "no-such-action", 1)).await;
    match answer(&mut ws, &bad).await {
        AgentMessage::Refused { kind, .. } => assert_eq!(kind, "not_found"),
        other => panic!("expected Refused, got {other:?}"),
    }
    assert_no_secret(&agent.logs(), &[&site.key]);
    drop(site.wardend);
}

/// Pins: a link cut mid-job loses nothing: after the reconnect the agent resends every chunk
/// the server has not stored, from the first unstored one, in order, and the job (which ran on
/// in wardend) ends with every byte delivered exactly once; no key in a debug-level log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_resends_unstored_chunks_and_loses_none() {
    if !warden_testkit::is_root() {
        eprintln!("skipped: needs root (a throwaway agent user and wardend)");
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site = Site::new(listener.local_addr().unwrap(), "").await;
    let agent = site.start_logging("debug");
    let mut ws = link(&listener).await;
    let id = dispatch_id();
    send(&mut ws, &dispatch(&id, "trickle", LINES)).await;
    let job = accepted_job(&answer(&mut ws, &id).await);
    let mut rx = Received::default();
    // Acknowledge every 3rd chunk; cut the link after 7 chunks (the 7th not stored).
    assert!(matches!(
        pump(&mut ws, &id, &mut rx, Some(3), Some(7)).await,
        Step::Closed
    ));
    let stored = 6;
    drop(ws);
    let mut ws = link(&listener).await;
    // The server sends an unanswered dispatch again; this one was answered, but the agent
    // must give the same job anyway.
    send(&mut ws, &dispatch(&id, "trickle", LINES)).await;
    let end = pump(&mut ws, &id, &mut rx, Some(3), None).await;
    let Step::Ended {
        state,
        exit_code,
        last_seq,
        truncated,
    } = end
    else {
        panic!("the link closed: {}", agent.logs())
    };
    assert_eq!(
        (state.as_str(), exit_code, truncated),
        ("succeeded", Some(0), false)
    );
    assert_eq!(last_seq, rx.last_seq);
    assert_eq!(
        rx.resumed_at,
        vec![1, stored + 1],
        "resent from the first unstored chunk"
    );
    assert_eq!(rx.again, 7 - stored, "only unstored chunks come again");
    assert_eq!(
        rx.accepted,
        vec![job],
        "the Dispatch sent again: the same job"
    );
    assert!(rx.text == expected(LINES), "the output differs");
    assert_no_secret(&agent.logs(), &[&site.key]);
}

/// Pins: an agent killed with SIGKILL mid-job resumes from its spool when started again: it
/// resends the chunks not stored, follows the job (which ran on in wardend) from the spooled
/// offset, and the job's end arrives with every byte delivered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_resumes_from_its_spool() {
    if !warden_testkit::is_root() {
        eprintln!("skipped: needs root (a throwaway agent user and wardend)");
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site = Site::new(listener.local_addr().unwrap(), "").await;
    let mut agent = site.start();
    let mut ws = link(&listener).await;
    let id = dispatch_id();
    send(&mut ws, &dispatch(&id, "trickle", LINES)).await;
    accepted_job(&answer(&mut ws, &id).await);
    let mut rx = Received::default();
    assert!(matches!(
        pump(&mut ws, &id, &mut rx, Some(2), Some(5)).await,
        Step::Closed
    ));
    // The kill comes once the agent has recorded that chunks 1..=4 are stored.
    let meta = site.spool().join(id.as_str()).join("meta.json");
    let acked = || {
        std::fs::read_to_string(&meta)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["acked_seq"].as_u64())
    };
    assert!(
        eventually(LONG, || acked() == Some(4)).await,
        "{:?}",
        acked()
    );
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    drop(ws);
    let agent = site.start();
    let mut ws = link(&listener).await;
    let Step::Ended {
        state, last_seq, ..
    } = pump(&mut ws, &id, &mut rx, Some(2), None).await
    else {
        panic!("the link closed: {}", agent.logs())
    };
    agent.wait_log("resuming from the spool", LONG).await;
    assert_eq!(state, "succeeded");
    assert_eq!(last_seq, rx.last_seq);
    assert_eq!(
        rx.resumed_at,
        vec![1, 5],
        "resent from the first unstored chunk"
    );
    assert!(rx.text == expected(LINES), "the output differs");
    assert_no_secret(&agent.logs(), &[&site.key]);
}

/// Pins: past the spool's cap the agent stops spooling, says so once in its log, and the end
/// reports `output_truncated`; what was spooled is an exact prefix of the output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spool_cap_truncates_and_says_so() {
    if !warden_testkit::is_root() {
        eprintln!("skipped: needs root (a throwaway agent user and wardend)");
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cap = 256 * 1024;
    let site = Site::new(
        listener.local_addr().unwrap(),
        &format!("spool_cap_bytes = {cap}\n"),
    )
    .await;
    let agent = site.start();
    let mut ws = link(&listener).await;
    let id = dispatch_id();
    send(&mut ws, &dispatch(&id, "spew", LINES)).await;
    accepted_job(&answer(&mut ws, &id).await);
    let mut rx = Received::default();
    let Step::Ended {
        state, truncated, ..
    } = pump(&mut ws, &id, &mut rx, None, None).await
    else {
        panic!("the link closed: {}", agent.logs())
    };
    assert_eq!(state, "succeeded");
    assert!(truncated, "output_truncated");
    assert!(
        rx.text.len() as u64 <= cap,
        "{} bytes spooled",
        rx.text.len()
    );
    assert!(!rx.text.is_empty() && expected(LINES).starts_with(&rx.text));
    assert_eq!(
        agent.lines("output spool is full").len(),
        1,
        "{}",
        agent.logs()
    );
    assert_no_secret(&agent.logs(), &[&site.key]);
}

/// Pins: Cancel from the server becomes wardend's `job.cancel`, also when it comes before
/// wardend answered the Dispatch; the job's progress (`running`) and then its end
/// (`cancelled`) arrive as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_goes_to_wardend_and_the_end_arrives() {
    if !warden_testkit::is_root() {
        eprintln!("skipped: needs root (a throwaway agent user and wardend)");
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site = Site::new(listener.local_addr().unwrap(), "").await;
    let agent = site.start();
    let mut ws = link(&listener).await;
    let id = dispatch_id();
    send(&mut ws, &dispatch(&id, "trickle", LINES)).await;
    accepted_job(&answer(&mut ws, &id).await);
    let mut running = false;
    let mut output = false;
    let end = loop {
        let Some(m) = next(&mut ws, LONG).await else {
            panic!(
                "nothing within {LONG:?}, or the link closed; the agent's log:\n{}",
                agent.logs()
            );
        };
        match m {
            AgentMessage::Progress { state, .. } if state == "running" => running = true,
            AgentMessage::Output { .. } if !output => {
                output = true;
                send(
                    &mut ws,
                    &ServerMessage::Cancel {
                        dispatch_id: id.clone(),
                    },
                )
                .await;
            }
            AgentMessage::Ended { state, .. } => break state,
            _ => {}
        }
    };
    assert!(running, "a Progress said running");
    assert_eq!(end, "cancelled", "{}", agent.logs());
    agent.wait_log("cancelled as the server asked", LONG).await;

    // A Cancel right behind its Dispatch (wardend may not have answered yet) still cancels.
    let id = dispatch_id();
    send(&mut ws, &dispatch(&id, "trickle", LINES)).await;
    send(
        &mut ws,
        &ServerMessage::Cancel {
            dispatch_id: id.clone(),
        },
    )
    .await;
    let end = loop {
        let Some(m) = next(&mut ws, LONG).await else {
            panic!(
                "nothing within {LONG:?}, or the link closed; the agent's log:\n{}",
                agent.logs()
            );
        };
        match m {
            AgentMessage::Ended {
                dispatch_id, state, ..
            } if dispatch_id == id => break state,
            _ => {}
        }
    };
    assert_eq!(end, "cancelled", "{}", agent.logs());
}

/// Pins: the agent reports the host's actions again when wardend's list changes (here after a
/// configuration reload adds one), and not while it stays the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_actions_are_reported_again() {
    if !warden_testkit::is_root() {
        eprintln!("skipped: needs root (a throwaway agent user and wardend)");
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site = Site::new(listener.local_addr().unwrap(), "actions_poll_ms = 200\n").await;
    let agent = site.start();
    let mut ws = link(&listener).await;
    let names = |actions: &[warden_fleet_proto::link::RemoteAction]| -> Vec<String> {
        actions.iter().map(|a| a.name.clone()).collect()
    };
    let mut reports = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < deadline {
        if let Some(AgentMessage::Actions { actions }) =
            next(&mut ws, Duration::from_millis(200)).await
        {
            reports.push(names(&actions));
        }
    }
    assert_eq!(reports.len(), 1, "the same list is sent once: {reports:?}");
    site.wardend.reload_with(
        "[[action]]\nname = \"hello\"\nargv = [\"/bin/echo\", \"hi\"]\ntier = \"read_only\"\n\
         mutating = false\nremote = true\n",
    );
    let changed = loop {
        match next(&mut ws, LONG).await {
            Some(AgentMessage::Actions { actions }) => break names(&actions),
            Some(_) => {}
            None => panic!("the link closed: {}", agent.logs()),
        }
    };
    assert!(changed.contains(&"hello".to_owned()), "{changed:?}");
}

/// Pins: a Cancel for a dispatch whose Dispatch never reached the host is answered `refused
/// {kind: "not_found"}` (nothing ran here), and the Dispatch arriving after it starts nothing;
/// a Dispatch sent again after the server stored a job's end is answered with the same job and
/// its output is not sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_for_an_unknown_dispatch_and_a_dispatch_after_its_end() {
    if !warden_testkit::is_root() {
        eprintln!("skipped: needs root (a throwaway agent user and wardend)");
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site = Site::new(listener.local_addr().unwrap(), "").await;
    let agent = site.start();
    let mut ws = link(&listener).await;

    let id = dispatch_id();
    let cancel = ServerMessage::Cancel {
        dispatch_id: id.clone(),
    };
    send(&mut ws, &cancel).await;
    let refused = |m: AgentMessage| match m {
        AgentMessage::Refused { kind, message, .. } => (kind, message),
        other => panic!("not a refusal: {other:?}"),
    };
    let (kind, message) = refused(answer(&mut ws, &id).await);
    assert_eq!(kind, "not_found", "{message}");
    assert!(message.contains("nothing ran here"), "{message}");
    // The Dispatch overtaken by its Cancel arrives after all: nothing starts.
    send(&mut ws, &dispatch(&id, "spew", 10)).await;
    let (kind, _) = refused(answer(&mut ws, &id).await);
    assert_eq!(kind, "not_found");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        agent.lines("wardend accepted").is_empty(),
        "{}",
        agent.logs()
    );

    // A job runs to its end and the end is stored.
    let id = dispatch_id();
    send(&mut ws, &dispatch(&id, "spew", 10)).await;
    let job = accepted_job(&answer(&mut ws, &id).await);
    let mut rx = Received::default();
    let Step::Ended { last_seq, .. } = pump(&mut ws, &id, &mut rx, Some(1), None).await else {
        panic!("the link closed: {}", agent.logs());
    };
    assert_eq!(rx.text, expected(10));
    send(
        &mut ws,
        &ServerMessage::OutputStored {
            dispatch_id: id.clone(),
            seq: last_seq,
        },
    )
    .await;
    send(
        &mut ws,
        &ServerMessage::EndStored {
            dispatch_id: id.clone(),
        },
    )
    .await;
    agent
        .wait_log("the server stored the end; forgotten", LONG)
        .await;
    // Sent again: the same job, and no output or end a second time.
    send(&mut ws, &dispatch(&id, "spew", 10)).await;
    assert_eq!(accepted_job(&answer(&mut ws, &id).await), job);
    let quiet = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < quiet {
        let Some(m) = next(&mut ws, Duration::from_millis(200)).await else {
            continue;
        };
        match m {
            AgentMessage::Output { dispatch_id, .. }
            | AgentMessage::Ended { dispatch_id, .. }
            | AgentMessage::Progress { dispatch_id, .. }
                if dispatch_id == id =>
            {
                panic!("the ended job is followed again: {}", agent.logs())
            }
            _ => {}
        }
    }
    assert_eq!(agent.lines("wardend accepted").len(), 1, "{}", agent.logs());
}
