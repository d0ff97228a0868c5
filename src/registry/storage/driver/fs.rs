//! The filesystem driver: a key is a path below the root, so the tree is exactly
//! registry:2's filesystem layout and `docker-registry` can serve it in place. Objects are
//! written through a temp file, fsynced, renamed and the folder fsynced; modes are set
//! explicitly (0644 files, 0755 folders), never left to the umask.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{Driver, Entry, Key, Meta, Op, Writer, io_error};
use crate::fsutil;
use crate::registry::Error;

/// Mode of every content file.
const FILE_MODE: u32 = 0o644;
/// Mode of every folder.
const DIR_MODE: u32 = 0o755;

/// Bytes an upload writes between two background syncs.
const WRITE_BEHIND: u64 = 8 * 1024 * 1024;

/// An append handle that syncs what it has written every [`WRITE_BEHIND`] bytes on a
/// thread of its own, while writing goes on. The commit fsync of an upload then waits only
/// for the tail instead of the whole blob, and a large upload never piles up gigabytes of
/// dirty pages for the kernel to throttle. At most one sync is in flight; its error fails
/// the next write.
struct WriteBehind {
    file: File,
    unsynced: u64,
    flushing: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl WriteBehind {
    fn settle(&mut self) -> std::io::Result<()> {
        match self.flushing.take() {
            Some(job) => job
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("background sync panicked"))),
            None => Ok(()),
        }
    }
}

impl std::io::Write for WriteBehind {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.unsynced += n as u64;
        if self.unsynced >= WRITE_BEHIND {
            self.settle()?;
            let f = self.file.try_clone()?;
            // Builder, not spawn: a host out of threads fails this write, never panics.
            self.flushing = Some(
                std::thread::Builder::new()
                    .name("berth-writeback".into())
                    .spawn(move || f.sync_data())?,
            );
            self.unsynced = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl super::Append for WriteBehind {
    fn finish(mut self: Box<Self>) -> std::io::Result<()> {
        // The bytes are in the file already; report a failed background sync now.
        self.settle()
    }

    /// Only a background sync still running is waited for: a layer of a few MiB never
    /// starts one, and its finish is free.
    fn finish_blocks(&self) -> bool {
        self.flushing.as_ref().is_some_and(|job| !job.is_finished())
    }
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        // Nothing to report to: the commit fsyncs again and sees any failure.
        let _ = self.settle();
    }
}

/// Objects as files below a root folder.
#[derive(Debug)]
pub(crate) struct FsDriver {
    root: PathBuf,
}

impl FsDriver {
    /// A driver over `root` (registry:2's `rootdirectory`); folders are made on first write.
    pub(crate) fn new(root: &Path) -> FsDriver {
        FsDriver {
            root: root.to_path_buf(),
        }
    }

    fn path(&self, key: &Key) -> PathBuf {
        self.root.join(key.as_str())
    }

    /// Creates the folders above `path` for scratch state, which need not survive a power
    /// loss.
    fn make_parent(&self, path: &Path) -> Result<(), Error> {
        match path.parent() {
            Some(dir) => Ok(fsutil::create_dir_all(dir, DIR_MODE)?),
            None => Ok(()),
        }
    }

    /// The names half of [`Driver::apply`]: every staged source (a temp file for a put,
    /// the object for a rename) is moved into place step by step, and after each step
    /// the folders it changed are fsynced, with those whose new child folders `made`
    /// holds in the first. Counts in `renamed` the puts' temp files already moved.
    fn place(
        &self,
        steps: &[&[Op<'_>]],
        temps: &[PathBuf],
        mut made: Vec<PathBuf>,
        renamed: &mut usize,
    ) -> Result<(), Error> {
        for step in steps {
            let mut changed: BTreeSet<PathBuf> = made.drain(..).collect();
            for op in *step {
                let dst = self.path(op.target());
                match op {
                    Op::Put(..) => {
                        fsutil::rename(&temps[*renamed], &dst)?;
                        *renamed += 1;
                    }
                    Op::Rename(from, _) => fsutil::rename(&self.path(from), &dst)?,
                }
                if let Some(dir) = dst.parent() {
                    changed.insert(dir.to_path_buf());
                }
            }
            for dir in &changed {
                fsutil::sync_dir(dir)?;
            }
        }
        Ok(())
    }
}

fn absent(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

impl Driver for FsDriver {
    fn locate(&self, key: &Key) -> PathBuf {
        self.path(key)
    }

    fn stat(&self, key: &Key) -> Result<Option<Meta>, Error> {
        let path = self.path(key);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(Meta {
                size: m.len(),
                modified: m.modified().map_err(io_error("stat", path))?,
            })),
            Ok(_) => Ok(None),
            Err(e) if absent(&e) => Ok(None),
            Err(e) => Err(io_error("stat", path)(e)),
        }
    }

    fn has_children(&self, key: &Key) -> Result<bool, Error> {
        Ok(self.path(key).is_dir())
    }

    fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, Error> {
        let path = self.path(key);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if absent(&e) || e.kind() == std::io::ErrorKind::IsADirectory => Ok(None),
            Err(e) => Err(io_error("read", path)(e)),
        }
    }

    fn reader(&self, key: &Key, offset: u64) -> Result<Option<Box<dyn Read + Send>>, Error> {
        let path = self.path(key);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if absent(&e) => return Ok(None),
            Err(e) => return Err(io_error("open", path)(e)),
        };
        if offset > 0 {
            f.seek(SeekFrom::Start(offset))
                .map_err(io_error("seek in", path))?;
        }
        Ok(Some(Box::new(f)))
    }

    fn put(&self, key: &Key, bytes: &[u8]) -> Result<(), Error> {
        self.apply(&[&[Op::Put(key, bytes)]])
    }

    fn put_scratch(&self, key: &Key, bytes: &[u8]) -> Result<(), Error> {
        let path = self.path(key);
        self.make_parent(&path)?;
        Ok(fsutil::write_atomic_volatile(&path, bytes, FILE_MODE)?)
    }

    fn append(&self, key: &Key) -> Result<Writer, Error> {
        let path = self.path(key);
        // Uploads are scratch until committed by `rename`, which makes them durable.
        self.make_parent(&path)?;
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(FILE_MODE)
            .open(&path)
            .map_err(io_error("open", path.clone()))?;
        // The umask may have cleared bits at creation; set the mode exactly.
        file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
            .map_err(io_error("set mode on", path))?;
        Ok(Box::new(WriteBehind {
            file,
            unsynced: 0,
            flushing: None,
        }))
    }

    fn truncate(&self, key: &Key, len: u64) -> Result<(), Error> {
        let path = self.path(key);
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_error("open", path.clone()))?;
        f.set_len(len).map_err(io_error("truncate", path.clone()))?;
        f.sync_all().map_err(io_error("fsync", path))
    }

    fn list(&self, key: &Key) -> Result<Vec<Entry>, Error> {
        let dir = self.path(key);
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if absent(&e) => return Ok(Vec::new()),
            Err(e) => return Err(io_error("list", dir)(e)),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(io_error("list", dir.clone()))?;
            let t = e.file_type().map_err(io_error("list", dir.clone()))?;
            out.push(Entry {
                name: e.file_name().to_string_lossy().into_owned(),
                is_dir: t.is_dir(),
            });
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &Key) -> Result<bool, Error> {
        let path = self.path(key);
        let r = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path),
            Ok(_) => std::fs::remove_file(&path),
            Err(e) if absent(&e) => return Ok(false),
            Err(e) => return Err(io_error("stat", path)(e)),
        };
        match r {
            Ok(()) => Ok(true),
            Err(e) if absent(&e) => Ok(false),
            Err(e) => Err(io_error("remove", path)(e)),
        }
    }

    fn changed_at(&self, key: &Key) -> Result<Option<std::time::SystemTime>, Error> {
        let path = self.path(key);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => Ok(Some(m.modified().map_err(io_error("stat", path))?)),
            Ok(_) => Ok(None),
            Err(e) if absent(&e) => Ok(None),
            Err(e) => Err(io_error("stat", path)(e)),
        }
    }

    fn rename(&self, from: &Key, to: &Key) -> Result<(), Error> {
        self.apply(&[&[Op::Rename(from, to)]])
    }

    /// Folders for every step first (temp files are staged beside their targets), then
    /// all the content, then the names step by step. Content is synced before any name
    /// points at it, so after a crash a name holds all its bytes; the content of every
    /// step is staged and its writeback started before the first sync (of the objects
    /// moved, which come first), so one journal commit covers it all; a step's folders
    /// are synced once, after all its names. A blob's commit with its layer link is three
    /// commits instead of seven.
    fn apply(&self, steps: &[&[Op<'_>]]) -> Result<(), Error> {
        let mut made = Vec::new();
        for op in steps.iter().copied().flatten() {
            if let Some(dir) = self.path(op.target()).parent() {
                made.extend(fsutil::create_dir_all_unsynced(dir, DIR_MODE)?);
            }
        }
        let mut temps = Vec::new();
        let mut renamed = 0;
        let result = (|| {
            // Moved objects are synced before staged ones, so the journal commit of the
            // first sync also covers the staged files, whose writeback has started.
            let (mut moved, mut staged) = (Vec::new(), Vec::new());
            for op in steps.iter().copied().flatten() {
                match *op {
                    Op::Put(key, bytes) => {
                        let (tmp, f) = fsutil::stage_unsynced(&self.path(key), bytes, FILE_MODE)?;
                        temps.push(tmp.clone());
                        staged.push((tmp, f));
                    }
                    // No writeback hint here: a moved object is an upload's data, synced
                    // all but its tail as it was written (WriteBehind), and the hint would
                    // drop its clean pages, the whole blob, from the page cache, so the
                    // first pull after a push would read it back from the disk.
                    Op::Rename(from, _) => {
                        let src = self.path(from);
                        let f = File::open(&src).map_err(io_error("open", src.clone()))?;
                        moved.push((src, f));
                    }
                }
            }
            for (path, f) in moved.iter().chain(&staged) {
                fsutil::sync_file(f, path)?;
            }
            self.place(steps, &temps, made, &mut renamed)
        })();
        if result.is_err() {
            for tmp in temps.iter().skip(renamed) {
                let _ = std::fs::remove_file(tmp);
            }
        }
        result
    }
}
