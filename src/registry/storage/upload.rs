//! Blob uploads: `_uploads/<uuid>/data` grows chunk by chunk while a SHA-256 state follows
//! it, so finishing a multi-gigabyte layer does not read it again. Finishing verifies the
//! digest, then moves the data durably into `blobs/`: content is visible only once whole
//! and correct. Chunks are serialised per upload; different uploads run in parallel. A
//! body that fails mid-way (the client went away, or stalled past the edge's timeout)
//! keeps what arrived, so the client can resume from the size it is told.

use std::sync::Arc;

use bytes::BufMut;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::driver::{Driver, Key, Op, Writer};
use super::paths::Paths;
use super::{CHUNK, Storage, blocking, read_full};
use crate::registry::Error;
use crate::registry::reference::{Algorithm, Digest, Hasher, RepoName};

/// Per-upload state kept in memory between chunks.
#[derive(Debug)]
pub(super) struct State {
    /// SHA-256 of the bytes so far; `None` when unknown (berthd restarted mid-upload), in
    /// which case finishing hashes the file.
    hasher: Option<Hasher>,
    /// Bytes the hasher has seen.
    size: u64,
}

/// Where an upload stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadStatus {
    /// Upload id (a UUID).
    pub id: String,
    /// Bytes received.
    pub size: u64,
}

/// An upload session on disk, for listing and purging.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UploadInfo {
    /// Repository.
    pub repository: String,
    /// Upload id.
    pub id: String,
    /// Bytes received.
    pub size: u64,
    /// When it started (`startedat`, else the folder's time).
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
}

impl UploadInfo {
    /// How long ago it started.
    pub fn age(&self) -> std::time::Duration {
        self.started_at
            .map(|t| {
                (OffsetDateTime::now_utc() - t)
                    .try_into()
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    }
}

/// Upload ids are UUIDs; anything else is unknown (and never becomes a key).
fn parse_id(id: &str) -> Result<String, Error> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| Error::UploadUnknown(id.to_string()))
}

/// Bytes in an upload's data; a missing object means the upload is unknown.
fn current_size(drv: &dyn Driver, key: &Key, id: &str) -> Result<u64, Error> {
    drv.stat(key)?
        .map(|m| m.size)
        .ok_or_else(|| Error::UploadUnknown(id.to_string()))
}

impl Storage {
    fn state(&self, id: &str, size: u64) -> Arc<tokio::sync::Mutex<State>> {
        let mut map = self.inner.local.uploads();
        map.entry(id.to_string())
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(State {
                    // Only a fresh upload has a hash state that matches its data.
                    hasher: (size == 0).then(|| Algorithm::Sha256.hasher()),
                    size,
                }))
            })
            .clone()
    }

    async fn size_of(&self, key: &Key, id: &str) -> Result<u64, Error> {
        let (drv, key, id) = (self.driver(), key.clone(), id.to_string());
        blocking(move || current_size(drv.as_ref(), &key, &id)).await
    }

    /// An upload's id (normalised), data key and in-memory state; unknown uploads fail.
    /// An upload this process already knows is not looked up in the store here: every
    /// caller reads its size under the lock, which fails for one gone meanwhile.
    async fn open_upload(
        &self,
        name: &RepoName,
        id: &str,
    ) -> Result<(String, Key, Arc<tokio::sync::Mutex<State>>), Error> {
        let id = parse_id(id)?;
        let key = Paths.upload_data(name, &id);
        let known = self.inner.local.uploads().get(&id).cloned();
        let state = match known {
            Some(state) => state,
            None => {
                let size = self.size_of(&key, &id).await?;
                self.state(&id, size)
            }
        };
        Ok((id, key, state))
    }

    fn forget(&self, id: &str) {
        let mut map = self.inner.local.uploads();
        map.remove(id);
    }

    /// Starts an upload: an empty `data` object and a `startedat` stamp.
    pub(crate) async fn start_upload(&self, name: &RepoName) -> Result<UploadStatus, Error> {
        let id = uuid::Uuid::new_v4().hyphenated().to_string();
        let started = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default();
        let (name2, id2) = (name.clone(), id.clone());
        self.run(move |drv, p| {
            let dir = p.upload_dir(&name2, &id2);
            // A session is scratch: one a crash loses is unknown to the client, which
            // starts again; only the commit (`finish_upload`) must be durable.
            drv.put_scratch(&dir.join("startedat"), started.as_bytes())?;
            drv.put_scratch(&dir.join("data"), b"")
        })
        .await?;
        self.state(&id, 0);
        Ok(UploadStatus { id, size: 0 })
    }

    /// Bytes received so far.
    pub(crate) async fn upload_status(
        &self,
        name: &RepoName,
        id: &str,
    ) -> Result<UploadStatus, Error> {
        let id = parse_id(id)?;
        let size = self.size_of(&Paths.upload_data(name, &id), &id).await?;
        Ok(UploadStatus { id, size })
    }

    /// Appends a chunk streamed from `body`. With `start`, the chunk must begin exactly
    /// where the upload ends (out-of-order chunks are refused, nothing written).
    pub(crate) async fn append(
        &self,
        name: &RepoName,
        id: &str,
        start: Option<u64>,
        body: &mut (impl AsyncRead + Unpin + ?Sized),
        expect: Option<u64>,
    ) -> Result<UploadStatus, Error> {
        let (id, key, state) = self.open_upload(name, id).await?;
        // Owned: the sink holds the lock while a batch of chunks is written, so a request
        // that ends early (its client gone) keeps the next one out until that has landed.
        let mut st = state.lock_owned().await;
        // Read under the lock: another chunk may have landed meanwhile. The writer is
        // opened in the same hop, once the chunk is known to start where it must.
        let (drv, k, id2) = (self.driver(), key.clone(), id.clone());
        let (size, writer) = blocking(move || {
            let size = current_size(drv.as_ref(), &k, &id2)?;
            if let Some(s) = start
                && s != size
            {
                return Err(Error::RangeInvalid { start: s, size });
            }
            Ok((size, drv.append(&k)?))
        })
        .await?;
        if st.size != size {
            st.hasher = None;
        }
        st.size = size;
        let path = self.inner.driver.locate(&key);
        // Fill a large buffer before each write: request bodies arrive in small frames,
        // and every write is a hop to the blocking pool, where the chunk is also hashed.
        // Up to IN_FLIGHT filled chunks are held for the sink while the next one is
        // received (and decrypted), so hashing and writing overlap with receiving and a
        // short stall of either does not stop the other. Chunks land in order.
        let mut pipe = Pipeline::start(Sink { writer, st });
        // Bytes are read into the buffers' spare capacity, never zeroed first: zeroing
        // cost a memset of every chunk, and touched all 512 KiB of memory even for a
        // 200-byte config blob.
        let mut buf = Vec::with_capacity(CHUNK);
        let mut spare: Vec<Vec<u8>> = Vec::new();
        let mut failed = None;
        loop {
            // While chunks wait, the sink's batch landing is as urgent as the body: the
            // next batch starts the moment the sink is free, not at the next full buffer.
            let left = CHUNK - buf.len();
            let mut room = (&mut buf).limit(left);
            let read = tokio::select! {
                landed = pipe.land(&path, &mut spare), if pipe.has_waiting() => {
                    landed?;
                    pipe.dispatch();
                    continue;
                }
                read = body.read_buf(&mut room) => read,
            };
            let n = match read {
                Ok(n) => n,
                Err(e) => {
                    failed = Some(e);
                    0
                }
            };
            if buf.len() == CHUNK || (n == 0 && !buf.is_empty()) {
                let full = std::mem::take(&mut buf);
                pipe.send(full, &path, &mut spare).await?;
                buf = spare.pop().unwrap_or_else(|| Vec::with_capacity(CHUNK));
                buf.clear();
            }
            if n == 0 {
                break;
            }
        }
        let Sink { writer, mut st } = pipe.finish(&path).await?;
        let writer_blocks = writer.finish_blocks();
        // The chunk is stored only once the writer says so (an object store completes its
        // upload here); until then the size counted above is a hope.
        let p2 = path.clone();
        let finish = move || {
            writer.finish().map_err(|source| Error::Io {
                op: "write",
                path: p2,
                source,
            })
        };
        let finished = if writer_blocks {
            blocking(finish).await
        } else {
            finish()
        };
        if let Err(e) = finished {
            st.hasher = None;
            return Err(e);
        }
        if let Some(want) = expect
            && st.size - size != want
        {
            // The chunk is not what its Content-Range said: undo it, as if never sent.
            let got = st.size - size;
            let (drv, k) = (self.driver(), key.clone());
            blocking(move || drv.truncate(&k, size)).await?;
            st.size = size;
            st.hasher = None;
            return Err(Error::ChunkLength { want, got, size });
        }
        if let Some(e) = failed {
            // What arrived is kept (and hashed); the client can resume from the size.
            tracing::info!(upload = %id, size = st.size, error = %e, "upload body ended early");
            return Err(Error::Body(e.to_string()));
        }
        Ok(UploadStatus { id, size: st.size })
    }

    /// Finishes an upload: verifies `digest`, then moves the data into `blobs/` and links
    /// it into the repository. On a mismatch the upload is discarded and nothing becomes
    /// visible.
    pub(crate) async fn finish_upload(
        &self,
        name: &RepoName,
        id: &str,
        digest: &Digest,
    ) -> Result<u64, Error> {
        let (id, key, state) = self.open_upload(name, id).await?;
        let st = state.lock().await;
        let size = self.size_of(&key, &id).await?;
        let actual = match (&st.hasher, digest.algorithm()) {
            (Some(h), Algorithm::Sha256) if st.size == size => h.clone().finish(),
            _ => {
                let (k, alg) = (key.clone(), digest.algorithm());
                self.run(move |drv, _| hash_object(drv, &k, alg)).await?
            }
        };
        if actual != *digest {
            drop(st);
            self.cancel_upload(name, &id).await?;
            return Err(Error::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        // Shared with manifest writes, exclusive with GC: the blob cannot be swept between
        // "it already exists" and the link that makes it young again.
        let _gc = self.inner.local.gc_lock.read().await;
        // On a shared store a GC elsewhere may be deleting the copy already there: keep it
        // only once it is marked as relied on (else this upload's bytes replace it).
        let keep_existing = if self.shared_with_others().is_some() {
            let d = digest.clone();
            self.run(move |drv, p| Ok(drv.stat(&p.blob_data(&d))?.is_some()))
                .await?
                && self.rely(digest).await?
        } else {
            true
        };
        let (name2, d, id2) = (name.clone(), digest.clone(), id.clone());
        self.run(move |drv, p| {
            let (target, layer) = (p.blob_data(&d), p.layer_link(&name2, &d));
            let link = d.to_string();
            let linked = [Op::Put(&layer, link.as_bytes())];
            if !keep_existing || drv.stat(&target)?.is_none() {
                // The link only once the blob it points at is durable.
                drv.apply(&[&[Op::Rename(&key, &target)], &linked])?;
            } else {
                drv.apply(&[&linked])?;
            }
            drv.delete(&p.upload_dir(&name2, &id2))?;
            Ok(())
        })
        .await?;
        drop(st);
        self.forget(&id);
        Ok(size)
    }

    /// Discards an upload.
    pub(crate) async fn cancel_upload(&self, name: &RepoName, id: &str) -> Result<(), Error> {
        let id = parse_id(id)?;
        let (name2, id2) = (name.clone(), id.clone());
        let removed = self
            .run(move |drv, p| drv.delete(&p.upload_dir(&name2, &id2)))
            .await?;
        self.forget(&id);
        if removed {
            Ok(())
        } else {
            Err(Error::UploadUnknown(id))
        }
    }

    /// Every upload session, oldest first.
    pub(crate) async fn list_uploads(&self) -> Result<Vec<UploadInfo>, Error> {
        self.run(move |drv, p| {
            let mut out = Vec::new();
            for repo in super::gc::all_repos(drv, p)? {
                let Ok(name) = repo.parse::<RepoName>() else {
                    continue;
                };
                for id in super::subdirs(drv, &p.uploads(&name))? {
                    let dir = p.upload_dir(&name, &id);
                    let data = drv.stat(&dir.join("data"))?;
                    let started_at = drv
                        .get(&dir.join("startedat"))?
                        .and_then(|b| String::from_utf8(b).ok())
                        .and_then(|s| OffsetDateTime::parse(s.trim(), &Rfc3339).ok())
                        .or_else(|| data.map(|m| OffsetDateTime::from(m.modified)));
                    out.push(UploadInfo {
                        repository: repo.clone(),
                        id,
                        size: data.map_or(0, |m| m.size),
                        started_at,
                    });
                }
            }
            out.sort_by_key(|u| u.started_at);
            Ok(out)
        })
        .await
    }

    /// Removes upload sessions older than `older_than` (all, with `None`); one receiving a
    /// chunk right now is left alone. Returns what went (or would go, dry).
    pub(crate) async fn purge_uploads(
        &self,
        older_than: Option<std::time::Duration>,
        dry_run: bool,
    ) -> Result<Vec<UploadInfo>, Error> {
        let mut purged = Vec::new();
        for u in self.list_uploads().await? {
            if older_than.is_some_and(|min| u.age() < min) {
                continue;
            }
            let Ok(name) = u.repository.parse::<RepoName>() else {
                continue;
            };
            let state = {
                let map = self.inner.local.uploads();
                map.get(&u.id).cloned()
            };
            let _busy = match &state {
                Some(s) => match s.try_lock() {
                    Ok(g) => Some(g),
                    Err(_) => continue,
                },
                None => None,
            };
            if !dry_run {
                let id = u.id.clone();
                self.run(move |drv, p| drv.delete(&p.upload_dir(&name, &id)))
                    .await?;
                self.forget(&u.id);
                tracing::info!(repo = %u.repository, id = %u.id, bytes = u.size, "purged upload");
            }
            purged.push(u);
        }
        Ok(purged)
    }
}

/// Where an upload's bytes go: the open object, and the upload's state (its hash and
/// size) under its lock. A batch in flight holds it, so a request that ends early (its
/// future dropped) keeps the next one out until that batch has landed.
struct Sink {
    writer: Writer,
    st: tokio::sync::OwnedMutexGuard<State>,
}

impl Sink {
    /// Writes and hashes `buf` (on the upload's blocking thread) and counts it.
    fn take(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let r = self.writer.write_all(buf);
        match &r {
            Ok(()) => {
                if let Some(h) = self.st.hasher.as_mut() {
                    h.update(buf);
                }
                self.st.size += buf.len() as u64;
            }
            // Part of the chunk may be on disk unhashed: the hash state is gone.
            Err(_) => self.st.hasher = None,
        }
        r
    }
}

/// Chunks an upload may hold for its sink, in its hands and waiting. One (plain double
/// buffering) leaves the receiver idle whenever the sink is briefly held up, by a
/// background sync of the file or by the scheduler on a 2-core host; two cover that at
/// 512 KiB more per upload.
const IN_FLIGHT: usize = 2;

/// A batch of chunks being written on a blocking thread: the sink comes back with the
/// batch's buffers and how writing went.
type Job = tokio::task::JoinHandle<(Sink, Vec<Vec<u8>>, std::io::Result<()>)>;

/// An upload's write pipeline: the sink, free or writing a batch on the blocking pool, and
/// the filled chunks waiting for it. A blocking thread is held only while there is
/// something to write, never while the request waits for its client: a thousand slow
/// uploads must not take the pool every other storage call needs.
struct Pipeline {
    idle: Option<Sink>,
    job: Option<(Job, usize)>,
    waiting: Vec<Vec<u8>>,
}

impl Pipeline {
    fn start(sink: Sink) -> Pipeline {
        Pipeline {
            idle: Some(sink),
            job: None,
            waiting: Vec::new(),
        }
    }

    /// True when chunks wait for a sink that is busy.
    fn has_waiting(&self) -> bool {
        self.job.is_some() && !self.waiting.is_empty()
    }

    /// Chunks held: in the sink's hands and waiting for it.
    fn held(&self) -> usize {
        self.job.as_ref().map_or(0, |(_, n)| *n) + self.waiting.len()
    }

    /// Queues `buf` and hands the waiting chunks to the sink if it is free. Waits
    /// for the sink only when more than IN_FLIGHT chunks would be held; buffers it hands
    /// back go to `spare`.
    async fn send(
        &mut self,
        buf: Vec<u8>,
        path: &std::path::Path,
        spare: &mut Vec<Vec<u8>>,
    ) -> Result<(), Error> {
        self.waiting.push(buf);
        let done = self.job.as_ref().is_some_and(|(j, _)| j.is_finished());
        if done || self.held() > IN_FLIGHT {
            self.land(path, spare).await?;
        }
        self.dispatch();
        Ok(())
    }

    /// Starts writing every waiting chunk, in order, if the sink is free.
    fn dispatch(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        let Some(mut sink) = self.idle.take() else {
            return;
        };
        let batch = std::mem::take(&mut self.waiting);
        let n = batch.len();
        let job = tokio::task::spawn_blocking(move || {
            let mut bufs = Vec::with_capacity(batch.len());
            let mut r = Ok(());
            for buf in batch {
                // After a failed write the chunks behind it must not land.
                if r.is_ok() {
                    r = sink.take(&buf);
                }
                bufs.push(buf);
            }
            (sink, bufs, r)
        });
        self.job = Some((job, n));
    }

    /// Waits for the batch being written (the sink has counted it into the upload's size)
    /// and takes the sink back. Cancel-safe: until the batch has landed the job stays.
    async fn land(
        &mut self,
        path: &std::path::Path,
        spare: &mut Vec<Vec<u8>>,
    ) -> Result<(), Error> {
        let Some((job, _)) = self.job.as_mut() else {
            return Ok(());
        };
        let landed = job.await;
        self.job = None;
        let (sink, bufs, r) = landed.map_err(|e| Error::Io {
            op: "write",
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
        spare.extend(bufs);
        r.map_err(|source| Error::Io {
            op: "write",
            path: path.to_path_buf(),
            source,
        })?;
        self.idle = Some(sink);
        Ok(())
    }

    /// Writes everything still held and takes the sink, and with it the upload's lock, back.
    async fn finish(mut self, path: &std::path::Path) -> Result<Sink, Error> {
        let mut spare = Vec::new();
        loop {
            self.land(path, &mut spare).await?;
            if self.waiting.is_empty() {
                break;
            }
            self.dispatch();
        }
        self.idle.take().ok_or_else(|| stopped(path))
    }
}

/// The sink was lost without an answer (cannot happen while `land` hands it back).
fn stopped(path: &std::path::Path) -> Error {
    Error::Io {
        op: "write",
        path: path.to_path_buf(),
        source: std::io::Error::other("the upload's writer stopped"),
    }
}

/// Hashes a stored object with `alg` (uploads whose hash state was lost, sha512 blobs).
fn hash_object(drv: &dyn Driver, key: &Key, alg: Algorithm) -> Result<Digest, Error> {
    let path = drv.locate(key);
    let mut r = drv.reader(key, 0)?.ok_or_else(|| Error::Io {
        op: "open",
        path: path.clone(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })?;
    let mut h = alg.hasher();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = read_full(r.as_mut(), &mut buf).map_err(|source| Error::Io {
            op: "read",
            path: path.clone(),
            source,
        })?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish())
}

#[cfg(test)]
mod tests;
