//! RegistryService: the operator's view of the embedded registry.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::convert::ts;
use crate::daemon::State;
use crate::events::{Action, Event, Target};
use crate::identity::Identity;
use crate::net::tls::REGISTRY_CN;
use crate::pki::{CertKind, CertStatus, ListFilter};
use crate::proto as pb;
use crate::proto::registry_service_server::RegistryService;
use crate::registry::GcOptions;
use crate::registry::reference::parse_image_ref;

/// Default GC grace period.
const GRACE: Duration = Duration::from_secs(3600);

/// The RegistryService adapter.
pub(crate) struct RegistrySvc {
    pub state: Arc<State>,
}

/// The caller the interceptor authorised (`net::serve` put it on the request).
fn who<T>(req: &Request<T>) -> Result<Identity, Status> {
    req.extensions()
        .get::<Identity>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no caller identity on this request"))
}

fn event_out(e: Event) -> pb::RegistryEvent {
    pb::RegistryEvent {
        time: Some(ts(e.time)),
        action: match e.action {
            Action::Push => pb::EventAction::Push,
            Action::Pull => pb::EventAction::Pull,
            Action::Delete => pb::EventAction::Delete,
        }
        .into(),
        target: match e.target {
            Target::Manifest => pb::EventTarget::Manifest,
            Target::Blob => pb::EventTarget::Blob,
            Target::Tag => pb::EventTarget::Tag,
        }
        .into(),
        repository: e.repository,
        digest: e.digest.unwrap_or_default(),
        tag: e.tag.unwrap_or_default(),
        actor: e.actor,
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::RegistryEvent, Status>> + Send>>;

#[tonic::async_trait]
impl RegistryService for RegistrySvc {
    async fn status(
        &self,
        req: Request<pb::RegistryStatusRequest>,
    ) -> Result<Response<pb::RegistryStatusResponse>, Status> {
        let who = who(&req)?;
        let s = &self.state;
        let reg = &s.registry;
        let stats = reg.stats(&who).await?;
        let cert = s
            .pki
            .list(&ListFilter {
                kind: Some(CertKind::Server),
                common_name: Some(REGISTRY_CN.to_string()),
            })
            .into_iter()
            .rev()
            .find(|r| r.status() == CertStatus::Valid);
        let mut sans = Vec::new();
        if let Some(c) = &cert {
            sans.extend(c.names.dns_names.iter().map(|d| format!("DNS:{d}")));
            sans.extend(c.names.ip_addresses.iter().map(|i| format!("IP:{i}")));
        }
        Ok(Response::new(pb::RegistryStatusResponse {
            enabled: s.config.registry.enabled,
            listeners: s.registry_addrs().iter().map(ToString::to_string).collect(),
            storage_root: reg.root().display().to_string(),
            certificate_serial: cert.as_ref().map(|c| c.serial.clone()).unwrap_or_default(),
            certificate_sans: sans,
            certificate_not_after: cert.map(|c| ts(c.not_after)),
            blobs: stats.blobs,
            bytes: stats.bytes,
            repositories: reg.catalog(&who).await?.len() as u64,
            uploads: reg.uploads(&who).await?.len() as u64,
        }))
    }

    async fn list_repositories(
        &self,
        req: Request<pb::ListRepositoriesRequest>,
    ) -> Result<Response<pb::ListRepositoriesResponse>, Status> {
        let repos = self.state.registry.repositories(&who(&req)?).await?;
        Ok(Response::new(pb::ListRepositoriesResponse {
            repositories: repos
                .into_iter()
                .map(|r| pb::Repository {
                    name: r.name,
                    tags: r.tags as u32,
                    manifests: r.manifests as u32,
                    bytes: r.bytes,
                })
                .collect(),
        }))
    }

    async fn list_tags(
        &self,
        req: Request<pb::ListTagsRequest>,
    ) -> Result<Response<pb::ListTagsResponse>, Status> {
        let who = who(&req)?;
        let name = req
            .into_inner()
            .repository
            .parse()
            .map_err(crate::registry::Error::from)?;
        let tags = self.state.registry.tags(&who, &name).await?;
        Ok(Response::new(pb::ListTagsResponse { tags }))
    }

    async fn inspect_image(
        &self,
        req: Request<pb::InspectImageRequest>,
    ) -> Result<Response<pb::InspectImageResponse>, Status> {
        let who = who(&req)?;
        let (name, reference) =
            parse_image_ref(&req.into_inner().reference).map_err(crate::registry::Error::from)?;
        let i = self.state.registry.inspect(&who, &name, &reference).await?;
        Ok(Response::new(pb::InspectImageResponse {
            repository: i.repository,
            digest: i.digest.to_string(),
            media_type: i.media_type,
            kind: i.kind,
            manifest_size: i.manifest_size,
            config_digest: i.config_digest.map(|d| d.to_string()).unwrap_or_default(),
            os: i.os.unwrap_or_default(),
            architecture: i.architecture.unwrap_or_default(),
            layers: i
                .layers
                .into_iter()
                .map(|l| pb::Layer {
                    digest: l.digest.to_string(),
                    size: l.size,
                    media_type: l.media_type,
                    compression: l.compression,
                    diff_id: l.diff_id.map(|d| d.to_string()).unwrap_or_default(),
                    config_diff_id: l.config_diff_id.unwrap_or_default(),
                    diff_id_matches: l.diff_id_matches,
                    chain_id: l.chain_id.map(|d| d.to_string()).unwrap_or_default(),
                })
                .collect(),
            platforms: i
                .platforms
                .into_iter()
                .map(|p| pb::Platform {
                    digest: p.digest.to_string(),
                    media_type: p.media_type,
                    size: p.size,
                    os: p.os.unwrap_or_default(),
                    architecture: p.architecture.unwrap_or_default(),
                    variant: p.variant.unwrap_or_default(),
                })
                .collect(),
            total_size: i.total_size,
        }))
    }

    async fn delete_image(
        &self,
        req: Request<pb::DeleteImageRequest>,
    ) -> Result<Response<pb::DeleteImageResponse>, Status> {
        let who = who(&req)?;
        let (name, reference) =
            parse_image_ref(&req.into_inner().reference).map_err(crate::registry::Error::from)?;
        let d = self
            .state
            .registry
            .delete_image(&who, &name, &reference)
            .await?;
        let (digest, untagged) = (d.digest, d.untagged);
        Ok(Response::new(pb::DeleteImageResponse {
            repository: name.to_string(),
            digest: digest.to_string(),
            untagged,
        }))
    }

    async fn garbage_collect(
        &self,
        req: Request<pb::GarbageCollectRequest>,
    ) -> Result<Response<pb::GarbageCollectResponse>, Status> {
        let who = who(&req)?;
        let r = req.into_inner();
        let report = self
            .state
            .registry
            .gc(
                &who,
                GcOptions {
                    dry_run: r.dry_run,
                    delete_untagged: r.delete_untagged,
                    grace: r.grace_seconds.map_or(GRACE, Duration::from_secs),
                },
            )
            .await?;
        Ok(Response::new(pb::GarbageCollectResponse {
            dry_run: report.dry_run,
            blobs_deleted: report
                .blobs_deleted
                .into_iter()
                .map(|(digest, size)| pb::BlobRef { digest, size })
                .collect(),
            bytes_freed: report.bytes_freed,
            manifests_deleted: report
                .manifests_deleted
                .into_iter()
                .map(|(repository, digest)| pb::ManifestRef { repository, digest })
                .collect(),
            blobs_in_use: report.blobs_in_use as u64,
            blobs_young: report.blobs_young as u64,
        }))
    }

    async fn list_uploads(
        &self,
        req: Request<pb::ListUploadsRequest>,
    ) -> Result<Response<pb::ListUploadsResponse>, Status> {
        let who = who(&req)?;
        let r = req.into_inner();
        let reg = &self.state.registry;
        let older = r.older_than_seconds.map(Duration::from_secs);
        let uploads = if r.purge {
            reg.purge_uploads(&who, older, r.dry_run).await?
        } else {
            let mut all = reg.uploads(&who).await?;
            all.retain(|u| older.is_none_or(|min| u.age() >= min));
            all
        };
        Ok(Response::new(pb::ListUploadsResponse {
            uploads: uploads
                .into_iter()
                .map(|u| pb::Upload {
                    repository: u.repository,
                    id: u.id,
                    size: u.size,
                    started_at: u.started_at.map(ts),
                })
                .collect(),
            purged: r.purge,
        }))
    }

    async fn fsck(
        &self,
        req: Request<pb::FsckRequest>,
    ) -> Result<Response<pb::FsckResponse>, Status> {
        let who = who(&req)?;
        let report = self
            .state
            .registry
            .fsck(&who, req.into_inner().repair)
            .await?;
        Ok(Response::new(pb::FsckResponse {
            blobs_checked: report.blobs_checked,
            bytes_checked: report.bytes_checked,
            problems: report
                .problems
                .into_iter()
                .map(|p| pb::FsckProblem {
                    kind: p.kind,
                    path: p.path.display().to_string(),
                    digest: p.digest,
                    detail: p.detail,
                })
                .collect(),
        }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        req: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let repo = req.into_inner().repository;
        let mut rx = self.state.registry.subscribe();
        let (tx, out) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let item = match rx.recv().await {
                    Ok(e) if !repo.is_empty() && e.repository != repo => continue,
                    Ok(e) => Ok(event_out(e)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        Err(Status::resource_exhausted(format!(
                            "this subscriber fell {n} events behind and was dropped so pushes are never slowed; reconnect to continue"
                        )))
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let end = item.is_err();
                if tx.send(item).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }
}
