//! An upload's sink keeps the upload locked until its last chunk has landed, even when the
//! request that fed it is gone: the next request on the upload sees every byte that
//! reached the store counted, and the hash state still matches the data.
#![allow(clippy::unwrap_used)]
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use super::super::driver::{Append, Driver, Entry, Key, MemoryDriver, Meta, Writer};
use super::super::{CHUNK, Storage};
use crate::registry::Error;
use crate::registry::reference::{Digest, RepoName};

/// Writes held at a gate: each waits until the gate is open. `waiting` counts the writes
/// standing at it.
#[derive(Debug, Default)]
struct Gate {
    state: Mutex<(bool, usize)>,
    turn: Condvar,
}

impl Gate {
    fn pass(&self) {
        let mut g = self.state.lock().unwrap();
        g.1 += 1;
        while !g.0 {
            g = self.turn.wait(g).unwrap();
        }
        g.1 -= 1;
    }
    fn open(&self) {
        self.state.lock().unwrap().0 = true;
        self.turn.notify_all();
    }
    fn waiting(&self) -> usize {
        self.state.lock().unwrap().1
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

/// A memory store whose appends pass through a [`Gate`].
#[derive(Debug)]
struct Gated {
    inner: MemoryDriver,
    gate: Arc<Gate>,
}

impl Driver for Gated {
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
        Ok(Box::new(GatedWriter {
            inner: self.inner.append(key)?,
            gate: self.gate.clone(),
        }))
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
}

/// Opens the gate when dropped: a failed assertion must not leave a write waiting forever
/// (the runtime waits for its blocking threads).
struct OpenOnDrop(Arc<Gate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_ends_mid_chunk_keeps_the_upload_until_its_write_lands() {
    let gate = Arc::new(Gate::default());
    let _open = OpenOnDrop(gate.clone());
    let drv = Arc::new(Gated {
        inner: MemoryDriver::new(),
        gate: gate.clone(),
    });
    let s = Storage::new(drv, "test".into());
    let name: RepoName = "team/app".parse().unwrap();
    let up = s.start_upload(&name).await.unwrap();

    // A client sends one full chunk and then nothing (it is gone, or a layer above gave
    // up on the request): the chunk is at the store, its write held at the gate.
    let first: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8).collect();
    let (mut tx, mut rx) = tokio::io::duplex(64 * 1024);
    let sent = first.clone();
    let feeder = tokio::spawn(async move {
        tx.write_all(&sent).await.unwrap();
        std::future::pending::<()>().await;
    });
    let (s2, name2, id2) = (s.clone(), name.clone(), up.id.clone());
    let request =
        tokio::spawn(async move { s2.append(&name2, &id2, Some(0), &mut rx, None).await });
    until("the chunk's write waits at the gate", || {
        gate.waiting() == 1
    })
    .await;
    request.abort();
    assert!(request.await.unwrap_err().is_cancelled());
    feeder.abort();

    // The request is gone but its write is not done: the upload stays locked, so nobody
    // can read a size the store is about to change.
    let state = s.inner.local.uploads().get(&up.id).cloned().unwrap();
    assert!(
        state.try_lock().is_err(),
        "the upload was unlocked while a chunk of it was still being written"
    );
    gate.open();
    // The next request on the upload waits for it, then sees the chunk counted and hashed.
    let tail = b"and the rest of the layer".to_vec();
    let status = s
        .append(
            &name,
            &up.id,
            Some(CHUNK as u64),
            &mut tail.as_slice(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status.size, (CHUNK + tail.len()) as u64);
    assert_eq!(
        s.upload_status(&name, &up.id).await.unwrap().size,
        status.size
    );
    let mut whole = first;
    whole.extend_from_slice(&tail);
    let d = Digest::sha256_of(&whole);
    let st = state.lock().await;
    let kept = st.hasher.clone().map(|h| h.finish());
    drop(st);
    assert_eq!(
        kept,
        Some(d.clone()),
        "the hash state lost track of the data"
    );
    assert_eq!(
        s.finish_upload(&name, &up.id, &d).await.unwrap(),
        whole.len() as u64
    );
}
