//! CertsService: the certs.d installer over gRPC. It runs in the daemon because the daemon
//! owns the host's files (and, as root, may write /etc/docker/certs.d).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{blocking, caller};
use crate::certsd::{HostPort, InstallRequest};
use crate::daemon::State;
use crate::proto as pb;
use crate::proto::certs_service_server::CertsService;
use crate::proto::convert;

/// The CertsService adapter.
pub(crate) struct CertsSvc {
    pub state: Arc<State>,
}

#[tonic::async_trait]
impl CertsService for CertsSvc {
    async fn install_certs(
        &self,
        req: Request<pb::InstallCertsRequest>,
    ) -> Result<Response<pb::InstallCertsResponse>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        let install = InstallRequest {
            host: r.host.parse::<HostPort>()?,
            client: (!r.client_name.trim().is_empty()).then(|| r.client_name.trim().to_string()),
            containers: r.containers,
            containerd: r.containerd,
            dry_run: r.dry_run,
            force: r.force,
        };
        let state = self.state.clone();
        let out = blocking(move || state.certsd.install(&who, &state.pki, &install)).await?;
        Ok(Response::new(convert::install_out(out)))
    }

    async fn remove_certs(
        &self,
        req: Request<pb::RemoveCertsRequest>,
    ) -> Result<Response<pb::RemoveCertsResponse>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        let host = r.host.parse::<HostPort>()?;
        let state = self.state.clone();
        let actions = blocking(move || {
            state
                .certsd
                .remove(&who, &host, r.containers, r.containerd, r.dry_run)
        })
        .await?;
        Ok(Response::new(pb::RemoveCertsResponse {
            actions: convert::actions_out(&actions),
        }))
    }

    async fn list_certs(
        &self,
        _: Request<pb::ListCertsRequest>,
    ) -> Result<Response<pb::ListCertsResponse>, Status> {
        let state = self.state.clone();
        let entries = blocking(move || state.certsd.list(&state.pki)).await?;
        Ok(Response::new(pb::ListCertsResponse {
            entries: entries.iter().map(convert::entry_out).collect(),
        }))
    }

    async fn verify_certs(
        &self,
        req: Request<pb::VerifyCertsRequest>,
    ) -> Result<Response<pb::VerifyCertsResponse>, Status> {
        let host = req.into_inner().host.parse::<HostPort>()?;
        let state = self.state.clone();
        let entries = blocking(move || state.certsd.verify(&host, &state.pki)).await?;
        Ok(Response::new(pb::VerifyCertsResponse {
            entries: entries.iter().map(convert::entry_out).collect(),
        }))
    }
}
