//! Unit tests of the parent module.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use crate::proto::system_service_server::SystemService;

async fn health(state: &Arc<State>) -> i32 {
    let svc = service::SystemSvc {
        state: state.clone(),
    };
    svc.health(tonic::Request::new(proto::HealthRequest {}))
        .await
        .unwrap()
        .into_inner()
        .status
}

/// Health is what readiness waits rely on (tests, systemd, load balancers), so it must
/// say NOT_SERVING until the CA is loaded and every listener serves, and again once
/// shutdown begins.
#[tokio::test(flavor = "multi_thread")]
async fn health_says_serving_only_while_every_listener_serves() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.set_root(&dir.path().join("state"));
    cfg.certsd.docker_root = dir.path().join("d");
    cfg.certsd.containers_root = dir.path().join("c");
    cfg.registry.listen = vec!["127.0.0.1:0".parse().unwrap()];
    cfg.control.listen = vec!["tcp://127.0.0.1:0".parse().unwrap()];
    let daemon = Daemon::open(cfg).unwrap();
    let state = daemon.state.clone();
    let not_serving = i32::from(proto::ServingStatus::NotServing);
    let serving = i32::from(proto::ServingStatus::Serving);
    assert_eq!(health(&state).await, not_serving, "opened, not serving yet");
    let listeners = daemon.bind().unwrap();
    assert_eq!(health(&state).await, not_serving, "bound, not serving yet");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(daemon.serve(listeners, async {
        let _ = rx.await;
    }));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while health(&state).await != serving {
        assert!(std::time::Instant::now() < deadline, "never became ready");
        tokio::task::yield_now().await;
    }
    // Serving means every listener has its TLS and its address.
    assert!(state.registry_tls.get().is_some() && state.control_tls.get().is_some());
    assert_eq!(state.registry_addrs().len(), 1);
    assert_eq!(state.tcp_addrs().len(), 1);
    tx.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert_eq!(health(&state).await, not_serving, "stopped");
}

/// Every RPC in the compiled protos has a role placed for it and its service a metrics
/// label of its own: adding an RPC or a service fails here until someone decides who may
/// call it, instead of it silently falling to the catch-all arms.
#[test]
fn every_rpc_has_a_role_and_every_service_a_label() {
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut unplaced = Vec::new();
    let mut methods = 0;
    for file in &set.file {
        for svc in &file.service {
            let service = format!("{}.{}", file.package(), svc.name());
            assert_ne!(
                super::grpc_route(&format!("/{service}/X")),
                "other",
                "{service} has no metrics label"
            );
            for m in &svc.method {
                methods += 1;
                if super::auth::placed(&service, m.name()).is_none() {
                    unplaced.push(format!("{service}/{}", m.name()));
                }
            }
        }
    }
    assert!(
        methods >= 30,
        "only {methods} methods in the descriptor set"
    );
    assert!(unplaced.is_empty(), "RPCs without a role: {unplaced:?}");
}

/// A replica's config says what is missing or out of place, before anything is bound, and
/// a replica never starts without its primary's trust material.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_refuses_configs_it_cannot_serve_and_a_primary_it_cannot_reach() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let base = || {
        let mut cfg = Config::default();
        cfg.set_root(&dir.path().join("replica"));
        cfg.registry.root = Some(dir.path().join("shared"));
        cfg.registry.listen = vec!["127.0.0.1:0".parse().unwrap()];
        cfg.replica = Some(crate::config::ReplicaConfig {
            primary: "127.0.0.1:1".into(),
            ca_fingerprint: format!("sha256:{}", "ab".repeat(32)),
            token_file: None,
            crl_grace: Duration::from_secs(60),
        });
        cfg
    };
    let refused = |cfg: Config, token: Option<&str>| {
        Replica::open(cfg, token.map(str::to_string))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let mut c = base();
    c.replica = None;
    assert!(refused(c, Some("t")).contains("[replica]"));
    assert!(refused(base(), None).contains("BERTH_JOIN_TOKEN"));
    let mut c = base();
    c.control.listen = vec!["tcp://127.0.0.1:0".parse().unwrap()];
    assert!(refused(c, Some("t")).contains("control.listen"));
    let mut c = base();
    c.registry.policy = Some(dir.path().join("policy.toml"));
    assert!(refused(c, Some("t")).contains("primary's policy"));
    let mut c = base();
    c.registry.root = None;
    assert!(refused(c, Some("t")).contains("shared store"));
    let mut c = base();
    if let Some(r) = c.replica.as_mut() {
        r.ca_fingerprint = "nonsense".into();
    }
    assert!(refused(c, Some("t")).contains("ca_fingerprint"));
    let mut c = base();
    if let Some(r) = c.replica.as_mut() {
        r.primary = "no-port".into();
    }
    let replica = Replica::open(c, Some("t".into())).unwrap();
    let l = replica.bind().unwrap();
    let e = replica.serve(l, std::future::pending()).await.unwrap_err();
    assert!(e.to_string().contains("HOST:PORT"), "{e}");
    // Nobody listens on port 1: the start fails and says with whom.
    let replica = Replica::open(base(), Some("t".into())).unwrap();
    let l = replica.bind().unwrap();
    let e = replica.serve(l, std::future::pending()).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("enrolling with the primary 127.0.0.1:1"),
        "{e}"
    );
}

/// `pki.crl_lifetime` below a few seconds cannot be re-signed in time: refused.
#[test]
fn a_crl_lifetime_too_short_to_renew_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.set_root(dir.path());
    cfg.pki.crl_lifetime = Duration::from_secs(1);
    let e = Daemon::open(cfg).unwrap_err();
    assert!(e.to_string().contains("crl_lifetime"), "{e}");
}
