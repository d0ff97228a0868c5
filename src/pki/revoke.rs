//! The certificate revocation list: re-signed on every revocation and at every start.

use std::path::Path;

use rcgen::{
    CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams, SerialNumber,
};
use rustls_pki_types::{CertificateRevocationListDer, pem::PemObject};
use serde::Serialize;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use super::{Ca, CertRecord, Error};
use crate::fsutil;

/// A signed CRL.
#[derive(Debug, Clone, Serialize)]
pub struct Crl {
    /// The CRL, PEM.
    pub pem: String,
    /// How many serials it lists.
    pub revoked_count: usize,
    /// When it was signed.
    #[serde(with = "time::serde::rfc3339")]
    pub this_update: OffsetDateTime,
    /// When it should be replaced.
    #[serde(with = "time::serde::rfc3339")]
    pub next_update: OffsetDateTime,
}

impl Crl {
    /// The CRL in DER, for TLS verifiers.
    pub fn der(&self) -> Result<Vec<u8>, Error> {
        CertificateRevocationListDer::from_pem_slice(self.pem.as_bytes())
            .map(|d| d.to_vec())
            .map_err(|e| Error::InvalidCertificate(format!("CRL: {e}")))
    }

    pub(super) fn sign_and_write(
        dir: &Path,
        ca: &Ca,
        records: &[std::sync::Arc<CertRecord>],
        number: u64,
        lifetime: Duration,
    ) -> Result<(), Error> {
        let now = OffsetDateTime::now_utc();
        let revoked_certs = records
            .iter()
            .filter_map(|r| Some((r, r.revoked_at?)))
            .map(|(r, at)| {
                let serial = hex::decode(&r.serial).map_err(|_| {
                    Error::InvalidRequest(format!("bad serial {} in index", r.serial))
                })?;
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&serial),
                    revocation_time: at,
                    reason_code: Some(RevocationReason::Unspecified),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + lifetime,
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(ca.issuer())?;
        fsutil::write_atomic(&dir.join("crl.pem"), crl.pem()?.as_bytes(), 0o644)?;
        Ok(())
    }

    pub(super) fn read(
        dir: &Path,
        records: &[std::sync::Arc<CertRecord>],
        lifetime: Duration,
    ) -> Result<Crl, Error> {
        let path = dir.join("crl.pem");
        let pem = String::from_utf8(fsutil::read(&path)?)
            .map_err(|_| Error::InvalidCertificate(format!("{} is not PEM", path.display())))?;
        let der = CertificateRevocationListDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| Error::InvalidCertificate(format!("{}: {e}", path.display())))?;
        let (_, crl) = CertificateRevocationList::from_der(&der)
            .map_err(|e| Error::InvalidCertificate(format!("{}: {e}", path.display())))?;
        let this_update = crl.last_update().to_datetime();
        let next_update = crl
            .next_update()
            .map(|t| t.to_datetime())
            .unwrap_or(this_update + lifetime);
        Ok(Crl {
            revoked_count: records.iter().filter(|r| r.revoked_at.is_some()).count(),
            pem,
            this_update,
            next_update,
        })
    }
}
