//! The certificate index and the keys berthd holds (`keys/held.log`, see `held.rs`).
//!
//! The index is a snapshot (`index.json`) and a journal of changes since it
//! (`index.log`, one JSON line per change, appended and `fdatasync`ed before the change is
//! kept). Rewriting the whole index on every issue made issuance O(certificates): 100
//! certificates a second at 2,000 issued. The journal is folded into a new snapshot at
//! start and every `COMPACT_AFTER` changes; replaying is idempotent, so a crash between
//! writing the snapshot and emptying the journal loses and doubles nothing. A change torn
//! by a crash (a last line without its newline) was never acknowledged and is cut off.
//!
//! Folding while running happens off the store's lock: writing 100,000 records took the
//! lock for most of a second, and every issue waited. Under the lock the journal is
//! synced and renamed to `index.log.old` and a fresh one is opened; a thread writes the
//! snapshot (records are shared, not copied) and then removes `index.log.old`. A start
//! replays `index.log.old` before `index.log`, so a crash anywhere in between loses
//! nothing.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{CertRecord, Error, SecretKeyPem};
use crate::fsutil;

const INDEX_VERSION: u32 = 1;

#[derive(Debug, Clone)]
struct IndexFile {
    version: u32,
    crl_number: u64,
    certificates: Vec<Arc<CertRecord>>,
    /// Position of each serial in `certificates`: finding a serial (every issue checks
    /// its new one, every revoke looks one up) must not scan 100,000 records.
    by_serial: std::collections::HashMap<String, usize>,
}

/// `index.json` as read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    version: u32,
    crl_number: u64,
    certificates: Vec<CertRecord>,
}

/// What `index.json` holds: the index at one moment, written from shared records.
struct Snapshot {
    version: u32,
    crl_number: u64,
    certificates: Vec<Arc<CertRecord>>,
}

impl Snapshot {
    /// Writes `index.json` at once (at start, with nothing else running).
    fn write(&self, dir: &Path) -> Result<(), Error> {
        self.write_paced(dir, None).map(|_| ())
    }

    /// Writes `index.json`, at most `bytes_per_sec` when given (see
    /// [`fsutil::write_atomic_paced`]); returns how often writeback was started.
    fn write_paced(&self, dir: &Path, bytes_per_sec: Option<u64>) -> Result<u64, Error> {
        // Records are written as `&CertRecord`: `Arc` itself is not `Serialize` here.
        #[derive(Serialize)]
        struct Out<'a> {
            version: u32,
            crl_number: u64,
            certificates: Vec<&'a CertRecord>,
        }
        let out = Out {
            version: self.version,
            crl_number: self.crl_number,
            certificates: self.certificates.iter().map(|r| &**r).collect(),
        };
        // Streamed: at 100,000 records the pretty JSON is over 100 MB.
        let fill = |f: &mut dyn Write| {
            let mut w = std::io::BufWriter::with_capacity(1 << 16, f);
            serde_json::to_writer_pretty(&mut w, &out).map_err(std::io::Error::other)?;
            w.flush()
        };
        let path = dir.join("index.json");
        Ok(match bytes_per_sec {
            Some(rate) => fsutil::write_atomic_paced(&path, 0o644, rate, fill)?,
            None => {
                fsutil::write_atomic_with(&path, 0o644, fill)?;
                0
            }
        })
    }
}

/// Journal entries folded into a new snapshot after this many at least.
const COMPACT_AFTER: usize = 4096;

/// How many journal entries wait for a fold over an index of `records` (the journal's
/// included): [`COMPACT_AFTER`], or half the index once that is more. A fold rewrites
/// every record, so a fixed count made issuance O(certificates) again at scale (at
/// 100,000 records, over 100 MB of snapshot rewritten every 4,096 issues); half keeps a
/// fold's writing to two records per change, and what a start replays to half the index.
fn fold_after(records: usize) -> usize {
    COMPACT_AFTER.max(records / 2)
}

/// Lowers the calling thread's CPU priority by 10, as RocksDB does for its compactions:
/// a fold's work can wait, an answer to an issue should not, and on a small host the
/// fold's serialising of every record competed with issues and doubled their slowest
/// answers. Linux applies niceness to the calling thread only. A failure leaves the
/// priority as it was, which costs latency, never correctness.
fn lower_priority() {
    let _ = rustix::process::nice(10);
}

/// How fast a fold writes its snapshot while issues are answered: 100,000 records (over
/// 100 MB) in about two seconds, well before the next fold is due (half the index's
/// changes later), and a small share of any disk, so issues' journal syncs never queue
/// behind the whole snapshot (see [`fsutil::write_atomic_paced`]).
const FOLD_BYTES_PER_SEC: u64 = 64 * 1024 * 1024;

/// The journal being folded into a snapshot by a background thread.
const OLD_LOG: &str = "index.log.old";

/// One change in `index.log`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Change {
    /// A certificate was issued or signed.
    Insert(Box<CertRecord>),
    /// A certificate was revoked.
    Revoke {
        serial: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    /// The CRL number advanced.
    CrlNumber(u64),
}

impl IndexFile {
    /// An index of `certificates`, with its serial map built (a serial listed twice keeps
    /// its first record, as replaying an insert twice does).
    fn new(version: u32, crl_number: u64, certificates: Vec<Arc<CertRecord>>) -> IndexFile {
        let mut index = IndexFile {
            version,
            crl_number,
            certificates: Vec::with_capacity(certificates.len()),
            by_serial: std::collections::HashMap::with_capacity(certificates.len()),
        };
        for r in certificates {
            index.insert(r);
        }
        index
    }

    fn find(&self, serial: &str) -> Option<&CertRecord> {
        self.by_serial
            .get(serial)
            .and_then(|&i| self.certificates.get(i))
            .map(|r| &**r)
    }

    fn insert(&mut self, r: Arc<CertRecord>) {
        if !self.by_serial.contains_key(&r.serial) {
            self.by_serial
                .insert(r.serial.clone(), self.certificates.len());
            self.certificates.push(r);
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            version: self.version,
            crl_number: self.crl_number,
            certificates: self.certificates.clone(),
        }
    }

    /// Marks as not held every key the index says is held but `held` does not have. That
    /// is an issue a crash cut short: its key was appended after the held log's last sync
    /// began and its index line reached the disk with the journal's, so it was never
    /// answered. Left as it was, the record looked like the newest certificate of its name
    /// with a key (`Pki::find_held`), and every install for that name failed reading it.
    fn forget_lost_keys(&mut self, held: &held::Held, keys: &Path) {
        for r in &mut self.certificates {
            if r.key_held && !held.has(keys, &r.serial) {
                tracing::warn!(
                    serial = %r.serial,
                    cn = %r.names.common_name,
                    "the key of this certificate was lost in a crash before its issue was answered; it is no longer listed as held"
                );
                Arc::make_mut(r).key_held = false;
            }
        }
    }

    /// Applies a change; applying one twice changes nothing more.
    fn apply(&mut self, c: Change) {
        match c {
            Change::Insert(r) => self.insert(Arc::new(*r)),
            Change::Revoke { serial, at } => {
                if let Some(r) = self
                    .by_serial
                    .get(&serial)
                    .and_then(|&i| self.certificates.get_mut(i))
                    && r.revoked_at.is_none()
                {
                    // A snapshot being written keeps the record it shares.
                    Arc::make_mut(r).revoked_at = Some(at);
                }
            }
            Change::CrlNumber(n) => self.crl_number = self.crl_number.max(n),
        }
    }
}

/// In-memory copy of the index; every change is journaled durably before it is
/// acknowledged.
pub(super) struct Store {
    dir: PathBuf,
    held: held::Held,
    index: IndexFile,
    journal: File,
    journaled: usize,
    /// Number of the last change written to the journal.
    seq: u64,
    syncer: std::sync::Arc<Syncer>,
    /// The thread writing a snapshot, while it runs.
    folding: Option<std::thread::JoinHandle<()>>,
    /// Held by a test to stall the background fold before it writes.
    #[cfg(test)]
    fold_pause: Arc<std::sync::Mutex<()>>,
    /// The CPU priority the last background fold ran at, for a test.
    #[cfg(test)]
    fold_priority: Arc<std::sync::atomic::AtomicI32>,
    /// How often the last fold started writeback, for the test that it is paced.
    #[cfg(test)]
    fold_kicks: Arc<std::sync::atomic::AtomicU64>,
}

/// The placeholder the temporary names of keys staged by an older berth derive from
/// (leftovers of a crash are removed at start).
const STAGED_KEY: &str = "staged.key";

/// A change written to the journal (not yet necessarily durable): wait on it with
/// [`Syncer::wait`] before answering, outside the store's lock, so concurrent changes
/// share one sync.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ticket(u64);

/// Group commit of the journal, on a thread of its own: whenever something is written and
/// not yet durable, the thread syncs everything written so far and wakes whoever waits
/// for it, so concurrent changes share one sync. The held keys are synced first, so an
/// acknowledged index entry that says `key_held` always has its key (an unanswered one a
/// crash left without it is marked not held at the next start: `forget_lost_keys`).
///
/// A thread rather than a leader among the waiters: an issue then waits without a thread
/// of its own ([`Syncer::wait_async`]), and its answer is one task wake instead of a
/// blocking thread parked on a condition variable and woken again. Issuance at 16
/// callers on 2 cores spent more time switching between those threads than signing.
#[derive(Debug)]
pub(super) struct Syncer {
    /// The live journal; replaced when it is set aside to be folded.
    journal: std::sync::Mutex<Arc<File>>,
    held: File,
    held_path: PathBuf,
    /// A key was appended to `held` since its last sync. Most changes hold no key (a
    /// revocation, a CSR signed, a server certificate), and every fdatasync ends in a
    /// flush of the device cache even with nothing to write (ext4, XFS), so the sync
    /// skips the held keys when none is new.
    held_unsynced: std::sync::atomic::AtomicBool,
    /// Held while `held_unsynced` is taken and the held keys synced: the sync thread and a
    /// fold both sync, and the one that finds nothing new must not go on (to the journal,
    /// and acknowledge) while the other's sync of those keys is still under way.
    held_sync: std::sync::Mutex<()>,
    /// Syncs of `held`, for tests that prove it is synced only when it must be.
    #[cfg(test)]
    held_syncs: std::sync::atomic::AtomicU64,
    path: PathBuf,
    state: std::sync::Mutex<SyncState>,
    /// Blocking waiters.
    cv: std::sync::Condvar,
    /// The sync thread.
    work: std::sync::Condvar,
    /// `(synced, failed)` for waiters on a runtime (see [`SyncState`]).
    progress: tokio::sync::watch::Sender<(u64, u64)>,
    /// Held by a test to stall the sync.
    #[cfg(test)]
    pause: std::sync::Mutex<()>,
    /// Set by a test to make every sync fail (a disk gone bad).
    #[cfg(test)]
    pub(in crate::pki) fail: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct SyncState {
    written: u64,
    synced: u64,
    syncing: bool,
    /// Changes up to this one were in a sync that failed; they are never acknowledged.
    failed: u64,
    /// Why that sync failed: `(step, file, OS error)`.
    failure: Option<(&'static str, PathBuf, std::io::ErrorKind, String)>,
    /// The store is gone: the thread ends once nothing written is left unsynced.
    closed: bool,
    /// Syncs done, for tests that prove changes share one.
    #[cfg(test)]
    syncs: u64,
}

impl SyncState {
    /// `Some` once the change `t` is durable (`Ok`) or was lost with a failed sync.
    fn outcome(&self, t: Ticket) -> Option<Result<(), Error>> {
        if self.synced >= t.0 {
            return Some(Ok(()));
        }
        if self.failed >= t.0 {
            let (op, path, kind, msg) = self.failure.clone()?;
            return Some(Err(fsutil::Error::Io {
                op,
                path,
                source: std::io::Error::new(kind, msg),
            }
            .into()));
        }
        None
    }
}

impl Syncer {
    fn lock(&self) -> std::sync::MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes a key appended to the held log, before the index change that names it.
    fn held_written(&self) {
        self.held_unsynced
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn written(&self, seq: u64) {
        let mut s = self.lock();
        s.written = s.written.max(seq);
        drop(s);
        self.work.notify_one();
    }

    fn synced(&self, seq: u64) {
        let mut s = self.lock();
        s.synced = s.synced.max(seq);
        self.publish(s);
    }

    /// Wakes both kinds of waiter with what `s` now says.
    fn publish(&self, s: std::sync::MutexGuard<'_, SyncState>) {
        let progress = (s.synced, s.failed);
        drop(s);
        self.cv.notify_all();
        self.progress.send_replace(progress);
    }

    /// Returns once the change `t` is durable (blocking callers).
    pub(super) fn wait(&self, t: Ticket) -> Result<(), Error> {
        let mut s = self.lock();
        loop {
            if let Some(r) = s.outcome(t) {
                return r;
            }
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Returns once the change `t` is durable, without holding a thread meanwhile.
    pub(super) async fn wait_async(&self, t: Ticket) -> Result<(), Error> {
        let mut rx = self.progress.subscribe();
        // The sender lives in `self`, which outlives this call.
        let _ = rx
            .wait_for(|&(synced, failed)| synced >= t.0 || failed >= t.0)
            .await;
        self.lock().outcome(t).unwrap_or(Ok(()))
    }

    /// Lets the thread end once everything written is synced.
    fn close(&self) {
        self.lock().closed = true;
        self.work.notify_one();
    }

    /// The sync thread's loop (see [`Syncer`]).
    fn run(&self) {
        let mut s = self.lock();
        loop {
            if s.written > s.synced.max(s.failed) {
                s.syncing = true;
                drop(s);
                #[cfg(test)]
                let paused = self.pause.lock().unwrap_or_else(|e| e.into_inner());
                // Everything written until now is in this sync.
                let target = self.lock().written;
                let r = self.sync_now();
                #[cfg(test)]
                drop(paused);
                s = self.lock();
                s.syncing = false;
                #[cfg(test)]
                {
                    s.syncs += 1;
                }
                match r {
                    Ok(()) => s.synced = s.synced.max(target),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot make certificate index changes durable; they are refused");
                        s.failed = s.failed.max(target);
                        s.failure = Some(match e {
                            Error::Fs(fsutil::Error::Io { op, path, source }) => {
                                (op, path, source.kind(), source.to_string())
                            }
                            other => (
                                "fsync",
                                self.path.clone(),
                                std::io::ErrorKind::Other,
                                other.to_string(),
                            ),
                        });
                    }
                }
                self.publish(s);
                s = self.lock();
                continue;
            }
            if s.closed {
                return;
            }
            s = self.work.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn sync_now(&self) -> Result<(), Error> {
        #[cfg(test)]
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(fsutil::Error::Io {
                op: "fsync",
                path: self.path.clone(),
                source: std::io::Error::from_raw_os_error(5),
            }
            .into());
        }
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| fsutil::Error::Io { op, path, source }
        };
        // Taken before the journal is synced: a key appended after this belongs to an
        // index change that the next sync covers, with the key first.
        let syncing_held = self.held_sync.lock().unwrap_or_else(|e| e.into_inner());
        if self
            .held_unsynced
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            #[cfg(test)]
            self.held_syncs
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if let Err(e) = self.held.sync_data() {
                self.held_written();
                return Err(io("fsync", &self.held_path)(e).into());
            }
        }
        drop(syncing_held);
        let journal = self
            .journal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        journal.sync_data().map_err(io("fsync", &self.path))?;
        Ok(())
    }
}

impl Store {
    /// Reads the index, or starts an empty one when there is none. Anything unreadable is
    /// reported with the file's path and never overwritten.
    pub(super) fn open(dir: &Path) -> Result<Store, Error> {
        let path = dir.join("index.json");
        let index = match std::fs::read(&path) {
            Ok(bytes) => {
                let index: Stored =
                    serde_json::from_slice(&bytes).map_err(|e| Error::CorruptIndex {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                if index.version != INDEX_VERSION {
                    return Err(Error::CorruptIndex {
                        path,
                        reason: format!("version {} is not {INDEX_VERSION}", index.version),
                    });
                }
                IndexFile::new(
                    index.version,
                    index.crl_number,
                    index.certificates.into_iter().map(Arc::new).collect(),
                )
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                IndexFile::new(INDEX_VERSION, 0, Vec::new())
            }
            Err(source) => {
                return Err(fsutil::Error::Io {
                    op: "read",
                    path,
                    source,
                }
                .into());
            }
        };
        fsutil::create_dir_all(&dir.join("keys"), 0o700)?;
        // Keys a crash left staged never got a certificate.
        if let Ok(rd) = std::fs::read_dir(dir.join("keys")) {
            for e in rd.filter_map(Result::ok) {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!(".{STAGED_KEY}.tmp-"))
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let held = held::Held::open(&dir.join("keys"))?;
        let mut index = index;
        let log = dir.join("index.log");
        // A fold that did not finish: its changes come before the live journal's.
        replay(&dir.join(OLD_LOG), &mut index)?;
        replay(&log, &mut index)?;
        index.forget_lost_keys(&held, &dir.join("keys"));
        let journal = open_journal(&log)?;
        let syncer = std::sync::Arc::new(Syncer {
            journal: std::sync::Mutex::new(Arc::new(clone_file(&journal, &log)?)),
            held: held.handle()?,
            held_path: dir.join("keys").join(held::HELD_LOG),
            held_unsynced: std::sync::atomic::AtomicBool::new(false),
            held_sync: std::sync::Mutex::new(()),
            #[cfg(test)]
            held_syncs: std::sync::atomic::AtomicU64::new(0),
            path: log,
            state: std::sync::Mutex::default(),
            cv: std::sync::Condvar::new(),
            work: std::sync::Condvar::new(),
            progress: tokio::sync::watch::Sender::new((0, 0)),
            #[cfg(test)]
            pause: std::sync::Mutex::new(()),
            #[cfg(test)]
            fail: std::sync::atomic::AtomicBool::new(false),
        });
        let thread = syncer.clone();
        std::thread::Builder::new()
            .name("berth-pki-sync".into())
            .spawn(move || thread.run())
            .map_err(|source| fsutil::Error::Io {
                op: "start a thread to sync",
                path: dir.join("index.log"),
                source,
            })?;
        Ok(Store {
            dir: dir.to_path_buf(),
            held,
            index,
            journal,
            journaled: 0,
            seq: 0,
            syncer,
            folding: None,
            #[cfg(test)]
            fold_pause: Arc::default(),
            #[cfg(test)]
            fold_priority: Arc::new(std::sync::atomic::AtomicI32::new(i32::MIN)),
            #[cfg(test)]
            fold_kicks: Arc::default(),
        })
    }

    /// The group committer, to wait on a [`Ticket`] without holding the store.
    pub(super) fn syncer(&self) -> std::sync::Arc<Syncer> {
        self.syncer.clone()
    }

    /// Folds the journal into a fresh snapshot: called once the PKI is known to be sound,
    /// so a refused start rewrites nothing.
    pub(super) fn settle(&mut self) -> Result<(), Error> {
        self.compact()
    }

    pub(super) fn records(&self) -> &[Arc<CertRecord>] {
        &self.index.certificates
    }

    pub(super) fn find(&self, serial: &str) -> Option<&CertRecord> {
        self.index.find(serial)
    }

    /// A random serial of 127 bits. Positive and without a leading zero byte, so its DER
    /// and hex forms are the same bytes everywhere. Drawn without the lock, so certificates
    /// are signed in parallel; [`Store::insert`] refuses one the index already has.
    pub(super) fn random_serial() -> Result<Vec<u8>, Error> {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).map_err(|e| Error::KeyGeneration(e.to_string()))?;
        b[0] &= 0x7f;
        if b[0] == 0 {
            b[0] = 1;
        }
        Ok(b.to_vec())
    }

    /// Records a certificate: its key first (so an acknowledged index entry that says
    /// `key_held` always has its key), then the index. The change is written, not yet
    /// synced: wait on the ticket (outside the store's lock) before acknowledging it.
    pub(super) fn insert(
        &mut self,
        record: CertRecord,
        key: Option<&SecretKeyPem>,
    ) -> Result<Ticket, Error> {
        if self.find(&record.serial).is_some() {
            // One in 2^127 per pair; never two certificates with one serial (RFC 5280 4.1.2.2).
            return Err(Error::SerialTaken(record.serial));
        }
        if let Some(k) = key {
            self.held.append(&record.serial, k)?;
            self.syncer.held_written();
        }
        self.write(Change::Insert(Box::new(record)))
    }

    pub(super) fn revoke(&mut self, serial: &str, at: OffsetDateTime) -> Result<CertRecord, Error> {
        let rec = self
            .find(serial)
            .ok_or_else(|| Error::NotFound(serial.to_string()))?;
        if rec.revoked_at.is_some() {
            return Err(Error::AlreadyRevoked(serial.to_string()));
        }
        let mut out = rec.clone();
        out.revoked_at = Some(at);
        self.journal(Change::Revoke {
            serial: serial.to_string(),
            at,
        })?;
        Ok(out)
    }

    pub(super) fn next_crl_number(&mut self) -> Result<u64, Error> {
        let n = self.index.crl_number + 1;
        self.journal(Change::CrlNumber(n))?;
        Ok(n)
    }

    /// Appends `c` to the journal durably, then applies it.
    fn journal(&mut self, c: Change) -> Result<(), Error> {
        let t = self.write(c)?;
        self.syncer.wait(t)
    }

    /// Appends `c` to the journal (not synced), then applies it.
    fn write(&mut self, c: Change) -> Result<Ticket, Error> {
        let mut line = serde_json::to_vec(&c).map_err(|e| Error::InvalidRequest(e.to_string()))?;
        line.push(b'\n');
        let path = self.dir.join("index.log");
        let io = |op| {
            let path = path.clone();
            move |source| fsutil::Error::Io { op, path, source }
        };
        self.journal.write_all(&line).map_err(io("append to"))?;
        self.index.apply(c);
        self.seq += 1;
        self.syncer.written(self.seq);
        self.journaled += 1;
        if self.journaled >= fold_after(self.index.certificates.len())
            && self.folding.as_ref().is_none_or(|t| t.is_finished())
        {
            // The change is written; a fold that cannot start is retried at the next.
            if let Err(e) = self.fold() {
                tracing::error!(error = %e, dir = %self.dir.display(), "cannot fold the certificate index journal; retried later");
            }
        }
        Ok(Ticket(self.seq))
    }

    /// Writes the whole index as a new snapshot, then empties the journal (at start, with
    /// nothing else running).
    fn compact(&mut self) -> Result<(), Error> {
        self.wait_fold();
        // Keys written since the last sync are named in the snapshot: make their names
        // durable first.
        self.syncer.sync_now()?;
        self.index.snapshot().write(&self.dir)?;
        self.syncer.synced(self.seq);
        let path = self.dir.join("index.log");
        self.journal
            .set_len(0)
            .and_then(|()| self.journal.sync_all())
            .map_err(|source| fsutil::Error::Io {
                op: "truncate",
                path,
                source,
            })?;
        remove_durably(&self.dir, OLD_LOG)?;
        self.journaled = 0;
        Ok(())
    }

    /// Sets the journal aside and folds it into a snapshot on a thread of its own. Under
    /// the lock only a sync, a rename and a folder sync happen; records are shared with
    /// the thread, not copied.
    fn fold(&mut self) -> Result<(), Error> {
        self.wait_fold();
        // Everything written so far becomes part of the snapshot: its keys and journal
        // lines must be durable before the snapshot names them, and before the journal
        // holding them is set aside.
        self.syncer.sync_now()?;
        self.syncer.synced(self.seq);
        let log = self.dir.join("index.log");
        let old = self.dir.join(OLD_LOG);
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| fsutil::Error::Io { op, path, source }
        };
        // An earlier fold that failed left its journal set aside: fold into it again
        // instead of replacing it.
        if !old.exists() {
            std::fs::rename(&log, &old).map_err(io("rename", &log))?;
            let journal = open_journal(&log)?;
            fsutil::sync_dir(&self.dir)?;
            *self
                .syncer
                .journal
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Arc::new(clone_file(&journal, &log)?);
            self.journal = journal;
        }
        // Whatever happens to this fold, the next is tried so many changes later.
        self.journaled = 0;
        let snapshot = self.index.snapshot();
        let dir = self.dir.clone();
        #[cfg(test)]
        let (pause, fold_priority, fold_kicks) = (
            self.fold_pause.clone(),
            self.fold_priority.clone(),
            self.fold_kicks.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("berth-pki-fold".into())
            .spawn(move || {
                lower_priority();
                #[cfg(test)]
                let _paused = pause.lock().unwrap_or_else(|e| e.into_inner());
                #[cfg(test)]
                if let Ok(p) = rustix::process::getpriority_process(None) {
                    fold_priority.store(p, std::sync::atomic::Ordering::SeqCst);
                }
                let r = snapshot
                    .write_paced(&dir, Some(FOLD_BYTES_PER_SEC))
                    .and_then(|_kicks| {
                        #[cfg(test)]
                        fold_kicks.store(_kicks, std::sync::atomic::Ordering::SeqCst);
                        remove_durably(&dir, OLD_LOG)
                    });
                match r {
                    Ok(()) => {
                        tracing::debug!(certificates = snapshot.certificates.len(), "folded the certificate index journal into a snapshot")
                    }
                    Err(e) => {
                        tracing::error!(error = %e, dir = %dir.display(), "cannot fold the certificate index journal; retried later")
                    }
                }
            })
            .map_err(io("start a thread to fold", &old))?;
        self.folding = Some(thread);
        Ok(())
    }

    /// Waits for a fold in progress to end.
    fn wait_fold(&mut self) {
        if let Some(t) = self.folding.take() {
            let _ = t.join();
        }
    }

    pub(super) fn read_key(&self, serial: &str) -> Result<SecretKeyPem, Error> {
        self.held.read(&self.dir.join("keys"), serial)
    }

    /// True when a key is held for `serial`.
    #[cfg(test)]
    pub(super) fn holds_key(&self, serial: &str) -> bool {
        self.held.has(&self.dir.join("keys"), serial)
    }
}

impl Drop for Store {
    /// A fold still writing would race a store opened next on the same folder.
    fn drop(&mut self) {
        self.wait_fold();
        self.syncer.close();
    }
}

fn clone_file(f: &File, path: &Path) -> Result<File, Error> {
    f.try_clone().map_err(|source| {
        fsutil::Error::Io {
            op: "open",
            path: path.to_path_buf(),
            source,
        }
        .into()
    })
}

/// Removes `dir/name` if it is there, and makes the removal durable.
fn remove_durably(dir: &Path, name: &str) -> Result<(), Error> {
    let path = dir.join(name);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(fsutil::sync_dir(dir)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(fsutil::Error::Io {
            op: "remove",
            path,
            source,
        }
        .into()),
    }
}

fn open_journal(path: &Path) -> Result<File, Error> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(path)
        .map_err(|source| {
            fsutil::Error::Io {
                op: "open",
                path: path.to_path_buf(),
                source,
            }
            .into()
        })
}

/// Applies the journal to the snapshot. A last line without its newline is a change a
/// crash tore before it was acknowledged: ignored (and cut off by the compaction that
/// follows). Any other line that does not parse is damage, reported by line number.
fn replay(path: &Path, index: &mut IndexFile) -> Result<(), Error> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(fsutil::Error::Io {
                op: "read",
                path: path.to_path_buf(),
                source,
            }
            .into());
        }
    };
    let complete = bytes.len() - bytes.iter().rev().take_while(|b| **b != b'\n').count();
    for (n, line) in bytes[..complete].split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let c: Change = serde_json::from_slice(line).map_err(|e| Error::CorruptIndex {
            path: path.to_path_buf(),
            reason: format!("line {}: {e}", n + 1),
        })?;
        index.apply(c);
    }
    if complete < bytes.len() {
        // Cut the torn change off now, or the next append would extend it.
        let io = |op| {
            move |source| fsutil::Error::Io {
                op,
                path: path.to_path_buf(),
                source,
            }
        };
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io("open"))?;
        f.set_len(complete as u64).map_err(io("truncate"))?;
        f.sync_all().map_err(io("fsync"))?;
    }
    Ok(())
}

mod held;

#[cfg(test)]
mod tests;
