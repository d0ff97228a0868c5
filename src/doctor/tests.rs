//! The finding table: for each code, a folder built here (with rcgen, and with openssl
//! for the encodings berth never writes) that must produce that code and nothing else;
//! and healthy folders that must produce nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use time::{Duration, OffsetDateTime};

use super::*;

const HOST: &str = "registry.example.internal:5443";

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

fn ca_with(not_after: OffsetDateTime) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, "test CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.not_before = OffsetDateTime::now_utc() - Duration::days(30);
    p.not_after = not_after;
    Ca {
        issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
    }
}

fn ca() -> Ca {
    ca_with(OffsetDateTime::now_utc() + Duration::days(3650))
}

/// (certificate PEM, PKCS#8 key PEM)
fn leaf(ca: &Ca, f: impl FnOnce(&mut CertificateParams)) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, "ci-bot");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.not_before = OffsetDateTime::now_utc() - Duration::days(1);
    p.not_after = OffsetDateTime::now_utc() + Duration::days(90);
    f(&mut p);
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

struct Case {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    dir: PathBuf,
}

fn case(folder: &str) -> Case {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("certs.d");
    let dir = root.join(folder);
    std::fs::create_dir_all(&dir).unwrap();
    Case {
        _tmp: tmp,
        root,
        dir,
    }
}

fn put(dir: &Path, name: &str, data: impl AsRef<[u8]>, mode: u32) {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A folder as berth writes it.
fn healthy(dir: &Path, ca: &Ca) {
    let (c, k) = leaf(ca, |_| {});
    put(dir, "ca.crt", ca.issuer.pem(), 0o644);
    put(dir, "client.cert", c, 0o644);
    put(dir, "client.key", k, 0o600);
}

fn codes_for(c: &Case, host: &str) -> Vec<&'static str> {
    let h: HostPort = host.parse().unwrap();
    let r = check_files(&Roots::certs_d(&c.root), &h);
    r.findings.iter().map(|f| f.code).collect()
}

fn codes(c: &Case) -> Vec<&'static str> {
    codes_for(c, HOST)
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn healthy_folders_have_no_findings() {
    let c = case(HOST);
    healthy(&c.dir, &ca());
    assert_eq!(codes(&c), Vec::<&str>::new());
    // Port 443: the folder is the host alone.
    let c = case("registry.example.internal");
    healthy(&c.dir, &ca());
    assert_eq!(
        codes_for(&c, "registry.example.internal"),
        Vec::<&str>::new()
    );
    // A second CA file and extra unrelated files are fine.
    let c = case(HOST);
    let a = ca();
    healthy(&c.dir, &a);
    put(&c.dir, "other-ca.crt", ca().issuer.pem(), 0o644);
    put(&c.dir, "README", "installed by hand\n", 0o644);
    assert_eq!(codes(&c), Vec::<&str>::new());
}

#[test]
fn openssl_made_folders_in_every_key_encoding_are_healthy() {
    for (name, genkey) in [
        (
            "rsa-pkcs1",
            vec!["genrsa", "-traditional", "-out", "client.key", "2048"],
        ),
        (
            "ec-sec1",
            vec![
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                "client.key",
            ],
        ),
        (
            "pkcs8",
            vec!["genpkey", "-algorithm", "ed25519", "-out", "client.key"],
        ),
    ] {
        let c = case(HOST);
        let d = &c.dir;
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "../ca.key",
                "-out",
                "ca.crt",
                "-days",
                "30",
                "-subj",
                "/CN=openssl CA",
            ],
        );
        openssl(d, &genkey);
        openssl(
            d,
            &[
                "req",
                "-new",
                "-key",
                "client.key",
                "-out",
                "../client.csr",
                "-subj",
                "/CN=ci-bot",
            ],
        );
        std::fs::write(c.root.join("ext.cnf"), "extendedKeyUsage = clientAuth\n").unwrap();
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "../client.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "../ca.key",
                "-CAcreateserial",
                "-out",
                "client.cert",
                "-days",
                "30",
                "-extfile",
                "../ext.cnf",
            ],
        );
        let _ = std::fs::remove_file(d.join("ca.srl"));
        std::fs::set_permissions(d.join("client.key"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        let text = std::fs::read_to_string(d.join("client.key")).unwrap();
        assert!(text.starts_with("-----BEGIN"), "{name}: {text}");
        assert_eq!(codes(&c), Vec::<&str>::new(), "{name}");
    }
}

#[test]
fn each_finding_code_from_a_folder_that_shows_it_and_nothing_else() {
    type Build = Box<dyn Fn(&Case)>;
    let table: Vec<(&str, &str, Build)> = vec![
        (
            "orphan-key",
            HOST,
            Box::new(|c| {
                let a = ca();
                let (_, k) = leaf(&a, |_| {});
                put(&c.dir, "ca.crt", a.issuer.pem(), 0o644);
                put(&c.dir, "client.key", k, 0o600);
            }),
        ),
        (
            "cert-without-key",
            HOST,
            Box::new(|c| {
                let a = ca();
                let (cert, _) = leaf(&a, |_| {});
                put(&c.dir, "ca.crt", a.issuer.pem(), 0o644);
                put(&c.dir, "client.cert", cert, 0o644);
            }),
        ),
        (
            "client-cert-named-crt",
            HOST,
            Box::new(|c| {
                let a = ca();
                let (cert, k) = leaf(&a, |_| {});
                put(&c.dir, "ca.crt", a.issuer.pem(), 0o644);
                put(&c.dir, "client.crt", cert, 0o644);
                put(&c.dir, "client.key", k, 0o600);
            }),
        ),
        (
            "ignored-file",
            HOST,
            Box::new(|c| {
                let a = ca();
                healthy(&c.dir, &a);
                std::fs::rename(c.dir.join("ca.crt"), c.dir.join("ca.pem")).unwrap();
            }),
        ),
        (
            "ignored-file",
            HOST,
            Box::new(|c| {
                let a = ca();
                let (cert, k) = leaf(&a, |_| {});
                put(&c.dir, "ca.crt", a.issuer.pem(), 0o644);
                put(&c.dir, "cert.pem", cert, 0o644);
                put(&c.dir, "key.pem", k, 0o600);
            }),
        ),
        (
            "ca-not-pem",
            HOST,
            Box::new(|c| {
                let a = ca();
                healthy(&c.dir, &a);
                put(&c.dir, "ca.crt", a.issuer.der().as_ref(), 0o644);
            }),
        ),
        (
            "key-not-pem",
            HOST,
            Box::new(|c| {
                healthy(&c.dir, &ca());
                openssl(
                    &c.dir,
                    &[
                        "pkey",
                        "-in",
                        "client.key",
                        "-outform",
                        "der",
                        "-out",
                        "new",
                    ],
                );
                std::fs::rename(c.dir.join("new"), c.dir.join("client.key")).unwrap();
            }),
        ),
        (
            "key-encrypted",
            HOST,
            Box::new(|c| {
                healthy(&c.dir, &ca());
                openssl(
                    &c.dir,
                    &[
                        "pkey",
                        "-in",
                        "client.key",
                        "-aes256",
                        "-passout",
                        "pass:secret",
                        "-out",
                        "new",
                    ],
                );
                std::fs::rename(c.dir.join("new"), c.dir.join("client.key")).unwrap();
                std::fs::set_permissions(
                    c.dir.join("client.key"),
                    std::fs::Permissions::from_mode(0o600),
                )
                .unwrap();
            }),
        ),
        (
            "key-mismatch",
            HOST,
            Box::new(|c| {
                let a = ca();
                healthy(&c.dir, &a);
                put(&c.dir, "client.key", leaf(&a, |_| {}).1, 0o600);
            }),
        ),
        (
            "cert-not-pem",
            HOST,
            Box::new(|c| {
                healthy(&c.dir, &ca());
                openssl(
                    &c.dir,
                    &[
                        "x509",
                        "-in",
                        "client.cert",
                        "-outform",
                        "der",
                        "-out",
                        "new",
                    ],
                );
                std::fs::rename(c.dir.join("new"), c.dir.join("client.cert")).unwrap();
            }),
        ),
        (
            "cert-expired",
            HOST,
            Box::new(|c| {
                let a = ca();
                let (cert, k) = leaf(&a, |p| {
                    p.not_before = OffsetDateTime::now_utc() - Duration::days(100);
                    p.not_after = OffsetDateTime::now_utc() - Duration::days(1);
                });
                put(&c.dir, "ca.crt", a.issuer.pem(), 0o644);
                put(&c.dir, "client.cert", cert, 0o644);
                put(&c.dir, "client.key", k, 0o600);
            }),
        ),
        (
            "cert-not-yet-valid",
            HOST,
            Box::new(|c| {
                let a = ca();
                let (cert, k) = leaf(&a, |p| {
                    p.not_before = OffsetDateTime::now_utc() + Duration::days(2)
                });
                put(&c.dir, "ca.crt", a.issuer.pem(), 0o644);
                put(&c.dir, "client.cert", cert, 0o644);
                put(&c.dir, "client.key", k, 0o600);
            }),
        ),
        (
            "cert-expiring",
            HOST,
            Box::new(|c| {
                let a = ca();
                let (cert, k) = leaf(&a, |p| {
                    p.not_after = OffsetDateTime::now_utc() + Duration::days(3)
                });
                put(&c.dir, "ca.crt", a.issuer.pem(), 0o644);
                put(&c.dir, "client.cert", cert, 0o644);
                put(&c.dir, "client.key", k, 0o600);
            }),
        ),
        (
            "cert-no-client-auth",
            HOST,
            Box::new(|c| {
                let a = ca();
                let (cert, k) = leaf(&a, |p| {
                    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]
                });
                put(&c.dir, "ca.crt", a.issuer.pem(), 0o644);
                put(&c.dir, "client.cert", cert, 0o644);
                put(&c.dir, "client.key", k, 0o600);
            }),
        ),
        (
            "ca-expired",
            HOST,
            Box::new(|c| {
                let a = ca_with(OffsetDateTime::now_utc() - Duration::days(1));
                let (cert, k) = leaf(&a, |_| {});
                put(&c.dir, "ca.crt", a.issuer.pem(), 0o644);
                put(&c.dir, "client.cert", cert, 0o644);
                put(&c.dir, "client.key", k, 0o600);
            }),
        ),
        (
            "ca-not-ca",
            HOST,
            Box::new(|c| {
                let a = ca();
                healthy(&c.dir, &a);
                let (other, _) = leaf(&a, |p| {
                    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]
                });
                put(&c.dir, "ca.crt", other, 0o644);
            }),
        ),
        (
            "key-mode",
            HOST,
            Box::new(|c| {
                healthy(&c.dir, &ca());
                std::fs::set_permissions(
                    c.dir.join("client.key"),
                    std::fs::Permissions::from_mode(0o644),
                )
                .unwrap();
            }),
        ),
        (
            "no-ca",
            HOST,
            Box::new(|c| {
                healthy(&c.dir, &ca());
                std::fs::remove_file(c.dir.join("ca.crt")).unwrap();
            }),
        ),
        (
            "dangling-link",
            HOST,
            Box::new(|c| {
                healthy(&c.dir, &ca());
                std::os::unix::fs::symlink("/nonexistent/ca.crt", c.dir.join("extra.crt")).unwrap();
            }),
        ),
        (
            "loopback-insecure",
            "127.0.0.1:5443",
            Box::new(|c| {
                std::fs::rename(&c.dir, c.root.join("127.0.0.1:5443")).unwrap();
                healthy(&c.root.join("127.0.0.1:5443"), &ca());
            }),
        ),
        (
            "hosts-toml-invalid",
            HOST,
            Box::new(|c| {
                healthy(&c.dir, &ca());
                put(
                    &c.dir,
                    "hosts.toml",
                    "server = \"https://registry.example.internal:5443\"\n[host.\"https://x\"\ncapabilities = []\n",
                    0o644,
                );
            }),
        ),
        (
            "hosts-toml-missing-file",
            HOST,
            Box::new(|c| {
                healthy(&c.dir, &ca());
                put(
                    &c.dir,
                    "hosts.toml",
                    format!(
                        "server = \"https://{HOST}\"\n[host.\"https://{HOST}\"]\nca = \"gone.crt\"\nclient = [[\"client.cert\", \"client.key\"]]\n"
                    ),
                    0o644,
                );
            }),
        ),
        (
            "skip-verify",
            HOST,
            Box::new(|c| {
                healthy(&c.dir, &ca());
                put(
                    &c.dir,
                    "hosts.toml",
                    format!(
                        "server = \"https://{HOST}\"\n[host.\"https://{HOST}\"]\nskip_verify = true\nclient = [[\"client.cert\", \"client.key\"]]\n"
                    ),
                    0o644,
                );
            }),
        ),
        (
            "hosts-toml-no-client",
            HOST,
            Box::new(|c| {
                healthy(&c.dir, &ca());
                put(
                    &c.dir,
                    "hosts.toml",
                    format!(
                        "server = \"https://{HOST}\"\n[host.\"https://{HOST}\"]\nca = \"ca.crt\"\n"
                    ),
                    0o644,
                );
            }),
        ),
        (
            "hosts-toml-server-mismatch",
            HOST,
            Box::new(|c| {
                healthy(&c.dir, &ca());
                put(
                    &c.dir,
                    "hosts.toml",
                    "server = \"https://registry.example.internal:6000\"\n[host.\"https://registry.example.internal:6000\"]\nca = \"ca.crt\"\nclient = [[\"client.cert\", \"client.key\"]]\n",
                    0o644,
                );
            }),
        ),
    ];
    let mut failures = Vec::new();
    for (i, (code, host, build)) in table.iter().enumerate() {
        let c = case(HOST);
        build(&c);
        let got = codes_for(&c, host);
        if got != [*code] {
            failures.push(format!("case {i} ({code}): got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn misnamed_folders_are_found_and_named() {
    for folder in [
        "registry.example.internal",
        "registry.example.internal:443",
        "registry.example.internal:5000",
    ] {
        let c = case(folder);
        healthy(&c.dir, &ca());
        assert_eq!(codes(&c), ["folder-name-port"], "{folder}");
        let h: HostPort = HOST.parse().unwrap();
        let f = &check_files(&Roots::certs_d(&c.root), &h).findings[0];
        assert!(
            f.fix
                .as_deref()
                .unwrap()
                .contains(&format!("{}/{HOST}", c.root.display())),
            "{f:?}"
        );
        assert_eq!(f.severity, Severity::Error);
    }
    // A reference without a port uses the bare host: :443 is a different folder.
    let c = case("registry.example.internal:443");
    healthy(&c.dir, &ca());
    assert_eq!(
        codes_for(&c, "registry.example.internal"),
        ["folder-name-port"]
    );
    let c = case("Registry.Example.Internal:5443");
    healthy(&c.dir, &ca());
    assert_eq!(codes(&c), ["folder-name-case"]);
    // Nothing for the registry at all.
    let c = case("other.example:5443");
    healthy(&c.dir, &ca());
    assert_eq!(codes(&c), ["folder-missing"]);
}

#[test]
fn containers_image_uses_the_first_tree_and_says_what_it_shadows() {
    let tmp = tempfile::tempdir().unwrap();
    let (user, system) = (tmp.path().join("user"), tmp.path().join("system"));
    for r in [&user, &system] {
        std::fs::create_dir_all(r.join(HOST)).unwrap();
    }
    let a = ca();
    healthy(&user.join(HOST), &a);
    healthy(&system.join(HOST), &ca());
    let roots = Roots {
        trees: vec![("podman", vec![user.clone(), system.clone()])],
    };
    let r = check_files(&roots, &HOST.parse().unwrap());
    let codes: Vec<_> = r.findings.iter().map(|f| f.code).collect();
    assert_eq!(codes, ["shadowed"]);
    assert_eq!(
        r.findings[0].path.as_deref(),
        Some(system.join(HOST).as_path())
    );
    assert_eq!(r.folders[0].1.as_deref(), Some(user.join(HOST).as_path()));
}

#[test]
fn a_healthy_hosts_toml_has_no_findings() {
    let c = case(HOST);
    healthy(&c.dir, &ca());
    put(
        &c.dir,
        "hosts.toml",
        format!(
            "server = \"https://{HOST}\"\n[host.\"https://{HOST}\"]\ncapabilities = [\"pull\", \"resolve\", \"push\"]\nca = \"ca.crt\"\nclient = [[\"client.cert\", \"client.key\"]]\n"
        ),
        0o644,
    );
    assert_eq!(codes(&c), Vec::<&str>::new());
}

#[test]
fn a_pasted_reference_names_its_registry() {
    assert_eq!(
        registry_of("registry.example.internal:5443/team/app:1.0"),
        HOST
    );
    assert_eq!(
        registry_of("docker://registry.example.internal:5443/team/app@sha256:00"),
        HOST
    );
    assert_eq!(
        registry_of("https://registry.example.internal:5443/v2/"),
        HOST
    );
    assert_eq!(registry_of(HOST), HOST);
}
