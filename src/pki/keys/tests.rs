//! Unit tests of the parent module.
#![allow(clippy::unwrap_used)]
use super::*;

#[test]
fn names_round_trip() {
    for a in KeyAlgorithm::ALL {
        assert_eq!(a.name().parse::<KeyAlgorithm>().unwrap(), a);
    }
    assert_eq!(
        "RSA_2048".parse::<KeyAlgorithm>().unwrap(),
        KeyAlgorithm::Rsa2048
    );
    assert!("dsa".parse::<KeyAlgorithm>().is_err());
}

#[test]
fn secret_debug_is_elided() {
    let s = SecretKeyPem::new("-----BEGIN PRIVATE KEY-----".into());
    assert_eq!(format!("{s:?}"), "[secret key elided]");
}
