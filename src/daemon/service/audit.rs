//! AuditService: the audit log, read through the daemon (so it works over `--host` too).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::blocking;
use crate::daemon::State;
use crate::proto as pb;
use crate::proto::audit_service_server::AuditService;
use crate::proto::convert;

/// The AuditService adapter.
pub(crate) struct AuditSvc {
    pub state: Arc<State>,
}

#[tonic::async_trait]
impl AuditService for AuditSvc {
    async fn query(
        &self,
        req: Request<pb::AuditQueryRequest>,
    ) -> Result<Response<pb::AuditQueryResponse>, Status> {
        let filter = convert::audit_filter_in(req.into_inner())?;
        let state = self.state.clone();
        let records = blocking(move || state.audit.query(&filter)).await?;
        Ok(Response::new(pb::AuditQueryResponse {
            records: records.iter().map(convert::audit_record_out).collect(),
        }))
    }
}
