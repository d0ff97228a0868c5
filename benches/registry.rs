//! Registry throughput over mutual TLS on loopback: N parallel clients push and pull a
//! large blob each and 1,000 small manifests, first against berthd's embedded registry,
//! then the same workload against Debian's docker-registry (started by
//! scripts/docker-registry-bench.sh with the same TLS setup), so both figures come from one
//! run. Prints MiB/s, requests/s, new mutual-TLS connections per second (handshake plus
//! `GET /v2/`), the latency of a 1 KiB blob GET on a kept-alive connection, and the server's
//! peak RSS; asserts nothing.
//!
//! `cargo bench --bench registry`; environment: BERTH_BENCH_CLIENTS (4),
//! BERTH_BENCH_BLOB_MIB (100), BERTH_BENCH_MANIFESTS (1000), BERTH_BENCH_CONNS (1000),
//! BERTH_BENCH_SMALL_GETS (2000).
#![allow(clippy::unwrap_used, clippy::expect_used)]

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

/// Peak resident set of a process, from /proc.
fn peak_rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
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

struct Figures {
    push_mib_s: f64,
    pull_mib_s: f64,
    manifest_put_rps: f64,
    manifest_get_rps: f64,
    conns_per_s: f64,
    small_p50_ms: f64,
    small_p99_ms: f64,
    peak_rss_mib: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

async fn upload(c: &mut Conn, repo: &str, data: Bytes) -> Digest {
    let d = Digest::sha256_of(&data);
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
    d
}

async fn workload(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    clients: usize,
    blob_mib: usize,
    manifests: usize,
    pid: u32,
) -> Figures {
    // Blobs: one per client, different content.
    let mut blobs = Vec::new();
    for i in 0..clients {
        let mut v = vec![0u8; blob_mib * 1024 * 1024];
        let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for chunk in v.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        blobs.push(Bytes::from(v));
    }
    let total_mib = (clients * blob_mib) as f64;

    let t = Instant::now();
    let mut tasks = Vec::new();
    for (i, b) in blobs.into_iter().enumerate() {
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(addr, tls).await;
            upload(&mut c, &format!("bench/blob{i}"), b).await
        }));
    }
    let mut digests = Vec::new();
    for t in tasks {
        digests.push(t.await.unwrap());
    }
    let push = total_mib / t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut tasks = Vec::new();
    for (i, d) in digests.into_iter().enumerate() {
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(addr, tls).await;
            let (s, _, n) = c
                .call(
                    Method::GET,
                    &format!("/v2/bench/blob{i}/blobs/{d}"),
                    None,
                    Bytes::new(),
                )
                .await;
            assert_eq!(s, StatusCode::OK);
            n
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), (blob_mib * 1024 * 1024) as u64);
    }
    let pull = total_mib / t.elapsed().as_secs_f64();

    // Manifests: one config and one layer, then many small manifests by tag.
    let mut c = Conn::open(addr, tls.clone()).await;
    let config = Bytes::from_static(b"{\"architecture\":\"amd64\",\"os\":\"linux\"}");
    let cd = upload(&mut c, "bench/manifests", config.clone()).await;
    let layer = Bytes::from(vec![7u8; 1024]);
    let ld = upload(&mut c, "bench/manifests", layer.clone()).await;
    let body = |i: usize| {
        Bytes::from(
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": config.len()},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld.to_string(), "size": layer.len()}],
                "annotations": {"bench.index": i.to_string()},
            }))
            .unwrap(),
        )
    };
    let bodies: Arc<Vec<Bytes>> = Arc::new((0..manifests).map(body).collect());
    let run = |method: Method| {
        let (tls, bodies) = (tls.clone(), bodies.clone());
        async move {
            let t = Instant::now();
            let mut tasks = Vec::new();
            for w in 0..clients {
                let (tls, bodies, method) = (tls.clone(), bodies.clone(), method.clone());
                tasks.push(tokio::spawn(async move {
                    let mut c = Conn::open(addr, tls).await;
                    for i in (w..bodies.len()).step_by(clients) {
                        let path = format!("/v2/bench/manifests/manifests/t{i}");
                        let (s, _, _) = if method == Method::PUT {
                            c.call(
                                Method::PUT,
                                &path,
                                Some("application/vnd.oci.image.manifest.v1+json"),
                                bodies[i].clone(),
                            )
                            .await
                        } else {
                            c.call(Method::GET, &path, None, Bytes::new()).await
                        };
                        assert!(s.is_success(), "{method} {path}: {s}");
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            bodies.len() as f64 / t.elapsed().as_secs_f64()
        }
    };
    let put = run(Method::PUT).await;
    let get = run(Method::GET).await;

    // New connections: handshake, one GET /v2/, close; `clients` at a time.
    let conns = env_or("BERTH_BENCH_CONNS", 1000).max(clients);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..conns / clients {
                let mut c = Conn::open(addr, tls.clone()).await;
                let (s, _, _) = c.call(Method::GET, "/v2/", None, Bytes::new()).await;
                assert_eq!(s, StatusCode::OK);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let conns_per_s = (conns / clients * clients) as f64 / t.elapsed().as_secs_f64();

    // A 1 KiB blob, GET after GET on one kept-alive connection.
    let small = env_or("BERTH_BENCH_SMALL_GETS", 2000).max(1);
    let path = format!("/v2/bench/manifests/blobs/{ld}");
    let mut lat = Vec::with_capacity(small);
    for _ in 0..small {
        let t = Instant::now();
        let (s, _, n) = c.call(Method::GET, &path, None, Bytes::new()).await;
        lat.push(t.elapsed());
        assert_eq!((s, n), (StatusCode::OK, 1024));
    }
    lat.sort();
    Figures {
        conns_per_s,
        small_p50_ms: percentile(&lat, 0.5),
        small_p99_ms: percentile(&lat, 0.99),
        push_mib_s: push,
        pull_mib_s: pull,
        manifest_put_rps: put,
        manifest_get_rps: get,
        peak_rss_mib: peak_rss_mib(pid),
    }
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

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let clients = env_or("BERTH_BENCH_CLIENTS", 4).max(1);
    let blob_mib = env_or("BERTH_BENCH_BLOB_MIB", 100).max(1);
    let manifests = env_or("BERTH_BENCH_MANIFESTS", 1000).max(1);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // A policy file berthd reads at start (defaults only); the policy figures below swap in
    // 200 rules with `berth policy reload`.
    let policy = d.join("policy.toml");
    std::fs::write(&policy, "version = 1\n").unwrap();
    let config = d.join("berthd.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\n[registry]\npolicy = \"{}\"\n",
            policy.display()
        ),
    )
    .unwrap();
    let mut berthd = Command::new(env!("CARGO_BIN_EXE_berthd"))
        .arg("--config")
        .arg(&config)
        .arg("--root")
        .arg(d.join("berth"))
        .args(["--certs-d", &d.join("docker").display().to_string()])
        .args([
            "--containers-certs-d",
            &d.join("containers").display().to_string(),
        ])
        .args(["--registry-listen", &addr.to_string(), "--log", "warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let socket = d.join("berth/berthd.sock");
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

    println!(
        "registry bench: {clients} clients, {blob_mib} MiB blob each, {manifests} manifests, mutual TLS on loopback, HTTP/1.1"
    );
    wait_tls(addr, &tls, &mut berthd).await;
    let berth = workload(addr, tls.clone(), clients, blob_mib, manifests, berthd.id()).await;
    let (get0, head0) = policy_rates(addr, tls.clone(), clients).await;
    std::fs::write(&policy, two_hundred_rules()).unwrap();
    client.reload_policy().await.unwrap();
    let (get200, head200) = policy_rates(addr, tls.clone(), clients).await;
    stop(berthd);

    let write = |name: &str, content: &str| {
        let p = d.join(name);
        std::fs::write(&p, content).unwrap();
        p
    };
    let cert = write("srv.pem", &server.record.certificate_pem);
    let key = write("srv.key", server.key.as_ref().unwrap().secret_pem());
    let ca = write("ca.pem", &me.ca_pem);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/docker-registry-bench.sh");
    let port = free_port();
    let raddr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let theirs = Command::new("bash")
        .arg(&script)
        .arg(d.join("registry-data"))
        .arg(raddr.to_string())
        .args([&cert, &key, &ca])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let other = match theirs {
        Ok(mut child) => {
            wait_tls(raddr, &tls, &mut child).await;
            let f = workload(raddr, tls.clone(), clients, blob_mib, manifests, child.id()).await;
            stop(child);
            Some(f)
        }
        Err(e) => {
            println!("docker-registry not run: {e}");
            None
        }
    };

    println!(
        "{:<22}{:>12}{:>12}{:>14}{:>14}{:>12}{:>20}{:>12}",
        "server",
        "push MiB/s",
        "pull MiB/s",
        "manif. PUT/s",
        "manif. GET/s",
        "new conn/s",
        "1 KiB GET p50/p99",
        "peak RSS"
    );
    let row = |name: &str, f: &Figures| {
        println!(
            "{:<22}{:>12.1}{:>12.1}{:>14.0}{:>14.0}{:>12.0}{:>11.2} /{:>5.2} ms{:>8.1} MiB",
            name,
            f.push_mib_s,
            f.pull_mib_s,
            f.manifest_put_rps,
            f.manifest_get_rps,
            f.conns_per_s,
            f.small_p50_ms,
            f.small_p99_ms,
            f.peak_rss_mib
        )
    };
    row("berthd (embedded)", &berth);
    if let Some(f) = &other {
        row("docker-registry 2.8", f);
    }
    println!();
    println!(
        "{:<22}{:>16}{:>16}",
        "berthd policy", "manifest GET/s", "blob HEAD/s"
    );
    println!("{:<22}{:>16.0}{:>16.0}", "defaults only", get0, head0);
    println!(
        "{:<22}{:>16.0}{:>16.0}   ({:+.1} % / {:+.1} %)",
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
    let get = rate(Method::GET, "/v2/bench/manifests/manifests/t0".to_string()).await;
    let head = rate(Method::HEAD, format!("/v2/bench/policy/blobs/{ld}")).await;
    (get, head)
}
