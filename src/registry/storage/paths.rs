//! Where everything lives: the keys: exactly the layout of registry:2's filesystem driver, so
//! a data folder moves between berth and `docker-registry` in both directions. Pure key
//! arithmetic: no I/O here; a [`Driver`](super::driver::Driver) maps keys to files or
//! objects (on S3, the same keys under a prefix).
//!
//! ```text
//! <root>/docker/registry/v2/
//! ├── blobs/<alg>/<first 2 hex>/<hex>/data            content, by digest (layers, configs, manifests)
//! ├── repositories/<name>/
//! │   ├── _layers/<alg>/<hex>/link                    "sha256:<hex>": this repo may serve that blob
//! │   ├── _manifests/revisions/<alg>/<hex>/link       a manifest of this repo
//! │   ├── _manifests/tags/<tag>/current/link          what the tag points at now
//! │   ├── _manifests/tags/<tag>/index/<alg>/<hex>/link every manifest the tag ever pointed at
//! │   └── _uploads/<uuid>/{data,startedat}            uploads in progress
//! └── _berth/mediatypes/<alg>/<hex>                   media type a manifest was pushed with
//! ```
//!
//! Link files hold the digest with no newline. `_berth/` is berth's own: registry:2 never
//! looks there, and berth falls back to the manifest body when it is missing.

use super::driver::Key;
use crate::registry::reference::{Digest, RepoName, Tag};

/// The layout's keys (all below `docker/registry/v2`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Paths;

const V2: &str = "docker/registry/v2";

fn digest_key(base: Key, d: &Digest) -> Key {
    base.join(d.algorithm().name()).join(d.hex())
}

impl Paths {
    /// `docker/registry/v2`.
    pub(crate) fn v2(&self) -> Key {
        Key::new(V2)
    }

    /// Folder of every blob.
    pub(crate) fn blobs(&self) -> Key {
        self.v2().join("blobs")
    }

    /// Folder of every repository.
    pub(crate) fn repositories(&self) -> Key {
        self.v2().join("repositories")
    }

    /// Folder of one repository.
    pub(crate) fn repo(&self, name: &RepoName) -> Key {
        self.repositories().join(name.as_str())
    }

    /// Folder of a blob (holds `data`).
    pub(crate) fn blob_dir(&self, d: &Digest) -> Key {
        self.blobs()
            .join(d.algorithm().name())
            .join(&d.hex()[..2])
            .join(d.hex())
    }

    /// A blob's content.
    pub(crate) fn blob_data(&self, d: &Digest) -> Key {
        self.blob_dir(d).join("data")
    }

    /// Folder of a repository's layer links.
    pub(crate) fn layers(&self, name: &RepoName) -> Key {
        self.repo(name).join("_layers")
    }

    /// The link that lets a repository serve a blob.
    pub(crate) fn layer_link(&self, name: &RepoName, d: &Digest) -> Key {
        digest_key(self.layers(name), d).join("link")
    }

    /// Folder of a repository's manifests.
    pub(crate) fn manifests(&self, name: &RepoName) -> Key {
        self.repo(name).join("_manifests")
    }

    /// Folder of a repository's manifest revisions.
    pub(crate) fn revisions(&self, name: &RepoName) -> Key {
        self.manifests(name).join("revisions")
    }

    /// The link that makes a manifest part of a repository.
    pub(crate) fn revision_link(&self, name: &RepoName, d: &Digest) -> Key {
        digest_key(self.revisions(name), d).join("link")
    }

    /// Folder of the referrers index entries of one subject (see `referrers.rs`).
    pub(crate) fn referrers(&self, name: &RepoName, subject: &Digest) -> Key {
        digest_key(self.repo(name).join("_referrers"), subject)
    }

    /// The index entry saying manifest `d` of `name` has `subject`.
    pub(crate) fn referrer_link(&self, name: &RepoName, subject: &Digest, d: &Digest) -> Key {
        digest_key(self.referrers(name, subject), d).join("link")
    }

    /// Folder of a repository's tags.
    pub(crate) fn tags(&self, name: &RepoName) -> Key {
        self.manifests(name).join("tags")
    }

    /// Folder of one tag.
    pub(crate) fn tag_dir(&self, name: &RepoName, tag: &Tag) -> Key {
        self.tags(name).join(tag.as_str())
    }

    /// What a tag points at.
    pub(crate) fn tag_current(&self, name: &RepoName, tag: &Tag) -> Key {
        self.tag_dir(name, tag).join("current/link")
    }

    /// History entry of a tag.
    pub(crate) fn tag_index(&self, name: &RepoName, tag: &Tag, d: &Digest) -> Key {
        digest_key(self.tag_dir(name, tag).join("index"), d).join("link")
    }

    /// Folder of a repository's uploads.
    pub(crate) fn uploads(&self, name: &RepoName) -> Key {
        self.repo(name).join("_uploads")
    }

    /// Folder of one upload.
    pub(crate) fn upload_dir(&self, name: &RepoName, id: &str) -> Key {
        self.uploads(name).join(id)
    }

    /// Data of one upload.
    pub(crate) fn upload_data(&self, name: &RepoName, id: &str) -> Key {
        self.upload_dir(name, id).join("data")
    }

    /// Recorded media type of a manifest.
    pub(crate) fn media_type(&self, d: &Digest) -> Key {
        digest_key(self.v2().join("_berth/mediatypes"), d)
    }

    /// The mark a writer leaves on a blob it relies on, when other berthd share the store;
    /// its age tells every GC how recently some client was told the blob exists.
    pub(crate) fn relied(&self, d: &Digest) -> Key {
        digest_key(self.v2().join("_berth/relied"), d)
    }

    /// Where the marks of [`Paths::relied`] live.
    pub(crate) fn relied_root(&self) -> Key {
        self.v2().join("_berth/relied")
    }

    /// Where fsck moves a corrupt blob.
    pub(crate) fn quarantine(&self, d: &Digest) -> Key {
        digest_key(self.v2().join("_berth/quarantine"), d).join("data")
    }
}

#[cfg(test)]
mod tests;
