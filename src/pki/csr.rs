//! Signing certificate signing requests whose private key never leaves the requester.

use rcgen::{CertificateSigningRequestParams, DnType, SanType};
use rustls_pki_types::{CertificateSigningRequestDer, pem::PemObject};

use super::issue::{apply_profile, check_dns};
use super::{Ca, CertKind, Error, Names};

/// Verifies the CSR's self-signature, keeps only its public key, subject and SANs, and
/// signs it with `profile`. rcgen would copy the CSR's basicConstraints (CA:TRUE included),
/// key usages and EKUs; `apply_profile` overwrites all of them.
pub(super) fn sign(
    csr: &[u8],
    profile: CertKind,
    serial: &[u8],
    days: u32,
    ca: &Ca,
    fixed: Option<&Names>,
) -> Result<Vec<u8>, Error> {
    let der = if csr.trim_ascii_start().starts_with(b"-----BEGIN") {
        CertificateSigningRequestDer::from_pem_slice(csr).map_err(|_| {
            Error::InvalidCsr("no CERTIFICATE REQUEST block in the PEM input".into())
        })?
    } else {
        CertificateSigningRequestDer::from(csr.to_vec())
    };
    weak(&der)?;
    let mut req = CertificateSigningRequestParams::from_der(&der).map_err(|e| match e {
        rcgen::Error::InvalidCertificationRequestSignature => Error::CsrSignature,
        rcgen::Error::UnsupportedExtension => Error::InvalidCsr(
            "it requests an extension berth does not sign (only subjectAltName, keyUsage, extendedKeyUsage and basicConstraints)".into(),
        ),
        rcgen::Error::UnsupportedSignatureAlgorithm => {
            Error::InvalidCsr("its signature algorithm is not supported (use ECDSA, Ed25519 or RSA)".into())
        }
        other => Error::InvalidCsr(format!("cannot decode it as PKCS#10 ({other})")),
    })?;
    let p = &mut req.params;
    if let Some(n) = fixed {
        // An enrolment: the token decides who this is (and, for a replica, the names it
        // serves); the CSR contributes only its key.
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(DnType::CommonName, n.common_name.as_str());
        p.distinguished_name = dn;
        p.subject_alt_names = super::issue::sans(n)?;
    }
    let has_cn = p.distinguished_name.get(&DnType::CommonName).is_some();
    let mut has_host_san = false;
    for san in &p.subject_alt_names {
        match san {
            SanType::DnsName(d) => {
                check_dns(d.as_str(), profile.serves())?;
                has_host_san = true;
            }
            SanType::IpAddress(_) => has_host_san = true,
            _ => {}
        }
    }
    match profile {
        CertKind::Server | CertKind::Replica if !has_host_san => {
            return Err(Error::MissingName(
                "the CSR has no DNS or IP subjectAltName; a server certificate needs one",
            ));
        }
        CertKind::Client | CertKind::Admin if !has_cn => {
            return Err(Error::MissingName(
                "the CSR has no subject common name; a client certificate needs one",
            ));
        }
        _ => {}
    }
    let alg = req.public_key.algorithm();
    let rsa = [
        &rcgen::PKCS_RSA_SHA256,
        &rcgen::PKCS_RSA_SHA384,
        &rcgen::PKCS_RSA_SHA512,
    ]
    .into_iter()
    .any(|a| a == alg);
    apply_profile(&mut req.params, profile, rsa, serial, days, ca)?;
    Ok(req.signed_by(ca.issuer())?.der().to_vec())
}

/// The smallest RSA modulus berth signs for.
const MIN_RSA_BITS: usize = 2048;

/// Refuses a CSR whose key or signature is too weak, saying so (rcgen would report a
/// signature it does not support as an altered request).
fn weak(der: &[u8]) -> Result<(), Error> {
    use x509_parser::prelude::FromDer;
    use x509_parser::public_key::PublicKey;
    let Ok((_, csr)) = x509_parser::certification_request::X509CertificationRequest::from_der(der)
    else {
        // Undecodable: rcgen says why.
        return Ok(());
    };
    let accepted =
        "use RSA 2048 or larger, ECDSA P-256/P-384 or Ed25519, signed with SHA-256 or better";
    let sig = csr.signature_algorithm.algorithm.to_id_string();
    let weak_sig = match sig.as_str() {
        "1.2.840.113549.1.1.4" => Some("MD5"),
        "1.2.840.113549.1.1.5" | "1.2.840.10045.4.1" | "1.3.14.3.2.29" => Some("SHA-1"),
        "1.2.840.113549.1.1.2" => Some("MD2"),
        _ => None,
    };
    if let Some(h) = weak_sig {
        return Err(Error::InvalidCsr(format!(
            "it is signed with {h}, which is broken and not accepted: {accepted}"
        )));
    }
    if let Ok(PublicKey::RSA(rsa)) = csr.certification_request_info.subject_pki.parsed() {
        let bits = rsa.key_size();
        if bits < MIN_RSA_BITS {
            return Err(Error::InvalidCsr(format!(
                "its key is RSA-{bits}, too weak to sign: {accepted}"
            )));
        }
    }
    Ok(())
}
