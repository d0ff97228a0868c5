//! Content storage in registry:2's filesystem layout (see [`paths`]). Blobs are streamed to
//! disk while they are hashed and become visible only by a rename after the digest checks
//! out; links and manifests are written atomically. Storage never sees HTTP.

pub mod gc;
pub mod paths;
mod upload;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;

pub use gc::{FsckReport, GcOptions, GcReport, RepoSummary, StorageStats};
pub use paths::Paths;
pub use upload::{UploadInfo, UploadStatus};

use super::reference::{Digest, Reference, RepoName, Tag};
use super::{Error, StoredManifest, manifest};
use crate::fsutil;

/// An open blob and its size, for streaming a response.
#[derive(Debug)]
pub struct BlobReader {
    /// The content, positioned at the start.
    pub file: tokio::fs::File,
    /// Its length.
    pub size: u64,
}

/// The storage root. Cheap to clone; clones share upload state.
#[derive(Debug, Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    paths: Paths,
    uploads: Mutex<HashMap<String, Arc<tokio::sync::Mutex<upload::State>>>>,
    /// Manifest writes hold it shared, GC exclusively (see [`gc`]).
    gc_lock: tokio::sync::RwLock<()>,
    /// Blobs a client was recently told exist (HEAD, GET, mount): a client that skips an
    /// upload because of that answer must not see GC sweep the blob before its manifest.
    seen: Mutex<HashMap<Digest, std::time::Instant>>,
}

pub(crate) fn io<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Runs blocking file work off the async threads.
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

/// Writes a link file (the digest, no newline) atomically, creating its folder.
fn write_link(path: &Path, d: &Digest) -> Result<(), Error> {
    if let Some(dir) = path.parent() {
        fsutil::create_dir_all(dir, 0o755)?;
    }
    fsutil::write_atomic(path, d.to_string().as_bytes(), 0o644)?;
    Ok(())
}

/// Reads a link file; `None` when it does not exist. A trailing newline is tolerated.
fn read_link(path: &Path) -> Result<Option<Digest>, Error> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s.trim().parse().ok()),
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.kind() == std::io::ErrorKind::NotADirectory =>
        {
            Ok(None)
        }
        Err(e) => Err(io("read link", path)(e)),
    }
}

fn remove_dir_all_if_exists(path: &Path) -> Result<bool, Error> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io("remove", path)(e)),
    }
}

/// Names of the sub-folders of `dir`, sorted; empty when it does not exist.
fn subdirs(dir: &Path) -> Result<Vec<String>, Error> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("list", dir)(e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(io("list", dir))?;
        if e.file_type().map_err(io("list", dir))?.is_dir() {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    Ok(out)
}

impl Storage {
    /// Storage under `root` (registry:2's `rootdirectory`); folders are made on first write.
    pub fn new(root: &Path) -> Storage {
        Storage {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                paths: Paths::new(root),
                uploads: Mutex::new(HashMap::new()),
                gc_lock: tokio::sync::RwLock::new(()),
                seen: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Held shared while a manifest is checked and written, so GC (which holds it
    /// exclusively) never sweeps between the check and the write.
    pub async fn manifest_write_guard(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.inner.gc_lock.read().await
    }

    /// Blobs reported as existing within `grace`; older entries are forgotten.
    pub(crate) fn recently_seen(
        &self,
        grace: std::time::Duration,
    ) -> std::collections::HashSet<Digest> {
        let mut seen = self.inner.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|_, t| t.elapsed() < grace);
        seen.keys().cloned().collect()
    }

    /// The path layout.
    pub fn paths(&self) -> &Paths {
        &self.inner.paths
    }

    /// True when the repository has any content or upload.
    pub async fn repo_exists(&self, name: &RepoName) -> bool {
        tokio::fs::metadata(self.paths().repo(name))
            .await
            .is_ok_and(|m| m.is_dir())
    }

    /// The size of a blob the repository may serve; `None` when it may not.
    pub async fn blob_size(&self, name: &RepoName, d: &Digest) -> Result<Option<u64>, Error> {
        let size = self.blob_size_unrecorded(name, d).await?;
        if size.is_some() {
            let mut seen = self.inner.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.insert(d.clone(), std::time::Instant::now());
        }
        Ok(size)
    }

    async fn blob_size_unrecorded(
        &self,
        name: &RepoName,
        d: &Digest,
    ) -> Result<Option<u64>, Error> {
        let p = self.paths().clone();
        let (name, d) = (name.clone(), d.clone());
        blocking(move || {
            if read_link(&p.layer_link(&name, &d))?.as_ref() != Some(&d) {
                return Ok(None);
            }
            match std::fs::metadata(p.blob_data(&d)) {
                Ok(m) => Ok(Some(m.len())),
                Err(_) => Ok(None),
            }
        })
        .await
    }

    /// Opens a blob the repository may serve.
    pub async fn open_blob(&self, name: &RepoName, d: &Digest) -> Result<BlobReader, Error> {
        if self.blob_size(name, d).await?.is_none() {
            return Err(Error::BlobUnknown(d.clone()));
        }
        let path = self.paths().blob_data(d);
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::BlobUnknown(d.clone()));
            }
            Err(e) => return Err(io("open", &path)(e)),
        };
        let size = file.metadata().await.map_err(io("stat", &path))?.len();
        Ok(BlobReader { file, size })
    }

    /// Removes a repository's link to a blob; the content stays for other repositories
    /// (and for garbage collection to decide).
    pub async fn unlink_blob(&self, name: &RepoName, d: &Digest) -> Result<(), Error> {
        let link = self.paths().layer_link(name, d);
        let dir = link.parent().map(Path::to_path_buf).unwrap_or_default();
        let d = d.clone();
        blocking(move || {
            if read_link(&link)?.is_none() {
                return Err(Error::BlobUnknown(d));
            }
            remove_dir_all_if_exists(&dir)?;
            Ok(())
        })
        .await
    }

    /// Links a blob of `from` into `to` without copying; false when `from` cannot serve it.
    pub async fn mount(&self, to: &RepoName, from: &RepoName, d: &Digest) -> Result<bool, Error> {
        let _gc = self.inner.gc_lock.read().await;
        if self.blob_size(from, d).await?.is_none() {
            return Ok(false);
        }
        let link = self.paths().layer_link(to, d);
        let d = d.clone();
        blocking(move || write_link(&link, &d)).await?;
        Ok(true)
    }

    /// True when the manifest is a revision of the repository and its content exists.
    pub async fn has_manifest(&self, name: &RepoName, d: &Digest) -> Result<bool, Error> {
        let p = self.paths().clone();
        let (name, d) = (name.clone(), d.clone());
        blocking(move || {
            Ok(read_link(&p.revision_link(&name, &d))?.as_ref() == Some(&d)
                && p.blob_data(&d).is_file())
        })
        .await
    }

    /// Stores manifest bytes as a blob, links the revision, records its media type and
    /// moves the tag. Content first, tag last: a reader never finds a tag pointing at
    /// nothing.
    pub async fn put_manifest(
        &self,
        name: &RepoName,
        d: &Digest,
        body: Vec<u8>,
        media_type: &str,
        tag: Option<&Tag>,
    ) -> Result<(), Error> {
        let p = self.paths().clone();
        let (name, d, tag, media_type) = (
            name.clone(),
            d.clone(),
            tag.cloned(),
            media_type.to_string(),
        );
        blocking(move || {
            let data = p.blob_data(&d);
            if !data.is_file() {
                fsutil::create_dir_all(&p.blob_dir(&d), 0o755)?;
                fsutil::write_atomic(&data, &body, 0o644)?;
            }
            let mt = p.media_type(&d);
            if let Some(dir) = mt.parent() {
                fsutil::create_dir_all(dir, 0o755)?;
            }
            fsutil::write_atomic(&mt, media_type.as_bytes(), 0o644)?;
            write_link(&p.revision_link(&name, &d), &d)?;
            if let Some(t) = &tag {
                write_link(&p.tag_index(&name, t, &d), &d)?;
                write_link(&p.tag_current(&name, t), &d)?;
            }
            Ok(())
        })
        .await
    }

    /// A manifest by tag or digest.
    pub async fn manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<StoredManifest, Error> {
        let p = self.paths().clone();
        let (name, reference) = (name.clone(), reference.clone());
        blocking(move || {
            let unknown = || Error::ManifestUnknown {
                name: name.clone(),
                reference: reference.to_string(),
            };
            if !p.repo(&name).is_dir() {
                return Err(Error::NameUnknown(name.clone()));
            }
            let d = match &reference {
                Reference::Digest(d) => d.clone(),
                Reference::Tag(t) => read_link(&p.tag_current(&name, t))?.ok_or_else(unknown)?,
            };
            if read_link(&p.revision_link(&name, &d))?.as_ref() != Some(&d) {
                return Err(unknown());
            }
            let data = p.blob_data(&d);
            let bytes = match std::fs::read(&data) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(unknown()),
                Err(e) => return Err(io("read", &data)(e)),
            };
            let media_type = match std::fs::read_to_string(p.media_type(&d)) {
                Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
                _ => manifest::detect_media_type(&bytes),
            };
            Ok(StoredManifest {
                bytes,
                digest: d,
                media_type,
            })
        })
        .await
    }

    /// Deletes a manifest revision and every tag that points at it.
    pub async fn delete_manifest(&self, name: &RepoName, d: &Digest) -> Result<(), Error> {
        let p = self.paths().clone();
        let (name, d) = (name.clone(), d.clone());
        blocking(move || {
            let link = p.revision_link(&name, &d);
            if read_link(&link)?.as_ref() != Some(&d) {
                return Err(Error::ManifestUnknown {
                    name: name.clone(),
                    reference: d.to_string(),
                });
            }
            for t in subdirs(&p.tags(&name))? {
                let Ok(tag) = t.parse::<Tag>() else { continue };
                if read_link(&p.tag_current(&name, &tag))?.as_ref() == Some(&d) {
                    remove_dir_all_if_exists(&p.tag_dir(&name, &tag))?;
                }
            }
            if let Some(dir) = link.parent() {
                remove_dir_all_if_exists(dir)?;
            }
            Ok(())
        })
        .await
    }

    /// Removes a tag; the manifest stays reachable by digest.
    pub async fn delete_tag(&self, name: &RepoName, tag: &Tag) -> Result<(), Error> {
        let p = self.paths().clone();
        let (name, tag) = (name.clone(), tag.clone());
        blocking(move || {
            if read_link(&p.tag_current(&name, &tag))?.is_none() {
                return Err(Error::ManifestUnknown {
                    name: name.clone(),
                    reference: tag.to_string(),
                });
            }
            remove_dir_all_if_exists(&p.tag_dir(&name, &tag))?;
            Ok(())
        })
        .await
    }

    /// Every tag of a repository that points somewhere, sorted.
    pub async fn tags(&self, name: &RepoName) -> Result<Vec<String>, Error> {
        let p = self.paths().clone();
        let name = name.clone();
        blocking(move || {
            if !p.repo(&name).is_dir() {
                return Err(Error::NameUnknown(name));
            }
            let mut out = Vec::new();
            for t in subdirs(&p.tags(&name))? {
                if let Ok(tag) = t.parse::<Tag>()
                    && read_link(&p.tag_current(&name, &tag))?.is_some()
                {
                    out.push(t);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Every repository that holds manifests, sorted.
    pub async fn repositories(&self) -> Result<Vec<String>, Error> {
        let root = self.paths().repositories();
        blocking(move || {
            let mut out = Vec::new();
            walk_repos(&root, "", &mut out, &|p: &Path| {
                p.join("_manifests").is_dir()
            })?;
            out.sort();
            Ok(out)
        })
        .await
    }

    /// Every manifest revision of a repository with its bytes (for referrers).
    pub async fn manifests_of(&self, name: &RepoName) -> Result<Vec<(Digest, Vec<u8>)>, Error> {
        let p = self.paths().clone();
        let name = name.clone();
        blocking(move || {
            let mut out = Vec::new();
            for alg in subdirs(&p.revisions(&name))? {
                for hex in subdirs(&p.revisions(&name).join(&alg))? {
                    let Ok(d) = format!("{alg}:{hex}").parse::<Digest>() else {
                        continue;
                    };
                    if read_link(&p.revision_link(&name, &d))?.as_ref() != Some(&d) {
                        continue;
                    }
                    if let Ok(bytes) = std::fs::read(p.blob_data(&d)) {
                        out.push((d, bytes));
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    /// Reads a whole blob into memory; only for small content such as manifests or configs.
    pub async fn read_small_blob(
        &self,
        name: &RepoName,
        d: &Digest,
        limit: u64,
    ) -> Result<Vec<u8>, Error> {
        let b = self.open_blob(name, d).await?;
        if b.size > limit {
            return Err(Error::SizeInvalid(format!(
                "blob {d} is {} bytes, over the {limit} byte limit",
                b.size
            )));
        }
        let mut out = Vec::with_capacity(b.size as usize);
        let path = self.paths().blob_data(d);
        b.file
            .take(limit)
            .read_to_end(&mut out)
            .await
            .map_err(io("read", &path))?;
        Ok(out)
    }
}

/// Collects repository names: a folder `is_repo` accepts (for the catalog, one holding
/// `_manifests`, as registry:2 decides); `_` folders are never descended into.
fn walk_repos(
    dir: &Path,
    prefix: &str,
    out: &mut Vec<String>,
    is_repo: &dyn Fn(&Path) -> bool,
) -> Result<(), Error> {
    for sub in subdirs(dir)? {
        if sub.starts_with('_') {
            continue;
        }
        let name = if prefix.is_empty() {
            sub.clone()
        } else {
            format!("{prefix}/{sub}")
        };
        let path = dir.join(&sub);
        if is_repo(&path) && name.parse::<RepoName>().is_ok() {
            out.push(name.clone());
        }
        walk_repos(&path, &name, out, is_repo)?;
    }
    Ok(())
}
