//! The journaled index: durable appends, replay, idempotent folding, torn and damaged lines.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::pki::{CertKind, Names};

fn rec(serial: &str) -> CertRecord {
    CertRecord {
        serial: serial.into(),
        kind: CertKind::Client,
        names: Names {
            common_name: format!("cn-{serial}"),
            ..Names::default()
        },
        not_before: OffsetDateTime::UNIX_EPOCH,
        not_after: OffsetDateTime::UNIX_EPOCH + time::Duration::days(1),
        fingerprint_sha256: String::new(),
        revoked_at: None,
        key_held: false,
        from_csr: false,
        key_algorithm: "ECDSA P-256".into(),
        certificate_pem: String::new(),
    }
}

fn log_lines(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("index.log"))
        .unwrap_or_default()
        .lines()
        .count()
}

#[test]
fn changes_are_journaled_and_replayed_without_rewriting_the_snapshot() {
    let d = tempfile::tempdir().unwrap();
    let mut s = Store::open(d.path()).unwrap();
    s.settle().unwrap();
    let snapshot = std::fs::read(d.path().join("index.json")).unwrap();
    for i in 0..10 {
        s.insert(rec(&format!("{i:02x}")), None).unwrap();
    }
    s.revoke("03", OffsetDateTime::now_utc()).unwrap();
    assert_eq!(s.next_crl_number().unwrap(), 1);
    assert_eq!(log_lines(d.path()), 12);
    assert_eq!(
        std::fs::read(d.path().join("index.json")).unwrap(),
        snapshot
    );
    drop(s);
    // A fresh open sees everything, and settling folds it into the snapshot.
    let mut s = Store::open(d.path()).unwrap();
    assert_eq!(s.records().len(), 10);
    assert!(s.find("03").unwrap().revoked_at.is_some());
    assert_eq!(s.next_crl_number().unwrap(), 2);
    s.settle().unwrap();
    assert_eq!(log_lines(d.path()), 0);
    drop(s);
    let s = Store::open(d.path()).unwrap();
    assert_eq!(s.records().len(), 10);
    assert_eq!(s.index.crl_number, 2);
}

#[test]
fn replay_is_idempotent_after_a_crash_between_snapshot_and_truncation() {
    let d = tempfile::tempdir().unwrap();
    let mut s = Store::open(d.path()).unwrap();
    s.settle().unwrap();
    s.insert(rec("aa"), None).unwrap();
    s.revoke("aa", OffsetDateTime::now_utc()).unwrap();
    let journal = std::fs::read(d.path().join("index.log")).unwrap();
    s.settle().unwrap();
    drop(s);
    // As if the journal had not been emptied after the snapshot was written.
    std::fs::write(d.path().join("index.log"), journal).unwrap();
    let s = Store::open(d.path()).unwrap();
    assert_eq!(s.records().len(), 1);
}

#[test]
fn a_torn_last_change_is_ignored_and_a_damaged_one_named() {
    let d = tempfile::tempdir().unwrap();
    let mut s = Store::open(d.path()).unwrap();
    s.settle().unwrap();
    s.insert(rec("01"), None).unwrap();
    drop(s);
    let log = d.path().join("index.log");
    let mut f = OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(b"{\"insert\":{\"serial\":\"02\"").unwrap();
    drop(f);
    // Without settling, the next change lands on a clean line.
    let mut s = Store::open(d.path()).unwrap();
    assert_eq!(s.records().len(), 1);
    s.insert(rec("03"), None).unwrap();
    drop(s);
    assert_eq!(Store::open(d.path()).unwrap().records().len(), 2);
    std::fs::write(&log, b"{\"insert\": nonsense}\n").unwrap();
    let e = Store::open(d.path()).err().unwrap().to_string();
    assert!(e.contains("index.log") && e.contains("line 1"), "{e}");
}

#[test]
fn the_journal_is_folded_every_so_many_changes() {
    let d = tempfile::tempdir().unwrap();
    let mut s = Store::open(d.path()).unwrap();
    s.settle().unwrap();
    let (priority, kicks) = (s.fold_priority.clone(), s.fold_kicks.clone());
    for i in 0..COMPACT_AFTER + 5 {
        s.insert(rec(&format!("{i:06x}")), None).unwrap();
    }
    assert_eq!(log_lines(d.path()), 5);
    drop(s);
    // The snapshot went to the disk paced, a chunk at a time, not in one final fsync.
    let size = std::fs::metadata(d.path().join("index.json"))
        .unwrap()
        .len();
    let kicks = kicks.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        size > 4 * fsutil::PACE_CHUNK && kicks >= size / (2 * fsutil::PACE_CHUNK),
        "{kicks} writeback starts for {size} bytes"
    );
    assert_eq!(
        Store::open(d.path()).unwrap().records().len(),
        COMPACT_AFTER + 5
    );
    // The fold ran behind the threads that answer issues.
    let ours = rustix::process::getpriority_process(None).unwrap();
    let fold = priority.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        fold > ours,
        "the fold ran at priority {fold}, the caller at {ours}"
    );
}

/// A big index is folded once half its records are in the journal, not after a fixed
/// count: each fold rewrites every record.
#[test]
fn a_big_index_waits_for_more_changes_before_a_fold() {
    let d = tempfile::tempdir().unwrap();
    let big = 3 * COMPACT_AFTER;
    {
        let mut s = Store::open(d.path()).unwrap();
        s.settle().unwrap();
        for i in 0..big {
            s.insert(rec(&format!("{i:06x}")), None).unwrap();
        }
    }
    // Opening folds the journal: the snapshot holds them all, the journal is empty.
    let mut s = Store::open(d.path()).unwrap();
    s.settle().unwrap();
    assert_eq!(log_lines(d.path()), 0);
    for i in big..big + COMPACT_AFTER + 5 {
        s.insert(rec(&format!("{i:06x}")), None).unwrap();
    }
    assert_eq!(log_lines(d.path()), COMPACT_AFTER + 5, "folded too early");
    // Half the index is in the journal once it holds as many changes as the snapshot.
    for i in big + COMPACT_AFTER + 5..2 * big + 5 {
        s.insert(rec(&format!("{i:06x}")), None).unwrap();
    }
    let lines = log_lines(d.path());
    assert!(lines < 10, "not folded at half the index: {lines} lines");
    drop(s);
    assert_eq!(Store::open(d.path()).unwrap().records().len(), 2 * big + 5);
}

#[test]
fn a_fold_runs_off_the_lock_and_a_crash_during_it_loses_nothing() {
    let d = tempfile::tempdir().unwrap();
    let mut s = Store::open(d.path()).unwrap();
    s.settle().unwrap();
    let pause = s.fold_pause.clone();
    let paused = pause.lock().unwrap();
    for i in 0..COMPACT_AFTER {
        s.insert(rec(&format!("{i:06x}")), None).unwrap();
    }
    // The fold is stalled before writing its snapshot; changes still go through (they
    // would hang here if folding held the store).
    assert!(d.path().join(OLD_LOG).exists());
    s.insert(rec("ffffff"), None).unwrap();
    s.revoke("000001", OffsetDateTime::now_utc()).unwrap();
    assert_eq!(log_lines(d.path()), 2);
    // A crash now: the snapshot is the old one, the set-aside journal and the live one
    // hold everything.
    let crashed = tempfile::tempdir().unwrap();
    for name in ["index.json", OLD_LOG, "index.log"] {
        std::fs::copy(d.path().join(name), crashed.path().join(name)).unwrap();
    }
    let old_snapshot: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join("index.json")).unwrap()).unwrap();
    assert_eq!(old_snapshot["certificates"].as_array().unwrap().len(), 0);
    let c = Store::open(crashed.path()).unwrap();
    assert_eq!(c.records().len(), COMPACT_AFTER + 1);
    assert!(c.find("000001").unwrap().revoked_at.is_some());
    drop(c);
    // The fold finishes: the snapshot holds what was written before it, the set-aside
    // journal is gone, and the live journal still adds the rest.
    drop(paused);
    s.wait_fold();
    assert!(!d.path().join(OLD_LOG).exists());
    let snapshot: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join("index.json")).unwrap()).unwrap();
    assert_eq!(
        snapshot["certificates"].as_array().unwrap().len(),
        COMPACT_AFTER
    );
    assert!(snapshot["certificates"][1]["revoked_at"].is_null());
    drop(s);
    let s = Store::open(d.path()).unwrap();
    assert_eq!(s.records().len(), COMPACT_AFTER + 1);
    assert!(s.find("000001").unwrap().revoked_at.is_some());
}

#[test]
fn an_insert_is_acknowledged_only_once_synced_and_waiters_share_a_sync() {
    let d = tempfile::tempdir().unwrap();
    let mut s = Store::open(d.path()).unwrap();
    s.settle().unwrap();
    let syncer = s.syncer();
    let paused = syncer.pause.lock().unwrap();
    let t1 = s.insert(rec("01"), None).unwrap();
    let t2 = s.insert(rec("02"), None).unwrap();
    let (a, b) = (syncer.clone(), syncer.clone());
    let w1 = std::thread::spawn(move || a.wait(t1));
    let w2 = std::thread::spawn(move || b.wait(t2));
    // Both wait while the sync thread is stalled.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !syncer.lock().syncing {
        assert!(
            std::time::Instant::now() < deadline,
            "nobody started a sync"
        );
        std::thread::yield_now();
    }
    for _ in 0..1000 {
        std::thread::yield_now();
    }
    assert!(
        !w1.is_finished() && !w2.is_finished(),
        "acknowledged before the sync"
    );
    drop(paused);
    w1.join().unwrap().unwrap();
    w2.join().unwrap().unwrap();
    let state = syncer.lock();
    assert_eq!(state.synced, 2);
    assert_eq!(state.syncs, 1, "the two changes did not share one sync");
}

/// An issue on a runtime waits for the same sync without a thread of its own, and a
/// sync that fails refuses every change it held.
#[tokio::test]
// The guard stalls the sync thread, a thread of its own, while this test awaits.
#[allow(clippy::await_holding_lock)]
async fn an_async_waiter_is_answered_by_the_sync_and_a_failed_sync_refuses() {
    let d = tempfile::tempdir().unwrap();
    let mut s = Store::open(d.path()).unwrap();
    s.settle().unwrap();
    let syncer = s.syncer();
    let paused = syncer.pause.lock().unwrap();
    let t = s.insert(rec("01"), None).unwrap();
    let waiter = {
        let syncer = syncer.clone();
        tokio::spawn(async move { syncer.wait_async(t).await })
    };
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(!waiter.is_finished(), "acknowledged before the sync");
    drop(paused);
    waiter.await.unwrap().unwrap();
    syncer.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let t = s.insert(rec("02"), None).unwrap();
    let e = syncer.wait_async(t).await.unwrap_err();
    assert!(e.to_string().contains("fsync"), "{e}");
    assert!(
        syncer.wait(t).is_err(),
        "a blocking waiter was told otherwise"
    );
    syncer
        .fail
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let t = s.insert(rec("03"), None).unwrap();
    syncer.wait_async(t).await.unwrap();
}

/// Serials are drawn without the lock, so the store is what keeps them unique: a second
/// record with a known serial is refused and changes nothing, on disk or in memory.
#[test]
fn a_serial_already_in_the_index_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let mut s = Store::open(d.path()).unwrap();
    s.insert(rec("0a"), None).unwrap();
    let mut twin = rec("0a");
    twin.names.common_name = "twin".into();
    let e = s.insert(twin, None).err().unwrap();
    assert!(matches!(e, Error::SerialTaken(ref x) if x == "0a"), "{e}");
    assert_eq!(log_lines(d.path()), 1);
    assert_eq!(s.records().len(), 1);
    assert_ne!(s.find("0a").unwrap().names.common_name, "twin");
    drop(s);
    assert_eq!(Store::open(d.path()).unwrap().records().len(), 1);
}

fn pem(n: u8) -> SecretKeyPem {
    SecretKeyPem::new(format!(
        "-----BEGIN PRIVATE KEY-----\nkey{n}\n-----END PRIVATE KEY-----\n"
    ))
}

/// Held keys live in one 0600 log: appended with the index, found again after a restart,
/// and keys an older berth kept one per file are still read.
#[test]
fn held_keys_are_appended_to_one_log_and_read_back() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let mut s = Store::open(d.path()).unwrap();
    for i in 0..50u8 {
        let t = s.insert(rec(&format!("{i:02x}")), Some(&pem(i))).unwrap();
        s.syncer().wait(t).unwrap();
    }
    s.insert(rec("ff"), None).unwrap();
    let log = d.path().join("keys/held.log");
    assert_eq!(
        std::fs::metadata(&log).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // One file for every key: no per-key files.
    assert_eq!(std::fs::read_dir(d.path().join("keys")).unwrap().count(), 1);
    // An older berth's key file.
    std::fs::write(d.path().join("keys/0abc.key"), pem(200).secret_pem()).unwrap();
    drop(s);
    let s = Store::open(d.path()).unwrap();
    for i in [0u8, 17, 49] {
        assert_eq!(
            s.read_key(&format!("{i:02x}")).unwrap().secret_pem(),
            pem(i).secret_pem()
        );
    }
    assert!(s.holds_key("0abc"));
    assert_eq!(
        s.read_key("0abc").unwrap().secret_pem(),
        pem(200).secret_pem()
    );
    assert!(!s.holds_key("ff"));
    assert!(s.read_key("ff").is_err());
}

/// The held keys are synced with the index change that names one, and only then: every
/// fdatasync flushes the device cache, nothing new to write or not.
#[test]
fn the_held_keys_are_synced_only_when_a_key_is_new() {
    use std::sync::atomic::Ordering::SeqCst;
    let d = tempfile::tempdir().unwrap();
    let mut s = Store::open(d.path()).unwrap();
    s.settle().unwrap();
    let syncer = s.syncer();
    let before = syncer.held_syncs.load(SeqCst);
    let t = s.insert(rec("01"), None).unwrap();
    syncer.wait(t).unwrap();
    s.revoke("01", OffsetDateTime::now_utc()).unwrap();
    s.next_crl_number().unwrap();
    assert_eq!(
        syncer.held_syncs.load(SeqCst),
        before,
        "changes without a key synced the held keys"
    );
    let t = s.insert(rec("02"), Some(&pem(2))).unwrap();
    syncer.wait(t).unwrap();
    assert_eq!(
        syncer.held_syncs.load(SeqCst),
        before + 1,
        "a new key was acknowledged without a sync of the held keys"
    );
    let t = s.insert(rec("03"), None).unwrap();
    syncer.wait(t).unwrap();
    assert_eq!(syncer.held_syncs.load(SeqCst), before + 1);
}

/// An index entry whose key did not survive a crash (the issue was never answered) is
/// no longer said to hold one, after every start; one whose key survived keeps it.
#[test]
fn an_index_entry_whose_key_a_crash_lost_is_no_longer_held() {
    let d = tempfile::tempdir().unwrap();
    let mut s = Store::open(d.path()).unwrap();
    s.settle().unwrap();
    let mut kept = rec("0a");
    kept.key_held = true;
    let t = s.insert(kept, Some(&pem(10))).unwrap();
    s.syncer().wait(t).unwrap();
    // What the crash leaves: the index line durable, the key never written.
    let mut lost = rec("0b");
    lost.key_held = true;
    let t = s.insert(lost, None).unwrap();
    s.syncer().wait(t).unwrap();
    drop(s);
    for _ in 0..2 {
        let mut s = Store::open(d.path()).unwrap();
        assert!(s.find("0a").unwrap().key_held);
        assert!(
            !s.find("0b").unwrap().key_held,
            "a lost key is still listed"
        );
        assert!(s.read_key("0a").is_ok());
        // Folded into the snapshot as well.
        s.settle().unwrap();
    }
}

/// A key line torn by a crash (never acknowledged) is cut off and the log goes on; a
/// damaged line in the middle stops the start, naming the file, and nothing is rewritten.
#[test]
fn a_torn_held_key_is_cut_and_a_damaged_one_named() {
    let d = tempfile::tempdir().unwrap();
    let mut s = Store::open(d.path()).unwrap();
    s.insert(rec("01"), Some(&pem(1))).unwrap();
    drop(s);
    let log = d.path().join("keys/held.log");
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut f, b"{\"serial\":\"02\",\"key\":\"-----BEG").unwrap();
    drop(f);
    let mut s = Store::open(d.path()).unwrap();
    assert_eq!(s.read_key("01").unwrap().secret_pem(), pem(1).secret_pem());
    s.insert(rec("03"), Some(&pem(3))).unwrap();
    drop(s);
    let s = Store::open(d.path()).unwrap();
    assert_eq!(s.read_key("03").unwrap().secret_pem(), pem(3).secret_pem());
    drop(s);
    let mut bytes = std::fs::read(&log).unwrap();
    bytes[3] = b'#';
    std::fs::write(&log, &bytes).unwrap();
    let e = Store::open(d.path()).err().unwrap().to_string();
    assert!(e.contains("held.log") && e.contains("line 1"), "{e}");
    assert_eq!(std::fs::read(&log).unwrap(), bytes);
}
