//! What berthd counts, for Prometheus (`/metrics` on its own listener, off by default):
//! requests by listener, route and status; bytes in and out; TLS handshake failures by
//! reason; requests the per-request check refused; open and refused connections; policy
//! denials; uploads in progress; GC runs and bytes freed; certificate expiry.
//!
//! One instance per daemon (never a global), so two daemons in one test process count
//! apart. prometheus-client (the Prometheus project's own crate) does the encoding, in
//! the OpenMetrics text format; labels come from fixed sets (routes, reasons, actions),
//! never from what a client sends, so a client cannot grow the series without bound.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of a request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `registry`, `control`, `metrics`.
    pub listener: &'static str,
    /// The edge's name for the route (`manifest`, `blob`, `upload`, `grpc` ...).
    pub route: &'static str,
    /// HTTP status code.
    pub status: u16,
}

/// A listener.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `registry`, `control`, `metrics`.
    pub listener: &'static str,
}

/// A listener and why.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `registry`, `control`, `metrics`.
    pub listener: &'static str,
    /// `no_certificate`, `unknown_ca`, `expired`, `revoked`, `timeout`, `other`.
    pub reason: &'static str,
}

/// A policy action.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// `pull`, `push`, `delete`, `list`.
    pub action: &'static str,
}

/// Which certificate.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabels {
    /// `ca`, `registry`, `control`, `soonest_client`.
    pub certificate: &'static str,
}

/// Every metric of one daemon.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by listener, route and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Bytes read from clients (after TLS), by listener.
    pub bytes_in: Family<ListenerLabels, Counter>,
    /// Bytes written to clients (before TLS), by listener.
    pub bytes_out: Family<ListenerLabels, Counter>,
    /// TLS handshakes that failed, by listener and reason.
    pub handshake_failures: Family<ReasonLabels, Counter>,
    /// Requests on open connections refused by the per-request check (revoked, expired).
    pub refused_requests: Family<ReasonLabels, Counter>,
    /// Connections open now.
    pub connections_open: Family<ListenerLabels, Gauge>,
    /// Connections closed at accept because the cap was reached.
    pub connections_refused: Family<ListenerLabels, Counter>,
    /// Registry requests the policy denied, by action.
    pub policy_denials: Family<ActionLabels, Counter>,
    /// Upload sessions in progress (set when scraped).
    pub uploads_in_progress: Gauge,
    /// Garbage collections run (not dry runs).
    pub gc_runs: Counter,
    /// Bytes garbage collection freed.
    pub gc_bytes_freed: Counter,
    /// Audit records lost to failed writes (set when scraped).
    pub audit_records_lost: Gauge,
    /// When certificates expire, as Unix seconds (set when scraped).
    pub cert_expiry: Family<CertLabels, Gauge>,
    /// Replicas only: 1 while the watch stream from the primary is open.
    pub replica_primary_connected: Gauge,
    /// Replicas only: when the last update or heartbeat arrived (Unix seconds).
    pub replica_last_update: Gauge,
    /// Replicas only: when the replica stops serving unless it hears from the primary
    /// (its CRL's nextUpdate plus the grace; Unix seconds).
    pub replica_serving_until: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            registry: Registry::with_prefix("berth"),
            requests: Family::default(),
            bytes_in: Family::default(),
            bytes_out: Family::default(),
            handshake_failures: Family::default(),
            refused_requests: Family::default(),
            connections_open: Family::default(),
            connections_refused: Family::default(),
            policy_denials: Family::default(),
            uploads_in_progress: Gauge::default(),
            gc_runs: Counter::default(),
            gc_bytes_freed: Counter::default(),
            audit_records_lost: Gauge::default(),
            cert_expiry: Family::default(),
            replica_primary_connected: Gauge::default(),
            replica_last_update: Gauge::default(),
            replica_serving_until: Gauge::default(),
        };
        let mut m = m;
        let r = &mut m.registry;
        r.register("requests", "Requests answered", m.requests.clone());
        r.register(
            "received_bytes",
            "Bytes received from clients (after TLS)",
            m.bytes_in.clone(),
        );
        r.register(
            "sent_bytes",
            "Bytes sent to clients (before TLS)",
            m.bytes_out.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "TLS handshakes that failed",
            m.handshake_failures.clone(),
        );
        r.register(
            "refused_requests",
            "Requests on open connections refused (certificate revoked or expired since the handshake)",
            m.refused_requests.clone(),
        );
        r.register(
            "connections_open",
            "Connections open",
            m.connections_open.clone(),
        );
        r.register(
            "connections_refused",
            "Connections closed at accept because the connection cap was reached",
            m.connections_refused.clone(),
        );
        r.register(
            "policy_denials",
            "Registry requests the policy denied",
            m.policy_denials.clone(),
        );
        r.register(
            "uploads_in_progress",
            "Blob upload sessions in progress",
            m.uploads_in_progress.clone(),
        );
        r.register("gc_runs", "Garbage collections run", m.gc_runs.clone());
        r.register(
            "gc_freed_bytes",
            "Bytes garbage collection freed",
            m.gc_bytes_freed.clone(),
        );
        r.register(
            "audit_records_lost",
            "Audit records lost to failed writes since start",
            m.audit_records_lost.clone(),
        );
        r.register(
            "certificate_expiry_timestamp_seconds",
            "When a certificate expires (Unix time)",
            m.cert_expiry.clone(),
        );
        r.register(
            "replica_primary_connected",
            "Registry replicas: 1 while the watch stream from the primary is open",
            m.replica_primary_connected.clone(),
        );
        r.register(
            "replica_last_update_timestamp_seconds",
            "Registry replicas: when the primary was last heard (Unix time)",
            m.replica_last_update.clone(),
        );
        r.register(
            "replica_serving_until_timestamp_seconds",
            "Registry replicas: when serving stops unless the primary is heard (Unix time)",
            m.replica_serving_until.clone(),
        );
        m
    }
}

impl Metrics {
    /// A fresh set, shared by the listeners and cores of one daemon.
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a request.
    pub fn request(&self, listener: &'static str, route: &'static str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                listener,
                route,
                status,
            })
            .inc();
    }
}

/// `[metrics]` in the config file: off by default; when on, plain HTTP on loopback (a
/// scraper on the same host, or a tunnel), as node_exporter does.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Serve `/metrics` at all.
    pub enabled: bool,
    /// Where. Loopback by default: the figures name repositories and listeners.
    pub listen: std::net::SocketAddr,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            enabled: false,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}
