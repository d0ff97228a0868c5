//! The one network edge (`net::serve`), attacked and measured on real sockets: identity
//! re-checked on every request of an open connection (HTTP/1.1, HTTP/2, gRPC), slow
//! headers, idle connections and stalled uploads closed after their configured timeouts,
//! TCP_NODELAY read back from the server's own sockets, and a berthd under a tight fd limit
//! flooded with plain TCP connections.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method, Request, StatusCode};
use berth::client::{Client, ErrorKind};
use berth::config::{Config, ListenAddr};
use berth::pki::{CertKind, KeyAlgorithm};
use bytes::Bytes;
use common::{TestDaemon, issue, names, tls_dir};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn tls(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> Tls {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap()
}

/// One kept-alive connection, HTTP/1.1 or HTTP/2 by the config's ALPN.
enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

impl Conn {
    async fn open(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> Conn {
        let h2 = cfg.alpn_protocols.first().is_some_and(|p| p == b"h2");
        let io = hyper_util::rt::TokioIo::new(tls(addr, cfg).await);
        if h2 {
            let (send, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            Conn::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Conn::H1(send)
        }
    }

    async fn send(&mut self, method: Method, path: &str, body: Vec<u8>) -> Answer {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = match self {
            Conn::H1(s) => {
                s.ready().await.unwrap();
                s.send_request(req).await.unwrap()
            }
            Conn::H2(s) => {
                s.ready().await.unwrap();
                s.send_request(req).await.unwrap()
            }
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        Answer {
            status,
            headers,
            body,
        }
    }
}

/// A client certificate and the rustls config presenting it with `alpn`.
async fn client_cfg(c: &Client, cn: &str, alpn: &[u8]) -> (Arc<rustls::ClientConfig>, String) {
    let cert = common::client_cert(c, cn).await;
    (common::presenting(&cert, alpn), cert.record.serial)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_client_is_refused_on_its_open_connection() {
    let d = TestDaemon::with_registry();
    let addr = d.registry[0];
    let c = d.client().await;
    for alpn in [&b"http/1.1"[..], &b"h2"[..]] {
        let (cfg, serial) = client_cfg(&c, "keepalive", alpn).await;
        let (other_cfg, _) = client_cfg(&c, "bystander", alpn).await;
        let mut conn = Conn::open(addr, cfg).await;
        let mut bystander = Conn::open(addr, other_cfg).await;
        for _ in 0..2 {
            assert_eq!(
                conn.send(Method::GET, "/v2/", vec![]).await.status,
                StatusCode::OK
            );
        }
        c.revoke(&serial).await.unwrap();
        // The same connection, the very next request: refused with the reason.
        let a = conn.send(Method::GET, "/v2/_catalog", vec![]).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{alpn:?}");
        let e = &a.json()["errors"][0];
        assert_eq!(e["code"], "DENIED");
        let msg = e["message"].as_str().unwrap();
        assert!(msg.contains("revoked") && msg.contains(&serial), "{msg}");
        assert_eq!(a.headers["docker-distribution-api-version"], "registry/2.0");
        // Nobody else is affected.
        assert_eq!(
            bystander
                .send(Method::GET, "/v2/_catalog", vec![])
                .await
                .status,
            StatusCode::OK
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_admin_is_refused_on_its_open_control_channel() {
    let d = TestDaemon::start_with(|cfg: &mut Config| {
        cfg.control.listen = vec!["tcp://127.0.0.1:0".parse::<ListenAddr>().unwrap()];
        cfg.control.admins = vec!["listed".into()];
    });
    let local = d.client().await;
    let dirs = common::temp_dir();
    let target = |dir: std::path::PathBuf| d.tcp_target(dir);
    let admin = issue(
        &local,
        CertKind::Admin,
        names("ops"),
        KeyAlgorithm::EcdsaP256,
    )
    .await;
    let listed = issue(
        &local,
        CertKind::Client,
        names("listed"),
        KeyAlgorithm::EcdsaP256,
    )
    .await;
    let a = Client::connect(&target(tls_dir(&dirs.path().join("a"), &admin)))
        .await
        .unwrap();
    let l = Client::connect(&target(tls_dir(&dirs.path().join("l"), &listed)))
        .await
        .unwrap();
    a.info().await.unwrap();
    l.info().await.unwrap();
    for (client, cert) in [(&a, &admin), (&l, &listed)] {
        local.revoke(&cert.record.serial).await.unwrap();
        let err = client.info().await.unwrap_err();
        assert_eq!(err.kind(), Some(ErrorKind::Unauthenticated), "{err}");
        assert!(err.to_string().contains("revoked"), "{err}");
    }
}

/// TCP_NODELAY as the kernel reports it on the server's end of the connection whose
/// client side is `client`: the daemon runs in this process, so its sockets are ours to
/// look at (a duplicate through pidfd_getfd, then getsockopt).
fn server_nodelay(client: SocketAddr) -> bool {
    use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};
    let me = pidfd_open(getpid(), PidfdFlags::empty()).unwrap();
    for e in std::fs::read_dir("/proc/self/fd").unwrap() {
        let e = e.unwrap();
        let Ok(n) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let is_socket =
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        let Ok(fd) = pidfd_getfd(&me, n, PidfdGetfdFlags::empty()) else {
            continue;
        };
        let peer = rustix::net::getpeername(&fd)
            .ok()
            .flatten()
            .and_then(|a| SocketAddr::try_from(a).ok());
        if peer == Some(client) {
            return rustix::net::sockopt::tcp_nodelay(&fd).unwrap();
        }
    }
    panic!("no server-side socket whose peer is {client}");
}

#[tokio::test(flavor = "multi_thread")]
async fn accepted_sockets_have_nodelay() {
    let d = TestDaemon::start_with(|cfg: &mut Config| {
        cfg.registry.enabled = true;
        cfg.control.listen = vec!["tcp://127.0.0.1:0".parse::<ListenAddr>().unwrap()];
    });
    let c = d.client().await;
    let (cfg, _) = client_cfg(&c, "fast", b"http/1.1").await;
    // The registry: a small-blob GET, then the server's socket is read back.
    let mut s = tls(d.registry[0], cfg).await;
    s.write_all(b"GET /v2/ HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let local = s.get_ref().0.local_addr().unwrap();
    assert!(server_nodelay(local), "registry socket without TCP_NODELAY");
    // The control listener, through the real client.
    let dirs = common::temp_dir();
    let admin = issue(&c, CertKind::Admin, names("ops"), KeyAlgorithm::EcdsaP256).await;
    let dir = tls_dir(dirs.path(), &admin);
    let tcp = tokio::net::TcpStream::connect(d.tcp[0]).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let cfg = common::client_config(
        &admin.ca_pem,
        Some((
            &admin.record.certificate_pem,
            admin.key.as_ref().unwrap().secret_pem(),
        )),
        b"h2",
    );
    let mut t = tokio_rustls::TlsConnector::from(cfg)
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    t.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let _ = t.read(&mut buf).await.unwrap();
    assert!(server_nodelay(local), "control socket without TCP_NODELAY");
    let _ = dir;
}

fn short(f: impl FnOnce(&mut berth::net::Settings)) -> impl FnOnce(&mut Config) {
    move |cfg: &mut Config| {
        cfg.registry.enabled = true;
        f(&mut cfg.net);
    }
}

/// Waits until the peer closes `s` (EOF or reset), failing after `limit`; returns the
/// bytes read before that.
async fn closed_within(s: &mut Tls, limit: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => panic!("connection still open after {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_headers_are_cut_off_after_the_header_timeout() {
    let d = TestDaemon::start_with(short(|n| {
        n.header_read_timeout = Duration::from_millis(300);
        n.idle_timeout = Duration::from_secs(60);
    }));
    let c = d.client().await;
    let (cfg, _) = client_cfg(&c, "slow", b"http/1.1").await;
    let mut s = tls(d.registry[0], cfg).await;
    // Headers sent at once are answered, and the connection stays open.
    s.write_all(b"GET /v2/ HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Then a header one byte at a time (the attack): the server closes long before the
    // 600 bytes (30 s at this pace) are sent, though the idle timeout is a minute.
    let (mut rd, mut wr) = tokio::io::split(s);
    let closed = tokio::spawn(async move {
        let mut b = [0u8; 64];
        loop {
            match rd.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    let started = Instant::now();
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    let header = format!("GET /v2/ HTTP/1.1\r\nx-slow: {}", "a".repeat(600));
    for b in header.bytes() {
        if closed.is_finished() {
            break;
        }
        pace.tick().await;
        if wr.write_all(&[b]).await.is_err() {
            break;
        }
    }
    assert!(
        closed.is_finished()
            || tokio::time::timeout(Duration::from_secs(5), closed)
                .await
                .is_ok(),
        "a slow header kept the connection open for {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let d = TestDaemon::start_with(short(|n| {
        n.idle_timeout = Duration::from_millis(300);
    }));
    let c = d.client().await;
    let (cfg, _) = client_cfg(&c, "idle", b"http/1.1").await;
    let mut s = tls(d.registry[0], cfg).await;
    for _ in 0..2 {
        s.write_all(b"GET /v2/ HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    }
    // Nothing more is sent: the server hangs up by itself (the default is 120 s; the
    // wait here is bounded by far less).
    closed_within(&mut s, Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_upload_ends_and_can_be_resumed() {
    let d = TestDaemon::start_with(short(|n| {
        n.body_stall_timeout = Duration::from_millis(300);
    }));
    let addr = d.registry[0];
    let c = d.client().await;
    let (cfg, _) = client_cfg(&c, "uploader", b"http/1.1").await;
    let mut api = Conn::open(addr, cfg.clone()).await;
    let a = api
        .send(Method::POST, "/v2/team/big/blobs/uploads/", vec![])
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let loc = a.headers["location"].to_str().unwrap().to_string();
    let first: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    // A PATCH that promises 1 GiB, sends 64 KiB and stops.
    let mut s = tls(addr, cfg.clone()).await;
    s.write_all(
        format!(
            "PATCH {loc} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/octet-stream\r\ncontent-length: 1073741824\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    s.write_all(&first).await.unwrap();
    let answer = closed_within(&mut s, Duration::from_secs(20)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(
        text.contains("BLOB_UPLOAD_INVALID") && text.contains("no progress"),
        "{text}"
    );
    // The session is free again and holds what arrived: resume from there.
    let a = api.send(Method::GET, &loc, vec![]).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!(a.headers["range"], "0-65535");
    let rest = b"and the rest of the layer".to_vec();
    let req = Request::builder()
        .method(Method::PATCH)
        .uri(&loc)
        .header("host", "localhost")
        .header("content-range", format!("65536-{}", 65536 + rest.len() - 1))
        .body(Full::new(Bytes::from(rest.clone())))
        .unwrap();
    let Conn::H1(send) = &mut api else {
        unreachable!()
    };
    send.ready().await.unwrap();
    let r = send.send_request(req).await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let _ = r.into_body().collect().await;
    let mut whole = first.clone();
    whole.extend_from_slice(&rest);
    let digest = berth::registry::Digest::sha256_of(&whole);
    let a = api
        .send(Method::PUT, &format!("{loc}?digest={digest}"), vec![])
        .await;
    assert_eq!(
        a.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    let a = api
        .send(Method::GET, &format!("/v2/team/big/blobs/{digest}"), vec![])
        .await;
    assert_eq!(a.body, whole);
}

/// berthd as a separate process under `prlimit --nofile=256:256`, flooded with 400 plain
/// TCP connections that never start TLS: it backs off instead of spinning, logs a handful
/// of lines instead of millions, and serves a real mTLS client once they are gone.
#[test]
fn a_flood_of_idle_sockets_under_a_tight_fd_limit() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    use std::sync::Mutex;
    let dir = common::temp_dir();
    let root = dir.path().join("state");
    let cfg = common::write(
        dir.path(),
        "berthd.toml",
        "version = 1\n[registry]\nlisten = [\"127.0.0.1:0\"]\n[net]\nmax_connections = 5000\nhandshake_timeout = \"60s\"\n",
    );
    let mut child = Command::new("prlimit")
        .arg("--nofile=256:256")
        .arg(env!("CARGO_BIN_EXE_berthd"))
        .arg("--root")
        .arg(&root)
        .arg("--config")
        .arg(&cfg)
        .arg("--certs-d")
        .arg(dir.path().join("certs.d"))
        .arg("--containers-certs-d")
        .arg(dir.path().join("containers-certs.d"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("prlimit (util-linux) and berthd");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut readers = Vec::new();
    for out in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let lines = lines.clone();
        readers.push(std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                lines.lock().unwrap().push(l);
            }
        }));
    }
    let wait_for = |what: &str, f: &dyn Fn(&[String]) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !f(&lines.lock().unwrap()) {
            assert!(
                Instant::now() < deadline,
                "never saw {what}: {:#?}",
                lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("the banner", &|l| {
        l.iter().any(|l| l.contains("registry: https://"))
    });
    let port: u16 = {
        let l = lines.lock().unwrap();
        let b = l.iter().find(|l| l.contains("registry: https://")).unwrap();
        b.rsplit(':').next().unwrap().trim().parse().unwrap()
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("open-file limit") && l.contains("256")),
        "the fd limit is logged"
    );
    // A client certificate, through the CLI, before the flood takes every fd.
    let certs = dir.path().join("me");
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("--socket")
        .arg(root.join("berthd.sock"))
        .args([
            "cert",
            "issue",
            "client",
            "--name",
            "after-the-flood",
            "--out",
        ])
        .arg(&certs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ca = std::fs::read_to_string(certs.join("ca.crt")).unwrap();
    let cert = std::fs::read_to_string(certs.join("client.cert")).unwrap();
    let key = std::fs::read_to_string(certs.join("client.key")).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let before = lines.lock().unwrap().len();
    let held = rt.block_on(async {
        let tries = (0..400).map(|_| {
            tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr))
        });
        futures_util::future::join_all(tries)
            .await
            .into_iter()
            .filter_map(|r| r.ok().and_then(Result::ok))
            .collect::<Vec<_>>()
    });
    assert!(
        held.len() > 256,
        "only {} connections were made",
        held.len()
    );
    // The accept loop hits EMFILE; two throttled reports mean a second of it has passed.
    wait_for("the accept loop backing off twice", &|l| {
        l[before..]
            .iter()
            .filter(|l| l.contains("accept failed; backing off"))
            .count()
            >= 2
    });
    let logged = lines.lock().unwrap().len() - before;
    assert!(logged < 50, "{logged} log lines during the flood");
    drop(held);
    // Once the flood is gone, a real mTLS client gets in.
    let cfg = common::client_config(&ca, Some((&cert, &key)), b"http/1.1");
    let ok = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match common::tls_get(addr, cfg.clone(), "/v2/").await {
                Ok((status, _)) => return status,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("the registry never recovered: {e}"),
            }
        }
    });
    assert_eq!(ok, StatusCode::OK);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    for r in readers {
        r.join().unwrap();
    }
}

/// docker speaks plain HTTP to a loopback registry; the TLS port answers it in words.
#[tokio::test(flavor = "multi_thread")]
async fn plain_http_on_the_registry_port_gets_a_readable_400() {
    let d = TestDaemon::with_registry();
    let addr = d.registry[0];
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nUser-Agent: docker/20.10\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
    assert!(
        text.contains("HTTPS registry")
            && text.contains("client certificate")
            && text.contains("docker speaks plain HTTP to registries on loopback")
            && text.contains(&format!("NAME:{}", addr.port())),
        "{text}"
    );
    // TLS clients on the same port are unaffected.
    let c = d.client().await;
    let (cfg, _) = client_cfg(&c, "tls", b"http/1.1").await;
    let mut conn = Conn::open(addr, cfg).await;
    assert_eq!(
        conn.send(Method::GET, "/v2/", vec![]).await.status,
        StatusCode::OK
    );
}

/// The registry policy over real mutual TLS, with identities told apart by CN, O and SAN
/// URI: grants, the default, deny over allow, catalog filtering, mounts, and a hot reload
/// (an invalid file changes nothing).
#[tokio::test(flavor = "multi_thread")]
async fn the_policy_decides_per_identity_and_reloads() {
    let dir = common::temp_dir();
    let policy = dir.path().join("policy.toml");
    let v1 = r#"version = 1
[defaults]
allow = ["pull", "list"]

[groups]
builders = [{ o = "builders" }, { uri_prefix = "spiffe://example.org/ns/ci/" }]

[[rules]]
name = "builders own team-a"
effect = "allow"
subjects = [{ group = "builders" }]
actions = ["push", "delete"]
repositories = ["team-a/**"]

[[rules]]
name = "nobody touches team-a/secret"
effect = "deny"
subjects = [{ cn_prefix = "" }]
actions = ["pull", "push", "delete", "list"]
repositories = ["team-a/secret"]

[[rules]]
name = "outsiders see nothing of team-a"
effect = "deny"
subjects = [{ cn = "outsider" }]
actions = ["pull", "list"]
repositories = ["team-a/**"]
"#;
    std::fs::write(&policy, v1).unwrap();
    let p = policy.clone();
    let d = TestDaemon::start_with(move |cfg: &mut Config| {
        cfg.registry.enabled = true;
        cfg.registry.policy = Some(p);
    });
    let addr = d.registry[0];
    let c = d.client().await;
    let who = |cn: &str, o: &[&str], uris: &[&str]| berth::pki::Names {
        common_name: cn.into(),
        organizations: o.iter().map(|s| s.to_string()).collect(),
        uris: uris.iter().map(|s| s.to_string()).collect(),
        ..berth::pki::Names::default()
    };
    let conn = |names: berth::pki::Names| {
        let c = &c;
        async move {
            let cert = issue(c, CertKind::Client, names, KeyAlgorithm::EcdsaP256).await;
            let key = cert.key.as_ref().unwrap().secret_pem().to_string();
            Conn::open(
                addr,
                common::client_config(
                    &cert.ca_pem,
                    Some((&cert.record.certificate_pem, &key)),
                    b"http/1.1",
                ),
            )
            .await
        }
    };
    let mut builder = conn(who("ci-bot", &["builders"], &[])).await;
    let mut spiffe = conn(who("runner", &[], &["spiffe://example.org/ns/ci/runner-7"])).await;
    let mut stranger = conn(who("stranger", &[], &[])).await;
    let mut outsider = conn(who("outsider", &[], &[])).await;

    async fn push_blob(c: &mut Conn, repo: &str, data: &[u8]) -> Answer {
        let d = berth::registry::Digest::sha256_of(data);
        c.send(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
            data.to_vec(),
        )
        .await
    }
    fn denied(a: &Answer, rule: &str, cn: &str) {
        assert_eq!(
            a.status,
            StatusCode::FORBIDDEN,
            "{}",
            String::from_utf8_lossy(&a.body)
        );
        let e = &a.json()["errors"][0];
        assert_eq!(e["code"], "DENIED");
        let m = e["message"].as_str().unwrap();
        assert!(m.contains(cn) && m.contains(rule), "{m}");
    }
    // A grant by O, and by SAN URI prefix through the same group.
    assert_eq!(
        push_blob(&mut builder, "team-a/app", b"layer").await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        push_blob(&mut spiffe, "team-a/x/y", b"layer2").await.status,
        StatusCode::CREATED
    );
    // No rule for the stranger's push: the default (pull and list only) refuses it...
    denied(
        &push_blob(&mut stranger, "team-a/app", b"nope").await,
        "default",
        "stranger",
    );
    // ...and lets it pull.
    let layer = berth::registry::Digest::sha256_of(b"layer");
    assert_eq!(
        stranger
            .send(
                Method::GET,
                &format!("/v2/team-a/app/blobs/{layer}"),
                vec![]
            )
            .await
            .status,
        StatusCode::OK
    );
    // Deny wins over the builders' grant.
    denied(
        &push_blob(&mut builder, "team-a/secret", b"s").await,
        "nobody touches team-a/secret",
        "ci-bot",
    );
    // The catalog shows only what each caller may list or pull.
    let cat = |a: Answer| a.json()["repositories"].to_string();
    // (Repositories appear in the catalog once they hold a manifest: push one.)
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    assert_eq!(
        push_blob(&mut builder, "team-a/app", config).await.status,
        StatusCode::CREATED
    );
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": berth::registry::Digest::sha256_of(config).to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer.to_string(), "size": 5}],
    });
    let req = Request::builder()
        .method(Method::PUT)
        .uri("/v2/team-a/app/manifests/1.0")
        .header("host", "localhost")
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(Full::new(Bytes::from(serde_json::to_vec(&m).unwrap())))
        .unwrap();
    let Conn::H1(send) = &mut builder else {
        unreachable!()
    };
    send.ready().await.unwrap();
    let r = send.send_request(req).await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let _ = r.into_body().collect().await;
    let all = cat(stranger.send(Method::GET, "/v2/_catalog", vec![]).await);
    let hidden = cat(outsider.send(Method::GET, "/v2/_catalog", vec![]).await);
    assert!(all.contains("team-a/app"), "{all}");
    assert!(!hidden.contains("team-a/app"), "{hidden}");
    denied(
        &outsider
            .send(Method::GET, "/v2/team-a/app/tags/list", vec![])
            .await,
        "outsiders see nothing of team-a",
        "outsider",
    );
    // A mount needs pull on the source and push on the target.
    let mount = |from: &str| format!("/v2/team-a/copy/blobs/uploads/?mount={layer}&from={from}");
    assert_eq!(
        builder
            .send(Method::POST, &mount("team-a/app"), vec![])
            .await
            .status,
        StatusCode::CREATED
    );
    denied(
        &builder
            .send(Method::POST, &mount("team-a/secret"), vec![])
            .await,
        "nobody touches team-a/secret",
        "ci-bot",
    );
    denied(
        &stranger
            .send(Method::POST, &mount("team-a/app"), vec![])
            .await,
        "default",
        "stranger",
    );
    // Delete is a grant of its own.
    assert_eq!(
        builder
            .send(Method::DELETE, "/v2/team-a/app/manifests/1.0", vec![])
            .await
            .status,
        StatusCode::ACCEPTED
    );

    // Hot reload: the stranger gets push; the change applies to its open connection.
    std::fs::write(
        &policy,
        v1.replace(
            r#"subjects = [{ group = "builders" }]"#,
            r#"subjects = [{ group = "builders" }, { cn = "stranger" }]"#,
        ),
    )
    .unwrap();
    let source = c.reload_policy().await.unwrap();
    assert_eq!(source, policy.display().to_string());
    assert_eq!(
        push_blob(&mut stranger, "team-a/app", b"now").await.status,
        StatusCode::CREATED
    );
    // An invalid file is refused with its line and key, and changes nothing.
    std::fs::write(
        &policy,
        "version = 1\n[[rules]]\nname = \"x\"\neffect = \"allwo\"\n",
    )
    .unwrap();
    let err = c.reload_policy().await.unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::InvalidArgument), "{err}");
    assert!(
        err.to_string().contains("line 4") && err.to_string().contains("allwo"),
        "{err}"
    );
    assert_eq!(
        push_blob(&mut stranger, "team-a/app", b"still")
            .await
            .status,
        StatusCode::CREATED
    );

    // The live check explains the loaded policy (the valid file, not the refused one).
    let (dec, source) = c
        .check_policy(
            "CN=stranger",
            &[],
            "",
            berth::registry::policy::Action::Push,
            "team-a/app",
        )
        .await
        .unwrap();
    assert!(dec.allowed && dec.rule == "builders own team-a", "{dec:?}");
    assert_eq!(source, policy.display().to_string());

    // Every case above is in the audit log, one JSON line each, with who and which rule.
    let text = std::fs::read_to_string(d.config.state_dir.join("audit/audit.log")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let find = |action: &str, decision: &str, cn: &str, repo: &str| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|l| {
                l["action"] == action
                    && l["decision"] == decision
                    && l["actor"]["subject"]
                        .as_str()
                        .unwrap_or_default()
                        .contains(cn)
                    && l["target"]["repository"].as_str().unwrap_or_default() == repo
            })
            .collect()
    };
    let one = |action: &str, decision: &str, cn: &str, repo: &str| -> serde_json::Value {
        let hits = find(action, decision, cn, repo);
        assert!(
            !hits.is_empty(),
            "no {action} {decision} by {cn} on {repo} in\n{text}"
        );
        hits[0].clone()
    };
    let l = one("blob.commit", "allow", "O=builders", "team-a/app");
    assert_eq!(l["result"], "ok");
    assert_eq!(l["target"]["digest"], layer.to_string());
    assert!(
        l["actor"]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(l["request_id"].as_str().unwrap().len(), 32);
    one("blob.commit", "allow", "runner", "team-a/x/y");
    assert_eq!(
        one("blob.commit", "deny", "stranger", "team-a/app")["rule"],
        "default"
    );
    assert_eq!(
        one("blob.commit", "deny", "ci-bot", "team-a/secret")["rule"],
        "nobody touches team-a/secret"
    );
    let put = one("manifest.put", "allow", "ci-bot", "team-a/app");
    assert_eq!(put["target"]["tag"], "1.0");
    assert!(
        put["target"]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert_eq!(
        one("registry.list", "deny", "outsider", "team-a/app")["rule"],
        "outsiders see nothing of team-a"
    );
    assert_eq!(
        one("blob.mount", "allow", "ci-bot", "team-a/copy")["target"]["from"],
        "team-a/app"
    );
    one("blob.mount", "deny", "ci-bot", "team-a/secret");
    one("blob.mount", "deny", "stranger", "team-a/copy");
    one("tag.delete", "allow", "ci-bot", "team-a/app");
    // Pulls are not mutations: no record of the stranger's GET.
    assert!(find("registry.pull", "allow", "stranger", "team-a/app").is_empty());
    // Both reloads, the refused one with why, by the local admin.
    let reloads: Vec<_> = lines
        .iter()
        .filter(|l| l["action"] == "policy.reload")
        .collect();
    assert_eq!(reloads.len(), 2, "{text}");
    assert_eq!(reloads[0]["result"], "ok");
    assert_eq!(reloads[0]["actor"]["kind"], "unix");
    assert!(
        reloads[1]["result"].as_str().unwrap().contains("allwo"),
        "{}",
        reloads[1]
    );
}

/// Policy reloads under load: clients keep pulling and pushing on open connections while
/// the policy is swapped back and forth and invalid files are offered in between; no
/// request fails, every refused file changes nothing, and each valid one is in force at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn policy_reloads_under_load_fail_no_request() {
    let dir = common::temp_dir();
    let policy = dir.path().join("policy.toml");
    let rules = |name: &str| {
        format!(
            "version = 1\n[defaults]\nallow = []\n[[rules]]\nname = \"{name}\"\neffect = \"allow\"\nsubjects = [{{ cn_prefix = \"load\" }}]\nactions = [\"pull\", \"push\"]\nrepositories = [\"load/**\"]\n"
        )
    };
    std::fs::write(&policy, rules("gen-0")).unwrap();
    let p = policy.clone();
    let d = TestDaemon::start_with(move |cfg: &mut Config| {
        cfg.registry.enabled = true;
        cfg.registry.policy = Some(p);
    });
    let addr = d.registry[0];
    let c = d.client().await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..4 {
        let alpn: &[u8] = if i % 2 == 0 { b"http/1.1" } else { b"h2" };
        let (cfg, _) = client_cfg(&c, &format!("load-{i}"), alpn).await;
        let stop = stop.clone();
        tasks.spawn(async move {
            let mut conn = Conn::open(addr, cfg).await;
            let (mut ok, mut n) = (0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || n < 20 {
                n += 1;
                let data = format!("blob {i} {n}");
                let dg = berth::registry::Digest::sha256_of(data.as_bytes());
                let a = conn
                    .send(
                        Method::POST,
                        &format!("/v2/load/app{i}/blobs/uploads/?digest={dg}"),
                        data.into_bytes(),
                    )
                    .await;
                assert_eq!(
                    a.status,
                    StatusCode::CREATED,
                    "{}",
                    String::from_utf8_lossy(&a.body)
                );
                let a = conn
                    .send(Method::GET, &format!("/v2/load/app{i}/blobs/{dg}"), vec![])
                    .await;
                assert_eq!(
                    a.status,
                    StatusCode::OK,
                    "{}",
                    String::from_utf8_lossy(&a.body)
                );
                ok += 2;
            }
            ok
        });
    }
    for generation in 1..=20 {
        std::fs::write(&policy, "version = 1\n[[rules]]\nname = 1\n").unwrap();
        c.reload_policy().await.unwrap_err();
        let want = format!("gen-{}", generation - 1);
        let (dec, _) = c
            .check_policy(
                "CN=load-0",
                &[],
                "",
                berth::registry::policy::Action::Push,
                "load/app0",
            )
            .await
            .unwrap();
        assert_eq!(dec.rule, want, "a refused file changed the policy");
        std::fs::write(&policy, rules(&format!("gen-{generation}"))).unwrap();
        c.reload_policy().await.unwrap();
        let (dec, _) = c
            .check_policy(
                "CN=load-0",
                &[],
                "",
                berth::registry::policy::Action::Push,
                "load/app0",
            )
            .await
            .unwrap();
        assert_eq!(dec.rule, format!("gen-{generation}"));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    while let Some(r) = tasks.join_next().await {
        total += r.unwrap();
    }
    assert!(total >= 160, "{total}");
    // A refused reload leaves the policy in force that the last valid one loaded, and
    // the clients' requests were decided by it.
    let denied = c
        .audit(&berth::audit::Filter {
            decision: Some(berth::audit::Decision::Deny),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(denied.is_empty(), "{denied:?}");
}

/// The value of the sample `name` whose labels include every `k="v"` of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        (n == name
            && labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
        .then(|| value.parse().ok())?
    })
}

/// `/metrics` scraped and parsed: requests by route and status, bytes, handshake failures
/// by reason, requests refused on open connections, policy denials, uploads in progress,
/// GC, open connections and certificate expiry.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_what_happened() {
    let d = TestDaemon::start_with(|cfg: &mut Config| {
        cfg.registry.enabled = true;
        cfg.metrics.enabled = true;
        cfg.metrics.listen = "127.0.0.1:0".parse().unwrap();
    });
    let m = d.metrics.unwrap();
    assert!(m.ip().is_loopback());
    let addr = d.registry[0];
    let c = d.client().await;
    let (cfg, serial) = client_cfg(&c, "counted", b"http/1.1").await;
    let mut conn = Conn::open(addr, cfg.clone()).await;
    assert_eq!(
        conn.send(Method::GET, "/v2/", vec![]).await.status,
        StatusCode::OK
    );
    let missing = berth::registry::Digest::sha256_of(b"missing");
    assert_eq!(
        conn.send(Method::HEAD, &format!("/v2/a/b/blobs/{missing}"), vec![])
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    // Delete needs a grant: a policy denial.
    assert_eq!(
        conn.send(Method::DELETE, "/v2/a/b/manifests/latest", vec![])
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    // An upload left open.
    assert_eq!(
        conn.send(Method::POST, "/v2/a/b/blobs/uploads/", vec![])
            .await
            .status,
        StatusCode::ACCEPTED
    );
    // Handshakes without a certificate and with a foreign one.
    let (ct, text) = common::scrape(m).await;
    assert_eq!(
        ct,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    let ca = c.ca().await.unwrap().0;
    let _ = tokio_rustls::TlsConnector::from(common::client_config(&ca, None, b"http/1.1"))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tokio::net::TcpStream::connect(addr).await.unwrap(),
        )
        .await;
    let rogue_key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let rogue_ca = rcgen::CertifiedIssuer::self_signed(p, rogue_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "rogue");
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = p.signed_by(&key, &rogue_ca).unwrap();
    let rogue = common::client_config(&ca, Some((&cert.pem(), &key.serialize_pem())), b"http/1.1");
    if let Ok(mut s) = tokio_rustls::TlsConnector::from(rogue)
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tokio::net::TcpStream::connect(addr).await.unwrap(),
        )
        .await
    {
        // TLS 1.3: the server judges the certificate after the client's side is done.
        use tokio::io::AsyncReadExt;
        let _ = s.read(&mut [0u8; 1]).await;
    }
    // Revoked: refused on the open connection, then at the next handshake.
    c.revoke(&serial).await.unwrap();
    assert_eq!(
        conn.send(Method::GET, "/v2/", vec![]).await.status,
        StatusCode::FORBIDDEN
    );
    if let Ok(mut s) = tokio_rustls::TlsConnector::from(cfg)
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tokio::net::TcpStream::connect(addr).await.unwrap(),
        )
        .await
    {
        use tokio::io::AsyncReadExt;
        let _ = s.read(&mut [0u8; 1]).await;
    }
    c.registry_gc(false, false, None).await.unwrap();

    let mut text = String::new();
    for _ in 0..500 {
        text = common::scrape(m).await.1;
        if sample(
            &text,
            "berth_tls_handshake_failures_total",
            &[("reason", "revoked")],
        )
        .is_some()
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let req = |route: &str, status: &str| {
        sample(
            &text,
            "berth_requests_total",
            &[
                ("listener", "registry"),
                ("route", route),
                ("status", status),
            ],
        )
    };
    assert_eq!(req("base", "200"), Some(1.0), "{text}");
    assert_eq!(req("blob", "404"), Some(1.0), "{text}");
    assert_eq!(req("manifest", "403"), Some(1.0), "{text}");
    assert_eq!(req("upload", "202"), Some(1.0), "{text}");
    assert!(
        sample(
            &text,
            "berth_requests_total",
            &[("listener", "control"), ("route", "pki")]
        )
        .is_some()
    );
    for reason in ["no_certificate", "unknown_ca", "revoked"] {
        assert_eq!(
            sample(
                &text,
                "berth_tls_handshake_failures_total",
                &[("listener", "registry"), ("reason", reason)]
            ),
            Some(1.0),
            "{reason}\n{text}"
        );
    }
    assert_eq!(
        sample(
            &text,
            "berth_refused_requests_total",
            &[("reason", "revoked")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "berth_policy_denials_total", &[("action", "delete")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "berth_uploads_in_progress", &[]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "berth_gc_runs_total", &[]),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "berth_received_bytes_total",
            &[("listener", "registry")]
        )
        .unwrap()
            > 0.0
    );
    assert!(sample(&text, "berth_sent_bytes_total", &[("listener", "registry")]).unwrap() > 0.0);
    assert!(sample(&text, "berth_connections_open", &[("listener", "metrics")]).unwrap() >= 1.0);
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    for which in ["ca", "registry", "soonest_client"] {
        let t = sample(
            &text,
            "berth_certificate_expiry_timestamp_seconds",
            &[("certificate", which)],
        )
        .unwrap_or_else(|| panic!("{which}\n{text}"));
        assert!(t > now, "{which}");
    }
}
