//! Property tests of every parser a peer can reach: repository names, tags, digests and
//! references, the distribution API's route parser, `Range` and `Content-Range`,
//! manifests and indexes, CSRs, policy files and the config file. None may panic on any
//! input; names, tags and digests must agree with the distribution-spec's grammar
//! regexes, and round-trip through their printers. Cases are bounded to keep CI fast.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;

use crate::registry::reference::{Digest, RepoName, Tag};

/// distribution-spec v1.1 (and distribution's reference grammar).
const NAME: &str = r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$";
const TAG: &str = r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$";
const SHA256: &str = r"^sha256:[a-f0-9]{64}$";
const SHA512: &str = r"^sha512:[a-f0-9]{128}$";

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Strings mostly made of the characters that matter, sometimes anything.
fn near(alphabet: &'static str, max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::collection::vec(proptest::sample::select(alphabet.chars().collect::<Vec<_>>()), 0..max)
            .prop_map(|v| v.into_iter().collect::<String>()),
        1 => any::<String>(),
    ]
}

/// One PKI for the CSR property (opening one per case would make a CA per case).
fn pki() -> &'static (tempfile::TempDir, crate::pki::Pki) {
    static PKI: std::sync::OnceLock<(tempfile::TempDir, crate::pki::Pki)> =
        std::sync::OnceLock::new();
    PKI.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let p = crate::pki::Pki::open(d.path(), &crate::pki::Settings::default()).unwrap();
        (d, p)
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn ranges_never_panic_and_keep_their_bounds(h in near("bytes=0123456789-, */", 40)) {
        if let Ok(Some(r)) = crate::oci::handlers::byte_range(Some(&h)) {
            for size in [0u64, 1, 10, u64::MAX] {
                if let Some((start, len)) = r.resolve(size) {
                    prop_assert!(start.checked_add(len).is_some_and(|end| end <= size), "{h:?} on {size}: {start}+{len}");
                }
            }
        }
        let mut m = axum::http::HeaderMap::new();
        if let Ok(v) = axum::http::HeaderValue::from_str(&h) {
            m.insert(axum::http::header::CONTENT_RANGE, v);
            if let Ok(Some((a, b))) = crate::oci::handlers::content_range(&m) {
                prop_assert!(a <= b);
            }
        }
    }

    #[test]
    fn repository_names_agree_with_the_spec(s in near("abz09._-/A%é", 40)) {
        let re = regex::Regex::new(NAME).unwrap();
        // The spec's total length limit (distribution: 255).
        let spec_ok = re.is_match(&s) && s.len() <= 255;
        match s.parse::<RepoName>() {
            Ok(n) => {
                prop_assert!(spec_ok, "accepted {s:?}");
                prop_assert_eq!(n.to_string(), s.clone());
            }
            Err(_) => prop_assert!(!spec_ok, "refused {s:?}"),
        }
    }

    #[test]
    fn tags_agree_with_the_spec(s in near("aZ09._-:/é", 140)) {
        let re = regex::Regex::new(TAG).unwrap();
        match s.parse::<Tag>() {
            Ok(t) => {
                prop_assert!(re.is_match(&s), "accepted {s:?}");
                prop_assert_eq!(t.to_string(), s.clone());
            }
            Err(_) => prop_assert!(!re.is_match(&s), "refused {s:?}"),
        }
    }

    #[test]
    fn digests_agree_with_the_spec(hex in near("0123456789abcdefABCDEFg", 130), alg in proptest::sample::select(vec!["sha256", "sha512", "md5", "SHA256", ""])) {
        let s = format!("{alg}:{hex}");
        let ok = regex::Regex::new(SHA256).unwrap().is_match(&s) || regex::Regex::new(SHA512).unwrap().is_match(&s);
        match s.parse::<Digest>() {
            Ok(d) => {
                prop_assert!(ok, "accepted {s:?}");
                prop_assert_eq!(d.to_string(), s.clone());
            }
            Err(_) => prop_assert!(!ok, "refused {s:?}"),
        }
    }

    #[test]
    fn routes_never_panic(s in near("abc/_-.:0123456789manifestsblobsuploadstagslistreferrers%", 120)) {
        let _ = crate::oci::route::parse(&s);
        let _ = crate::registry::reference::parse_image_ref(&s);
        let _ = s.parse::<crate::registry::reference::Reference>();
    }

    #[test]
    fn manifests_never_panic(body in prop_oneof![
        any::<Vec<u8>>(),
        near("{}[]\":,0123456789abcdefschemaVersionmediaTypelayersmanifestsconfigdigestsizesubject ", 300).prop_map(String::into_bytes),
    ], ct in proptest::option::of(proptest::sample::select(vec![
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "text/plain",
    ]))) {
        let _ = crate::registry::manifest::Manifest::parse(&body, ct);
    }

    #[test]
    fn csrs_never_panic(data in prop_oneof![
        any::<Vec<u8>>(),
        any::<Vec<u8>>().prop_map(|b| {
            let mut v = b"-----BEGIN CERTIFICATE REQUEST-----\n".to_vec();
            v.extend(b);
            v.extend(b"\n-----END CERTIFICATE REQUEST-----\n");
            v
        }),
    ]) {
        let _ = crate::pki::inspect_standalone(&data);
        let pki = pki();
        let who = crate::identity::Identity::Daemon;
        let _ = pki.1.sign_csr(&who, &data, crate::pki::CertKind::Client, None, &|_| Ok(()));
    }

    #[test]
    fn policy_and_config_files_never_panic(text in near("version=1[]{}\"rulesnameeffectallowdenysubjectscnactionspullrepositories*/\n ", 200)) {
        let _ = crate::registry::policy::Policy::parse(&text, std::path::Path::new("p.toml"));
        let _ = crate::config::Config::from_toml(&text, std::path::Path::new("c.toml"));
    }
}
