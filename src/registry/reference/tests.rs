//! Unit tests of the parent module.
#![allow(clippy::unwrap_used)]
use super::*;

#[test]
fn names_follow_the_spec_grammar() {
    for ok in [
        "a",
        "team/app",
        "a0/b-c/d__e",
        "library/alpine",
        "x.y_z",
        "a--b",
        "0",
    ] {
        assert!(ok.parse::<RepoName>().is_ok(), "{ok}");
    }
    for bad in [
        "",
        "A",
        "team//app",
        "/a",
        "a/",
        "a_",
        "-a",
        "a___b",
        "a._b",
        "a/../b",
        "..",
        "a b",
        "a:b",
    ] {
        assert!(bad.parse::<RepoName>().is_err(), "{bad}");
    }
    assert!("a".repeat(256).parse::<RepoName>().is_err());
}

#[test]
fn tags_and_digests() {
    assert!("latest".parse::<Tag>().is_ok());
    assert!("_x.1-2".parse::<Tag>().is_ok());
    assert!(".x".parse::<Tag>().is_err());
    assert!("-x".parse::<Tag>().is_err());
    assert!("a".repeat(129).parse::<Tag>().is_err());
    assert!("a/b".parse::<Tag>().is_err());
    let d = Digest::sha256_of(b"");
    assert_eq!(
        d.to_string(),
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
    assert!(
        "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"
            .parse::<Digest>()
            .is_err()
    );
    assert!("sha256:abc".parse::<Digest>().is_err());
    assert!(
        "md5:d41d8cd98f00b204e9800998ecf8427e"
            .parse::<Digest>()
            .is_err()
    );
    let d512 = Digest::of(Algorithm::Sha512, b"x");
    assert_eq!(d512.to_string().parse::<Digest>().unwrap(), d512);
    assert!(matches!(
        "sha256:../../x".parse::<Reference>(),
        Err(Error::Digest(_))
    ));
}
