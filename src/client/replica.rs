//! The replica half of the client: the watch stream a registry replica reads its trust
//! material from (`berthd --role registry`).

use futures_util::StreamExt;
use time::OffsetDateTime;

use super::{Client, Error};
use crate::proto as pb;
use crate::proto::convert::time_in;
use crate::proto::replica_service_client::ReplicaServiceClient;

/// One snapshot of what the primary enforces, as a replica takes it in.
#[derive(Debug, Clone)]
pub struct TrustUpdate {
    /// The primary's change counter.
    pub generation: u64,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The CRL, PEM.
    pub crl_pem: String,
    /// When the CRL lapses.
    pub crl_next_update: OffsetDateTime,
    /// Revoked serials, lowercase hex.
    pub revoked_serials: Vec<String>,
    /// The registry policy as TOML; empty for the built-in defaults.
    pub policy_toml: String,
    /// Where the primary's policy came from.
    pub policy_source: String,
    /// The longest the primary stays quiet.
    pub heartbeat: std::time::Duration,
    /// A heartbeat: nothing changed since the last update, and only `generation` and
    /// `heartbeat` are set.
    pub heartbeat_only: bool,
    /// Where the primary's registry keeps content (`S3Settings::location`), or empty.
    pub store: String,
}

/// The stream of updates; it ends with an error when the primary hangs up.
pub type TrustStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<TrustUpdate, Error>> + Send>>;

impl Client {
    /// Opens the watch stream of a replica, whose certificate this connection presents;
    /// `listeners` tell the primary's log where the replica serves.
    pub async fn watch_trust(&self, listeners: Vec<String>) -> Result<TrustStream, Error> {
        let s = ReplicaServiceClient::new(self.channel.clone())
            .watch(pb::WatchTrustRequest {
                registry_listeners: listeners,
            })
            .await?
            .into_inner();
        Ok(Box::pin(s.map(|r| {
            let u = r?;
            Ok(TrustUpdate {
                generation: u.generation,
                ca_pem: u.ca_certificate_pem,
                crl_pem: u.crl_pem,
                crl_next_update: match u.crl_next_update {
                    Some(t) => time_in(t),
                    None if u.heartbeat_only => OffsetDateTime::UNIX_EPOCH,
                    None => {
                        return Err(Error::Protocol("a trust update without nextUpdate".into()));
                    }
                },
                revoked_serials: u.revoked_serials,
                policy_toml: u.policy_toml,
                policy_source: u.policy_source,
                heartbeat: std::time::Duration::from_secs(u64::from(u.heartbeat_seconds.max(1))),
                heartbeat_only: u.heartbeat_only,
                store: u.store,
            })
        })))
    }
}

/// A replica's link to its primary, as `berth replica status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplicaStatus {
    /// The primary, host:port.
    pub primary: String,
    /// Whether the watch stream is open.
    pub connected: bool,
    /// Since when it has been open or lost.
    #[serde(with = "time::serde::rfc3339::option")]
    pub since: Option<OffsetDateTime>,
    /// When the primary was last heard.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_update_at: Option<OffsetDateTime>,
    /// The primary's change counter then.
    pub generation: u64,
    /// When the CRL in force lapses.
    #[serde(with = "time::serde::rfc3339::option")]
    pub crl_next_update: Option<OffsetDateTime>,
    /// When the replica stops serving unless it hears the primary.
    #[serde(with = "time::serde::rfc3339::option")]
    pub serving_until: Option<OffsetDateTime>,
    /// Its own certificate's serial.
    pub certificate_serial: String,
    /// And expiry.
    #[serde(with = "time::serde::rfc3339::option")]
    pub certificate_not_after: Option<OffsetDateTime>,
    /// Where the policy in force came from.
    pub policy_source: String,
    /// Where it serves the registry.
    pub registry_listeners: Vec<String>,
    /// Why the last connection to the primary failed.
    pub last_error: String,
    /// Revoked serials it enforces.
    pub revoked_count: u32,
}

impl Client {
    /// Hands the primary audit records a replica made; how many it wrote.
    pub async fn report_audit(&self, records: &[crate::audit::Record]) -> Result<u32, Error> {
        let r = ReplicaServiceClient::new(self.channel.clone())
            .report_audit(pb::ReportAuditRequest {
                records: records
                    .iter()
                    .map(crate::proto::convert::audit_record_out)
                    .collect(),
            })
            .await?
            .into_inner();
        Ok(r.recorded)
    }

    /// A replica's status (asked on the replica's own socket).
    pub async fn replica_status(&self) -> Result<ReplicaStatus, Error> {
        let r = ReplicaServiceClient::new(self.channel.clone())
            .status(pb::ReplicaStatusRequest {})
            .await?
            .into_inner();
        Ok(ReplicaStatus {
            primary: r.primary,
            connected: r.connected,
            since: r.since.map(time_in),
            last_update_at: r.last_update_at.map(time_in),
            generation: r.generation,
            crl_next_update: r.crl_next_update.map(time_in),
            serving_until: r.serving_until.map(time_in),
            certificate_serial: r.certificate_serial,
            certificate_not_after: r.certificate_not_after.map(time_in),
            policy_source: r.policy_source,
            registry_listeners: r.registry_listeners,
            last_error: r.last_error,
            revoked_count: r.revoked_count,
        })
    }
}
