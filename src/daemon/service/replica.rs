//! ReplicaService: the watch stream that carries the trust material (CA, CRL, revoked
//! serials, registry policy) to registry replicas. Whole snapshots, sent at once, on every
//! change and at least every heartbeat, so a replica that missed one catches up with the
//! next and can tell a quiet primary from a lost one.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::{blocking, caller};
use crate::daemon::State;
use crate::identity::Identity;
use crate::proto as pb;
use crate::proto::convert;
use crate::proto::replica_service_server::ReplicaService;

/// Longest quiet time on a watch stream: a replica that hears nothing for a few of these
/// counts the primary as lost.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(5);

/// The most audit records one report may carry.
pub(crate) const MAX_REPORTED: usize = 1000;

/// The ReplicaService adapter.
pub(crate) struct ReplicaSvc {
    pub state: Arc<State>,
}

type TrustStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::TrustUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl ReplicaService for ReplicaSvc {
    type WatchStream = TrustStream;

    async fn watch(
        &self,
        req: Request<pb::WatchTrustRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let who = caller(&req);
        let serial = match &who {
            Identity::Cert(c) => c.serial.clone(),
            Identity::Unix { .. } | Identity::Anonymous | Identity::Daemon => String::new(),
        };
        let listeners = req.into_inner().registry_listeners;
        tracing::info!(caller = %who, registry = ?listeners, "replica watching the trust material");
        let state = self.state.clone();
        let mut changes = state.trust.subscribe();
        let mut stopping = state.stopping();
        let first = snapshot(state.clone()).await?;
        let mut sent = first.generation;
        let (tx, out) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut next = Ok(first);
            loop {
                let end = next.is_err();
                if tx.send(next).await.is_err() || end {
                    tracing::info!(caller = %who, "replica stopped watching");
                    return;
                }
                let stop = tokio::select! {
                    _ = changes.changed() => false,
                    _ = tokio::time::sleep(HEARTBEAT) => false,
                    _ = stopping.wait_for(|s| *s) => true,
                };
                next = if stop {
                    Err(Status::unavailable("the primary is shutting down"))
                } else if !serial.is_empty() && state.gate_revoked(&serial) {
                    // The gate checked the caller once, when the stream opened.
                    Err(Status::unauthenticated(format!(
                        "certificate {serial} was revoked: this replica must enrol again"
                    )))
                } else if *state.trust.borrow() == sent {
                    Ok(heartbeat(sent))
                } else {
                    let s = snapshot(state.clone()).await;
                    if let Ok(u) = &s {
                        sent = u.generation;
                    }
                    s
                };
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }

    async fn report_audit(
        &self,
        req: Request<pb::ReportAuditRequest>,
    ) -> Result<Response<pb::ReportAuditResponse>, Status> {
        let via = match caller(&req) {
            Identity::Cert(c) => format!("{} ({})", c.common_name, c.serial),
            Identity::Unix { .. } | Identity::Anonymous | Identity::Daemon => {
                return Err(Status::permission_denied(
                    "only a registry replica reports audit records",
                ));
            }
        };
        let records = req.into_inner().records;
        if records.len() > MAX_REPORTED {
            return Err(Status::invalid_argument(format!(
                "{} records in one report: send at most {MAX_REPORTED}",
                records.len()
            )));
        }
        let mut recorded = 0u32;
        for r in records {
            let mut rec = convert::audit_record_in(r).map_err(Status::from)?;
            // Whatever the replica wrote there, the primary says who sent it.
            rec.via = Some(via.clone());
            self.state
                .audit
                .record_async(&rec)
                .await
                .map_err(|e| Status::unavailable(format!("the primary's audit log: {e}")))?;
            recorded += 1;
        }
        Ok(Response::new(pb::ReportAuditResponse { recorded }))
    }

    async fn status(
        &self,
        _: Request<pb::ReplicaStatusRequest>,
    ) -> Result<Response<pb::ReplicaStatusResponse>, Status> {
        Err(Status::failed_precondition(
            "this berthd is a primary, not a registry replica: ask a replica's socket (berthd --role registry)",
        ))
    }
}

/// "Nothing changed since `generation`."
fn heartbeat(generation: u64) -> pb::TrustUpdate {
    pb::TrustUpdate {
        generation,
        sent_at: Some(convert::ts(time::OffsetDateTime::now_utc())),
        heartbeat_seconds: heartbeat_seconds(),
        heartbeat_only: true,
        ..pb::TrustUpdate::default()
    }
}

fn heartbeat_seconds() -> u32 {
    u32::try_from(HEARTBEAT.as_secs()).unwrap_or(u32::MAX)
}

/// The trust material in force now, read under one generation number.
async fn snapshot(state: Arc<State>) -> Result<pb::TrustUpdate, Status> {
    let generation = *state.trust.borrow();
    let st = state.clone();
    let crl = blocking(move || st.pki.crl()).await?;
    let policy = state.registry.policy();
    Ok(pb::TrustUpdate {
        generation,
        ca_certificate_pem: state.pki.ca().cert_pem().to_string(),
        crl_pem: crl.pem,
        crl_next_update: Some(convert::ts(crl.next_update)),
        revoked_serials: state.pki.revoked_serials().into_iter().collect(),
        policy_toml: policy.text.clone(),
        policy_source: policy.source.clone(),
        sent_at: Some(convert::ts(time::OffsetDateTime::now_utc())),
        heartbeat_seconds: heartbeat_seconds(),
        heartbeat_only: false,
        store: state
            .config
            .registry
            .s3
            .as_ref()
            .map(crate::registry::S3Settings::location)
            .unwrap_or_default(),
    })
}
