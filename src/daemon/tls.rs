//! TLS for the TCP control listener: berthd's own server certificate from its CA, client
//! certificates required and checked against the CA and its CRL.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use super::Error;
use crate::pki::{self, Names, Pki};

/// Common name of berthd's control listener certificate.
pub(crate) const CONTROL_CN: &str = "berthd control";

/// Common name of the embedded registry's certificate.
pub(crate) const REGISTRY_CN: &str = "berth registry";

/// The names a client may dial a berthd listener by: loopback, the host name, the listen
/// addresses and whatever the config adds.
pub(super) fn service_names(listen: &[SocketAddr], extra: &[String]) -> Names {
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

/// The control listener's config: gRPC, so HTTP/2 only.
pub(super) fn control_config(pki: &Pki, names: &Names) -> Result<Arc<ServerConfig>, Error> {
    server_config(pki, CONTROL_CN, names, &[b"h2"])
}

/// The registry's config: docker speaks HTTP/1.1, others HTTP/2.
pub(super) fn registry_config(pki: &Pki, names: &Names) -> Result<Arc<ServerConfig>, Error> {
    server_config(pki, REGISTRY_CN, names, &[b"h2", b"http/1.1"])
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
) -> Result<Arc<ServerConfig>, Error> {
    let (record, key) = pki.service_identity(cn, names)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(pki.ca().cert_der().to_vec()))
        .map_err(|e| Error::Tls(format!("CA certificate: {e}")))?;
    let crl = CertificateRevocationListDer::from(pki.crl()?.der()?);
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls([crl])
        .build()
        .map_err(|e| Error::Tls(format!("client verifier: {e}")))?;
    let chain = vec![
        CertificateDer::from_pem_slice(record.certificate_pem.as_bytes())
            .map_err(|e| Error::Tls(e.to_string()))?,
        CertificateDer::from(pki.ca().cert_der().to_vec()),
    ];
    let key = PrivateKeyDer::from_pem_slice(key.secret_pem().as_bytes())
        .map_err(|e| Error::Tls(format!("server key: {e}")))?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}
