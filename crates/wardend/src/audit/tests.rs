//! Tests of the audit log: chaining, flushing, sealing, retention, verification, queries and
//! the per-uid budgets.

use super::record::GENESIS;
use super::verify::{Problem, verify};
use super::*;
use std::io::Write as _;

/// A log in `dir/audit` with its seals in `dir/ledger.db`.
fn open_in(dir: &Path) -> AuditLog {
    AuditLog::open(
        &dir.join("audit"),
        Seals::open(&dir.join("ledger.db")).unwrap(),
        Bus::default(),
        &AuditSettings::default(),
    )
    .unwrap()
}

fn event(n: u32) -> Event {
    Event {
        job_id: Some(format!("job_{n:016x}")),
        ..Event::new(Kind::Job)
    }
}

/// A log of `n` records in a fresh directory; returns the directory, the log and its head.
async fn log_of(n: u32) -> (tempfile::TempDir, PathBuf, Head) {
    let dir = tempfile::tempdir().unwrap();
    let log = open_in(dir.path());
    for i in 1..n {
        log.record(event(i));
    }
    let head = log.record_durable(&event(n)).await.unwrap();
    let path = log.path().to_owned();
    log.close();
    (dir, path, head)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

/// Pins: a record's line is the event's fields after seq, ts and prev, as one JSON object.
#[test]
fn a_record_is_one_object_seq_first() {
    let body = body_of(&event(3)).unwrap();
    let line = encode(7, "2026-11-29T23:00:00.000Z", GENESIS, &body).unwrap();
    let text = String::from_utf8(line).unwrap();
    assert!(
        text.starts_with("{\"seq\":7,\"ts\":\"2026-11-29T23:00:00.000Z\",\"prev\":\"000"),
        "{text}"
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["event"], "job");
    assert_eq!(v["job_id"], format!("job_{:016x}", 3));
    assert_eq!(v.as_object().unwrap().len(), 5);
}

/// Pins: a durable record returns only after a flush of the log; a plain one causes none.
#[tokio::test]
async fn a_durable_record_is_flushed_before_it_is_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_in(dir.path());
    log.record(event(1));
    log.record_durable(&event(2)).await.unwrap();
    assert_eq!(log.syncs(), 1, "acknowledged after exactly one flush");
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert_eq!(text.lines().count(), 2);
    log.close();
}

/// Pins: records the disk refuses (every write fails with ENOSPC, every flush with EINVAL)
/// are answered with errors, never acknowledged, and the log goes on answering.
#[tokio::test]
async fn a_record_that_cannot_be_written_is_refused_not_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir.path().join("audit"))
        .unwrap();
    std::os::unix::fs::symlink("/dev/full", dir.path().join("audit").join(FILE)).unwrap();
    let log = open_in(dir.path());
    for n in 0..3 {
        let refused = log.record_durable(&event(n)).await;
        assert!(matches!(refused, Err(AuditError::Io(_))), "{refused:?}");
    }
    log.record(event(3));
    assert!(log.flush().await.is_err());
    assert!(matches!(
        log.record_durable(&event(4)).await,
        Err(AuditError::Io(_))
    ));
    log.close();
}

/// Pins: records chain from GENESIS with consecutive seq, the files are private, and an
/// untouched log verifies.
#[tokio::test]
async fn an_untouched_log_verifies_and_is_private() {
    let (dir, path, head) = log_of(10).await;
    assert_eq!(head.seq, 10);
    let all = lines(&path);
    assert_eq!(all.len(), 10);
    let first: Value = serde_json::from_str(&all[0]).unwrap();
    assert_eq!(
        (first["seq"].as_u64(), first["prev"].as_str()),
        (Some(1), Some(GENESIS))
    );
    assert_eq!(first["event"], "job");
    assert_eq!(hash(all[9].as_bytes()), head.hash);
    assert_eq!(
        hash(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "SHA-256, in lowercase hex"
    );
    assert_eq!(
        verify(&path, Some(&head), &[]).unwrap(),
        Verdict::Intact { records: 10 }
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&dir.path().join("audit")), 0o700);
}

/// Pins: each kind of tampering is found at the first record it touches.
#[tokio::test]
async fn tampering_is_named_at_its_first_bad_record() {
    let (_dir, path, head) = log_of(10).await;
    let good = lines(&path);
    let check = |lines: Vec<String>, head: Option<&Head>| {
        write_lines(&path, &lines);
        verify(&path, head, &[]).unwrap()
    };
    // A byte changed inside record 4 (not its seq).
    let mut edited = good.clone();
    edited[3] = edited[3].replace("\"job\"", "\"jab\"");
    assert_eq!(
        check(edited, Some(&head)),
        Verdict::Broken {
            seq: 4,
            problem: Problem::Modified
        }
    );
    // The last record changed: only the daemon's head can tell.
    let mut last = good.clone();
    last[9] = last[9].replace("\"job\"", "\"jab\"");
    assert_eq!(
        check(last.clone(), Some(&head)),
        Verdict::Broken {
            seq: 10,
            problem: Problem::Modified
        }
    );
    assert_eq!(check(last, None), Verdict::Intact { records: 10 });
    // Record 5 deleted.
    let mut deleted = good.clone();
    deleted.remove(4);
    assert_eq!(
        check(deleted, Some(&head)),
        Verdict::Broken {
            seq: 5,
            problem: Problem::Missing
        }
    );
    // Records 6 and 7 swapped.
    let mut swapped = good.clone();
    swapped.swap(5, 6);
    assert_eq!(
        check(swapped, Some(&head)),
        Verdict::Broken {
            seq: 6,
            problem: Problem::Reordered
        }
    );
    // The last three cut off.
    let cut = good[..7].to_vec();
    assert_eq!(
        check(cut, Some(&head)),
        Verdict::Broken {
            seq: 8,
            problem: Problem::Truncated
        }
    );
    // A record's own number changed.
    let mut renumbered = good.clone();
    renumbered[2] = renumbered[2].replacen("\"seq\":3", "\"seq\":30", 1);
    assert_eq!(
        check(renumbered, Some(&head)),
        Verdict::Broken {
            seq: 3,
            problem: Problem::Modified
        }
    );
    // Garbage in place of a record.
    let mut garbage = good.clone();
    garbage[0] = "not json".into();
    assert_eq!(
        check(garbage, Some(&head)),
        Verdict::Broken {
            seq: 1,
            problem: Problem::Modified
        }
    );
    assert_eq!(check(good, Some(&head)), Verdict::Intact { records: 10 });
}

/// Pins: a reopened log continues the chain, after cutting off a last line a crash left half
/// written.
#[tokio::test]
async fn a_reopened_log_continues_its_chain_past_a_torn_line() {
    let (dir, path, _) = log_of(3).await;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(b"{\"seq\":4,\"ts\":\"2026").unwrap();
    drop(f);
    let log = open_in(dir.path());
    let head = log.record_durable(&event(4)).await.unwrap();
    log.close();
    assert_eq!(head.seq, 4);
    assert_eq!(
        verify(&path, Some(&head), &[]).unwrap(),
        Verdict::Intact { records: 4 }
    );
}

/// Pins: concurrent durable records all land, each acknowledged only once on disk, in one
/// unbroken chain.
/// Pins: the head is sealed every SEAL_EVERY records and at close; a log cut short while
/// the daemon was stopped is found short of its last seal, and a reopened log goes on from
/// the seal so the gap stays visible.
#[tokio::test]
async fn seals_find_a_log_cut_short_while_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_in(dir.path());
    for i in 0..2499 {
        log.record(event(i));
    }
    log.record_durable(&event(2499)).await.unwrap();
    let path = log.path().to_owned();
    log.close();
    drop(log);
    let seals = Seals::open(&dir.path().join("ledger.db"))
        .unwrap()
        .all()
        .unwrap();
    let sealed: Vec<u64> = seals.iter().map(|h| h.seq).collect();
    assert_eq!(sealed, [1000, 2000, 2500]);
    assert_eq!(
        verify(&path, None, &seals).unwrap(),
        Verdict::Intact { records: 2500 }
    );

    let cut: Vec<String> = lines(&path)[..1500].to_vec();
    write_lines(&path, &cut);
    assert_eq!(
        verify(&path, None, &seals).unwrap(),
        Verdict::Broken {
            seq: 1501,
            problem: Problem::Truncated
        }
    );
    let log = open_in(dir.path());
    let head = log.record_durable(&event(9)).await.unwrap();
    assert_eq!(head.seq, 2501, "the chain goes on from the last seal");
    let seals = log.seals().unwrap();
    assert_eq!(
        verify(&path, Some(&head), &seals).unwrap(),
        Verdict::Broken {
            seq: 1501,
            problem: Problem::Missing
        }
    );
    log.close();
}

/// Pins: a query selects by uid, action, job, decision, time and position, newest `limit`
/// last.
#[tokio::test]
async fn queries_narrow_by_each_field() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_in(dir.path());
    for uid in [1000, 1001, 1000] {
        log.record(Event {
            peer: Some(Peer {
                uid,
                gid: uid,
                pid: 1,
                exe: None,
                client: None,
            }),
            action: Some("restart-unit".into()),
            decision: Some(if uid == 1000 { "deny" } else { "allow" }.into()),
            ..Event::new(Kind::Request)
        });
    }
    let head = log.record_durable(&event(7)).await.unwrap();
    let path = log.path().to_owned();
    log.close();
    let seqs = |f: Filter, limit| -> Vec<u64> {
        query(&path, &f, limit)
            .unwrap()
            .0
            .iter()
            .map(|r| r["seq"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(seqs(Filter::default(), 100), [1, 2, 3, 4]);
    assert_eq!(
        seqs(Filter::default(), 2),
        [3, 4],
        "the newest, oldest first"
    );
    assert_eq!(
        seqs(
            Filter {
                uid: Some(1000),
                ..Filter::default()
            },
            100
        ),
        [1, 3]
    );
    assert_eq!(
        seqs(
            Filter {
                decision: Some("allow".into()),
                ..Filter::default()
            },
            100
        ),
        [2]
    );
    assert_eq!(
        seqs(
            Filter {
                job_id: Some(format!("job_{:016x}", 7)),
                ..Filter::default()
            },
            100
        ),
        [4]
    );
    assert_eq!(
        seqs(
            Filter {
                after_seq: Some(2),
                ..Filter::default()
            },
            100
        ),
        [3, 4]
    );
    let future = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
    assert!(
        seqs(
            Filter {
                since: Some(future),
                ..Filter::default()
            },
            100
        )
        .is_empty()
    );
    assert_eq!(
        seqs(
            Filter {
                until: Some(future),
                ..Filter::default()
            },
            100
        )
        .len(),
        4
    );
    assert_eq!(head.seq, 4);
}

/// Pins: the live file is closed into segments as it fills; verify and query read across
/// them as one chain; a restart on a freshly begun (empty) live file goes on from the last
/// segment.
#[tokio::test]
async fn the_chain_goes_on_across_rotated_segments() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        AuditLog::open(
            &dir.path().join("audit"),
            Seals::open(&dir.path().join("ledger.db")).unwrap(),
            Bus::default(),
            &AuditSettings {
                segment_bytes: 4096,
                keep_segments: 1_000_000,
                ..AuditSettings::default()
            },
        )
        .unwrap()
    };
    let log = open();
    for i in 0..200 {
        log.record_durable(&event(i)).await.unwrap();
    }
    let path = log.path().to_owned();
    log.close();
    drop(log);
    let segs = segments(&path).unwrap();
    assert!(segs.len() > 3, "{segs:?}");
    use std::os::unix::fs::PermissionsExt;
    for s in &segs {
        let mode = std::fs::metadata(s).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", s.display());
    }
    let seals = Seals::open(&dir.path().join("ledger.db"))
        .unwrap()
        .all()
        .unwrap();
    assert_eq!(
        verify(&path, None, &seals).unwrap(),
        Verdict::Intact { records: 200 }
    );
    assert_eq!(query(&path, &Filter::default(), 1000).unwrap().0.len(), 200);

    // As if the daemon stopped right after closing a segment.
    let last = lines(&path).len() as u64;
    let closed = path.with_file_name(format!("audit.{:012}.log", 200));
    std::fs::rename(&path, &closed).unwrap();
    std::fs::write(&path, b"").unwrap();
    assert!(last > 0);
    let log = open();
    let head = log.record_durable(&event(201)).await.unwrap();
    assert_eq!(head.seq, 201);
    log.close();
    let seals = Seals::open(&dir.path().join("ledger.db"))
        .unwrap()
        .all()
        .unwrap();
    assert_eq!(
        verify(&path, Some(&head), &seals).unwrap(),
        Verdict::Intact { records: 201 }
    );
}

/// Pins: a uid gets DENIALS_RECORDED denial records per window, the rest are counted into
/// one summary, and another uid is not affected.
#[test]
fn denial_floods_are_summed_up_per_uid() {
    let d = Denials::default();
    let t0 = std::time::Instant::now();
    let verdicts: Vec<(bool, bool)> = (0..250).map(|_| d.admit(1000, t0)).collect();
    assert_eq!(
        verdicts.iter().filter(|v| v.0).count(),
        DENIALS_RECORDED as usize
    );
    assert_eq!(
        verdicts.iter().filter(|v| v.1).count(),
        1,
        "the flood begins once"
    );
    assert!(verdicts[DENIALS_RECORDED as usize].1);
    assert!(d.admit(1001, t0).0, "another uid has its own share");
    assert!(
        d.summaries(t0, false).is_empty(),
        "the window is still open"
    );
    let later = t0 + DENIAL_WINDOW;
    let sums = d.summaries(later, false);
    assert_eq!(sums.len(), 1);
    assert_eq!(sums[0].peer.as_ref().unwrap().uid, 1000);
    assert!(
        sums[0]
            .reason
            .as_ref()
            .unwrap()
            .starts_with("150 more denials"),
        "{:?}",
        sums[0].reason
    );
    assert!(d.admit(1000, later).0, "a new window records again");
}

/// A log in `dir/audit` closing segments at 4 KiB and keeping `keep` of them.
fn open_small(dir: &Path, keep: usize) -> AuditLog {
    AuditLog::open(
        &dir.join("audit"),
        Seals::open(&dir.join("ledger.db")).unwrap(),
        Bus::default(),
        &AuditSettings {
            segment_bytes: 4096,
            keep_segments: keep,
            ..AuditSettings::default()
        },
    )
    .unwrap()
}

/// The seals and anchor of the log in `dir`.
fn sealed(dir: &Path) -> (Vec<Head>, Option<Head>) {
    let s = Seals::open(&dir.join("ledger.db")).unwrap();
    (s.all().unwrap(), s.anchor().unwrap())
}

/// Pins: retention removes the oldest segments past `keep_segments`, records what it removed
/// (segments, seq range, hash at the cut) and seals; what remains verifies from the anchor,
/// and tampering in a kept segment, removing more than retention did, or truncating the
/// newest records is still found.
#[tokio::test]
async fn retention_removes_old_segments_and_what_remains_still_proves_itself() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_small(dir.path(), 3);
    // Durable every few records: the live file is closed between rounds of the flusher.
    for i in 0..400 {
        log.record(event(i));
        if i % 4 == 0 {
            log.flush().await.unwrap();
        }
    }
    let head = log.record_durable(&event(400)).await.unwrap();
    let path = log.path().to_owned();
    // The log may be checked while the daemon writes (see `AuditLog::verify`).
    let (verdict, anchored) = log.verify(Some(&head)).unwrap();
    assert!(anchored.is_some());
    assert!(matches!(verdict, Verdict::Intact { .. }), "{verdict:?}");
    log.close();
    drop(log);
    // The truncation check at the end cuts three records off the live file. The flusher's last
    // round may have rotated (a retention record of its own), leaving the live file nearly
    // empty: then the daemon, opened again, writes records until it holds three (a rotation
    // on the way starts it over; a segment holds a dozen or more).
    let live_records = || std::fs::read_to_string(&path).map_or(0, |t| t.lines().count());
    if live_records() < 3 {
        let log = open_small(dir.path(), 3);
        let mut i = 900;
        while live_records() < 3 {
            assert!(i < 960, "the live file never held three records");
            log.record_durable(&event(i)).await.unwrap();
            i += 1;
        }
        log.close();
    }
    let segs = segments(&path).unwrap();
    assert_eq!(segs.len(), 3, "{segs:?}");
    let (seals, anchor) = sealed(dir.path());
    let anchor = anchor.expect("an anchor once segments were removed");
    assert_eq!(
        anchor.seq + 1,
        segment_last_seq(&segs[0]).unwrap() + 1 - lines(&segs[0]).len() as u64,
        "the anchor is the record just before the oldest kept"
    );
    let first_kept: Value = serde_json::from_str(&lines(&segs[0])[0]).unwrap();
    assert_eq!(first_kept["prev"], anchor.hash.as_str());
    // What retention removed is on record, and sealed.
    let cuts: Vec<Value> = query(&path, &Filter::default(), 1000)
        .unwrap()
        .0
        .into_iter()
        .filter(|r| r["event"] == "audit.retention")
        .collect();
    let last_cut = cuts.last().expect("a retention record");
    assert_eq!(last_cut["params"]["last_seq"], anchor.seq);
    assert_eq!(last_cut["params"]["hash"], anchor.hash.as_str());
    let cut_seq = last_cut["seq"].as_u64().unwrap();
    assert!(seals.iter().any(|s| s.seq == cut_seq), "the cut is sealed");
    // The flusher may chain a retention record of its own after `head`: all are verified.
    let last_seq = match lines(&path).last() {
        Some(line) => serde_json::from_str::<Value>(line).unwrap()["seq"]
            .as_u64()
            .unwrap(),
        None => segment_last_seq(segs.last().unwrap()).unwrap(),
    };
    assert!(last_seq >= head.seq);
    assert_eq!(
        verify_from(&path, Some(&head), &seals, Some(&anchor)).unwrap(),
        Verdict::Intact {
            records: last_seq - anchor.seq
        }
    );

    // A changed record in a kept segment.
    let good = lines(&segs[1]);
    let mut edited = good.clone();
    // Every record has a time (whatever its event: a job's, or a retention record's).
    edited[2] = edited[2].replacen("\"ts\":\"", "\"ts\":\"9", 1);
    assert_ne!(edited[2], good[2]);
    let edited_seq = serde_json::from_str::<Value>(&good[2]).unwrap()["seq"]
        .as_u64()
        .unwrap();
    write_lines(&segs[1], &edited);
    assert_eq!(
        verify_from(&path, None, &seals, Some(&anchor)).unwrap(),
        Verdict::Broken {
            seq: edited_seq,
            problem: Problem::Modified
        }
    );
    write_lines(&segs[1], &good);
    // The oldest kept segment removed too, beyond what retention did.
    let oldest = lines(&segs[0]);
    std::fs::remove_file(&segs[0]).unwrap();
    assert_eq!(
        verify_from(&path, None, &seals, Some(&anchor)).unwrap(),
        Verdict::Broken {
            seq: anchor.seq + 1,
            problem: Problem::Missing
        }
    );
    write_lines(&segs[0], &oldest);
    // The newest records cut off.
    let live = lines(&path);
    let cut_at = serde_json::from_str::<Value>(&live[live.len() - 3]).unwrap()["seq"]
        .as_u64()
        .unwrap();
    write_lines(&path, &live[..live.len() - 3]);
    let (seals, anchor) = sealed(dir.path());
    assert_eq!(
        verify_from(&path, None, &seals, anchor.as_ref()).unwrap(),
        Verdict::Broken {
            seq: cut_at,
            problem: Problem::Truncated
        }
    );
}

/// Pins: a cut that a crash interrupted after moving the anchor (its segments still there)
/// is finished at the next open, and the log goes on verifying.
#[tokio::test]
async fn a_cut_interrupted_by_a_crash_is_finished_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_small(dir.path(), 1_000_000);
    for i in 0..200 {
        log.record_durable(&event(i)).await.unwrap();
    }
    let path = log.path().to_owned();
    log.close();
    drop(log);
    let segs = segments(&path).unwrap();
    assert!(segs.len() > 3);
    // As if the anchor was moved past the first two segments, then the daemon died.
    let last = lines(&segs[1]).pop().unwrap();
    let mut seals = Seals::open(&dir.path().join("ledger.db")).unwrap();
    seals
        .set_anchor(&Head {
            seq: segment_last_seq(&segs[1]).unwrap(),
            hash: hash(last.as_bytes()),
        })
        .unwrap();
    drop(seals);
    let log = open_small(dir.path(), 1_000_000);
    let head = log.record_durable(&event(9)).await.unwrap();
    log.close();
    assert!(!segs[0].exists() && !segs[1].exists() && segs[2].exists());
    let (seals, anchor) = sealed(dir.path());
    assert!(matches!(
        verify_from(&path, Some(&head), &seals, anchor.as_ref()).unwrap(),
        Verdict::Intact { .. }
    ));
}

/// Pins: `verify` holds one line at a time, not the log: checking a 36 MiB log in three
/// segments, a child process peaks well below the log's size (its `VmHWM`).
#[test]
fn verify_holds_a_line_at_a_time_not_the_log() {
    const CHILD: &str = "WARDEN_TEST_VERIFY_LOG";
    if let Some(live) = std::env::var_os(CHILD) {
        let verdict = verify_from(Path::new(&live), None, &[], None).unwrap();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .unwrap()
            .trim()
            .trim_end_matches("kB")
            .trim()
            .to_owned();
        println!("verdict={verdict:?} hwm_kib={hwm}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join(FILE);
    // Records of 4 KiB, chained, in three segments of 12 MiB each.
    let pad = "x".repeat(4000);
    let mut head = Head {
        seq: 0,
        hash: GENESIS.to_owned(),
    };
    let per_segment = (12 << 20) / 4096;
    for segment in 0..3 {
        let mut text = Vec::with_capacity(13 << 20);
        for _ in 0..per_segment {
            let body = body_of(&Event {
                reason: Some(pad.clone()),
                ..Event::new(Kind::Job)
            })
            .unwrap();
            let line = encode(head.seq + 1, "2026-11-29T23:00:00.000Z", &head.hash, &body).unwrap();
            head = Head {
                seq: head.seq + 1,
                hash: hash(&line),
            };
            text.extend_from_slice(&line);
            text.push(b'\n');
        }
        let file = if segment < 2 {
            live.with_file_name(format!("audit.{:012}.log", head.seq))
        } else {
            live.clone()
        };
        std::fs::write(file, text).unwrap();
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "audit::tests::verify_holds_a_line_at_a_time_not_the_log",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, &live)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let records = 3 * per_segment;
    assert!(
        text.contains(&format!("verdict=Intact {{ records: {records} }}")),
        "{text}"
    );
    let hwm: u64 = text
        .split("hwm_kib=")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap();
    println!("verifying a 36 MiB log peaked at {hwm} KiB");
    assert!(
        hwm < 24 << 10,
        "verifying a 36 MiB log peaked at {hwm} KiB: it holds the log"
    );
}

/// Pins: a query with `after_seq` answers the first `limit` records after it and says
/// there are more, so paging from 0 returns every record exactly once; limit 0 answers
/// nothing, and without `after_seq` the newest `limit` come with `more` too.
#[tokio::test]
async fn paging_with_after_seq_returns_every_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_small(dir.path(), 1_000_000);
    for i in 0..249 {
        log.record(event(i));
        if i % 4 == 0 {
            log.flush().await.unwrap();
        }
    }
    let head = log.record_durable(&event(249)).await.unwrap();
    let path = log.path().to_owned();
    log.close();
    assert!(segments(&path).unwrap().len() > 2);
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let f = Filter {
            after_seq: Some(after),
            ..Filter::default()
        };
        let (page, more) = query(&path, &f, 40).unwrap();
        assert!(page.len() <= 40);
        seen.extend(page.iter().map(|r| r["seq"].as_u64().unwrap()));
        if !more {
            break;
        }
        after = *seen.last().unwrap();
    }
    assert_eq!(seen, (1..=head.seq).collect::<Vec<_>>());
    assert_eq!(query(&path, &Filter::default(), 0).unwrap().0.len(), 0);
    let (newest, more) = query(&path, &Filter::default(), 10).unwrap();
    assert!(more);
    assert_eq!(newest.last().unwrap()["seq"], head.seq);
}

/// Pins: a uid gets `per_window` recorded requests a minute, then waits for its window;
/// another uid and root are not affected.
#[test]
fn recorded_requests_are_budgeted_per_uid() {
    let c = Changes::new(3);
    let t0 = std::time::Instant::now();
    for _ in 0..3 {
        assert!(c.admit(1000, t0).is_ok());
    }
    let wait = c
        .admit(1000, t0 + std::time::Duration::from_secs(10))
        .unwrap_err();
    assert_eq!(wait, std::time::Duration::from_secs(50));
    assert!(c.admit(1001, t0).is_ok());
    for _ in 0..10 {
        assert!(c.admit(0, t0).is_ok(), "root is not counted");
    }
    assert!(c.admit(1000, t0 + DENIAL_WINDOW).is_ok(), "a new window");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_durable_records_share_flushes_and_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let log = std::sync::Arc::new(open_in(dir.path()));
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.record_durable(&event(i)).await.unwrap().seq })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap());
    }
    // Without group commit, 200 durable records would take 200 flushes.
    let syncs = log.syncs();
    assert!(syncs < 200, "{syncs} flushes for 200 durable records");
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 200, "every record got a place of its own");
    let head = log.flush().await.unwrap();
    assert_eq!(head.seq, 200);
    assert_eq!(
        verify(log.path(), Some(&head), &[]).unwrap(),
        Verdict::Intact { records: 200 }
    );
}
