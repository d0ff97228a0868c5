//! PkiService: the CA over gRPC.

use std::sync::Arc;

/// Largest page of certificates one answer carries: about 4 MiB of records is the gRPC
/// message limit, and a record with its PEM is under 1 KiB.
const MAX_PAGE: usize = 4000;

use tonic::{Request, Response, Status};

use super::{blocking, caller};
use crate::daemon::State;
use crate::daemon::auth::Grant;
use crate::pki::{CertKind, IssueSpec, Issued, ListFilter};
use crate::proto as pb;
use crate::proto::convert;
use crate::proto::pki_service_server::PkiService;

/// The PkiService adapter.
pub(crate) struct PkiSvc {
    pub state: Arc<State>,
}

impl PkiSvc {
    /// The wire parts of a fresh certificate: the entry, the key only when the caller
    /// asked for it, and the CA.
    fn issued_out(
        &self,
        issued: &Issued,
        return_key: bool,
    ) -> (Option<pb::IssuedCertificate>, String, String) {
        let key = if return_key {
            issued.key.secret_pem().to_string()
        } else {
            String::new()
        };
        (
            Some(convert::record_out(&issued.record)),
            key,
            self.state.pki.ca().cert_pem().to_string(),
        )
    }
}

#[tonic::async_trait]
impl PkiService for PkiSvc {
    async fn get_ca(
        &self,
        _: Request<pb::GetCaRequest>,
    ) -> Result<Response<pb::GetCaResponse>, Status> {
        let ca = self.state.pki.ca();
        let details = self.state.pki.inspect(ca.cert_der())?;
        Ok(Response::new(pb::GetCaResponse {
            certificate_pem: ca.cert_pem().to_string(),
            details: details.first().map(convert::details_out),
        }))
    }

    async fn issue_certificate(
        &self,
        req: Request<pb::IssueCertificateRequest>,
    ) -> Result<Response<pb::IssueCertificateResponse>, Status> {
        let who = caller(&req);
        let req_grant = Grant::of(&req)?;
        let r = req.into_inner();
        let kind = convert::kind_request(r.kind, "certificate kind")?.ok_or_else(|| {
            Status::invalid_argument("certificate kind is required: server, client or admin")
        })?;
        let spec = IssueSpec {
            kind,
            names: convert::names_in(r.names)?,
            validity_days: (r.validity_days > 0).then_some(r.validity_days),
            key_algorithm: convert::key_algorithm_in(r.key_algorithm)?,
            // Client keys stay with berthd so `certs install` can place them later.
            hold_key: kind == CertKind::Client,
        };
        if kind != CertKind::Client && !r.return_private_key {
            return Err(Status::invalid_argument(
                "server and admin keys are not kept by berthd: set return_private_key (the CLI's --out) or the key is lost",
            ));
        }
        req_grant.may_act_on(
            &self.state,
            &who,
            Some(kind),
            &spec.names.common_name,
            "issue a certificate for",
        )?;
        let issued = if spec.key_algorithm.is_rsa() {
            // An RSA key takes up to seconds to find: never on a runtime thread, where it
            // would stall every other request.
            let state = self.state.clone();
            blocking(move || state.pki.issue(&who, &spec)).await?
        } else {
            self.state.pki.issue_async(&who, &spec).await?
        };
        let (certificate, private_key_pem, ca_certificate_pem) =
            self.issued_out(&issued, r.return_private_key);
        Ok(Response::new(pb::IssueCertificateResponse {
            certificate,
            private_key_pem,
            ca_certificate_pem,
        }))
    }

    async fn sign_csr(
        &self,
        req: Request<pb::SignCsrRequest>,
    ) -> Result<Response<pb::SignCsrResponse>, Status> {
        let who = caller(&req);
        let grant = Grant::of(&req)?;
        let r = req.into_inner();
        let profile = convert::kind_request(r.profile, "profile")?
            .ok_or_else(|| Status::invalid_argument("profile is required: server or client"))?;
        let days = (r.validity_days > 0).then_some(r.validity_days);
        let state = self.state.clone();
        let record = blocking(move || {
            let permit = |n: &crate::pki::Names| {
                grant
                    .may_act_on(
                        &state,
                        &who,
                        Some(profile),
                        &n.common_name,
                        "sign a CSR for",
                    )
                    .map_err(|s| s.message().to_string())
            };
            state.pki.sign_csr(&who, &r.csr, profile, days, &permit)
        })
        .await?;
        Ok(Response::new(pb::SignCsrResponse {
            certificate: Some(convert::record_out(&record)),
            ca_certificate_pem: self.state.pki.ca().cert_pem().to_string(),
        }))
    }

    async fn list_certificates(
        &self,
        req: Request<pb::ListCertificatesRequest>,
    ) -> Result<Response<pb::ListCertificatesResponse>, Status> {
        let r = req.into_inner();
        let filter = ListFilter {
            kind: convert::kind_request(r.kind, "certificate kind")?,
            common_name: (!r.common_name.is_empty()).then_some(r.common_name),
        };
        let skip = match r.page_token.as_str() {
            "" => 0,
            t => t
                .strip_prefix("after:")
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "page token {t:?} was not made by this server: send the next_page_token of the previous answer, or none for the first page"
                    ))
                })?,
        };
        let take = match r.page_size {
            0 => usize::MAX,
            n => (n as usize).min(MAX_PAGE),
        };
        let (page, more) = self.state.pki.list_page(&filter, skip, take);
        let next_page_token = if more {
            format!("after:{}", skip + page.len())
        } else {
            String::new()
        };
        let certificates = page.iter().map(convert::record_out).collect();
        Ok(Response::new(pb::ListCertificatesResponse {
            certificates,
            next_page_token,
        }))
    }

    async fn inspect_certificate(
        &self,
        req: Request<pb::InspectCertificateRequest>,
    ) -> Result<Response<pb::InspectCertificateResponse>, Status> {
        let details = self.state.pki.inspect(&req.into_inner().data)?;
        Ok(Response::new(pb::InspectCertificateResponse {
            certificates: details.iter().map(convert::details_out).collect(),
        }))
    }

    async fn revoke_certificate(
        &self,
        req: Request<pb::RevokeCertificateRequest>,
    ) -> Result<Response<pb::RevokeCertificateResponse>, Status> {
        let who = caller(&req);
        let grant = Grant::of(&req)?;
        let serial = req.into_inner().serial;
        if grant.role != crate::config::Role::Admin {
            let old = self.state.pki.get(&serial)?;
            grant.may_act_on(
                &self.state,
                &who,
                Some(old.kind),
                &old.names.common_name,
                "revoke",
            )?;
        }
        let state = self.state.clone();
        let record = blocking(move || state.pki.revoke(&who, &serial)).await?;
        // The next TLS handshake must already see the new CRL.
        self.state.reload_tls()?;
        Ok(Response::new(pb::RevokeCertificateResponse {
            certificate: Some(convert::record_out(&record)),
        }))
    }

    async fn renew_certificate(
        &self,
        req: Request<pb::RenewCertificateRequest>,
    ) -> Result<Response<pb::RenewCertificateResponse>, Status> {
        let who = caller(&req);
        let grant = Grant::of(&req)?;
        let r = req.into_inner();
        let old = self.state.pki.get(&r.serial)?;
        grant.may_act_on(
            &self.state,
            &who,
            Some(old.kind),
            &old.names.common_name,
            "renew",
        )?;
        if old.kind != CertKind::Client && !r.return_private_key && !old.key_held {
            return Err(Status::invalid_argument(
                "server and admin keys are not kept by berthd: set return_private_key (the CLI's --out) or the key is lost",
            ));
        }
        let state = self.state.clone();
        let days = (r.validity_days > 0).then_some(r.validity_days);
        let (issued, followed) = blocking(move || {
            let issued = state.pki.renew(&who, &old.serial, days)?;
            let followed = state.certsd.follow_renewal(&state.pki, &old)?;
            Ok::<_, crate::certsd::Error>((issued, followed))
        })
        .await?;
        let (certificate, private_key_pem, ca_certificate_pem) =
            self.issued_out(&issued, r.return_private_key);
        Ok(Response::new(pb::RenewCertificateResponse {
            certificate,
            private_key_pem,
            ca_certificate_pem,
            certs_updated: followed
                .updated
                .iter()
                .map(|d| d.display().to_string())
                .collect(),
            certs_problems: followed.problems,
        }))
    }

    async fn get_crl(
        &self,
        _: Request<pb::GetCrlRequest>,
    ) -> Result<Response<pb::GetCrlResponse>, Status> {
        let crl = self.state.pki.crl()?;
        Ok(Response::new(pb::GetCrlResponse {
            crl_pem: crl.pem,
            revoked_count: u32::try_from(crl.revoked_count).unwrap_or(u32::MAX),
            this_update: Some(convert::ts(crl.this_update)),
            next_update: Some(convert::ts(crl.next_update)),
        }))
    }
}
