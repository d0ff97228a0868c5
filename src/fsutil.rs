//! Crash-safe file writes: a reader sees the old content or the new, never half a file.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a filesystem operation failed, with the path it failed on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O call failed; `op` names the step so the message says what to fix.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// The step that failed, e.g. "create", "rename".
        op: &'static str,
        /// The path it failed on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The path has no parent folder or no file name, so it cannot be written atomically.
    #[error("{0} is not a file path")]
    NotAFilePath(PathBuf),
}

impl Error {
    /// The OS error kind behind this error, so callers can tell "permission denied" apart.
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            Error::Io { source, .. } => Some(source.kind()),
            Error::NotAFilePath(_) => None,
        }
    }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` with `mode` so that the file is never seen half-written:
/// a temp file in the same folder is written, fsynced and renamed over `path`, then the
/// folder is fsynced so the rename survives a crash. The mode is set at creation, so a
/// secret is never readable by others, not even for an instant.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let tmp = stage(path, bytes, mode)?;
    commit(&tmp, path)
}

/// A hidden, unused temp name in `path`'s folder (`.<name>.tmp-<random>`), which GC and
/// fsck recognise as a leftover.
fn temp_beside(path: &Path) -> Result<PathBuf, Error> {
    let dir = parent(path)?;
    let name = path
        .file_name()
        .ok_or_else(|| Error::NotAFilePath(path.to_path_buf()))?;
    let mut suffix = [0u8; 6];
    getrandom::fill(&mut suffix).map_err(|e| Error::Io {
        op: "get randomness for",
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        hex::encode(suffix)
    )))
}

/// First half of [`write_atomic`]: writes and fsyncs a hidden temp file beside `path` and
/// returns its name. Lets a caller stage several files and rename them together.
pub fn stage(path: &Path, bytes: &[u8], mode: u32) -> Result<PathBuf, Error> {
    write_temp(path, bytes, mode, true)
}

/// [`stage`] without the fsync, for a caller that stages several files and syncs them
/// together: the file is returned open, its writeback already started (see
/// [`start_writeback`]), so the first of those syncs commits all of them at once.
pub fn stage_unsynced(path: &Path, bytes: &[u8], mode: u32) -> Result<(PathBuf, File), Error> {
    let (tmp, f) = write_temp_file(path, mode, false, |f| f.write_all(bytes))?;
    start_writeback(&f);
    Ok((tmp, f))
}

/// Asks the kernel to start writing `f`'s dirty pages now, without waiting. Only a hint
/// (the fsync that follows is what makes the bytes durable), but it decides what that
/// fsync costs: a journaling filesystem allocates the blocks of every file whose
/// writeback has started in its running transaction, so after several files are kicked
/// the first fsync's commit covers them all and the others find nothing left to commit.
/// Linux starts writeback on `POSIX_FADV_DONTNEED` and drops no page that is still dirty
/// or under writeback (`sync_file_range` would say it directly, but only through
/// `unsafe`, which this crate forbids). It does drop every page already clean, so it is
/// for files just written, never for one mostly synced already (an upload's data): that
/// would empty the page cache of the whole file.
pub fn start_writeback(f: &File) {
    start_writeback_range(f, 0, 0);
}

/// [`start_writeback`] for `len` bytes from `offset` (0: to the end).
fn start_writeback_range(f: &File, offset: u64, len: u64) {
    // Only ranges: whole files are staged by callers whose tests follow their syncs.
    #[cfg(test)]
    if len > 0 {
        record(Event::Writeback { offset, len });
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // A hint: a filesystem that ignores it costs the fsync its own commit, no more.
        let _ = posix_fadvise(f, offset, len, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (f, offset, len);
}

/// Writes `bytes` to a new hidden temp file beside `path` with exactly `mode`, fsynced
/// when `sync`; removed again on failure.
fn write_temp(path: &Path, bytes: &[u8], mode: u32, sync: bool) -> Result<PathBuf, Error> {
    write_temp_with(path, mode, sync, |f| f.write_all(bytes))
}

/// [`write_atomic`] for content produced by `fill` as it is written, so a large file (the
/// certificate index at 100,000 records is over 100 MB) is never held whole in memory.
pub fn write_atomic_with(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), Error> {
    let tmp = write_temp_with(path, mode, true, fill)?;
    commit(&tmp, path)
}

fn write_temp_with(
    path: &Path,
    mode: u32,
    sync: bool,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<PathBuf, Error> {
    write_temp_file(path, mode, sync, |f| fill(f)).map(|(tmp, _)| tmp)
}

/// [`write_atomic_with`] for a large file written in the background while other writes on
/// the same disk wait for their syncs (the certificate index's snapshot, folded while
/// issues are answered): the bytes go to the disk [`PACE_CHUNK`] at a time and at most
/// `bytes_per_sec`, instead of all at once at the final fsync. Written whole, a snapshot
/// of 16,000 certificates (19 MB) stalled the issues' journal syncs behind it: the
/// slowest answers of a run clustered at its folds (p99 6.9 ms and the slowest 25 ms,
/// against 5.5 and 12 with folding off). Returns how many times writeback was started
/// (for tests).
pub fn write_atomic_paced(
    path: &Path,
    mode: u32,
    bytes_per_sec: u64,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<u64, Error> {
    let mut kicks = 0;
    let (tmp, _) = write_temp_file(path, mode, true, |f| {
        let mut paced = Paced::new(f, bytes_per_sec, Wall::start());
        fill(&mut paced)?;
        kicks = paced.kicks();
        Ok(())
    })?;
    commit(&tmp, path)?;
    Ok(kicks)
}

/// Bytes a paced write hands to the disk at a time (see [`Paced`]).
pub const PACE_CHUNK: u64 = 256 * 1024;

/// Time as a paced write sees it: the wall clock, or a test's.
pub trait Clock {
    /// Time since the write began.
    fn elapsed(&self) -> std::time::Duration;
    /// Waits for `d`.
    fn sleep(&mut self, d: std::time::Duration);
}

/// The real clock, from the moment a write began.
#[derive(Debug)]
pub struct Wall(std::time::Instant);

impl Wall {
    /// A clock starting now.
    pub fn start() -> Wall {
        Wall(std::time::Instant::now())
    }
}

impl Clock for Wall {
    fn elapsed(&self) -> std::time::Duration {
        self.0.elapsed()
    }

    fn sleep(&mut self, d: std::time::Duration) {
        std::thread::sleep(d);
    }
}

/// A file writer that keeps a large background write from crowding out the small syncs
/// others wait on, as RocksDB's `bytes_per_sync` and rate limiter do for compactions:
/// every [`PACE_CHUNK`] written, writeback of what was just written starts (so dirty
/// pages never pile up for one long final fsync, whose device-cache flush every other
/// sync on the disk then queues behind), and the writer sleeps until the bytes so far fit
/// `bytes_per_sec`. Only the writer slows down; the final fsync still makes it durable.
#[derive(Debug)]
pub struct Paced<'f, C: Clock> {
    file: &'f File,
    bytes_per_sec: u64,
    clock: C,
    written: u64,
    kicked: u64,
    kicks: u64,
}

impl<'f, C: Clock> Paced<'f, C> {
    /// Paces writes to `file`, new and written from its start, at `bytes_per_sec` (at
    /// least 1).
    pub fn new(file: &'f File, bytes_per_sec: u64, clock: C) -> Paced<'f, C> {
        Paced {
            file,
            bytes_per_sec: bytes_per_sec.max(1),
            clock,
            written: 0,
            kicked: 0,
            kicks: 0,
        }
    }

    /// How many times writeback was started.
    pub fn kicks(&self) -> u64 {
        self.kicks
    }
}

impl<C: Clock> Write for Paced<'_, C> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = (&mut &*self.file).write(buf)?;
        self.written += n as u64;
        // Whole pages only: a page cut at the end would be written now and again later.
        let end = self.written & !4095;
        if end - self.kicked >= PACE_CHUNK {
            start_writeback_range(self.file, self.kicked, end - self.kicked);
            self.kicked = end;
            self.kicks += 1;
            let due =
                std::time::Duration::from_secs_f64(self.written as f64 / self.bytes_per_sec as f64);
            let elapsed = self.clock.elapsed();
            if due > elapsed {
                self.clock.sleep(due - elapsed);
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        (&mut &*self.file).flush()
    }
}

/// [`write_temp_with`], returning the temp file still open.
fn write_temp_file(
    path: &Path,
    mode: u32,
    sync: bool,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<(PathBuf, File), Error> {
    let tmp = temp_beside(path)?;
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        // The umask may have cleared bits of `mode`; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io("set mode on", &tmp))?;
        fill(&mut f).map_err(io("write", &tmp))?;
        if sync {
            f.sync_all().map_err(io("fsync", &tmp))?;
        }
        Ok(f)
    })();
    match result {
        Ok(f) => Ok((tmp, f)),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Second half of [`write_atomic`]: renames a staged temp file over `path` and fsyncs the
/// folder. On failure the temp file is removed.
pub fn commit(tmp: &Path, path: &Path) -> Result<(), Error> {
    if let Err(e) = fs::rename(tmp, path) {
        let _ = fs::remove_file(tmp);
        return Err(io("rename into place", path)(e));
    }
    sync_dir(parent(path)?)
}

/// Deletes `path` and fsyncs its folder, so the deletion survives a crash.
pub fn remove_durable(path: &Path) -> Result<(), Error> {
    fs::remove_file(path).map_err(io("remove", path))?;
    sync_dir(parent(path)?)
}

/// Creates `dir` and its parents; a folder created here gets `mode` exactly, an existing
/// one is left as it is.
pub fn create_dir_all(dir: &Path, mode: u32) -> Result<(), Error> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(p) = dir.parent()
        && !p.as_os_str().is_empty()
    {
        create_dir_all(p, mode)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {
            fs::set_permissions(dir, fs::Permissions::from_mode(mode))
                .map_err(io("set mode on", dir))?;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(io("create folder", dir)(e)),
    }
}

/// [`create_dir_all`], returning what makes the new folders durable: the folder holding
/// each one it created, outermost first, for the caller to fsync once its own changes in
/// them are made too (a new folder's name is an entry in its parent, which its own fsync
/// does not cover, so a power loss would otherwise drop a synced file's whole folder). On a journaling filesystem a sync right after each change costs a
/// commit each; syncs after all the changes share one.
pub fn create_dir_all_unsynced(dir: &Path, mode: u32) -> Result<Vec<PathBuf>, Error> {
    let mut made = Vec::new();
    make_dirs(dir, mode, &mut made)?;
    Ok(made)
}

fn make_dirs(dir: &Path, mode: u32, made: &mut Vec<PathBuf>) -> Result<(), Error> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(p) = parent {
        make_dirs(p, mode, made)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {
            fs::set_permissions(dir, fs::Permissions::from_mode(mode))
                .map_err(io("set mode on", dir))?;
            if let Some(p) = parent {
                made.push(p.to_path_buf());
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(io("create folder", dir)(e)),
    }
}

/// Writes `bytes` to `path` so it is never seen half-written (a temp file renamed over
/// it), without making it durable: for scratch state a crash may lose, such as an
/// upload's start, where two fsyncs per upload bought nothing.
pub fn write_atomic_volatile(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let tmp = write_temp(path, bytes, mode, false)?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io("rename into place", path)(e)
    })
}

/// Reads a file, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>, Error> {
    fs::read(path).map_err(io("read", path))
}

fn parent(path: &Path) -> Result<&Path, Error> {
    match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Ok(Path::new(".")),
        Some(p) => Ok(p),
        None => Err(Error::NotAFilePath(path.to_path_buf())),
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    #[cfg(test)]
    record(Event::SyncDir(dir.to_path_buf()));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync folder", dir))
}

/// Fsyncs `f`, the file at `path`.
pub(crate) fn sync_file(f: &File, path: &Path) -> Result<(), Error> {
    #[cfg(test)]
    record(Event::SyncFile(path.to_path_buf()));
    f.sync_all().map_err(io("fsync", path))
}

/// Renames `from` to `to`, replacing what was there; not durable until `to`'s folder is
/// synced.
pub(crate) fn rename(from: &Path, to: &Path) -> Result<(), Error> {
    #[cfg(test)]
    record(Event::Rename(to.to_path_buf()));
    fs::rename(from, to).map_err(io("move into place", to))
}

/// What tests see of the steps that make content durable, in the order this thread made
/// them.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// A folder fsynced.
    SyncDir(PathBuf),
    /// A file fsynced.
    SyncFile(PathBuf),
    /// A name moved into place at this path.
    Rename(PathBuf),
    /// Writeback asked to start for `len` bytes from `offset` (ranges only).
    Writeback {
        /// Where.
        offset: u64,
        /// How much.
        len: u64,
    },
}

#[cfg(test)]
fn record(e: Event) {
    EVENTS.with(|s| s.borrow_mut().push(e));
}

/// The folders this thread fsynced since the last call, emptying its record.
#[cfg(test)]
pub(crate) fn take_dir_syncs() -> Vec<PathBuf> {
    take_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::SyncDir(d) => Some(d),
            _ => None,
        })
        .collect()
}

/// Everything this thread recorded since the last call, emptying its record.
#[cfg(test)]
pub(crate) fn take_events() -> Vec<Event> {
    EVENTS.with(|s| std::mem::take(&mut *s.borrow_mut()))
}

#[cfg(test)]
thread_local! {
    /// What this thread made durable, for tests of what is synced and when.
    static EVENTS: std::cell::RefCell<Vec<Event>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(test)]
mod tests;
