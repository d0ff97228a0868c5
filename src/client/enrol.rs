//! The enrolment half of the client: token administration (`berth token`) and joining a
//! host (`berth join`), which reaches berthd before it has any certificate. Joining trusts
//! the control listener only if the CA in its chain has the fingerprint the operator
//! gave (`--ca-fingerprint`), like kubeadm's discovery hash: a server that cannot show
//! that CA never sees the token.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tonic::transport::{Endpoint, Uri};

use super::{Client, Error};
use crate::pki::TokenRecord;
use crate::proto as pb;
use crate::proto::convert::{self, time_in};
use crate::proto::enrol_service_client::EnrolServiceClient;
use crate::proto::token_service_client::TokenServiceClient;

/// How long berthd may take to answer an enrolment or a renewal: signing takes
/// milliseconds, so a minute is only ever exceeded by a server that is stuck.
const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// A token as `berth token create` shows it once.
#[derive(Debug, Clone)]
pub struct CreatedToken {
    /// The stored record.
    pub record: TokenRecord,
    /// The text to hand to `berth join --token`.
    pub secret: String,
}

/// What enrolment returned.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// PEM certificate.
    pub certificate_pem: String,
    /// PEM CA certificate.
    pub ca_pem: String,
    /// Serial, hex.
    pub serial: String,
    /// Expiry.
    pub not_after: OffsetDateTime,
}

/// A CA fingerprint as people write it: `sha256:HEX`, `SHA256 AB:CD:...` or bare hex.
pub fn parse_fingerprint(s: &str) -> Result<Vec<u8>, Error> {
    let t = s.trim();
    let t = t
        .strip_prefix("sha256:")
        .or_else(|| t.strip_prefix("SHA256:"))
        .or_else(|| t.strip_prefix("SHA256 "))
        .unwrap_or(t);
    let hexs: String = t.chars().filter(|c| *c != ':').collect();
    match hex::decode(&hexs) {
        Ok(b) if b.len() == 32 => Ok(b),
        _ => Err(Error::InvalidFingerprint(s.to_string())),
    }
}

/// Accepts the server only if its chain holds the pinned CA and the leaf verifies against
/// it for the name dialled.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: Vec<u8>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| Sha256::digest(c.as_ref()).as_slice() == self.fingerprint.as_slice())
            .ok_or_else(|| {
                rustls::Error::General(
                    "the server's CA does not have the fingerprint given with --ca-fingerprint; the token was not sent".into(),
                )
            })?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("pinned CA: {e}")))?;
        let v = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(format!("verifier: {e}")))?;
        v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl Client {
    /// Connects to berthd's TCP control listener trusting it only through the pinned CA
    /// fingerprint, with no client certificate (a host that is joining) or with the one it
    /// holds (`identity`: certificate and key PEM, for renewal).
    pub async fn connect_pinned(
        host: &str,
        port: u16,
        ca_fingerprint: &str,
        identity: Option<(&str, &str)>,
    ) -> Result<Client, Error> {
        let fingerprint = parse_fingerprint(ca_fingerprint)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let target = format!("tcp://{host}:{port}");
        let tls_err = |reason: String| Error::Connect {
            target: target.clone(),
            reason,
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCa {
                fingerprint,
                provider,
            }));
        let mut cfg = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                use rustls::pki_types::pem::PemObject;
                let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| tls_err(format!("client certificate: {e}")))?;
                let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes())
                    .map_err(|e| tls_err(format!("client key: {e}")))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| tls_err(e.to_string()))?
            }
        };
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let cfg = Arc::new(cfg);
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| Error::InvalidHost(target.clone()))?;
        let addr = format!("{host}:{port}");
        let channel = Endpoint::from_static("http://berthd.join")
            .connect_timeout(Duration::from_secs(30))
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let (cfg, name, addr) = (cfg.clone(), name.clone(), addr.clone());
                async move {
                    let tcp = tokio::net::TcpStream::connect(addr).await?;
                    let tls = tokio_rustls::TlsConnector::from(cfg)
                        .connect(name, tcp)
                        .await?;
                    Ok::<_, std::io::Error>(TokioIo::new(tls))
                }
            }))
            .await
            .map_err(|e| Error::Connect {
                target: target.clone(),
                reason: super::transport_reason(&e),
            })?;
        Ok(Client {
            channel,
            deadline: Some((target, ANSWER_WITHIN)),
        })
    }

    /// The same client with calls allowed `d` instead (tests of a server that never
    /// answers).
    #[cfg(test)]
    pub(crate) fn answer_within(mut self, d: Duration) -> Client {
        if let Some((_, within)) = self.deadline.as_mut() {
            *within = d;
        }
        self
    }

    /// Runs `call`, bounded by the client's deadline when it has one.
    async fn answered<T>(
        &self,
        what: &'static str,
        call: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        match &self.deadline {
            None => call.await,
            Some((target, within)) => {
                tokio::time::timeout(*within, call)
                    .await
                    .map_err(|_| Error::NoAnswer {
                        target: target.clone(),
                        what,
                        after: *within,
                    })?
            }
        }
    }

    fn tokens(&self) -> TokenServiceClient<tonic::transport::Channel> {
        TokenServiceClient::new(self.channel.clone())
    }

    /// Makes a one-time enrolment token for `name`; with `replica_names`, a reusable
    /// token for registry replicas serving those names.
    pub async fn token_create(
        &self,
        name: &str,
        ttl: Option<Duration>,
        replica_names: Option<&[String]>,
    ) -> Result<CreatedToken, Error> {
        let r = self
            .tokens()
            .create_token(pb::CreateTokenRequest {
                name: name.to_string(),
                ttl_seconds: ttl.map_or(0, |d| d.as_secs().max(1)),
                replica: replica_names.is_some(),
                names: replica_names.map(<[String]>::to_vec).unwrap_or_default(),
            })
            .await?
            .into_inner();
        let t = r
            .token
            .ok_or_else(|| Error::Protocol("no token in the answer".into()))?;
        Ok(CreatedToken {
            record: convert::token_in(t),
            secret: r.secret,
        })
    }

    /// Every enrolment token.
    pub async fn token_list(&self) -> Result<Vec<TokenRecord>, Error> {
        let r = self
            .tokens()
            .list_tokens(pb::ListTokensRequest {})
            .await?
            .into_inner();
        Ok(r.tokens.into_iter().map(convert::token_in).collect())
    }

    /// Makes a token unusable.
    pub async fn token_revoke(&self, id: &str) -> Result<TokenRecord, Error> {
        let r = self
            .tokens()
            .revoke_token(pb::RevokeTokenRequest { id: id.to_string() })
            .await?
            .into_inner();
        let t = r
            .token
            .ok_or_else(|| Error::Protocol("no token in the answer".into()))?;
        Ok(convert::token_in(t))
    }

    /// Asks for a successor of the client certificate this connection presents.
    pub async fn renew_own(&self, csr_pem: &str) -> Result<Enrolled, Error> {
        let call = async {
            Ok(EnrolServiceClient::new(self.channel.clone())
                .renew(pb::RenewRequest {
                    csr_pem: csr_pem.as_bytes().to_vec(),
                })
                .await?
                .into_inner())
        };
        Ok(enrolled_in(self.answered("the renewal", call).await?))
    }

    /// Trades a token and a CSR for a client certificate.
    pub async fn enrol(&self, token: &str, csr_pem: &str) -> Result<Enrolled, Error> {
        let call = async {
            Ok(EnrolServiceClient::new(self.channel.clone())
                .enrol(pb::EnrolRequest {
                    token: token.to_string(),
                    csr_pem: csr_pem.as_bytes().to_vec(),
                })
                .await?
                .into_inner())
        };
        Ok(enrolled_in(self.answered("the enrolment", call).await?))
    }
}

fn enrolled_in(r: pb::EnrolResponse) -> Enrolled {
    Enrolled {
        certificate_pem: r.certificate_pem,
        ca_pem: r.ca_certificate_pem,
        serial: r.serial,
        not_after: r
            .not_after
            .map(time_in)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH),
    }
}

#[cfg(test)]
mod tests;
