//! The referrers index answers from the referrers of one subject: after the first look,
//! a request reads only those manifests, however many others the repository holds, and
//! it still sees manifests written and deleted behind berth's back (registry:2's way).
#![allow(clippy::unwrap_used)]
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::super::driver::spy::Spy;
use super::super::driver::{Driver, FsDriver, MemoryDriver};
use super::super::paths::Paths;
use super::super::{Storage, write_link};
use crate::registry::Error;
use crate::registry::reference::{Digest, RepoName};

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

/// An image manifest, optionally naming `subject`; `i` makes each one different.
fn manifest(i: usize, subject: Option<&Digest>) -> Vec<u8> {
    let empty = Digest::sha256_of(b"{}");
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty.to_string(), "size": 2},
        "layers": [],
        "annotations": {"i": i.to_string()},
    });
    if let Some(s) = subject {
        m["artifactType"] = serde_json::json!("application/vnd.example.sig");
        m["subject"] = serde_json::json!({"mediaType": OCI, "digest": s.to_string(), "size": 100});
    }
    serde_json::to_vec(&m).unwrap()
}

/// Stores a manifest the way registry:2 does, without berth: content and revision link.
fn write_behind_berths_back(drv: &dyn Driver, name: &RepoName, body: &[u8]) -> Digest {
    let d = Digest::sha256_of(body);
    drv.put(&Paths.blob_data(&d), body).unwrap();
    write_link(drv, &Paths.revision_link(name, &d), &d).unwrap();
    d
}

async fn put(s: &Storage, name: &RepoName, body: Vec<u8>, subject: Option<&Digest>) -> Digest {
    let d = Digest::sha256_of(&body);
    s.put_manifest(name, &d, body, OCI, &[], subject)
        .await
        .unwrap();
    d
}

async fn scenario(make: impl Fn() -> Box<dyn Driver>) {
    let reads = Arc::new(AtomicUsize::new(0));
    let drv: Arc<dyn Driver> = Arc::new(Spy {
        reads: reads.clone(),
        ..Spy::over(make())
    });
    let s = Storage::new(drv.clone(), "test".into());
    let name: RepoName = "team/app".parse().unwrap();
    let subject = put(&s, &name, manifest(0, None), None).await;
    for i in 1..=60 {
        put(&s, &name, manifest(i, None), None).await;
    }
    // Asked before any referrer exists: what berth stores from now on, it indexes as it
    // stores (catching up would not read it again).
    assert!(s.referrers(&name, &subject).await.unwrap().is_empty());
    let a = put(&s, &name, manifest(100, Some(&subject)), Some(&subject)).await;
    let b = put(&s, &name, manifest(101, Some(&subject)), Some(&subject)).await;
    let theirs = write_behind_berths_back(drv.as_ref(), &name, &manifest(102, Some(&subject)));
    // A referrer of another subject is not listed.
    put(&s, &name, manifest(103, Some(&a)), Some(&a)).await;

    let mut want = vec![a.clone(), b.clone(), theirs.clone()];
    want.sort();
    let got = |v: Vec<(Digest, Vec<u8>)>| v.into_iter().map(|(d, _)| d).collect::<Vec<_>>();
    assert_eq!(got(s.referrers(&name, &subject).await.unwrap()), want);

    // Caught up: a request reads the three referrers, not the 65 manifests.
    reads.store(0, Ordering::SeqCst);
    assert_eq!(got(s.referrers(&name, &subject).await.unwrap()), want);
    assert_eq!(reads.load(Ordering::SeqCst), 3);

    // Deleted behind berth's back (registry:2 removes the revision folder): gone at once.
    let link = Paths.revision_link(&name, &theirs);
    drv.delete(&link.parent().unwrap()).unwrap();
    let mut ab = vec![a.clone(), b.clone()];
    ab.sort();
    assert_eq!(got(s.referrers(&name, &subject).await.unwrap()), ab);
    // Deleted through berth: gone, and its index entry with it.
    s.delete_manifest(&name, &a).await.unwrap();
    assert_eq!(
        got(s.referrers(&name, &subject).await.unwrap()),
        vec![b.clone()]
    );
    assert!(
        drv.list(&Paths.referrers(&name, &subject).join("sha256"))
            .unwrap()
            .iter()
            .all(|e| e.name != a.hex())
    );

    // A new process over the same store finds them all again.
    let fresh = Storage::new(drv.clone(), "test".into());
    assert_eq!(
        got(fresh.referrers(&name, &subject).await.unwrap()),
        vec![b]
    );
}

#[tokio::test]
async fn referrers_come_from_the_index_on_memory() {
    scenario(|| Box::new(MemoryDriver::new())).await;
}

/// Sets a folder's modification time an hour back, as if it had not changed for long.
fn age(dir: &std::path::Path) {
    let past = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::open(dir)
        .unwrap()
        .set_modified(past)
        .unwrap();
}

/// On the filesystem a revisions folder that has not changed for a while is not even
/// listed; a manifest registry:2 adds later changes its time and is found.
#[tokio::test]
async fn a_settled_revisions_folder_is_trusted_until_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let reads = Arc::new(AtomicUsize::new(0));
    let drv: Arc<dyn Driver> = Arc::new(Spy {
        reads: reads.clone(),
        ..Spy::over(Box::new(FsDriver::new(dir.path())))
    });
    let s = Storage::new(drv.clone(), "test".into());
    let name: RepoName = "team/app".parse().unwrap();
    let subject = put(&s, &name, manifest(0, None), None).await;
    let a = put(&s, &name, manifest(1, Some(&subject)), Some(&subject)).await;
    let revisions = dir.path().join(Paths.revisions(&name).as_str());
    age(&revisions);
    age(&revisions.join("sha256"));
    let got = |v: Vec<(Digest, Vec<u8>)>| v.into_iter().map(|(d, _)| d).collect::<Vec<_>>();
    assert_eq!(
        got(s.referrers(&name, &subject).await.unwrap()),
        vec![a.clone()]
    );
    // Settled: the next answer reads the one referrer and nothing else.
    reads.store(0, Ordering::SeqCst);
    assert_eq!(
        got(s.referrers(&name, &subject).await.unwrap()),
        vec![a.clone()]
    );
    assert_eq!(reads.load(Ordering::SeqCst), 1);
    let theirs = write_behind_berths_back(drv.as_ref(), &name, &manifest(2, Some(&subject)));
    let mut want = vec![a, theirs];
    want.sort();
    assert_eq!(got(s.referrers(&name, &subject).await.unwrap()), want);
}

#[tokio::test]
async fn referrers_come_from_the_index_on_the_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    scenario(move || Box::new(FsDriver::new(&root))).await;
}

/// On a shared store (S3, where every read is a round trip) a manifest's content is read
/// once: later GETs read only the links that say the repository still has it, so a delete
/// is seen at once.
#[tokio::test]
async fn a_shared_store_reads_a_manifest_once_and_still_sees_its_delete() {
    use crate::registry::reference::Reference;
    let reads = Arc::new(AtomicUsize::new(0));
    let drv: Arc<dyn Driver> = Arc::new(Spy {
        reads: reads.clone(),
        ..Spy::over(Box::new(MemoryDriver::new()))
    });
    let shared = super::super::Shared {
        min_grace: std::time::Duration::from_secs(3600),
        fence: std::time::Duration::from_millis(1),
    };
    let s = Storage::shared(drv.clone(), "test".into(), shared);
    let name: RepoName = "team/app".parse().unwrap();
    let d = put(&s, &name, manifest(1, None), None).await;
    // Cached by the push that stored it.
    reads.store(0, Ordering::SeqCst);
    for _ in 0..3 {
        let m = s
            .manifest(&name, &Reference::Digest(d.clone()))
            .await
            .unwrap();
        assert_eq!((m.bytes, m.media_type.as_str()), (manifest(1, None), OCI));
    }
    assert_eq!(reads.load(Ordering::SeqCst), 0);
    // Written by another process: read once, then cached.
    let theirs = write_behind_berths_back(drv.as_ref(), &name, &manifest(2, None));
    for _ in 0..3 {
        let m = s
            .manifest(&name, &Reference::Digest(theirs.clone()))
            .await
            .unwrap();
        assert_eq!(m.bytes, manifest(2, None));
    }
    assert_eq!(reads.load(Ordering::SeqCst), 1);
    s.delete_manifest(&name, &d).await.unwrap();
    assert!(matches!(
        s.manifest(&name, &Reference::Digest(d.clone())).await,
        Err(Error::ManifestUnknown { .. })
    ));
    // A store of one writer caches nothing: the filesystem is fast enough.
    let local = Storage::new(drv.clone(), "test".into());
    reads.store(0, Ordering::SeqCst);
    local
        .manifest(&name, &Reference::Digest(theirs.clone()))
        .await
        .unwrap();
    local
        .manifest(&name, &Reference::Digest(theirs))
        .await
        .unwrap();
    assert_eq!(reads.load(Ordering::SeqCst), 2);
}

/// On a shared store, a GC delete that cannot be made promptly is skipped, not fatal:
/// the blob stays (counted as kept), GC finishes, and the next GC takes it.
#[tokio::test]
async fn a_gc_delete_that_times_out_keeps_the_blob_and_gc_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let refuse = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let drv: Arc<dyn Driver> = Arc::new(Spy {
        refuse_prompt: refuse.clone(),
        ..Spy::over(Box::new(FsDriver::new(dir.path())))
    });
    let hour = std::time::Duration::from_secs(3600);
    let shared = super::super::Shared {
        min_grace: hour,
        fence: std::time::Duration::from_secs(5),
    };
    let s = Storage::shared(drv.clone(), dir.path().into(), shared);
    // Garbage two hours old: a blob nothing links.
    let junk = b"nobody wants me";
    let d = Digest::sha256_of(junk);
    let data = Paths.blob_data(&d);
    drv.put(&data, junk).unwrap();
    std::fs::File::options()
        .write(true)
        .open(drv.locate(&data))
        .unwrap()
        .set_modified(std::time::SystemTime::now() - 2 * hour)
        .unwrap();
    let opts = crate::registry::GcOptions {
        dry_run: false,
        delete_untagged: false,
        grace: hour,
    };
    let r = s.gc(opts.clone()).await.unwrap();
    assert!(r.blobs_deleted.is_empty(), "{r:?}");
    assert_eq!(r.blobs_young, 1, "{r:?}");
    assert!(drv.stat(&data).unwrap().is_some());
    refuse.store(false, Ordering::SeqCst);
    let r = s.gc(opts).await.unwrap();
    assert_eq!(r.blobs_deleted, [(d.to_string(), junk.len() as u64)]);
    assert!(drv.stat(&data).unwrap().is_none());
}
