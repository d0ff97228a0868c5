//! Unit tests of the parent module.
#![allow(clippy::unwrap_used)]
use super::*;

#[test]
fn write_atomic_sets_mode_and_leaves_no_temp() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("secret.key");
    write_atomic(&p, b"one", 0o600).unwrap();
    write_atomic(&p, b"two", 0o600).unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"two");
    assert_eq!(
        fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "temp files left behind");
}

#[test]
fn failed_write_leaves_old_content() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("missing-dir").join("f");
    assert!(write_atomic(&p, b"x", 0o644).is_err());
    assert!(!p.exists());
}
