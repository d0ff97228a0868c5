//! PKI mappings: certificates, names, kinds, key algorithms, callers.

use std::net::IpAddr;

use time::OffsetDateTime;

use super::{WireError, kind_in, kind_out, names_out, status_in, status_out, time_in, ts};
use crate::identity::Identity;
use crate::pki::{self, CertKind, KeyAlgorithm};
use crate::proto as pb;

/// A kind in a request; UNSPECIFIED is `None`, an unknown number is refused as `what`.
pub(crate) fn kind_request(k: i32, what: &'static str) -> Result<Option<CertKind>, WireError> {
    match kind_in(k) {
        Some(kind) => Ok(Some(kind)),
        None if k == pb::CertificateKind::Unspecified as i32 => Ok(None),
        None => Err(WireError::Unknown { what, value: k }),
    }
}

/// A kind in an answer, which must be known.
pub(crate) fn kind_answer(k: i32) -> Result<CertKind, WireError> {
    kind_in(k).ok_or(WireError::Unknown {
        what: "certificate kind",
        value: k,
    })
}

/// A key algorithm in a request (UNSPECIFIED: the default, P-256).
pub(crate) fn key_algorithm_in(k: i32) -> Result<KeyAlgorithm, WireError> {
    use pb::KeyAlgorithm as P;
    Ok(
        match P::try_from(k).map_err(|_| WireError::Unknown {
            what: "key algorithm",
            value: k,
        })? {
            P::Unspecified | P::EcdsaP256 => KeyAlgorithm::EcdsaP256,
            P::EcdsaP384 => KeyAlgorithm::EcdsaP384,
            P::Ed25519 => KeyAlgorithm::Ed25519,
            P::Rsa2048 => KeyAlgorithm::Rsa2048,
            P::Rsa3072 => KeyAlgorithm::Rsa3072,
            P::Rsa4096 => KeyAlgorithm::Rsa4096,
        },
    )
}

/// Names from the wire; an IP address that does not parse is refused.
pub(crate) fn names_in(n: Option<pb::Names>) -> Result<pki::Names, WireError> {
    let n = n.unwrap_or_default();
    let ip_addresses = n
        .ip_addresses
        .iter()
        .map(|s| {
            s.trim().parse::<IpAddr>().map_err(|_| WireError::Invalid {
                what: "IP address",
                value: s.clone(),
                reason: "expected e.g. 10.0.0.5 or fd00::5".into(),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(pki::Names {
        common_name: n.common_name,
        organizations: n.organizations,
        organizational_units: n.organizational_units,
        dns_names: n.dns_names,
        ip_addresses,
        uris: n.uris,
        emails: n.emails,
    })
}

/// A certificate record on the wire.
pub(crate) fn record_out(r: &pki::CertRecord) -> pb::IssuedCertificate {
    pb::IssuedCertificate {
        serial: r.serial.clone(),
        kind: kind_out(r.kind).into(),
        names: Some(names_out(&r.names)),
        not_before: Some(ts(r.not_before)),
        not_after: Some(ts(r.not_after)),
        fingerprint_sha256: r.fingerprint_sha256.clone(),
        status: status_out(r.status()).into(),
        revoked_at: r.revoked_at.map(ts),
        key_held: r.key_held,
        from_csr: r.from_csr,
        certificate_pem: r.certificate_pem.clone(),
        key_algorithm: r.key_algorithm.clone(),
    }
}

/// Certificate details on the wire.
pub(crate) fn details_out(d: &pki::CertDetails) -> pb::CertificateDetails {
    pb::CertificateDetails {
        subject: d.subject.clone(),
        issuer: d.issuer.clone(),
        serial: d.serial.clone(),
        names: Some(names_out(&d.names)),
        not_before: Some(ts(d.not_before)),
        not_after: Some(ts(d.not_after)),
        is_ca: d.is_ca,
        key_usages: d.key_usages.clone(),
        extended_key_usages: d.extended_key_usages.clone(),
        signature_algorithm: d.signature_algorithm.clone(),
        key_algorithm: d.key_algorithm.clone(),
        fingerprint_sha256: d.fingerprint_sha256.clone(),
        status: status_out(d.status).into(),
        chains_to_berth_ca: d.chains_to_berth_ca,
        self_signed: d.self_signed,
    }
}

/// The caller as berthd saw it.
pub(crate) fn caller_out(c: &Identity) -> pb::Caller {
    match c {
        Identity::Unix { uid, gid, pid } => pb::Caller {
            transport: pb::Transport::Unix.into(),
            uid: Some(*uid),
            gid: Some(*gid),
            pid: *pid,
            ..Default::default()
        },
        Identity::Cert(cert) => pb::Caller {
            transport: pb::Transport::TcpMtls.into(),
            common_name: cert.common_name.clone(),
            certificate_serial: cert.serial.clone(),
            ..Default::default()
        },
        Identity::Anonymous | Identity::Daemon => pb::Caller::default(),
    }
}

/// A certificate record from the wire.
pub(crate) fn record_in(r: pb::IssuedCertificate) -> Result<pki::CertRecord, WireError> {
    Ok(pki::CertRecord {
        serial: r.serial,
        kind: kind_answer(r.kind)?,
        names: names_in(r.names)?,
        not_before: r
            .not_before
            .map(time_in)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH),
        not_after: r
            .not_after
            .map(time_in)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH),
        fingerprint_sha256: r.fingerprint_sha256,
        revoked_at: r.revoked_at.map(time_in),
        key_held: r.key_held,
        from_csr: r.from_csr,
        key_algorithm: r.key_algorithm,
        certificate_pem: r.certificate_pem,
    })
}

/// Certificate details from the wire.
pub(crate) fn details_in(d: pb::CertificateDetails) -> Result<pki::CertDetails, WireError> {
    Ok(pki::CertDetails {
        subject: d.subject,
        issuer: d.issuer,
        serial: d.serial,
        names: names_in(d.names)?,
        not_before: d
            .not_before
            .map(time_in)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH),
        not_after: d
            .not_after
            .map(time_in)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH),
        is_ca: d.is_ca,
        key_usages: d.key_usages,
        extended_key_usages: d.extended_key_usages,
        signature_algorithm: d.signature_algorithm,
        key_algorithm: d.key_algorithm,
        fingerprint_sha256: d.fingerprint_sha256,
        status: status_in(d.status).ok_or(WireError::Unknown {
            what: "certificate status",
            value: d.status,
        })?,
        chains_to_berth_ca: d.chains_to_berth_ca,
        self_signed: d.self_signed,
    })
}

/// An enrolment token on the wire (never its secret).
pub(crate) fn token_out(t: &pki::TokenRecord) -> pb::Token {
    pb::Token {
        id: t.id.clone(),
        name: t.name.clone(),
        created_at: Some(ts(t.created_at)),
        expires_at: Some(ts(t.expires_at)),
        used_at: t.used_at.map(ts),
        revoked_at: t.revoked_at.map(ts),
        certificate_serial: t.certificate_serial.clone().unwrap_or_default(),
        replica: t.replica,
        names: t.names.clone(),
    }
}

/// An enrolment token from the wire.
pub(crate) fn token_in(t: pb::Token) -> pki::TokenRecord {
    let at =
        |t: Option<prost_types::Timestamp>| t.map(time_in).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    pki::TokenRecord {
        id: t.id,
        name: t.name,
        created_at: at(t.created_at),
        expires_at: at(t.expires_at),
        used_at: t.used_at.map(time_in),
        revoked_at: t.revoked_at.map(time_in),
        certificate_serial: super::opt(t.certificate_serial),
        replica: t.replica,
        names: t.names,
    }
}
