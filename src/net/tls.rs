//! TLS for every TCP listener (the registry and the control API), in one place: berthd's
//! own server certificate from its CA, client certificates required and checked against
//! the CA and its CRL at the handshake, and a [`Gate`] that re-checks the certificate's
//! serial and expiry on every request, so a revocation also reaches connections that were
//! open before it.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use super::Refusal;
use crate::identity::Identity;
use crate::pki::{self, Names, Pki};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The PKI could not issue or read the server certificate, or sign the CRL.
    #[error(transparent)]
    Pki(#[from] pki::Error),
    /// rustls refused the certificate, key, CRL or settings.
    #[error("TLS setup failed: {0}")]
    Rustls(String),
}

/// Common name of berthd's control listener certificate.
pub const CONTROL_CN: &str = "berthd control";

/// Common name of the embedded registry's certificate.
pub const REGISTRY_CN: &str = "berth registry";

/// The names a client may dial a berthd listener by: loopback, the host name, the listen
/// addresses and whatever the config adds.
pub fn service_names(listen: &[SocketAddr], extra: &[String]) -> Names {
    let mut n = Names {
        dns_names: vec!["localhost".to_string()],
        ip_addresses: vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ],
        ..Names::default()
    };
    if let Ok(h) = nix::unistd::gethostname() {
        let h = h.to_string_lossy().to_ascii_lowercase();
        if pki::is_valid_dns_name(&h) && !n.dns_names.contains(&h) {
            n.dns_names.push(h);
        }
    }
    for a in listen {
        if !a.ip().is_unspecified() && !n.ip_addresses.contains(&a.ip()) {
            n.ip_addresses.push(a.ip());
        }
    }
    for e in extra {
        match e.parse::<IpAddr>() {
            Ok(ip) if !n.ip_addresses.contains(&ip) => n.ip_addresses.push(ip),
            Ok(_) => {}
            Err(_) => {
                let d = e.to_ascii_lowercase();
                if !n.dns_names.contains(&d) {
                    n.dns_names.push(d);
                }
            }
        }
    }
    n
}

/// The control listener's config: gRPC, so HTTP/2 only. A client certificate is optional
/// at the handshake (a joining host has none yet), and verified when presented; the
/// daemon then lets a certificate-less peer call enrolment and nothing else.
pub fn control_config(pki: &Pki, names: &Names) -> Result<Arc<ServerConfig>, Error> {
    server_config(pki, CONTROL_CN, names, &[b"h2"], false)
}

/// The registry's config: docker speaks HTTP/1.1, others HTTP/2.
pub fn registry_config(pki: &Pki, names: &Names) -> Result<Arc<ServerConfig>, Error> {
    server_config(pki, REGISTRY_CN, names, &[b"h2", b"http/1.1"], true)
}

/// Builds a rustls config: ring provider only, client certificate from the berth CA
/// required, CRL enforced, server certificate issued (or renewed once a third of its life
/// is left) by the CA. Called again after every revocation so the next handshake sees the
/// new CRL.
fn server_config(
    pki: &Pki,
    cn: &str,
    names: &Names,
    alpn: &[&[u8]],
    client_required: bool,
) -> Result<Arc<ServerConfig>, Error> {
    let (record, key) = pki.service_identity(cn, names)?;
    let crl = pki.crl()?.der()?;
    build(
        pki.ca().cert_der(),
        crl,
        &record.certificate_pem,
        key.secret_pem(),
        alpn,
        client_required,
    )
}

/// A registry replica's listener config, from what its primary sent (the CA and CRL) and
/// the certificate it was enrolled with: client certificates required, as on the primary.
pub fn replica_registry_config(
    ca_der: &[u8],
    crl_der: Vec<u8>,
    certificate_pem: &str,
    key_pem: &str,
) -> Result<Arc<ServerConfig>, Error> {
    build(
        ca_der,
        crl_der,
        certificate_pem,
        key_pem,
        &[b"h2", b"http/1.1"],
        true,
    )
}

fn build(
    ca_der: &[u8],
    crl_der: Vec<u8>,
    certificate_pem: &str,
    key_pem: &str,
    alpn: &[&[u8]],
    client_required: bool,
) -> Result<Arc<ServerConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_der.to_vec()))
        .map_err(|e| Error::Rustls(format!("CA certificate: {e}")))?;
    let crl = CertificateRevocationListDer::from(crl_der);
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls([crl]);
    let builder = if client_required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    let verifier = builder
        .build()
        .map_err(|e| Error::Rustls(format!("client verifier: {e}")))?;
    let chain = vec![
        CertificateDer::from_pem_slice(certificate_pem.as_bytes())
            .map_err(|e| Error::Rustls(e.to_string()))?,
        CertificateDer::from(ca_der.to_vec()),
    ];
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| Error::Rustls(format!("server key: {e}")))?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Rustls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| Error::Rustls(e.to_string()))?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// The per-request check of a TLS caller: its certificate must not be revoked and must not
/// have expired. The handshake already checked both at connect time; this catches what
/// changed since, on connections that stay open (keep-alive, HTTP/2, gRPC channels).
#[derive(Debug, Default)]
pub struct Gate {
    revoked: ArcSwap<HashSet<String>>,
    /// On a registry replica: the moment its trust material lapses (CRL nextUpdate plus
    /// grace), after which every request is refused.
    serve_until: arc_swap::ArcSwapOption<time::OffsetDateTime>,
}

impl Gate {
    /// A gate that knows the PKI's current revocations.
    pub fn new(pki: &Pki) -> Gate {
        let g = Gate::default();
        g.refresh(pki);
        g
    }

    /// Takes in the PKI's revocations; call after every `revoke`.
    pub fn refresh(&self, pki: &Pki) {
        self.revoked.store(Arc::new(pki.revoked_serials()));
    }

    /// Takes in revocations from elsewhere (a replica's primary).
    pub fn set_revoked(&self, serials: HashSet<String>) {
        self.revoked.store(Arc::new(serials));
    }

    /// Refuse every request after `until` (a replica's CRL lapsing), until told again.
    pub fn serve_until(&self, until: time::OffsetDateTime) {
        self.serve_until.store(Some(Arc::new(until)));
    }

    /// Whether `serial` is in the revoked set.
    pub fn is_revoked(&self, serial: &str) -> bool {
        self.revoked.load().contains(serial)
    }

    /// Whether `who` may still make requests. Unix callers are checked by their own edge.
    pub fn check(&self, who: &Identity) -> Result<(), Refusal> {
        if let Some(until) = self.serve_until.load().as_deref()
            && *until < time::OffsetDateTime::now_utc()
        {
            return Err(Refusal::TrustLapsed { since: *until });
        }
        let Some(c) = who.certificate() else {
            return Ok(());
        };
        if self.revoked.load().contains(&c.serial) {
            return Err(Refusal::Revoked {
                serial: c.serial.clone(),
                subject: c.subject.clone(),
            });
        }
        if c.not_after < time::OffsetDateTime::now_utc() {
            return Err(Refusal::Expired {
                serial: c.serial.clone(),
                subject: c.subject.clone(),
                not_after: c.not_after,
            });
        }
        Ok(())
    }
}
