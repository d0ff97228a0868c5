//! What only the live registry shows: does the port speak TLS, is the server's chain
//! trusted by the folder's CAs and valid for the name used, which client CAs it asks for,
//! and does it accept the folder's client pair (and if not, the alert it sent).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{AlertDescription, CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::files::Material;
use super::{Finding, Severity};
use crate::certsd::HostPort;

/// How long each step may take.
const STEP: Duration = Duration::from_secs(5);

/// The system's CA bundle, as Go's `SystemCertPool` reads it on Debian and its kin.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn finding(code: &'static str, sev: Severity, runtime: &'static str, m: String) -> Finding {
    Finding::new(code, sev, runtime, m)
}

/// Records the server's chain and what verifying it against the folder's CAs said, and
/// lets the handshake go on, so the client side can be checked too.
#[derive(Debug)]
struct Recorder {
    inner: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
    verdict: Mutex<Option<Result<(), rustls::Error>>>,
    subject: Mutex<Option<Sans>>,
    end_entity: Mutex<Option<Vec<u8>>>,
}

/// The server certificate's names, as Go's messages list them.
#[derive(Debug, Clone, Default)]
struct Sans {
    dns: Vec<String>,
    ips: Vec<String>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let v = match &self.inner {
            Some(i) => i
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
                .map(|_| ()),
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        };
        *self.verdict.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
        *self.end_entity.lock().unwrap_or_else(|e| e.into_inner()) = Some(end_entity.to_vec());
        *self.subject.lock().unwrap_or_else(|e| e.into_inner()) =
            X509Certificate::from_der(end_entity).ok().map(|(_, c)| {
                let mut sans = Sans::default();
                if let Ok(Some(s)) = c.subject_alternative_name() {
                    for g in &s.value.general_names {
                        match g {
                            x509_parser::extensions::GeneralName::DNSName(d) => {
                                sans.dns.push((*d).to_string())
                            }
                            x509_parser::extensions::GeneralName::IPAddress(b) => {
                                let ip = match b.len() {
                                    4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                                    16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                                    _ => None,
                                };
                                sans.ips.extend(ip.map(|i| i.to_string()));
                            }
                            _ => {}
                        }
                    }
                }
                sans
            });
        Ok(ServerCertVerified::assertion())
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

/// Presents the folder's pair the way Go's crypto/tls chooses: only when the server names
/// no acceptable CAs or names the certificate's issuer. Records what the server asked.
#[derive(Debug)]
struct Presenter {
    key: Option<Arc<rustls::sign::CertifiedKey>>,
    issuer: Option<Vec<u8>>,
    asked: Mutex<Option<Vec<Vec<u8>>>>,
    sent: Mutex<bool>,
}

/// A DER Name with its outer SEQUENCE, or the same without it: the two forms in use.
fn same_name(a: &[u8], b: &[u8]) -> bool {
    fn inner(x: &[u8]) -> &[u8] {
        if x.first() != Some(&0x30) || x.len() < 2 {
            return x;
        }
        let l = x[1];
        let skip = if l & 0x80 == 0 {
            2
        } else {
            2 + usize::from(l & 0x7f)
        };
        x.get(skip..).unwrap_or(x)
    }
    a == b || inner(a) == b || a == inner(b) || inner(a) == inner(b)
}

impl ResolvesClientCert for Presenter {
    fn resolve(
        &self,
        hints: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        *self.asked.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(hints.iter().map(|h| h.to_vec()).collect());
        let key = self.key.clone()?;
        if !hints.is_empty()
            && let Some(issuer) = &self.issuer
            && !hints.iter().any(|h| same_name(h, issuer))
        {
            return None;
        }
        *self.sent.lock().unwrap_or_else(|e| e.into_inner()) = true;
        Some(key)
    }

    fn has_certs(&self) -> bool {
        self.key.is_some()
    }
}

fn names_of(hints: &[Vec<u8>]) -> String {
    hints
        .iter()
        .map(|h| {
            x509_parser::x509::X509Name::from_der(h)
                .map(|(_, n)| n.to_string())
                .unwrap_or_else(|_| "?".into())
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Connects to the registry as a client with `m` would, and reports what fails.
pub async fn probe(
    runtime: &'static str,
    host: &HostPort,
    dir: &Path,
    m: &Material,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let name = host
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = host.port_or_default();
    let target = format!("{host}");
    let addrs: Vec<std::net::SocketAddr> =
        match tokio::time::timeout(STEP, tokio::net::lookup_host((name.as_str(), port))).await {
            Ok(Ok(a)) => a.collect(),
            _ => Vec::new(),
        };
    if addrs.is_empty() {
        out.push(
            finding(
                "probe-unresolvable",
                Severity::Error,
                runtime,
                format!("{name} does not resolve on this host"),
            )
            .client(format!("dial tcp: lookup {name}: no such host"))
            .fix(format!("add {name} to DNS or /etc/hosts")),
        );
        return out;
    }
    let mut tcp = None;
    let mut last = String::new();
    for a in &addrs {
        match tokio::time::timeout(STEP, tokio::net::TcpStream::connect(a)).await {
            Ok(Ok(s)) => {
                tcp = Some(s);
                break;
            }
            Ok(Err(e)) => last = format!("dial tcp {a}: connect: {e}"),
            Err(_) => last = format!("dial tcp {a}: i/o timeout"),
        }
    }
    let Some(tcp) = tcp else {
        out.push(
            finding(
                "probe-unreachable",
                Severity::Error,
                runtime,
                format!("nothing answers on {target} from this host"),
            )
            .client(last)
            .fix("check that the registry runs and listens on that address, and the firewall"),
        );
        return out;
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in &m.cas {
        let _ = roots.add(c.clone());
    }
    let from_folder = !roots.is_empty();
    if let Ok(bundle) = std::fs::read(SYSTEM_BUNDLE) {
        use rustls::pki_types::pem::PemObject;
        for c in CertificateDer::pem_slice_iter(&bundle).filter_map(Result::ok) {
            let _ = roots.add(c);
        }
    }
    let inner = (!roots.is_empty())
        .then(|| {
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .ok()
        })
        .flatten();
    let recorder = Arc::new(Recorder {
        inner,
        provider: provider.clone(),
        verdict: Mutex::new(None),
        subject: Mutex::new(None),
        end_entity: Mutex::new(None),
    });
    let key = m.pair.as_ref().and_then(|(chain, key)| {
        let signing = provider
            .key_provider
            .load_private_key(key.clone_key())
            .ok()?;
        Some(Arc::new(rustls::sign::CertifiedKey::new(
            chain.clone(),
            signing,
        )))
    });
    let issuer = m.pair.as_ref().and_then(|(chain, _)| {
        X509Certificate::from_der(chain.first()?)
            .ok()
            .map(|(_, c)| c.issuer().as_raw().to_vec())
    });
    let presenter = Arc::new(Presenter {
        key,
        issuer,
        asked: Mutex::new(None),
        sent: Mutex::new(false),
    });
    let Ok(builder) = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
    else {
        return out;
    };
    let mut cfg = builder
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_client_cert_resolver(presenter.clone());
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let Ok(server_name) = ServerName::try_from(name.clone()) else {
        return out;
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let result = tokio::time::timeout(STEP, async {
        let mut s = connector.connect(server_name, tcp).await?;
        let req = format!("GET /v2/ HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = vec![0u8; 512];
        let n = s.read(&mut buf).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .await;
    let rustls_err = |e: &std::io::Error| {
        e.get_ref()
            .and_then(|x| x.downcast_ref::<rustls::Error>())
            .cloned()
    };
    // The server's certificate, whatever happened after.
    let verdict = recorder
        .verdict
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let sans = recorder
        .subject
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_default();
    // Go's words (crypto/x509 HostnameError).
    let is_ip = name.parse::<std::net::IpAddr>().is_ok();
    let valid_for = if is_ip {
        sans.ips.join(", ")
    } else {
        sans.dns.join(", ")
    };
    let name_error = if is_ip && sans.ips.is_empty() {
        format!(
            "x509: cannot validate certificate for {name} because it doesn't contain any IP SANs"
        )
    } else if valid_for.is_empty() {
        "x509: certificate is not valid for any names".to_string()
    } else {
        format!("x509: certificate is valid for {valid_for}, not {name}")
    };
    let all_names = [sans.dns.clone(), sans.ips.clone()].concat().join(", ");
    // Go trusts a server certificate that is itself in the pool (a copy of the server's
    // certificate used as ca.crt); webpki does not. It works until the next renewal.
    let ee = recorder
        .end_entity
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let pinned = ee.is_some_and(|ee| m.cas.iter().any(|c| c.as_ref() == ee.as_slice()));
    let verdict = match verdict {
        Some(Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer))) if pinned => {
            out.push(finding("ca-is-server-cert", Severity::Warning, runtime, format!("{} trusts {target}'s own certificate instead of the CA that signed it: it stops working when the certificate is renewed", dir.display()))
                .at(dir)
                .fix(format!("put the CA in {}/ca.crt instead (berth ca show, on the berth host)", dir.display())));
            Some(Ok(()))
        }
        v => v,
    };
    if let Some(Err(e)) = verdict {
        let trust = if from_folder {
            format!("the CAs in {}", dir.display())
        } else {
            "the system CAs (the folder has none)".into()
        };
        let f = match e {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => finding("server-untrusted", Severity::Error, runtime, format!("{target} presents a certificate that {trust} do not vouch for"))
                .client("x509: certificate signed by unknown authority")
                .fix(format!("put the CA that signed the registry's certificate in {}/ca.crt (berth ca show, on the berth host)", dir.display())),
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }) => finding("server-name-mismatch", Severity::Error, runtime, format!("{target}'s certificate is valid for {all_names}, not {name}"))
                .client(name_error)
                .fix(format!("reissue the registry's certificate with {name} (berthd: registry.names = [\"{name}\"]), or use a name it has")),
            rustls::Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => finding("server-expired", Severity::Error, runtime, format!("{target}'s certificate has expired"))
                .client("x509: certificate has expired or is not yet valid")
                .fix("renew the registry's certificate (berthd renews its own; restart it)"),
            rustls::Error::InvalidCertificate(CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }) => finding("server-not-yet-valid", Severity::Error, runtime, format!("{target}'s certificate is not valid yet: check the clocks"))
                .client("x509: certificate has expired or is not yet valid"),
            other => finding("server-invalid", Severity::Error, runtime, format!("{target}'s certificate is refused: {other}"))
                .client(format!("tls: failed to verify certificate: {other}")),
        };
        out.push(f.at(dir));
    }
    let asked = presenter
        .asked
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let sent = *presenter.sent.lock().unwrap_or_else(|e| e.into_inner());
    if let (Some(hints), Some(_), false) = (&asked, &m.pair, sent)
        && !hints.is_empty()
    {
        out.push(finding("client-ca-not-requested", Severity::Error, runtime, format!("{target} accepts client certificates from {}, but the folder's is from another CA: the client sends none", names_of(hints)))
            .at(dir)
            .client("remote error: tls: certificate required")
            .fix("install a client certificate from the CA the registry trusts (berth join on this host, or berth certs install)"));
    }
    match result {
        Err(_) => out.push(
            finding(
                "probe-timeout",
                Severity::Error,
                runtime,
                format!(
                    "{target} did not complete a TLS handshake and answer within {}s",
                    STEP.as_secs()
                ),
            )
            .client("net/http: TLS handshake timeout"),
        ),
        Ok(Ok(head)) => {
            if asked.is_none() && m.pair.is_some() {
                out.push(finding("client-auth-not-requested", Severity::Warning, runtime, format!("{target} did not ask for a client certificate: the folder's is never used")).at(dir));
            }
            if !head.starts_with("HTTP/") {
                out.push(finding(
                    "probe-no-http",
                    Severity::Warning,
                    runtime,
                    format!("{target} completed TLS but did not answer HTTP"),
                ));
            }
        }
        Ok(Err(e)) => match rustls_err(&e) {
            Some(rustls::Error::AlertReceived(a)) => {
                let (code, what) = match a {
                    AlertDescription::CertificateRequired | AlertDescription::HandshakeFailure
                        if !sent =>
                    {
                        (
                            "client-cert-missing",
                            "it requires a client certificate and none was sent".to_string(),
                        )
                    }
                    AlertDescription::UnknownCA => (
                        "client-rejected",
                        "it does not trust the client certificate's CA".into(),
                    ),
                    AlertDescription::CertificateRevoked => (
                        "client-rejected",
                        "the client certificate is revoked".into(),
                    ),
                    AlertDescription::CertificateExpired => (
                        "client-rejected",
                        "the client certificate has expired".into(),
                    ),
                    _ => (
                        "client-rejected",
                        format!("it refused the client certificate ({a:?})"),
                    ),
                };
                let alert = format!("{a:?}").to_lowercase();
                out.push(finding(code, Severity::Error, runtime, format!("{target} ended the handshake: {what}"))
                    .at(dir)
                    .client(format!("remote error: tls: {}", go_alert(a, &alert)))
                    .fix(if code == "client-cert-missing" {
                        "install a client certificate for this registry: berth join (or berth certs install)".to_string()
                    } else {
                        "get a current client certificate from the registry's CA: berth renew, or berth join with a new token".to_string()
                    }));
            }
            Some(rustls::Error::InvalidMessage(_)) | None if speaks_http(&addrs).await => {
                out.push(finding("port-not-tls", Severity::Error, runtime, format!("{target} speaks plain HTTP, not TLS"))
                    .client("http: server gave HTTP response to HTTPS client")
                    .fix("point the client at the registry's TLS port, or enable TLS on the registry"));
            }
            Some(other) => out.push(
                finding(
                    "probe-tls-failed",
                    Severity::Error,
                    runtime,
                    format!("the TLS connection to {target} failed: {other}"),
                )
                .client(format!("tls: {other}")),
            ),
            None => out.push(
                finding(
                    "probe-tls-failed",
                    Severity::Error,
                    runtime,
                    format!("the connection to {target} failed: {e}"),
                )
                .client(e.to_string()),
            ),
        },
    }
    out
}

/// Go's words for an alert.
fn go_alert(a: AlertDescription, fallback: &str) -> String {
    match a {
        AlertDescription::BadCertificate => "bad certificate".into(),
        AlertDescription::UnknownCA => "unknown certificate authority".into(),
        AlertDescription::CertificateRevoked => "revoked certificate".into(),
        AlertDescription::CertificateExpired => "expired certificate".into(),
        AlertDescription::CertificateRequired => "certificate required".into(),
        AlertDescription::HandshakeFailure => "handshake failure".into(),
        _ => fallback.into(),
    }
}

/// Whether the port answers a plain HTTP request.
async fn speaks_http(addrs: &[std::net::SocketAddr]) -> bool {
    let Some(a) = addrs.first() else { return false };
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(a).await.ok()?;
        s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n").await.ok()?;
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.ok()?;
        Some(&buf == b"HTTP/")
    };
    tokio::time::timeout(STEP, attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}
