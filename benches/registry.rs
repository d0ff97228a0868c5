//! berth's embedded registry and Debian's docker-registry (distribution 2.8, started by
//! scripts/docker-registry-bench.sh with the same mutual TLS) side by side, on loopback,
//! HTTP/1.1, the same client. Rounds are interleaved (berth then docker-registry, then the
//! other way round) so drift on a noisy machine hits both; each round starts a fresh server
//! on fresh storage. Printed per figure: the median of the rounds, the spread (min-max),
//! the ratio of medians, and whether the spreads overlap (inside the noise). Server CPU
//! comes from /proc (user + system of the server process), memory from VmRSS/VmHWM.
//! Certificate issuance over berthd's socket (16 callers) is measured in berth's rounds.
//! Asserts nothing.
//!
//! `cargo bench --bench registry`; environment: BERTH_BENCH_ROUNDS (3),
//! BERTH_BENCH_BLOB_MIB (100), BERTH_BENCH_IMAGES (100), BERTH_BENCH_MANIFEST_GETS (20000),
//! BERTH_BENCH_CATALOG (4000), BERTH_BENCH_CONNS (1000), BERTH_BENCH_ISSUE (2000);
//! BERTH_BENCH_ONLY_BERTH (set: berth alone, to profile it), BERTH_BENCH_WARM_MIB (what
//! is written and deleted before each round to warm the page cache; 0: nothing),
//! BERTH_BENCH_S3 (set: also the S3 driver's figures, see `s3_figures`; with
//! BERTH_BENCH_S3_MIB (16) and BERTH_BENCH_S3_GETS (4000)).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/moto.rs"]
mod moto;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::client::{Client, IssueRequest, Target};
use berth::pki::{CertKind, KeyAlgorithm, Names};
use berth::registry::Digest;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 keep-alive connection over TLS.
struct Conn {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Conn {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let s = tokio_rustls::TlsConnector::from(tls)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
            .await
            .unwrap();
        tokio::spawn(conn);
        Conn { send }
    }

    /// Sends a request; returns status, Location and the body length (the body is read
    /// and dropped, never held).
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        ct: Option<&str>,
        body: Bytes,
    ) -> (StatusCode, String, u64) {
        self.send.ready().await.unwrap();
        // docker-registry 2.8 hides OCI manifests from clients that do not accept them.
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json");
        if let Some(ct) = ct {
            b = b.header("content-type", ct);
        }
        let len = body.len();
        let req = b
            .header("content-length", len)
            .body(Full::new(body))
            .unwrap();
        let resp = self.send.send_request(req).await.unwrap();
        let status = resp.status();
        let loc = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut body = resp.into_body();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(d) = frame.unwrap().into_data() {
                n += d.len() as u64;
            }
        }
        (status, path_of(&loc), n)
    }
}

/// docker-registry answers with absolute Locations; keep path and query.
fn path_of(loc: &str) -> String {
    match loc
        .strip_prefix("https://")
        .or_else(|| loc.strip_prefix("http://"))
    {
        Some(rest) => rest
            .find('/')
            .map_or("/".to_string(), |i| rest[i..].to_string()),
        None => loc.to_string(),
    }
}

fn with_param(path: &str, kv: &str) -> String {
    if path.contains('?') {
        format!("{path}&{kv}")
    } else {
        format!("{path}?{kv}")
    }
}

/// CPU seconds (user + system) a process has used, from /proc/PID/stat. The kernel reports
/// them in USER_HZ ticks, 100 per second on Linux whatever the kernel's own tick rate.
fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = s
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // After the command name: state is field 3, utime 14 and stime 15 (1-based).
    (tick(11) + tick(12)) / 100.0
}

/// A memory figure of a process in MiB (`VmRSS:` now, `VmHWM:` its peak).
fn mem_mib(pid: u32, field: &str) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

async fn upload(c: &mut Conn, repo: &str, data: Bytes) -> Digest {
    let d = Digest::sha256_of(&data);
    upload_as(c, repo, data, &d).await;
    d
}

/// The docker client's upload: POST, one PATCH with the body, PUT with the digest.
async fn upload_as(c: &mut Conn, repo: &str, data: Bytes, d: &Digest) {
    let (s, loc, _) = c
        .call(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/"),
            None,
            Bytes::new(),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, loc, _) = c
        .call(Method::PATCH, &loc, Some("application/octet-stream"), data)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, _, _) = c
        .call(
            Method::PUT,
            &with_param(&loc, &format!("digest={d}")),
            None,
            Bytes::new(),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
}

/// `len` bytes no other call returns (xorshift from `seed`): every blob is new content.
fn noise(seed: u64, len: usize) -> Bytes {
    let mut v = vec![0u8; len];
    let mut x = seed.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    Bytes::from(v)
}

/// One image as docker pushes it: a config and two layers, then the manifest.
struct Image {
    config: Bytes,
    layers: [Bytes; 2],
    digests: [Digest; 3],
    manifest: Bytes,
}

impl Image {
    fn new(i: usize, layer_len: usize) -> Image {
        let config = Bytes::from(format!(
            "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{{\"Labels\":{{\"i\":\"{i}\"}}}}}}"
        ));
        let layers = [
            noise(1_000_000 + 2 * i as u64, layer_len),
            noise(1_000_001 + 2 * i as u64, layer_len),
        ];
        let digests = [
            Digest::sha256_of(&config),
            Digest::sha256_of(&layers[0]),
            Digest::sha256_of(&layers[1]),
        ];
        let manifest = Bytes::from(
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digests[0].to_string(), "size": config.len()},
                "layers": [
                    {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digests[1].to_string(), "size": layer_len},
                    {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digests[2].to_string(), "size": layer_len},
                ],
            }))
            .unwrap(),
        );
        Image {
            config,
            layers,
            digests,
            manifest,
        }
    }
}

/// What one round measures on one server; keys are [`FIGURES`]' names.
type Round = std::collections::BTreeMap<&'static str, f64>;

/// A figure: its name, its unit, and whether more is better.
struct Figure {
    name: &'static str,
    unit: &'static str,
    more_is_better: bool,
}

const fn fig(name: &'static str, unit: &'static str, more_is_better: bool) -> Figure {
    Figure {
        name,
        unit,
        more_is_better,
    }
}

/// Every figure, in the order printed.
const FIGURES: &[Figure] = &[
    fig("manifest GET c=16", "req/s", true),
    fig("manifest GET c=16 p99", "ms", false),
    fig("manifest GET CPU", "ms/req", false),
    fig("catalog c=2", "req/s", true),
    fig("push-blob c=1", "MiB/s", true),
    fig("push-blob c=1 CPU", "s/GiB", false),
    fig("push-blob c=4", "MiB/s", true),
    fig("push-blob c=4 CPU", "s/GiB", false),
    fig("pull-blob c=1", "MiB/s", true),
    fig("pull-blob c=4", "MiB/s", true),
    fig("pull-blob c=4 CPU", "s/GiB", false),
    fig("push-image c=4", "images/s", true),
    fig("push-image CPU", "ms/image", false),
    fig("new connections c=4", "conn/s", true),
    fig("1 KiB GET p50", "ms", false),
    fig("1 KiB GET p99", "ms", false),
    fig("idle RSS", "MiB", false),
    fig("peak RSS", "MiB", false),
    fig("issue c=16", "certs/s", true),
    fig("issue c=16 p50", "ms", false),
    fig("issue c=16 p99", "ms", false),
];

/// Runs `work` and returns its wall time and the server's CPU time meanwhile.
async fn measured<T>(pid: u32, work: impl std::future::Future<Output = T>) -> (f64, f64, T) {
    measured_all(&[pid], work).await
}

/// [`measured`] with the CPU time of several servers summed.
async fn measured_all<T>(
    pids: &[u32],
    work: impl std::future::Future<Output = T>,
) -> (f64, f64, T) {
    let cpu = || pids.iter().map(|&p| cpu_secs(p)).sum::<f64>();
    let (c0, t0) = (cpu(), Instant::now());
    let out = work.await;
    (t0.elapsed().as_secs_f64(), cpu() - c0, out)
}

/// How many times a pull figure reads each blob: once, 100 MiB at c=1 took about 70 ms,
/// short enough for one descheduling to move the figure by half (880-2,025 MiB/s for one
/// binary in three runs).
const PULLS: usize = 5;

/// Pushes (`push`) or pulls each blob on its own connection, all at once; returns
/// (MiB/s, CPU s/GiB). A pull reads its blob [`PULLS`] times over, one after another.
async fn transfer_blobs(
    addr: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    pid: u32,
    blobs: &[(String, Bytes, Digest)],
    push: bool,
) -> (f64, f64) {
    transfer_blobs_across(&[(addr, pid)], tls, blobs, push).await
}

/// [`transfer_blobs`] with the blobs dealt out in turn to several servers sharing one
/// store (blob i to server i mod n).
async fn transfer_blobs_across(
    servers: &[(SocketAddr, u32)],
    tls: &Arc<rustls::ClientConfig>,
    blobs: &[(String, Bytes, Digest)],
    push: bool,
) -> (f64, f64) {
    let times = if push { 1 } else { PULLS };
    let mib = (times * blobs.iter().map(|b| b.1.len()).sum::<usize>()) as f64 / 1048576.0;
    let pids: Vec<u32> = servers.iter().map(|s| s.1).collect();
    let (secs, cpu, ()) = measured_all(&pids, async {
        let mut tasks = Vec::new();
        for (i, (repo, data, d)) in blobs.iter().cloned().enumerate() {
            let tls = tls.clone();
            let addr = servers[i % servers.len()].0;
            tasks.push(tokio::spawn(async move {
                let mut c = Conn::open(addr, tls).await;
                if push {
                    upload_as(&mut c, &repo, data, &d).await;
                    return;
                }
                let path = format!("/v2/{repo}/blobs/{d}");
                for _ in 0..times {
                    let (s, _, n) = c.call(Method::GET, &path, None, Bytes::new()).await;
                    assert_eq!((s, n), (StatusCode::OK, data.len() as u64));
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await;
    (mib / secs, cpu / (mib / 1024.0))
}

/// `clients` connections share `n` requests for `path`; returns (req/s, CPU ms/req,
/// sorted latencies).
async fn hammer(
    addr: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    pid: u32,
    clients: usize,
    n: usize,
    path: impl Fn(usize) -> String + Send + Sync + 'static,
) -> (f64, f64, Vec<Duration>) {
    hammer_across(&[(addr, pid)], tls, clients, n, path).await
}

/// [`hammer`] with the connections dealt out in turn to several servers.
async fn hammer_across(
    servers: &[(SocketAddr, u32)],
    tls: &Arc<rustls::ClientConfig>,
    clients: usize,
    n: usize,
    path: impl Fn(usize) -> String + Send + Sync + 'static,
) -> (f64, f64, Vec<Duration>) {
    let path = Arc::new(path);
    let per = (n / clients).max(1);
    // Connections first: the figure is requests, not handshakes.
    let mut conns = Vec::new();
    for w in 0..clients {
        conns.push(Conn::open(servers[w % servers.len()].0, tls.clone()).await);
    }
    let pids: Vec<u32> = servers.iter().map(|s| s.1).collect();
    let (secs, cpu, lat) = measured_all(&pids, async {
        let mut tasks = Vec::new();
        for (w, mut c) in conns.into_iter().enumerate() {
            let path = path.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per);
                for i in 0..per {
                    let p = path(w * per + i);
                    let t = Instant::now();
                    let (s, _, _) = c.call(Method::GET, &p, None, Bytes::new()).await;
                    lat.push(t.elapsed());
                    assert!(s.is_success(), "GET {p}: {s}");
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.unwrap());
        }
        lat
    })
    .await;
    let mut lat = lat;
    lat.sort();
    let total = (per * clients) as f64;
    (total / secs, cpu * 1000.0 / total, lat)
}

/// Pushes every image the way docker does (HEAD each blob, upload the missing ones, PUT
/// the manifest by tag), `clients` images at a time; returns (images/s, CPU ms/image).
async fn push_images(
    addr: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    pid: u32,
    clients: usize,
    images: &Arc<Vec<Image>>,
) -> (f64, f64) {
    let (secs, cpu, ()) = measured(pid, async {
        let mut tasks = Vec::new();
        for w in 0..clients {
            let (tls, images) = (tls.clone(), images.clone());
            tasks.push(tokio::spawn(async move {
                let mut c = Conn::open(addr, tls).await;
                for i in (w..images.len()).step_by(clients) {
                    let img = &images[i];
                    let blobs = [&img.config, &img.layers[0], &img.layers[1]];
                    for (data, d) in blobs.into_iter().zip(&img.digests) {
                        let path = format!("/v2/bench/images/blobs/{d}");
                        let (s, _, _) = c.call(Method::HEAD, &path, None, Bytes::new()).await;
                        assert_eq!(s, StatusCode::NOT_FOUND, "HEAD {path}");
                        upload_as(&mut c, "bench/images", data.clone(), d).await;
                    }
                    let (s, _, _) = c
                        .call(
                            Method::PUT,
                            &format!("/v2/bench/images/manifests/v{i}"),
                            Some("application/vnd.oci.image.manifest.v1+json"),
                            img.manifest.clone(),
                        )
                        .await;
                    assert_eq!(s, StatusCode::CREATED, "PUT manifest v{i}");
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await;
    let n = images.len() as f64;
    (n / secs, cpu * 1000.0 / n)
}

/// Content every round pushes (each round runs on fresh storage).
struct Load {
    one: Vec<(String, Bytes, Digest)>,
    four: Vec<(String, Bytes, Digest)>,
    images: Arc<Vec<Image>>,
}

impl Load {
    fn new(blob_mib: usize, images: usize) -> Load {
        let blob = |i: usize, repo: String| {
            let b = noise(i as u64, blob_mib * 1024 * 1024);
            let d = Digest::sha256_of(&b);
            (repo, b, d)
        };
        Load {
            one: vec![blob(0, "bench/blob-c1".into())],
            four: (1..=4)
                .map(|i| blob(i, format!("bench/blob-c4-{i}")))
                .collect(),
            images: Arc::new((0..images).map(|i| Image::new(i, 1024 * 1024)).collect()),
        }
    }
}

/// One round's workload against a server that has just started on empty storage.
async fn workload(
    addr: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    pid: u32,
    load: &Load,
) -> Round {
    let mut r = Round::new();
    r.insert("idle RSS", mem_mib(pid, "VmRSS:"));

    let (rate, cpu) = transfer_blobs(addr, tls, pid, &load.one, true).await;
    r.insert("push-blob c=1", rate);
    r.insert("push-blob c=1 CPU", cpu);

    let (rate, cpu) = transfer_blobs(addr, tls, pid, &load.four, true).await;
    r.insert("push-blob c=4", rate);
    r.insert("push-blob c=4 CPU", cpu);

    let (rate, _) = transfer_blobs(addr, tls, pid, &load.one, false).await;
    r.insert("pull-blob c=1", rate);

    let (rate, cpu) = transfer_blobs(addr, tls, pid, &load.four, false).await;
    r.insert("pull-blob c=4", rate);
    r.insert("pull-blob c=4 CPU", cpu);

    let (rate, cpu) = push_images(addr, tls, pid, 4, &load.images).await;
    r.insert("push-image c=4", rate);
    r.insert("push-image CPU", cpu);

    let tags = load.images.len();
    let gets = env_or("BERTH_BENCH_MANIFEST_GETS", 20000);
    let (rate, cpu, lat) = hammer(addr, tls, pid, 16, gets, move |i| {
        format!("/v2/bench/images/manifests/v{}", i % tags)
    })
    .await;
    r.insert("manifest GET c=16", rate);
    r.insert("manifest GET c=16 p99", percentile(&lat, 0.99));
    r.insert("manifest GET CPU", cpu);

    let n = env_or("BERTH_BENCH_CATALOG", 4000);
    let (rate, _, _) = hammer(addr, tls, pid, 2, n, |_| "/v2/_catalog".to_string()).await;
    r.insert("catalog c=2", rate);

    // New connections: handshake, one GET /v2/, close; four at a time.
    let conns = env_or("BERTH_BENCH_CONNS", 1000).max(4) / 4;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..conns {
                let mut c = Conn::open(addr, tls.clone()).await;
                let (s, _, _) = c.call(Method::GET, "/v2/", None, Bytes::new()).await;
                assert_eq!(s, StatusCode::OK);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    r.insert(
        "new connections c=4",
        (conns * 4) as f64 / t.elapsed().as_secs_f64(),
    );

    // A 1 KiB blob, GET after GET on one kept-alive connection.
    let mut c = Conn::open(addr, tls.clone()).await;
    let small = noise(7, 1024);
    let d = upload(&mut c, "bench/small", small).await;
    let path = format!("/v2/bench/small/blobs/{d}");
    let mut lat = Vec::new();
    for _ in 0..2000 {
        let t = Instant::now();
        let (s, _, n) = c.call(Method::GET, &path, None, Bytes::new()).await;
        lat.push(t.elapsed());
        assert_eq!((s, n), (StatusCode::OK, 1024));
    }
    lat.sort();
    r.insert("1 KiB GET p50", percentile(&lat, 0.5));
    r.insert("1 KiB GET p99", percentile(&lat, 0.99));
    r.insert("peak RSS", mem_mib(pid, "VmHWM:"));
    r
}

/// `n` client certificates over berthd's socket, 16 callers; (certs/s, p50 ms, p99 ms).
async fn issue_rate(client: &Client, n: usize) -> (f64, f64, f64) {
    let per = n.div_ceil(16);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let t = Instant::now();
                client
                    .issue(IssueRequest {
                        kind: CertKind::Client,
                        names: Names {
                            common_name: format!("bench-{w}-{i}-{}", std::process::id()),
                            ..Names::default()
                        },
                        validity_days: Some(1),
                        key_algorithm: KeyAlgorithm::EcdsaP256,
                        return_key: false,
                    })
                    .await
                    .unwrap();
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let rate = lat.len() as f64 / t.elapsed().as_secs_f64();
    lat.sort();
    (rate, percentile(&lat, 0.5), percentile(&lat, 0.99))
}

async fn wait_tls(addr: SocketAddr, tls: &Arc<rustls::ClientConfig>, server: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(tcp) = tokio::net::TcpStream::connect(addr).await
            && tokio_rustls::TlsConnector::from(tls.clone())
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .is_ok()
        {
            return;
        }
        if let Ok(Some(status)) = server.try_wait() {
            panic!("server exited before serving: {status}");
        }
        assert!(Instant::now() < deadline, "server on {addr} never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// berthd with `state` (its CA lives there across rounds) serving registry content from
/// `storage`; returns the process and a control client once both listeners answer.
async fn start_berthd(
    state: &Path,
    storage: &Path,
    policy: &Path,
    addr: SocketAddr,
) -> (Child, Client) {
    let store = format!("root = \"{}\"\n", storage.display());
    start_berthd_with(state, &store, policy, addr).await
}

/// [`start_berthd`] with `store`, TOML under `[registry]` saying where content goes.
async fn start_berthd_with(
    state: &Path,
    store: &str,
    policy: &Path,
    addr: SocketAddr,
) -> (Child, Client) {
    let config = state.with_extension("toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\n[registry]\npolicy = \"{}\"\n{store}",
            policy.display(),
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_berthd"))
        .arg("--config")
        .arg(&config)
        .arg("--root")
        .arg(state)
        .args(["--certs-d", &state.join("docker").display().to_string()])
        .args([
            "--containers-certs-d",
            &state.join("containers").display().to_string(),
        ])
        .args(["--registry-listen", &addr.to_string(), "--log", "warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let socket = state.join("berthd.sock");
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = loop {
        if let Ok(c) = Client::connect(&Target::Unix(socket.clone())).await
            && c.health().await.unwrap_or(false)
        {
            break c;
        }
        assert!(Instant::now() < deadline, "berthd did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    (child, client)
}

/// Median and spread of one figure over the rounds.
fn stats(rounds: &[Round], name: &str) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = rounds
        .iter()
        .filter_map(|r| r.get(name).copied())
        .filter(|x| x.is_finite())
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    Some((mid, v[0], v[v.len() - 1]))
}

fn cell(s: Option<(f64, f64, f64)>) -> String {
    let f = |x: f64| {
        if x >= 100.0 {
            format!("{x:.0}")
        } else if x >= 1.0 {
            format!("{x:.1}")
        } else {
            format!("{x:.3}")
        }
    };
    match s {
        Some((m, lo, hi)) => format!("{} ({}-{})", f(m), f(lo), f(hi)),
        None => "-".to_string(),
    }
}

fn report(berth: &[Round], theirs: &[Round]) {
    println!();
    println!(
        "{:<24}{:>10}  {:>26}  {:>26}  {:>8}  verdict",
        "figure", "unit", "docker-registry 2.8", "berth", "advantage"
    );
    for f in FIGURES {
        let (b, t) = (stats(berth, f.name), stats(theirs, f.name));
        let (adv, verdict) = match (b, t) {
            (Some((bm, blo, bhi)), Some((tm, tlo, thi))) => {
                let adv = if f.more_is_better { bm / tm } else { tm / bm };
                let overlap = blo <= thi && tlo <= bhi;
                (
                    format!("{adv:.2}x"),
                    if overlap {
                        "inside the noise"
                    } else if adv > 1.0 {
                        "berth ahead"
                    } else {
                        "berth behind"
                    },
                )
            }
            _ => ("".to_string(), ""),
        };
        println!(
            "{:<24}{:>10}  {:>26}  {:>26}  {:>8}  {}",
            f.name,
            f.unit,
            cell(t),
            cell(b),
            adv,
            verdict
        );
    }
    println!(
        "\nmedian (min-max) of {} rounds; advantage > 1 means berth is better; spreads that overlap are inside the noise",
        berth.len()
    );
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rounds = env_or("BERTH_BENCH_ROUNDS", 3).max(1);
    let blob_mib = env_or("BERTH_BENCH_BLOB_MIB", 100).max(1);
    let images = env_or("BERTH_BENCH_IMAGES", 100).max(1);
    let issue_n = env_or("BERTH_BENCH_ISSUE", 2000);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let state = d.join("berth");
    // A policy file berthd reads at start (defaults only); the policy figures at the end
    // swap in 200 rules with `berth policy reload`.
    let policy = d.join("policy.toml");
    std::fs::write(&policy, "version = 1\n").unwrap();

    // A first berthd makes the CA, the bench's client certificate and the server
    // certificate docker-registry presents; every later round keeps that CA.
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (first, client) = start_berthd(&state, &d.join("storage-0"), &policy, addr).await;
    let issue = |kind, names: Names| {
        let client = client.clone();
        async move {
            client
                .issue(IssueRequest {
                    kind,
                    names,
                    validity_days: Some(1),
                    key_algorithm: KeyAlgorithm::EcdsaP256,
                    return_key: true,
                })
                .await
                .unwrap()
        }
    };
    let me = issue(
        CertKind::Client,
        Names {
            common_name: "bench".into(),
            ..Names::default()
        },
    )
    .await;
    let server = issue(
        CertKind::Server,
        Names {
            common_name: "localhost".into(),
            dns_names: vec!["localhost".into()],
            ip_addresses: vec!["127.0.0.1".parse().unwrap()],
            ..Names::default()
        },
    )
    .await;
    drop(client);
    stop(first);
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(me.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            CertificateDer::pem_slice_iter(me.record.certificate_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap(),
            PrivateKeyDer::from_pem_slice(me.key.as_ref().unwrap().secret_pem().as_bytes())
                .unwrap(),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = Arc::new(cfg);
    let write = |name: &str, content: &str| {
        let p = d.join(name);
        std::fs::write(&p, content).unwrap();
        p
    };
    let cert = write("srv.pem", &server.record.certificate_pem);
    let key = write("srv.key", server.key.as_ref().unwrap().secret_pem());
    let ca = write("ca.pem", &me.ca_pem);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/docker-registry-bench.sh");
    // BERTH_BENCH_ONLY_BERTH=1 skips docker-registry (profiling berth alone).
    let have_registry = std::env::var_os("BERTH_BENCH_ONLY_BERTH").is_none()
        && Command::new("sh")
            .args(["-c", "command -v docker-registry"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());

    println!(
        "registry bench: {rounds} interleaved rounds; blobs {blob_mib} MiB (c=1, c=4), {images} images of 2 x 1 MiB layers, mutual TLS on loopback, HTTP/1.1"
    );
    if !have_registry {
        println!("docker-registry is not installed (apt-get install docker-registry): berth only");
    }
    let load = Load::new(blob_mib, images);
    // What a round writes (blob pushes at c=1 and c=4, the images), with room to spare.
    let warm_mib = env_or(
        "BERTH_BENCH_WARM_MIB",
        2 * (5 * blob_mib + 3 * images) + 256,
    );
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let order: &[bool] = if round % 2 == 0 {
            &[true, false]
        } else {
            &[false, true]
        };
        for &berth in order {
            warm_page_cache(d, warm_mib);
            settle_disk();
            let storage = d.join(format!("storage-{round}-{berth}"));
            let port = free_port();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            if berth {
                // Every round starts from the state the setup left (CA, a handful of
                // certificates): issuance in one round must not grow the next one's index.
                let round_state = d.join(format!("state-{round}"));
                let copied = Command::new("cp")
                    .arg("-a")
                    .arg(&state)
                    .arg(&round_state)
                    .status()
                    .unwrap();
                assert!(copied.success(), "copying berthd's state failed");
                let (mut child, client) = start_berthd(&round_state, &storage, &policy, addr).await;
                wait_tls(addr, &tls, &mut child).await;
                let mut r = workload(addr, &tls, child.id(), &load).await;
                settle_disk();
                let (rate, p50, p99) = issue_rate(&client, issue_n).await;
                r.insert("issue c=16", rate);
                r.insert("issue c=16 p50", p50);
                r.insert("issue c=16 p99", p99);
                if round + 1 == rounds {
                    policy_figures(addr, &tls, &client, &policy).await;
                }
                drop(client);
                stop(child);
                let _ = std::fs::remove_dir_all(&round_state);
                ours.push(r);
            } else if have_registry {
                let mut child = Command::new("bash")
                    .arg(&script)
                    .arg(&storage)
                    .arg(addr.to_string())
                    .args([&cert, &key, &ca])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                wait_tls(addr, &tls, &mut child).await;
                let r = workload(addr, &tls, child.id(), &load).await;
                stop(child);
                theirs.push(r);
            }
            let _ = std::fs::remove_dir_all(&storage);
            // The transfer figures of this round alone: their spread is the noise the
            // medians hide, and which position in the round it follows.
            let last = if berth { ours.last() } else { theirs.last() };
            let figures: Vec<String> = last
                .into_iter()
                .flat_map(|r| r.iter())
                .filter(|(k, _)| k.starts_with("push") || k.starts_with("pull"))
                .filter(|(k, _)| !k.ends_with("CPU"))
                .map(|(k, v)| format!("{k} {v:.0}"))
                .collect();
            eprintln!(
                "round {} {} done: {}",
                round + 1,
                if berth { "berth" } else { "docker-registry" },
                figures.join(", ")
            );
        }
    }
    report(&ours, &theirs);
    if std::env::var_os("BERTH_BENCH_S3").is_some() {
        s3_figures(d, &state, &policy, &tls).await;
    }
}

/// The installed moto's version, for the report.
fn moto_version() -> String {
    Command::new("python3")
        .args(["-c", "import moto; print(moto.__version__)"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The S3 driver and registry replicas next to the filesystem: one berthd on a folder,
/// then a primary (a copy of the bench's state folder, so its CA is the one the bench's
/// certificate comes from) with one and with two `berthd --role registry` replicas on a
/// bucket, the client dealing its connections out to the replicas. The bucket is on a
/// moto server on loopback (Python, in memory), so the S3 figures are mostly moto's; they
/// show what the driver and the replicas cost and how they scale, not what AWS would do.
async fn s3_figures(d: &Path, state: &Path, policy: &Path, tls: &Arc<rustls::ClientConfig>) {
    let blob_mib = env_or("BERTH_BENCH_S3_MIB", 16).max(1);
    let gets = env_or("BERTH_BENCH_S3_GETS", 4000);
    let moto = moto::Moto::start();
    let creds = moto.credentials_file(d);
    let load = Load::new(blob_mib, 8);
    let setups: [(&str, usize); 3] = [
        ("filesystem", 1),
        ("S3, one replica", 1),
        ("S3, two replicas", 2),
    ];
    let mut rows: Vec<(&str, Vec<f64>)> = vec![
        ("push-blob c=4 MiB/s", Vec::new()),
        ("pull-blob c=4 MiB/s", Vec::new()),
        ("push-image c=4 images/s", Vec::new()),
        ("manifest GET c=16 req/s", Vec::new()),
        ("manifest GET c=16 p99 ms", Vec::new()),
    ];
    for (i, (name, servers)) in setups.iter().enumerate() {
        let store = if i == 0 {
            format!("root = \"{}\"\n", d.join("s3-bench-fs").display())
        } else {
            let bucket = format!("bench-{i}");
            moto.create_bucket(&bucket);
            format!(
                "[registry.s3]\nbucket = \"{bucket}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\npath_style = true\ncredentials_file = \"{}\"\n",
                moto.url(),
                creds.display()
            )
        };
        let st = d.join(format!("s3-state-{i}"));
        let copied = Command::new("cp")
            .arg("-a")
            .arg(state)
            .arg(&st)
            .status()
            .unwrap();
        assert!(copied.success(), "copying berthd's state failed");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let control = free_port();
        let primary_store = if i == 0 {
            store.clone()
        } else {
            format!("{store}[control]\nlisten = [\"tcp://127.0.0.1:{control}\"]\n")
        };
        let (mut primary, client) = start_berthd_with(&st, &primary_store, policy, addr).await;
        let mut running = Vec::new();
        if i == 0 {
            wait_tls(addr, tls, &mut primary).await;
            running.push((primary, addr));
        } else {
            let names = ["127.0.0.1".to_string(), "localhost".to_string()];
            let token = client
                .token_create("bench-replica", None, Some(&names))
                .await
                .unwrap()
                .secret;
            let fingerprint = client.info().await.unwrap().ca_fingerprint_sha256;
            for n in 0..*servers {
                let raddr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
                let rdir = d.join(format!("s3-replica-{i}-{n}"));
                let mut child = start_replica(
                    &rdir,
                    &store,
                    &format!("127.0.0.1:{control}"),
                    &fingerprint,
                    &token,
                    raddr,
                );
                wait_tls(raddr, tls, &mut child).await;
                running.push((child, raddr));
            }
            // The primary only hands out trust; it stops with the replicas.
            running.push((primary, addr));
        }
        drop(client);
        let serving = if i == 0 { 1 } else { *servers };
        let across: Vec<(SocketAddr, u32)> = running
            .iter()
            .take(serving)
            .map(|(c, a)| (*a, c.id()))
            .collect();
        let (push, _) = transfer_blobs_across(&across, tls, &load.four, true).await;
        let (pull, _) = transfer_blobs_across(&across, tls, &load.four, false).await;
        let (images, _) = push_images(across[0].0, tls, across[0].1, 4, &load.images).await;
        let tags = load.images.len();
        let (rate, _, lat) = hammer_across(&across, tls, 16, gets, move |i| {
            format!("/v2/bench/images/manifests/v{}", i % tags)
        })
        .await;
        for (row, v) in rows
            .iter_mut()
            .zip([push, pull, images, rate, percentile(&lat, 0.99)])
        {
            row.1.push(v);
        }
        for (child, _) in running {
            stop(child);
        }
        eprintln!("S3 figures: {name} done");
    }
    println!();
    println!(
        "S3 driver ({blob_mib} MiB blobs, {} images, moto {} on loopback; one run each):",
        load.images.len(),
        moto_version()
    );
    println!("| figure | {} |", setups.map(|s| s.0).join(" | "));
    println!("|---|---|---|---|");
    for (name, v) in rows {
        let cells: Vec<String> = v.iter().map(|x| format!("{x:.1}")).collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
}

/// A registry replica process on `store` (TOML under `[registry]`), enrolled with the
/// primary at `primary` through `token`.
fn start_replica(
    dir: &Path,
    store: &str,
    primary: &str,
    fingerprint: &str,
    token: &str,
    addr: SocketAddr,
) -> Child {
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("replica.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\n[control]\nsocket = \"{}\"\n[replica]\nprimary = \"{primary}\"\nca_fingerprint = \"{fingerprint}\"\n[registry]\n{store}",
            dir.join("replica.sock").display()
        ),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_berthd"))
        .args(["--role", "registry", "--config"])
        .arg(&config)
        .args(["--registry-listen", &addr.to_string(), "--log", "warn"])
        .env("BERTH_JOIN_TOKEN", token)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Writes and deletes `mib` MiB in the bench folder before a round. On a VM the first
/// write to guest memory the host has not backed yet runs at a tenth of the speed of
/// later ones (here: 370 MB/s against 3 GB/s for the same `dd` into the page cache), so
/// whichever server happened to get fresh pages looked slower. Recycling pages first
/// gives both servers warm memory, as a long-running host has.
/// Waits until everything written so far is on the disk (`sync`), so a figure does not pay
/// for the writeback of the phase or the server before it: issuance after the image
/// pushes measured their writeback as much as its own syncs.
fn settle_disk() {
    let _ = Command::new("sync").status();
}

fn warm_page_cache(dir: &Path, mib: usize) {
    use std::io::Write;
    let path = dir.join("warm");
    let chunk = vec![0x5au8; 1 << 20];
    let mut f = std::fs::File::create(&path).unwrap();
    for _ in 0..mib {
        f.write_all(&chunk).unwrap();
    }
    drop(f);
    std::fs::remove_file(&path).unwrap();
}

/// Manifest GET and blob HEAD rates with the default policy and with 200 rules loaded
/// live, so the cost of policy evaluation shows.
async fn policy_figures(
    addr: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    client: &Client,
    policy: &Path,
) {
    let (get0, head0) = policy_rates(addr, tls.clone(), 4).await;
    std::fs::write(policy, two_hundred_rules()).unwrap();
    client.reload_policy().await.unwrap();
    let (get200, head200) = policy_rates(addr, tls.clone(), 4).await;
    std::fs::write(policy, "version = 1\n").unwrap();
    client.reload_policy().await.unwrap();
    println!(
        "\n{:<22}{:>16}{:>16}",
        "berthd policy", "manifest GET/s", "blob HEAD/s"
    );
    println!("{:<22}{:>16.0}{:>16.0}", "defaults only", get0, head0);
    println!(
        "{:<22}{:>16.0}{:>16.0}   ({:+.1} % / {:+.1} %, one run, no spread)",
        "200 rules",
        get200,
        head200,
        (get200 / get0 - 1.0) * 100.0,
        (head200 / head0 - 1.0) * 100.0
    );
}

/// 199 rules that do not match the bench's certificate (other names, other repositories)
/// and one that does, so every request walks all of them.
fn two_hundred_rules() -> String {
    let mut p = String::from("version = 1\n");
    for i in 0..199 {
        p.push_str(&format!(
            "[[rules]]\nname = \"r{i}\"\neffect = \"{}\"\nsubjects = [{{ cn = \"team-{i}-bot\" }}, {{ uri_prefix = \"spiffe://example.org/ns/t{i}/\" }}]\nactions = [\"pull\", \"push\"]\nrepositories = [\"team-{i}/**\", \"*/cache-{i}\"]\n",
            if i % 2 == 0 { "allow" } else { "deny" }
        ));
    }
    p.push_str("[[rules]]\nname = \"bench\"\neffect = \"allow\"\nsubjects = [{ cn = \"bench\" }]\nactions = [\"pull\", \"push\", \"list\"]\nrepositories = [\"bench/**\"]\n");
    p
}

/// Manifest GET and blob HEAD requests per second, `clients` kept-alive connections.
async fn policy_rates(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    clients: usize,
) -> (f64, f64) {
    let n = env_or("BERTH_BENCH_POLICY_REQUESTS", 4000).max(clients);
    let mut c = Conn::open(addr, tls.clone()).await;
    let layer = Bytes::from(vec![3u8; 1024]);
    let ld = upload(&mut c, "bench/policy", layer).await;
    let rate = |method: Method, path: String| {
        let tls = tls.clone();
        async move {
            let t = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..clients {
                let (tls, path, method) = (tls.clone(), path.clone(), method.clone());
                tasks.push(tokio::spawn(async move {
                    let mut c = Conn::open(addr, tls).await;
                    for _ in 0..n / clients {
                        let (s, _, _) = c.call(method.clone(), &path, None, Bytes::new()).await;
                        assert!(s.is_success(), "{method} {path}: {s}");
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            (n / clients * clients) as f64 / t.elapsed().as_secs_f64()
        }
    };
    let get = rate(Method::GET, "/v2/bench/images/manifests/v0".to_string()).await;
    let head = rate(Method::HEAD, format!("/v2/bench/policy/blobs/{ld}")).await;
    (get, head)
}
