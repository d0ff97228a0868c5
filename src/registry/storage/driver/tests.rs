//! One suite, every driver: the filesystem and the in-memory driver must behave alike,
//! so storage logic written against the trait holds on both (and on S3 later).
#![allow(clippy::unwrap_used)]
use std::io::{Read, Write};

use super::*;
use crate::registry::settings::S3Settings;

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
    let mut w = d.append(&k("up/1/data")).unwrap();
    w.write_all(b"hello ").unwrap();
    w.flush().unwrap();
    w.finish().unwrap();
    assert_eq!(d.stat(&k("up/1/data")).unwrap().unwrap().size, 6);
    let mut w = d.append(&k("up/1/data")).unwrap();
    w.write_all(b"world").unwrap();
    w.finish().unwrap();
    assert_eq!(d.get(&k("up/1/data")).unwrap().unwrap(), b"hello world");
    // truncate undoes what was appended after a point, and appending goes on from there.
    d.truncate(&k("up/1/data"), 6).unwrap();
    assert_eq!(d.get(&k("up/1/data")).unwrap().unwrap(), b"hello ");
    let mut w = d.append(&k("up/1/data")).unwrap();
    w.write_all(b"there").unwrap();
    w.finish().unwrap();
    assert_eq!(d.get(&k("up/1/data")).unwrap().unwrap(), b"hello there");
    // An empty append still makes an (empty) object.
    d.append(&k("up/2/data")).unwrap().finish().unwrap();
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
    // GC's prompt delete takes the same things.
    d.put(&k("g/x/data"), b"1").unwrap();
    d.put(&k("g/y/data"), b"2").unwrap();
    assert!(d.delete_promptly(&k("g/x")).unwrap());
    assert_eq!(d.get(&k("g/x/data")).unwrap(), None);
    assert_eq!(d.get(&k("g/y/data")).unwrap().unwrap(), b"2");
    assert!(!d.delete_promptly(&k("g/x")).unwrap());

    // apply: steps of puts and renames leave what the separate calls would, a later
    // write to a key winning.
    d.put_scratch(&k("up/1/data"), b"blob").unwrap();
    let (blob, kind, link) = (k("ap/blob"), k("ap/kind"), k("ap/x/link"));
    d.apply(&[
        &[Op::Rename(&k("up/1/data"), &blob), Op::Put(&kind, b"t")],
        &[Op::Put(&link, b"l"), Op::Put(&kind, b"u")],
    ])
    .unwrap();
    assert_eq!(d.get(&blob).unwrap().unwrap(), b"blob");
    assert_eq!(d.get(&kind).unwrap().unwrap(), b"u");
    assert_eq!(d.get(&link).unwrap().unwrap(), b"l");
    assert_eq!(d.get(&k("up/1/data")).unwrap(), None);
    // A failed op ends it: nothing of a later step is done, and no temp file is left.
    let (a, b, c) = (k("ap2/a"), k("ap2/b"), k("ap2/c"));
    assert!(
        d.apply(&[
            &[Op::Put(&a, b"a")],
            &[Op::Rename(&k("absent"), &b), Op::Put(&c, b"c")],
        ])
        .is_err()
    );
    assert_eq!(d.get(&b).unwrap(), None);
    assert_eq!(d.get(&c).unwrap(), None);
    for e in d.list(&k("ap2")).unwrap() {
        assert_eq!(e.name, "a", "left behind: {e:?}");
    }
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
    let dir = tempfile::tempdir().unwrap();
    let d = FsDriver::new(dir.path());
    let syncs = crate::fsutil::take_dir_syncs;
    syncs();
    d.put_scratch(&k("u/1/startedat"), b"now").unwrap();
    let mut w = d.append(&k("u/1/data")).unwrap();
    w.write_all(b"blob").unwrap();
    w.finish().unwrap();
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

/// What makes a filesystem commit cheap without making it less safe: every op's content
/// is synced before any name points at it; a step's names are made durable (their folders
/// synced, each once, with the parents of folders made for it) before the next step's
/// first name; and a folder holding several names of a step is synced once, not per name.
#[test]
fn filesystem_apply_syncs_content_first_and_each_step_before_the_next() {
    use crate::fsutil::{Event, take_events};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let d = FsDriver::new(root);
    d.put(&k("r/m/old"), b"0").unwrap();
    d.put_scratch(&k("u/1/data"), b"blob").unwrap();
    take_events();
    let (blob, one, two, link) = (k("b/ab/data"), k("r/m/one"), k("r/m/two"), k("r/t/link"));
    d.apply(&[
        &[
            Op::Rename(&k("u/1/data"), &blob),
            Op::Put(&one, b"1"),
            Op::Put(&two, b"2"),
        ],
        &[Op::Put(&link, b"l")],
    ])
    .unwrap();
    let ev = take_events();
    let at = |e: &Event| {
        ev.iter()
            .position(|x| x == e)
            .unwrap_or_else(|| panic!("no {e:?} in {ev:#?}"))
    };
    let synced_file = ev
        .iter()
        .filter(|e| matches!(e, Event::SyncFile(_)))
        .count();
    assert_eq!(synced_file, 4, "{ev:#?}");
    let first_name = ev
        .iter()
        .position(|e| matches!(e, Event::Rename(_)))
        .unwrap();
    assert!(
        ev[..first_name]
            .iter()
            .all(|e| matches!(e, Event::SyncFile(_)))
            && !ev[first_name..]
                .iter()
                .any(|e| matches!(e, Event::SyncFile(_))),
        "content is synced before any name: {ev:#?}"
    );
    let last_of_step_one = at(&Event::Rename(root.join("r/m/two")));
    let link_named = at(&Event::Rename(root.join("r/t/link")));
    for folder in ["b/ab", "r/m", "", "b", "r"] {
        let synced = at(&Event::SyncDir(root.join(folder)));
        assert!(
            last_of_step_one < synced && synced < link_named,
            "{folder:?} is synced after step one's names and before step two's: {ev:#?}"
        );
    }
    assert!(
        at(&Event::SyncDir(root.join("r/t"))) > link_named,
        "{ev:#?}"
    );
    let syncs_of = |f: &str| {
        ev.iter()
            .filter(|e| **e == Event::SyncDir(root.join(f)))
            .count()
    };
    assert_eq!(
        syncs_of("r/m"),
        1,
        "one sync for the folder's two names: {ev:#?}"
    );
    assert_eq!(d.get(&link).unwrap().unwrap(), b"l");
}

#[path = "../../../../tests/common/moto.rs"]
mod moto;
use moto::Moto;

/// Settings for a new bucket `name` on `moto`, below the prefix `reg/root`.
fn s3_settings(moto: &Moto, name: &str, dir: &std::path::Path) -> S3Settings {
    moto.create_bucket(name);
    S3Settings {
        bucket: name.to_string(),
        region: Some("us-east-1".into()),
        endpoint: Some(moto.url()),
        prefix: "reg/root".into(),
        path_style: true,
        credentials_file: Some(moto.credentials_file(dir)),
        ca_file: None,
        ..Default::default()
    }
}

#[test]
fn s3_driver() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let settings = s3_settings(&moto, "suite", dir.path());
    let d = S3Driver::new(&settings).unwrap();
    suite(&d);
    // Keys are registry:2's s3 layout: the prefix (its rootdirectory), then the key. A
    // driver without a prefix sees the whole bucket.
    d.put(&k("docker/registry/v2/x/link"), b"sha256:00")
        .unwrap();
    let whole = S3Settings {
        prefix: String::new(),
        ..settings.clone()
    };
    let top = S3Driver::new(&whole).unwrap();
    assert_eq!(
        top.get(&k("reg/root/docker/registry/v2/x/link"))
            .unwrap()
            .unwrap(),
        b"sha256:00"
    );
    assert_eq!(
        d.locate(&k("docker/registry/v2/x/link")).to_string_lossy(),
        "s3://suite/reg/root/docker/registry/v2/x/link"
    );
    // Nothing was written outside the prefix.
    let names: Vec<Entry> = top.list(&k("")).unwrap();
    assert_eq!(
        names,
        [Entry {
            name: "reg".into(),
            is_dir: true
        }]
    );
    assert_eq!(top.list(&k("reg")).unwrap().len(), 1);
}

/// Objects larger than a part: appends go through multipart uploads (and copy what is
/// there first), a truncate and a rename keep every byte, and a reader starts anywhere.
#[test]
fn s3_driver_moves_large_objects_in_parts() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let d = S3Driver::new(&s3_settings(&moto, "large", dir.path())).unwrap();
    let data: Vec<u8> = (0..(21u32 << 20)).map(|i| (i % 251) as u8).collect();
    let (first, second) = data.split_at(17 << 20);
    let mut w = d.append(&k("up/data")).unwrap();
    for c in first.chunks(512 << 10) {
        w.write_all(c).unwrap();
    }
    // Nothing is visible before the writer finishes.
    assert_eq!(d.stat(&k("up/data")).unwrap(), None);
    w.finish().unwrap();
    let mut w = d.append(&k("up/data")).unwrap();
    w.write_all(second).unwrap();
    w.finish().unwrap();
    assert_eq!(d.get(&k("up/data")).unwrap().unwrap(), data);
    assert_eq!(read_from(&d, "up/data", 9 << 20).unwrap(), &data[9 << 20..]);
    // An append dropped unfinished changes nothing.
    let mut w = d.append(&k("up/data")).unwrap();
    w.write_all(&data).unwrap();
    drop(w);
    assert_eq!(
        d.stat(&k("up/data")).unwrap().unwrap().size,
        data.len() as u64
    );
    d.truncate(&k("up/data"), (13 << 20) + 5).unwrap();
    d.rename(&k("up/data"), &k("blobs/big/data")).unwrap();
    assert_eq!(
        d.get(&k("blobs/big/data")).unwrap().unwrap(),
        &data[..(13 << 20) + 5]
    );
    assert_eq!(d.stat(&k("up/data")).unwrap(), None);
}

/// Folders of more than one page of a listing (S3 answers 1,000 keys at a time): list,
/// has_children and delete see and take every key.
#[test]
fn s3_driver_lists_and_deletes_past_one_page() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let d = S3Driver::new(&s3_settings(&moto, "pages", dir.path())).unwrap();
    std::thread::scope(|s| {
        for t in 0..8 {
            let d = &d;
            s.spawn(move || {
                for i in (t..1100).step_by(8) {
                    d.put(&k(&format!("many/{i:04}/link")), b"x").unwrap();
                }
            });
        }
    });
    d.put(&k("many/file"), b"y").unwrap();
    let names = d.list(&k("many")).unwrap();
    assert_eq!(names.len(), 1101);
    assert_eq!(names.iter().filter(|e| e.is_dir).count(), 1100);
    assert_eq!(names[1099].name, "1099");
    assert!(d.delete(&k("many")).unwrap());
    assert!(!d.has_children(&k("many")).unwrap());
    assert!(d.list(&k("many")).unwrap().is_empty());
}

/// The credentials file holds secrets: one others may read is refused, saying how to fix
/// it, and its content never appears in the error.
#[test]
fn s3_credentials_must_be_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("s3.toml");
    std::fs::write(
        &creds,
        "access_key_id = \"AKIDSECRET\"\nsecret_access_key = \"hunter2\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).unwrap();
    let s = S3Settings {
        bucket: "b".into(),
        region: None,
        endpoint: Some("http://127.0.0.1:9".into()),
        prefix: String::new(),
        path_style: true,
        credentials_file: Some(creds.clone()),
        ca_file: None,
        ..Default::default()
    };
    let e = S3Driver::new(&s).unwrap_err().to_string();
    assert!(e.contains("chmod 600"), "{e}");
    // Private but malformed: the message names the fields, not the file's lines.
    std::fs::write(
        &creds,
        "access_key_id = \"AKIDSECRET\"\nsecret = \"hunter2\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    let e = S3Driver::new(&s).unwrap_err().to_string();
    assert!(e.contains("access_key_id and secret_access_key"), "{e}");
    assert!(!e.contains("hunter2") && !e.contains("AKIDSECRET"), "{e}");
}
