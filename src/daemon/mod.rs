//! berthd: the control daemon. It owns the state folder (one daemon per folder, enforced by
//! a lock file), serves the control API on a unix socket and optionally on TCP with mutual
//! TLS, and stops cleanly when its shutdown future completes.
//!
//! `Daemon::open` takes the lock and loads state, `Daemon::bind` binds listeners (tests ask
//! for port 0 and read the port back), `Daemon::serve` runs until shutdown.

mod auth;
mod listen;
mod replica;
mod scrape;
mod service;
mod status;

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{Read, Seek, Write};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;

pub use listen::Listeners;
pub use replica::Replica;

use crate::audit::Audit;
use crate::certsd::{self, Installer};
use crate::config::Config;
use crate::identity::Identity;
use crate::net::{self, Gate, Listener, Refusal, Served};
use crate::pki::{self, Names, Pki};
use crate::proto::audit_service_server::AuditServiceServer;
use crate::proto::certs_service_server::CertsServiceServer;
use crate::proto::enrol_service_server::EnrolServiceServer;
use crate::proto::pki_service_server::PkiServiceServer;
use crate::proto::registry_service_server::RegistryServiceServer;
use crate::proto::replica_service_server::ReplicaServiceServer;
use crate::proto::system_service_server::SystemServiceServer;
use crate::proto::token_service_server::TokenServiceServer;
use crate::registry::{Backend, Registry};
use crate::{fsutil, oci, proto};

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
    /// Building a TLS configuration failed.
    #[error(transparent)]
    Tls(#[from] net::tls::Error),
    /// The gRPC reflection service could not be built.
    #[error("gRPC reflection setup failed: {0}")]
    Reflection(String),
    /// The PKI could not be opened.
    #[error(transparent)]
    Pki(#[from] pki::Error),
    /// The registry's policy file is invalid.
    #[error(transparent)]
    Policy(#[from] crate::registry::policy::Error),
    /// The certs.d installer could not be opened.
    #[error(transparent)]
    Certsd(#[from] certsd::Error),
    /// A file operation failed.
    #[error(transparent)]
    Fs(#[from] fsutil::Error),
    /// `control.roles` says something impossible.
    #[error("invalid control.roles: {0}")]
    Roles(String),
    /// The audit log could not be opened.
    #[error(transparent)]
    Audit(#[from] crate::audit::Error),
    /// A registry replica cannot start: its config, or its primary, says why.
    #[error("registry replica: {0}")]
    Replica(String),
    /// The registry's store could not be set up (an S3 bucket's settings).
    #[error("registry storage: {0}")]
    Storage(#[source] crate::registry::Error),
}

/// Everything the request handlers share.
pub(crate) struct State {
    pub config: Config,
    pub pki: Pki,
    pub certsd: Installer,
    pub policy: auth::Policy,
    pub started_at: OffsetDateTime,
    /// The embedded registry (served when `registry.enabled`).
    pub registry: Registry,
    /// The audit log (the cores record in it; `berth audit` reads it).
    pub audit: Audit,
    /// What the listeners and cores count, for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The per-request revocation and expiry check of every TCP listener.
    pub gate: Arc<Gate>,
    /// Failed enrolments per peer address, for rate limiting.
    pub enrol_failures: auth::Failures,
    /// Counts changes of the trust material replicas enforce (a revocation, a re-signed
    /// CRL, a policy reload); every watch stream sends a snapshot when it moves.
    pub trust: watch::Sender<u64>,
    /// True once the CA is loaded and every listener serves; Health says so.
    ready: AtomicBool,
    /// Turns true when shutdown begins: listeners drain, and endless streams (events) end
    /// so the drain is not held up by them.
    stopping: watch::Sender<bool>,
    control_tls: OnceLock<(Names, Arc<ArcSwap<rustls::ServerConfig>>)>,
    registry_tls: OnceLock<(Names, Arc<ArcSwap<rustls::ServerConfig>>)>,
    tcp_addrs: OnceLock<Vec<SocketAddr>>,
    registry_addrs: OnceLock<Vec<SocketAddr>>,
}

impl State {
    pub(crate) fn tcp_addrs(&self) -> Vec<SocketAddr> {
        self.tcp_addrs.get().cloned().unwrap_or_default()
    }

    pub(crate) fn registry_addrs(&self) -> Vec<SocketAddr> {
        self.registry_addrs.get().cloned().unwrap_or_default()
    }

    /// Whether berthd is ready: its CA is loaded and every listener is serving.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// A receiver that turns true when shutdown begins.
    pub(crate) fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// Takes in a revocation or a renewed server certificate: the gate refuses revoked
    /// callers on open connections from the next request on, and new handshakes use the
    /// new CRL and certificates.
    pub(crate) fn reload_tls(&self) -> Result<(), tonic::Status> {
        self.reload_tls_inner()
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }

    /// Whether the gate has `serial` as revoked.
    pub(crate) fn gate_revoked(&self, serial: &str) -> bool {
        self.gate.is_revoked(serial)
    }

    /// Tells every replica's watch stream that the trust material changed.
    pub(crate) fn trust_changed(&self) {
        self.trust.send_modify(|g| *g += 1);
    }

    fn reload_tls_inner(&self) -> Result<(), Error> {
        self.gate.refresh(&self.pki);
        self.trust_changed();
        if let Some((names, slot)) = self.control_tls.get() {
            slot.store(net::tls::control_config(&self.pki, names)?);
        }
        if let Some((names, slot)) = self.registry_tls.get() {
            slot.store(net::tls::registry_config(&self.pki, names)?);
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
        auth::check_roles(&config.control.roles).map_err(Error::Roles)?;
        let metrics = crate::metrics::Metrics::new();
        let audit = if config.audit.enabled {
            Audit::open(&config.audit_dir(), &config.audit)?
        } else {
            Audit::disabled()
        };
        let mut pki = Pki::open(dir, &config.pki)?;
        pki.set_audit(audit.clone());
        let mut certsd = Installer::open(dir, &config.certsd)?;
        certsd.set_audit(audit.clone());
        let backend = match &config.registry.s3 {
            Some(s3) => Backend::S3(s3.clone()),
            None => {
                let registry_root = config.registry_root();
                fsutil::create_dir_all(&registry_root, 0o755)?;
                Backend::Filesystem(registry_root)
            }
        };
        let registry = Registry::open(backend, config.registry.delete_enabled)
            .map_err(Error::Storage)?
            .with_audit(audit.clone())
            .with_metrics(metrics.clone());
        if let Some(p) = &config.registry.policy {
            registry.set_policy(crate::registry::policy::Policy::load(p)?);
        }
        net::raise_fd_limit();
        let gate = Arc::new(Gate::new(&pki));
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
                registry,
                audit,
                metrics,
                gate,
                enrol_failures: auth::Failures::default(),
                trust: watch::channel(0).0,
                ready: AtomicBool::new(false),
                stopping: watch::channel(false).0,
                control_tls: OnceLock::new(),
                registry_tls: OnceLock::new(),
                tcp_addrs: OnceLock::new(),
                registry_addrs: OnceLock::new(),
            }),
            _lock: lock,
        })
    }

    /// Binds the configured listeners.
    pub fn bind(&self) -> Result<Listeners, Error> {
        listen::bind_all(&self.state.config, self.state.policy.group)
    }

    /// SHA-256 fingerprint of the CA, for the startup banner.
    pub fn ca_fingerprint(&self) -> String {
        self.state.pki.ca().fingerprint()
    }

    /// Serves the control API and the registry on `listeners` until `shutdown`
    /// completes, then stops accepting, lets requests in flight finish (up to
    /// `net.drain_timeout`) and removes the socket file.
    pub async fn serve(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), Error> {
        let socket = listeners.socket.clone();
        let state = self.state.clone();
        let result = self.serve_until(listeners, shutdown).await;
        if result.is_err() {
            // Whatever did start stops with the listeners' tasks; leave no socket behind.
            state.stopping.send_replace(true);
            let _ = std::fs::remove_file(&socket);
        }
        result
    }

    async fn serve_until(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), Error> {
        let state = self.state.clone();
        let tcp_addrs = listeners.tcp_addrs();
        let registry_addrs = listeners.registry_addrs();
        let _ = state.registry_addrs.set(registry_addrs.clone());
        let _ = state.tcp_addrs.set(tcp_addrs.clone());
        let stop_rx = state.stopping.subscribe();
        let mut tasks = tokio::task::JoinSet::new();
        let (health, routes) = routes(&state)?;
        set_health(&health, false).await;
        let settings = state.config.net.clone();
        let edge = Edge {
            settings: &settings,
            gate: &state.gate,
            metrics: &state.metrics,
            stop: &stop_rx,
        };
        let control = |tls| Served {
            name: "control",
            service: routes.clone(),
            refuse: refuse_grpc,
            tls,
            gate: state.gate.clone(),
            settings: settings.clone(),
            plain_http_hint: None,
            allow_anonymous: true,
            metrics: state.metrics.clone(),
            route: grpc_route,
            plain: false,
        };

        let socket = listeners.socket.clone();
        let bind_err = |addr: String| move |source| Error::Bind { addr, source };
        let unix = tokio::net::UnixListener::from_std(listeners.unix)
            .map_err(bind_err(socket.display().to_string()))?;
        tasks.spawn(net::serve(
            Listener::Unix(unix),
            control(None),
            stop_rx.clone(),
        ));

        if !listeners.tcp.is_empty() {
            let names = net::tls::service_names(&tcp_addrs, &state.config.control.tls_names);
            let cfg = Arc::new(ArcSwap::new(net::tls::control_config(&state.pki, &names)?));
            let _ = state.control_tls.set((names, cfg.clone()));
            for l in listeners.tcp {
                let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
                let l = TcpListener::from_std(l).map_err(bind_err(addr))?;
                tasks.spawn(net::serve(
                    Listener::Tcp(l),
                    control(Some(cfg.clone())),
                    stop_rx.clone(),
                ));
            }
        }

        if !listeners.registry.is_empty() {
            let names = net::tls::service_names(&registry_addrs, &state.config.registry.names);
            let cfg = Arc::new(ArcSwap::new(net::tls::registry_config(&state.pki, &names)?));
            let _ = state.registry_tls.set((names, cfg.clone()));
            edge.registry(&mut tasks, listeners.registry, &state.registry, &cfg)?;
            tracing::info!(addrs = ?registry_addrs, root = %state.registry.root().display(), "registry serving (mutual TLS)");
        }
        if let Some(l) = listeners.metrics {
            edge.metrics(&mut tasks, l, scrape::router(state.clone()))?;
        }
        tasks.spawn(reload_on_sighup(state.clone(), stop_rx.clone()));
        tasks.spawn(renew_certificates(state.clone(), stop_rx.clone()));
        tasks.spawn(refresh_crl(state.clone(), stop_rx.clone()));
        purge_orphaned_uploads(&state).await;
        tasks.spawn(purge_uploads(state.clone(), stop_rx.clone()));
        state.ready.store(true, Ordering::Release);
        set_health(&health, true).await;
        tracing::info!(socket = %socket.display(), tcp = ?tcp_addrs, "berthd serving");

        shutdown.await;
        state.ready.store(false, Ordering::Release);
        set_health(&health, false).await;
        state.stopping.send_replace(true);
        while tasks.join_next().await.is_some() {}
        let _ = std::fs::remove_file(&socket);
        tracing::info!("berthd stopped");
        Ok(())
    }
}

/// What the registry and metrics listeners of a primary and of a replica share, so both
/// serve them the same way.
struct Edge<'a> {
    settings: &'a net::Settings,
    gate: &'a Arc<Gate>,
    metrics: &'a Arc<crate::metrics::Metrics>,
    stop: &'a watch::Receiver<bool>,
}

impl Edge<'_> {
    /// Serves the OCI edge of `registry` on every listener, mutual TLS with `tls`.
    fn registry(
        &self,
        tasks: &mut tokio::task::JoinSet<()>,
        listeners: Vec<std::net::TcpListener>,
        registry: &Registry,
        tls: &Arc<ArcSwap<rustls::ServerConfig>>,
    ) -> Result<(), Error> {
        let app = oci::router(registry.clone(), self.settings.body_stall_timeout);
        for l in listeners {
            let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
            let l = TcpListener::from_std(l).map_err(|source| Error::Bind { addr, source })?;
            let hint = oci::plain_http_hint(l.local_addr().ok());
            tasks.spawn(net::serve(
                Listener::Tcp(l),
                Served {
                    name: "registry",
                    service: app.clone(),
                    refuse: oci::refuse,
                    tls: Some(tls.clone()),
                    gate: self.gate.clone(),
                    settings: self.settings.clone(),
                    plain_http_hint: Some(hint),
                    allow_anonymous: false,
                    metrics: self.metrics.clone(),
                    route: oci::route_name,
                    plain: false,
                },
                self.stop.clone(),
            ));
        }
        Ok(())
    }

    /// Serves `/metrics` in plain HTTP on `l`.
    fn metrics(
        &self,
        tasks: &mut tokio::task::JoinSet<()>,
        l: std::net::TcpListener,
        router: axum::Router,
    ) -> Result<(), Error> {
        let addr = l.local_addr().ok();
        let l = TcpListener::from_std(l).map_err(|source| Error::Bind {
            addr: format!("metrics {addr:?}"),
            source,
        })?;
        tasks.spawn(net::serve(
            Listener::Tcp(l),
            Served {
                name: "metrics",
                service: router,
                refuse: scrape::refuse,
                tls: None,
                gate: self.gate.clone(),
                settings: self.settings.clone(),
                plain_http_hint: None,
                allow_anonymous: true,
                metrics: self.metrics.clone(),
                route: scrape::route,
                plain: true,
            },
            self.stop.clone(),
        ));
        tracing::info!(addr = ?addr, "metrics serving (plain HTTP)");
        Ok(())
    }
}

/// The route label of a control request: its service, from a fixed set.
fn grpc_route(path: &str) -> &'static str {
    let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match service {
        "berth.v1.SystemService" => "system",
        "berth.v1.PkiService" => "pki",
        "berth.v1.CertsService" => "certs",
        "berth.v1.RegistryService" => "registry",
        "berth.v1.TokenService" => "tokens",
        "berth.v1.EnrolService" => "enrol",
        "berth.v1.AuditService" => "audit",
        "berth.v1.ReplicaService" => "replica",
        "grpc.health.v1.Health" => "health",
        s if s.starts_with("grpc.reflection.") => "reflection",
        // The path is the client's text, not a Rust enum: anything unknown shares one
        // label so a client cannot create series. A new service needs a line above.
        _ => "other",
    }
}

/// The answer of the control API to a request `net::serve` refused.
fn refuse_grpc(r: &Refusal) -> hyper::Response<tonic::body::Body> {
    let (parts, ()) = tonic::Status::unauthenticated(r.to_string())
        .into_http::<()>()
        .into_parts();
    hyper::Response::from_parts(parts, tonic::body::Body::empty())
}

async fn set_health(h: &tonic_health::server::HealthReporter, serving: bool) {
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    h.set_service_status("", status).await;
    for name in [
        <SystemServiceServer<service::SystemSvc> as tonic::server::NamedService>::NAME,
        <PkiServiceServer<service::PkiSvc> as tonic::server::NamedService>::NAME,
        <CertsServiceServer<service::CertsSvc> as tonic::server::NamedService>::NAME,
        <RegistryServiceServer<service::RegistrySvc> as tonic::server::NamedService>::NAME,
        <TokenServiceServer<service::TokenSvc> as tonic::server::NamedService>::NAME,
        <EnrolServiceServer<service::EnrolSvc> as tonic::server::NamedService>::NAME,
        <AuditServiceServer<service::AuditSvc> as tonic::server::NamedService>::NAME,
        <ReplicaServiceServer<service::ReplicaSvc> as tonic::server::NamedService>::NAME,
    ] {
        h.set_service_status(name, status).await;
    }
}

/// Every control service behind the guard that authorises by role, as one router that
/// every control listener serves. Health starts NOT_SERVING: readiness waits mean something.
fn routes(
    state: &Arc<State>,
) -> Result<(tonic_health::server::HealthReporter, auth::Guard<Routes>), Error> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Reflection(e.to_string()))?;
    let routes = Routes::new(SystemServiceServer::new(service::SystemSvc {
        state: state.clone(),
    }))
    .add_service(PkiServiceServer::new(service::PkiSvc {
        state: state.clone(),
    }))
    .add_service(CertsServiceServer::new(service::CertsSvc {
        state: state.clone(),
    }))
    .add_service(RegistryServiceServer::new(service::RegistrySvc {
        state: state.clone(),
    }))
    .add_service(AuditServiceServer::new(service::AuditSvc {
        state: state.clone(),
    }))
    .add_service(ReplicaServiceServer::new(service::ReplicaSvc {
        state: state.clone(),
    }))
    .add_service(TokenServiceServer::new(service::TokenSvc {
        state: state.clone(),
    }))
    .add_service(InterceptedService::new(
        EnrolServiceServer::new(service::EnrolSvc {
            state: state.clone(),
        }),
        auth::EnrolGate {
            state: state.clone(),
        },
    ))
    .add_service(health)
    .add_service(reflection)
    .prepare();
    let guard = auth::Guard {
        inner: routes,
        state: state.clone(),
    };
    Ok((health_reporter, guard))
}

impl State {
    /// Reads `registry.policy` again and puts it in force; an invalid file keeps the
    /// running policy, and the error says why.
    pub(crate) fn reload_policy(
        &self,
        who: &Identity,
    ) -> Result<String, crate::registry::policy::Error> {
        let p = match &self.config.registry.policy {
            Some(path) => crate::registry::policy::Policy::load(path),
            None => Ok(crate::registry::policy::Policy::default()),
        };
        let r = self.registry.reload_policy(who, p);
        if r.is_ok() {
            self.trust_changed();
        }
        r
    }
}

/// Reloads the registry policy on SIGHUP, like most daemons reload their config.
async fn reload_on_sighup(state: Arc<State>, mut stop: watch::Receiver<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; use `berth policy reload`");
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => match state.reload_policy(&Identity::Daemon) {
                Ok(source) => tracing::info!(%source, "policy reloaded on SIGHUP"),
                Err(e) => tracing::error!(error = %e, "policy reload refused; the running policy stays"),
            },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
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

/// Re-signs the CRL before it lapses (the PKI decides when; this asks four times per
/// lifetime, at most hourly) and sends the new one to every replica.
async fn refresh_crl(state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let every = (state.pki.crl_lifetime() / 4).clamp(Duration::from_secs(1), RENEW_CHECK);
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let st = state.clone();
                let r = tokio::task::spawn_blocking(move || {
                    if st.pki.refresh_crl_if_due()? {
                        st.reload_tls_inner()?;
                    }
                    Ok::<_, Error>(())
                }).await;
                if let Ok(Err(e)) = r {
                    tracing::error!(error = %e, "re-signing the CRL failed; replicas stop serving when it lapses");
                }
            }
            _ = stop.changed() => return,
        }
    }
}

/// Purges upload sessions older than `registry.upload_max_age_hours`, hourly.
/// Before serving: upload sessions the previous run left behind (their clients lost them
/// when it ended) that are older than `registry.orphan_upload_minutes`.
async fn purge_orphaned_uploads(state: &State) {
    let r = &state.config.registry;
    let orphan = Duration::from_secs(r.orphan_upload_minutes.saturating_mul(60));
    let max_age = Duration::from_secs(r.upload_max_age_hours.saturating_mul(3600));
    match state
        .registry
        .purge_uploads(&Identity::Daemon, Some(orphan.min(max_age)), false)
        .await
    {
        Ok(p) if !p.is_empty() => {
            tracing::info!(
                purged = p.len(),
                "upload sessions left by the previous run purged"
            );
        }
        Ok(_) => {}
        Err(e) => {
            tracing::error!(error = %e, "purging upload sessions left by the previous run failed")
        }
    }
}

async fn purge_uploads(state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let max_age = Duration::from_secs(
        state
            .config
            .registry
            .upload_max_age_hours
            .saturating_mul(3600),
    );
    let mut tick = tokio::time::interval(RENEW_CHECK);
    // The first pass ran before serving (purge_orphaned_uploads).
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                match state.registry.purge_uploads(&Identity::Daemon, Some(max_age), false).await {
                    Ok(p) if !p.is_empty() => tracing::info!(purged = p.len(), "stale uploads purged"),
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "purging stale uploads failed"),
                }
            }
            _ = stop.changed() => return,
        }
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

#[cfg(test)]
mod tests;
