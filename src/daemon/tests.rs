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
