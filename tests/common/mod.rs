//! A real berthd for tests: in-process, on a temp `--root`, temp certs.d roots, TCP on
//! ephemeral ports, ready when Health answers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod moto;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use berth::client::{Client, Target};
use berth::config::Config;
use berth::daemon::Daemon;
use tempfile::TempDir;

/// Installs the one crypto provider berth uses, once per test binary.
pub fn crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A temp folder the test owns; world-traversable so another uid can reach a socket in it.
pub fn temp_dir() -> TempDir {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::Builder::new()
        .prefix("berth-test-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// The config a test daemon runs with: everything under `dir`.
pub fn config(dir: &Path) -> Config {
    let mut cfg = Config::default();
    cfg.set_root(&dir.join("state"));
    cfg.certsd.docker_root = dir.join("docker-certs.d");
    cfg.certsd.containers_root = dir.join("containers-certs.d");
    cfg.certsd.containerd_root = dir.join("containerd-certs.d");
    // Off unless a test asks (it issues its own server certificate, which would change
    // what PKI tests count); when on, an ephemeral port, so tests never collide.
    cfg.registry.enabled = false;
    cfg.registry.listen = vec!["127.0.0.1:0".parse().unwrap()];
    cfg
}

/// A running daemon; dropping it stops the daemon and waits for it.
pub struct TestDaemon {
    /// Everything the daemon writes lives here (unless the test moved it).
    pub dir: TempDir,
    /// The config it runs with.
    pub config: Config,
    /// The control socket.
    pub socket: PathBuf,
    /// The TCP listeners' real addresses.
    pub tcp: Vec<SocketAddr>,
    /// The registry's real addresses.
    pub registry: Vec<SocketAddr>,
    /// The metrics listener's real address, when enabled.
    pub metrics: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestDaemon {
    /// A daemon with the test defaults.
    pub fn start() -> TestDaemon {
        Self::start_with(|_| {})
    }

    /// A daemon serving the registry on an ephemeral loopback port.
    pub fn with_registry() -> TestDaemon {
        Self::start_with(|c| c.registry.enabled = true)
    }

    /// A daemon whose config `f` adjusts first.
    pub fn start_with(f: impl FnOnce(&mut Config)) -> TestDaemon {
        let dir = temp_dir();
        let mut cfg = config(dir.path());
        f(&mut cfg);
        Self::start_in(dir, cfg).unwrap()
    }

    /// Starts on an existing folder and config (restarts, error cases).
    pub fn start_in(dir: TempDir, config: Config) -> Result<TestDaemon, berth::daemon::Error> {
        crypto();
        let daemon = Daemon::open(config.clone())?;
        let listeners = daemon.bind()?;
        let socket = listeners.socket_path().to_path_buf();
        let tcp = listeners.tcp_addrs();
        let registry = listeners.registry_addrs();
        let metrics = listeners.metrics_addr();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let probe = socket.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let server = tokio::spawn(daemon.serve(listeners, async {
                    let _ = stop_rx.await;
                }));
                let _ = ready_tx.send(wait_healthy(&probe).await);
                match server.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => panic!("berthd stopped with an error: {e}"),
                    Err(e) => panic!("berthd task failed: {e}"),
                }
            });
        });
        ready_rx.recv().unwrap().unwrap();
        Ok(TestDaemon {
            dir,
            config,
            socket,
            tcp,
            registry,
            metrics,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// A library client on the unix socket.
    pub async fn client(&self) -> Client {
        Client::connect(&Target::Unix(self.socket.clone()))
            .await
            .unwrap()
    }

    /// Stops the daemon and gives back its folder and config, for a restart.
    pub fn stop(mut self) -> (TempDir, Config) {
        self.shutdown();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        (dir, self.config.clone())
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    /// The daemon's first TCP control listener, reached with the TLS files in `tls_dir`.
    pub fn tcp_target(&self, tls_dir: PathBuf) -> Target {
        Target::Tcp {
            host: "127.0.0.1".into(),
            port: self.tcp[0].port(),
            tls_dir,
        }
    }

    /// docker's certs.d root of this daemon.
    pub fn docker_root(&self) -> &Path {
        &self.config.certsd.docker_root
    }

    /// containerd's hosts root of this daemon.
    pub fn containerd_root(&self) -> &Path {
        &self.config.certsd.containerd_root
    }

    /// containers' certs.d root of this daemon.
    pub fn containers_root(&self) -> &Path {
        &self.config.certsd.containers_root
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Polls Health until it says serving, with a deadline so a broken daemon fails the test
/// instead of hanging it.
async fn wait_healthy(socket: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        match Client::connect(&Target::Unix(socket.to_path_buf())).await {
            Ok(c) => match c.health().await {
                Ok(true) => return Ok(()),
                Ok(false) => last = "not serving yet".into(),
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!("berthd never became healthy: {last}"))
}

/// Where registry:2's layout keeps a blob under `root` (written out here, independently of
/// berth's own key mapper, so tests check the layout rather than repeat it).
pub fn blob_path(root: &Path, d: &berth::registry::Digest) -> PathBuf {
    let (alg, hex) = d
        .to_string()
        .split_once(':')
        .map(|(a, h)| (a.to_string(), h.to_string()))
        .unwrap();
    root.join("docker/registry/v2/blobs")
        .join(alg)
        .join(&hex[..2])
        .join(&hex)
        .join("data")
}

/// Runs a command, panicking with its output when it cannot be started.
pub fn run(cmd: &mut std::process::Command) -> std::process::Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// `openssl verify -CAfile ca [-untrusted chain] cert` succeeds.
pub fn openssl_verify(ca: &Path, cert: &Path) {
    let out = run(std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(ca)
        .arg(cert));
    assert!(
        out.status.success(),
        "openssl verify failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// RFC 5280 lints by pkilint (DigiCert's linter, installed by `.ci/run` from PyPI):
/// `linter` is its module, `args` its arguments; any finding of WARNING or worse fails.
/// (Its one NOTICE on berth's certificates: it does not know rcgen's way of deriving the
/// subject key identifier, which RFC 5280 leaves open.) One finding is the linter's own
/// limit and is let through: it checks URIs with a web-URL validator, so a SPIFFE ID, an
/// RFC 3986 URI, is "invalid URI syntax" to it.
pub fn pkilint(linter: &str, args: &[&std::ffi::OsStr]) {
    let module = format!("pkilint.bin.{linter}");
    let out = run(std::process::Command::new("python3")
        .args(["-m", &module, "lint", "-s", "WARNING"])
        .args(args));
    let report = String::from_utf8_lossy(&out.stdout);
    // Findings are the indented lines, each under the validator that raised it.
    let spiffe = "pkix.invalid_uri_syntax (ERROR): Invalid URI syntax: \"spiffe://";
    let findings: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with(char::is_whitespace) && !l.trim().is_empty())
        .filter(|l| !l.contains(spiffe))
        .collect();
    // It exits non-zero when it reports anything; without a report that is its own failure.
    let ran = out.status.success() || !report.trim().is_empty();
    assert!(
        ran && findings.is_empty(),
        "{linter} {args:?}: {report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// pkilint of one certificate, alone and as issued by `ca`.
pub fn pkilint_cert(ca: &Path, cert: &Path) {
    pkilint("lint_pkix_cert", &[cert.as_os_str()]);
    pkilint(
        "lint_pkix_signer_signee_cert_chain",
        &[ca.as_os_str(), cert.as_os_str()],
    );
}

/// `openssl x509 -text -noout` of a certificate file.
pub fn openssl_text(cert: &Path) -> String {
    let out = run(std::process::Command::new("openssl")
        .args(["x509", "-text", "-noout", "-in"])
        .arg(cert));
    assert!(
        out.status.success(),
        "openssl x509 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The fixtures folder made by certs/gen.sh.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("certs")
        .join(name)
}

/// A rustls client config trusting `ca_pem`, presenting `identity` (cert, key) if given.
pub fn client_config(
    ca_pem: &str,
    identity: Option<(&str, &str)>,
    alpn: &[u8],
) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let b = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut cfg = match identity {
        Some((cert, key)) => b
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![alpn.to_vec()];
    std::sync::Arc::new(cfg)
}

/// GET over TLS (HTTP/1.1 or HTTP/2 per ALPN): the status and body, or the error.
pub async fn tls_get(
    addr: SocketAddr,
    cfg: std::sync::Arc<rustls::ClientConfig>,
    path: &str,
) -> Result<(axum::http::StatusCode, Vec<u8>), String> {
    tls_request(addr, cfg, axum::http::Method::GET, path, Vec::new()).await
}

/// Any request over TLS with hyper, as a real client sends it.
pub async fn tls_request(
    addr: SocketAddr,
    cfg: std::sync::Arc<rustls::ClientConfig>,
    method: axum::http::Method,
    path: &str,
    body: Vec<u8>,
) -> Result<(axum::http::StatusCode, Vec<u8>), String> {
    tls_exchange(addr, cfg, method, path, &[], body)
        .await
        .map(|(s, _, b)| (s, b))
}

/// [`tls_request`] with request headers, answering the response headers too. Bounded:
/// a server that neither answers nor closes within a minute is a failure that says so,
/// not a test run that never ends.
pub async fn tls_exchange(
    addr: SocketAddr,
    cfg: std::sync::Arc<rustls::ClientConfig>,
    method: axum::http::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<(axum::http::StatusCode, axum::http::HeaderMap, Vec<u8>), String> {
    let what = format!("{method} {path} on {addr}");
    match tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tls_exchange_unbounded(addr, cfg, method, path, headers, body),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => panic!("{what}: no answer and no close within 60 s"),
    }
}

async fn tls_exchange_unbounded(
    addr: SocketAddr,
    cfg: std::sync::Arc<rustls::ClientConfig>,
    method: axum::http::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<(axum::http::StatusCode, axum::http::HeaderMap, Vec<u8>), String> {
    use http_body_util::BodyExt;
    let h2 = cfg.alpn_protocols.first().is_some_and(|p| p == b"h2");
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .map_err(|e| e.to_string())?;
    let io = hyper_util::rt::TokioIo::new(tls);
    let mut req = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header(axum::http::header::HOST, "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let resp = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(|e| e.to_string())?
    };
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes()
        .to_vec();
    Ok((status, headers, body))
}

/// Subject names with only a CN.
pub fn names(cn: &str) -> berth::pki::Names {
    berth::pki::Names {
        common_name: cn.to_string(),
        ..berth::pki::Names::default()
    }
}

/// Issues a certificate through the control API, with its key.
pub async fn issue(
    client: &Client,
    kind: berth::pki::CertKind,
    names: berth::pki::Names,
    alg: berth::pki::KeyAlgorithm,
) -> berth::client::IssuedCert {
    client
        .issue(berth::client::IssueRequest {
            kind,
            names,
            validity_days: None,
            key_algorithm: alg,
            return_key: true,
        })
        .await
        .unwrap()
}

/// Writes `content` to `dir/name`.
pub fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

/// A `--tls-dir` for the CLI and `Target::Tcp`: ca.pem, cert.pem, key.pem.
pub fn tls_dir(dir: &Path, cert: &berth::client::IssuedCert) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    write(dir, "ca.pem", &cert.ca_pem);
    write(dir, "cert.pem", &cert.record.certificate_pem);
    write(dir, "key.pem", cert.key.as_ref().unwrap().secret_pem());
    dir.to_path_buf()
}

/// A client certificate for `cn` (P-256), with its key.
pub async fn client_cert(client: &Client, cn: &str) -> berth::client::IssuedCert {
    issue(
        client,
        berth::pki::CertKind::Client,
        names(cn),
        berth::pki::KeyAlgorithm::EcdsaP256,
    )
    .await
}

/// A rustls client config presenting `cert` (which must carry its key) with `alpn`.
pub fn presenting(
    cert: &berth::client::IssuedCert,
    alpn: &[u8],
) -> std::sync::Arc<rustls::ClientConfig> {
    client_config(
        &cert.ca_pem,
        Some((
            &cert.record.certificate_pem,
            cert.key.as_ref().unwrap().secret_pem(),
        )),
        alpn,
    )
}

/// Pushes `blob` into `repo` the way docker does (POST, one PATCH with the body, PUT with
/// the digest), each step on its own connection; returns the digest.
pub async fn push_blob(
    addr: SocketAddr,
    tls: std::sync::Arc<rustls::ClientConfig>,
    repo: &str,
    blob: &[u8],
) -> berth::registry::Digest {
    use axum::http::Method;
    let d = berth::registry::Digest::sha256_of(blob);
    let location = |h: &axum::http::HeaderMap| {
        h.get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap()
            .to_string()
    };
    let (s, h, _) = tls_exchange(
        addr,
        tls.clone(),
        Method::POST,
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(s.as_u16(), 202);
    let (s, h, _) = tls_exchange(
        addr,
        tls.clone(),
        Method::PATCH,
        &location(&h),
        &[("content-type", "application/octet-stream")],
        blob.to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(s.as_u16(), 202);
    let loc = location(&h);
    let sep = if loc.contains('?') { '&' } else { '?' };
    let (s, _, _) = tls_exchange(
        addr,
        tls,
        Method::PUT,
        &format!("{loc}{sep}digest={d}"),
        &[],
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(s.as_u16(), 201);
    d
}

/// True when berthd holds a key for `serial` under `state` (its `pki/keys/held.log`, or an
/// older berth's `pki/keys/<serial>.key`).
pub fn holds_key(state: &Path, serial: &str) -> bool {
    let keys = state.join("pki/keys");
    let log = std::fs::read_to_string(keys.join("held.log")).unwrap_or_default();
    log.lines().any(|l| {
        serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
            v["serial"] == serial && v["key"].as_str().is_some_and(|k| k.contains("PRIVATE KEY"))
        })
    }) || keys.join(format!("{serial}.key")).is_file()
}

/// A registry replica (`berthd --role registry`) in-process; dropping it stops it.
pub struct TestReplica {
    /// Its socket (status only).
    pub socket: PathBuf,
    /// Its registry's real addresses.
    pub registry: Vec<SocketAddr>,
    /// Its metrics listener, when enabled.
    pub metrics: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestReplica {
    /// Opens, binds and serves a replica with `config` and `token`; ready once its status
    /// answers (it took in the primary's first trust material), or the error of its start.
    pub fn start(config: Config, token: &str) -> Result<TestReplica, String> {
        crypto();
        let replica = berth::daemon::Replica::open(config, Some(token.to_string()))
            .map_err(|e| e.to_string())?;
        let listeners = replica.bind().map_err(|e| e.to_string())?;
        let socket = listeners.socket_path().to_path_buf();
        let registry = listeners.registry_addrs();
        let metrics = listeners.metrics_addr();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let probe = socket.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut server = tokio::spawn(replica.serve(listeners, async {
                    let _ = stop_rx.await;
                }));
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    if server.is_finished() {
                        let r = (&mut server).await;
                        let why = match r {
                            Ok(Err(e)) => e.to_string(),
                            Ok(Ok(())) => "stopped".to_string(),
                            Err(e) => e.to_string(),
                        };
                        let _ = ready_tx.send(Err(why));
                        return;
                    }
                    if let Ok(c) = Client::connect(&Target::Unix(probe.clone())).await
                        && c.replica_status().await.is_ok()
                    {
                        let _ = ready_tx.send(Ok(()));
                        break;
                    }
                    if Instant::now() > deadline {
                        let _ = ready_tx.send(Err("the replica never answered".into()));
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                match server.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => panic!("the replica stopped with an error: {e}"),
                    Err(e) => panic!("the replica task failed: {e}"),
                }
            });
        });
        ready_rx.recv().unwrap()?;
        Ok(TestReplica {
            socket,
            registry,
            metrics,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Its status, asked on its socket.
    pub async fn status(&self) -> berth::client::ReplicaStatus {
        Client::connect(&Target::Unix(self.socket.clone()))
            .await
            .unwrap()
            .replica_status()
            .await
            .unwrap()
    }
}

impl Drop for TestReplica {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An HTTP/2 connection over mutual TLS that stays open, as docker's and containerd's do,
/// to show what a revocation does to a connection made before it.
pub struct OpenConnection {
    send: hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>,
}

impl OpenConnection {
    /// Connects to `addr` (as `localhost`) with `cfg`, whose ALPN must be h2.
    pub async fn open(
        addr: SocketAddr,
        cfg: std::sync::Arc<rustls::ClientConfig>,
    ) -> Result<OpenConnection, String> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(
                rustls_pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .map_err(|e| e.to_string())?;
        let (send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(OpenConnection { send })
    }

    /// GET `path` on this connection: the status and body.
    pub async fn get(&self, path: &str) -> Result<(u16, String), String> {
        use http_body_util::BodyExt;
        let req = axum::http::Request::builder()
            .uri(format!("https://localhost{path}"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let resp = self
            .send
            .clone()
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// Plain-HTTP GET of a metrics listener: content type and body.
pub async fn scrape(addr: SocketAddr) -> (String, String) {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = axum::http::Request::builder()
        .uri("/metrics")
        .header("host", "localhost")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let r = send.send_request(req).await.unwrap();
    assert_eq!(r.status(), axum::http::StatusCode::OK);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (ct, String::from_utf8(body.to_vec()).unwrap())
}
