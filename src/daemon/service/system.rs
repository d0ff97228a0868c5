//! SystemService: version, health, info.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::daemon::State;
use crate::identity::Identity;
use crate::proto as pb;
use crate::proto::convert;
use crate::proto::system_service_server::SystemService;

/// The SystemService adapter.
pub(crate) struct SystemSvc {
    pub state: Arc<State>,
}

#[tonic::async_trait]
impl SystemService for SystemSvc {
    async fn version(
        &self,
        _: Request<pb::VersionRequest>,
    ) -> Result<Response<pb::VersionResponse>, Status> {
        Ok(Response::new(pb::VersionResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            api_version: "berth.v1".to_string(),
        }))
    }

    async fn health(
        &self,
        _: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        let status = if self.state.is_ready() {
            pb::ServingStatus::Serving
        } else {
            pb::ServingStatus::NotServing
        };
        Ok(Response::new(pb::HealthResponse {
            status: status.into(),
        }))
    }

    async fn info(
        &self,
        req: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        let s = &self.state;
        let ca = s.pki.ca();
        Ok(Response::new(pb::InfoResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            state_dir: s.config.state_dir.display().to_string(),
            socket_path: s.config.control.socket.display().to_string(),
            tcp_listeners: s.tcp_addrs().iter().map(|a| format!("tcp://{a}")).collect(),
            registry_listeners: s.registry_addrs().iter().map(ToString::to_string).collect(),
            registry_root: s.registry.root().display().to_string(),
            ca_subject: s
                .pki
                .inspect(ca.cert_der())
                .ok()
                .and_then(|d| d.into_iter().next())
                .map(|d| d.subject)
                .unwrap_or_default(),
            ca_fingerprint_sha256: ca.fingerprint(),
            ca_not_after: ca.not_after().ok().map(convert::ts),
            docker_certs_root: s.config.certsd.docker_root.display().to_string(),
            containers_certs_root: s.config.certsd.containers_root.display().to_string(),
            pid: std::process::id(),
            started_at: Some(convert::ts(s.started_at)),
            caller: req.extensions().get::<Identity>().map(convert::caller_out),
        }))
    }
}
