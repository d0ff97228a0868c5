//! A registry replica: `berthd --role registry`. It serves only the registry, over a store
//! it shares with its primary and the other replicas (an S3 bucket), and keeps nothing of
//! its own on disk. At start it enrols with a replica token (its key lives in memory
//! only), then takes the CA, the CRL, the revoked serials and the registry policy from
//! the primary's watch stream, and enforces each update on new handshakes and on open
//! connections alike (the gate checks every request).
//!
//! If the primary is lost, the replica keeps serving with what it has, says so in
//! `berth replica status` and in its metrics, and reconnects. Once its CRL's nextUpdate
//! plus `replica.crl_grace` has passed without a newer one, it cannot know who was revoked
//! and refuses every request (503 UNAVAILABLE) until the primary is back.

use std::collections::HashSet;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use futures_util::StreamExt;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::sync::watch;
use tonic::service::Routes;
use tonic::{Request, Response, Status};

use super::{Error, Listeners, listen};
use crate::client::{Client, TrustUpdate};
use crate::config::{Config, ReplicaConfig};
use crate::identity::Identity;
use crate::net::{self, Gate, Listener, Served};
use crate::pki::SecretKeyPem;
use crate::proto as pb;
use crate::proto::convert;
use crate::proto::replica_service_server::{ReplicaService, ReplicaServiceServer};
use crate::registry::policy::Policy;
use crate::registry::{Backend, Registry};

/// The longest wait between two attempts to reach a lost primary.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Audit records a replica holds for its primary, queued and unsent together; past that
/// it counts them as lost (`berth_audit_records_lost`) rather than slow requests down.
const AUDIT_QUEUE: usize = 10_000;

/// Audit records per report to the primary.
const AUDIT_BATCH: usize = 500;

/// How long the first trust material may take to arrive before the start fails.
const FIRST_UPDATE: Duration = Duration::from_secs(30);

/// A replica's own certificate and key, from enrolment or renewal; the key never leaves
/// memory.
struct Me {
    certificate_pem: String,
    key: SecretKeyPem,
    serial: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

/// What `berth replica status` reports, updated by the watch loop.
#[derive(Debug, Clone, Default)]
struct LinkStatus {
    connected: bool,
    since: Option<OffsetDateTime>,
    last_update_at: Option<OffsetDateTime>,
    generation: u64,
    crl_next_update: Option<OffsetDateTime>,
    serving_until: Option<OffsetDateTime>,
    policy_source: String,
    last_error: String,
    revoked_count: usize,
}

/// Everything the replica's tasks share.
struct Link {
    settings: ReplicaConfig,
    token: String,
    host: String,
    port: u16,
    me: ArcSwap<Me>,
    /// The last trust material applied, to rebuild TLS on renewal and skip heartbeats.
    last: Mutex<Option<TrustUpdate>>,
    status: Mutex<LinkStatus>,
    registry: Registry,
    gate: Arc<Gate>,
    tls: ArcSwapOption<ArcSwap<rustls::ServerConfig>>,
    metrics: Arc<crate::metrics::Metrics>,
    listeners: Mutex<Vec<String>>,
    /// Where this replica's registry keeps content, to compare with the primary's.
    registry_location: String,
}

impl Link {
    fn status(&self) -> std::sync::MutexGuard<'_, LinkStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn last(&self) -> std::sync::MutexGuard<'_, Option<TrustUpdate>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_connected(&self, connected: bool, error: Option<String>) {
        let mut s = self.status();
        if s.connected != connected || s.since.is_none() {
            s.since = Some(OffsetDateTime::now_utc());
        }
        s.connected = connected;
        if let Some(e) = error {
            s.last_error = e;
        }
        self.metrics
            .replica_primary_connected
            .set(i64::from(connected));
    }

    /// A client to the primary presenting the replica's certificate.
    async fn connect(&self) -> Result<Client, crate::client::Error> {
        let me = self.me.load();
        Client::connect_pinned(
            &self.host,
            self.port,
            &self.settings.ca_fingerprint,
            Some((&me.certificate_pem, me.key.secret_pem())),
        )
        .await
    }

    /// Takes in one update: TLS for new handshakes, the gate for open connections, the
    /// policy for every request. A heartbeat, or material equal to what is in force, only
    /// counts as heard.
    fn apply(&self, u: TrustUpdate) -> Result<(), String> {
        let now = OffsetDateTime::now_utc();
        let grace =
            time::Duration::try_from(self.settings.crl_grace).unwrap_or(time::Duration::HOUR);
        {
            let mut s = self.status();
            s.last_update_at = Some(now);
            s.generation = u.generation;
        }
        self.metrics.replica_last_update.set(now.unix_timestamp());
        if u.heartbeat_only {
            return Ok(());
        }
        let same = self.last().as_ref().is_some_and(|l| {
            l.ca_pem == u.ca_pem
                && l.crl_pem == u.crl_pem
                && l.policy_toml == u.policy_toml
                && l.policy_source == u.policy_source
        });
        if same {
            return Ok(());
        }
        let cfg = self.tls_config(&u)?;
        let policy_changed = self
            .last()
            .as_ref()
            .is_none_or(|l| l.policy_toml != u.policy_toml || l.policy_source != u.policy_source);
        let policy = if !policy_changed {
            None
        } else if u.policy_toml.is_empty() {
            Some(Policy::default())
        } else {
            let name = format!("{} (from the primary)", u.policy_source);
            Some(
                Policy::parse(&u.policy_toml, Path::new(&name)).map_err(|e| {
                    format!("the primary's policy does not parse here, the previous one stays: {e}")
                })?,
            )
        };
        // Revocations first: an open connection must not outlive the handshake rule.
        let revoked: HashSet<String> = u.revoked_serials.iter().cloned().collect();
        let revoked_count = revoked.len();
        self.gate.set_revoked(revoked);
        let until = u.crl_next_update + grace;
        self.gate.serve_until(until);
        match self.tls.load().as_deref() {
            Some(slot) => slot.store(cfg),
            None => self.tls.store(Some(Arc::new(ArcSwap::new(cfg)))),
        }
        if let Some(p) = policy {
            self.registry.set_policy(p);
        }
        {
            let mut s = self.status();
            s.crl_next_update = Some(u.crl_next_update);
            s.serving_until = Some(until);
            s.policy_source = u.policy_source.clone();
            s.revoked_count = revoked_count;
        }
        self.metrics
            .replica_serving_until
            .set(until.unix_timestamp());
        tracing::info!(
            generation = u.generation,
            revoked = revoked_count,
            crl_next_update = %u.crl_next_update,
            policy = %u.policy_source,
            "trust material from the primary in force"
        );
        *self.last() = Some(u);
        Ok(())
    }

    /// The registry listener's TLS from `u`'s CA and CRL and the replica's certificate;
    /// refuses a CA other than the pinned one.
    fn tls_config(&self, u: &TrustUpdate) -> Result<Arc<rustls::ServerConfig>, String> {
        let ca_der = CertificateDer::from_pem_slice(u.ca_pem.as_bytes())
            .map_err(|e| format!("the primary sent an unreadable CA certificate: {e}"))?;
        let pinned = crate::client::parse_fingerprint(&self.settings.ca_fingerprint)
            .map_err(|e| e.to_string())?;
        if Sha256::digest(ca_der.as_ref()).as_slice() != pinned.as_slice() {
            return Err(
                "the primary sent a CA other than replica.ca_fingerprint; nothing was applied"
                    .into(),
            );
        }
        let crl_der = CertificateRevocationListDer::from_pem_slice(u.crl_pem.as_bytes())
            .map_err(|e| format!("the primary sent an unreadable CRL: {e}"))?;
        let me = self.me.load();
        net::tls::replica_registry_config(
            ca_der.as_ref(),
            crl_der.to_vec(),
            &me.certificate_pem,
            me.key.secret_pem(),
        )
        .map_err(|e| e.to_string())
    }

    /// Rebuilds the listener's TLS with the current certificate (after a renewal or a new
    /// enrolment); the trust material in force stays as it is.
    fn rebuild_tls(&self) -> Result<(), String> {
        let Some(u) = self.last().clone() else {
            return Ok(());
        };
        let cfg = self.tls_config(&u)?;
        if let Some(slot) = self.tls.load().as_deref() {
            slot.store(cfg);
        }
        Ok(())
    }
}

/// An opened replica: registry store set up, token read, not yet enrolled.
pub struct Replica {
    config: Config,
    settings: ReplicaConfig,
    token: String,
    registry: Registry,
    metrics: Arc<crate::metrics::Metrics>,
    group: Option<u32>,
    /// Where the registry's audit records go, and what the sender reads them from.
    audit: crate::audit::Audit,
    outbox: tokio::sync::mpsc::Receiver<crate::audit::Record>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Replica")
            .field("primary", &self.settings.primary)
            .finish_non_exhaustive()
    }
}

impl Replica {
    /// Checks the config for the replica role and opens the shared store. `token` is the
    /// replica token (`BERTH_JOIN_TOKEN`, or read from `replica.token_file` when `None`).
    pub fn open(config: Config, token: Option<String>) -> Result<Replica, Error> {
        let bad = |m: &str| Error::Replica(m.to_string());
        let settings = config.replica.clone().ok_or_else(|| {
            bad("the registry role needs a [replica] section (primary, ca_fingerprint, token_file) or --primary and --ca-fingerprint")
        })?;
        if !config.registry.enabled {
            return Err(bad(
                "a registry replica serves the registry: remove registry.enabled = false",
            ));
        }
        if !config.control.listen.is_empty() {
            return Err(bad(
                "a registry replica serves no TCP control API: remove control.listen (the primary has it)",
            ));
        }
        if config.registry.policy.is_some() {
            return Err(bad(
                "a registry replica enforces the primary's policy: remove registry.policy here and set it on the primary",
            ));
        }
        crate::client::parse_fingerprint(&settings.ca_fingerprint)
            .map_err(|e| Error::Replica(format!("replica.ca_fingerprint: {e}")))?;
        let token = match token.filter(|t| !t.trim().is_empty()) {
            Some(t) => t.trim().to_string(),
            None => {
                let path = settings.token_file.as_ref().ok_or_else(|| {
                    bad("no replica token: set BERTH_JOIN_TOKEN or replica.token_file (make one on the primary with `berth token create --name NAME --replica --san HOST`)")
                })?;
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Error::Replica(format!(
                        "cannot read replica.token_file {}: {e}",
                        path.display()
                    ))
                })?;
                text.trim().to_string()
            }
        };
        let backend = match &config.registry.s3 {
            Some(s3) => Backend::S3(s3.clone()),
            // A shared file system (NFS) mounted at the same root as the primary's.
            None => match &config.registry.root {
                Some(root) => Backend::Filesystem(root.clone()),
                None => {
                    return Err(bad(
                        "a registry replica needs the shared store: [registry.s3] (or registry.root on a shared file system)",
                    ));
                }
            },
        };
        let metrics = crate::metrics::Metrics::new();
        let (audit, outbox) = crate::audit::Audit::forwarding(AUDIT_QUEUE);
        let registry = Registry::open(backend, config.registry.delete_enabled)
            .map_err(Error::Storage)?
            .with_audit(audit.clone())
            .with_metrics(metrics.clone());
        let group = listen::resolve_group(config.control.group.as_deref())?;
        net::raise_fd_limit();
        Ok(Replica {
            config,
            settings,
            token,
            registry,
            metrics,
            group,
            audit,
            outbox,
        })
    }

    /// Binds the unix socket (status only), the registry and the metrics listeners.
    pub fn bind(&self) -> Result<Listeners, Error> {
        listen::bind_all(&self.config, self.group)
    }

    /// Enrols, takes the first trust material, serves the registry until `shutdown`, and
    /// keeps the trust material current meanwhile.
    pub async fn serve(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), Error> {
        let socket = listeners.socket.clone();
        let r = self.serve_until(listeners, shutdown).await;
        let _ = std::fs::remove_file(&socket);
        r
    }

    async fn serve_until(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), Error> {
        let (host, port) = split_host_port(&self.settings.primary)?;
        let me = enrol(&host, port, &self.settings, &self.token).await?;
        tracing::info!(primary = %self.settings.primary, serial = %me.serial, not_after = %me.not_after, "enrolled with the primary as a registry replica");
        let registry_addrs = listeners.registry_addrs();
        let link = Arc::new(Link {
            settings: self.settings.clone(),
            token: self.token.clone(),
            host,
            port,
            me: ArcSwap::new(Arc::new(me)),
            last: Mutex::new(None),
            status: Mutex::new(LinkStatus::default()),
            registry: self.registry.clone(),
            gate: Arc::new(Gate::default()),
            tls: ArcSwapOption::empty(),
            metrics: self.metrics.clone(),
            listeners: Mutex::new(registry_addrs.iter().map(|a| a.to_string()).collect()),
            registry_location: self
                .config
                .registry
                .s3
                .as_ref()
                .map(crate::registry::S3Settings::location)
                .unwrap_or_else(|| "a shared file system".into()),
        });
        // The first material, or no serving at all: without a CRL nobody can be checked.
        let stream = first_stream(&link).await?;
        let tls = link
            .tls
            .load_full()
            .ok_or_else(|| Error::Replica("no TLS configuration after the first update".into()))?;

        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        let settings = self.config.net.clone();
        let bind_err = |addr: String| move |source| Error::Bind { addr, source };
        // The metrics listener serves during a lapse too: that is when it matters.
        let open_gate = Arc::new(Gate::default());
        let edge = super::Edge {
            settings: &settings,
            gate: &link.gate,
            metrics: &self.metrics,
            stop: &stop_rx,
        };
        edge.registry(&mut tasks, listeners.registry, &self.registry, &tls)?;
        let socket = listeners.socket.clone();
        let unix = tokio::net::UnixListener::from_std(listeners.unix)
            .map_err(bind_err(socket.display().to_string()))?;
        tasks.spawn(net::serve(
            Listener::Unix(unix),
            Served {
                name: "control",
                service: status_routes(link.clone(), self.group),
                refuse: super::refuse_grpc,
                tls: None,
                gate: link.gate.clone(),
                settings: settings.clone(),
                plain_http_hint: None,
                allow_anonymous: true,
                metrics: self.metrics.clone(),
                route: super::grpc_route,
                plain: false,
            },
            stop_rx.clone(),
        ));
        if let Some(l) = listeners.metrics {
            let edge = super::Edge {
                gate: &open_gate,
                ..edge
            };
            edge.metrics(&mut tasks, l, metrics_router(self.metrics.clone()))?;
        }
        tasks.spawn(watch_loop(link.clone(), stream, stop_rx.clone()));
        tasks.spawn(audit_loop(
            link.clone(),
            self.outbox,
            self.audit.clone(),
            stop_rx.clone(),
        ));
        tasks.spawn(renew_loop(link.clone(), stop_rx.clone()));
        tracing::info!(addrs = ?registry_addrs, primary = %self.settings.primary, "registry replica serving (mutual TLS)");

        shutdown.await;
        stop_tx.send_replace(true);
        while tasks.join_next().await.is_some() {}
        tracing::info!("registry replica stopped");
        Ok(())
    }
}

/// `host:port` or `[v6]:port`.
fn split_host_port(s: &str) -> Result<(String, u16), Error> {
    let bad = || {
        Error::Replica(format!(
            "replica.primary = {s:?}: expected HOST:PORT, e.g. primary.example.com:2376"
        ))
    };
    let (h, p) = s.rsplit_once(':').ok_or_else(bad)?;
    let port = p.parse().map_err(|_| bad())?;
    let h = h.trim_start_matches('[').trim_end_matches(']');
    if h.is_empty() {
        return Err(bad());
    }
    Ok((h.to_string(), port))
}

/// A fresh key and a CSR for it; the primary decides the subject and names.
fn key_and_csr() -> Result<(SecretKeyPem, String), Error> {
    let err = |e: rcgen::Error| Error::Replica(format!("key generation failed: {e}"));
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "berth replica");
    let csr = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(err)?;
    Ok((SecretKeyPem::new(key.serialize_pem()), csr))
}

async fn enrol(host: &str, port: u16, s: &ReplicaConfig, token: &str) -> Result<Me, Error> {
    let primary = |e: crate::client::Error| {
        Error::Replica(format!("enrolling with the primary {}: {e}", s.primary))
    };
    let client = Client::connect_pinned(host, port, &s.ca_fingerprint, None)
        .await
        .map_err(primary)?;
    let (key, csr) = key_and_csr()?;
    let got = client.enrol(token, &csr).await.map_err(primary)?;
    me_from(got.certificate_pem, key)
}

fn me_from(certificate_pem: String, key: SecretKeyPem) -> Result<Me, Error> {
    let d = crate::pki::inspect_standalone(certificate_pem.as_bytes())
        .map_err(Error::Pki)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Replica("the primary sent no certificate".into()))?;
    Ok(Me {
        certificate_pem,
        key,
        serial: d.serial,
        not_before: d.not_before,
        not_after: d.not_after,
    })
}

/// Opens the watch stream and applies its first update.
async fn first_stream(link: &Link) -> Result<crate::client::TrustStream, Error> {
    let fail = |e: String| {
        Error::Replica(format!(
            "no trust material from the primary {}: {e}",
            link.settings.primary
        ))
    };
    let mut stream = open_stream(link).await.map_err(|e| fail(e.to_string()))?;
    let first = tokio::time::timeout(FIRST_UPDATE, stream.next())
        .await
        .map_err(|_| fail("nothing arrived in 30 s".into()))?
        .ok_or_else(|| fail("the stream ended".into()))?
        .map_err(|e| fail(e.to_string()))?;
    let mine = link.registry_location.as_str();
    if first.store.is_empty() {
        tracing::warn!(replica = %mine, "the primary has no [registry.s3]: GC and fsck of this bucket can only run on a primary that has it");
    } else if first.store != mine {
        return Err(Error::Replica(format!(
            "this replica keeps content at {mine}, its primary at {}: give both the same [registry.s3] bucket, endpoint and prefix",
            first.store
        )));
    }
    link.apply(first).map_err(fail)?;
    link.set_connected(true, None);
    Ok(stream)
}

async fn open_stream(link: &Link) -> Result<crate::client::TrustStream, crate::client::Error> {
    let listeners = link
        .listeners
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    link.connect().await?.watch_trust(listeners).await
}

/// Reads updates until the stream breaks or falls silent, then reconnects with back-off;
/// a certificate the primary no longer accepts (revoked) is replaced by enrolling again.
async fn watch_loop(
    link: Arc<Link>,
    mut stream: crate::client::TrustStream,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let heartbeat = link
            .last()
            .as_ref()
            .map_or(Duration::from_secs(5), |u| u.heartbeat);
        let next = tokio::select! {
            n = tokio::time::timeout(heartbeat * 3, stream.next()) => n,
            _ = stop.wait_for(|s| *s) => return,
        };
        let lost = match next {
            Ok(Some(Ok(u))) => match link.apply(u) {
                Ok(()) => {
                    backoff = Duration::from_millis(250);
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "an update from the primary was not applied");
                    link.status().last_error = e;
                    continue;
                }
            },
            Ok(Some(Err(e))) => e.to_string(),
            Ok(None) => "the primary ended the stream".to_string(),
            Err(_) => format!(
                "nothing from the primary for {} s",
                (heartbeat * 3).as_secs()
            ),
        };
        let until = link.status().serving_until;
        tracing::warn!(error = %lost, serving_until = ?until, "lost the primary; serving with the trust material in hand");
        link.set_connected(false, Some(lost.clone()));
        // Reconnect until it works or we stop.
        loop {
            let wait = tokio::select! {
                _ = tokio::time::sleep(backoff) => false,
                _ = stop.wait_for(|s| *s) => true,
            };
            if wait {
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            if (lost.contains("revoked") || lost.contains("no role"))
                && let Err(e) = reenrol(&link).await
            {
                link.status().last_error = e.to_string();
                continue;
            }
            match open_stream(&link).await {
                Ok(s) => {
                    stream = s;
                    link.set_connected(true, None);
                    tracing::info!(primary = %link.settings.primary, "watching the primary again");
                    break;
                }
                Err(e) => {
                    let e = e.to_string();
                    tracing::debug!(error = %e, "primary still unreachable");
                    if e.contains("revoked") {
                        let _ = reenrol(&link).await;
                    }
                    link.status().last_error = e;
                }
            }
        }
    }
}

/// Sends the registry's audit records to the primary in batches, as they come; while the
/// primary is away they wait (up to [`AUDIT_QUEUE`], then the oldest are dropped and
/// counted as lost). At shutdown, what is queued gets one last try.
async fn audit_loop(
    link: Arc<Link>,
    mut outbox: tokio::sync::mpsc::Receiver<crate::audit::Record>,
    audit: crate::audit::Audit,
    mut stop: watch::Receiver<bool>,
) {
    let mut pending: std::collections::VecDeque<crate::audit::Record> = Default::default();
    let mut client: Option<Client> = None;
    let mut backoff = Duration::from_millis(250);
    loop {
        let stopping = tokio::select! {
            r = outbox.recv(), if pending.len() < AUDIT_QUEUE => match r {
                Some(r) => {
                    pending.push_back(r);
                    while let Ok(r) = outbox.try_recv() {
                        pending.push_back(r);
                    }
                    false
                }
                None => true,
            },
            _ = tokio::time::sleep(backoff), if !pending.is_empty() => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        if stopping {
            while let Ok(r) = outbox.try_recv() {
                pending.push_back(r);
            }
        }
        if pending.len() > AUDIT_QUEUE {
            let over = pending.len() - AUDIT_QUEUE;
            pending.drain(..over);
            audit.count_lost(u64::try_from(over).unwrap_or(u64::MAX));
        }
        while !pending.is_empty() {
            let c = match client.take() {
                Some(c) => c,
                None => match tokio::time::timeout(Duration::from_secs(5), link.connect()).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, queued = pending.len(), "audit records wait for the primary");
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        break;
                    }
                    Err(_) => {
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        break;
                    }
                },
            };
            let n = pending.len().min(AUDIT_BATCH);
            let batch: Vec<crate::audit::Record> = pending.iter().take(n).cloned().collect();
            match tokio::time::timeout(Duration::from_secs(10), c.report_audit(&batch)).await {
                Ok(Ok(_)) => {
                    pending.drain(..n);
                    client = Some(c);
                    backoff = Duration::from_millis(250);
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, queued = pending.len(), "the primary did not take the audit records; retrying");
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    break;
                }
                Err(_) => {
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    break;
                }
            }
        }
        if stopping {
            if !pending.is_empty() {
                tracing::warn!(
                    lost = pending.len(),
                    "audit records not sent to the primary before stopping"
                );
                audit.count_lost(u64::try_from(pending.len()).unwrap_or(u64::MAX));
            }
            return;
        }
    }
}

/// Enrols again with the token (the certificate was revoked); new handshakes use the new
/// certificate.
async fn reenrol(link: &Link) -> Result<(), Error> {
    let me = enrol(&link.host, link.port, &link.settings, &link.token).await?;
    tracing::warn!(serial = %me.serial, "the replica's certificate was refused; enrolled again with the token");
    link.me.store(Arc::new(me));
    link.rebuild_tls().map_err(Error::Replica)
}

/// Renews the replica's certificate over the control API once a third of its life is
/// left, with a fresh key; checks every tenth of its life, at most hourly.
async fn renew_loop(link: Arc<Link>, mut stop: watch::Receiver<bool>) {
    loop {
        let (due, check) = {
            let me = link.me.load();
            let life = me.not_after - me.not_before;
            let due = me.not_after - life / 3_i32;
            let tenth: time::Duration = life / 10_i32;
            let check = tenth.clamp(time::Duration::SECOND, time::Duration::HOUR);
            (due, check)
        };
        let wait = (due - OffsetDateTime::now_utc()).clamp(time::Duration::ZERO, check);
        let wait = Duration::try_from(wait).unwrap_or(Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if OffsetDateTime::now_utc() < due {
            continue;
        }
        match renew(&link).await {
            Ok(serial) => tracing::info!(%serial, "renewed the replica's certificate"),
            Err(e) => {
                tracing::error!(error = %e, "renewing the replica's certificate failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    }
}

async fn renew(link: &Link) -> Result<String, Error> {
    let fail = |e: crate::client::Error| Error::Replica(e.to_string());
    let client = link.connect().await.map_err(fail)?;
    let (key, csr) = key_and_csr()?;
    let got = client.renew_own(&csr).await.map_err(fail)?;
    let me = me_from(got.certificate_pem, key)?;
    let serial = me.serial.clone();
    link.me.store(Arc::new(me));
    link.rebuild_tls().map_err(Error::Replica)?;
    Ok(serial)
}

/// `/metrics` of a replica: the listeners' counters and the link's gauges.
fn metrics_router(m: Arc<crate::metrics::Metrics>) -> axum::Router {
    use axum::response::IntoResponse;
    axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let m = m.clone();
                async move {
                    let mut resp = m.encode().into_response();
                    resp.headers_mut().insert(
                        axum::http::header::CONTENT_TYPE,
                        axum::http::HeaderValue::from_static(super::scrape::CONTENT_TYPE),
                    );
                    resp
                }
            }),
        )
        .fallback(|| async {
            (
                axum::http::StatusCode::NOT_FOUND,
                "berthd serves /metrics here\n",
            )
        })
}

/// The replica's unix socket: `ReplicaService.Status` and health, for local users the
/// primary's socket rules would let in (root, berthd's own user, `control.group`).
fn status_routes(link: Arc<Link>, group: Option<u32>) -> Routes {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(async move {
        health_reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
    });
    let own_uid = nix::unistd::geteuid().as_raw();
    let gate = move |req: Request<()>| -> Result<Request<()>, Status> {
        // The primary's socket rules: root, our own uid, and control.group as primary or
        // supplementary group.
        let allowed = match req.extensions().get::<Identity>() {
            Some(Identity::Unix { uid, gid, pid }) => {
                *uid == 0
                    || *uid == own_uid
                    || group.is_some_and(|g| {
                        g == *gid
                            || pid
                                .is_some_and(|p| super::auth::supplementary_groups(p).contains(&g))
                    })
            }
            // The socket is the only listener this serves on; nothing else is a caller here.
            Some(Identity::Cert(_) | Identity::Anonymous | Identity::Daemon) | None => false,
        };
        if allowed {
            Ok(req)
        } else {
            Err(Status::permission_denied(
                "only root, berthd's own user or control.group may ask a replica's status",
            ))
        }
    };
    Routes::new(tonic::service::interceptor::InterceptedService::new(
        ReplicaServiceServer::new(StatusSvc { link }),
        gate,
    ))
    .add_service(health)
    .prepare()
}

struct StatusSvc {
    link: Arc<Link>,
}

#[tonic::async_trait]
impl ReplicaService for StatusSvc {
    type WatchStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::TrustUpdate, Status>> + Send>>;

    async fn watch(
        &self,
        _: Request<pb::WatchTrustRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::failed_precondition(
            "this berthd is a registry replica: watch the primary",
        ))
    }

    async fn report_audit(
        &self,
        _: Request<pb::ReportAuditRequest>,
    ) -> Result<Response<pb::ReportAuditResponse>, Status> {
        Err(Status::failed_precondition(
            "this berthd is a registry replica: its primary keeps the audit log",
        ))
    }

    async fn status(
        &self,
        _: Request<pb::ReplicaStatusRequest>,
    ) -> Result<Response<pb::ReplicaStatusResponse>, Status> {
        let s = self.link.status().clone();
        let me = self.link.me.load();
        let listeners = self
            .link
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(Response::new(pb::ReplicaStatusResponse {
            primary: self.link.settings.primary.clone(),
            connected: s.connected,
            since: s.since.map(convert::ts),
            last_update_at: s.last_update_at.map(convert::ts),
            generation: s.generation,
            crl_next_update: s.crl_next_update.map(convert::ts),
            serving_until: s.serving_until.map(convert::ts),
            certificate_serial: me.serial.clone(),
            certificate_not_after: Some(convert::ts(me.not_after)),
            policy_source: s.policy_source,
            registry_listeners: listeners,
            last_error: s.last_error,
            revoked_count: u32::try_from(s.revoked_count).unwrap_or(u32::MAX),
        }))
    }
}
