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
