//! Unit tests of the audit log.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::identity::Identity;

fn unix(uid: u32) -> Identity {
    Identity::Unix {
        uid,
        gid: uid,
        pid: None,
    }
}

fn lines(dir: &Path, name: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join(name))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn records_are_durable_lines_of_json_in_a_private_file() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("audit");
    let a = Audit::open(&dir, &Settings::default()).unwrap();
    a.record(
        &Record::new(&unix(1000), Action::ManifestPut)
            .repository("team-a/app")
            .tag(Some("v1".into())),
    )
    .unwrap();
    let got = lines(&dir, FILE);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["action"], "manifest.put");
    assert_eq!(got[0]["actor"]["uid"], 1000);
    assert_eq!(got[0]["target"]["tag"], "v1");
    assert_eq!(got[0]["decision"], "allow");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.join(FILE)), 0o600);
    assert_eq!(mode(&dir), 0o700);
}

#[test]
fn control_characters_cannot_forge_a_line() {
    let d = tempfile::tempdir().unwrap();
    let a = Audit::open(d.path(), &Settings::default()).unwrap();
    a.record(&Record::new(&unix(0), Action::CertIssue).name("x\n{\"action\":\"gc\"}\r\u{1b}[2J"))
        .unwrap();
    let text = std::fs::read_to_string(d.path().join(FILE)).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert_eq!(
        lines(d.path(), FILE)[0]["target"]["name"],
        "x\n{\"action\":\"gc\"}\r\u{1b}[2J"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_records_are_each_one_whole_line() {
    let d = tempfile::tempdir().unwrap();
    let a = Audit::open(d.path(), &Settings::default()).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200u32 {
        let a = a.clone();
        tasks.spawn(async move {
            let long = "r".repeat(usize::try_from(i).unwrap() * 50);
            a.record_async(&Record::new(&unix(i), Action::BlobCommit).repository(long))
                .await
                .unwrap();
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let got = lines(d.path(), FILE);
    assert_eq!(got.len(), 200);
    let mut uids: Vec<u64> = got
        .iter()
        .map(|v| v["actor"]["uid"].as_u64().unwrap())
        .collect();
    uids.sort_unstable();
    assert_eq!(uids, (0..200).collect::<Vec<u64>>());
}

#[test]
fn rotates_by_size_keeping_the_newest_files() {
    let d = tempfile::tempdir().unwrap();
    let s = Settings {
        max_bytes: 4096,
        keep: 2,
        ..Settings::default()
    };
    let a = Audit::open(d.path(), &s).unwrap();
    for i in 0..200 {
        a.record(&Record::new(&unix(i), Action::TagDelete).repository("r".repeat(100)))
            .unwrap();
    }
    assert!(d.path().join("audit.log.1").exists());
    assert!(d.path().join("audit.log.2").exists());
    assert!(!d.path().join("audit.log.3").exists());
    for f in ["audit.log", "audit.log.1", "audit.log.2"] {
        let mode = std::fs::metadata(d.path().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    // The query reads across files, oldest first, and the newest record is last.
    let all = a.query(&Filter::default()).unwrap();
    assert!(all.len() > 20 && all.len() < 200, "{}", all.len());
    assert_eq!(all.last().unwrap().actor.uid, Some(199));
    assert!(all.windows(2).all(|w| w[0].actor.uid < w[1].actor.uid));
}

#[test]
fn a_torn_last_record_is_cut_off_at_open() {
    let d = tempfile::tempdir().unwrap();
    {
        let a = Audit::open(d.path(), &Settings::default()).unwrap();
        a.record(&Record::new(&unix(1), Action::Gc)).unwrap();
    }
    let path = d.path().join(FILE);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"{\"time\":\"2026-").unwrap();
    drop(f);
    let a = Audit::open(d.path(), &Settings::default()).unwrap();
    a.record(&Record::new(&unix(2), Action::Gc)).unwrap();
    let got = lines(d.path(), FILE);
    assert_eq!(got.len(), 2);
    assert_eq!(got[1]["actor"]["uid"], 2);
}

#[test]
fn queries_filter_by_actor_repository_action_decision_and_time() {
    let d = tempfile::tempdir().unwrap();
    let a = Audit::open(d.path(), &Settings::default()).unwrap();
    a.record(&Record::new(&unix(7), Action::ManifestPut).repository("team-a/app"))
        .unwrap();
    a.record(
        &Record::new(&unix(8), Action::ManifestDelete)
            .repository("team-b/app")
            .denied("no-delete"),
    )
    .unwrap();
    a.record(&Record::new(&unix(7), Action::BlobCommit).repository("team-a/app"))
        .unwrap();
    let q = |f: Filter| -> Vec<&'static str> {
        a.query(&f)
            .unwrap()
            .iter()
            .map(|r| r.action.name())
            .collect()
    };
    assert_eq!(
        q(Filter {
            actor: Some("7".into()),
            ..Filter::default()
        }),
        ["manifest.put", "blob.commit"]
    );
    assert_eq!(
        q(Filter {
            action: Some("manifest".into()),
            ..Filter::default()
        }),
        ["manifest.put", "manifest.delete"]
    );
    assert_eq!(
        q(Filter {
            action: Some("manifest.del".into()),
            ..Filter::default()
        }),
        Vec::<&str>::new()
    );
    assert_eq!(
        q(Filter {
            repository: Some("team-b/*".into()),
            ..Filter::default()
        }),
        ["manifest.delete"]
    );
    assert_eq!(
        q(Filter {
            decision: Some(Decision::Deny),
            ..Filter::default()
        }),
        ["manifest.delete"]
    );
    assert_eq!(
        q(Filter {
            limit: 1,
            ..Filter::default()
        }),
        ["blob.commit"]
    );
    let later = time::OffsetDateTime::now_utc() + time::Duration::minutes(1);
    assert!(
        q(Filter {
            since: Some(later),
            ..Filter::default()
        })
        .is_empty()
    );
}

#[test]
fn the_disabled_log_records_nothing_and_never_blocks() {
    let a = Audit::disabled();
    a.record(&Record::new(&unix(1), Action::Gc)).unwrap();
    assert!(a.query(&Filter::default()).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The writer is stalled on purpose while the test awaits.
#[allow(clippy::await_holding_lock)]
async fn a_record_returns_only_once_it_is_written() {
    let d = tempfile::tempdir().unwrap();
    let a = Audit::open(d.path(), &Settings::default()).unwrap();
    let shared = a.inner.as_ref().unwrap().shared.clone();
    let paused = shared.pause.lock().unwrap();
    let (a1, a2) = (a.clone(), a.clone());
    let r_async =
        tokio::spawn(async move { a1.record_async(&Record::new(&unix(1), Action::Gc)).await });
    let r_sync = tokio::task::spawn_blocking(move || a2.record(&Record::new(&unix(2), Action::Gc)));
    // Both are queued and the writer is stalled: neither may have returned.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while shared.lock().queued < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "records were never queued"
        );
        tokio::task::yield_now().await;
    }
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(
        !r_async.is_finished() && !r_sync.is_finished(),
        "a record returned before it was written"
    );
    drop(paused);
    r_async.await.unwrap().unwrap();
    r_sync.await.unwrap().unwrap();
    assert_eq!(lines(d.path(), FILE).len(), 2);
}
