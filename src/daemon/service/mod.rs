//! Thin gRPC adapters: decode, call one core function, encode.

mod certs;
mod enrol;
mod pki;
mod registry;
mod system;

pub(crate) use certs::CertsSvc;
pub(crate) use enrol::{EnrolSvc, TokenSvc};
pub(crate) use pki::PkiSvc;
pub(crate) use registry::RegistrySvc;
pub(crate) use system::SystemSvc;

use tonic::Status;

/// Runs blocking core work (file I/O, key generation) off the async workers.
async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, Status>
where
    T: Send + 'static,
    E: Into<Status> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("worker failed: {e}")))?
        .map_err(Into::into)
}
