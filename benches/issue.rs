//! Issues client certificates through berthd's unix socket and prints throughput and
//! latency. Figures are printed, never asserted: `cargo bench --bench issue`.
//!
//! Environment: `BERTH_BENCH_CERTS` (default 1000), `BERTH_BENCH_PARALLEL` (default 1,
//! concurrent callers), `BERTH_BENCH_KEY` (default ecdsa-p256), `BERTH_BENCH_RETURN_KEY`
//! (set: keys are also returned), `BERTH_BENCH_INDEX` (default 0: then the index is
//! filled to that many certificates and listing, revoking and reading the CRL are timed).
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

    let index: usize = env_or("BERTH_BENCH_INDEX", 0);
    if index > n {
        large_index(&client, index, n).await;
    }

    drop(client);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// Fills the index to `index` certificates (16 callers), then times what grows with it.
async fn large_index(client: &Client, index: usize, have: usize) {
    let fill = index - have;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..fill).step_by(16) {
                client
                    .issue(IssueRequest {
                        kind: CertKind::Client,
                        names: Names {
                            common_name: format!("fill-{i}"),
                            ..Names::default()
                        },
                        validity_days: None,
                        key_algorithm: KeyAlgorithm::EcdsaP256,
                        return_key: false,
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "with {index} certificates in the index (filled at {:.0} certs/s)",
        fill as f64 / t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    match client.list(None, None).await {
        Ok(all) => println!(
            "  cert ls (all)        {:.2?} ({} records)",
            t.elapsed(),
            all.len()
        ),
        Err(e) => println!(
            "  cert ls (all)        failed after {:.2?}: {e}",
            t.elapsed()
        ),
    }
    let t = Instant::now();
    let one = client.list(None, Some("fill-7".into())).await.unwrap();
    println!(
        "  cert ls --cn         {:.2?} ({} record)",
        t.elapsed(),
        one.len()
    );
    let t = Instant::now();
    let mut lat = Vec::new();
    for i in 0..100 {
        let serial = client
            .list(None, Some(format!("fill-{i}")))
            .await
            .unwrap()
            .remove(0)
            .serial;
        let t0 = Instant::now();
        client.revoke(&serial).await.unwrap();
        lat.push(t0.elapsed());
    }
    lat.sort();
    println!(
        "  revoke (re-signs the CRL) p50 {:.2?}, p99 {:.2?} (100 in {:.2?})",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        t.elapsed()
    );
    let t = Instant::now();
    let crl = client.crl().await.unwrap();
    println!(
        "  CRL read             {:.2?} ({} revoked, {} bytes)",
        t.elapsed(),
        crl.revoked_count,
        crl.pem.len()
    );
    // Daemon and client share this process: the figure includes the client's copy of
    // the 'cert ls' answer.
    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().to_string()))
        })
        .unwrap_or_default();
    println!("  peak RSS             {hwm} (berthd and this client in one process)");
}
