//! Key algorithms and secret key material.

use std::fmt;
use std::str::FromStr;

use rcgen::{KeyPair, SignatureAlgorithm};
use rustls_pki_types::PrivatePkcs8KeyDer;
use serde::{Deserialize, Serialize};

use super::Error;

/// The key algorithms berth creates keys for. ECDSA P-256 is the default: small, fast, and
/// accepted by every docker, containerd and Go TLS stack. RSA exists for old clients and
/// hardware that cannot do ECDSA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 with SHA-256.
    #[default]
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
    /// RSA 2048 with SHA-256.
    Rsa2048,
    /// RSA 3072 with SHA-256.
    Rsa3072,
    /// RSA 4096 with SHA-256.
    Rsa4096,
}

impl KeyAlgorithm {
    /// Every algorithm, for help texts and completions.
    pub const ALL: [KeyAlgorithm; 6] = [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::Ed25519,
        KeyAlgorithm::Rsa2048,
        KeyAlgorithm::Rsa3072,
        KeyAlgorithm::Rsa4096,
    ];

    /// The name used in config files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::EcdsaP384 => "ecdsa-p384",
            KeyAlgorithm::Ed25519 => "ed25519",
            KeyAlgorithm::Rsa2048 => "rsa2048",
            KeyAlgorithm::Rsa3072 => "rsa3072",
            KeyAlgorithm::Rsa4096 => "rsa4096",
        }
    }

    /// The algorithm of a key as `inspect` describes it ("ECDSA P-256", "RSA 3072"), so a
    /// renewal gets a fresh key of the same kind.
    pub fn from_description(d: &str) -> Option<KeyAlgorithm> {
        match d {
            "ECDSA P-256" => Some(KeyAlgorithm::EcdsaP256),
            "ECDSA P-384" => Some(KeyAlgorithm::EcdsaP384),
            "Ed25519" => Some(KeyAlgorithm::Ed25519),
            "RSA 2048" => Some(KeyAlgorithm::Rsa2048),
            "RSA 3072" => Some(KeyAlgorithm::Rsa3072),
            "RSA 4096" => Some(KeyAlgorithm::Rsa4096),
            _ => None,
        }
    }

    /// True for RSA, whose TLS 1.2 key exchange also needs keyEncipherment.
    pub fn is_rsa(self) -> bool {
        matches!(
            self,
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096
        )
    }

    fn signature_algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
                &rcgen::PKCS_RSA_SHA256
            }
        }
    }

    /// Generates a fresh key pair. RSA keys come from the RustCrypto `rsa` crate because
    /// ring (our only crypto provider) cannot generate them; ring still does the signing.
    pub fn generate(self) -> Result<KeyPair, Error> {
        let bits = match self {
            KeyAlgorithm::Rsa2048 => 2048,
            KeyAlgorithm::Rsa3072 => 3072,
            KeyAlgorithm::Rsa4096 => 4096,
            _ => return Ok(KeyPair::generate_for(self.signature_algorithm())?),
        };
        use rsa::pkcs8::EncodePrivateKey;
        let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, bits)
            .map_err(|e| Error::KeyGeneration(e.to_string()))?;
        let der = key
            .to_pkcs8_der()
            .map_err(|e| Error::KeyGeneration(e.to_string()))?;
        Ok(KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(der.as_bytes()),
            self.signature_algorithm(),
        )?)
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KeyAlgorithm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let norm = s.to_ascii_lowercase().replace(['_', '-'], "");
        KeyAlgorithm::ALL
            .into_iter()
            .find(|a| a.name().replace('-', "") == norm)
            .ok_or_else(|| Error::UnknownKeyAlgorithm(s.to_string()))
    }
}

/// A private key in PKCS#8 PEM. Its `Debug` never prints the key, so it cannot leak
/// through a log line or an error message.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKeyPem(String);

impl SecretKeyPem {
    /// Wraps PEM text that is known to be a private key.
    pub fn new(pem: String) -> Self {
        SecretKeyPem(pem)
    }

    /// The PEM text. The name says `secret` so every use stands out in review.
    pub fn secret_pem(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretKeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[secret key elided]")
    }
}

#[cfg(test)]
mod tests;
