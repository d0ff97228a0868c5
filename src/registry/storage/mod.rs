//! Content storage in registry:2's layout: keys from the pure mapper in [`paths`] over a
//! [`driver::Driver`] that does the I/O. Blobs are streamed to an upload while they are
//! hashed and become visible only by a move after the digest checks out; links and
//! manifests are written atomically. Storage never sees HTTP, and nothing outside the
//! registry module can reach it: every caller goes through the `Registry` door.

pub(crate) mod driver;
mod gc;
mod paths;
mod referrers;
mod upload;

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub use gc::{FsckProblem, FsckReport, GcOptions, GcReport, RepoSummary, StorageStats};
pub use upload::{UploadInfo, UploadStatus};

use self::driver::{Driver, Key, Op};
use self::paths::Paths;
use super::reference::{Digest, Reference, RepoName, Tag};
use super::{Error, StoredManifest, manifest};

/// Bytes per read when hashing a stored blob (fsck, lost upload state), and per write when
/// streaming one in. An upload holds two of these (one filling, one being written).
pub(crate) const CHUNK: usize = 512 * 1024;

/// Bytes per read when streaming a blob out. A download holds at most three (two queued
/// or being read, one with the connection): small enough that many parallel pulls stay
/// within a few MiB, large enough that the hop to the blocking pool (one per chunk) is
/// rare.
const PULL_CHUNK: usize = 256 * 1024;

/// An open blob: its length and a stream of its bytes from the requested offset.
#[derive(Debug)]
pub struct BlobReader {
    /// Offset of the first byte this reader yields.
    pub start: u64,
    /// Bytes this reader will yield.
    pub len: u64,
    /// The whole blob's length.
    pub size: u64,
    /// Chunks of up to [`PULL_CHUNK`] bytes, read one or two ahead of the consumer.
    pub chunks: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
}

/// The storage: a driver and the state this process keeps beside it. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Storage {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    driver: Arc<dyn Driver>,
    root: PathBuf,
    local: Local,
    /// Set when other processes may write to the same store.
    shared: Option<Shared>,
}

/// How writers and GC on several berthd sharing one store (an S3 bucket) keep each other
/// safe without a lock and without conditional writes, which some S3-compatible stores
/// accept and then ignore:
/// - a writer that relies on a blob (a client is told it exists, it is mounted, finished
///   again or named by a manifest) and finds no mark younger than `min_grace / 2` writes
///   one (`_berth/relied/<alg>/<hex>`), waits `fence`, then checks the blob is still
///   there; if a GC took it meanwhile the writer treats it as absent (or stores it again,
///   when it holds the bytes);
/// - GC refuses a grace period below `min_grace`, and right before deleting a blob or a
///   manifest revision it reads that mark and the object's own time again, skipping the
///   deletion when either is younger than the grace period or when the check took longer
///   than a quarter of `fence`.
///
/// So either GC's last look came after the mark, and it keeps the blob, or its delete
/// landed before the writer looked again, and the writer knows. The price is `fence` once
/// per blob a client relies on after `min_grace / 2` without one; the assumption is that
/// no store request takes longer than `fence` (GC's deletes go through a client that never
/// retries and gives up after half of it: [`Driver::delete_promptly`]), and that the
/// hosts' clocks and the store's agree to well within `min_grace / 2`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shared {
    /// The shortest grace period a GC may use.
    pub min_grace: std::time::Duration,
    /// The longest a store request may take.
    pub fence: std::time::Duration,
}

/// Everything storage keeps only in this process's memory, in one place, because each of
/// these is what several berthd on one S3 bucket cannot share, and how they do without:
/// - `uploads`: the running SHA-256 state of each upload and the lock that serialises its
///   chunks. Losing it costs only a re-hash at finish (berthd restarted, or another berthd
///   takes the next chunk). Two berthd taking chunks of one upload at the same moment
///   would race; clients send an upload's chunks one after the other.
/// - `gc_lock`: GC holds it exclusively, manifest writes and blob commits shared. It covers
///   this process only; across processes the marks of [`Shared`] do its work.
/// - `referrers`: which manifest revisions this process has indexed; only a cache (the
///   index itself is in the store), so each berthd keeps its own.
/// - `seen`: blobs a client was recently told exist (HEAD/GET/mount), kept young for the
///   grace period by this process's GC; a shared store also gets a mark (see [`Shared`]).
/// - `relied`: when this process last made sure of such a mark, so it looks again only
///   once the mark is half a grace period old.
#[derive(Debug, Default)]
struct Local {
    uploads: Mutex<HashMap<String, Arc<tokio::sync::Mutex<upload::State>>>>,
    gc_lock: tokio::sync::RwLock<()>,
    seen: Mutex<HashMap<Digest, std::time::Instant>>,
    referrers: Mutex<referrers::SeenMap>,
    /// When the newest mark (or write) of a blob this process relies on was made, as far
    /// as it knows (only a cache: the marks are in the store).
    relied: Mutex<HashMap<Digest, std::time::Instant>>,
    /// Manifest bytes and media types by digest, for stores where every read is a round
    /// trip (S3); see [`ManifestCache`].
    manifests: Mutex<ManifestCache>,
}

/// Bytes of manifests [`ManifestCache`] keeps at most.
const MANIFEST_CACHE_BYTES: usize = 4 * 1024 * 1024;

/// Manifests by digest, oldest out first. Content under a digest never changes, so a
/// cached manifest is right for any process sharing the store; whether the repository
/// still has it is read from the store on every request (its revision link), so a delete
/// anywhere is seen at once. A manifest GET over S3 costs two reads instead of four.
#[derive(Debug, Default)]
struct ManifestCache {
    map: HashMap<Digest, (Arc<Vec<u8>>, String)>,
    order: std::collections::VecDeque<Digest>,
    bytes: usize,
}

impl ManifestCache {
    fn get(&self, d: &Digest) -> Option<(Arc<Vec<u8>>, String)> {
        self.map.get(d).cloned()
    }

    fn insert(&mut self, d: &Digest, bytes: Arc<Vec<u8>>, media_type: String) {
        if bytes.len() > MANIFEST_CACHE_BYTES / 8 {
            return;
        }
        if let Some((old, _)) = self.map.insert(d.clone(), (bytes.clone(), media_type)) {
            self.bytes -= old.len();
        } else {
            self.order.push_back(d.clone());
        }
        self.bytes += bytes.len();
        while self.bytes > MANIFEST_CACHE_BYTES {
            let Some(out) = self.order.pop_front() else {
                break;
            };
            if let Some((b, _)) = self.map.remove(&out) {
                self.bytes -= b.len();
            }
        }
    }
}

impl Local {
    /// The upload map; a panic elsewhere cannot leave it half-updated (single inserts and
    /// removes), so a poisoned lock is taken as it is.
    fn uploads(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<upload::State>>>> {
        self.uploads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The manifest cache (same reasoning about poisoning).
    fn manifests(&self) -> std::sync::MutexGuard<'_, ManifestCache> {
        self.manifests.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The relied-on map (same reasoning about poisoning).
    fn relied(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, std::time::Instant>> {
        self.relied.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The recently-seen map (same reasoning about poisoning).
    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, std::time::Instant>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs blocking driver work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Io {
            op: "finish a storage task for",
            path: PathBuf::new(),
            source: std::io::Error::other(e.to_string()),
        })?
}

/// Writes a link file (the digest, no newline) atomically.
fn write_link(d: &dyn Driver, key: &Key, digest: &Digest) -> Result<(), Error> {
    d.put(key, digest.to_string().as_bytes())
}

/// Reads a link file; `None` when it does not exist or holds no digest. A trailing
/// newline is tolerated.
fn read_link(d: &dyn Driver, key: &Key) -> Result<Option<Digest>, Error> {
    Ok(d.get(key)?
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.trim().parse().ok()))
}

/// Names of the folders below `key`, sorted; empty when there are none.
fn subdirs(d: &dyn Driver, key: &Key) -> Result<Vec<String>, Error> {
    Ok(d.list(key)?
        .into_iter()
        .filter(|e| e.is_dir)
        .map(|e| e.name)
        .collect())
}

/// Collects repository names below `key`: a folder `is_repo` accepts (for the catalog,
/// one holding `_manifests`, as registry:2 decides); `_` folders are never descended into.
fn walk_repos(
    d: &dyn Driver,
    key: &Key,
    prefix: &str,
    out: &mut Vec<String>,
    is_repo: &dyn Fn(&dyn Driver, &Key) -> Result<bool, Error>,
) -> Result<(), Error> {
    for sub in subdirs(d, key)? {
        if sub.starts_with('_') {
            continue;
        }
        let name = if prefix.is_empty() {
            sub.clone()
        } else {
            format!("{prefix}/{sub}")
        };
        let k = key.join(&sub);
        if name.parse::<RepoName>().is_ok() && is_repo(d, &k)? {
            out.push(name.clone());
        }
        walk_repos(d, &k, &name, out, is_repo)?;
    }
    Ok(())
}

impl Storage {
    /// Storage over a driver; `root` is what status reports as its location.
    pub(crate) fn new(driver: Arc<dyn Driver>, root: PathBuf) -> Storage {
        Storage::open(driver, root, None)
    }

    /// Storage over a driver that other processes may write to as well (see [`Shared`]).
    pub(crate) fn shared(driver: Arc<dyn Driver>, root: PathBuf, shared: Shared) -> Storage {
        Storage::open(driver, root, Some(shared))
    }

    fn open(driver: Arc<dyn Driver>, root: PathBuf, shared: Option<Shared>) -> Storage {
        Storage {
            inner: Arc::new(Inner {
                driver,
                root,
                local: Local::default(),
                shared,
            }),
        }
    }

    /// Makes sure the blob `d`, which exists, survives every GC on the shared store for
    /// at least half the minimum grace period; false when a GC deleted it meanwhile. A
    /// store nobody else writes to needs nothing (the GC lock covers it).
    pub(crate) async fn rely(&self, d: &Digest) -> Result<bool, Error> {
        let Some(sh) = self.inner.shared else {
            return Ok(true);
        };
        let fresh = sh.min_grace / 2;
        {
            let relied = self.inner.local.relied();
            if relied.get(d).is_some_and(|t| t.elapsed() < fresh) {
                return Ok(true);
            }
        }
        let started = std::time::Instant::now();
        let d2 = d.clone();
        // Stored or marked within half the grace: no GC may take it before that half is
        // over. The age of the younger of the two, as this host reckons it.
        let newest = self
            .run(move |drv, p| {
                let data = gc::age(drv, &p.blob_data(&d2))?;
                let mark = gc::age(drv, &p.relied(&d2))?;
                Ok(data.into_iter().chain(mark).min())
            })
            .await?;
        // Remembered as of when that object was written (a second earlier still, for the
        // store's clock), never as of now: a cache that restarted its clock on each look
        // would keep trusting a mark that only grows older.
        if let Some(age) = newest.filter(|a| *a < fresh)
            && let Some(at) = started.checked_sub(age + gc::STORE_CLOCK_STEP)
        {
            self.inner.local.relied().insert(d.clone(), at);
            return Ok(true);
        }
        let d2 = d.clone();
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        self.run(move |drv, p| drv.put(&p.relied(&d2), now.as_bytes()))
            .await?;
        tokio::time::sleep(sh.fence).await;
        let d2 = d.clone();
        if self
            .run(move |drv, p| drv.stat(&p.blob_data(&d2)))
            .await?
            .is_none()
        {
            return Ok(false);
        }
        // Counted from before the mark was written: never fresher than it is.
        self.inner.local.relied().insert(d.clone(), started);
        Ok(true)
    }

    /// [`Storage::blob_size`] for a blob a client will rely on (HEAD, a mount, a manifest
    /// naming it): on a shared store the blob is also marked (see [`Shared`]).
    pub(crate) async fn blob_size_relied(
        &self,
        name: &RepoName,
        d: &Digest,
    ) -> Result<Option<u64>, Error> {
        let size = self.blob_size(name, d).await?;
        if size.is_some() && !self.rely(d).await? {
            return Ok(None);
        }
        Ok(size)
    }

    /// The coordination with other writers, when the store is shared.
    pub(crate) fn shared_with_others(&self) -> Option<Shared> {
        self.inner.shared
    }

    /// Where the content lives (a folder, or `memory:`).
    pub(crate) fn root(&self) -> &std::path::Path {
        &self.inner.root
    }

    fn driver(&self) -> Arc<dyn Driver> {
        self.inner.driver.clone()
    }

    /// Runs `f` with the driver and the layout on a blocking thread.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Driver, &Paths) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let d = self.driver();
        blocking(move || f(d.as_ref(), &Paths)).await
    }

    /// Held shared while a manifest is checked and written, so GC (which holds it
    /// exclusively) never sweeps between the check and the write.
    pub(crate) async fn manifest_write_guard(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.inner.local.gc_lock.read().await
    }

    /// Blobs reported as existing within `grace`; older entries are forgotten.
    fn recently_seen(&self, grace: std::time::Duration) -> std::collections::HashSet<Digest> {
        let mut seen = self.inner.local.seen();
        seen.retain(|_, t| t.elapsed() < grace);
        seen.keys().cloned().collect()
    }

    /// The size of a blob the repository may serve; `None` when it may not. A blob found
    /// here is remembered as seen (see [`Local`]).
    pub(crate) async fn blob_size(
        &self,
        name: &RepoName,
        d: &Digest,
    ) -> Result<Option<u64>, Error> {
        let (name2, d2) = (name.clone(), d.clone());
        let size = self
            .run(move |drv, p| blob_size_of(drv, p, &name2, &d2))
            .await?;
        if size.is_some() {
            let mut seen = self.inner.local.seen();
            seen.insert(d.clone(), std::time::Instant::now());
        }
        Ok(size)
    }

    /// Opens a blob the repository may serve, from byte `start`, for `len` bytes (the rest
    /// when `None`); `resolve` turns the blob's size into that range or refuses it.
    pub(crate) async fn open_blob<E: From<Error> + Send + 'static>(
        &self,
        name: &RepoName,
        d: &Digest,
        resolve: impl FnOnce(u64) -> Result<(u64, u64), E> + Send + 'static,
    ) -> Result<BlobReader, E> {
        let size = self
            .blob_size(name, d)
            .await?
            .ok_or_else(|| Error::BlobUnknown(d.clone()))?;
        let (start, len) = resolve(size)?;
        let key = Paths.blob_data(d);
        let drv = self.driver();
        let d2 = d.clone();
        let reader = blocking(move || drv.reader(&key, start))
            .await?
            .ok_or(Error::BlobUnknown(d2))?;
        // Two queued: with the chunk the connection is sending, at most three per download.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            let mut reader = reader;
            let mut left = len;
            while left > 0 {
                // Room first, then a read: a client that reads slowly (or not at all) then
                // holds no thread of the blocking pool, which every storage call shares;
                // a download used to park one for its whole length.
                let Ok(permit) = tx.reserve().await else {
                    return;
                };
                let want = PULL_CHUNK.min(usize::try_from(left).unwrap_or(PULL_CHUNK));
                let read = tokio::task::spawn_blocking(move || {
                    // read_to_end fills spare capacity without zeroing it first.
                    let mut buf = Vec::with_capacity(want);
                    let r = std::io::Read::take(reader.as_mut(), want as u64)
                        .read_to_end(&mut buf)
                        .map(|_| buf);
                    (reader, r)
                })
                .await;
                match read {
                    Ok((_, Ok(buf))) if buf.is_empty() => return,
                    Ok((r, Ok(buf))) => {
                        left -= buf.len() as u64;
                        permit.send(Ok(buf));
                        reader = r;
                    }
                    Ok((_, Err(e))) => return permit.send(Err(e)),
                    Err(e) => return permit.send(Err(std::io::Error::other(e.to_string()))),
                }
            }
        });
        Ok(BlobReader {
            start,
            len,
            size,
            chunks: rx,
        })
    }

    /// Reads a whole blob into memory; only for small content such as configs.
    pub(crate) async fn read_small_blob(
        &self,
        name: &RepoName,
        d: &Digest,
        limit: u64,
    ) -> Result<Vec<u8>, Error> {
        let (name, d) = (name.clone(), d.clone());
        self.run(move |drv, p| {
            let Some(size) = blob_size_of(drv, p, &name, &d)? else {
                return Err(Error::BlobUnknown(d));
            };
            if size > limit {
                return Err(Error::SizeInvalid(format!(
                    "blob {d} is {size} bytes, over the {limit} byte limit"
                )));
            }
            drv.get(&p.blob_data(&d))?.ok_or(Error::BlobUnknown(d))
        })
        .await
    }

    /// A reader of a blob's whole content on a blocking thread (inspect decompresses it).
    pub(crate) async fn with_blob<T: Send + 'static>(
        &self,
        d: &Digest,
        f: impl FnOnce(&mut dyn std::io::Read) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let d = d.clone();
        self.run(move |drv, p| {
            let mut r = drv
                .reader(&p.blob_data(&d), 0)?
                .ok_or_else(|| Error::BlobUnknown(d.clone()))?;
            f(r.as_mut())
        })
        .await
    }

    /// Removes a repository's link to a blob; the content stays for other repositories
    /// (and for garbage collection to decide).
    pub(crate) async fn unlink_blob(&self, name: &RepoName, d: &Digest) -> Result<(), Error> {
        let (name, d) = (name.clone(), d.clone());
        self.run(move |drv, p| {
            let link = p.layer_link(&name, &d);
            if read_link(drv, &link)?.is_none() {
                return Err(Error::BlobUnknown(d));
            }
            if let Some(dir) = link.parent() {
                drv.delete(&dir)?;
            }
            Ok(())
        })
        .await
    }

    /// Links a blob of `from` into `to` without copying; false when `from` cannot serve it.
    pub(crate) async fn mount(
        &self,
        to: &RepoName,
        from: &RepoName,
        d: &Digest,
    ) -> Result<bool, Error> {
        let _gc = self.inner.local.gc_lock.read().await;
        if self.blob_size_relied(from, d).await?.is_none() {
            return Ok(false);
        }
        let (to, d) = (to.clone(), d.clone());
        self.run(move |drv, p| write_link(drv, &p.layer_link(&to, &d), &d))
            .await?;
        Ok(true)
    }

    /// [`Storage::has_manifest`] for a child manifest an index being stored names: on a
    /// shared store it is also marked, and looked for again after the fence.
    pub(crate) async fn has_manifest_relied(
        &self,
        name: &RepoName,
        d: &Digest,
    ) -> Result<bool, Error> {
        if !self.has_manifest(name, d).await? {
            return Ok(false);
        }
        if self.shared_with_others().is_none() {
            return Ok(true);
        }
        Ok(self.rely(d).await? && self.has_manifest(name, d).await?)
    }

    /// True when the manifest is a revision of the repository and its content exists.
    pub(crate) async fn has_manifest(&self, name: &RepoName, d: &Digest) -> Result<bool, Error> {
        let (name, d) = (name.clone(), d.clone());
        self.run(move |drv, p| {
            Ok(
                read_link(drv, &p.revision_link(&name, &d))?.as_ref() == Some(&d)
                    && drv.stat(&p.blob_data(&d))?.is_some(),
            )
        })
        .await
    }

    /// Stores manifest bytes as a blob, links the revision, records its media type and
    /// moves the tag. Content first, tag last: a reader never finds a tag pointing at
    /// nothing.
    pub(crate) async fn put_manifest(
        &self,
        name: &RepoName,
        d: &Digest,
        body: Vec<u8>,
        media_type: &str,
        tags: &[Tag],
        subject: Option<&Digest>,
    ) -> Result<(), Error> {
        let (cached_body, cached_type) = match self.inner.shared {
            // As a GET would find it: an empty recorded type is detected from the bytes.
            Some(_) if media_type.trim().is_empty() => {
                (body.clone(), manifest::detect_media_type(&body))
            }
            Some(_) => (body.clone(), media_type.trim().to_string()),
            None => (Vec::new(), String::new()),
        };
        let (name, d, tags, media_type, subject) = (
            name.clone(),
            d.clone(),
            tags.to_vec(),
            media_type.to_string(),
            subject.cloned(),
        );
        if self.shared_with_others().is_some() {
            // Stored before: a GC elsewhere may be deleting this revision, so mark it
            // first; if it went meanwhile, the writes below store it again.
            let d2 = d.clone();
            let stored = self
                .run(move |drv, p| Ok(drv.stat(&p.blob_data(&d2))?.is_some()))
                .await?;
            if stored {
                self.rely(&d).await?;
            }
        }
        let (name2, d2) = (name.clone(), d.clone());
        self.run(move |drv, p| {
            let (data, kind) = (p.blob_data(&d), p.media_type(&d));
            let link = d.to_string();
            let mut content = Vec::new();
            if drv.stat(&data)?.is_none() {
                content.push(Op::Put(&data, &body));
            }
            // The type a GET detects from the bytes needs no record (nearly every manifest
            // names its own), which spares two syncs per push; one recorded by an earlier
            // push of the same bytes is replaced, or it would still be served.
            if media_type.trim() != manifest::detect_media_type(&body) || drv.stat(&kind)?.is_some()
            {
                content.push(Op::Put(&kind, media_type.as_bytes()));
            }
            // Each step only once what it points at is durable: the bytes, then the
            // referrers index (a stored manifest is always found), then the revision
            // that makes it part of the repository, then the tags naming it.
            let referrer = subject.as_ref().map(|s| p.referrer_link(&name, s, &d));
            let referrer: Vec<Op> = referrer
                .iter()
                .map(|k| Op::Put(k, link.as_bytes()))
                .collect();
            let revision = p.revision_link(&name, &d);
            let revision = [Op::Put(&revision, link.as_bytes())];
            let tag_keys: Vec<(Key, Key)> = tags
                .iter()
                .map(|t| (p.tag_index(&name, t, &d), p.tag_current(&name, t)))
                .collect();
            let tagged: Vec<Op> = tag_keys
                .iter()
                .flat_map(|(index, current)| {
                    [
                        Op::Put(index, link.as_bytes()),
                        Op::Put(current, link.as_bytes()),
                    ]
                })
                .collect();
            let steps: Vec<&[Op]> = [&content[..], &referrer, &revision, &tagged]
                .into_iter()
                .filter(|step| !step.is_empty())
                .collect();
            drv.apply(&steps)
        })
        .await?;
        self.indexed(&name2, &d2);
        if self.inner.shared.is_some() {
            // What this push recorded (the media type may differ from an earlier push of
            // the same bytes) is what this process serves from now on.
            self.inner
                .local
                .manifests()
                .insert(&d2, Arc::new(cached_body), cached_type);
        }
        Ok(())
    }

    /// A manifest by tag or digest.
    pub(crate) async fn manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<StoredManifest, Error> {
        let (name, reference) = (name.clone(), reference.clone());
        let inner = self.inner.clone();
        self.run(move |drv, p| {
            let unknown = || Error::ManifestUnknown {
                name: name.clone(),
                reference: reference.to_string(),
            };
            let d = match &reference {
                Reference::Digest(d) => d.clone(),
                Reference::Tag(t) => match read_link(drv, &p.tag_current(&name, t))? {
                    Some(d) => d,
                    None if !drv.has_children(&p.repo(&name))? => {
                        return Err(Error::NameUnknown(name.clone()));
                    }
                    None => return Err(unknown()),
                },
            };
            if read_link(drv, &p.revision_link(&name, &d))?.as_ref() != Some(&d) {
                if !drv.has_children(&p.repo(&name))? {
                    return Err(Error::NameUnknown(name.clone()));
                }
                return Err(unknown());
            }
            let cached = inner.shared.and_then(|_| inner.local.manifests().get(&d));
            if let Some((bytes, media_type)) = cached {
                return Ok(StoredManifest {
                    bytes: bytes.as_ref().clone(),
                    digest: d,
                    media_type,
                });
            }
            let bytes = drv.get(&p.blob_data(&d))?.ok_or_else(unknown)?;
            let media_type = match drv.get(&p.media_type(&d))? {
                Some(b) if !b.trim_ascii().is_empty() => {
                    String::from_utf8_lossy(b.trim_ascii()).into_owned()
                }
                _ => manifest::detect_media_type(&bytes),
            };
            if inner.shared.is_some() {
                let b = Arc::new(bytes.clone());
                inner.local.manifests().insert(&d, b, media_type.clone());
            }
            Ok(StoredManifest {
                bytes,
                digest: d,
                media_type,
            })
        })
        .await
    }

    /// Deletes a manifest revision and every tag that points at it.
    pub(crate) async fn delete_manifest(&self, name: &RepoName, d: &Digest) -> Result<(), Error> {
        let (name, d) = (name.clone(), d.clone());
        self.run(move |drv, p| {
            let link = p.revision_link(&name, &d);
            if read_link(drv, &link)?.as_ref() != Some(&d) {
                return Err(Error::ManifestUnknown {
                    name: name.clone(),
                    reference: d.to_string(),
                });
            }
            referrers::unindex(drv, p, &name, &d)?;
            for t in subdirs(drv, &p.tags(&name))? {
                let Ok(tag) = t.parse::<Tag>() else { continue };
                if read_link(drv, &p.tag_current(&name, &tag))?.as_ref() == Some(&d) {
                    drv.delete(&p.tag_dir(&name, &tag))?;
                }
            }
            if let Some(dir) = link.parent() {
                drv.delete(&dir)?;
            }
            Ok(())
        })
        .await
    }

    /// Removes a tag; the manifest stays reachable by digest.
    pub(crate) async fn delete_tag(&self, name: &RepoName, tag: &Tag) -> Result<(), Error> {
        let (name, tag) = (name.clone(), tag.clone());
        self.run(move |drv, p| {
            if read_link(drv, &p.tag_current(&name, &tag))?.is_none() {
                return Err(Error::ManifestUnknown {
                    name: name.clone(),
                    reference: tag.to_string(),
                });
            }
            drv.delete(&p.tag_dir(&name, &tag))?;
            Ok(())
        })
        .await
    }

    /// Every tag of a repository that points somewhere, sorted.
    pub(crate) async fn tags(&self, name: &RepoName) -> Result<Vec<String>, Error> {
        let name = name.clone();
        self.run(move |drv, p| {
            if !drv.has_children(&p.repo(&name))? {
                return Err(Error::NameUnknown(name));
            }
            let mut out = Vec::new();
            for t in subdirs(drv, &p.tags(&name))? {
                if let Ok(tag) = t.parse::<Tag>()
                    && read_link(drv, &p.tag_current(&name, &tag))?.is_some()
                {
                    out.push(t);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Every repository that holds manifests, sorted.
    pub(crate) async fn repositories(&self) -> Result<Vec<String>, Error> {
        self.run(move |drv, p| {
            let mut out = Vec::new();
            walk_repos(drv, &p.repositories(), "", &mut out, &|drv, k| {
                drv.has_children(&k.join("_manifests"))
            })?;
            out.sort();
            Ok(out)
        })
        .await
    }
}

fn blob_size_of(
    drv: &dyn Driver,
    p: &Paths,
    name: &RepoName,
    d: &Digest,
) -> Result<Option<u64>, Error> {
    if read_link(drv, &p.layer_link(name, d))?.as_ref() != Some(d) {
        return Ok(None);
    }
    Ok(drv.stat(&p.blob_data(d))?.map(|m| m.size))
}

/// Fills `buf` as far as the reader goes; fewer bytes only at the end.
fn read_full(r: &mut dyn std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
