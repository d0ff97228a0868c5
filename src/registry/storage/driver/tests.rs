//! One suite, every driver: the filesystem and the in-memory driver must behave alike,
//! so storage logic written against the trait holds on both (and on S3 later).
#![allow(clippy::unwrap_used)]
use std::io::{Read, Write};

use super::*;

fn k(s: &str) -> Key {
    Key::new(s)
}

fn read_from(d: &dyn Driver, key: &str, offset: u64) -> Option<Vec<u8>> {
    let mut r = d.reader(&k(key), offset).unwrap()?;
    let mut out = Vec::new();
    r.read_to_end(&mut out).unwrap();
    Some(out)
}

/// The suite: every method, the edge cases storage relies on.
fn suite(d: &dyn Driver) {
    // Absent keys answer "nothing", never an error.
    assert_eq!(d.get(&k("a/b")).unwrap(), None);
    assert_eq!(d.stat(&k("a/b")).unwrap(), None);
    assert!(d.reader(&k("a/b"), 0).unwrap().is_none());
    assert!(d.list(&k("a")).unwrap().is_empty());
    assert!(!d.has_children(&k("a")).unwrap());
    assert!(!d.delete(&k("a")).unwrap());

    // put creates parents, replaces whole, and stat reports size and a fresh mtime.
    d.put(&k("a/b/c"), b"first").unwrap();
    d.put(&k("a/b/c"), b"second!").unwrap();
    assert_eq!(d.get(&k("a/b/c")).unwrap().unwrap(), b"second!");
    let m = d.stat(&k("a/b/c")).unwrap().unwrap();
    assert_eq!(m.size, 7);
    let age = std::time::SystemTime::now()
        .duration_since(m.modified)
        .unwrap_or_default();
    assert!(age < std::time::Duration::from_secs(60), "{age:?}");
    // A folder is not an object.
    assert_eq!(d.stat(&k("a/b")).unwrap(), None);

    // put_scratch (upload sessions): the same visible result, parents made, whole.
    d.put_scratch(&k("s/t/u"), b"one").unwrap();
    d.put_scratch(&k("s/t/u"), b"three").unwrap();
    assert_eq!(d.get(&k("s/t/u")).unwrap().unwrap(), b"three");
    assert_eq!(
        d.list(&k("s/t")).unwrap().len(),
        1,
        "no temp file is left beside it"
    );
    assert!(d.delete(&k("s")).unwrap());
    assert_eq!(d.get(&k("a/b")).unwrap(), None);
    assert!(d.has_children(&k("a/b")).unwrap());
    assert!(d.has_children(&k("a")).unwrap());
    assert!(!d.has_children(&k("a/b/c")).unwrap());

    // Readers start at an offset.
    assert_eq!(read_from(d, "a/b/c", 0).unwrap(), b"second!");
    assert_eq!(read_from(d, "a/b/c", 3).unwrap(), b"ond!");
    assert_eq!(read_from(d, "a/b/c", 7).unwrap(), b"");

    // append creates, then appends across writers.
    {
        let mut w = d.append(&k("up/1/data")).unwrap();
        w.write_all(b"hello ").unwrap();
        w.flush().unwrap();
    }
    assert_eq!(d.stat(&k("up/1/data")).unwrap().unwrap().size, 6);
    {
        let mut w = d.append(&k("up/1/data")).unwrap();
        w.write_all(b"world").unwrap();
    }
    assert_eq!(d.get(&k("up/1/data")).unwrap().unwrap(), b"hello world");
    // truncate undoes what was appended after a point, and appending goes on from there.
    d.truncate(&k("up/1/data"), 6).unwrap();
    assert_eq!(d.get(&k("up/1/data")).unwrap().unwrap(), b"hello ");
    {
        let mut w = d.append(&k("up/1/data")).unwrap();
        w.write_all(b"there").unwrap();
    }
    assert_eq!(d.get(&k("up/1/data")).unwrap().unwrap(), b"hello there");
    // An empty append still makes an (empty) object.
    drop(d.append(&k("up/2/data")).unwrap());
    assert_eq!(d.stat(&k("up/2/data")).unwrap().unwrap().size, 0);

    // list: direct children only, sorted, folders told from objects.
    d.put(&k("l/z"), b"1").unwrap();
    d.put(&k("l/a/deep/x"), b"2").unwrap();
    d.put(&k("l/m"), b"3").unwrap();
    d.put(&k("l-sibling/q"), b"4").unwrap();
    let names: Vec<(String, bool)> = d
        .list(&k("l"))
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.is_dir))
        .collect();
    assert_eq!(
        names,
        [
            ("a".to_string(), true),
            ("m".to_string(), false),
            ("z".to_string(), false)
        ]
    );
    let top: Vec<String> = d
        .list(&k(""))
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(top, ["a", "l", "l-sibling", "up"]);

    // rename moves and replaces, and the source is gone.
    d.put(&k("blobs/x/data"), b"old").unwrap();
    d.rename(&k("up/1/data"), &k("blobs/x/data")).unwrap();
    assert_eq!(d.get(&k("blobs/x/data")).unwrap().unwrap(), b"hello there");
    assert_eq!(d.stat(&k("up/1/data")).unwrap(), None);
    d.rename(&k("up/2/data"), &k("fresh/dir/data")).unwrap();
    assert_eq!(d.stat(&k("fresh/dir/data")).unwrap().unwrap().size, 0);
    assert!(d.rename(&k("nope"), &k("x")).is_err());

    // delete: one object, or a whole subtree, and nothing beside it.
    assert!(d.delete(&k("l/z")).unwrap());
    assert_eq!(d.get(&k("l/z")).unwrap(), None);
    assert!(d.delete(&k("l")).unwrap());
    assert!(!d.has_children(&k("l")).unwrap());
    assert_eq!(d.get(&k("l/a/deep/x")).unwrap(), None);
    assert_eq!(d.get(&k("l-sibling/q")).unwrap().unwrap(), b"4");
    assert!(!d.delete(&k("l")).unwrap());
}

#[test]
fn filesystem_driver() {
    let dir = tempfile::tempdir().unwrap();
    let d = FsDriver::new(dir.path());
    suite(&d);
    // Keys are exactly paths below the root (registry:2's layout is the key layout).
    d.put(&k("docker/registry/v2/x/link"), b"sha256:00")
        .unwrap();
    let p = dir.path().join("docker/registry/v2/x/link");
    assert_eq!(std::fs::read(&p).unwrap(), b"sha256:00");
    assert_eq!(d.locate(&k("docker/registry/v2/x/link")), p);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    // No temp files are left beside what was written.
    let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["link"]);
}

#[test]
fn memory_driver() {
    let d = MemoryDriver::new();
    suite(&d);
    assert_eq!(d.locate(&k("a/b")).to_string_lossy(), "memory:a/b");
}

/// Committed content survives a power loss with its folders: a durable put or rename into
/// new folders fsyncs the parent of each one it made; an upload's scratch does not.
#[test]
fn filesystem_commits_make_new_folders_durable() {
    use crate::fsutil::DIR_SYNCS;
    let dir = tempfile::tempdir().unwrap();
    let d = FsDriver::new(dir.path());
    let syncs = || DIR_SYNCS.with(|s| std::mem::take(&mut *s.borrow_mut()));
    syncs();
    d.put_scratch(&k("u/1/startedat"), b"now").unwrap();
    let mut w = d.append(&k("u/1/data")).unwrap();
    w.write_all(b"blob").unwrap();
    drop(w);
    assert!(syncs().is_empty(), "scratch is not synced");
    d.rename(&k("u/1/data"), &k("blobs/ab/cd/data")).unwrap();
    let s = syncs();
    for folder in ["", "blobs", "blobs/ab"] {
        assert!(
            s.contains(&dir.path().join(folder)),
            "{folder:?} not synced: {s:?}"
        );
    }
    d.put(&k("links/x/link"), b"d").unwrap();
    let s = syncs();
    assert!(s.contains(&dir.path().join("links")), "{s:?}");
}
