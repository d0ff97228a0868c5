//! Blob uploads: `_uploads/<uuid>/data` grows chunk by chunk while a SHA-256 state follows
//! it, so finishing a multi-gigabyte layer does not read it again. Finishing verifies the
//! digest, fsyncs, and renames the data into `blobs/`: content is visible only once whole
//! and correct. Chunks are serialised per upload; different uploads run in parallel.

use std::path::PathBuf;
use std::sync::Arc;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::{Storage, blocking, io, remove_dir_all_if_exists, write_link};
use crate::fsutil;
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

const CHUNK: usize = 1024 * 1024;

/// Upload ids are UUIDs; anything else is unknown (and never becomes a path).
fn parse_id(id: &str) -> Result<String, Error> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| Error::UploadUnknown(id.to_string()))
}

impl Storage {
    fn data_path(&self, name: &RepoName, id: &str) -> PathBuf {
        self.paths().upload_dir(name, id).join("data")
    }

    fn state(&self, id: &str, size: u64) -> Arc<tokio::sync::Mutex<State>> {
        let mut map = self.inner.uploads.lock().unwrap_or_else(|p| p.into_inner());
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

    /// An upload's id (normalised), data file and in-memory state; unknown uploads fail.
    async fn open_upload(
        &self,
        name: &RepoName,
        id: &str,
    ) -> Result<(String, PathBuf, Arc<tokio::sync::Mutex<State>>), Error> {
        let id = parse_id(id)?;
        let path = self.data_path(name, &id);
        let size = current_size(&path, &id).await?;
        let state = self.state(&id, size);
        Ok((id, path, state))
    }

    fn forget(&self, id: &str) {
        let mut map = self.inner.uploads.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(id);
    }

    /// Starts an upload: an empty `data` file and a `startedat` stamp.
    pub async fn start_upload(&self, name: &RepoName) -> Result<UploadStatus, Error> {
        let id = uuid::Uuid::new_v4().hyphenated().to_string();
        let dir = self.paths().upload_dir(name, &id);
        let started = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default();
        blocking(move || {
            fsutil::create_dir_all(&dir, 0o755)?;
            fsutil::write_atomic(&dir.join("startedat"), started.as_bytes(), 0o644)?;
            std::fs::File::create(dir.join("data")).map_err(io("create", &dir.join("data")))?;
            Ok(())
        })
        .await?;
        self.state(&id, 0);
        Ok(UploadStatus { id, size: 0 })
    }

    /// Bytes received so far.
    pub async fn upload_status(&self, name: &RepoName, id: &str) -> Result<UploadStatus, Error> {
        let id = parse_id(id)?;
        let size = current_size(&self.data_path(name, &id), &id).await?;
        Ok(UploadStatus { id, size })
    }

    /// Appends a chunk streamed from `body`. With `start`, the chunk must begin exactly
    /// where the upload ends (out-of-order chunks are refused, nothing written).
    pub async fn append(
        &self,
        name: &RepoName,
        id: &str,
        start: Option<u64>,
        body: &mut (impl AsyncRead + Unpin + ?Sized),
    ) -> Result<UploadStatus, Error> {
        let (id, path, state) = self.open_upload(name, id).await?;
        let mut st = state.lock().await;
        // Read under the lock: another chunk may have landed meanwhile.
        let size = current_size(&path, &id).await?;
        if let Some(s) = start
            && s != size
        {
            return Err(Error::RangeInvalid { start: s, size });
        }
        if st.size != size {
            st.hasher = None;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .await
            .map_err(io("open", &path))?;
        // Fill a large buffer before each write: request bodies arrive in small frames,
        // and every file write is a hop to the blocking pool.
        let mut buf = vec![0u8; CHUNK];
        let mut fill = 0;
        let mut written = 0u64;
        let mut failed = None;
        loop {
            let n = match body.read(&mut buf[fill..]).await {
                Ok(n) => n,
                Err(e) => {
                    failed = Some(e);
                    0
                }
            };
            fill += n;
            if fill == buf.len() || n == 0 {
                if fill > 0 {
                    file.write_all(&buf[..fill])
                        .await
                        .map_err(io("write", &path))?;
                    if let Some(h) = st.hasher.as_mut() {
                        h.update(&buf[..fill]);
                    }
                    written += fill as u64;
                    fill = 0;
                }
                if n == 0 {
                    break;
                }
            }
        }
        file.flush().await.map_err(io("write", &path))?;
        st.size = size + written;
        if let Some(e) = failed {
            // What arrived is kept; the client can resume from the reported size.
            st.hasher = None;
            return Err(Error::Body(e.to_string()));
        }
        Ok(UploadStatus { id, size: st.size })
    }

    /// Finishes an upload: verifies `digest`, then moves the data into `blobs/` and links
    /// it into the repository. On a mismatch the upload is discarded and nothing becomes
    /// visible.
    pub async fn finish_upload(
        &self,
        name: &RepoName,
        id: &str,
        digest: &Digest,
    ) -> Result<u64, Error> {
        let (id, path, state) = self.open_upload(name, id).await?;
        let st = state.lock().await;
        let size = current_size(&path, &id).await?;
        let actual = match (&st.hasher, digest.algorithm()) {
            (Some(h), Algorithm::Sha256) if st.size == size => h.clone().finish(),
            _ => hash_file(&path, digest.algorithm()).await?,
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
        let _gc = self.inner.gc_lock.read().await;
        let p = self.paths().clone();
        let (name2, d) = (name.clone(), digest.clone());
        let dir = self.paths().upload_dir(name, &id);
        blocking(move || {
            let f = std::fs::File::open(&path).map_err(io("open", &path))?;
            f.sync_all().map_err(io("fsync", &path))?;
            let target = p.blob_data(&d);
            if !target.is_file() {
                fsutil::create_dir_all(&p.blob_dir(&d), 0o755)?;
                std::fs::rename(&path, &target).map_err(io("move into place", &target))?;
                let dir =
                    std::fs::File::open(p.blob_dir(&d)).map_err(io("open", &p.blob_dir(&d)))?;
                dir.sync_all().map_err(io("fsync", &p.blob_dir(&d)))?;
            }
            write_link(&p.layer_link(&name2, &d), &d)?;
            remove_dir_all_if_exists(&dir)?;
            Ok(())
        })
        .await?;
        drop(st);
        self.forget(&id);
        Ok(size)
    }

    /// Discards an upload.
    pub async fn cancel_upload(&self, name: &RepoName, id: &str) -> Result<(), Error> {
        let id = parse_id(id)?;
        let dir = self.paths().upload_dir(name, &id);
        let removed = blocking(move || remove_dir_all_if_exists(&dir)).await?;
        self.forget(&id);
        if removed {
            Ok(())
        } else {
            Err(Error::UploadUnknown(id))
        }
    }
}

/// Bytes in an upload's data file; a missing file means the upload is unknown.
async fn current_size(path: &std::path::Path, id: &str) -> Result<u64, Error> {
    match tokio::fs::metadata(path).await {
        Ok(m) => Ok(m.len()),
        Err(_) => Err(Error::UploadUnknown(id.to_string())),
    }
}

impl Storage {
    /// Every upload session, oldest first.
    pub async fn list_uploads(&self) -> Result<Vec<UploadInfo>, Error> {
        let p = self.paths().clone();
        blocking(move || {
            let mut out = Vec::new();
            for repo in super::gc::all_repos(&p.repositories())? {
                let Ok(name) = repo.parse::<RepoName>() else {
                    continue;
                };
                for id in super::subdirs(&p.uploads(&name))? {
                    let dir = p.upload_dir(&name, &id);
                    let size = std::fs::metadata(dir.join("data"))
                        .map(|m| m.len())
                        .unwrap_or(0);
                    let started_at = std::fs::read_to_string(dir.join("startedat"))
                        .ok()
                        .and_then(|s| OffsetDateTime::parse(s.trim(), &Rfc3339).ok())
                        .or_else(|| {
                            std::fs::metadata(&dir)
                                .and_then(|m| m.modified())
                                .ok()
                                .map(OffsetDateTime::from)
                        });
                    out.push(UploadInfo {
                        repository: repo.clone(),
                        id,
                        size,
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
    pub async fn purge_uploads(
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
                let map = self.inner.uploads.lock().unwrap_or_else(|p| p.into_inner());
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
                let dir = self.paths().upload_dir(&name, &u.id);
                blocking(move || remove_dir_all_if_exists(&dir)).await?;
                self.forget(&u.id);
                tracing::info!(repo = %u.repository, id = %u.id, bytes = u.size, "purged upload");
            }
            purged.push(u);
        }
        Ok(purged)
    }
}

async fn hash_file(path: &std::path::Path, alg: Algorithm) -> Result<Digest, Error> {
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(io("open", path))?;
    let mut h = alg.hasher();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = f.read(&mut buf).await.map_err(io("read", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish())
}
