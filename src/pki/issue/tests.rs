//! Unit tests of the parent module.
#![allow(clippy::unwrap_used)]
use super::*;

fn names(cn: &str) -> Names {
    Names {
        common_name: cn.into(),
        ..Names::default()
    }
}

#[test]
fn server_needs_a_san_and_gets_a_cn() {
    assert!(matches!(
        validate(CertKind::Server, &names("x")),
        Err(Error::MissingName(_))
    ));
    let mut n = names("");
    n.dns_names = vec!["Registry.Example.Internal.".into()];
    let v = validate(CertKind::Server, &n).unwrap();
    assert_eq!(v.dns_names, vec!["registry.example.internal"]);
    assert_eq!(v.common_name, "registry.example.internal");
}

#[test]
fn client_needs_a_name() {
    assert!(matches!(
        validate(CertKind::Client, &names("  ")),
        Err(Error::MissingName(_))
    ));
    assert!(validate(CertKind::Admin, &names("ops")).is_ok());
}

#[test]
fn bad_names_are_refused_with_a_reason() {
    for bad in ["a..b", "host:5000", "-a.b", "a b", "10.0.0.1", "x/y"] {
        let e = check_dns(bad, true).unwrap_err().to_string();
        assert!(e.contains(bad), "{e}");
    }
    assert!(check_dns("*.example.com", true).is_ok());
    assert!(check_dns("*.example.com", false).is_err());
    let mut n = names("ci");
    n.uris = vec!["no scheme".into()];
    assert!(validate(CertKind::Client, &n).is_err());
    let mut n = names("ci");
    n.emails = vec!["nobody".into()];
    assert!(validate(CertKind::Client, &n).is_err());
    assert!(validate(CertKind::Client, &names(&"x".repeat(65))).is_err());
}
