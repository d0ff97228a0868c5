//! Core errors -> gRPC status, in one place and exhaustively: a new error variant does not
//! compile until someone decides what the client sees.

use std::io::ErrorKind;

use tonic::{Code, Status};

use crate::{certsd, fsutil, pki, registry};

fn fs_status(e: &fsutil::Error) -> Status {
    // The daemon's environment, not the caller, is at fault: say which path. Every other
    // I/O failure is berthd's own (io::ErrorKind is open-ended, so this is a test, not a match).
    let rights = matches!(
        e.io_kind(),
        Some(ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem)
    );
    if rights {
        Status::failed_precondition(format!(
            "{e} (berthd lacks the rights; run it as root or move the folder in its config)"
        ))
    } else {
        Status::internal(e.to_string())
    }
}

impl From<pki::Error> for Status {
    fn from(e: pki::Error) -> Status {
        use pki::Error as E;
        let code = match &e {
            E::InvalidName { .. }
            | E::MissingName(_)
            | E::InvalidRequest(_)
            | E::InvalidCsr(_)
            | E::CsrSignature
            | E::InvalidCertificate(_)
            | E::UnknownKeyAlgorithm(_) => Code::InvalidArgument,
            E::NotFound(_) => Code::NotFound,
            E::TokenRefused | E::NotPermitted(_) => Code::PermissionDenied,
            E::AlreadyRevoked(_) => Code::FailedPrecondition,
            E::SerialTaken(_) => Code::Aborted,
            E::CorruptIndex { .. } | E::CorruptCa { .. } => Code::DataLoss,
            E::Fs(f) => return fs_status(f),
            E::KeyGeneration(_) | E::Rcgen(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

impl From<certsd::Error> for Status {
    fn from(e: certsd::Error) -> Status {
        use certsd::Error as E;
        let code = match e {
            E::Pki(p) => return p.into(),
            E::Fs(ref f) => return fs_status(f),
            E::InvalidHost { .. } => Code::InvalidArgument,
            E::Conflict(_) => Code::AlreadyExists,
            E::NotInstalled(_) => Code::NotFound,
            E::Client(_) => Code::FailedPrecondition,
            E::CorruptState { .. } => Code::DataLoss,
        };
        Status::new(code, e.to_string())
    }
}

impl From<registry::Error> for Status {
    fn from(e: registry::Error) -> Status {
        use registry::Error as E;
        let code = match &e {
            E::Reference(_)
            | E::DigestMismatch { .. }
            | E::DigestMissing
            | E::SizeInvalid(_)
            | E::ManifestInvalid(_)
            | E::ManifestTooLarge { .. }
            | E::PaginationInvalid(_)
            | E::GraceTooShort { .. } => Code::InvalidArgument,
            E::NameUnknown(_)
            | E::ManifestUnknown { .. }
            | E::BlobUnknown(_)
            | E::UploadUnknown(_) => Code::NotFound,
            E::ManifestBlobUnknown(_)
            | E::RangeInvalid { .. }
            | E::ChunkLength { .. }
            | E::RangeNotSatisfiable { .. }
            | E::DeleteDisabled => Code::FailedPrecondition,
            E::Body(_) => Code::Aborted,
            E::Denied { .. } => Code::PermissionDenied,
            E::Fs(f) => return fs_status(f),
            E::Io { .. } => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

impl From<crate::proto::convert::WireError> for Status {
    fn from(e: crate::proto::convert::WireError) -> Status {
        Status::invalid_argument(e.to_string())
    }
}

impl From<crate::audit::Error> for Status {
    fn from(e: crate::audit::Error) -> Status {
        use crate::audit::Error as E;
        let code = match &e {
            E::Query(_) => Code::InvalidArgument,
            E::Io { .. } | E::Fs(_) | E::Write(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}
