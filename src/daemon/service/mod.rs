//! Thin gRPC adapters: decode, call one core function, encode.

mod audit;
mod certs;
mod enrol;
mod pki;
mod registry;
mod replica;
mod system;

pub(crate) use audit::AuditSvc;
pub(crate) use certs::CertsSvc;
pub(crate) use enrol::{EnrolSvc, TokenSvc};
pub(crate) use pki::PkiSvc;
pub(crate) use registry::RegistrySvc;
pub(crate) use replica::ReplicaSvc;
pub(crate) use system::SystemSvc;

use tonic::Status;

/// Runs blocking core work (file I/O, key generation) off the async workers, as part of
/// the same request (its audit context travels along).
async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, Status>
where
    T: Send + 'static,
    E: Into<Status> + Send + 'static,
{
    let ctx = crate::audit::Context::current();
    tokio::task::spawn_blocking(move || crate::audit::Context::sync_scope(ctx, f))
        .await
        .map_err(|e| Status::internal(format!("worker failed: {e}")))?
        .map_err(Into::into)
}

/// Who sent `req`: `net::serve` put the identity on every request, and the authorising
/// interceptor has refused requests without one.
fn caller<T>(req: &tonic::Request<T>) -> crate::identity::Identity {
    req.extensions()
        .get::<crate::identity::Identity>()
        .cloned()
        .unwrap_or(crate::identity::Identity::Anonymous)
}
