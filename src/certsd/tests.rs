//! Unit tests of the parent module.
#![allow(clippy::unwrap_used)]
use super::*;

#[test]
fn host_port_rules() {
    let ok = [
        (
            "registry.example.internal:5443",
            "registry.example.internal:5443",
        ),
        ("registry.example.internal:443", "registry.example.internal"),
        ("registry.example.internal", "registry.example.internal"),
        ("localhost:5000", "localhost:5000"),
        ("10.0.0.5:5000", "10.0.0.5:5000"),
        ("[::1]:5443", "[::1]:5443"),
        ("[::1]", "[::1]"),
    ];
    for (input, dir) in ok {
        assert_eq!(
            input.parse::<HostPort>().unwrap().dir_name(),
            dir,
            "{input}"
        );
    }
    let bad = [
        ("", "empty"),
        ("reg.example/v2", "no path"),
        ("https://reg.example", "scheme"),
        ("reg.example:0", "port"),
        ("reg.example:99999", "port"),
        ("reg.example:http", "port"),
        ("::1", "brackets"),
        ("../etc", "no path"),
        ("..", "empty label"),
        ("a b", "only a host"),
        ("[::1", "']'"),
        ("-bad.example", "'-'"),
    ];
    for (input, why) in bad {
        let e = input.parse::<HostPort>().unwrap_err().to_string();
        assert!(e.contains(why), "{input}: {e}");
    }
}

#[test]
fn loopback_registries_are_named_for_docker() {
    for h in [
        "localhost:5443",
        "127.0.0.1:5443",
        "127.1.2.3",
        "[::1]:5443",
        "app.localhost:1",
    ] {
        let hp: HostPort = h.parse().unwrap();
        let w = hp
            .docker_loopback()
            .unwrap_or_else(|| panic!("{h} is loopback"));
        assert!(w.contains("docker") && w.contains("non-loopback"), "{w}");
    }
    for h in [
        "10.0.0.5:5443",
        "[fd00::5]:5443",
        "registry.example.internal:5443",
    ] {
        let hp: HostPort = h.parse().unwrap();
        assert_eq!(hp.docker_loopback(), None, "{h}");
    }
    let hosts = "127.0.0.1 localhost\n127.0.1.1 buildhost.example buildhost # Debian\n10.0.0.5 reg\n# 127.0.0.1 commented\n";
    assert!(hosts_loopback(hosts, "buildhost"));
    assert!(hosts_loopback(hosts, "BUILDHOST.example"));
    assert!(!hosts_loopback(hosts, "reg"));
    assert!(!hosts_loopback(hosts, "commented"));
}

#[test]
fn buildkit_and_k3s_snippets_name_the_installed_pair() {
    let h: HostPort = "registry.example.internal:5443".parse().unwrap();
    let dir = Path::new("/etc/docker/certs.d/registry.example.internal:5443");
    let b = buildkit_snippet(&h, dir);
    let parsed: toml::Table = toml::from_str(&b).unwrap();
    let reg = &parsed["registry"]["registry.example.internal:5443"];
    assert_eq!(
        reg["ca"][0].as_str().unwrap(),
        format!("{}/ca.crt", dir.display())
    );
    assert_eq!(
        reg["keypair"][0]["key"].as_str().unwrap(),
        format!("{}/client.key", dir.display())
    );
    assert_eq!(
        reg["keypair"][0]["cert"].as_str().unwrap(),
        format!("{}/client.cert", dir.display())
    );
    let k = k3s_snippet(&h, dir);
    assert!(k.starts_with("configs:\n  \"registry.example.internal:5443\":\n    tls:\n"));
    for f in ["ca_file: ", "cert_file: ", "key_file: "] {
        assert!(k.contains(&format!("{f}{}/", dir.display())), "{k}");
    }
}

#[test]
fn buildkit_config_is_created_appended_or_left_alone() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("buildkit/buildkitd.toml");
    let h: HostPort = "r.example:5443".parse().unwrap();
    let pair = Path::new("/etc/docker/certs.d/r.example:5443");
    assert_eq!(
        configure_buildkit(&f, &h, pair).unwrap(),
        ConfigChange::Created
    );
    assert_eq!(
        configure_buildkit(&f, &h, pair).unwrap(),
        ConfigChange::Unchanged
    );
    // Another registry's section and the user's settings stay; ours is appended.
    std::fs::write(
        &f,
        "# mine\ndebug = true\n[registry.\"docker.io\"]\n  mirrors = [\"m.example\"]\n",
    )
    .unwrap();
    assert_eq!(
        configure_buildkit(&f, &h, pair).unwrap(),
        ConfigChange::Appended
    );
    let text = std::fs::read_to_string(&f).unwrap();
    assert!(text.starts_with("# mine\ndebug = true"));
    let t: toml::Table = toml::from_str(&text).unwrap();
    assert!(t["registry"]["docker.io"]["mirrors"].is_array());
    assert!(t["registry"]["r.example:5443"]["keypair"].is_array());
    // A section of the user's own for this registry: left alone, said.
    std::fs::write(&f, "[registry.\"r.example:5443\"]\n  http = true\n").unwrap();
    assert!(matches!(
        configure_buildkit(&f, &h, pair).unwrap(),
        ConfigChange::LeftAlone(_)
    ));
    assert!(std::fs::read_to_string(&f).unwrap().contains("http = true"));
}

#[test]
fn k3s_registries_are_created_never_rewritten() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("rancher/k3s/registries.yaml");
    let h: HostPort = "r.example:5443".parse().unwrap();
    let pair = Path::new("/p");
    assert_eq!(configure_k3s(&f, &h, pair).unwrap(), ConfigChange::Created);
    assert_eq!(
        configure_k3s(&f, &h, pair).unwrap(),
        ConfigChange::Unchanged
    );
    std::fs::write(&f, "mirrors:\n  docker.io: {}\n").unwrap();
    assert!(matches!(
        configure_k3s(&f, &h, pair).unwrap(),
        ConfigChange::LeftAlone(_)
    ));
    assert_eq!(
        std::fs::read_to_string(&f).unwrap(),
        "mirrors:\n  docker.io: {}\n"
    );
}
