//! The PKI's settings (`[pki]` in the config file), owned here and composed by `config`.

use serde::{Deserialize, Serialize};

use super::KeyAlgorithm;

/// Certificate authority settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Subject common name of a newly created CA.
    pub ca_common_name: String,
    /// Key algorithm of a newly created CA.
    pub ca_key_algorithm: KeyAlgorithm,
    /// Validity of a newly created CA, in days.
    pub ca_validity_days: u32,
    /// Validity of issued certificates when the request does not say, in days.
    pub default_validity_days: u32,
    /// How long a CRL stays current (its nextUpdate). berthd re-signs it once half of
    /// this is gone, and registry replicas refuse to serve once it lapses (plus their
    /// grace) without a newer one, so this bounds how long a cut-off replica serves.
    #[serde(with = "crate::humantime_serde")]
    pub crl_lifetime: std::time::Duration,
    /// Create a new CA even though the certificate index lists certificates of one whose
    /// files are gone (`berthd --new-ca`). A one-time decision: never read from a file.
    #[serde(skip)]
    pub replace_lost_ca: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            ca_common_name: "berth CA".to_string(),
            ca_key_algorithm: KeyAlgorithm::EcdsaP256,
            ca_validity_days: 3650,
            default_validity_days: 90,
            crl_lifetime: std::time::Duration::from_secs(7 * 24 * 3600),
            replace_lost_ca: false,
        }
    }
}
