//! The embedded registry's core and its one front door, [`Registry`]. Every operation the
//! distribution API (the `oci` edge) and the control API (`daemon::service`) perform is a
//! method here that takes the caller's [`Identity`]: this is where "who may do this"
//! (policy, later) and "record that it happened" (events, the audit log) live, once, for
//! HTTP and gRPC alike. Storage is private to this module, so an edge cannot bypass the
//! door. Nothing here knows about HTTP; errors are domain errors that the edges map to OCI
//! error codes or gRPC statuses, each in one exhaustive table.
//!
//! The registry shares one error enum between this module and `storage`, because every
//! failure of either ends in the same OCI error table and must be mapped exhaustively.

pub mod inspect;
pub mod manifest;
pub mod policy;
pub mod reference;
mod settings;
mod storage;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};

pub use inspect::ImageInfo;
pub use manifest::Manifest;
pub use reference::{Digest, Reference, RepoName, Tag};
pub use settings::{S3Settings, Settings};
pub use storage::{
    BlobReader, FsckProblem, FsckReport, GcOptions, GcReport, RepoSummary, StorageStats,
    UploadInfo, UploadStatus,
};

use crate::audit::{self, Audit, Record};
use crate::events::{Action, Event, Events, Target};
use crate::identity::Identity;
use storage::Storage;
use storage::driver::{FsDriver, MemoryDriver, S3Driver};

/// Largest manifest accepted, as in distribution and the OCI spec's guidance.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A repository name, tag or digest is malformed.
    #[error(transparent)]
    Reference(#[from] reference::Error),
    /// The repository does not exist.
    #[error("repository {0} is not known to this registry")]
    NameUnknown(RepoName),
    /// No such manifest in the repository.
    #[error("manifest {reference} is not known in {name}")]
    ManifestUnknown {
        /// Repository.
        name: RepoName,
        /// Tag or digest asked for.
        reference: String,
    },
    /// No such blob in the repository.
    #[error("blob {0} is not known in this repository")]
    BlobUnknown(Digest),
    /// No such upload (never started, finished or cancelled).
    #[error("upload {0} is not known: it was never started, or it was finished or cancelled")]
    UploadUnknown(String),
    /// The content does not hash to the digest the client gave.
    #[error("content digest is {actual}, not {expected}")]
    DigestMismatch {
        /// What the client said.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// A required digest parameter is missing.
    #[error("the digest parameter is required to finish an upload")]
    DigestMissing,
    /// A requested byte range lies outside the blob.
    #[error("requested range is not within the blob's {size} bytes")]
    RangeNotSatisfiable {
        /// The blob's size.
        size: u64,
    },
    /// A chunk does not start where the upload ends.
    #[error("chunk starts at {start}, but the upload holds {size} bytes")]
    RangeInvalid {
        /// Where the chunk claimed to start.
        start: u64,
        /// Bytes received so far.
        size: u64,
    },
    /// A chunk's length differs from its Content-Range; it was undone.
    #[error(
        "the chunk was {got} bytes but its Content-Range said {want}; it was not kept, and the upload still holds {size} bytes"
    )]
    ChunkLength {
        /// What the Content-Range said.
        want: u64,
        /// What arrived.
        got: u64,
        /// Bytes the upload holds.
        size: u64,
    },
    /// A Content-Length or size does not match the content.
    #[error("{0}")]
    SizeInvalid(String),
    /// The manifest is malformed or of an unsupported type.
    #[error("invalid manifest: {0}")]
    ManifestInvalid(#[from] manifest::Error),
    /// A manifest references a blob or child manifest the repository lacks.
    #[error("manifest references {0}, which is not in this repository: push it first")]
    ManifestBlobUnknown(Digest),
    /// The manifest is over [`MAX_MANIFEST_BYTES`].
    #[error("manifest is larger than {limit} bytes")]
    ManifestTooLarge {
        /// The limit.
        limit: usize,
    },
    /// A pagination parameter is malformed.
    #[error("invalid pagination: {0}")]
    PaginationInvalid(String),
    /// The policy does not let this caller do this here.
    #[error("{who} may not {action} {repository} (policy rule {rule:?})")]
    Denied {
        /// The caller, as events name it.
        who: String,
        /// The action refused.
        action: &'static str,
        /// The repository.
        repository: String,
        /// The rule that decided (`default` when none matched).
        rule: String,
    },
    /// Deleting is switched off in the configuration.
    #[error("deleting is disabled on this registry (registry.delete_enabled = false)")]
    DeleteDisabled,
    /// The request body could not be read (client went away mid-upload).
    #[error("reading the request body failed: {0}")]
    Body(String),
    /// Storage failed.
    #[error("storage: cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Atomic write failed.
    #[error(transparent)]
    Fs(#[from] crate::fsutil::Error),
    /// A GC on a shared store asked for less grace than other writers count on.
    #[error(
        "a grace period of {} is too short for a store other berthd write to: use at least {} (registry.s3.gc_min_grace)",
        humantime::format_duration(*grace),
        humantime::format_duration(*min)
    )]
    GraceTooShort {
        /// What was asked.
        grace: std::time::Duration,
        /// The least allowed.
        min: std::time::Duration,
    },
}

/// One page of a sorted listing, and whether more follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The items.
    pub items: Vec<String>,
    /// The last item, when a next page exists.
    pub next_after: Option<String>,
}

/// Cuts a sorted list after `last`, at most `n` items (the spec's `n`/`last`).
pub fn paginate(all: Vec<String>, n: Option<usize>, last: Option<&str>) -> Page {
    let start = last.map_or(0, |l| all.partition_point(|x| x.as_str() <= l));
    let rest = &all[start.min(all.len())..];
    match n {
        Some(n) if n < rest.len() => Page {
            items: rest[..n].to_vec(),
            next_after: if n == 0 {
                None
            } else {
                rest.get(n - 1).cloned()
            },
        },
        _ => Page {
            items: rest.to_vec(),
            next_after: None,
        },
    }
}

/// A stored manifest as served.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    /// Exact bytes.
    pub bytes: Vec<u8>,
    /// Their digest.
    pub digest: Digest,
    /// Media type to serve them with.
    pub media_type: String,
}

/// What a manifest PUT stored.
#[derive(Debug, Clone)]
pub struct PutManifest {
    /// Digest of the stored bytes.
    pub digest: Digest,
    /// The subject, for the `OCI-Subject` header.
    pub subject: Option<Digest>,
    /// The tags asked for besides the reference (`?tag=`), now pointing at it: one
    /// `OCI-Tag` header each.
    pub tagged: Vec<Tag>,
}

/// How many of a manifest's blobs are checked at once when it is stored.
const CHECKS_AT_ONCE: usize = 8;

/// Where the registry keeps its content.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// registry:2's filesystem layout under this folder (its `rootdirectory`).
    Filesystem(PathBuf),
    /// In memory, gone when the process ends: for tests.
    Memory,
    /// An S3-compatible bucket in registry:2's s3 layout.
    S3(settings::S3Settings),
}

/// A byte range as a client asks for it, before the blob's size is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// From this offset to the end.
    From(u64),
    /// From the first offset to the second, inclusive.
    FromTo(u64, u64),
    /// The last this many bytes.
    Suffix(u64),
}

impl ByteRange {
    /// The (start, length) this range selects of `size` bytes, or `None` when it selects
    /// nothing.
    pub fn resolve(self, size: u64) -> Option<(u64, u64)> {
        let last = size.checked_sub(1)?;
        let (start, end) = match self {
            ByteRange::From(a) => (a, last),
            ByteRange::FromTo(a, b) => (a, b.min(last)),
            ByteRange::Suffix(0) => return None,
            ByteRange::Suffix(n) => (size.saturating_sub(n), last),
        };
        (start <= end).then(|| (start, end - start + 1))
    }
}

/// What a finished blob upload or mount stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobCommit {
    /// The blob is stored and linked into the repository.
    Created(Digest),
    /// A mount could not be done (the source cannot serve it): an upload session was
    /// opened instead, as the spec asks.
    Upload(UploadStatus),
}

/// What an image delete over the control API did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// The manifest the reference resolved to.
    pub digest: Digest,
    /// True when only a tag went; the manifest stays reachable by digest.
    pub untagged: bool,
}

/// The registry: storage plus the rules of the distribution spec, behind one door.
#[derive(Debug, Clone)]
pub struct Registry {
    storage: Storage,
    delete_enabled: bool,
    events: Events,
    /// Who may do what (swapped whole on reload; every request reads one version).
    policy: Arc<arc_swap::ArcSwap<Versioned>>,
    /// Decisions already made under the policy in force, by (serial, action, repository):
    /// a client repeats the same few requests, and a decision depends on nothing else.
    /// Emptied on every policy change; bounded.
    decisions: Arc<std::sync::Mutex<DecisionCache>>,
    /// Where every mutation and every denial is recorded, durably, before the answer.
    audit: Audit,
    /// Policy denials and GC figures, for `/metrics`.
    metrics: Arc<crate::metrics::Metrics>,
    /// True while the storage is full (logged once per episode).
    full: Arc<std::sync::atomic::AtomicBool>,
}

/// A policy and the number of the change that put it in force (never reused, unlike an
/// address), which the decision cache is keyed on.
#[derive(Debug)]
struct Versioned {
    version: u64,
    policy: Arc<policy::Policy>,
}

/// Cached policy decisions and the policy version they were made under.
#[derive(Debug, Default)]
struct DecisionCache {
    under: u64,
    map: std::collections::HashMap<(String, policy::Action, String), policy::Decision>,
}

/// Decisions kept at most before the cache starts over.
const MAX_CACHED_DECISIONS: usize = 65_536;

fn tag_of(r: &Reference) -> Option<String> {
    match r {
        Reference::Tag(t) => Some(t.to_string()),
        Reference::Digest(_) => None,
    }
}

impl Error {
    /// True when the storage is out of space (ENOSPC, or a quota: EDQUOT).
    pub fn is_storage_full(&self) -> bool {
        let full = |e: &std::io::Error| {
            e.kind() == std::io::ErrorKind::StorageFull
                || e.kind() == std::io::ErrorKind::QuotaExceeded
                || matches!(e.raw_os_error(), Some(28 | 122))
        };
        match self {
            Error::Io { source, .. } => full(source),
            Error::Fs(crate::fsutil::Error::Io { source, .. }) => full(source),
            _ => false,
        }
    }
}

impl Registry {
    /// A registry over `backend`; `delete_enabled` is `registry.delete_enabled` (HTTP
    /// deletes; the control API may always delete).
    /// Fails only when an S3 store's settings are unusable (its credentials file is
    /// unreadable or public, the endpoint malformed).
    pub fn open(backend: Backend, delete_enabled: bool) -> Result<Registry, Error> {
        let storage = match backend {
            Backend::Filesystem(root) => Storage::new(Arc::new(FsDriver::new(&root)), root),
            Backend::Memory => {
                Storage::new(Arc::new(MemoryDriver::new()), PathBuf::from("memory:"))
            }
            Backend::S3(s) => {
                let driver = S3Driver::new(&s)?;
                let root =
                    PathBuf::from(format!("s3://{}/{}", s.bucket, s.prefix.trim_matches('/')));
                // A bucket may have other writers: GC and writers coordinate through it.
                let shared = storage::Shared {
                    min_grace: s.gc_min_grace,
                    fence: s.fence,
                };
                Storage::shared(Arc::new(driver), root, shared)
            }
        };
        Ok(Registry {
            storage,
            delete_enabled,
            events: Events::default(),
            policy: Arc::new(arc_swap::ArcSwap::from_pointee(Versioned {
                version: 0,
                policy: Arc::new(policy::Policy::default()),
            })),
            decisions: Arc::default(),
            audit: Audit::disabled(),
            metrics: crate::metrics::Metrics::new(),
            full: Arc::default(),
        })
    }

    /// The same registry counting into `metrics` (the daemon's).
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Registry {
        self.metrics = metrics;
        self
    }

    /// The same registry recording every mutation and denial in `audit`.
    #[must_use]
    pub fn with_audit(mut self, audit: Audit) -> Registry {
        self.audit = audit;
        self
    }

    /// Records `r`'s outcome as `rec`, durably, and passes `r` on.
    async fn audited<T>(&self, rec: Record, r: Result<T, Error>) -> Result<T, Error> {
        self.watch_space(&r);
        self.audit.note_async(&rec.outcome(&r)).await;
        r
    }

    /// Logs once when the storage fills up (not once per refused write) and once when a
    /// write succeeds again.
    fn watch_space<T>(&self, r: &Result<T, Error>) {
        use std::sync::atomic::Ordering;
        match r {
            Err(e) if e.is_storage_full() => {
                if !self.full.swap(true, Ordering::AcqRel) {
                    tracing::error!(root = %self.root().display(), error = %e, "registry storage is full: pushes are refused until space is freed (berth registry gc); pulls go on");
                }
            }
            Ok(_) => {
                if self.full.swap(false, Ordering::AcqRel) {
                    tracing::info!(root = %self.root().display(), "registry storage has room again");
                }
            }
            Err(_) => {}
        }
    }

    /// [`Registry::audited`], with what a success adds to the record (its digest).
    async fn audited_digest<T>(
        &self,
        rec: Record,
        r: Result<T, Error>,
        digest: impl FnOnce(&T) -> &Digest,
    ) -> Result<T, Error> {
        let rec = match &r {
            Ok(t) => rec.digest(digest(t)),
            Err(_) => rec,
        };
        self.audited(rec, r).await
    }

    /// Puts the policy `load` produced (from the file named in the settings) in force;
    /// a failed load keeps the running policy. Either way it is recorded.
    pub fn reload_policy(
        &self,
        who: &Identity,
        load: Result<policy::Policy, policy::Error>,
    ) -> Result<String, policy::Error> {
        let r = load.map(|p| {
            let source = p.source.clone();
            self.set_policy(p);
            source
        });
        let mut rec = Record::new(who, audit::Action::PolicyReload).outcome(&r);
        if let Ok(source) = &r {
            rec = rec.name(source.clone());
        }
        self.audit.note(&rec);
        r
    }

    /// Puts `p` in force for every request from now on.
    pub fn set_policy(&self, p: policy::Policy) {
        tracing::info!(source = %p.source, "registry policy in force");
        // Reloads are rare and serialised by whoever calls this; rcu keeps them exact.
        let p = Arc::new(p);
        self.policy.rcu(|old| Versioned {
            version: old.version + 1,
            policy: p.clone(),
        });
    }

    /// The decision for `who`, from the cache when this policy already made it.
    fn decide(&self, who: &Identity, action: policy::Action, repository: &str) -> policy::Decision {
        let v = self.policy.load_full();
        let p = &v.policy;
        let Some(cert) = who.certificate() else {
            return p.decide(who, action, repository);
        };
        let under = v.version;
        let key = (cert.serial.clone(), action, repository.to_string());
        {
            let mut c = self.decisions.lock().unwrap_or_else(|e| e.into_inner());
            if c.under != under {
                c.map.clear();
                c.under = under;
            } else if let Some(d) = c.map.get(&key) {
                return d.clone();
            }
        }
        let d = p.decide(who, action, repository);
        let mut c = self.decisions.lock().unwrap_or_else(|e| e.into_inner());
        if c.under == under {
            if c.map.len() >= MAX_CACHED_DECISIONS {
                c.map.clear();
            }
            c.map.insert(key, d.clone());
        }
        d
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<policy::Policy> {
        self.policy.load().policy.clone()
    }

    /// Refuses what the policy does not allow (distribution API operations; the control
    /// API's own operations are authorised by the control API).
    /// A denial is recorded in the audit log as the operation `op` was attempted.
    async fn authorize(
        &self,
        who: &Identity,
        action: policy::Action,
        name: &RepoName,
        op: audit::Action,
    ) -> Result<(), Error> {
        let d = self.decide(who, action, name.as_str());
        if d.allowed {
            return Ok(());
        }
        tracing::warn!(caller = %who, action = action.name(), repo = %name, rule = %d.rule, "denied by policy");
        self.metrics
            .policy_denials
            .get_or_create(&crate::metrics::ActionLabels {
                action: action.name(),
            })
            .inc();
        self.audit
            .note_async(
                &Record::new(who, op)
                    .repository(name.as_str())
                    .denied(d.rule.clone()),
            )
            .await;
        Err(Error::Denied {
            who: who.to_string(),
            action: action.name(),
            repository: name.to_string(),
            rule: d.rule,
        })
    }

    /// Where the content lives (a folder, or `memory:`), for status output.
    pub fn root(&self) -> &Path {
        self.storage.root()
    }

    /// A subscription to every event from now on (`berth events`).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn emit(
        &self,
        who: &Identity,
        action: Action,
        target: Target,
        name: &RepoName,
        digest: Option<&Digest>,
        tag: Option<String>,
    ) {
        self.events.emit(
            who,
            action,
            target,
            name.as_str(),
            digest.map(ToString::to_string),
            tag,
        );
    }

    // ---- blobs ----

    /// The size of a blob the repository may serve (HEAD).
    pub async fn stat_blob(
        &self,
        _who: &Identity,
        name: &RepoName,
        digest: &Digest,
    ) -> Result<u64, Error> {
        self.authorize(_who, policy::Action::Pull, name, audit::Action::Pull)
            .await?;
        // A push asks this before it skips an upload: the blob is relied on.
        self.storage
            .blob_size_relied(name, digest)
            .await?
            .ok_or_else(|| Error::BlobUnknown(digest.clone()))
    }

    /// A blob's content, whole or the `range` of it, streamed (GET). A pull from the
    /// start is an event; the further ranges of a resumed download are not.
    pub async fn get_blob(
        &self,
        who: &Identity,
        name: &RepoName,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<BlobReader, Error> {
        self.authorize(who, policy::Action::Pull, name, audit::Action::Pull)
            .await?;
        let blob = self
            .storage
            .open_blob(name, digest, move |size| match range {
                None => Ok((0, size)),
                Some(r) => r.resolve(size).ok_or(Error::RangeNotSatisfiable { size }),
            })
            .await?;
        if blob.start == 0 {
            self.emit(who, Action::Pull, Target::Blob, name, Some(digest), None);
        }
        Ok(blob)
    }

    /// Links a blob another repository holds into `name` without copying (cross-repository
    /// mount), or opens an upload session when that cannot be done.
    pub async fn mount_blob(
        &self,
        who: &Identity,
        name: &RepoName,
        from: &RepoName,
        digest: &Digest,
    ) -> Result<BlobCommit, Error> {
        self.authorize(who, policy::Action::Pull, from, audit::Action::BlobMount)
            .await?;
        self.authorize(who, policy::Action::Push, name, audit::Action::BlobMount)
            .await?;
        if !self.storage.mount(name, from, digest).await? {
            return Ok(BlobCommit::Upload(self.storage.start_upload(name).await?));
        }
        tracing::debug!(repo = %name, from = %from, digest = %digest, "mounted blob");
        self.emit(who, Action::Push, Target::Blob, name, Some(digest), None);
        let rec = Record::new(who, audit::Action::BlobMount)
            .repository(name.as_str())
            .from(from.as_str())
            .digest(digest);
        self.audited(rec, Ok(BlobCommit::Created(digest.clone())))
            .await
    }

    /// Opens an upload session.
    pub async fn start_upload(
        &self,
        _who: &Identity,
        name: &RepoName,
    ) -> Result<UploadStatus, Error> {
        self.authorize(_who, policy::Action::Push, name, audit::Action::BlobUpload)
            .await?;
        self.storage.start_upload(name).await
    }

    /// Stores a whole blob in one request (monolithic upload); nothing is left behind when
    /// it fails.
    pub async fn put_blob(
        &self,
        who: &Identity,
        name: &RepoName,
        digest: &Digest,
        body: &mut (impl tokio::io::AsyncRead + Unpin + ?Sized),
    ) -> Result<(), Error> {
        self.authorize(who, policy::Action::Push, name, audit::Action::BlobCommit)
            .await?;
        let rec = Record::new(who, audit::Action::BlobCommit)
            .repository(name.as_str())
            .digest(digest);
        let st = self.storage.start_upload(name).await?;
        let result = async {
            self.storage
                .append(name, &st.id, Some(0), body, None)
                .await?;
            self.storage.finish_upload(name, &st.id, digest).await
        }
        .await;
        if result.is_err() {
            let _ = self.storage.cancel_upload(name, &st.id).await;
        } else {
            self.emit(who, Action::Push, Target::Blob, name, Some(digest), None);
        }
        self.audited(rec, result.map(|_| ())).await
    }

    /// Where an upload stands.
    pub async fn upload_status(
        &self,
        _who: &Identity,
        name: &RepoName,
        id: &str,
    ) -> Result<UploadStatus, Error> {
        self.authorize(_who, policy::Action::Push, name, audit::Action::BlobUpload)
            .await?;
        self.storage.upload_status(name, id).await
    }

    /// Appends a chunk; with `start`, it must begin where the upload ends, and with
    /// `len` it must be exactly that long (or it is undone and refused).
    pub async fn append_upload(
        &self,
        _who: &Identity,
        name: &RepoName,
        id: &str,
        start: Option<u64>,
        len: Option<u64>,
        body: &mut (impl tokio::io::AsyncRead + Unpin + ?Sized),
    ) -> Result<UploadStatus, Error> {
        self.authorize(_who, policy::Action::Push, name, audit::Action::BlobUpload)
            .await?;
        let r = self.storage.append(name, id, start, body, len).await;
        self.watch_space(&r);
        if let Err(e) = &r
            && e.is_storage_full()
        {
            // What the session holds is of no use to a client that has to start over,
            // and the space is needed.
            let _ = self.storage.cancel_upload(name, id).await;
        }
        r
    }

    /// Finishes an upload (after appending a last chunk, when `body` is given): the content
    /// must hash to `digest`, and only then becomes visible.
    pub async fn finish_upload(
        &self,
        who: &Identity,
        name: &RepoName,
        id: &str,
        digest: &Digest,
        last_chunk: Option<(Option<u64>, &mut (dyn tokio::io::AsyncRead + Unpin + Send))>,
    ) -> Result<(), Error> {
        self.authorize(who, policy::Action::Push, name, audit::Action::BlobCommit)
            .await?;
        let rec = Record::new(who, audit::Action::BlobCommit)
            .repository(name.as_str())
            .digest(digest);
        let r = async {
            if let Some((start, body)) = last_chunk {
                self.storage.append(name, id, start, body, None).await?;
            }
            self.storage.finish_upload(name, id, digest).await
        }
        .await;
        if r.is_ok() {
            self.emit(who, Action::Push, Target::Blob, name, Some(digest), None);
        }
        self.audited(rec, r.map(|_| ())).await
    }

    /// Abandons an upload.
    pub async fn cancel_upload(
        &self,
        _who: &Identity,
        name: &RepoName,
        id: &str,
    ) -> Result<(), Error> {
        self.authorize(_who, policy::Action::Push, name, audit::Action::BlobUpload)
            .await?;
        self.storage.cancel_upload(name, id).await
    }

    /// Unlinks a blob from a repository (HTTP DELETE; needs `delete_enabled`).
    pub async fn delete_blob(
        &self,
        who: &Identity,
        name: &RepoName,
        digest: &Digest,
    ) -> Result<(), Error> {
        self.authorize(who, policy::Action::Delete, name, audit::Action::BlobDelete)
            .await?;
        if !self.delete_enabled {
            return Err(Error::DeleteDisabled);
        }
        let rec = Record::new(who, audit::Action::BlobDelete)
            .repository(name.as_str())
            .digest(digest);
        let r = self.storage.unlink_blob(name, digest).await;
        if r.is_ok() {
            self.emit(who, Action::Delete, Target::Blob, name, Some(digest), None);
        }
        self.audited(rec, r).await
    }

    // ---- manifests ----

    /// Stores a manifest after checking it: parseable, of a known type, under the size
    /// limit, every referenced blob and child manifest present in the repository, and (for
    /// a PUT by digest) hashing to that digest. `also` are more tags to point at it
    /// (distribution-spec: `PUT /v2/<name>/manifests/<digest>?tag=a&tag=b`), written with
    /// the manifest: all of them or, when it fails, none.
    pub async fn put_manifest(
        &self,
        who: &Identity,
        name: &RepoName,
        reference: &Reference,
        body: Vec<u8>,
        content_type: Option<&str>,
        also: &[Tag],
    ) -> Result<PutManifest, Error> {
        self.authorize(who, policy::Action::Push, name, audit::Action::ManifestPut)
            .await?;
        let mut tags: Vec<Tag> = match reference {
            Reference::Tag(t) => vec![t.clone()],
            Reference::Digest(_) => Vec::new(),
        };
        let mut tagged: Vec<Tag> = Vec::new();
        for t in also {
            if !tagged.contains(t) {
                tagged.push(t.clone());
            }
            if !tags.contains(t) {
                tags.push(t.clone());
            }
        }
        let named = (!tags.is_empty()).then(|| {
            tags.iter()
                .map(Tag::to_string)
                .collect::<Vec<_>>()
                .join(",")
        });
        let rec = Record::new(who, audit::Action::ManifestPut)
            .repository(name.as_str())
            .tag(named);
        let r = self
            .put_manifest_inner(who, name, reference, body, content_type, &tags)
            .await
            .map(|p| PutManifest { tagged, ..p });
        self.audited_digest(rec, r, |p| &p.digest).await
    }

    async fn put_manifest_inner(
        &self,
        who: &Identity,
        name: &RepoName,
        reference: &Reference,
        body: Vec<u8>,
        content_type: Option<&str>,
        tags: &[Tag],
    ) -> Result<PutManifest, Error> {
        if body.len() > MAX_MANIFEST_BYTES {
            return Err(Error::ManifestTooLarge {
                limit: MAX_MANIFEST_BYTES,
            });
        }
        let m = Manifest::parse(&body, content_type)?;
        let digest = match reference {
            Reference::Digest(d) => {
                let actual = Digest::of(d.algorithm(), &body);
                if actual != *d {
                    return Err(Error::DigestMismatch {
                        expected: d.clone(),
                        actual,
                    });
                }
                actual
            }
            Reference::Tag(_) => Digest::sha256_of(&body),
        };
        {
            // Shared with other writes, exclusive with GC: the blobs checked here cannot
            // be swept before the manifest that references them is stored.
            let _guard = self.storage.manifest_write_guard().await;
            // Checked a few at a time: on a shared store each may wait out a fence. Owned
            // values only: the futures must not borrow across the stream.
            use futures_util::StreamExt;
            let check = |d: Digest, child: bool| {
                let (storage, name) = (self.storage.clone(), name.clone());
                async move {
                    let there = if child {
                        storage.has_manifest_relied(&name, &d).await
                    } else {
                        storage
                            .blob_size_relied(&name, &d)
                            .await
                            .map(|s| s.is_some())
                    };
                    (d, there)
                }
            };
            let wanted: Vec<(Digest, bool)> = m
                .required_blobs()
                .map(|b| (b.digest.clone(), false))
                .chain(m.manifests.iter().map(|c| (c.digest.clone(), true)))
                .collect();
            let mut found = futures_util::stream::iter(wanted)
                .map(|(d, child)| check(d, child))
                .buffered(CHECKS_AT_ONCE);
            while let Some((d, there)) = found.next().await {
                if !there? {
                    return Err(Error::ManifestBlobUnknown(d));
                }
            }
            self.storage
                .put_manifest(
                    name,
                    &digest,
                    body,
                    &m.media_type,
                    tags,
                    m.subject.as_ref().map(|s| &s.digest),
                )
                .await?;
        }
        // One push event per tag (as a push of each would give), one untagged otherwise.
        let named: Vec<Option<String>> = match tags {
            [] => vec![None],
            _ => tags.iter().map(|t| Some(t.to_string())).collect(),
        };
        for tag in named {
            self.emit(
                who,
                Action::Push,
                Target::Manifest,
                name,
                Some(&digest),
                tag,
            );
        }
        Ok(PutManifest {
            digest,
            subject: m.subject.map(|s| s.digest),
            tagged: Vec::new(),
        })
    }

    /// A manifest by tag or digest (GET: a pull event).
    pub async fn get_manifest(
        &self,
        who: &Identity,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<StoredManifest, Error> {
        self.authorize(who, policy::Action::Pull, name, audit::Action::Pull)
            .await?;
        let m = self.storage.manifest(name, reference).await?;
        self.emit(
            who,
            Action::Pull,
            Target::Manifest,
            name,
            Some(&m.digest),
            tag_of(reference),
        );
        Ok(m)
    }

    /// A manifest by tag or digest, without counting as a pull (HEAD).
    pub async fn head_manifest(
        &self,
        _who: &Identity,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<StoredManifest, Error> {
        self.authorize(_who, policy::Action::Pull, name, audit::Action::Pull)
            .await?;
        self.storage.manifest(name, reference).await
    }

    /// Deletes a manifest (by digest, with every tag pointing at it) or untags (by tag):
    /// HTTP DELETE, which needs `delete_enabled`.
    pub async fn delete_manifest(
        &self,
        who: &Identity,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<(), Error> {
        let op = match reference {
            Reference::Digest(_) => audit::Action::ManifestDelete,
            Reference::Tag(_) => audit::Action::TagDelete,
        };
        self.authorize(who, policy::Action::Delete, name, op)
            .await?;
        if !self.delete_enabled {
            return Err(Error::DeleteDisabled);
        }
        let mut rec = Record::new(who, op)
            .repository(name.as_str())
            .tag(tag_of(reference));
        let r = match reference {
            Reference::Digest(d) => {
                rec = rec.digest(d);
                self.storage
                    .delete_manifest(name, d)
                    .await
                    .map(|()| (Target::Manifest, Some(d)))
            }
            Reference::Tag(t) => self
                .storage
                .delete_tag(name, t)
                .await
                .map(|()| (Target::Tag, None)),
        };
        if let Ok((target, digest)) = &r {
            self.emit(
                who,
                Action::Delete,
                *target,
                name,
                *digest,
                tag_of(reference),
            );
        }
        self.audited(rec, r.map(|_| ())).await
    }

    /// Deletes an image for an operator (the control API's `berth image rm`): allowed
    /// whatever `delete_enabled` says, and answers what the reference resolved to.
    pub async fn delete_image(
        &self,
        who: &Identity,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<Deleted, Error> {
        let rec = Record::new(who, audit::Action::ImageDelete)
            .repository(name.as_str())
            .tag(tag_of(reference));
        let r = self.delete_image_inner(who, name, reference).await;
        self.audited_digest(rec, r, |d| &d.digest).await
    }

    async fn delete_image_inner(
        &self,
        who: &Identity,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<Deleted, Error> {
        let digest = self.storage.manifest(name, reference).await?.digest;
        let (untagged, target) = match reference {
            Reference::Tag(t) => {
                self.storage.delete_tag(name, t).await?;
                (true, Target::Tag)
            }
            Reference::Digest(d) => {
                self.storage.delete_manifest(name, d).await?;
                (false, Target::Manifest)
            }
        };
        self.emit(
            who,
            Action::Delete,
            target,
            name,
            Some(&digest),
            tag_of(reference),
        );
        tracing::info!(repo = %name, digest = %digest, untagged, by = %who, "image deleted");
        Ok(Deleted { digest, untagged })
    }

    // ---- listings ----

    /// Every tag of a repository, sorted.
    pub async fn tags(&self, who: &Identity, name: &RepoName) -> Result<Vec<String>, Error> {
        let may_list = self
            .decide(who, policy::Action::List, name.as_str())
            .allowed;
        if !may_list {
            self.authorize(who, policy::Action::Pull, name, audit::Action::List)
                .await?;
        }
        self.storage.tags(name).await
    }

    /// Every repository holding manifests that the caller may list or pull, sorted.
    pub async fn catalog(&self, who: &Identity) -> Result<Vec<String>, Error> {
        let mut all = self.storage.repositories().await?;
        all.retain(|r| {
            self.decide(who, policy::Action::List, r).allowed
                || self.decide(who, policy::Action::Pull, r).allowed
        });
        Ok(all)
    }

    /// The referrers index of `subject`: every manifest in the repository whose `subject`
    /// is that digest, optionally only those of one artifact type. The second value says
    /// whether the filter was applied.
    pub async fn referrers(
        &self,
        _who: &Identity,
        name: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<(Value, bool), Error> {
        self.authorize(_who, policy::Action::Pull, name, audit::Action::Pull)
            .await?;
        let mut entries = Vec::new();
        for (digest, bytes) in self.storage.referrers(name, subject).await? {
            let Ok(m) = Manifest::parse(&bytes, None) else {
                continue;
            };
            let Some(s) = &m.subject else { continue };
            if s.digest != *subject {
                continue;
            }
            if artifact_type.is_some_and(|a| m.artifact_type.as_deref() != Some(a)) {
                continue;
            }
            let mut e = json!({
                "mediaType": m.media_type,
                "digest": digest.to_string(),
                "size": bytes.len(),
            });
            if let Some(a) = &m.artifact_type {
                e["artifactType"] = json!(a);
            }
            if let Some(a) = &m.annotations {
                e["annotations"] = Value::Object(a.clone());
            }
            entries.push(e);
        }
        let index = json!({
            "schemaVersion": 2,
            "mediaType": manifest::OCI_INDEX,
            "manifests": entries,
        });
        Ok((index, artifact_type.is_some()))
    }

    // ---- operations (control API) ----

    /// Repositories with tag and manifest counts and sizes.
    pub async fn repositories(&self, _who: &Identity) -> Result<Vec<RepoSummary>, Error> {
        self.storage.repo_summaries().await
    }

    /// Blob count and bytes.
    pub async fn stats(&self, _who: &Identity) -> Result<StorageStats, Error> {
        self.storage.stats().await
    }

    /// Online garbage collection (see `storage/gc.rs` for why it is safe while serving).
    pub async fn gc(&self, who: &Identity, opts: GcOptions) -> Result<GcReport, Error> {
        tracing::info!(by = %who, dry_run = opts.dry_run, delete_untagged = opts.delete_untagged, "garbage collection");
        let dry_run = opts.dry_run;
        let r = self.storage.gc(opts).await;
        if dry_run {
            return r;
        }
        if let Ok(g) = &r {
            self.metrics.gc_runs.inc();
            self.metrics.gc_bytes_freed.inc_by(g.bytes_freed);
        }
        let rec = Record::new(who, audit::Action::Gc);
        let rec = match &r {
            Ok(g) => rec.name(format!(
                "{} blobs, {} bytes freed",
                g.blobs_deleted.len(),
                g.bytes_freed
            )),
            Err(_) => rec,
        };
        self.audited(rec, r).await
    }

    /// Re-hashes every blob and resolves every link; with `repair`, quarantines.
    pub async fn fsck(&self, who: &Identity, repair: bool) -> Result<FsckReport, Error> {
        tracing::info!(by = %who, repair, "fsck");
        let r = self.storage.fsck(repair).await;
        if !repair {
            return r;
        }
        self.audited(Record::new(who, audit::Action::FsckRepair), r)
            .await
    }

    /// Upload sessions in progress, oldest first.
    pub async fn uploads(&self, _who: &Identity) -> Result<Vec<UploadInfo>, Error> {
        self.storage.list_uploads().await
    }

    /// Removes upload sessions older than `older_than` (all, with `None`); one receiving a
    /// chunk right now is left alone.
    pub async fn purge_uploads(
        &self,
        who: &Identity,
        older_than: Option<std::time::Duration>,
        dry_run: bool,
    ) -> Result<Vec<UploadInfo>, Error> {
        let purged = self.storage.purge_uploads(older_than, dry_run).await?;
        if !dry_run && !purged.is_empty() {
            tracing::info!(by = %who, purged = purged.len(), "upload sessions purged");
        }
        Ok(purged)
    }
}

#[cfg(test)]
mod tests;
