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

/// A test's clock: time moves only when the writer sleeps.
#[derive(Clone, Default)]
struct FakeClock(std::rc::Rc<std::cell::RefCell<(std::time::Duration, Vec<std::time::Duration>)>>);

impl Clock for FakeClock {
    fn elapsed(&self) -> std::time::Duration {
        self.0.borrow().0
    }

    fn sleep(&mut self, d: std::time::Duration) {
        let mut s = self.0.borrow_mut();
        s.0 += d;
        s.1.push(d);
    }
}

fn kicks(events: Vec<Event>) -> Vec<(u64, u64)> {
    events
        .into_iter()
        .filter_map(|e| match e {
            Event::Writeback { offset, len } => Some((offset, len)),
            _ => None,
        })
        .collect()
}

/// A paced write hands its bytes to the disk a chunk at a time, each chunk once and in
/// whole pages, and sleeps after each until the bytes so far fit its rate: a large
/// background write never leaves a pile of dirty pages for one long fsync that every
/// other sync on the disk would queue behind.
#[test]
fn a_paced_write_starts_writeback_chunk_by_chunk_and_keeps_to_its_rate() {
    use std::time::Duration;
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("big");
    let f = File::create(&path).unwrap();
    let clock = FakeClock::default();
    take_events();
    let mut p = Paced::new(&f, 1024 * 1024, clock.clone());
    let block = vec![7u8; 65536];
    for _ in 0..16 {
        p.write_all(&block).unwrap();
    }
    p.write_all(&block[..1000]).unwrap();
    p.flush().unwrap();
    assert_eq!(
        kicks(take_events()),
        (0..4)
            .map(|i| (i * PACE_CHUNK, PACE_CHUNK))
            .collect::<Vec<_>>()
    );
    assert_eq!(p.kicks(), 4);
    // 1 MiB at 1 MiB/s: a second of sleeps, a quarter after each chunk.
    let (now, slept) = clock.0.borrow().clone();
    assert_eq!(slept, vec![Duration::from_millis(250); 4]);
    assert_eq!(now, Duration::from_secs(1));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 16 * 65536 + 1000);

    // Writes cut mid-page start writeback up to the last whole page only.
    let f = File::create(d.path().join("odd")).unwrap();
    let mut p = Paced::new(&f, u64::MAX, FakeClock::default());
    p.write_all(&vec![1u8; PACE_CHUNK as usize + 5000]).unwrap();
    p.write_all(&vec![1u8; PACE_CHUNK as usize]).unwrap();
    assert_eq!(
        kicks(take_events()),
        vec![(0, PACE_CHUNK + 4096), (PACE_CHUNK + 4096, PACE_CHUNK)]
    );
}

/// A writer already slower than its rate (a busy disk, a slow producer) never sleeps.
#[test]
fn a_paced_write_behind_its_rate_does_not_sleep() {
    let d = tempfile::tempdir().unwrap();
    let f = File::create(d.path().join("big")).unwrap();
    let clock = FakeClock::default();
    clock.0.borrow_mut().0 = std::time::Duration::from_secs(10);
    let mut p = Paced::new(&f, 1024 * 1024, clock.clone());
    p.write_all(&vec![0u8; 4 * PACE_CHUNK as usize]).unwrap();
    assert_eq!(p.kicks(), 1);
    assert!(clock.0.borrow().1.is_empty());
}
