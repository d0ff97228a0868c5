//! Every domain <-> wire mapping of the control API, both directions, in one room, so the
//! daemon and the client cannot disagree. Each `match` is exhaustive: a new domain variant
//! must be given a wire value before it compiles. Decoding fails with a [`WireError`]; the
//! daemon answers it as InvalidArgument, the client reports it as a protocol error.

mod audit;
mod certs;
mod pki;
mod registry;

pub(crate) use audit::*;
pub(crate) use certs::*;
pub(crate) use pki::*;
pub(crate) use registry::*;

use time::OffsetDateTime;

use crate::pki::{CertKind, CertStatus, KeyAlgorithm, Names};
use crate::proto as pb;

/// Why a message from the wire could not be turned into domain types.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// An enum number this build does not know.
    #[error("unknown {what} {value}")]
    Unknown {
        /// Which field.
        what: &'static str,
        /// The number.
        value: i32,
    },
    /// A text field that does not parse.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// Which field.
        what: &'static str,
        /// What was sent.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// A required field is absent.
    #[error("no {0} in the message")]
    Missing(&'static str),
}

/// A digest from the wire.
pub(crate) fn digest_in(s: &str) -> Result<crate::registry::Digest, WireError> {
    s.parse()
        .map_err(|e: crate::registry::reference::Error| WireError::Invalid {
            what: "digest",
            value: s.to_string(),
            reason: e.to_string(),
        })
}

/// An optional digest from the wire (empty: none).
pub(crate) fn opt_digest_in(s: &str) -> Result<Option<crate::registry::Digest>, WireError> {
    if s.is_empty() {
        Ok(None)
    } else {
        digest_in(s).map(Some)
    }
}

/// An optional text from the wire (empty: none).
pub(crate) fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// A timestamp on the wire (whole seconds: certificates carry no more).
pub(crate) fn ts(t: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: 0,
    }
}

/// A timestamp from the wire; out-of-range values become the epoch, which every status
/// check treats as long past.
pub(crate) fn time_in(t: prost_types::Timestamp) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t.seconds).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The wire form of a certificate kind.
pub(crate) fn kind_out(k: CertKind) -> pb::CertificateKind {
    match k {
        CertKind::Server => pb::CertificateKind::Server,
        CertKind::Client => pb::CertificateKind::Client,
        CertKind::Admin => pb::CertificateKind::Admin,
        CertKind::Replica => pb::CertificateKind::Replica,
    }
}

/// A certificate kind from the wire; `None` for UNSPECIFIED or a number this build does
/// not know, so each side decides what that means.
pub(crate) fn kind_in(k: i32) -> Option<CertKind> {
    match pb::CertificateKind::try_from(k).ok()? {
        pb::CertificateKind::Server => Some(CertKind::Server),
        pb::CertificateKind::Client => Some(CertKind::Client),
        pb::CertificateKind::Admin => Some(CertKind::Admin),
        pb::CertificateKind::Replica => Some(CertKind::Replica),
        pb::CertificateKind::Unspecified => None,
    }
}

/// The wire form of a key algorithm.
pub(crate) fn key_algorithm_out(k: KeyAlgorithm) -> pb::KeyAlgorithm {
    match k {
        KeyAlgorithm::EcdsaP256 => pb::KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384 => pb::KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::Ed25519 => pb::KeyAlgorithm::Ed25519,
        KeyAlgorithm::Rsa2048 => pb::KeyAlgorithm::Rsa2048,
        KeyAlgorithm::Rsa3072 => pb::KeyAlgorithm::Rsa3072,
        KeyAlgorithm::Rsa4096 => pb::KeyAlgorithm::Rsa4096,
    }
}

/// The wire form of a certificate status.
pub(crate) fn status_out(s: CertStatus) -> pb::CertificateStatus {
    match s {
        CertStatus::Valid => pb::CertificateStatus::Valid,
        CertStatus::Expired => pb::CertificateStatus::Expired,
        CertStatus::Revoked => pb::CertificateStatus::Revoked,
        CertStatus::NotYetValid => pb::CertificateStatus::NotYetValid,
    }
}

/// A certificate status from the wire; `None` when unset or unknown to this build.
pub(crate) fn status_in(s: i32) -> Option<CertStatus> {
    match pb::CertificateStatus::try_from(s).ok()? {
        pb::CertificateStatus::Valid => Some(CertStatus::Valid),
        pb::CertificateStatus::Expired => Some(CertStatus::Expired),
        pb::CertificateStatus::Revoked => Some(CertStatus::Revoked),
        pb::CertificateStatus::NotYetValid => Some(CertStatus::NotYetValid),
        pb::CertificateStatus::Unspecified => None,
    }
}

/// The wire form of subject names and SANs.
pub(crate) fn names_out(n: &Names) -> pb::Names {
    pb::Names {
        common_name: n.common_name.clone(),
        organizations: n.organizations.clone(),
        organizational_units: n.organizational_units.clone(),
        dns_names: n.dns_names.clone(),
        ip_addresses: n.ip_addresses.iter().map(ToString::to_string).collect(),
        uris: n.uris.clone(),
        emails: n.emails.clone(),
    }
}
