//! The client of berthd's control API, over the unix socket or TCP with mutual TLS. It
//! returns domain types, so the CLI never touches proto types, and its errors say what to do.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use serde::Serialize;
use time::OffsetDateTime;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

use crate::certsd::{Entry, FileAction, InstallOutcome};
use crate::pki::{self, CertDetails, CertKind, CertRecord, Crl, KeyAlgorithm, Names, SecretKeyPem};
mod enrol;
pub mod host;
mod registry;
mod replica;
pub use enrol::{CreatedToken, Enrolled, parse_fingerprint};
pub use registry::RegistryStatus;
pub use replica::{ReplicaStatus, TrustStream, TrustUpdate};

use crate::proto as pb;
use crate::proto::certs_service_client::CertsServiceClient;
use crate::proto::convert::{self, key_algorithm_out, kind_out, names_out, time_in};
use crate::proto::pki_service_client::PkiServiceClient;
use crate::proto::system_service_client::SystemServiceClient;

/// Why a call to berthd failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing answers at the address.
    #[error("cannot reach berthd at {target}: is it running? start it with `berthd`")]
    Unreachable {
        /// The socket path or tcp:// address.
        target: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The socket's permissions keep this user out.
    #[error(
        "permission denied on {0}: only root, berthd's user and members of its control group may use it (see control.group)"
    )]
    SocketPermission(PathBuf),
    /// The TLS files for a remote daemon are missing or unreadable.
    #[error(
        "cannot use the TLS files in {dir}: {reason}; they must hold ca.pem, cert.pem and key.pem (make them with `berth cert issue admin --name NAME --out DIR` on the daemon's host)"
    )]
    TlsFiles {
        /// The folder.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A `--ca-fingerprint` that is not a SHA-256.
    #[error(
        "invalid CA fingerprint {0:?}: give the SHA-256 `berth system info` shows on the CA host, e.g. sha256:3f5a...(64 hex digits)"
    )]
    InvalidFingerprint(String),
    /// The address given with --host is not understood.
    #[error("invalid --host {0:?}: use unix:///path/to/berthd.sock or tcp://HOST:PORT")]
    InvalidHost(String),
    /// The connection could not be set up (TLS refused, protocol error).
    #[error("cannot connect to berthd at {target}: {reason}")]
    Connect {
        /// The address.
        target: String,
        /// What went wrong, as the transport said it.
        reason: String,
    },
    /// berthd answered with an error.
    #[error("{}", refusal_message(*.kind, .message))]
    Refused {
        /// The class of the refusal.
        kind: ErrorKind,
        /// berthd's message.
        message: String,
    },
    /// berthd answered with something this client cannot read.
    #[error("unexpected answer from berthd: {0}")]
    Protocol(String),
    /// berthd took the connection but did not answer in time.
    #[error(
        "berthd at {target} took the connection but did not answer {what} within {} s; check that berthd is running and not overloaded there, then try again",
        after.as_secs()
    )]
    NoAnswer {
        /// The address.
        target: String,
        /// The call.
        what: &'static str,
        /// How long it had.
        after: std::time::Duration,
    },
    /// Work on this host (keys, files, the enrolment record) failed.
    #[error("{0}")]
    Host(String),
}

/// The class of an error berthd answered with: what the caller can do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A value in the request is wrong.
    InvalidArgument,
    /// The thing asked for does not exist.
    NotFound,
    /// It exists already (and would be overwritten).
    AlreadyExists,
    /// The state does not allow it now (revoked, disabled...).
    FailedPrecondition,
    /// The caller may not do this.
    PermissionDenied,
    /// The caller is not who it must be (no, revoked or expired certificate).
    Unauthenticated,
    /// berthd is not serving (starting, stopping, or gone).
    Unavailable,
    /// Too much at once (a slow event subscriber, limits).
    ResourceExhausted,
    /// The operation was cut short (a body that stopped arriving).
    Aborted,
    /// berthd's state is damaged.
    DataLoss,
    /// berthd failed; its log says why.
    Internal,
    /// Anything else.
    Other,
}

impl Error {
    /// The class of refusal, when berthd answered with an error.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            Error::Refused { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

impl From<convert::WireError> for Error {
    fn from(e: convert::WireError) -> Error {
        Error::Protocol(e.to_string())
    }
}

/// The TLS alert berthd sent, when the RPC failed because it refused our certificate
/// (TLS 1.3 reports that on the first request, as a bare "transport error").
fn alert_in(s: &tonic::Status) -> Option<rustls::AlertDescription> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
    while let Some(e) = src {
        if let Some(rustls::Error::AlertReceived(a)) = e.downcast_ref::<rustls::Error>() {
            return Some(*a);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(rustls::Error::AlertReceived(a)) =
                io.get_ref().and_then(|x| x.downcast_ref::<rustls::Error>())
        {
            return Some(*a);
        }
        src = e.source();
    }
    None
}

/// What berthd's TLS alert means for the user.
fn refused_certificate(alert: rustls::AlertDescription) -> Error {
    let why = match alert {
        rustls::AlertDescription::UnknownCA => "it was not issued by berthd's CA",
        rustls::AlertDescription::CertificateRevoked => "it has been revoked",
        rustls::AlertDescription::CertificateExpired => "it has expired",
        rustls::AlertDescription::CertificateRequired => "none was sent",
        _ => "the TLS handshake was refused",
    };
    Error::Refused {
        kind: ErrorKind::Unauthenticated,
        message: format!(
            "berthd refused this client certificate ({why}; TLS alert {alert:?}): use one issued by berthd's CA, e.g. `berth cert issue admin --name NAME --out DIR` on the berth host, and pass that folder with --tls-dir"
        ),
    }
}

/// One TLS handshake with the files before the gRPC channel opens: with TLS 1.3 berthd
/// refuses a client certificate after the client thinks the handshake is done, and the
/// channel then reports only "transport error" and "broken pipe". Here the alert is read
/// and explained. `Err(Err(reason))`: the handshake itself failed (server certificate).
async fn preflight(
    host: &str,
    port: u16,
    ca: &[u8],
    cert: &[u8],
    key: &[u8],
) -> Result<(), Result<Error, String>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::AsyncReadExt;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca).filter_map(Result::ok) {
        let _ = roots.add(c);
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .filter_map(Result::ok)
        .collect();
    let Ok(key) = PrivateKeyDer::from_pem_slice(key) else {
        return Ok(()); // tonic reports unreadable files in its own words
    };
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let Ok(cfg) = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots))
    else {
        return Ok(());
    };
    let Ok(mut cfg) = cfg.with_client_auth_cert(chain, key) else {
        return Ok(());
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let Ok(name) = ServerName::try_from(host.to_string()) else {
        return Ok(());
    };
    let step = std::time::Duration::from_secs(10);
    let Ok(Ok(tcp)) =
        tokio::time::timeout(step, tokio::net::TcpStream::connect((host, port))).await
    else {
        return Ok(()); // unreachable: the channel says so
    };
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let alert =
        |e: &std::io::Error| match e.get_ref().and_then(|x| x.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::AlertReceived(a)) => Some(*a),
            _ => None,
        };
    let mut tls = match tokio::time::timeout(step, connector.connect(name, tcp)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            return Err(match alert(&e) {
                Some(a) => Ok(refused_certificate(a)),
                None => Err(e.to_string()),
            });
        }
        Err(_) => return Ok(()),
    };
    // An accepting berthd speaks first (HTTP/2 SETTINGS); a refusing one sends an alert.
    let mut b = [0u8; 1];
    match tokio::time::timeout(step, tls.read(&mut b)).await {
        Ok(Err(e)) => match alert(&e) {
            Some(a) => Err(Ok(refused_certificate(a))),
            None => Ok(()),
        },
        Ok(Ok(_)) | Err(_) => Ok(()),
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Error {
        use tonic::Code;
        if let Some(alert) = alert_in(&s) {
            return refused_certificate(alert);
        }
        let kind = match s.code() {
            Code::InvalidArgument | Code::OutOfRange => ErrorKind::InvalidArgument,
            Code::NotFound => ErrorKind::NotFound,
            Code::AlreadyExists => ErrorKind::AlreadyExists,
            Code::FailedPrecondition => ErrorKind::FailedPrecondition,
            Code::PermissionDenied => ErrorKind::PermissionDenied,
            Code::Unauthenticated => ErrorKind::Unauthenticated,
            Code::Unavailable | Code::DeadlineExceeded => ErrorKind::Unavailable,
            Code::ResourceExhausted => ErrorKind::ResourceExhausted,
            Code::Aborted | Code::Cancelled => ErrorKind::Aborted,
            Code::DataLoss => ErrorKind::DataLoss,
            Code::Internal | Code::Unknown => ErrorKind::Internal,
            Code::Ok | Code::Unimplemented => ErrorKind::Other,
        };
        Error::Refused {
            kind,
            message: s.message().to_string(),
        }
    }
}

fn refusal_message(kind: ErrorKind, msg: &str) -> String {
    match kind {
        ErrorKind::PermissionDenied => format!("permission denied: {msg}"),
        ErrorKind::Unauthenticated => format!("not authenticated: {msg}"),
        ErrorKind::Unavailable => {
            format!("berthd is unavailable ({msg}): is it running? start it with `berthd`")
        }
        ErrorKind::Internal => format!("berthd failed: {msg} (see berthd's log for details)"),
        ErrorKind::DataLoss => format!("berthd's state is damaged: {msg}"),
        ErrorKind::InvalidArgument
        | ErrorKind::NotFound
        | ErrorKind::AlreadyExists
        | ErrorKind::FailedPrecondition
        | ErrorKind::ResourceExhausted
        | ErrorKind::Aborted
        | ErrorKind::Other => msg.to_string(),
    }
}

/// A transport error and its causes, as one line.
pub(crate) fn transport_reason(e: &tonic::transport::Error) -> String {
    let mut out = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

/// Where berthd is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The local unix socket.
    Unix(PathBuf),
    /// A remote daemon over mutual TLS, with the folder holding ca.pem, cert.pem, key.pem.
    Tcp {
        /// Host name or IP (without brackets).
        host: String,
        /// Port.
        port: u16,
        /// The TLS files.
        tls_dir: PathBuf,
    },
}

impl Target {
    /// Parses `unix:///path` or `tcp://host:port` (docker's -H syntax).
    pub fn parse(host: &str, tls_dir: &Path) -> Result<Target, Error> {
        if let Some(p) = host.strip_prefix("unix://") {
            return Ok(Target::Unix(PathBuf::from(p)));
        }
        let rest = host
            .strip_prefix("tcp://")
            .ok_or_else(|| Error::InvalidHost(host.to_string()))?;
        let (h, p) = rest
            .rsplit_once(':')
            .ok_or_else(|| Error::InvalidHost(host.to_string()))?;
        let port = p
            .parse::<u16>()
            .map_err(|_| Error::InvalidHost(host.to_string()))?;
        let h = h.trim_start_matches('[').trim_end_matches(']');
        if h.is_empty() {
            return Err(Error::InvalidHost(host.to_string()));
        }
        Ok(Target::Tcp {
            host: h.to_string(),
            port,
            tls_dir: tls_dir.to_path_buf(),
        })
    }

    fn describe(&self) -> String {
        match self {
            Target::Unix(p) => p.display().to_string(),
            Target::Tcp { host, port, .. } if host.contains(':') => {
                format!("tcp://[{host}]:{port}")
            }
            Target::Tcp { host, port, .. } => format!("tcp://{host}:{port}"),
        }
    }
}

/// What `berth system info` shows.
#[derive(Debug, Clone, Serialize)]
pub struct SystemInfo {
    /// berthd version.
    pub version: String,
    /// State folder.
    pub state_dir: String,
    /// Control socket.
    pub socket: String,
    /// TCP mTLS listeners.
    pub tcp_listeners: Vec<String>,
    /// Registry addresses (host:port), empty when the registry is off.
    pub registry_listeners: Vec<String>,
    /// Registry storage root.
    pub registry_root: String,
    /// CA subject.
    pub ca_subject: String,
    /// CA SHA-256 fingerprint.
    pub ca_fingerprint_sha256: String,
    /// CA expiry.
    #[serde(with = "time::serde::rfc3339::option")]
    pub ca_not_after: Option<OffsetDateTime>,
    /// docker's certs.d root.
    pub docker_certs_root: String,
    /// containers' certs.d root.
    pub containers_certs_root: String,
    /// Daemon pid.
    pub pid: u32,
    /// Daemon start time.
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    /// How the daemon saw this caller, e.g. "uid 0 (unix socket)".
    pub caller: String,
}

/// What to issue.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// Profile.
    pub kind: CertKind,
    /// Names.
    pub names: Names,
    /// Validity in days (`None`: the daemon's default).
    pub validity_days: Option<u32>,
    /// Key algorithm.
    pub key_algorithm: KeyAlgorithm,
    /// Ask for the private key.
    pub return_key: bool,
}

/// An issued certificate as the caller receives it.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The index entry.
    pub record: CertRecord,
    /// The key, when asked for.
    pub key: Option<SecretKeyPem>,
    /// The CA certificate, PEM.
    pub ca_pem: String,
}

/// A renewal: the successor, and what happened to the certs.d entries of the old one.
#[derive(Debug, Clone)]
pub struct Renewed {
    /// The new certificate.
    pub issued: IssuedCert,
    /// certs.d entries on berthd's host that now hold it.
    pub certs: crate::certsd::Followed,
}

/// Which certs.d trees an install or removal touches besides docker's (always).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trees {
    /// containers/image's (podman, skopeo, buildah).
    pub containers: bool,
    /// containerd's hosts tree.
    pub containerd: bool,
}

impl Trees {
    /// docker's tree only.
    pub const DOCKER: Trees = Trees {
        containers: false,
        containerd: false,
    };
    /// docker's and containers'.
    pub const CONTAINERS: Trees = Trees {
        containers: true,
        containerd: false,
    };
}

/// A connected client.
#[derive(Debug, Clone)]
pub struct Client {
    channel: Channel,
    /// The address and the time a call there may take, for a berthd reached over the
    /// network by a host's own tooling (join, renew, a replica's enrolment), where nobody
    /// may be watching: a server that takes the connection and never answers would
    /// otherwise hold `berth renew` from a systemd timer forever. `None` over the local
    /// socket and `--host`, where an operator is there to interrupt.
    deadline: Option<(String, std::time::Duration)>,
}

impl Client {
    /// Connects to berthd and fails early, with a hint, when it is not there.
    pub async fn connect(target: &Target) -> Result<Client, Error> {
        let channel = match target {
            Target::Unix(path) => {
                // A plain connect first, to tell "not running" from "not allowed".
                if let Err(e) = tokio::net::UnixStream::connect(path).await {
                    return Err(match e.kind() {
                        std::io::ErrorKind::PermissionDenied => {
                            Error::SocketPermission(path.clone())
                        }
                        _ => Error::Unreachable {
                            target: target.describe(),
                            source: e,
                        },
                    });
                }
                let path = path.clone();
                Endpoint::from_static("http://berthd.sock")
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(path).await?,
                            ))
                        }
                    }))
                    .await
                    .map_err(|source| Error::Connect {
                        target: target.describe(),
                        reason: transport_reason(&source),
                    })?
            }
            Target::Tcp {
                host,
                port,
                tls_dir,
            } => {
                let read = |name: &str| {
                    std::fs::read(tls_dir.join(name)).map_err(|e| Error::TlsFiles {
                        dir: tls_dir.clone(),
                        reason: format!("{name}: {e}"),
                    })
                };
                let (ca, cert, key) = (read("ca.pem")?, read("cert.pem")?, read("key.pem")?);
                preflight(host, *port, &ca, &cert, &key)
                    .await
                    .map_err(|e| {
                        e.unwrap_or_else(|reason| Error::Connect {
                            target: target.describe(),
                            reason,
                        })
                    })?;
                let tls = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(ca))
                    .identity(Identity::from_pem(cert, key))
                    .domain_name(host.clone());
                let url = format!("https://{}", target.describe().trim_start_matches("tcp://"));
                let endpoint = Endpoint::from_shared(url)
                    .map_err(|_| Error::InvalidHost(target.describe()))?
                    .tls_config(tls)
                    .map_err(|source| Error::Connect {
                        target: target.describe(),
                        reason: transport_reason(&source),
                    })?;
                endpoint.connect().await.map_err(|source| {
                    let io = std::error::Error::source(&source)
                        .and_then(|s| s.downcast_ref::<std::io::Error>())
                        .map(|e| std::io::Error::new(e.kind(), e.to_string()));
                    match io {
                        Some(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                            Error::Unreachable {
                                target: target.describe(),
                                source: io,
                            }
                        }
                        _ => Error::Connect {
                            target: target.describe(),
                            reason: transport_reason(&source),
                        },
                    }
                })?
            }
        };
        Ok(Client {
            channel,
            deadline: None,
        })
    }

    fn system(&self) -> SystemServiceClient<Channel> {
        SystemServiceClient::new(self.channel.clone())
    }

    /// The connection, for callers that speak the gRPC API directly (other page sizes,
    /// calls this client does not wrap).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    fn pki(&self) -> PkiServiceClient<Channel> {
        PkiServiceClient::new(self.channel.clone())
    }

    fn certs(&self) -> CertsServiceClient<Channel> {
        CertsServiceClient::new(self.channel.clone())
    }

    /// berthd's version.
    pub async fn version(&self) -> Result<(String, String), Error> {
        let r = self
            .system()
            .version(pb::VersionRequest {})
            .await?
            .into_inner();
        Ok((r.version, r.api_version))
    }

    /// True once berthd serves every service.
    pub async fn health(&self) -> Result<bool, Error> {
        let r = self
            .system()
            .health(pb::HealthRequest {})
            .await?
            .into_inner();
        Ok(r.status == i32::from(pb::ServingStatus::Serving))
    }

    /// Where berthd keeps things and who it thinks we are.
    pub async fn info(&self) -> Result<SystemInfo, Error> {
        let r = self.system().info(pb::InfoRequest {}).await?.into_inner();
        let caller = match r.caller {
            Some(c) if c.transport == i32::from(pb::Transport::TcpMtls) => {
                format!(
                    "{} (mutual TLS, serial {})",
                    c.common_name, c.certificate_serial
                )
            }
            Some(c) => format!(
                "uid {} gid {} (unix socket)",
                c.uid.unwrap_or_default(),
                c.gid.unwrap_or_default()
            ),
            None => String::new(),
        };
        Ok(SystemInfo {
            version: r.version,
            state_dir: r.state_dir,
            socket: r.socket_path,
            tcp_listeners: r.tcp_listeners,
            registry_listeners: r.registry_listeners,
            registry_root: r.registry_root,
            ca_subject: r.ca_subject,
            ca_fingerprint_sha256: r.ca_fingerprint_sha256,
            ca_not_after: r.ca_not_after.map(time_in),
            docker_certs_root: r.docker_certs_root,
            containers_certs_root: r.containers_certs_root,
            pid: r.pid,
            started_at: r.started_at.map(time_in),
            caller,
        })
    }

    /// The CA certificate (PEM) and its details.
    pub async fn ca(&self) -> Result<(String, CertDetails), Error> {
        let r = self.pki().get_ca(pb::GetCaRequest {}).await?.into_inner();
        let d = r
            .details
            .ok_or_else(|| Error::Protocol("CA without details".into()))?;
        Ok((r.certificate_pem, convert::details_in(d)?))
    }

    /// Issues a certificate.
    pub async fn issue(&self, req: IssueRequest) -> Result<IssuedCert, Error> {
        let r = self
            .pki()
            .issue_certificate(pb::IssueCertificateRequest {
                kind: kind_out(req.kind).into(),
                names: Some(names_out(&req.names)),
                validity_days: req.validity_days.unwrap_or(0),
                key_algorithm: key_algorithm_out(req.key_algorithm).into(),
                return_private_key: req.return_key,
            })
            .await?
            .into_inner();
        issued_in(r.certificate, r.private_key_pem, r.ca_certificate_pem)
    }

    /// Signs a CSR; returns the entry and the CA PEM.
    pub async fn sign_csr(
        &self,
        csr: Vec<u8>,
        profile: CertKind,
        validity_days: Option<u32>,
    ) -> Result<(CertRecord, String), Error> {
        let r = self
            .pki()
            .sign_csr(pb::SignCsrRequest {
                csr,
                profile: kind_out(profile).into(),
                validity_days: validity_days.unwrap_or(0),
            })
            .await?
            .into_inner();
        let rec = r
            .certificate
            .ok_or_else(|| Error::Protocol("no certificate in the answer".into()))?;
        Ok((convert::record_in(rec)?, r.ca_certificate_pem))
    }

    /// Lists issued certificates.
    pub async fn list(
        &self,
        kind: Option<CertKind>,
        common_name: Option<String>,
    ) -> Result<Vec<CertRecord>, Error> {
        // Page by page: one answer with 100,000 records would pass the message limit.
        let mut out = Vec::new();
        let mut page_token = String::new();
        loop {
            let r = self
                .pki()
                .list_certificates(pb::ListCertificatesRequest {
                    kind: kind
                        .map(kind_out)
                        .unwrap_or(pb::CertificateKind::Unspecified)
                        .into(),
                    common_name: common_name.clone().unwrap_or_default(),
                    page_size: 2000,
                    page_token,
                })
                .await?
                .into_inner();
            for c in r.certificates {
                out.push(convert::record_in(c)?);
            }
            if r.next_page_token.is_empty() {
                return Ok(out);
            }
            page_token = r.next_page_token;
        }
    }

    /// Decodes certificates (PEM bundle or DER).
    pub async fn inspect(&self, data: Vec<u8>) -> Result<Vec<CertDetails>, Error> {
        let r = self
            .pki()
            .inspect_certificate(pb::InspectCertificateRequest { data })
            .await?
            .into_inner();
        Ok(r.certificates
            .into_iter()
            .map(convert::details_in)
            .collect::<Result<_, _>>()?)
    }

    /// Revokes a certificate.
    pub async fn revoke(&self, serial: &str) -> Result<CertRecord, Error> {
        let r = self
            .pki()
            .revoke_certificate(pb::RevokeCertificateRequest {
                serial: serial.to_string(),
            })
            .await?
            .into_inner();
        Ok(convert::record_in(r.certificate.ok_or_else(|| {
            Error::Protocol("no certificate in the answer".into())
        })?)?)
    }

    /// Renews a certificate: same kind and names, fresh key, new serial.
    pub async fn renew(
        &self,
        serial: &str,
        validity_days: Option<u32>,
        return_key: bool,
    ) -> Result<Renewed, Error> {
        let r = self
            .pki()
            .renew_certificate(pb::RenewCertificateRequest {
                serial: serial.to_string(),
                validity_days: validity_days.unwrap_or(0),
                return_private_key: return_key,
            })
            .await?
            .into_inner();
        Ok(Renewed {
            issued: issued_in(r.certificate, r.private_key_pem, r.ca_certificate_pem)?,
            certs: crate::certsd::Followed {
                updated: r.certs_updated.into_iter().map(PathBuf::from).collect(),
                problems: r.certs_problems,
            },
        })
    }

    /// The current CRL.
    pub async fn crl(&self) -> Result<Crl, Error> {
        let r = self.pki().get_crl(pb::GetCrlRequest {}).await?.into_inner();
        Ok(Crl {
            pem: r.crl_pem,
            revoked_count: r.revoked_count as usize,
            this_update: r
                .this_update
                .map(time_in)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
            next_update: r
                .next_update
                .map(time_in)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
        })
    }

    /// Installs certs.d files for a registry.
    pub async fn certs_install(
        &self,
        host: &str,
        client_name: Option<&str>,
        trees: Trees,
        dry_run: bool,
        force: bool,
    ) -> Result<InstallOutcome, Error> {
        let r = self
            .certs()
            .install_certs(pb::InstallCertsRequest {
                host: host.to_string(),
                client_name: client_name.unwrap_or_default().to_string(),
                containers: trees.containers,
                containerd: trees.containerd,
                dry_run,
                force,
            })
            .await?
            .into_inner();
        Ok(convert::install_in(r)?)
    }

    /// Removes the certs.d files berth wrote for a registry.
    pub async fn certs_remove(
        &self,
        host: &str,
        trees: Trees,
        dry_run: bool,
    ) -> Result<Vec<FileAction>, Error> {
        let r = self
            .certs()
            .remove_certs(pb::RemoveCertsRequest {
                host: host.to_string(),
                containers: trees.containers,
                containerd: trees.containerd,
                dry_run,
            })
            .await?
            .into_inner();
        Ok(convert::actions_in(r.actions)?)
    }

    /// Every certs.d entry.
    pub async fn certs_list(&self) -> Result<Vec<Entry>, Error> {
        let r = self
            .certs()
            .list_certs(pb::ListCertsRequest {})
            .await?
            .into_inner();
        Ok(r.entries
            .into_iter()
            .map(convert::entry_in)
            .collect::<Result<_, _>>()?)
    }

    /// The certs.d entries of one registry.
    pub async fn certs_verify(&self, host: &str) -> Result<Vec<Entry>, Error> {
        let r = self
            .certs()
            .verify_certs(pb::VerifyCertsRequest {
                host: host.to_string(),
            })
            .await?
            .into_inner();
        Ok(r.entries
            .into_iter()
            .map(convert::entry_in)
            .collect::<Result<_, _>>()?)
    }
}

/// A fresh certificate from the wire: its entry, the key when one was returned, the CA.
fn issued_in(
    certificate: Option<pb::IssuedCertificate>,
    private_key_pem: String,
    ca_pem: String,
) -> Result<IssuedCert, Error> {
    let rec = certificate.ok_or_else(|| Error::Protocol("no certificate in the answer".into()))?;
    Ok(IssuedCert {
        record: convert::record_in(rec)?,
        key: (!private_key_pem.is_empty()).then(|| SecretKeyPem::new(private_key_pem)),
        ca_pem,
    })
}

/// Decodes certificates without a daemon (no CA relationship), for `cert inspect` when
/// berthd is not reachable.
pub fn inspect_offline(data: &[u8]) -> Result<Vec<CertDetails>, pki::Error> {
    pki::inspect_standalone(data)
}
