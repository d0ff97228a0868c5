//! Unit tests of the parent module.
#![allow(clippy::unwrap_used)]
use super::*;

#[test]
fn pagination_follows_n_and_last() {
    let all: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
    let p = paginate(all.clone(), Some(2), None);
    assert_eq!(p.items, ["a", "b"]);
    assert_eq!(p.next_after.as_deref(), Some("b"));
    let p = paginate(all.clone(), Some(2), Some("b"));
    assert_eq!(p.items, ["c", "d"]);
    assert_eq!(p.next_after, None);
    let p = paginate(all.clone(), None, Some("bb"));
    assert_eq!(p.items, ["c", "d"]);
    assert!(paginate(all.clone(), Some(0), None).items.is_empty());
    assert!(paginate(all, Some(5), Some("z")).items.is_empty());
}

/// A memory driver whose renames fail while `fail` is set: the durable step of a blob
/// commit, after its digest checked out.
#[derive(Debug)]
struct FailingRename {
    inner: MemoryDriver,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

impl storage::driver::Driver for FailingRename {
    fn locate(&self, key: &storage::driver::Key) -> PathBuf {
        self.inner.locate(key)
    }
    fn stat(&self, key: &storage::driver::Key) -> Result<Option<storage::driver::Meta>, Error> {
        self.inner.stat(key)
    }
    fn has_children(&self, key: &storage::driver::Key) -> Result<bool, Error> {
        self.inner.has_children(key)
    }
    fn get(&self, key: &storage::driver::Key) -> Result<Option<Vec<u8>>, Error> {
        self.inner.get(key)
    }
    fn reader(
        &self,
        key: &storage::driver::Key,
        offset: u64,
    ) -> Result<Option<Box<dyn std::io::Read + Send>>, Error> {
        self.inner.reader(key, offset)
    }
    fn put(&self, key: &storage::driver::Key, bytes: &[u8]) -> Result<(), Error> {
        self.inner.put(key, bytes)
    }
    fn put_scratch(&self, key: &storage::driver::Key, bytes: &[u8]) -> Result<(), Error> {
        self.inner.put_scratch(key, bytes)
    }
    fn append(&self, key: &storage::driver::Key) -> Result<storage::driver::Writer, Error> {
        self.inner.append(key)
    }
    fn truncate(&self, key: &storage::driver::Key, len: u64) -> Result<(), Error> {
        self.inner.truncate(key, len)
    }
    fn list(&self, key: &storage::driver::Key) -> Result<Vec<storage::driver::Entry>, Error> {
        self.inner.list(key)
    }
    fn delete(&self, key: &storage::driver::Key) -> Result<bool, Error> {
        self.inner.delete(key)
    }
    fn changed_at(
        &self,
        key: &storage::driver::Key,
    ) -> Result<Option<std::time::SystemTime>, Error> {
        self.inner.changed_at(key)
    }
    fn rename(&self, from: &storage::driver::Key, to: &storage::driver::Key) -> Result<(), Error> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Io {
                op: "rename",
                path: to.as_str().into(),
                source: std::io::Error::from_raw_os_error(5),
            });
        }
        self.inner.rename(from, to)
    }
}

/// The audit record of a blob commit is written while the blob is made durable, once
/// its digest checked out: a mismatch is recorded once, as an error; a durable write
/// that fails after the record was begun is recorded again, as failed; a success once.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_is_audited_once_decided_and_again_when_its_writes_fail() {
    let audit_dir = tempfile::tempdir().unwrap();
    let audit = Audit::open(audit_dir.path(), &audit::Settings::default()).unwrap();
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let driver = Arc::new(FailingRename {
        inner: MemoryDriver::new(),
        fail: fail.clone(),
    });
    let reg = Registry::over(Storage::new(driver, PathBuf::from("memory:")), false)
        .with_audit(audit.clone());
    let who = Identity::Daemon;
    let name: RepoName = "team/app".parse().unwrap();
    let blob = b"layer".to_vec();
    let digest = Digest::sha256_of(&blob);
    let wrong = Digest::sha256_of(b"other");
    let commits = |audit: &Audit| {
        audit
            .query(&audit::Filter {
                action: Some("blob.commit".into()),
                ..audit::Filter::default()
            })
            .unwrap()
            .into_iter()
            .map(|r| r.result)
            .collect::<Vec<_>>()
    };
    let e = reg
        .put_blob(&who, &name, &wrong, &mut &blob[..])
        .await
        .unwrap_err();
    assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
    let seen = commits(&audit);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].contains("digest"), "{seen:?}");

    fail.store(true, std::sync::atomic::Ordering::SeqCst);
    reg.put_blob(&who, &name, &digest, &mut &blob[..])
        .await
        .unwrap_err();
    let seen = commits(&audit);
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[1], "ok");
    assert!(seen[2].starts_with("error:"), "{seen:?}");

    fail.store(false, std::sync::atomic::Ordering::SeqCst);
    reg.put_blob(&who, &name, &digest, &mut &blob[..])
        .await
        .unwrap();
    assert_eq!(commits(&audit)[3..], ["ok".to_string()]);
}
