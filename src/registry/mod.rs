//! The embedded registry's core: the operations the HTTP API (and later the control API)
//! call, on top of storage in registry:2's layout. Nothing here knows about HTTP; errors
//! are domain errors that `registry::http` maps to OCI error codes in one table.
//!
//! The registry shares one error enum between this module and `storage`, because every
//! failure of either ends in the same OCI error table and must be mapped exhaustively.

pub mod events;
pub mod http;
pub mod inspect;
pub mod manifest;
pub mod reference;
pub mod storage;

use std::path::PathBuf;

use serde_json::{Value, json};

pub use manifest::Manifest;
pub use reference::{Digest, Reference, RepoName, Tag};
pub use storage::{BlobReader, Storage, UploadStatus};

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
    /// A chunk does not start where the upload ends.
    #[error("chunk starts at {start}, but the upload holds {size} bytes")]
    RangeInvalid {
        /// Where the chunk claimed to start.
        start: u64,
        /// Bytes received so far.
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
}

/// The registry: storage plus the rules of the distribution spec.
#[derive(Debug, Clone)]
pub struct Registry {
    storage: Storage,
    delete_enabled: bool,
    events: events::Events,
}

impl Registry {
    /// A registry over a storage root.
    pub fn new(storage: Storage, delete_enabled: bool) -> Registry {
        Registry {
            storage,
            delete_enabled,
            events: events::Events::default(),
        }
    }

    /// The event channel.
    pub fn events(&self) -> &events::Events {
        &self.events
    }

    /// The storage underneath.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Stores a manifest after checking it: parseable, of a known type, under the size
    /// limit, every referenced blob and child manifest present in the repository, and (for
    /// a PUT by digest) hashing to that digest.
    pub async fn put_manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
        body: Vec<u8>,
        content_type: Option<&str>,
    ) -> Result<PutManifest, Error> {
        if body.len() > MAX_MANIFEST_BYTES {
            return Err(Error::ManifestTooLarge {
                limit: MAX_MANIFEST_BYTES,
            });
        }
        let m = Manifest::parse(&body, content_type)?;
        let _guard = self.storage.manifest_write_guard().await;
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
        for b in m.required_blobs() {
            if self.storage.blob_size(name, &b.digest).await?.is_none() {
                return Err(Error::ManifestBlobUnknown(b.digest.clone()));
            }
        }
        for c in &m.manifests {
            if !self.storage.has_manifest(name, &c.digest).await? {
                return Err(Error::ManifestBlobUnknown(c.digest.clone()));
            }
        }
        let tag = match reference {
            Reference::Tag(t) => Some(t.clone()),
            Reference::Digest(_) => None,
        };
        self.storage
            .put_manifest(name, &digest, body, &m.media_type, tag.as_ref())
            .await?;
        Ok(PutManifest {
            digest,
            subject: m.subject.map(|s| s.digest),
        })
    }

    /// A manifest by tag or digest.
    pub async fn manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<StoredManifest, Error> {
        self.storage.manifest(name, reference).await
    }

    /// Deletes a manifest (by digest, with every tag pointing at it) or untags (by tag).
    pub async fn delete_manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<(), Error> {
        if !self.delete_enabled {
            return Err(Error::DeleteDisabled);
        }
        match reference {
            Reference::Digest(d) => self.storage.delete_manifest(name, d).await,
            Reference::Tag(t) => self.storage.delete_tag(name, t).await,
        }
    }

    /// Unlinks a blob from a repository.
    pub async fn delete_blob(&self, name: &RepoName, digest: &Digest) -> Result<(), Error> {
        if !self.delete_enabled {
            return Err(Error::DeleteDisabled);
        }
        self.storage.unlink_blob(name, digest).await
    }

    /// The referrers index of `subject`: every manifest in the repository whose `subject`
    /// is that digest, optionally only those of one artifact type. The second value says
    /// whether the filter was applied.
    pub async fn referrers(
        &self,
        name: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<(Value, bool), Error> {
        let mut entries = Vec::new();
        for (digest, bytes) in self.storage.manifests_of(name).await? {
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
}

#[cfg(test)]
mod tests;
