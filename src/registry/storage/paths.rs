//! Where everything lives on disk: exactly the layout of registry:2's filesystem driver, so
//! a data folder moves between berth and `docker-registry` in both directions. Pure path
//! arithmetic: no I/O here.
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

use std::path::{Path, PathBuf};

use crate::registry::reference::{Digest, RepoName, Tag};

/// The layout under one storage root.
#[derive(Debug, Clone)]
pub struct Paths {
    v2: PathBuf,
}

impl Paths {
    /// The layout under `root` (the folder registry:2 calls `rootdirectory`).
    pub fn new(root: &Path) -> Paths {
        Paths {
            v2: root.join("docker/registry/v2"),
        }
    }

    /// `.../v2`.
    pub fn v2(&self) -> &Path {
        &self.v2
    }

    /// Folder of every repository.
    pub fn repositories(&self) -> PathBuf {
        self.v2.join("repositories")
    }

    /// Folder of one repository.
    pub fn repo(&self, name: &RepoName) -> PathBuf {
        self.repositories().join(name.as_str())
    }

    /// Folder of a blob (holds `data`).
    pub fn blob_dir(&self, d: &Digest) -> PathBuf {
        self.v2
            .join("blobs")
            .join(d.algorithm().name())
            .join(&d.hex()[..2])
            .join(d.hex())
    }

    /// A blob's content.
    pub fn blob_data(&self, d: &Digest) -> PathBuf {
        self.blob_dir(d).join("data")
    }

    /// The link that lets a repository serve a blob.
    pub fn layer_link(&self, name: &RepoName, d: &Digest) -> PathBuf {
        self.repo(name)
            .join("_layers")
            .join(d.algorithm().name())
            .join(d.hex())
            .join("link")
    }

    /// Folder of a repository's manifest revisions.
    pub fn revisions(&self, name: &RepoName) -> PathBuf {
        self.repo(name).join("_manifests/revisions")
    }

    /// The link that makes a manifest part of a repository.
    pub fn revision_link(&self, name: &RepoName, d: &Digest) -> PathBuf {
        self.revisions(name)
            .join(d.algorithm().name())
            .join(d.hex())
            .join("link")
    }

    /// Folder of a repository's tags.
    pub fn tags(&self, name: &RepoName) -> PathBuf {
        self.repo(name).join("_manifests/tags")
    }

    /// Folder of one tag.
    pub fn tag_dir(&self, name: &RepoName, tag: &Tag) -> PathBuf {
        self.tags(name).join(tag.as_str())
    }

    /// What a tag points at.
    pub fn tag_current(&self, name: &RepoName, tag: &Tag) -> PathBuf {
        self.tag_dir(name, tag).join("current/link")
    }

    /// History entry of a tag.
    pub fn tag_index(&self, name: &RepoName, tag: &Tag, d: &Digest) -> PathBuf {
        self.tag_dir(name, tag)
            .join("index")
            .join(d.algorithm().name())
            .join(d.hex())
            .join("link")
    }

    /// Folder of a repository's uploads.
    pub fn uploads(&self, name: &RepoName) -> PathBuf {
        self.repo(name).join("_uploads")
    }

    /// Folder of one upload.
    pub fn upload_dir(&self, name: &RepoName, id: &str) -> PathBuf {
        self.uploads(name).join(id)
    }

    /// Recorded media type of a manifest.
    pub fn media_type(&self, d: &Digest) -> PathBuf {
        self.v2
            .join("_berth/mediatypes")
            .join(d.algorithm().name())
            .join(d.hex())
    }
}

#[cfg(test)]
mod tests;
