//! The registry half of the client: the operator's view of the embedded registry, as
//! domain types.

use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;
use tokio_stream::StreamExt;

use super::{Client, Error};
use crate::events::Event;
use crate::proto as pb;
use crate::proto::convert::{self, time_in};
use crate::proto::registry_service_client::RegistryServiceClient;
use crate::registry::inspect::ImageInfo;
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
        Ok(r.repositories.into_iter().map(convert::repo_in).collect())
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
        Ok(convert::image_in(i)?)
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
        Ok(convert::gc_in(r))
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
        Ok(r.uploads.into_iter().map(convert::upload_in).collect())
    }

    /// Re-hashes every blob and resolves every link.
    pub async fn registry_fsck(&self, repair: bool) -> Result<FsckReport, Error> {
        let r = self
            .registry()
            .fsck(pb::FsckRequest { repair })
            .await?
            .into_inner();
        Ok(convert::fsck_in(r))
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
            let ev = convert::event_in(e?)?;
            if !f(ev) {
                break;
            }
        }
        Ok(())
    }

    /// Reads registry.policy again on berthd; returns what is in force.
    pub async fn reload_policy(&self) -> Result<String, Error> {
        let r = self
            .registry()
            .reload_policy(pb::ReloadPolicyRequest {})
            .await?
            .into_inner();
        Ok(r.source)
    }

    /// What berthd's loaded policy decides for a subject (`CN=ci-bot,O=builders`), its
    /// SANs and serial, an action and a repository; with the policy's source.
    pub async fn check_policy(
        &self,
        subject: &str,
        sans: &[String],
        serial: &str,
        action: crate::registry::policy::Action,
        repository: &str,
    ) -> Result<(crate::registry::policy::Decision, String), Error> {
        let r = self
            .registry()
            .check_policy(pb::CheckPolicyRequest {
                subject: subject.to_string(),
                sans: sans.to_vec(),
                serial: serial.to_string(),
                action: action.name().to_string(),
                repository: repository.to_string(),
            })
            .await?
            .into_inner();
        Ok((
            crate::registry::policy::Decision {
                allowed: r.allowed,
                rule: r.rule,
            },
            r.source,
        ))
    }

    /// The audit records `filter` selects, oldest first.
    pub async fn audit(
        &self,
        filter: &crate::audit::Filter,
    ) -> Result<Vec<crate::audit::Record>, Error> {
        let r = crate::proto::audit_service_client::AuditServiceClient::new(self.channel.clone())
            .query(convert::audit_filter_out(filter))
            .await?
            .into_inner();
        r.records
            .into_iter()
            .map(|x| convert::audit_record_in(x).map_err(Into::into))
            .collect()
    }
}
