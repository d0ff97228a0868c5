//! The control API end to end: a real berthd on a temp root, driven through the library
//! client over the unix socket and over TCP with mutual TLS, checked with openssl and a real
//! rustls handshake.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use berth::client::ErrorKind as Code;
use berth::client::Trees;
use berth::client::{Client, IssueRequest, IssuedCert};
use berth::config::{Config, ListenAddr};
use berth::pki::{CertKind, CertStatus, KeyAlgorithm, Names};
use common::{TestDaemon, fixture, openssl_text, openssl_verify};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

use common::{issue, names, tls_dir, write};

#[tokio::test(flavor = "multi_thread")]
async fn issued_certificates_verify_with_openssl_and_survive_restart() {
    let d = TestDaemon::start();
    let c = d.client().await;
    let out = common::temp_dir();

    let server = issue(
        &c,
        CertKind::Server,
        Names {
            common_name: "registry.example.internal".into(),
            dns_names: vec!["registry.example.internal".into()],
            ip_addresses: vec!["10.0.0.5".parse().unwrap(), "::1".parse().unwrap()],
            ..Names::default()
        },
        KeyAlgorithm::EcdsaP256,
    )
    .await;
    let client = issue(
        &c,
        CertKind::Client,
        Names {
            common_name: "ci-bot".into(),
            organizations: vec!["builders".into()],
            organizational_units: vec!["ci".into()],
            uris: vec!["spiffe://example.internal/ci".into()],
            emails: vec!["ci@example.internal".into()],
            ..Names::default()
        },
        KeyAlgorithm::EcdsaP384,
    )
    .await;
    let admin = issue(&c, CertKind::Admin, names("ops"), KeyAlgorithm::Ed25519).await;
    let rsa = issue(&c, CertKind::Client, names("legacy"), KeyAlgorithm::Rsa2048).await;

    let ca = write(out.path(), "ca.pem", &server.ca_pem);
    common::pkilint("lint_pkix_cert", &[ca.as_os_str()]);
    for (name, cert) in [
        ("server", &server),
        ("client", &client),
        ("admin", &admin),
        ("rsa", &rsa),
    ] {
        let p = write(
            out.path(),
            &format!("{name}.pem"),
            &cert.record.certificate_pem,
        );
        openssl_verify(&ca, &p);
        common::pkilint_cert(&ca, &p);
        assert!(cert.key.is_some(), "{name}: the key was asked for");
    }
    let text = openssl_text(&out.path().join("server.pem"));
    assert!(text.contains("DNS:registry.example.internal"), "{text}");
    assert!(text.contains("IP Address:10.0.0.5"), "{text}");
    assert!(text.contains("TLS Web Server Authentication"), "{text}");
    assert!(!text.contains("TLS Web Client Authentication"), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    let text = openssl_text(&out.path().join("client.pem"));
    assert!(text.contains("CN = ci-bot"), "{text}");
    assert!(
        text.contains("O = builders") && text.contains("OU = ci"),
        "{text}"
    );
    assert!(text.contains("URI:spiffe://example.internal/ci"), "{text}");
    assert!(text.contains("email:ci@example.internal"), "{text}");
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(!text.contains("TLS Web Server Authentication"), "{text}");
    assert!(
        text.contains("secp384r1") || text.contains("P-384"),
        "{text}"
    );
    let text = openssl_text(&out.path().join("rsa.pem"));
    assert!(text.contains("2048 bit"), "{text}");
    assert!(text.contains("Key Encipherment"), "{text}");

    // Default validity is 90 days; the CA is ECDSA P-256 for 10 years.
    let days = (server.record.not_after - time::OffsetDateTime::now_utc()).whole_days();
    assert!((89..=90).contains(&days), "{days}");
    let (ca_pem, ca_details) = c.ca().await.unwrap();
    assert_eq!(ca_pem, server.ca_pem);
    assert!(
        ca_details.is_ca && ca_details.key_algorithm.contains("P-256"),
        "{ca_details:?}"
    );
    let ca_days = (ca_details.not_after - time::OffsetDateTime::now_utc()).whole_days();
    assert!((3640..=3650).contains(&ca_days), "{ca_days}");
    let state = &d.config.state_dir;
    assert_eq!(mode(&state.join("pki/ca.key")), 0o600);

    // Serials: random, at least 64 bits, unique.
    let mut serials = HashSet::new();
    for _ in 0..20 {
        let r = issue(&c, CertKind::Client, names("many"), KeyAlgorithm::EcdsaP256).await;
        assert!(r.record.serial.len() >= 16, "{}", r.record.serial);
        assert!(serials.insert(r.record.serial));
    }
    // Client keys are held 0600 for certs install; server and admin keys are not kept.
    assert!(common::holds_key(state, &client.record.serial));
    assert_eq!(mode(&state.join("pki/keys/held.log")), 0o600);
    assert!(!common::holds_key(state, &server.record.serial));
    assert!(!common::holds_key(state, &admin.record.serial));

    let listed = c.list(None, None).await.unwrap();
    assert_eq!(listed.len(), 24);
    let only_admin = c.list(Some(CertKind::Admin), None).await.unwrap();
    assert_eq!(only_admin.len(), 1);
    assert_eq!(only_admin[0].names.common_name, "ops");
    drop(c);

    // The index survives a restart.
    let (dir, cfg) = d.stop();
    let d = TestDaemon::start_in(dir, cfg).unwrap();
    let c = d.client().await;
    let again = c.list(None, None).await.unwrap();
    assert_eq!(again.len(), 24);
    let (ca_again, _) = c.ca().await.unwrap();
    assert_eq!(ca_again, ca_pem, "the CA is created once, then reused");
    let rec = again
        .iter()
        .find(|r| r.serial == client.record.serial)
        .unwrap();
    assert_eq!(rec.names, client.record.names);
    assert_eq!(rec.status(), CertStatus::Valid);
}

#[tokio::test(flavor = "multi_thread")]
async fn server_keys_are_only_returned_to_the_caller_who_asks() {
    let d = TestDaemon::start();
    let c = d.client().await;
    let err = c
        .issue(IssueRequest {
            kind: CertKind::Server,
            names: Names {
                common_name: "x.example".into(),
                dns_names: vec!["x.example".into()],
                ..Names::default()
            },
            validity_days: Some(30),
            key_algorithm: KeyAlgorithm::EcdsaP256,
            return_key: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Some(Code::InvalidArgument), "{err}");
    // A client certificate without return_key: berthd keeps the key, the caller gets none.
    let held = c
        .issue(IssueRequest {
            kind: CertKind::Client,
            names: names("held"),
            validity_days: Some(7),
            key_algorithm: KeyAlgorithm::EcdsaP256,
            return_key: false,
        })
        .await
        .unwrap();
    assert!(held.key.is_none());
    assert!(held.record.key_held);
    let days = (held.record.not_after - time::OffsetDateTime::now_utc()).whole_days();
    assert!((6..=7).contains(&days));
}

fn csr(cn: &str) -> (String, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["should-not-matter.example".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    // A CSR asking to be a CA must not get one.
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let req = params.serialize_request(&key).unwrap();
    (req.pem().unwrap(), key)
}

#[tokio::test(flavor = "multi_thread")]
async fn csr_signing_keeps_the_key_with_the_caller_and_rejects_bad_signatures() {
    let d = TestDaemon::start();
    let c = d.client().await;
    let out = common::temp_dir();
    let (pem, _key) = csr("csr-client");
    let (rec, ca_pem) = c
        .sign_csr(pem.clone().into_bytes(), CertKind::Client, None)
        .await
        .unwrap();
    assert!(rec.from_csr && !rec.key_held);
    assert!(!common::holds_key(&d.config.state_dir, &rec.serial));
    let ca = write(out.path(), "ca.pem", &ca_pem);
    let cert = write(out.path(), "signed.pem", &rec.certificate_pem);
    openssl_verify(&ca, &cert);
    common::pkilint_cert(&ca, &cert);
    let text = openssl_text(&cert);
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(text.contains("CN = csr-client"), "{text}");

    // An openssl-made CSR, server profile.
    let key = out.path().join("o.key");
    let req = out.path().join("o.csr");
    let o = common::run(
        std::process::Command::new("openssl")
            .args([
                "req",
                "-new",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=openssl.example",
            ])
            .args(["-addext", "subjectAltName=DNS:openssl.example"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&req),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (rec, _) = c
        .sign_csr(std::fs::read(&req).unwrap(), CertKind::Server, Some(10))
        .await
        .unwrap();
    let cert = write(out.path(), "server.pem", &rec.certificate_pem);
    openssl_verify(&ca, &cert);
    let text = openssl_text(&cert);
    assert!(
        text.contains("DNS:openssl.example") && text.contains("TLS Web Server Authentication"),
        "{text}"
    );

    // Tamper with the signed part of a DER CSR: the self-signature no longer verifies.
    let der =
        rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).unwrap();
    let mut bytes = der.as_ref().to_vec();
    let at = bytes.windows(10).position(|w| w == b"csr-client").unwrap();
    bytes[at] = b'X';
    let err = c.sign_csr(bytes, CertKind::Client, None).await.unwrap_err();
    assert_eq!(err.kind(), Some(Code::InvalidArgument), "{err}");
    assert!(err.to_string().contains("signature"), "{err}");
    let err = c
        .sign_csr(b"not a csr".to_vec(), CertKind::Client, None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Some(Code::InvalidArgument), "{err}");
    // An admin may keep its key on its own machine too.
    let (admin, _) = c
        .sign_csr(pem.into_bytes(), CertKind::Admin, None)
        .await
        .unwrap();
    assert_eq!(admin.kind, CertKind::Admin);
    // Nothing was recorded for the refused requests.
    assert_eq!(c.list(None, None).await.unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn inspect_reads_foreign_certificates_in_pem_and_der() {
    let d = TestDaemon::start();
    let c = d.client().await;
    let pem = c
        .inspect(std::fs::read(fixture("rsa-leaf.crt")).unwrap())
        .await
        .unwrap();
    let der = c
        .inspect(std::fs::read(fixture("rsa-leaf.der")).unwrap())
        .await
        .unwrap();
    assert_eq!(pem, der);
    let leaf = &pem[0];
    assert_eq!(leaf.names.common_name, "fixture.example");
    assert_eq!(
        leaf.names.dns_names,
        ["fixture.example", "www.fixture.example"]
    );
    assert_eq!(
        leaf.names.ip_addresses,
        ["192.0.2.10".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(leaf.extended_key_usages, ["serverAuth"]);
    assert!(
        leaf.key_algorithm.contains("RSA") && leaf.key_algorithm.contains("2048"),
        "{}",
        leaf.key_algorithm
    );
    assert!(!leaf.chains_to_berth_ca && !leaf.self_signed && !leaf.is_ca);

    let root = &c
        .inspect(std::fs::read(fixture("rsa-ca.crt")).unwrap())
        .await
        .unwrap()[0];
    assert!(root.is_ca && root.self_signed && !root.chains_to_berth_ca);
    assert!(
        root.key_algorithm.contains("3072"),
        "{}",
        root.key_algorithm
    );

    let expired = &c
        .inspect(std::fs::read(fixture("expired.crt")).unwrap())
        .await
        .unwrap()[0];
    assert_eq!(expired.status, CertStatus::Expired);
    assert_eq!(expired.extended_key_usages, ["clientAuth"]);

    let chain = c
        .inspect(std::fs::read(fixture("chain.pem")).unwrap())
        .await
        .unwrap();
    assert_eq!(chain.len(), 2);
    assert!(!chain[0].is_ca && chain[1].is_ca);
    assert_eq!(chain[0].issuer, chain[1].subject);
    assert!(
        chain[1].key_algorithm.contains("P-384"),
        "{}",
        chain[1].key_algorithm
    );

    let eku = &c
        .inspect(std::fs::read(fixture("wrong-eku.crt")).unwrap())
        .await
        .unwrap()[0];
    assert_eq!(eku.extended_key_usages, ["codeSigning"]);

    let ed = &c
        .inspect(std::fs::read(fixture("ed25519-selfsigned.crt")).unwrap())
        .await
        .unwrap()[0];
    assert!(
        ed.key_algorithm.contains("Ed25519") && ed.self_signed,
        "{ed:?}"
    );

    // A berth certificate chains to the berth CA, and its revocation shows.
    let mine = issue(&c, CertKind::Client, names("me"), KeyAlgorithm::EcdsaP256).await;
    let got = &c
        .inspect(mine.record.certificate_pem.clone().into_bytes())
        .await
        .unwrap()[0];
    assert!(got.chains_to_berth_ca);
    assert_eq!(got.status, CertStatus::Valid);
    c.revoke(&mine.record.serial).await.unwrap();
    let got = &c
        .inspect(mine.record.certificate_pem.into_bytes())
        .await
        .unwrap()[0];
    assert_eq!(got.status, CertStatus::Revoked);

    // The same decoder works offline for the CLI.
    let offline =
        berth::client::inspect_offline(&std::fs::read(fixture("rsa-leaf.der")).unwrap()).unwrap();
    assert_eq!(offline[0].names, leaf.names);

    let err = c
        .inspect(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Some(Code::InvalidArgument), "{err}");
}

/// The certificate list comes in pages, so a CA with 100,000 certificates can be listed
/// under the gRPC message limit: pages follow each other without gaps or repeats, a
/// made-up token is refused with what to send, and the client walks every page.
#[tokio::test(flavor = "multi_thread")]
async fn certificates_are_listed_in_pages() {
    use berth::proto::ListCertificatesRequest;
    use berth::proto::pki_service_client::PkiServiceClient;
    let d = TestDaemon::start();
    let c = d.client().await;
    for i in 0..5 {
        issue(
            &c,
            CertKind::Client,
            names(&format!("page-{i}")),
            KeyAlgorithm::EcdsaP256,
        )
        .await;
    }
    let mut raw = PkiServiceClient::new(c.channel());
    let all = raw
        .list_certificates(ListCertificatesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(all.next_page_token.is_empty());
    let want: Vec<String> = all.certificates.iter().map(|r| r.serial.clone()).collect();
    assert!(want.len() >= 5, "{want:?}");
    let mut got = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let r = raw
            .list_certificates(ListCertificatesRequest {
                page_size: 2,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.certificates.len() <= 2);
        got.extend(r.certificates.into_iter().map(|r| r.serial));
        pages += 1;
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(got, want);
    assert_eq!(pages, want.len().div_ceil(2));
    let err = raw
        .list_certificates(ListCertificatesRequest {
            page_size: 2,
            page_token: "page-3".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("next_page_token"),
        "{}",
        err.message()
    );
    let listed: Vec<String> = c
        .list(None, None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.serial)
        .collect();
    assert_eq!(listed, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_is_recorded_in_the_crl_and_index() {
    let d = TestDaemon::start();
    let c = d.client().await;
    let a = issue(&c, CertKind::Client, names("a"), KeyAlgorithm::EcdsaP256).await;
    let before = c.crl().await.unwrap();
    assert_eq!(before.revoked_count, 0);
    let rec = c.revoke(&a.record.serial.to_uppercase()).await.unwrap();
    assert_eq!(rec.status(), CertStatus::Revoked);
    let err = c.revoke(&a.record.serial).await.unwrap_err();
    assert_eq!(err.kind(), Some(Code::FailedPrecondition), "{err}");
    let err = c.revoke("00ff").await.unwrap_err();
    assert_eq!(err.kind(), Some(Code::NotFound), "{err}");
    let crl = c.crl().await.unwrap();
    assert_eq!(crl.revoked_count, 1);
    let out = common::temp_dir();
    let crl_path = write(out.path(), "crl.pem", &crl.pem);
    common::pkilint(
        "lint_crl",
        &[
            "-t".as_ref(),
            "CRL".as_ref(),
            "-p".as_ref(),
            "PKIX".as_ref(),
            crl_path.as_os_str(),
        ],
    );
    let ca = write(out.path(), "ca.pem", &a.ca_pem);
    let o = common::run(
        std::process::Command::new("openssl")
            .args(["crl", "-noout", "-text", "-in"])
            .arg(&crl_path)
            .arg("-CAfile")
            .arg(&ca),
    );
    let text = (String::from_utf8_lossy(&o.stdout).into_owned()
        + &String::from_utf8_lossy(&o.stderr))
        .to_uppercase();
    assert!(o.status.success(), "{text}");
    assert!(text.contains("VERIFY OK"), "{text}");
    assert!(text.contains(&a.record.serial.to_uppercase()), "{text}");
    // openssl rejects the revoked certificate with the CRL.
    let cert = write(out.path(), "a.pem", &a.record.certificate_pem);
    let o = common::run(
        std::process::Command::new("openssl")
            .args(["verify", "-crl_check", "-CAfile"])
            .arg(&ca)
            .arg("-CRLfile")
            .arg(&crl_path)
            .arg(&cert),
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("revoked")
            || String::from_utf8_lossy(&o.stderr).contains("revoked")
    );
}

fn rustls_cert(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn berth_server_and_client_certificates_complete_a_rustls_mtls_handshake() {
    let d = TestDaemon::start();
    let c = d.client().await;
    let server = issue(
        &c,
        CertKind::Server,
        Names {
            common_name: "localhost".into(),
            dns_names: vec!["localhost".into()],
            ip_addresses: vec!["127.0.0.1".parse().unwrap()],
            ..Names::default()
        },
        KeyAlgorithm::EcdsaP256,
    )
    .await;
    let client = issue(
        &c,
        CertKind::Client,
        names("ci-bot"),
        KeyAlgorithm::EcdsaP256,
    )
    .await;
    let wrong = issue(
        &c,
        CertKind::Server,
        {
            let mut n = names("not-a-client.example");
            n.dns_names = vec!["not-a-client.example".into()];
            n
        },
        KeyAlgorithm::EcdsaP256,
    )
    .await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_cert(&server.ca_pem).remove(0)).unwrap();
    let roots = Arc::new(roots);
    let verifier = rustls::server::WebPkiClientVerifier::builder(roots.clone())
        .build()
        .unwrap();
    let server_cfg = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            rustls_cert(&server.record.certificate_pem),
            PrivateKeyDer::from_pem_slice(server.key.as_ref().unwrap().secret_pem().as_bytes())
                .unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_task = tokio::spawn(async move {
        let mut results = Vec::new();
        for _ in 0..2 {
            let (tcp, _) = listener.accept().await.unwrap();
            match acceptor.accept(tcp).await {
                Ok(mut tls) => {
                    let peer = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
                    let mut buf = [0u8; 4];
                    tls.read_exact(&mut buf).await.unwrap();
                    tls.write_all(b"pong").await.unwrap();
                    tls.shutdown().await.unwrap();
                    results.push(Ok(peer));
                }
                Err(e) => results.push(Err(e.to_string())),
            }
        }
        results
    });

    let connect = |cert: &IssuedCert| {
        let cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(
                rustls_cert(&cert.record.certificate_pem),
                PrivateKeyDer::from_pem_slice(cert.key.as_ref().unwrap().secret_pem().as_bytes())
                    .unwrap(),
            )
            .unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut tls = connector
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await?;
            tls.write_all(b"ping").await?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        }
    };
    assert_eq!(&connect(&client).await.unwrap(), b"pong");
    // A serverAuth-only certificate offered as a client certificate is refused.
    assert!(connect(&wrong).await.is_err());
    let results = server_task.await.unwrap();
    let peer = results[0].as_ref().unwrap();
    assert_eq!(
        peer,
        &rustls_cert(&client.record.certificate_pem)[0].to_vec()
    );
    assert!(results[1].is_err(), "{:?}", results[1]);
}

fn foreign_identity(dir: &Path, ca_pem: &str) -> std::path::PathBuf {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "rogue CA");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issuer = rcgen::CertifiedIssuer::self_signed(p, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, "ops");
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = p.signed_by(&key, &issuer).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    // It trusts the real berth CA for the server, but presents a rogue client certificate.
    write(dir, "ca.pem", ca_pem);
    write(dir, "cert.pem", &cert.pem());
    write(dir, "key.pem", &key.serialize_pem());
    dir.to_path_buf()
}

#[tokio::test(flavor = "multi_thread")]
async fn remote_control_over_mtls_admits_admins_only() {
    let d = TestDaemon::start_with(|cfg: &mut Config| {
        cfg.control.listen = vec!["tcp://127.0.0.1:0".parse::<ListenAddr>().unwrap()];
    });
    let addr = d.tcp[0];
    assert_ne!(addr.port(), 0);
    let local = d.client().await;
    let admin = issue(
        &local,
        CertKind::Admin,
        names("ops"),
        KeyAlgorithm::EcdsaP256,
    )
    .await;
    let plain = issue(
        &local,
        CertKind::Client,
        names("ci-bot"),
        KeyAlgorithm::EcdsaP256,
    )
    .await;
    let dirs = common::temp_dir();
    let target = |dir: std::path::PathBuf| d.tcp_target(dir);

    let remote = Client::connect(&target(tls_dir(&dirs.path().join("ops"), &admin)))
        .await
        .unwrap();
    let info = remote.info().await.unwrap();
    assert!(info.caller.contains("ops"), "{}", info.caller);
    assert_eq!(info.tcp_listeners, vec![format!("tcp://{addr}")]);
    let issued = remote
        .issue(IssueRequest {
            kind: CertKind::Client,
            names: names("remote-made"),
            validity_days: None,
            key_algorithm: KeyAlgorithm::EcdsaP256,
            return_key: true,
        })
        .await
        .unwrap();
    assert!(issued.key.is_some());

    // A valid berth certificate that is not an admin: PermissionDenied.
    let denied = Client::connect(&target(tls_dir(&dirs.path().join("ci"), &plain)))
        .await
        .unwrap();
    let err = denied.info().await.unwrap_err();
    assert_eq!(err.kind(), Some(Code::PermissionDenied), "{err}");

    // A certificate from another CA: the handshake fails, no RPC gets through.
    let rogue = foreign_identity(&dirs.path().join("rogue"), &admin.ca_pem);
    let rogue_result = match Client::connect(&target(rogue)).await {
        Ok(c) => c.info().await.map(|_| ()),
        Err(e) => Err(e),
    };
    let e = rogue_result.unwrap_err();
    assert_eq!(e.kind(), Some(Code::Unauthenticated), "{e}");
    assert!(
        e.to_string().contains("refused this client certificate")
            && e.to_string().contains("not issued by berthd's CA"),
        "{e}"
    );

    // No client certificate at all: the handshake completes (a joining host has none
    // yet), but every call except enrolment is refused.
    let fp = local.info().await.unwrap().ca_fingerprint_sha256;
    let anon = Client::connect_pinned("127.0.0.1", addr.port(), &fp, None)
        .await
        .unwrap();
    let err = anon.info().await.unwrap_err();
    assert_eq!(err.kind(), Some(Code::Unauthenticated), "{err}");
    assert!(err.to_string().contains("client certificate"), "{err}");
    let err = anon.token_list().await.unwrap_err();
    assert_eq!(err.kind(), Some(Code::Unauthenticated), "{err}");
    let err = anon.list(None, None).await.unwrap_err();
    assert_eq!(err.kind(), Some(Code::Unauthenticated), "{err}");

    // A revoked admin is refused from then on.
    local.revoke(&admin.record.serial).await.unwrap();
    let after = match Client::connect(&target(dirs.path().join("ops"))).await {
        Ok(c) => c.info().await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(after.is_err(), "a revoked admin certificate still works");

    // Unix-socket callers are unaffected.
    assert!(local.health().await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn certs_install_writes_docker_layout_with_safe_modes_and_removes_only_its_files() {
    let d = TestDaemon::start();
    let c = d.client().await;
    let docker = d.docker_root().to_path_buf();
    let containers = d.containers_root().to_path_buf();

    // Dry run: a plan, no files.
    let plan = c
        .certs_install(
            "registry.example.internal:5443",
            Some("ci-bot"),
            Trees::CONTAINERS,
            true,
            false,
        )
        .await
        .unwrap();
    assert!(plan.issued_client);
    assert!(!plan.actions.is_empty());
    assert!(!docker.join("registry.example.internal:5443").exists());
    assert!(
        c.list(None, None).await.unwrap().is_empty(),
        "a dry run issues nothing"
    );

    let out = c
        .certs_install(
            "registry.example.internal:5443",
            Some("ci-bot"),
            Trees::CONTAINERS,
            false,
            false,
        )
        .await
        .unwrap();
    assert!(out.issued_client);
    for root in [&docker, &containers] {
        let dir = root.join("registry.example.internal:5443");
        assert_eq!(mode(&dir.join("ca.crt")), 0o644);
        assert_eq!(mode(&dir.join("client.cert")), 0o644);
        assert_eq!(mode(&dir.join("client.key")), 0o600);
        let ca = dir.join("ca.crt");
        openssl_verify(&ca, &dir.join("client.cert"));
        // The key belongs to the certificate.
        let pubkey = |args: &[&str], f: &Path| {
            let o = common::run(std::process::Command::new("openssl").args(args).arg(f));
            assert!(o.status.success());
            o.stdout
        };
        assert_eq!(
            pubkey(
                &["x509", "-noout", "-pubkey", "-in"],
                &dir.join("client.cert")
            ),
            pubkey(&["pkey", "-pubout", "-in"], &dir.join("client.key"))
        );
        // No temp files left behind; docker's folder also holds the hosts.toml Docker 29's
        // containerd image store reads (classic docker ignores it).
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut want = vec!["ca.crt", "client.cert", "client.key"];
        if root == &docker {
            want.push("hosts.toml");
        }
        assert_eq!(names, want);
    }
    // Installing again reuses the same client and changes nothing.
    let again = c
        .certs_install(
            "registry.example.internal:5443",
            Some("ci-bot"),
            Trees::DOCKER,
            false,
            false,
        )
        .await
        .unwrap();
    assert!(!again.issued_client);
    assert_eq!(again.client_serial, out.client_serial);
    assert!(
        again
            .actions
            .iter()
            .all(|a| a.kind == berth::certsd::ActionKind::Unchanged),
        "{:?}",
        again.actions
    );

    // Port 443: the folder is the host alone, as docker looks it up.
    c.certs_install(
        "registry.example.internal:443",
        None,
        Trees::DOCKER,
        false,
        false,
    )
    .await
    .unwrap();
    assert!(docker.join("registry.example.internal/ca.crt").exists());
    assert!(!docker.join("registry.example.internal/client.key").exists());

    // List and verify.
    let entries = c.certs_list().await.unwrap();
    assert_eq!(entries.len(), 3, "{entries:?}");
    assert!(
        entries.iter().all(|e| e.managed && e.problems.is_empty()),
        "{entries:?}"
    );
    let v = c
        .certs_verify("registry.example.internal:5443")
        .await
        .unwrap();
    assert!(v.iter().all(|e| e.problems.is_empty()) && !v.is_empty());

    // Files berth did not write are neither replaced nor removed.
    let foreign = docker.join("other.example:5000");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(
        foreign.join("ca.crt"),
        std::fs::read(fixture("rsa-ca.crt")).unwrap(),
    )
    .unwrap();
    let err = c
        .certs_install("other.example:5000", None, Trees::DOCKER, false, false)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Some(Code::AlreadyExists), "{err}");
    assert_eq!(
        std::fs::read(foreign.join("ca.crt")).unwrap(),
        std::fs::read(fixture("rsa-ca.crt")).unwrap()
    );
    let err = c
        .certs_remove("other.example:5000", Trees::DOCKER, false)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Some(Code::NotFound), "{err}");
    assert!(foreign.join("ca.crt").exists());
    // A lone key is a problem docker would fail on; verify reports it.
    std::fs::write(foreign.join("stray.key"), "x").unwrap();
    let v = c.certs_verify("other.example:5000").await.unwrap();
    assert!(
        v.iter()
            .flat_map(|e| &e.problems)
            .any(|p| p.contains("stray.key")),
        "{v:?}"
    );

    // Remove: an edited file is kept, and with it its pair.
    let dir = docker.join("registry.example.internal:5443");
    std::fs::write(dir.join("extra.crt"), "user file").unwrap();
    let planned = c
        .certs_remove("registry.example.internal:5443", Trees::CONTAINERS, true)
        .await
        .unwrap();
    assert!(!planned.is_empty());
    assert!(dir.join("client.key").exists(), "dry run deletes nothing");
    c.certs_remove("registry.example.internal:5443", Trees::CONTAINERS, false)
        .await
        .unwrap();
    assert!(
        !dir.join("client.key").exists()
            && !dir.join("client.cert").exists()
            && !dir.join("ca.crt").exists()
    );
    assert!(
        dir.join("extra.crt").exists(),
        "a file berth did not write survives remove"
    );
    assert!(
        !containers.join("registry.example.internal:5443").exists(),
        "an emptied folder is removed"
    );

    let cdir = docker.join("registry.example.internal");
    std::fs::write(cdir.join("ca.crt"), "edited by hand").unwrap();
    let actions = c
        .certs_remove("registry.example.internal", Trees::DOCKER, false)
        .await
        .unwrap();
    assert!(
        actions
            .iter()
            .any(|a| a.kind == berth::certsd::ActionKind::KeepModified),
        "{actions:?}"
    );
    assert_eq!(
        std::fs::read_to_string(cdir.join("ca.crt")).unwrap(),
        "edited by hand"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let d = TestDaemon::start();
    let c = d.client().await;
    let with = |cn: &str, f: fn(&mut Names)| {
        let mut n = names(cn);
        f(&mut n);
        n
    };
    let bad_names = [
        (
            CertKind::Server,
            with("x", |n| n.dns_names = vec!["bad name!".into()]),
        ),
        (
            CertKind::Server,
            with("x", |n| n.dns_names = vec!["host:5000".into()]),
        ),
        (CertKind::Server, names("x")),
        (CertKind::Client, names("")),
        (
            CertKind::Client,
            with("u", |n| n.uris = vec!["not a uri".into()]),
        ),
        (
            CertKind::Client,
            with("u", |n| n.emails = vec!["nobody".into()]),
        ),
    ];
    for (kind, n) in bad_names {
        let err = c
            .issue(IssueRequest {
                kind,
                names: n.clone(),
                validity_days: None,
                key_algorithm: KeyAlgorithm::EcdsaP256,
                return_key: true,
            })
            .await
            .unwrap_err();
        assert_eq!(err.kind(), Some(Code::InvalidArgument), "{n:?}: {err}");
        assert!(!err.to_string().is_empty());
    }
    let err = c
        .issue(IssueRequest {
            kind: CertKind::Client,
            names: names("long"),
            validity_days: Some(100_000),
            key_algorithm: KeyAlgorithm::EcdsaP256,
            return_key: true,
        })
        .await;
    // Validity beyond the CA is either clamped or refused, never past the CA's own expiry.
    if let Ok(ok) = err {
        let (_, ca) = c.ca().await.unwrap();
        assert!(ok.record.not_after <= ca.not_after);
    }
    for host in [
        "registry.example.internal/v2",
        "https://registry.example.internal",
        "",
        "host:0",
        "host:99999",
        "bad host",
        "../../etc",
    ] {
        let err = c
            .certs_install(host, None, Trees::DOCKER, true, false)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), Some(Code::InvalidArgument), "{host:?}: {err}");
        assert!(err.to_string().contains("host"), "{host:?}: {err}");
    }
    assert!(
        c.list(None, None)
            .await
            .unwrap()
            .iter()
            .all(|r| r.names.common_name == "long")
    );
    assert!(
        !d.docker_root().exists() || std::fs::read_dir(d.docker_root()).unwrap().next().is_none()
    );
}

#[test]
fn daemon_start_refuses_bad_config_state_and_a_second_daemon() {
    common::crypto();
    // Unknown config key: named in the error.
    let err = Config::from_toml(
        "version = 1\n[control]\nsockett = \"/tmp/x\"\n",
        Path::new("berthd.toml"),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("sockett") && msg.contains("berthd.toml"),
        "{msg}"
    );
    let err = Config::from_toml("version = 2\n", Path::new("berthd.toml")).unwrap_err();
    assert!(err.to_string().contains("version"), "{err}");
    let cfg = Config::from_toml(
        "version = 1\n[pki]\ndefault_validity_days = 30\nca_key_algorithm = \"rsa3072\"\n",
        Path::new("b.toml"),
    )
    .unwrap();
    assert_eq!(cfg.pki.default_validity_days, 30);
    assert_eq!(cfg.pki.ca_key_algorithm, KeyAlgorithm::Rsa3072);

    // Unusable state dir: its parent is a file (root ignores permission bits, so use that).
    let dir = common::temp_dir();
    std::fs::write(dir.path().join("file"), "x").unwrap();
    let mut cfg = common::config(dir.path());
    cfg.state_dir = dir.path().join("file/state");
    let err = berth::daemon::Daemon::open(cfg).unwrap_err();
    assert!(err.to_string().contains("file/state"), "{err}");

    // A second daemon on the same state dir.
    let first = TestDaemon::start();
    let mut cfg = first.config.clone();
    cfg.control.socket = first.dir.path().join("other.sock");
    let err = berth::daemon::Daemon::open(cfg).unwrap_err();
    assert!(
        matches!(err, berth::daemon::Error::AlreadyRunning { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains(&std::process::id().to_string()),
        "{err}"
    );
    // The first still serves.
    let (dir, cfg) = first.stop();

    // A stale socket from a dead daemon is removed on start; the lock is free again.
    std::os::unix::net::UnixListener::bind(&cfg.control.socket)
        .map(drop)
        .unwrap();
    let d = TestDaemon::start_in(dir, cfg.clone()).unwrap();
    let (dir, cfg) = d.stop();
    assert!(
        !cfg.control.socket.exists(),
        "the socket is removed on shutdown"
    );

    // A corrupt index: refuse to start, name the file, leave it as it was.
    let index = cfg.state_dir.join("pki/index.json");
    assert!(index.exists());
    std::fs::write(&index, b"{\"version\": 1, \"certificates\": [tru").unwrap();
    let err = berth::daemon::Daemon::open(cfg.clone()).unwrap_err();
    assert!(err.to_string().contains("index.json"), "{err}");
    assert_eq!(
        std::fs::read(&index).unwrap(),
        b"{\"version\": 1, \"certificates\": [tru"
    );
    drop(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn renewal_issues_a_successor_and_keeps_the_old_one_valid() {
    let d = TestDaemon::start();
    let c = d.client().await;
    let out = common::temp_dir();
    let client = c
        .issue(IssueRequest {
            kind: CertKind::Client,
            names: Names {
                common_name: "ci-bot".into(),
                organizations: vec!["builders".into()],
                ..Names::default()
            },
            validity_days: Some(10),
            key_algorithm: KeyAlgorithm::EcdsaP384,
            return_key: false,
        })
        .await
        .unwrap();
    let next = c
        .renew(&client.record.serial, Some(30), false)
        .await
        .unwrap()
        .issued;
    assert_ne!(next.record.serial, client.record.serial);
    assert_eq!(next.record.names, client.record.names);
    assert_eq!(next.record.key_algorithm, "ECDSA P-384");
    assert!(next.record.key_held && next.key.is_none());
    let days = (next.record.not_after - time::OffsetDateTime::now_utc()).whole_days();
    assert!((29..=30).contains(&days), "{days}");
    let all = c
        .list(Some(CertKind::Client), Some("ci-bot".into()))
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|r| r.status() == CertStatus::Valid));
    // certs install now picks the successor.
    let inst = c
        .certs_install(
            "r.example:5000",
            Some("ci-bot"),
            Trees::DOCKER,
            false,
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        inst.client_serial.as_deref(),
        Some(next.record.serial.as_str())
    );
    // Renewing again follows every certs.d entry berth installed with that certificate
    // (both trees of r.example, docker's of s.example); one edited by hand is left alone
    // and reported.
    c.certs_install(
        "r.example:5000",
        Some("ci-bot"),
        Trees::CONTAINERS,
        false,
        false,
    )
    .await
    .unwrap();
    c.certs_install(
        "s.example:5000",
        Some("ci-bot"),
        Trees::DOCKER,
        false,
        false,
    )
    .await
    .unwrap();
    c.certs_install(
        "t.example:5000",
        Some("ci-bot"),
        Trees::DOCKER,
        false,
        false,
    )
    .await
    .unwrap();
    let edited = d.docker_root().join("t.example:5000/client.key");
    std::fs::write(&edited, "mine").unwrap();
    let third = c.renew(&next.record.serial, None, false).await.unwrap();
    let mut updated = third.certs.updated.clone();
    updated.sort();
    assert_eq!(
        updated,
        [
            d.containers_root().join("r.example:5000"),
            d.docker_root().join("r.example:5000"),
            d.docker_root().join("s.example:5000"),
        ]
    );
    for dir in &updated {
        assert_eq!(
            std::fs::read_to_string(dir.join("client.cert")).unwrap(),
            third.issued.record.certificate_pem
        );
        assert_eq!(mode(&dir.join("client.key")), 0o600);
    }
    assert_eq!(third.certs.problems.len(), 1, "{:?}", third.certs.problems);
    assert!(third.certs.problems[0].contains("t.example:5000"));
    assert_eq!(std::fs::read_to_string(&edited).unwrap(), "mine");
    assert!(
        c.certs_verify("s.example:5000")
            .await
            .unwrap()
            .iter()
            .all(|e| e.problems.is_empty())
    );

    let server = issue(
        &c,
        CertKind::Server,
        Names {
            common_name: "r.example".into(),
            dns_names: vec!["r.example".into()],
            ..Names::default()
        },
        KeyAlgorithm::Rsa2048,
    )
    .await;
    let err = c
        .renew(&server.record.serial, None, false)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Some(Code::InvalidArgument), "{err}");
    let renewed = c
        .renew(&server.record.serial, None, true)
        .await
        .unwrap()
        .issued;
    let cert = write(out.path(), "renewed.pem", &renewed.record.certificate_pem);
    openssl_verify(&write(out.path(), "ca.pem", &renewed.ca_pem), &cert);
    let text = openssl_text(&cert);
    assert!(
        text.contains("DNS:r.example") && text.contains("2048 bit"),
        "{text}"
    );
    assert_ne!(
        renewed.key.unwrap().secret_pem(),
        server.key.unwrap().secret_pem()
    );

    let (pem, _key) = csr("csr-made");
    let (signed, _) = c
        .sign_csr(pem.into_bytes(), CertKind::Client, None)
        .await
        .unwrap();
    let err = c.renew(&signed.serial, None, true).await.unwrap_err();
    assert_eq!(err.kind(), Some(Code::InvalidArgument), "{err}");
    assert!(err.to_string().contains("CSR"), "{err}");
    c.revoke(&client.record.serial).await.unwrap();
    let err = c
        .renew(&client.record.serial, None, false)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Some(Code::FailedPrecondition), "{err}");
}

/// An endless stream (`berth events`) must not hold berthd's shutdown for the whole drain
/// deadline: it ends with "shutting down" and berthd stops.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_ends_event_streams_instead_of_draining_them() {
    let d = TestDaemon::start_with(|cfg: &mut Config| {
        cfg.registry.enabled = true;
        cfg.net.drain_timeout = std::time::Duration::from_secs(3600);
    });
    let c = d.client().await;
    let me = common::client_cert(&c, "pusher").await;
    let tls = common::presenting(&me, b"http/1.1");
    let (seen_tx, mut seen_rx) = tokio::sync::oneshot::channel();
    let mut seen_tx = Some(seen_tx);
    let events = tokio::spawn(async move {
        c.registry_events(None, move |_| {
            if let Some(tx) = seen_tx.take() {
                let _ = tx.send(());
            }
            true
        })
        .await
    });
    // Push until the subscriber has seen an event: then it is certainly subscribed.
    for i in 0u32.. {
        let body = format!("blob {i}").into_bytes();
        let digest = berth::registry::Digest::sha256_of(&body);
        let (status, _) = common::tls_request(
            d.registry[0],
            tls.clone(),
            axum::http::Method::POST,
            &format!("/v2/ev/blobs/uploads/?digest={digest}"),
            body,
        )
        .await
        .unwrap();
        assert_eq!(status, axum::http::StatusCode::CREATED);
        if seen_rx.try_recv().is_ok() {
            break;
        }
        assert!(i < 10_000, "the subscriber never saw an event");
        tokio::task::yield_now().await;
    }
    let stopped = tokio::task::spawn_blocking(move || d.stop());
    let r = tokio::time::timeout(std::time::Duration::from_secs(60), stopped).await;
    assert!(
        r.is_ok(),
        "berthd's shutdown waited on an open event stream"
    );
    let ended = tokio::time::timeout(std::time::Duration::from_secs(60), events)
        .await
        .expect("the event stream never ended")
        .unwrap();
    let e = ended.unwrap_err();
    assert_eq!(e.kind(), Some(Code::Unavailable), "{e}");
    assert!(e.to_string().contains("shutting down"), "{e}");
}

/// Enrolment is open to anonymous TLS peers, so failures are rate-limited per address.
#[tokio::test(flavor = "multi_thread")]
async fn failed_enrolments_are_rate_limited() {
    let d = TestDaemon::start_with(|cfg: &mut Config| {
        cfg.control.listen = vec!["tcp://127.0.0.1:0".parse::<ListenAddr>().unwrap()];
    });
    let local = d.client().await;
    let fp = local.info().await.unwrap().ca_fingerprint_sha256;
    let good = local.token_create("late-comer", None, None).await.unwrap();
    let anon = Client::connect_pinned("127.0.0.1", d.tcp[0].port(), &fp, None)
        .await
        .unwrap();
    let mut kinds = Vec::new();
    for i in 0..12 {
        let e = anon
            .enrol(&format!("bt1.{i:012x}.guess"), "not a csr")
            .await
            .unwrap_err();
        kinds.push(e.kind());
    }
    assert!(
        kinds[..10]
            .iter()
            .all(|k| *k == Some(Code::PermissionDenied)),
        "{kinds:?}"
    );
    assert_eq!(kinds[10..], [Some(Code::ResourceExhausted); 2]);
    // Even the right token waits out the minute from that address.
    let e = anon.enrol(&good.secret, "x").await.unwrap_err();
    assert_eq!(e.kind(), Some(Code::ResourceExhausted), "{e}");
    let tokens = local.token_list().await.unwrap();
    assert!(
        tokens[0].used_at.is_none(),
        "a rate-limited attempt does not use a token"
    );
}

/// A CSR whose subject carries a newline would forge log and event lines: refused.
#[tokio::test(flavor = "multi_thread")]
async fn csrs_with_control_characters_in_names_are_refused() {
    let d = TestDaemon::start();
    let c = d.client().await;
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(
        rcgen::DnType::CommonName,
        "x\n2026-12-01T00:00:00Z  WARN berth: evil",
    );
    let csr = p.serialize_request(&key).unwrap().pem().unwrap();
    let err = c
        .sign_csr(csr.into_bytes(), CertKind::Client, None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Some(Code::InvalidArgument), "{err}");
    assert!(err.to_string().contains("control characters"), "{err}");
    assert!(
        c.list(None, None).await.unwrap().is_empty(),
        "nothing recorded"
    );
}

fn csr_for(cn: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
        .into_bytes()
}

/// Roles over TCP by certificate identity: a viewer reads and is refused every change
/// with the role it needs; an issuer (by O) acts only on the names it was given, never on
/// admin certificates; every refusal is in the audit log with the caller's subject.
#[tokio::test(flavor = "multi_thread")]
async fn control_roles_by_certificate_identity() {
    let d = TestDaemon::start_with(|cfg: &mut Config| {
        cfg.control.listen = vec!["tcp://127.0.0.1:0".parse::<ListenAddr>().unwrap()];
        cfg.control.roles = toml::from_str::<Config>(
            r#"
            [[control.roles]]
            role = "viewer"
            subjects = [{ cn = "dashboard" }]
            [[control.roles]]
            role = "issuer"
            subjects = [{ o = "builders" }]
            names = ["ci-*"]
            "#,
        )
        .unwrap()
        .control
        .roles;
    });
    let local = d.client().await;
    let viewer_cert = common::client_cert(&local, "dashboard").await;
    let issuer_cert = issue(
        &local,
        CertKind::Client,
        Names {
            common_name: "ci-issuer".into(),
            organizations: vec!["builders".into()],
            ..Names::default()
        },
        KeyAlgorithm::EcdsaP256,
    )
    .await;
    let dirs = common::temp_dir();
    let viewer = Client::connect(&d.tcp_target(tls_dir(&dirs.path().join("v"), &viewer_cert)))
        .await
        .unwrap();
    let issuer = Client::connect(&d.tcp_target(tls_dir(&dirs.path().join("i"), &issuer_cert)))
        .await
        .unwrap();
    let refused = |e: berth::client::Error, needs: &str| {
        assert_eq!(e.kind(), Some(Code::PermissionDenied), "{e}");
        assert!(e.to_string().contains(needs), "{e}");
    };
    let client_req = |cn: &str, kind| IssueRequest {
        kind,
        names: names(cn),
        validity_days: None,
        key_algorithm: KeyAlgorithm::EcdsaP256,
        return_key: true,
    };

    // The viewer reads, and nothing more.
    assert!(viewer.info().await.unwrap().caller.contains("dashboard"));
    viewer.list(None, None).await.unwrap();
    viewer.token_list().await.unwrap();
    viewer.registry_status().await.unwrap();
    refused(
        viewer
            .issue(client_req("ci-1", CertKind::Client))
            .await
            .unwrap_err(),
        "needs the issuer role",
    );
    refused(
        viewer.token_create("ci-1", None, None).await.unwrap_err(),
        "needs the issuer role",
    );
    refused(
        viewer.registry_gc(true, false, None).await.unwrap_err(),
        "needs the admin role",
    );
    refused(
        viewer.reload_policy().await.unwrap_err(),
        "needs the admin role",
    );

    // The issuer: its names only.
    let made = issuer
        .issue(client_req("ci-1", CertKind::Client))
        .await
        .unwrap();
    refused(
        issuer
            .issue(client_req("prod-db", CertKind::Client))
            .await
            .unwrap_err(),
        "covers only [\"ci-*\"]",
    );
    refused(
        issuer
            .issue(client_req("ci-root", CertKind::Admin))
            .await
            .unwrap_err(),
        "admin certificates need the admin role",
    );
    let (signed, _) = issuer
        .sign_csr(csr_for("ci-csr"), CertKind::Client, None)
        .await
        .unwrap();
    assert_eq!(signed.names.common_name, "ci-csr");
    refused(
        issuer
            .sign_csr(csr_for("prod-csr"), CertKind::Client, None)
            .await
            .unwrap_err(),
        "prod-csr",
    );
    let t = issuer
        .token_create("ci-runner-7", None, None)
        .await
        .unwrap();
    issuer.token_revoke(&t.record.id).await.unwrap();
    refused(
        issuer.token_create("db-1", None, None).await.unwrap_err(),
        "db-1",
    );
    let other = local.token_create("db-2", None, None).await.unwrap();
    refused(
        issuer.token_revoke(&other.record.id).await.unwrap_err(),
        "db-2",
    );
    issuer.renew(&made.record.serial, None, true).await.unwrap();
    issuer.revoke(&made.record.serial).await.unwrap();
    let prod = common::client_cert(&local, "prod-web").await;
    refused(
        issuer.revoke(&prod.record.serial).await.unwrap_err(),
        "prod-web",
    );
    refused(
        issuer
            .renew(&prod.record.serial, None, true)
            .await
            .unwrap_err(),
        "prod-web",
    );
    refused(
        issuer.registry_fsck(true).await.unwrap_err(),
        "needs the admin role",
    );
    issuer.registry_fsck(false).await.unwrap();
    // Nothing refused happened.
    let all = local.list(None, None).await.unwrap();
    assert!(
        all.iter()
            .all(|c| c.names.common_name != "prod-db" && c.names.common_name != "prod-csr")
    );
    assert_eq!(
        local
            .list(None, None)
            .await
            .unwrap()
            .iter()
            .find(|c| c.serial == prod.record.serial)
            .unwrap()
            .status(),
        CertStatus::Valid
    );

    // The audit log: every refusal, with the subject and peer address, and the changes
    // that were allowed, by whom.
    let denials = local
        .audit(&berth::audit::Filter {
            decision: Some(berth::audit::Decision::Deny),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(denials.len(), 12, "{denials:#?}");
    for r in &denials {
        let s = r.actor.subject.as_deref().unwrap();
        assert!(s.contains("dashboard") || s.contains("ci-issuer"), "{r:?}");
        assert!(
            r.actor.peer.as_deref().unwrap().starts_with("127.0.0.1:"),
            "{r:?}"
        );
        assert!(r.rule.as_deref().unwrap().starts_with("role "), "{r:?}");
    }
    let by_issuer = local
        .audit(&berth::audit::Filter {
            actor: Some("ci-issuer".into()),
            decision: Some(berth::audit::Decision::Allow),
            ..Default::default()
        })
        .await
        .unwrap();
    let actions: Vec<&str> = by_issuer.iter().map(|r| r.action.name()).collect();
    assert_eq!(
        actions,
        [
            "cert.issue",
            "cert.sign",
            "token.create",
            "token.revoke",
            "cert.renew",
            "cert.revoke"
        ]
    );
    // A certificate with no role at all is refused, and that is recorded too.
    let stranger = common::client_cert(&local, "no-role").await;
    let stranger = Client::connect(&d.tcp_target(tls_dir(&dirs.path().join("s"), &stranger)))
        .await
        .unwrap();
    refused(stranger.info().await.unwrap_err(), "has no role on berthd");
    let r = local
        .audit(&berth::audit::Filter {
            actor: Some("no-role".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].rule.as_deref(), Some("no role"));
    assert!(
        r[0].target
            .name
            .as_deref()
            .unwrap()
            .contains("SystemService/Info")
    );
    // A token's secret is never recorded.
    let text = std::fs::read_to_string(d.config.state_dir.join("audit/audit.log")).unwrap();
    assert!(!text.contains(&t.secret) && !text.contains(&other.secret));
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
}

/// With ca.crt and ca.key gone but the index listing certificates, berthd refuses to
/// start (naming the files and what the index says) and creates nothing; `--new-ca`
/// (pki.replace_lost_ca) makes a new CA on purpose.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_ca_is_never_replaced_silently() {
    let d = TestDaemon::start();
    let c = d.client().await;
    common::client_cert(&c, "before").await;
    drop(c);
    let (dir, mut config) = d.stop();
    let pki = config.state_dir.join("pki");
    std::fs::remove_file(pki.join("ca.crt")).unwrap();
    std::fs::remove_file(pki.join("ca.key")).unwrap();
    let index = std::fs::read(pki.join("index.json")).unwrap();
    let err = match berth::daemon::Daemon::open(config.clone()) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("berthd started with a new CA over the old index"),
    };
    assert!(
        err.contains("ca.crt and ca.key are missing")
            && err.contains("index.json")
            && err.contains("--new-ca"),
        "{err}"
    );
    assert!(!pki.join("ca.crt").exists() && !pki.join("ca.key").exists());
    assert_eq!(std::fs::read(pki.join("index.json")).unwrap(), index);
    // Half a CA, or a damaged key: refused, naming the file; nothing is replaced.
    std::fs::write(
        pki.join("ca.crt"),
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = berth::daemon::Daemon::open(config.clone())
        .unwrap_err()
        .to_string();
    assert!(err.contains("ca.key") && err.contains("backup"), "{err}");
    std::fs::write(pki.join("ca.key"), b"not a key").unwrap();
    let err = berth::daemon::Daemon::open(config.clone())
        .unwrap_err()
        .to_string();
    assert!(err.contains("ca.key") || err.contains("ca.crt"), "{err}");
    assert_eq!(std::fs::read(pki.join("ca.key")).unwrap(), b"not a key");
    std::fs::remove_file(pki.join("ca.crt")).unwrap();
    std::fs::remove_file(pki.join("ca.key")).unwrap();
    // On purpose: a new CA.
    config.pki.replace_lost_ca = true;
    let d = TestDaemon::start_in(dir, config).unwrap();
    assert!(d.client().await.health().await.unwrap());
    assert!(pki.join("ca.crt").exists());
}

/// Upload sessions a previous run left behind are purged at start once they are older
/// than `registry.orphan_upload_minutes`; a recent one survives a restart.
#[tokio::test(flavor = "multi_thread")]
async fn uploads_a_previous_run_left_are_purged_at_start() {
    let d = TestDaemon::with_registry();
    let c = d.client().await;
    let me = common::client_cert(&c, "uploader").await;
    let tls = common::presenting(&me, b"http/1.1");
    for _ in 0..2 {
        let (s, _) = common::tls_request(
            d.registry[0],
            tls.clone(),
            axum::http::Method::POST,
            "/v2/team/app/blobs/uploads/",
            vec![],
        )
        .await
        .unwrap();
        assert_eq!(s.as_u16(), 202);
    }
    let ups = c.registry_uploads(false, None, false).await.unwrap();
    assert_eq!(ups.len(), 2);
    drop(c);
    let (dir, mut config) = d.stop();
    // One was started an hour ago (as if berthd crashed during it): well inside the 24 h
    // of upload_max_age_hours, past the 15 minutes of orphan_upload_minutes.
    let old = config.registry_root().join(format!(
        "docker/registry/v2/repositories/team/app/_uploads/{}/startedat",
        ups[0].id
    ));
    let hour_ago = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    std::fs::write(
        &old,
        hour_ago
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap(),
    )
    .unwrap();
    config.registry.listen = vec!["127.0.0.1:0".parse().unwrap()];
    let d = TestDaemon::start_in(dir, config).unwrap();
    let left = d
        .client()
        .await
        .registry_uploads(false, None, false)
        .await
        .unwrap();
    assert_eq!(
        left.iter().map(|u| u.id.clone()).collect::<Vec<_>>(),
        [ups[1].id.clone()]
    );
    assert_eq!(d.client().await.registry_status().await.unwrap().uploads, 1);
}

/// Damaged but recoverable state: a world-readable ca.key and a 0777 pki/ are tightened
/// (and logged), and a deleted keys/ folder means new certificates for berthd's own
/// listeners instead of a daemon that says ready and then dies.
#[tokio::test(flavor = "multi_thread")]
async fn loose_modes_are_tightened_and_lost_keys_replaced_at_start() {
    let d = TestDaemon::with_registry();
    let (dir, mut config) = d.stop();
    let pki = config.state_dir.join("pki");
    std::fs::set_permissions(pki.join("ca.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&pki, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::remove_dir_all(pki.join("keys")).unwrap();
    config.registry.listen = vec!["127.0.0.1:0".parse().unwrap()];
    let d = TestDaemon::start_in(dir, config).unwrap();
    assert_eq!(mode(&pki.join("ca.key")), 0o600);
    assert_eq!(mode(&pki), 0o700);
    let c = d.client().await;
    assert!(c.health().await.unwrap());
    // The registry serves with a fresh certificate whose key berthd holds again.
    let me = common::client_cert(&c, "after").await;
    let (s, _) = common::tls_get(d.registry[0], common::presenting(&me, b"http/1.1"), "/v2/")
        .await
        .unwrap();
    assert_eq!(s.as_u16(), 200);
}

/// Weak CSRs (made with openssl) are refused saying what is weak and what is accepted,
/// not as "altered".
#[tokio::test(flavor = "multi_thread")]
async fn weak_csrs_are_refused_for_what_they_are() {
    let d = TestDaemon::start();
    let c = d.client().await;
    let work = common::temp_dir();
    let w = work.path();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(w)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "rsa:1024",
        "-nodes",
        "-subj",
        "/CN=weak",
        "-keyout",
        "k1",
        "-out",
        "rsa1024.csr",
    ]);
    openssl(&["genrsa", "-out", "k2", "2048"]);
    openssl(&[
        "req", "-new", "-key", "k2", "-sha1", "-subj", "/CN=sha1", "-out", "sha1.csr",
    ]);
    openssl(&[
        "req", "-new", "-key", "k2", "-md5", "-subj", "/CN=md5", "-out", "md5.csr",
    ]);
    openssl(&[
        "req", "-new", "-key", "k2", "-sha256", "-subj", "/CN=fine", "-out", "ok.csr",
    ]);
    for (file, says) in [
        ("rsa1024.csr", "RSA-1024"),
        ("sha1.csr", "SHA-1"),
        ("md5.csr", "MD5"),
    ] {
        let csr = std::fs::read(w.join(file)).unwrap();
        let e = c.sign_csr(csr, CertKind::Client, None).await.unwrap_err();
        assert_eq!(e.kind(), Some(Code::InvalidArgument), "{e}");
        let m = e.to_string();
        assert!(
            m.contains(says) && m.contains("RSA 2048") && !m.contains("altered"),
            "{file}: {m}"
        );
    }
    let (rec, _) = c
        .sign_csr(
            std::fs::read(w.join("ok.csr")).unwrap(),
            CertKind::Client,
            None,
        )
        .await
        .unwrap();
    assert_eq!(rec.names.common_name, "fine");
}

/// A key and a CSR for it, as a replica makes them.
fn key_and_csr(cn: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    let csr = p.serialize_request(&key).unwrap().pem().unwrap();
    (key.serialize_pem(), csr)
}

/// A replica token enrols again and again, each time a `replica` certificate with the
/// token's names and none of the CSR's; such a certificate may watch the trust material
/// and call nothing else, and a revocation reaches the streams at once: the other
/// replicas see the serial, the revoked one's stream ends.
#[tokio::test(flavor = "multi_thread")]
async fn replica_tokens_make_certificates_that_may_only_watch() {
    use futures_util::StreamExt;
    let d = TestDaemon::start_with(|cfg: &mut Config| {
        cfg.control.listen = vec!["tcp://127.0.0.1:0".parse::<ListenAddr>().unwrap()];
    });
    let local = d.client().await;
    let fp = local.info().await.unwrap().ca_fingerprint_sha256;
    let port = d.tcp[0].port();
    let none: [String; 0] = [];
    let e = local
        .token_create("registry", None, Some(&none))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("--san"), "{e}");
    let names = ["registry.example.com".to_string(), "10.0.0.5".to_string()];
    let token = local
        .token_create("registry", None, Some(&names))
        .await
        .unwrap()
        .secret;
    let anon = Client::connect_pinned("127.0.0.1", port, &fp, None)
        .await
        .unwrap();
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let (key, csr) = key_and_csr("admin");
        let got = anon.enrol(&token, &csr).await.unwrap();
        replicas.push((got, key));
    }
    let recs = local.list(Some(CertKind::Replica), None).await.unwrap();
    assert_eq!(recs.len(), 2);
    for r in &recs {
        assert_eq!(r.names.common_name, "registry");
        assert_eq!(r.names.dns_names, ["registry.example.com"]);
        assert_eq!(
            r.names.ip_addresses,
            ["10.0.0.5".parse::<std::net::IpAddr>().unwrap()]
        );
        let pem = write(d.dir.path(), "replica.pem", &r.certificate_pem);
        let text = openssl_text(&pem);
        assert!(
            text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
            "{text}"
        );
    }
    // Nothing but a replica token makes one.
    let (_, csr) = key_and_csr("registry");
    let e = local
        .sign_csr(csr.into_bytes(), CertKind::Replica, None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("replica token"), "{e}");

    let as_replica = |i: usize| {
        let (got, key) = &replicas[i];
        let (cert, key) = (got.certificate_pem.clone(), key.clone());
        let fp = fp.clone();
        async move {
            Client::connect_pinned("127.0.0.1", port, &fp, Some((&cert, &key)))
                .await
                .unwrap()
        }
    };
    let r0 = as_replica(0).await;
    let r1 = as_replica(1).await;
    let mut s0 = r0.watch_trust(vec![]).await.unwrap();
    let mut s1 = r1.watch_trust(vec![]).await.unwrap();
    let first = s1.next().await.unwrap().unwrap();
    assert_eq!(first.ca_pem, local.ca().await.unwrap().0);
    assert!(first.revoked_serials.is_empty());
    assert!(first.crl_pem.contains("BEGIN X509 CRL"));
    assert!(s0.next().await.unwrap().is_ok());
    // Quiet: a heartbeat, without the material.
    let beat = tokio::time::timeout(std::time::Duration::from_secs(15), s1.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(beat.heartbeat_only, "{beat:?}");
    assert_eq!(beat.generation, first.generation);
    assert!(beat.crl_pem.is_empty() && beat.ca_pem.is_empty());
    let e = r1.list(None, None).await.unwrap_err();
    assert_eq!(e.kind(), Some(Code::PermissionDenied), "{e}");
    let e = r1.token_create("x", None, None).await.unwrap_err();
    assert_eq!(e.kind(), Some(Code::PermissionDenied), "{e}");

    // A client certificate may not watch.
    let ci = common::client_cert(&local, "ci").await;
    let ci_key = ci.key.as_ref().unwrap().secret_pem().to_string();
    let as_ci = Client::connect_pinned(
        "127.0.0.1",
        port,
        &fp,
        Some((&ci.record.certificate_pem, &ci_key)),
    )
    .await
    .unwrap();
    let e = match as_ci.watch_trust(vec![]).await {
        Ok(mut s) => s.next().await.unwrap().unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(e.kind(), Some(Code::PermissionDenied), "{e}");

    // A replica's audit records land in the primary's log, marked by the primary with
    // who sent them, whatever the replica claimed; a client certificate may not send any.
    let mut rec = berth::audit::Record::new(
        &berth::identity::Identity::Anonymous,
        berth::audit::Action::Pull,
    )
    .repository("fleet/reported");
    rec.via = Some("someone else".into());
    assert_eq!(
        r1.report_audit(std::slice::from_ref(&rec)).await.unwrap(),
        1
    );
    let e = as_ci.report_audit(&[rec]).await.unwrap_err();
    assert_eq!(e.kind(), Some(Code::PermissionDenied), "{e}");
    let got = local
        .audit(&berth::audit::Filter {
            repository: Some("fleet/reported".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0].via.as_deref(),
        Some(format!("registry ({})", replicas[1].0.serial).as_str())
    );

    // Revoking replica 0: replica 1 hears the serial, replica 0's stream ends.
    let serial0 = replicas[0].0.serial.clone();
    local.revoke(&serial0).await.unwrap();
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let u = s1.next().await.unwrap().unwrap();
            if !u.heartbeat_only {
                return u;
            }
        }
    })
    .await
    .unwrap();
    assert!(next.revoked_serials.contains(&serial0), "{next:?}");
    assert!(next.generation > first.generation);
    let end = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match s0.next().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return e.to_string(),
                None => return "ended".to_string(),
            }
        }
    })
    .await
    .unwrap();
    assert!(end.contains("revoked"), "{end}");
}

/// Client certificates are signed on the runtime's threads, which is fast for ECDSA and
/// Ed25519; RSA key generation takes up to seconds and must not stall them. Two RSA issues
/// at once (the daemon has two runtime threads) while other callers keep asking: those
/// are answered all along.
#[tokio::test(flavor = "multi_thread")]
async fn rsa_issues_do_not_stall_other_requests() {
    let d = TestDaemon::start();
    let c = d.client().await;
    let rsa: Vec<_> = (0..2)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                issue(
                    &c,
                    CertKind::Client,
                    names(&format!("rsa-{i}")),
                    KeyAlgorithm::Rsa3072,
                )
                .await
            })
        })
        .collect();
    let other = d.client().await;
    let mut answered_meanwhile = 0;
    while !rsa.iter().all(|t| t.is_finished()) {
        assert!(other.health().await.unwrap());
        if !rsa.iter().any(|t| t.is_finished()) {
            answered_meanwhile += 1;
        }
    }
    for t in rsa {
        t.await.unwrap();
    }
    assert!(
        answered_meanwhile >= 5,
        "only {answered_meanwhile} requests were answered while two RSA keys were being made"
    );
}
