//! RegistryService: the operator's view of the embedded registry.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::daemon::State;
use crate::identity::Identity;
use crate::net::tls::REGISTRY_CN;
use crate::pki::{CertKind, CertStatus, ListFilter};
use crate::proto as pb;
use crate::proto::convert;
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
            certificate_not_after: cert.map(|c| convert::ts(c.not_after)),
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
            repositories: repos.into_iter().map(convert::repo_out).collect(),
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
        Ok(Response::new(convert::image_out(i)))
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
        Ok(Response::new(convert::gc_out(report)))
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
            uploads: uploads.into_iter().map(convert::upload_out).collect(),
            purged: r.purge,
        }))
    }

    async fn fsck(
        &self,
        req: Request<pb::FsckRequest>,
    ) -> Result<Response<pb::FsckResponse>, Status> {
        let who = who(&req)?;
        let repair = req.get_ref().repair;
        if repair {
            crate::daemon::auth::Grant::of(&req)?.require(
                &self.state,
                &who,
                crate::config::Role::Admin,
                "fsck --repair",
            )?;
        }
        let report = self.state.registry.fsck(&who, repair).await?;
        Ok(Response::new(convert::fsck_out(report)))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        req: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let repo = req.into_inner().repository;
        let mut rx = self.state.registry.subscribe();
        let mut stopping = self.state.stopping();
        let (tx, out) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    e = rx.recv() => Some(e),
                    _ = stopping.wait_for(|s| *s) => None,
                };
                let Some(next) = next else {
                    let _ = tx
                        .send(Err(Status::unavailable("berthd is shutting down")))
                        .await;
                    return;
                };
                let item = match next {
                    Ok(e) if !repo.is_empty() && e.repository != repo => continue,
                    Ok(e) => Ok(convert::event_out(e)),
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

    async fn reload_policy(
        &self,
        req: Request<pb::ReloadPolicyRequest>,
    ) -> Result<Response<pb::ReloadPolicyResponse>, Status> {
        let source = self
            .state
            .reload_policy(&super::caller(&req))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(pb::ReloadPolicyResponse { source }))
    }

    async fn check_policy(
        &self,
        req: Request<pb::CheckPolicyRequest>,
    ) -> Result<Response<pb::CheckPolicyResponse>, Status> {
        let r = req.into_inner();
        let c = crate::identity::CertIdentity::described(&r.subject, &r.sans, &r.serial)
            .map_err(Status::invalid_argument)?;
        let action = convert::policy_action_in(&r.action)?;
        let p = self.state.registry.policy();
        let d = p.decide_cert(&c, action, &r.repository);
        Ok(Response::new(pb::CheckPolicyResponse {
            allowed: d.allowed,
            rule: d.rule,
            source: p.source.clone(),
        }))
    }
}
