//! The storage driver seam: registry content is a set of keys (computed by the pure
//! [`super::paths`] mapper) over a small driver that does the I/O. The filesystem driver
//! is byte for byte registry:2's layout; the in-memory driver serves tests; an object-store
//! driver (S3) fits the same trait. One test suite (`tests.rs`) runs against every driver,
//! so they cannot drift apart.
//!
//! The trait is synchronous on purpose: storage always calls it from a blocking thread
//! (`spawn_blocking`), which suits the filesystem, keeps GC and fsck readable, and lets a
//! network driver block on its own runtime handle there.

mod fs;
mod memory;
mod s3;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::SystemTime;

pub(crate) use fs::FsDriver;
pub(crate) use memory::MemoryDriver;
pub(crate) use s3::S3Driver;

use crate::registry::Error;

/// A storage key: `/`-separated segments below the storage root, never empty, never `..`.
/// Built only by the path mapper from validated names and digests.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Key(String);

impl Key {
    /// The key `segments` spell, joined with `/`.
    pub(crate) fn new(s: impl Into<String>) -> Key {
        Key(s.into())
    }

    /// A key below this one.
    pub(crate) fn join(&self, rest: &str) -> Key {
        if self.0.is_empty() {
            Key(rest.to_string())
        } else {
            Key(format!("{}/{rest}", self.0))
        }
    }

    /// The key one level up (`None` at the top).
    pub(crate) fn parent(&self) -> Option<Key> {
        self.0.rsplit_once('/').map(|(p, _)| Key(p.to_string()))
    }

    /// The key as text.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What `stat` reports about a stored object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    /// Length in bytes.
    pub size: u64,
    /// Last write, which GC's grace period is measured against.
    pub modified: SystemTime,
}

/// One child of a listed key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Entry {
    /// The child's last segment.
    pub name: String,
    /// True when keys exist below it (a folder, on the filesystem).
    pub is_dir: bool,
}

/// A streaming writer appending to one key. What it wrote becomes durable when the object
/// is moved into place with [`Driver::rename`], which is the commit of an upload.
pub(crate) type Writer = Box<dyn Append>;

/// An append in progress. [`Append::finish`] ends it and says whether what was written is
/// stored: an object store makes the new bytes visible only when the upload completes, so
/// a caller that skipped it would tell a client its chunk landed when it did not. Dropped
/// unfinished, an append may keep some, all or none of what was written; the size the
/// store then reports is the truth.
pub(crate) trait Append: Write + Send {
    /// Ends the append; an error means the bytes written may not be stored.
    fn finish(self: Box<Self>) -> std::io::Result<()>;

    /// False when [`Append::finish`] has nothing to wait for, so it may run on an async
    /// thread instead of taking a hop to the blocking pool.
    fn finish_blocks(&self) -> bool {
        true
    }
}

/// One write of [`Driver::apply`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op<'a> {
    /// Stores the bytes at the key, as [`Driver::put`] does.
    Put(&'a Key, &'a [u8]),
    /// Moves the first key's object to the second, as [`Driver::rename`] does.
    Rename(&'a Key, &'a Key),
}

impl Op<'_> {
    /// The key this op writes.
    pub(crate) fn target(&self) -> &Key {
        match self {
            Op::Put(k, _) | Op::Rename(_, k) => k,
        }
    }
}

/// The I/O a registry needs from its store. Every method is blocking.
pub(crate) trait Driver: Send + Sync + std::fmt::Debug + 'static {
    /// Where `key` lives, for messages and reports (a path, or `memory:KEY`).
    fn locate(&self, key: &Key) -> PathBuf;

    /// Size and modification time of the object at `key`; `None` when there is none (a
    /// key with objects below it is not an object).
    fn stat(&self, key: &Key) -> Result<Option<Meta>, Error>;

    /// True when any object exists below `key`.
    fn has_children(&self, key: &Key) -> Result<bool, Error>;

    /// The whole object; `None` when absent. For small content (links, manifests).
    fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, Error>;

    /// A reader from byte `offset` of the object to its end; `None` when absent.
    fn reader(&self, key: &Key, offset: u64) -> Result<Option<Box<dyn Read + Send>>, Error>;

    /// Stores `bytes` at `key` atomically and durably: a reader sees the old object or
    /// the new one, never part of either.
    fn put(&self, key: &Key, bytes: &[u8]) -> Result<(), Error>;

    /// Stores `bytes` at `key` atomically but not durably: for scratch state a crash may
    /// lose (an upload session's start), where a durable write costs syncs for nothing.
    fn put_scratch(&self, key: &Key, bytes: &[u8]) -> Result<(), Error>;

    /// A writer appending to the object at `key`, created empty when absent.
    fn append(&self, key: &Key) -> Result<Writer, Error>;

    /// Cuts the object at `key` back to `len` bytes, durably (a refused chunk is undone).
    fn truncate(&self, key: &Key, len: u64) -> Result<(), Error>;

    /// The children of `key`, sorted by name; empty when there are none.
    fn list(&self, key: &Key) -> Result<Vec<Entry>, Error>;

    /// Deletes the object at `key`, or every object below it. False when nothing was there.
    fn delete(&self, key: &Key) -> Result<bool, Error>;

    /// When the folder at `key` last gained or lost an entry, where the store can tell
    /// (a folder's modification time); `None` where it cannot or there is no folder.
    /// Callers use it only to skip listing a folder that has not changed.
    fn changed_at(&self, key: &Key) -> Result<Option<SystemTime>, Error>;

    /// Moves an object to another key durably, replacing what was there.
    fn rename(&self, from: &Key, to: &Key) -> Result<(), Error>;

    /// Applies `steps` in order, each op as [`Op`] says, all of them durable on return.
    /// The ops of one step share their syncs, so a crash may keep any of them without the
    /// others; every op of a step is durable before the next step starts, so what refers
    /// to an object goes in a step after the object's. This is what makes a commit cheap
    /// on a filesystem, where each sync of its own costs a journal commit (a manifest
    /// push was five puts and up to sixteen commits). On failure the ops before the one
    /// that failed stay done, as separate calls would leave them.
    fn apply(&self, steps: &[&[Op<'_>]]) -> Result<(), Error> {
        for op in steps.iter().copied().flatten() {
            match *op {
                Op::Put(key, bytes) => self.put(key, bytes)?,
                Op::Rename(from, to) => self.rename(from, to)?,
            }
        }
        Ok(())
    }

    /// [`Driver::delete`] with no retries and no request allowed to run past half the
    /// store's fence: GC's deletes on a store other processes write to must land before a
    /// writer's fence is over, or not at all (see `storage::Shared`). A local store has
    /// no fence.
    fn delete_promptly(&self, key: &Key) -> Result<bool, Error> {
        self.delete(key)
    }
}

/// An I/O failure on a key, in storage's error type.
pub(crate) fn io_error(op: &'static str, path: PathBuf) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { op, path, source }
}

#[cfg(test)]
pub(crate) mod spy;
#[cfg(test)]
mod tests;
