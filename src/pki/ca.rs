//! The CA certificate and key: created once, then loaded at every start.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData,
};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::Settings;
use super::{Error, fingerprint_sha256, inspect};
use crate::fsutil;

/// The berth CA: the signer of every certificate berth issues, and the only trust anchor
/// berth's TLS listeners accept client certificates from.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: Vec<u8>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads `ca.crt` + `ca.key` from `dir`, or creates them when neither exists. One
    /// without the other is refused: a lone key means a CA whose certificate was lost, and
    /// silently making a new CA would strand every certificate already handed out.
    pub fn load_or_create(dir: &Path, cfg: &Settings) -> Result<Ca, Error> {
        let crt = dir.join("ca.crt");
        let key = dir.join("ca.key");
        match (crt.exists(), key.exists()) {
            (true, true) => Ca::load(&crt, &key),
            (false, false) => Ca::create(&crt, &key, cfg),
            (true, false) => Err(Error::CorruptCa {
                path: key,
                reason: "ca.crt exists but ca.key is missing; restore ca.key from a backup".into(),
            }),
            (false, true) => Err(Error::CorruptCa {
                path: crt,
                reason: "ca.key exists but ca.crt is missing; restore ca.crt from a backup".into(),
            }),
        }
    }

    fn create(crt: &Path, key_path: &Path, cfg: &Settings) -> Result<Ca, Error> {
        let key = cfg.ca_key_algorithm.generate()?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cfg.ca_common_name.as_str());
        dn.push(DnType::OrganizationName, "berth");
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let mut serial = [0u8; 16];
        getrandom::fill(&mut serial).map_err(|e| Error::KeyGeneration(e.to_string()))?;
        serial[0] = (serial[0] & 0x7f) | 0x01;
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let now = OffsetDateTime::now_utc();
        p.not_before = now - Duration::minutes(5);
        p.not_after = now + Duration::days(i64::from(cfg.ca_validity_days.max(1)));
        let cert = p.self_signed(&key)?;
        // Key first: a crash in between leaves a lone key, which load_or_create refuses
        // loudly instead of silently replacing the CA.
        fsutil::write_atomic(key_path, key.serialize_pem().as_bytes(), 0o600)?;
        fsutil::write_atomic(crt, cert.pem().as_bytes(), 0o644)?;
        tracing::info!(fingerprint = %fingerprint_sha256(cert.der()), algorithm = %cfg.ca_key_algorithm, "created CA");
        Ca::from_parts(cert.der().to_vec(), key, crt)
    }

    fn load(crt: &Path, key_path: &Path) -> Result<Ca, Error> {
        let corrupt = |path: &Path, reason: String| Error::CorruptCa {
            path: path.to_path_buf(),
            reason,
        };
        let key_pem = String::from_utf8(fsutil::read(key_path)?)
            .map_err(|_| corrupt(key_path, "not PEM text".into()))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| corrupt(key_path, e.to_string()))?;
        let ders = inspect::parse_certificates(&fsutil::read(crt)?)
            .map_err(|e| corrupt(crt, e.to_string()))?;
        let der = ders
            .into_iter()
            .next()
            .ok_or_else(|| corrupt(crt, "no certificate".into()))?;
        Ca::from_parts(der, key, crt)
    }

    fn from_parts(der: Vec<u8>, key: KeyPair, crt: &Path) -> Result<Ca, Error> {
        let corrupt = |reason: String| Error::CorruptCa {
            path: crt.to_path_buf(),
            reason,
        };
        let (_, x509) = X509Certificate::from_der(&der).map_err(|e| corrupt(e.to_string()))?;
        if x509.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(corrupt("ca.key does not match ca.crt".into()));
        }
        let issuer = Issuer::from_ca_cert_der(&der.clone().into(), key)?;
        Ok(Ca {
            issuer,
            cert_pem: inspect::pem_encode(&der),
            cert_der: der,
        })
    }

    /// The rcgen issuer that signs leaves and CRLs.
    pub(super) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// SHA-256 fingerprint of the CA certificate, uppercase hex with colons.
    pub fn fingerprint(&self) -> String {
        fingerprint_sha256(&self.cert_der)
    }

    /// End of the CA's validity; leaves never outlive it.
    pub fn not_after(&self) -> Result<OffsetDateTime, Error> {
        let (_, x509) = X509Certificate::from_der(&self.cert_der)
            .map_err(|e| Error::InvalidCertificate(e.to_string()))?;
        Ok(x509.validity().not_after.to_datetime())
    }
}
