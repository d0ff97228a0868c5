//! Reaching berthd over the network before this host has any certificate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

/// A "berthd" whose CA is pinned and whose TLS handshake completes, which then never
/// answers: what a wedged server looks like to `berth join` and `berth renew`.
async fn silent_server() -> (u16, String, tokio::task::JoinHandle<()>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_der(ca.der(), ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let fingerprint = format!("sha256:{}", hex::encode(Sha256::digest(ca.der())));
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone(), ca.der().clone()],
        rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    )
    .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(tls) = acceptor.accept(tcp).await {
                // Read what the client sends, say nothing.
                held.push(tokio::spawn(async move {
                    let mut tls = tls;
                    let mut sink = tokio::io::sink();
                    let _ = tokio::io::copy(&mut tls, &mut sink).await;
                }));
            }
        }
    });
    (port, fingerprint, server)
}

/// A server that takes the connection and never answers fails a join or a renewal with
/// an error naming it, instead of holding the caller (a systemd timer's `berth renew`)
/// forever.
#[tokio::test]
async fn a_server_that_never_answers_fails_the_call_in_time() {
    async fn bounded<T>(call: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(20), call)
            .await
            .expect("the call hung past its deadline")
    }
    let (port, fingerprint, server) = silent_server().await;
    let client = Client::connect_pinned("127.0.0.1", port, &fingerprint, None)
        .await
        .unwrap()
        .answer_within(Duration::from_millis(300));
    for (what, r) in [
        (
            "the enrolment",
            bounded(client.enrol("token", "csr")).await.map(|_| ()),
        ),
        (
            "the renewal",
            bounded(client.renew_own("csr")).await.map(|_| ()),
        ),
    ] {
        let e = r.unwrap_err();
        assert!(
            matches!(&e, Error::NoAnswer { what: w, .. } if *w == what),
            "{what}: {e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("tcp://127.0.0.1:{port}")) && msg.contains("did not answer"),
            "{msg}"
        );
    }
    server.abort();
}
