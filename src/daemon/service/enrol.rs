//! TokenService (admins make, list and revoke enrolment tokens) and EnrolService (any TLS
//! peer trades a token and a CSR for its client certificate).

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::{blocking, caller};
use crate::daemon::State;
use crate::daemon::auth::Grant;
use crate::identity::Identity;
use crate::net::Peer;
use crate::proto as pb;
use crate::proto::convert;
use crate::proto::enrol_service_server::EnrolService;
use crate::proto::token_service_server::TokenService;

/// Lifetime of a token when the request does not say.
const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// The TokenService adapter.
pub(crate) struct TokenSvc {
    pub state: Arc<State>,
}

/// The EnrolService adapter.
pub(crate) struct EnrolSvc {
    pub state: Arc<State>,
}

#[tonic::async_trait]
impl TokenService for TokenSvc {
    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let who = caller(&req);
        let grant = Grant::of(&req)?;
        let r = req.into_inner();
        if r.replica {
            // Its certificates serve the registry under the names it carries.
            grant.require(
                &self.state,
                &who,
                crate::config::Role::Admin,
                "make a replica token",
            )?;
        }
        grant.may_act_on(
            &self.state,
            &who,
            Some(crate::pki::CertKind::Client),
            &r.name,
            "make an enrolment token for",
        )?;
        let ttl = match r.ttl_seconds {
            0 => DEFAULT_TTL,
            s => Duration::from_secs(s),
        };
        let state = self.state.clone();
        let replica = r.replica.then_some(r.names);
        let t = blocking(move || {
            state
                .pki
                .create_token(&who, &r.name, ttl, replica.as_deref())
        })
        .await?;
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(convert::token_out(&t.record)),
            secret: t.secret,
        }))
    }

    async fn list_tokens(
        &self,
        _: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let tokens = self.state.pki.tokens()?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens: tokens.iter().map(convert::token_out).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let who = caller(&req);
        let grant = Grant::of(&req)?;
        let id = req.into_inner().id;
        if grant.role != crate::config::Role::Admin {
            let name = self
                .state
                .pki
                .tokens()?
                .into_iter()
                .find(|t| t.id == id)
                .map(|t| t.name)
                .ok_or_else(|| Status::not_found(format!("no enrolment token {id}")))?;
            grant.may_act_on(
                &self.state,
                &who,
                Some(crate::pki::CertKind::Client),
                &name,
                "revoke the enrolment token of",
            )?;
        }
        let t = self.state.pki.revoke_token(&who, &id)?;
        Ok(Response::new(pb::RevokeTokenResponse {
            token: Some(convert::token_out(&t)),
        }))
    }
}

#[tonic::async_trait]
impl EnrolService for EnrolSvc {
    async fn enrol(
        &self,
        req: Request<pb::EnrolRequest>,
    ) -> Result<Response<pb::EnrolResponse>, Status> {
        let peer = req.extensions().get::<Peer>().and_then(|p| p.0);
        let who = caller(&req);
        let r = req.into_inner();
        let state = self.state.clone();
        let result = blocking(move || state.pki.enrol(&who, &r.token, &r.csr_pem)).await;
        let record = match result {
            Ok(rec) => rec,
            Err(e) => {
                if let Some(p) = peer {
                    self.state.enrol_failures.failed(p.ip());
                }
                tracing::warn!(peer = ?peer, error = %e.message(), "enrolment refused");
                return Err(e);
            }
        };
        Ok(Response::new(self.answer(&record)))
    }

    async fn renew(
        &self,
        req: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::EnrolResponse>, Status> {
        // net::serve has already refused a revoked or expired certificate.
        let who = caller(&req);
        let serial = match req.extensions().get::<Identity>() {
            Some(Identity::Cert(c)) => c.serial.clone(),
            Some(Identity::Unix { .. } | Identity::Anonymous | Identity::Daemon) | None => {
                return Err(Status::unauthenticated(
                    "renewal is asked for with the current client certificate over mutual TLS",
                ));
            }
        };
        let csr = req.into_inner().csr_pem;
        let state = self.state.clone();
        let record = blocking(move || state.pki.renew_enrolled(&who, &serial, &csr)).await?;
        Ok(Response::new(self.answer(&record)))
    }
}

impl EnrolSvc {
    fn answer(&self, record: &crate::pki::CertRecord) -> pb::EnrolResponse {
        pb::EnrolResponse {
            certificate_pem: record.certificate_pem.clone(),
            ca_certificate_pem: self.state.pki.ca().cert_pem().to_string(),
            serial: record.serial.clone(),
            not_after: Some(convert::ts(record.not_after)),
        }
    }
}
