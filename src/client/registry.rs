//! The registry half of the client: the operator's view of the embedded registry, as
//! domain types.

use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;
use tokio_stream::StreamExt;

use super::{Client, Error};
use crate::events::{Action, Event, Target};
use crate::proto as pb;
use crate::proto::convert::time_in;
use crate::proto::registry_service_client::RegistryServiceClient;
use crate::registry::FsckProblem;
use crate::registry::inspect::{ImageInfo, LayerInfo, PlatformEntry};
use crate::registry::reference::Digest;
use crate::registry::{FsckReport, GcReport, RepoSummary, UploadInfo};

/// What `berth registry status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct RegistryStatus {
    /// Served at all.
    pub enabled: bool,
    /// Listen addresses.
    pub listeners: Vec<String>,
    /// Storage root.
    pub storage_root: String,
    /// The server certificate's serial.
    pub certificate_serial: String,
    /// Its SANs.
    pub certificate_sans: Vec<String>,
    /// Its expiry.
    #[serde(with = "time::serde::rfc3339::option")]
    pub certificate_not_after: Option<OffsetDateTime>,
    /// Blobs stored.
    pub blobs: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Repositories.
    pub repositories: u64,
    /// Upload sessions.
    pub uploads: u64,
}

fn digest(s: &str) -> Result<Digest, Error> {
    s.parse()
        .map_err(|e| Error::Protocol(format!("bad digest from berthd: {e}")))
}

fn opt_digest(s: &str) -> Result<Option<Digest>, Error> {
    if s.is_empty() {
        Ok(None)
    } else {
        digest(s).map(Some)
    }
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl Client {
    fn registry(&self) -> RegistryServiceClient<tonic::transport::Channel> {
        RegistryServiceClient::new(self.channel.clone())
    }

    /// Listeners, TLS identity and storage figures.
    pub async fn registry_status(&self) -> Result<RegistryStatus, Error> {
        let r = self
            .registry()
            .status(pb::RegistryStatusRequest {})
            .await?
            .into_inner();
        Ok(RegistryStatus {
            enabled: r.enabled,
            listeners: r.listeners,
            storage_root: r.storage_root,
            certificate_serial: r.certificate_serial,
            certificate_sans: r.certificate_sans,
            certificate_not_after: r.certificate_not_after.map(time_in),
            blobs: r.blobs,
            bytes: r.bytes,
            repositories: r.repositories,
            uploads: r.uploads,
        })
    }

    /// Repositories with counts and sizes.
    pub async fn registry_repos(&self) -> Result<Vec<RepoSummary>, Error> {
        let r = self
            .registry()
            .list_repositories(pb::ListRepositoriesRequest {})
            .await?
            .into_inner();
        Ok(r.repositories
            .into_iter()
            .map(|r| RepoSummary {
                name: r.name,
                tags: r.tags as usize,
                manifests: r.manifests as usize,
                bytes: r.bytes,
            })
            .collect())
    }

    /// Tags of a repository.
    pub async fn registry_tags(&self, repository: &str) -> Result<Vec<String>, Error> {
        let r = self
            .registry()
            .list_tags(pb::ListTagsRequest {
                repository: repository.to_string(),
            })
            .await?
            .into_inner();
        Ok(r.tags)
    }

    /// The computed image model of `repo:tag` or `repo@digest`.
    pub async fn image_inspect(&self, reference: &str) -> Result<ImageInfo, Error> {
        let i = self
            .registry()
            .inspect_image(pb::InspectImageRequest {
                reference: reference.to_string(),
            })
            .await?
            .into_inner();
        let layers = i
            .layers
            .into_iter()
            .map(|l| {
                Ok(LayerInfo {
                    digest: digest(&l.digest)?,
                    size: l.size,
                    media_type: l.media_type,
                    compression: l.compression,
                    diff_id: opt_digest(&l.diff_id)?,
                    config_diff_id: opt(l.config_diff_id),
                    diff_id_matches: l.diff_id_matches,
                    chain_id: opt_digest(&l.chain_id)?,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let platforms = i
            .platforms
            .into_iter()
            .map(|p| {
                Ok(PlatformEntry {
                    digest: digest(&p.digest)?,
                    media_type: p.media_type,
                    size: p.size,
                    os: opt(p.os),
                    architecture: opt(p.architecture),
                    variant: opt(p.variant),
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(ImageInfo {
            repository: i.repository,
            digest: digest(&i.digest)?,
            media_type: i.media_type,
            kind: i.kind,
            manifest_size: i.manifest_size,
            config_digest: opt_digest(&i.config_digest)?,
            os: opt(i.os),
            architecture: opt(i.architecture),
            layers,
            platforms,
            total_size: i.total_size,
        })
    }

    /// Untags (`repo:tag`) or deletes (`repo@digest`); returns the digest and whether only
    /// a tag went.
    pub async fn image_rm(&self, reference: &str) -> Result<(String, bool), Error> {
        let r = self
            .registry()
            .delete_image(pb::DeleteImageRequest {
                reference: reference.to_string(),
            })
            .await?
            .into_inner();
        Ok((r.digest, r.untagged))
    }

    /// Runs (or, dry, simulates) garbage collection.
    pub async fn registry_gc(
        &self,
        dry_run: bool,
        delete_untagged: bool,
        grace: Option<Duration>,
    ) -> Result<GcReport, Error> {
        let r = self
            .registry()
            .garbage_collect(pb::GarbageCollectRequest {
                dry_run,
                delete_untagged,
                grace_seconds: grace.map(|g| g.as_secs()),
            })
            .await?
            .into_inner();
        Ok(GcReport {
            dry_run: r.dry_run,
            blobs_deleted: r
                .blobs_deleted
                .into_iter()
                .map(|b| (b.digest, b.size))
                .collect(),
            bytes_freed: r.bytes_freed,
            manifests_deleted: r
                .manifests_deleted
                .into_iter()
                .map(|m| (m.repository, m.digest))
                .collect(),
            blobs_in_use: r.blobs_in_use as usize,
            blobs_young: r.blobs_young as usize,
        })
    }

    /// Lists upload sessions, or purges them.
    pub async fn registry_uploads(
        &self,
        purge: bool,
        older_than: Option<Duration>,
        dry_run: bool,
    ) -> Result<Vec<UploadInfo>, Error> {
        let r = self
            .registry()
            .list_uploads(pb::ListUploadsRequest {
                purge,
                older_than_seconds: older_than.map(|d| d.as_secs()),
                dry_run,
            })
            .await?
            .into_inner();
        Ok(r.uploads
            .into_iter()
            .map(|u| UploadInfo {
                repository: u.repository,
                id: u.id,
                size: u.size,
                started_at: u.started_at.map(time_in),
            })
            .collect())
    }

    /// Re-hashes every blob and resolves every link.
    pub async fn registry_fsck(&self, repair: bool) -> Result<FsckReport, Error> {
        let r = self
            .registry()
            .fsck(pb::FsckRequest { repair })
            .await?
            .into_inner();
        Ok(FsckReport {
            blobs_checked: r.blobs_checked,
            bytes_checked: r.bytes_checked,
            problems: r
                .problems
                .into_iter()
                .map(|p| FsckProblem {
                    kind: p.kind,
                    path: p.path.into(),
                    digest: p.digest,
                    detail: p.detail,
                })
                .collect(),
        })
    }

    /// Streams registry events to `f` until the stream ends or `f` returns false.
    pub async fn registry_events(
        &self,
        repository: Option<&str>,
        mut f: impl FnMut(Event) -> bool,
    ) -> Result<(), Error> {
        let mut s = self
            .registry()
            .watch_events(pb::WatchEventsRequest {
                repository: repository.unwrap_or_default().to_string(),
            })
            .await?
            .into_inner();
        while let Some(e) = s.next().await {
            let e = e?;
            let action = match pb::EventAction::try_from(e.action) {
                Ok(pb::EventAction::Push) => Action::Push,
                Ok(pb::EventAction::Pull) => Action::Pull,
                Ok(pb::EventAction::Delete) => Action::Delete,
                Ok(pb::EventAction::Unspecified) | Err(_) => {
                    return Err(Error::Protocol(format!(
                        "unknown event action {}",
                        e.action
                    )));
                }
            };
            let target = match pb::EventTarget::try_from(e.target) {
                Ok(pb::EventTarget::Manifest) => Target::Manifest,
                Ok(pb::EventTarget::Blob) => Target::Blob,
                Ok(pb::EventTarget::Tag) => Target::Tag,
                Ok(pb::EventTarget::Unspecified) | Err(_) => {
                    return Err(Error::Protocol(format!(
                        "unknown event target {}",
                        e.target
                    )));
                }
            };
            let ev = Event {
                time: e.time.map(time_in).unwrap_or(OffsetDateTime::UNIX_EPOCH),
                action,
                target,
                repository: e.repository,
                digest: opt(e.digest),
                tag: opt(e.tag),
                actor: e.actor,
            };
            if !f(ev) {
                break;
            }
        }
        Ok(())
    }
}
