//! The audit log: every mutation on both APIs, and every denial, as one JSON line, durable
//! before the request is answered. The cores record (they know what happened and who
//! asked); this sink makes it durable.
//!
//! One writer thread owns the file. A record is serialised by the caller (serde_json
//! escapes every control character, so a subject cannot forge a line), appended to a
//! queue, and the caller waits until the writer has written and `fdatasync`ed the batch
//! holding it: concurrent requests share one sync (group commit). Each batch is one
//! `write` on an `O_APPEND` file, so records are never interleaved; a record torn by a
//! crash mid-write is cut off at the next start. The file rotates by size
//! (`audit.log` -> `audit.log.1` ...) keeping `keep` old files; every file is 0600.
//!
//! A write that fails (disk full) is logged as an error and counted; the request it
//! belongs to is still answered, because what it did has already happened.

mod query;
mod record;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

pub use query::Filter;
pub use record::{Action, Actor, Context, Decision, Record, Target};

use crate::fsutil;

/// Why the audit log cannot be opened, written or read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("audit log: cannot {op} {path}: {source}")]
    Io {
        /// The step.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The folder could not be made.
    #[error(transparent)]
    Fs(#[from] fsutil::Error),
    /// The writer could not make a batch durable; the message says why.
    #[error("audit log: write failed: {0}")]
    Write(String),
    /// A query was malformed.
    #[error("audit query: {0}")]
    Query(String),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// `[audit]` in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Record at all.
    pub enabled: bool,
    /// Folder of the log; default `<state_dir>/audit`.
    pub dir: Option<PathBuf>,
    /// Size in bytes above which `audit.log` is rotated.
    pub max_bytes: u64,
    /// Rotated files kept (`audit.log.1` is the newest).
    pub keep: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            enabled: true,
            dir: None,
            max_bytes: 64 * 1024 * 1024,
            keep: 5,
        }
    }
}

/// The name of the live file.
const FILE: &str = "audit.log";

/// The handle cores record through; clones share one writer. [`Audit::disabled`]
/// records nothing.
#[derive(Debug, Clone, Default)]
pub struct Audit {
    inner: Option<Arc<Handle>>,
    /// On a registry replica: records go to this queue, which the replica sends on to its
    /// primary's log, instead of to a file (a replica keeps nothing on disk).
    forward: Option<Arc<Forward>>,
}

#[derive(Debug)]
struct Forward {
    tx: tokio::sync::mpsc::Sender<Record>,
    lost: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    /// The last handle gone: the writer finishes what is queued and exits.
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
    }
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    max_bytes: u64,
    keep: u32,
    queue: Mutex<Queue>,
    /// The writer waits here for records.
    wake: Condvar,
    /// Blocking callers wait here for their batch.
    synced: Condvar,
    /// Async callers wait here: the sequence number written so far.
    synced_tx: tokio::sync::watch::Sender<u64>,
    /// Held by a test to stall the writer before it writes.
    #[cfg(test)]
    pause: Mutex<()>,
}

#[derive(Debug, Default)]
struct Queue {
    buf: Vec<u8>,
    /// Sequence number of the last record queued.
    queued: u64,
    /// Sequence number of the last record the writer dealt with.
    done: u64,
    /// The latest failed batch: first and last sequence numbers, and why.
    failed: Option<(u64, u64, String)>,
    /// Records lost to failed writes since start.
    lost: u64,
    stop: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn outcome(&self, q: &Queue, seq: u64) -> Result<(), Error> {
        match &q.failed {
            Some((from, to, why)) if (*from..=*to).contains(&seq) => Err(Error::Write(why.clone())),
            _ => Ok(()),
        }
    }
}

impl Audit {
    /// A handle that records nothing (tests, tools that open a core offline).
    pub fn disabled() -> Audit {
        Audit::default()
    }

    /// A handle that queues records for someone else to keep (a replica's primary), up to
    /// `capacity` of them; past that, records are counted as lost rather than slowing
    /// requests down. Queued is as durable as it gets here: what a replica had not sent
    /// when it died is lost.
    pub fn forwarding(capacity: usize) -> (Audit, tokio::sync::mpsc::Receiver<Record>) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        let audit = Audit {
            inner: None,
            forward: Some(Arc::new(Forward {
                tx,
                lost: std::sync::atomic::AtomicU64::new(0),
            })),
        };
        (audit, rx)
    }

    /// Counts records that could not be kept (a forwarding queue that stayed full).
    pub fn count_lost(&self, n: u64) {
        if let Some(f) = &self.forward {
            f.lost.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Opens (creating, 0700/0600) the log in `dir` and starts its writer. A record torn
    /// by a crash at the end of the file is cut off here.
    pub fn open(dir: &Path, settings: &Settings) -> Result<Audit, Error> {
        fsutil::create_dir_all(dir, 0o700)?;
        let path = dir.join(FILE);
        let file = open_file(&path)?;
        repair_tail(&file, &path)?;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            max_bytes: settings.max_bytes.max(4096),
            keep: settings.keep,
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            synced: Condvar::new(),
            synced_tx: tokio::sync::watch::channel(0).0,
            #[cfg(test)]
            pause: Mutex::new(()),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("berth-audit".into())
            .spawn(move || writer(&s, file))
            .map_err(io("start the writer of", &path))?;
        Ok(Audit {
            inner: Some(Arc::new(Handle { shared })),
            forward: None,
        })
    }

    /// The folder of the log, when recording.
    pub fn dir(&self) -> Option<&Path> {
        self.inner.as_ref().map(|h| h.shared.dir.as_path())
    }

    /// Records lost to failed writes since start (for metrics).
    pub fn lost(&self) -> u64 {
        let forwarded = self
            .forward
            .as_ref()
            .map_or(0, |f| f.lost.load(std::sync::atomic::Ordering::Relaxed));
        self.inner.as_ref().map_or(0, |h| h.shared.lock().lost) + forwarded
    }

    fn enqueue(&self, rec: &Record) -> Option<(&Shared, u64)> {
        if let Some(f) = &self.forward {
            if f.tx.try_send(rec.clone()).is_err() {
                f.lost.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    action = rec.action.name(),
                    "audit record lost: the queue to the primary is full"
                );
            }
            return None;
        }
        let h = self.inner.as_ref()?;
        let mut line = match serde_json::to_vec(rec) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "audit record not serialisable");
                return None;
            }
        };
        line.push(b'\n');
        let mut q = h.shared.lock();
        q.buf.extend_from_slice(&line);
        q.queued += 1;
        let seq = q.queued;
        drop(q);
        h.shared.wake.notify_one();
        Some((&h.shared, seq))
    }

    /// Records `rec` and waits until it is durable (blocking callers: the PKI door).
    pub fn record(&self, rec: &Record) -> Result<(), Error> {
        self.begin(rec).wait()
    }

    /// Queues `rec` and returns at once; [`Pending::wait`] waits until it is durable. For
    /// a change already written whose own sync is still to come (a certificate issued):
    /// the two syncs then run side by side instead of one after the other, which is most
    /// of an issue's time. The price is a crash window: the record may outlive the change
    /// it describes, which was never answered (a certificate no one received and the
    /// index does not hold). A change whose sync fails is recorded again, as failed.
    pub fn begin(&self, rec: &Record) -> Pending<'_> {
        Pending {
            at: self.enqueue(rec),
            action: rec.action.name(),
        }
    }

    /// Records `rec` and waits until it is durable, without blocking a runtime thread.
    pub async fn record_async(&self, rec: &Record) -> Result<(), Error> {
        let Some(h) = self.inner.as_ref() else {
            // Forwarded (or disabled): queued is all there is.
            let _ = self.enqueue(rec);
            return Ok(());
        };
        let mut rx = h.shared.synced_tx.subscribe();
        let Some((s, seq)) = self.enqueue(rec) else {
            return Ok(());
        };
        // The sender lives in `Shared`, which this handle keeps alive.
        let _ = rx.wait_for(|done| *done >= seq).await;
        s.outcome(&s.lock(), seq)
    }

    /// Records and logs a failure instead of returning it: the operation it describes has
    /// already happened and is answered either way.
    pub fn note(&self, rec: &Record) {
        if let Err(e) = self.record(rec) {
            tracing::error!(error = %e, action = rec.action.name(), "audit record lost");
        }
    }

    /// As [`Audit::note`], without blocking a runtime thread.
    pub async fn note_async(&self, rec: &Record) {
        if let Err(e) = self.record_async(rec).await {
            tracing::error!(error = %e, action = rec.action.name(), "audit record lost");
        }
    }

    /// The records `filter` selects, oldest first (from the rotated files and the live
    /// one); lines that do not parse are skipped.
    pub fn query(&self, filter: &Filter) -> Result<Vec<Record>, Error> {
        match self.dir() {
            Some(d) => query::run(d, self.keep(), filter),
            None => Ok(Vec::new()),
        }
    }

    fn keep(&self) -> u32 {
        self.inner.as_ref().map_or(0, |h| h.shared.keep)
    }
}

/// A record queued by [`Audit::begin`], not yet known to be durable.
#[derive(Debug)]
#[must_use = "a record is durable only once waited for"]
pub struct Pending<'a> {
    at: Option<(&'a Shared, u64)>,
    action: &'static str,
}

impl Pending<'_> {
    /// Waits until the record is durable.
    pub fn wait(self) -> Result<(), Error> {
        let Some((s, seq)) = self.at else {
            return Ok(());
        };
        let mut q = s.lock();
        while q.done < seq {
            q = s.synced.wait(q).unwrap_or_else(|e| e.into_inner());
        }
        s.outcome(&q, seq)
    }

    /// Waits until the record is durable, without blocking a runtime thread.
    pub async fn wait_async(self) -> Result<(), Error> {
        let Some((s, seq)) = self.at else {
            return Ok(());
        };
        // The current value counts: a record already synced returns at once.
        let _ = s.synced_tx.subscribe().wait_for(|done| *done >= seq).await;
        s.outcome(&s.lock(), seq)
    }

    /// As [`Pending::note`], without blocking a runtime thread.
    pub async fn note_async(self) {
        let action = self.action;
        if let Err(e) = self.wait_async().await {
            tracing::error!(error = %e, action, "audit record lost");
        }
    }

    /// Waits, and logs a failure instead of returning it (see [`Audit::note`]).
    pub fn note(self) {
        let action = self.action;
        if let Err(e) = self.wait() {
            tracing::error!(error = %e, action, "audit record lost");
        }
    }
}

fn open_file(path: &Path) -> Result<File, Error> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .mode(0o600)
        .open(path)
        .map_err(io("open", path))
}

/// Cuts off a last line without its newline: a record a crash tore.
fn repair_tail(file: &File, path: &Path) -> Result<(), Error> {
    let len = file.metadata().map_err(io("stat", path))?.len();
    if len == 0 {
        return Ok(());
    }
    let mut f = file;
    let window = len.min(1 << 20);
    f.seek(SeekFrom::Start(len - window))
        .map_err(io("read", path))?;
    let mut tail = Vec::with_capacity(window as usize);
    f.take(window)
        .read_to_end(&mut tail)
        .map_err(io("read", path))?;
    if tail.last() == Some(&b'\n') {
        return Ok(());
    }
    let keep = match tail.iter().rposition(|b| *b == b'\n') {
        Some(i) => len - window + i as u64 + 1,
        None if window == len => 0,
        // A line longer than the window: keep it rather than guess.
        None => return Ok(()),
    };
    tracing::warn!(path = %path.display(), dropped = len - keep, "audit log ended in a torn record (a crash mid-write); cut off");
    file.set_len(keep).map_err(io("truncate", path))?;
    file.sync_all().map_err(io("fsync", path))
}

/// The writer thread: takes everything queued, writes it in one call, syncs, wakes the
/// waiters, rotates when the file is too big.
fn writer(s: &Shared, mut file: File) {
    let path = s.dir.join(FILE);
    let mut size = file.metadata().map(|m| m.len()).unwrap_or(0);
    loop {
        let (buf, first, last) = {
            let mut q = s.lock();
            while q.buf.is_empty() && !q.stop {
                q = s.wake.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            if q.buf.is_empty() {
                return;
            }
            (std::mem::take(&mut q.buf), q.done + 1, q.queued)
        };
        #[cfg(test)]
        let paused = s.pause.lock().unwrap_or_else(|e| e.into_inner());
        let r = file.write_all(&buf).and_then(|()| file.sync_data());
        #[cfg(test)]
        drop(paused);
        size += buf.len() as u64;
        {
            let mut q = s.lock();
            q.done = last;
            if let Err(e) = &r {
                q.failed = Some((first, last, e.to_string()));
                q.lost += last - first + 1;
            }
        }
        s.synced.notify_all();
        s.synced_tx.send_replace(last);
        if size >= s.max_bytes {
            match rotate(s, &path) {
                Ok(f) => {
                    file = f;
                    size = 0;
                }
                Err(e) => {
                    tracing::error!(error = %e, "audit log rotation failed; still writing to the live file")
                }
            }
        }
    }
}

/// `audit.log.(keep-1)` -> `.keep` ... `audit.log` -> `.1`, then a new live file.
fn rotate(s: &Shared, path: &Path) -> Result<File, Error> {
    let name = |n: u32| s.dir.join(format!("{FILE}.{n}"));
    if s.keep == 0 {
        std::fs::remove_file(path).map_err(io("remove", path))?;
    } else {
        let _ = std::fs::remove_file(name(s.keep));
        for n in (1..s.keep).rev() {
            let from = name(n);
            if from.exists() {
                std::fs::rename(&from, name(n + 1)).map_err(io("rotate", &from))?;
            }
        }
        std::fs::rename(path, name(1)).map_err(io("rotate", path))?;
    }
    let f = open_file(path)?;
    File::open(&s.dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", &s.dir))?;
    Ok(f)
}

#[cfg(test)]
mod tests;
