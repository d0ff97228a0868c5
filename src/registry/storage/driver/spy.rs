//! A driver over another, for tests that watch or hold up the store: it counts reads of
//! blob content, can refuse prompt deletes, and can hold every append's writes at a gate.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::{Append, Driver, Entry, Key, Meta, Writer};
use crate::registry::Error;

/// Writes held at a gate: each waits until the gate is open.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    /// Open, and how many writes stand at the gate.
    state: Mutex<(bool, usize)>,
    turn: Condvar,
}

impl Gate {
    /// The state; a test that panicked holding it leaves it as it was, still usable.
    fn state(&self) -> MutexGuard<'_, (bool, usize)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pass(&self) {
        let mut g = self.state();
        g.1 += 1;
        while !g.0 {
            g = self.turn.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        g.1 -= 1;
    }

    /// Lets every write through, now and from now on.
    pub(crate) fn open(&self) {
        self.state().0 = true;
        self.turn.notify_all();
    }

    /// Writes waiting at the gate.
    pub(crate) fn waiting(&self) -> usize {
        self.state().1
    }
}

struct GatedWriter {
    inner: Writer,
    gate: Arc<Gate>,
}

impl std::io::Write for GatedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.gate.pass();
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Append for GatedWriter {
    fn finish(self: Box<Self>) -> std::io::Result<()> {
        self.inner.finish()
    }
}

/// `inner`, watched: `reads` counts reads of blob content (`.../data`), prompt deletes fail
/// while `refuse_prompt` is set (a store too slow for GC's prompt client), and with a
/// `gate` every append's writes wait at it.
#[derive(Debug)]
pub(crate) struct Spy {
    pub(crate) inner: Box<dyn Driver>,
    pub(crate) reads: Arc<AtomicUsize>,
    pub(crate) refuse_prompt: Arc<AtomicBool>,
    pub(crate) gate: Option<Arc<Gate>>,
}

impl Spy {
    /// `inner` with nothing counted, refused or held.
    pub(crate) fn over(inner: Box<dyn Driver>) -> Spy {
        Spy {
            inner,
            reads: Arc::default(),
            refuse_prompt: Arc::default(),
            gate: None,
        }
    }
}

impl Driver for Spy {
    fn locate(&self, key: &Key) -> std::path::PathBuf {
        self.inner.locate(key)
    }
    fn stat(&self, key: &Key) -> Result<Option<Meta>, Error> {
        self.inner.stat(key)
    }
    fn has_children(&self, key: &Key) -> Result<bool, Error> {
        self.inner.has_children(key)
    }
    fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, Error> {
        if key.as_str().ends_with("/data") {
            self.reads.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.get(key)
    }
    fn reader(
        &self,
        key: &Key,
        offset: u64,
    ) -> Result<Option<Box<dyn std::io::Read + Send>>, Error> {
        self.inner.reader(key, offset)
    }
    fn put(&self, key: &Key, bytes: &[u8]) -> Result<(), Error> {
        self.inner.put(key, bytes)
    }
    fn put_scratch(&self, key: &Key, bytes: &[u8]) -> Result<(), Error> {
        self.inner.put_scratch(key, bytes)
    }
    fn append(&self, key: &Key) -> Result<Writer, Error> {
        let inner = self.inner.append(key)?;
        Ok(match &self.gate {
            Some(gate) => Box::new(GatedWriter {
                inner,
                gate: gate.clone(),
            }),
            None => inner,
        })
    }
    fn truncate(&self, key: &Key, len: u64) -> Result<(), Error> {
        self.inner.truncate(key, len)
    }
    fn list(&self, key: &Key) -> Result<Vec<Entry>, Error> {
        self.inner.list(key)
    }
    fn delete(&self, key: &Key) -> Result<bool, Error> {
        self.inner.delete(key)
    }
    fn changed_at(&self, key: &Key) -> Result<Option<std::time::SystemTime>, Error> {
        self.inner.changed_at(key)
    }
    fn rename(&self, from: &Key, to: &Key) -> Result<(), Error> {
        self.inner.rename(from, to)
    }
    fn delete_promptly(&self, key: &Key) -> Result<bool, Error> {
        if self.refuse_prompt.load(Ordering::SeqCst) {
            return Err(Error::Io {
                op: "delete",
                path: self.locate(key),
                source: std::io::Error::from(std::io::ErrorKind::TimedOut),
            });
        }
        self.inner.delete_promptly(key)
    }
}
