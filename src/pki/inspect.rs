//! Decoding any X.509 certificate, whoever made it, and relating it to the berth CA.

use std::net::IpAddr;

use rustls_pki_types::{CertificateDer, pem::PemObject};
use serde::Serialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};
use x509_parser::public_key::PublicKey;

use super::{Ca, CertStatus, Error, Names};

/// A decoded certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertDetails {
    /// Subject, RFC 4514 style.
    pub subject: String,
    /// Issuer, RFC 4514 style.
    pub issuer: String,
    /// Serial, lowercase hex.
    pub serial: String,
    /// Subject names and SANs.
    pub names: Names,
    /// Start of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// End of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// basicConstraints CA:TRUE.
    pub is_ca: bool,
    /// Key usages, RFC 5280 names.
    pub key_usages: Vec<String>,
    /// Extended key usages, RFC 5280 names or dotted OIDs.
    pub extended_key_usages: Vec<String>,
    /// Signature algorithm name.
    pub signature_algorithm: String,
    /// Public key algorithm and size.
    pub key_algorithm: String,
    /// SHA-256 of the DER, uppercase hex with colons.
    pub fingerprint_sha256: String,
    /// By the clock, or revoked by the berth CA.
    pub status: CertStatus,
    /// Signed by (or is) the berth CA.
    pub chains_to_berth_ca: bool,
    /// Subject equals issuer and it verifies with its own key.
    pub self_signed: bool,
}

/// Splits input into DER certificates: every CERTIFICATE block of a PEM bundle, or the
/// whole input as one DER certificate.
pub fn parse_certificates(data: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
    if data.trim_ascii_start().starts_with(b"-----BEGIN")
        || data.windows(10).any(|w| w == b"-----BEGIN")
    {
        let certs = CertificateDer::pem_slice_iter(data)
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::InvalidCertificate(format!("bad PEM: {e}")))?;
        if certs.is_empty() {
            return Err(Error::InvalidCertificate(
                "the PEM input has no CERTIFICATE block (is it a key or a CSR?)".into(),
            ));
        }
        return Ok(certs);
    }
    if data.is_empty() {
        return Err(Error::InvalidCertificate("empty input".into()));
    }
    X509Certificate::from_der(data)
        .map_err(|e| Error::InvalidCertificate(format!("neither PEM nor DER X.509 ({e})")))?;
    Ok(vec![data.to_vec()])
}

/// SHA-256 fingerprint in the form `openssl x509 -fingerprint -sha256` prints.
pub fn fingerprint_sha256(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// PEM-encodes a DER certificate.
pub(super) fn pem_encode(der: &[u8]) -> String {
    use std::fmt::Write;
    let b64 = base64_encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        let _ = writeln!(out, "{}", String::from_utf8_lossy(chunk));
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes one DER certificate. With `ca`, it says whether the berth CA signed it and asks
/// `revoked(serial)` whether the CA revoked it.
pub(super) fn details(
    der: &[u8],
    ca: Option<&Ca>,
    revoked: impl Fn(&str) -> bool,
) -> Result<CertDetails, Error> {
    let (_, x) =
        X509Certificate::from_der(der).map_err(|e| Error::InvalidCertificate(e.to_string()))?;
    let serial = hex::encode(x.raw_serial());
    let names = names(&x);
    let self_signed =
        x.subject().as_raw() == x.issuer().as_raw() && x.verify_signature(None).is_ok();
    let chains_to_berth_ca = ca.is_some_and(|ca| signed_by(&x, der, ca));
    let not_before = x.validity().not_before.to_datetime();
    let not_after = x.validity().not_after.to_datetime();
    let status = if chains_to_berth_ca
        && der != ca.map(|c| c.cert_der()).unwrap_or_default()
        && revoked(&serial)
    {
        CertStatus::Revoked
    } else {
        CertStatus::by_clock(not_before, not_after)
    };
    let mut d = CertDetails {
        subject: x.subject().to_string(),
        issuer: x.issuer().to_string(),
        serial,
        names,
        not_before,
        not_after,
        is_ca: false,
        key_usages: Vec::new(),
        extended_key_usages: Vec::new(),
        signature_algorithm: signature_algorithm(&x.signature_algorithm.algorithm.to_id_string()),
        key_algorithm: key_algorithm(&x),
        fingerprint_sha256: fingerprint_sha256(der),
        status,
        chains_to_berth_ca,
        self_signed,
    };
    for ext in x.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::BasicConstraints(bc) => d.is_ca = bc.ca,
            ParsedExtension::KeyUsage(ku) => {
                let flags = [
                    (ku.digital_signature(), "digitalSignature"),
                    (ku.non_repudiation(), "nonRepudiation"),
                    (ku.key_encipherment(), "keyEncipherment"),
                    (ku.data_encipherment(), "dataEncipherment"),
                    (ku.key_agreement(), "keyAgreement"),
                    (ku.key_cert_sign(), "keyCertSign"),
                    (ku.crl_sign(), "cRLSign"),
                    (ku.encipher_only(), "encipherOnly"),
                    (ku.decipher_only(), "decipherOnly"),
                ];
                d.key_usages = flags
                    .iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, n)| n.to_string())
                    .collect();
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                let flags = [
                    (eku.any, "anyExtendedKeyUsage"),
                    (eku.server_auth, "serverAuth"),
                    (eku.client_auth, "clientAuth"),
                    (eku.code_signing, "codeSigning"),
                    (eku.email_protection, "emailProtection"),
                    (eku.time_stamping, "timeStamping"),
                    (eku.ocsp_signing, "OCSPSigning"),
                ];
                d.extended_key_usages = flags
                    .iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, n)| n.to_string())
                    .collect();
                d.extended_key_usages
                    .extend(eku.other.iter().map(|o| o.to_id_string()));
            }
            _ => {}
        }
    }
    Ok(d)
}

fn signed_by(x: &X509Certificate<'_>, der: &[u8], ca: &Ca) -> bool {
    if der == ca.cert_der() {
        return true;
    }
    let Ok((_, ca_x)) = X509Certificate::from_der(ca.cert_der()) else {
        return false;
    };
    x.issuer().as_raw() == ca_x.subject().as_raw()
        && x.verify_signature(Some(ca_x.public_key())).is_ok()
}

fn names(x: &X509Certificate<'_>) -> Names {
    let strings = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| -> Vec<String> {
        it.filter_map(|a| a.as_str().ok().map(str::to_string)).collect()
    };
    let mut n = Names {
        common_name: strings(&mut x.subject().iter_common_name())
            .into_iter()
            .next()
            .unwrap_or_default(),
        organizations: strings(&mut x.subject().iter_organization()),
        organizational_units: strings(&mut x.subject().iter_organizational_unit()),
        ..Names::default()
    };
    if let Ok(Some(san)) = x.subject_alternative_name() {
        for g in &san.value.general_names {
            match g {
                GeneralName::DNSName(s) => n.dns_names.push(s.to_string()),
                GeneralName::URI(s) => n.uris.push(s.to_string()),
                GeneralName::RFC822Name(s) => n.emails.push(s.to_string()),
                GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        n.ip_addresses.push(IpAddr::from(a));
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        n.ip_addresses.push(IpAddr::from(a));
                    }
                }
                _ => {}
            }
        }
    }
    n
}

fn signature_algorithm(oid: &str) -> String {
    match oid {
        "1.2.840.10045.4.3.2" => "ecdsa-with-SHA256",
        "1.2.840.10045.4.3.3" => "ecdsa-with-SHA384",
        "1.2.840.10045.4.3.4" => "ecdsa-with-SHA512",
        "1.2.840.113549.1.1.5" => "sha1WithRSAEncryption",
        "1.2.840.113549.1.1.11" => "sha256WithRSAEncryption",
        "1.2.840.113549.1.1.12" => "sha384WithRSAEncryption",
        "1.2.840.113549.1.1.13" => "sha512WithRSAEncryption",
        "1.2.840.113549.1.1.10" => "rsassaPss",
        "1.3.101.112" => "ED25519",
        other => other,
    }
    .to_string()
}

fn key_algorithm(x: &X509Certificate<'_>) -> String {
    let spki = x.public_key();
    let alg = spki.algorithm.algorithm.to_id_string();
    match alg.as_str() {
        "1.3.101.112" => return "Ed25519".into(),
        "1.3.101.113" => return "Ed448".into(),
        _ => {}
    }
    match spki.parsed() {
        Ok(PublicKey::RSA(k)) => format!("RSA {}", k.key_size()),
        Ok(PublicKey::EC(_)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .unwrap_or_default();
            match curve.as_str() {
                "1.2.840.10045.3.1.7" => "ECDSA P-256".into(),
                "1.3.132.0.34" => "ECDSA P-384".into(),
                "1.3.132.0.35" => "ECDSA P-521".into(),
                other => format!("ECDSA {other}"),
            }
        }
        _ => alg,
    }
}

#[cfg(test)]
mod tests;
