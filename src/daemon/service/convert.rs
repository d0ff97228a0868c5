//! Domain <-> proto conversions for the service adapters. Proto types stop here.

use std::net::IpAddr;
use std::path::Path;

use tonic::Status;

use crate::certsd::{self, ActionKind, Root};
use crate::identity::Identity;
use crate::pki::{self, CertKind, KeyAlgorithm};
use crate::proto as pb;
pub(super) use crate::proto::convert::{self, kind_out, names_out, status_out, ts};

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// A kind from a request; UNSPECIFIED is `None`, an unknown number is refused with `what`.
pub(super) fn kind_in(k: i32, what: &str) -> Result<Option<CertKind>, Status> {
    match convert::kind_in(k) {
        Some(kind) => Ok(Some(kind)),
        None if k == pb::CertificateKind::Unspecified as i32 => Ok(None),
        None => Err(Status::invalid_argument(format!("unknown {what} {k}"))),
    }
}

pub(super) fn key_algorithm_in(k: i32) -> Result<KeyAlgorithm, Status> {
    use pb::KeyAlgorithm as P;
    Ok(
        match P::try_from(k)
            .map_err(|_| Status::invalid_argument(format!("unknown key algorithm {k}")))?
        {
            P::Unspecified | P::EcdsaP256 => KeyAlgorithm::EcdsaP256,
            P::EcdsaP384 => KeyAlgorithm::EcdsaP384,
            P::Ed25519 => KeyAlgorithm::Ed25519,
            P::Rsa2048 => KeyAlgorithm::Rsa2048,
            P::Rsa3072 => KeyAlgorithm::Rsa3072,
            P::Rsa4096 => KeyAlgorithm::Rsa4096,
        },
    )
}

pub(super) fn names_in(n: Option<pb::Names>) -> Result<pki::Names, Status> {
    let n = n.unwrap_or_default();
    let ip_addresses = n
        .ip_addresses
        .iter()
        .map(|s| {
            s.trim().parse::<IpAddr>().map_err(|_| {
                Status::invalid_argument(format!(
                    "invalid IP address {s:?}: expected e.g. 10.0.0.5 or fd00::5"
                ))
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

pub(super) fn record_out(r: &pki::CertRecord) -> pb::IssuedCertificate {
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

pub(super) fn details_out(d: &pki::CertDetails) -> pb::CertificateDetails {
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

pub(super) fn caller_out(c: &Identity) -> pb::Caller {
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
        Identity::Daemon => pb::Caller::default(),
    }
}

pub(super) fn actions_out(a: &[certsd::FileAction]) -> Vec<pb::FileAction> {
    a.iter()
        .map(|a| pb::FileAction {
            kind: match a.kind {
                ActionKind::CreateDir => pb::FileActionKind::CreateDir,
                ActionKind::Create => pb::FileActionKind::Create,
                ActionKind::Replace => pb::FileActionKind::Replace,
                ActionKind::Unchanged => pb::FileActionKind::Unchanged,
                ActionKind::Delete => pb::FileActionKind::Delete,
                ActionKind::KeepModified => pb::FileActionKind::KeepModified,
                ActionKind::DeleteDir => pb::FileActionKind::DeleteDir,
            }
            .into(),
            path: path(&a.path),
            mode: a.mode,
        })
        .collect()
}

pub(super) fn entry_out(e: &certsd::Entry) -> pb::CertsEntry {
    let file = |f: &certsd::CertFile| pb::CertFileState {
        path: path(&f.path),
        subject: f.subject.clone(),
        not_after: f.not_after.map(ts),
        berth_ca: f.berth_ca,
    };
    pb::CertsEntry {
        root: match e.root {
            Root::Docker => pb::CertsRoot::Docker,
            Root::Containers => pb::CertsRoot::Containers,
        }
        .into(),
        host: e.host.clone(),
        directory: path(&e.directory),
        managed: e.managed,
        cas: e.cas.iter().map(file).collect(),
        clients: e.clients.iter().map(file).collect(),
        problems: e.problems.clone(),
    }
}
