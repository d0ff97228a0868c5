//! Issues client certificates through berthd's unix socket and prints throughput and
//! latency. Figures are printed, never asserted: `cargo bench --bench issue`.
//!
//! Environment: `BERTH_BENCH_CERTS` (default 1000), `BERTH_BENCH_PARALLEL` (default 1,
//! concurrent callers), `BERTH_BENCH_KEY` (default ecdsa-p256).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use berth::client::{Client, IssueRequest, Target};
use berth::config::Config;
use berth::daemon::Daemon;
use berth::pki::{CertKind, KeyAlgorithm, Names};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let total: usize = env_or("BERTH_BENCH_CERTS", 1000);
    let parallel: usize = env_or::<usize>("BERTH_BENCH_PARALLEL", 1).max(1);
    let alg: KeyAlgorithm = env_or("BERTH_BENCH_KEY", KeyAlgorithm::EcdsaP256);

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.set_root(dir.path());
    cfg.certsd.docker_root = dir.path().join("docker");
    cfg.certsd.containers_root = dir.path().join("containers");
    cfg.registry.enabled = false;
    let daemon = Daemon::open(cfg).unwrap();
    let listeners = daemon.bind().unwrap();
    let socket = listeners.socket_path().to_path_buf();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(daemon.serve(listeners, async {
        let _ = stopped.await;
    }));
    let client = Client::connect(&Target::Unix(socket)).await.unwrap();
    while !client.health().await.unwrap_or(false) {
        tokio::task::yield_now().await;
    }

    let per_task = total.div_ceil(parallel);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..parallel {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_task);
            for i in 0..per_task {
                let t0 = Instant::now();
                client
                    .issue(IssueRequest {
                        kind: CertKind::Client,
                        names: Names {
                            common_name: format!("bench-{t}-{i}"),
                            ..Names::default()
                        },
                        validity_days: None,
                        key_algorithm: alg,
                        return_key: std::env::var("BERTH_BENCH_RETURN_KEY").is_ok(),
                    })
                    .await
                    .unwrap();
                lat.push(t0.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    lat.sort();
    let n = lat.len();
    println!("issue {n} {alg} client certificates over the unix socket, {parallel} caller(s)");
    println!(
        "  throughput  {:.1} certs/s",
        n as f64 / elapsed.as_secs_f64()
    );
    println!("  total       {:.2?}", elapsed);
    println!("  p50         {:.2?}", percentile(&lat, 0.50));
    println!("  p99         {:.2?}", percentile(&lat, 0.99));
    println!("  max         {:.2?}", lat[n - 1]);

    drop(client);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
