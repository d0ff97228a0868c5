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
fn a_write_that_cannot_start_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("missing-dir").join("f");
    assert!(write_atomic(&p, b"x", 0o644).is_err());
    assert!(!p.exists());
}

/// Environment variable that turns [`failed_write_child`] on, naming the file to write.
const CHILD: &str = "BERTH_FSUTIL_FAILING_WRITE";

/// Not a test on its own: run by [`a_write_that_fails_half_way_keeps_the_old_content`] in a
/// child process, where a file-size limit makes `write_atomic` fail after 4 KiB of 1 MiB.
/// SIGXFSZ is blocked, so the kernel answers EFBIG instead of killing the process.
#[test]
fn failed_write_child() {
    use nix::sys::resource::{Resource, setrlimit};
    use nix::sys::signal::{SigSet, Signal};
    let Some(path) = std::env::var_os(CHILD) else {
        return;
    };
    let mut set = SigSet::empty();
    set.add(Signal::SIGXFSZ);
    set.thread_block().unwrap();
    setrlimit(Resource::RLIMIT_FSIZE, 4096, 4096).unwrap();
    let r = write_atomic(Path::new(&path), &vec![b'n'; 1 << 20], 0o644);
    std::process::exit(if r.is_err() { 3 } else { 4 });
}

#[test]
fn a_write_that_fails_half_way_keeps_the_old_content() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("state.json");
    write_atomic(&p, b"the old content", 0o644).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "fsutil::tests::failed_write_child",
            "--test-threads=1",
        ])
        .env(CHILD, &p)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "the write should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(fs::read(&p).unwrap(), b"the old content");
    let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "the failed write left its temp file behind");
}

/// A folder created for durable content names what makes it durable: the folder holding
/// each new one (a power loss would otherwise drop a synced file's whole folder). Existing
/// folders need nothing, and neither variant syncs anything itself.
#[test]
fn new_folders_name_the_parent_of_each_new_one() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    take_events();
    assert_eq!(
        create_dir_all_unsynced(&root.join("a/b/c"), 0o755).unwrap(),
        vec![root.to_path_buf(), root.join("a"), root.join("a/b")]
    );
    assert!(root.join("a/b/c").is_dir());
    assert!(
        create_dir_all_unsynced(&root.join("a/b/c"), 0o755)
            .unwrap()
            .is_empty()
    );
    create_dir_all(&root.join("x/y"), 0o755).unwrap();
    assert!(take_events().is_empty());
}
