//! berthd: the control daemon. It owns the state folder (one daemon per folder, enforced by
//! a lock file), serves the control API on a unix socket and optionally on TCP with mutual
//! TLS, and stops cleanly when its shutdown future completes.
//!
//! `Daemon::open` takes the lock and loads state, `Daemon::bind` binds listeners (tests ask
//! for port 0 and read the port back), `Daemon::serve` runs until shutdown.

mod auth;
mod listen;
mod service;
mod status;
mod tls;

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{Read, Seek, Write};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::transport::server::Router;

pub use auth::Caller;
pub use listen::Listeners;

use crate::certsd::{self, Installer};
use crate::config::Config;
use crate::pki::{self, Names, Pki};
use crate::proto::certs_service_server::CertsServiceServer;
use crate::proto::pki_service_server::PkiServiceServer;
use crate::proto::registry_service_server::RegistryServiceServer;
use crate::proto::system_service_server::SystemServiceServer;
use crate::registry::{self, Registry, Storage};
use crate::{fsutil, proto};

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another berthd holds the lock on this state folder.
    #[error(
        "another berthd (pid {pid}) is using the state folder {state_dir}; stop it first, or start this one with --root DIR"
    )]
    AlreadyRunning {
        /// The contested folder.
        state_dir: PathBuf,
        /// The pid recorded in the lock file.
        pid: String,
    },
    /// The state folder cannot be created, read or locked.
    #[error("state folder {path} is unusable: {source}")]
    StateDir {
        /// The folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A live daemon answers on the socket path.
    #[error("a daemon is already listening on {0}; stop it or choose another --socket")]
    SocketInUse(PathBuf),
    /// The socket path is taken by something that is not a socket.
    #[error(
        "{0} exists and is not a socket; berthd will not delete it: move it away or choose another --socket"
    )]
    NotASocket(PathBuf),
    /// Binding a listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address or socket path.
        addr: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `control.group` names no group on this host.
    #[error(
        "control.group {0:?} is not a group on this host: create it (groupadd) or fix the config"
    )]
    UnknownGroup(String),
    /// Building the TLS configuration failed.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The PKI could not be opened.
    #[error(transparent)]
    Pki(#[from] pki::Error),
    /// The certs.d installer could not be opened.
    #[error(transparent)]
    Certsd(#[from] certsd::Error),
    /// A file operation failed.
    #[error(transparent)]
    Fs(#[from] fsutil::Error),
    /// A gRPC server failed.
    #[error("control server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Everything the request handlers share.
pub(crate) struct State {
    pub config: Config,
    pub pki: Pki,
    pub certsd: Installer,
    pub policy: auth::Policy,
    pub started_at: OffsetDateTime,
    control_tls: ArcSwapOption<rustls::ServerConfig>,
    control_names: OnceLock<Names>,
    tcp_addrs: OnceLock<Vec<SocketAddr>>,
    /// The embedded registry (served when `registry.enabled`).
    pub registry: Registry,
    registry_tls: OnceLock<Arc<ArcSwap<rustls::ServerConfig>>>,
    registry_names: OnceLock<Names>,
    registry_addrs: OnceLock<Vec<SocketAddr>>,
}

impl State {
    pub(crate) fn tcp_addrs(&self) -> Vec<SocketAddr> {
        self.tcp_addrs.get().cloned().unwrap_or_default()
    }

    pub(crate) fn registry_addrs(&self) -> Vec<SocketAddr> {
        self.registry_addrs.get().cloned().unwrap_or_default()
    }

    /// Rebuilds the TLS configs of the TCP listeners: a new CRL after a revocation, or a
    /// renewed server certificate. No-op for listeners that are not running.
    pub(crate) fn reload_tls(&self) -> Result<(), tonic::Status> {
        self.reload_tls_inner()
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }

    fn reload_tls_inner(&self) -> Result<(), Error> {
        if let Some(names) = self.control_names.get() {
            self.control_tls
                .store(Some(tls::control_config(&self.pki, names)?));
        }
        if let (Some(names), Some(slot)) = (self.registry_names.get(), self.registry_tls.get()) {
            slot.store(tls::registry_config(&self.pki, names)?);
        }
        Ok(())
    }
}

/// An opened daemon: state loaded, lock held, not yet serving.
pub struct Daemon {
    state: Arc<State>,
    _lock: File,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("state_dir", &self.state.config.state_dir)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// Creates or opens the state folder, takes its lock, and loads (or on first start
    /// creates) the CA and the certificate index.
    pub fn open(config: Config) -> Result<Daemon, Error> {
        let dir = &config.state_dir;
        let state_err = |source| Error::StateDir {
            path: dir.clone(),
            source,
        };
        fsutil::create_dir_all(dir, 0o700).map_err(|e| match e {
            fsutil::Error::Io { source, .. } => state_err(source),
            other => Error::Fs(other),
        })?;
        let lock = take_lock(dir)?;
        let group = listen::resolve_group(config.control.group.as_deref())?;
        let pki = Pki::open(dir, &config.pki)?;
        let certsd = Installer::open(dir, &config.certsd)?;
        let registry_root = config.registry_root();
        fsutil::create_dir_all(&registry_root, 0o755)?;
        let registry = Registry::new(Storage::new(&registry_root), config.registry.delete_enabled);
        tracing::info!(state_dir = %dir.display(), ca = %pki.ca().fingerprint(), "berthd state opened");
        Ok(Daemon {
            state: Arc::new(State {
                policy: auth::Policy {
                    own_uid: nix::unistd::geteuid().as_raw(),
                    group,
                },
                config,
                pki,
                certsd,
                started_at: OffsetDateTime::now_utc(),
                control_tls: ArcSwapOption::empty(),
                control_names: OnceLock::new(),
                tcp_addrs: OnceLock::new(),
                registry,
                registry_tls: OnceLock::new(),
                registry_names: OnceLock::new(),
                registry_addrs: OnceLock::new(),
            }),
            _lock: lock,
        })
    }

    /// Binds the configured listeners.
    pub fn bind(&self) -> Result<Listeners, Error> {
        let mut l = listen::bind(&self.state.config.control, self.state.policy.group)?;
        let reg = &self.state.config.registry;
        if reg.enabled {
            match listen::bind_registry(&reg.listen) {
                Ok(r) => l.registry = r,
                Err(e) => {
                    let _ = std::fs::remove_file(&l.socket);
                    return Err(e);
                }
            }
        }
        Ok(l)
    }

    /// SHA-256 fingerprint of the CA, for the startup banner.
    pub fn ca_fingerprint(&self) -> String {
        self.state.pki.ca().fingerprint()
    }

    /// Serves the control API on `listeners` until `shutdown` completes, then stops
    /// accepting, lets running requests finish and removes the socket file.
    pub async fn serve(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), Error> {
        let state = self.state.clone();
        let tcp_addrs = listeners.tcp_addrs();
        let registry_addrs = listeners.registry_addrs();
        let _ = state.registry_addrs.set(registry_addrs.clone());
        let _ = state.tcp_addrs.set(tcp_addrs.clone());
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut servers = tokio::task::JoinSet::new();

        let socket = listeners.socket.clone();
        let unix =
            tokio::net::UnixListener::from_std(listeners.unix).map_err(|source| Error::Bind {
                addr: socket.display().to_string(),
                source,
            })?;
        servers.spawn(
            router(&state)?.serve_with_incoming_shutdown(
                UnixListenerStream::new(unix),
                stopped(stop_rx.clone()),
            ),
        );

        if !listeners.tcp.is_empty() {
            let names = tls::service_names(&tcp_addrs, &state.config.control.tls_names);
            state
                .control_tls
                .store(Some(tls::control_config(&state.pki, &names)?));
            let _ = state.control_names.set(names);
            for l in listeners.tcp {
                let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
                let l = TcpListener::from_std(l).map_err(|source| Error::Bind { addr, source })?;
                let (tx, rx) = mpsc::channel(64);
                tokio::spawn(accept_tls(l, state.clone(), tx, stop_rx.clone()));
                servers.spawn(router(&state)?.serve_with_incoming_shutdown(
                    ReceiverStream::new(rx),
                    stopped(stop_rx.clone()),
                ));
            }
        }

        let mut registry_tasks = tokio::task::JoinSet::new();
        if !listeners.registry.is_empty() {
            let names = tls::service_names(&registry_addrs, &state.config.registry.names);
            let cfg = Arc::new(ArcSwap::new(tls::registry_config(&state.pki, &names)?));
            let _ = state.registry_names.set(names);
            let _ = state.registry_tls.set(cfg.clone());
            let app = registry::http::router(state.registry.clone());
            for l in listeners.registry {
                let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
                let l = TcpListener::from_std(l).map_err(|source| Error::Bind { addr, source })?;
                registry_tasks.spawn(registry::http::tls::serve(
                    l,
                    cfg.clone(),
                    app.clone(),
                    stop_rx.clone(),
                ));
            }
            tracing::info!(addrs = ?registry_addrs, root = %state.registry.storage().root().display(), "registry serving (mutual TLS)");
        }
        registry_tasks.spawn(renew_certificates(state.clone(), stop_rx.clone()));
        registry_tasks.spawn(purge_uploads(state.clone(), stop_rx.clone()));
        tracing::info!(socket = %socket.display(), tcp = ?tcp_addrs, "berthd serving");

        let result = tokio::select! {
            () = shutdown => Ok(()),
            Some(r) = servers.join_next() => match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(Error::Serve(e)),
                Err(e) => Err(Error::Tls(format!("server task failed: {e}"))),
            },
        };
        let _ = stop_tx.send(true);
        while servers.join_next().await.is_some() {}
        while registry_tasks.join_next().await.is_some() {}
        let _ = std::fs::remove_file(&socket);
        tracing::info!("berthd stopped");
        result
    }
}

fn router(state: &Arc<State>) -> Result<Router, Error> {
    let authz = auth::Authorizer {
        state: state.clone(),
    };
    let (health_reporter, health) = tonic_health::server::health_reporter();
    // Every berth service is ready once the router exists; report them all as serving.
    tokio::spawn(async move {
        health_reporter
            .set_serving::<SystemServiceServer<service::SystemSvc>>()
            .await;
        health_reporter
            .set_serving::<PkiServiceServer<service::PkiSvc>>()
            .await;
        health_reporter
            .set_serving::<CertsServiceServer<service::CertsSvc>>()
            .await;
        health_reporter
            .set_serving::<RegistryServiceServer<service::RegistrySvc>>()
            .await;
    });
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Tls(format!("reflection: {e}")))?;
    Ok(Server::builder()
        .add_service(InterceptedService::new(
            SystemServiceServer::new(service::SystemSvc {
                state: state.clone(),
            }),
            authz.clone(),
        ))
        .add_service(InterceptedService::new(
            PkiServiceServer::new(service::PkiSvc {
                state: state.clone(),
            }),
            authz.clone(),
        ))
        .add_service(InterceptedService::new(
            CertsServiceServer::new(service::CertsSvc {
                state: state.clone(),
            }),
            authz.clone(),
        ))
        .add_service(InterceptedService::new(
            RegistryServiceServer::new(service::RegistrySvc {
                state: state.clone(),
            }),
            authz.clone(),
        ))
        .add_service(InterceptedService::new(health, authz.clone()))
        .add_service(InterceptedService::new(reflection, authz)))
}

/// How often berthd checks whether its own server certificates need renewing.
const RENEW_CHECK: Duration = Duration::from_secs(3600);

/// Renews the listeners' server certificates once less than a third of their life is left
/// (the PKI decides; this only asks regularly), until stopped.
async fn renew_certificates(state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(RENEW_CHECK);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let st = state.clone();
                let r = tokio::task::spawn_blocking(move || st.reload_tls_inner()).await;
                if let Ok(Err(e)) = r {
                    tracing::error!(error = %e, "renewing berthd's server certificates failed");
                }
            }
            _ = stop.changed() => return,
        }
    }
}

/// Purges upload sessions older than `registry.upload_max_age_hours`, hourly.
async fn purge_uploads(state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let max_age = Duration::from_secs(
        state
            .config
            .registry
            .upload_max_age_hours
            .saturating_mul(3600),
    );
    let mut tick = tokio::time::interval(RENEW_CHECK);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                match state.registry.storage().purge_uploads(Some(max_age), false).await {
                    Ok(p) if !p.is_empty() => tracing::info!(purged = p.len(), "stale uploads purged"),
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "purging stale uploads failed"),
                }
            }
            _ = stop.changed() => return,
        }
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Accepts TCP connections and runs each TLS handshake in its own task with a deadline, so
/// a slow or silent client never stalls other accepts. Refused handshakes are logged.
async fn accept_tls(
    listener: TcpListener,
    state: Arc<State>,
    tx: mpsc::Sender<Result<TlsStream<TcpStream>, std::io::Error>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "control accept failed");
                    // Back off so an exhausted fd table does not spin the loop.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let Some(cfg) = state.control_tls.load_full() else {
            return;
        };
        let acceptor = TlsAcceptor::from(cfg);
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send(Ok(tls)).await;
                }
                Ok(Err(e)) => {
                    tracing::warn!(peer = %peer, error = %e, "control TLS handshake refused")
                }
                Err(_) => tracing::warn!(peer = %peer, "control TLS handshake timed out"),
            }
        });
    }
}

/// Takes an exclusive lock on `<state>/berthd.lock` and records our pid in it. The kernel
/// drops the lock when the process dies, so a crash never leaves the folder locked.
fn take_lock(dir: &std::path::Path) -> Result<File, Error> {
    let path = dir.join("berthd.lock");
    let err = |source| Error::StateDir {
        path: path.clone(),
        source,
    };
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(&path)
        .map_err(err)?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            return Err(Error::AlreadyRunning {
                state_dir: dir.to_path_buf(),
                pid: pid.trim().to_string(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(err(e)),
    }
    f.set_len(0).map_err(err)?;
    f.rewind().map_err(err)?;
    writeln!(f, "{}", std::process::id()).map_err(err)?;
    Ok(f)
}
