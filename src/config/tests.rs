//! Unit tests of the parent module.
#![allow(clippy::unwrap_used)]
use super::*;

#[test]
fn unknown_key_is_named() {
    let e = Config::from_toml(
        "version = 1\n[control]\nsokcet = \"/x\"\n",
        Path::new("b.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("sokcet"), "{e}");
    assert!(e.contains("b.toml"), "{e}");
}

#[test]
fn version_is_required_and_checked() {
    let e = Config::from_toml("state_dir = \"/x\"\n", Path::new("c")).unwrap_err();
    assert!(e.to_string().contains("version"), "{e}");
    let e = Config::from_toml("version = 2\n", Path::new("c")).unwrap_err();
    assert!(matches!(e, Error::Version { found: 2, .. }), "{e}");
}

#[test]
fn partial_file_keeps_defaults() {
    let c = Config::from_toml(
        "version = 1\nstate_dir = \"/srv/berth\"\n[control]\nsocket_mode = 0o600\nlisten = [\"tcp://127.0.0.1:2376\"]\n[pki]\nca_key_algorithm = \"ed25519\"\n",
        Path::new("c"),
    )
    .unwrap();
    assert_eq!(c.state_dir, PathBuf::from("/srv/berth"));
    assert_eq!(c.control.socket_mode, 0o600);
    assert_eq!(c.control.listen[0].0, "127.0.0.1:2376".parse().unwrap());
    assert_eq!(c.pki.ca_key_algorithm, crate::pki::KeyAlgorithm::Ed25519);
    assert_eq!(c.pki.default_validity_days, 90);
}

#[test]
fn bad_listen_address() {
    let e = Config::from_toml(
        "version = 1\n[control]\nlisten = [\"0.0.0.0:1\"]\n",
        Path::new("c"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("tcp://"), "{e}");
}

#[test]
fn s3_storage_section() {
    let c = Config::from_toml(
        "version = 1\n[registry.s3]\nbucket = \"reg\"\nendpoint = \"http://127.0.0.1:9000\"\npath_style = true\nfence = \"2s\"\n",
        Path::new("c"),
    )
    .unwrap();
    let s3 = c.registry.s3.unwrap();
    assert_eq!(s3.bucket, "reg");
    assert!(s3.path_style);
    assert_eq!(s3.fence, std::time::Duration::from_secs(2));
    assert_eq!(s3.gc_min_grace, std::time::Duration::from_secs(3600));
    // Content goes to one place, and a bucket must be named.
    let e = Config::from_toml(
        "version = 1\n[registry]\nroot = \"/srv/reg\"\n[registry.s3]\nbucket = \"reg\"\n",
        Path::new("c"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("remove one"), "{e}");
    let e = Config::from_toml(
        "version = 1\n[registry.s3]\nbucket = \"\"\n",
        Path::new("c"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("needs bucket"), "{e}");
    let e = Config::from_toml(
        "version = 1\n[registry.s3]\nregion = \"x\"\n",
        Path::new("c"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("bucket"), "{e}");
}

/// `--log` takes a level or target=level pairs; anything else logs at info and says why.
#[test]
fn log_filters_are_levels_and_targets() {
    use tracing::Level;
    let (t, why) = log_filter("berth=debug,warn");
    assert!(why.is_none());
    assert!(t.would_enable("berth::pki", &Level::DEBUG));
    assert!(!t.would_enable("h2::codec", &Level::INFO));
    assert!(t.would_enable("h2::codec", &Level::WARN));
    let (t, why) = log_filter("berth[span]=lots");
    assert!(why.unwrap().contains("target=level"));
    assert!(t.would_enable("anything", &Level::INFO));
    assert!(!t.would_enable("anything", &Level::DEBUG));
}
