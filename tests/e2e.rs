//! Real clients against the embedded registry: skopeo pushes and pulls through mutual TLS
//! with the files `berth certs install` wrote, and Debian's `docker-registry`
//! (distribution 2.8) serves what berth stored and the other way round.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth::client::Trees;
use berth::registry::Digest;
use common::TestDaemon;
use serde_json::{Value, json};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// An OCI image layout on disk, built here so tests need no network.
struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn new(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout {
            dir: dir.to_path_buf(),
        }
    }

    fn blob(&self, data: &[u8]) -> (Digest, usize) {
        let d = Digest::sha256_of(data);
        std::fs::write(self.dir.join("blobs/sha256").join(d.hex()), data).unwrap();
        (d, data.len())
    }

    /// A gzip tar layer holding one file of pseudo-random bytes.
    fn layer(&self, name: &str, size: usize, seed: u32) -> ((Digest, usize), Digest) {
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        let content: Vec<u8> = (0..size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let mut tar = Vec::new();
        let mut header = [0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        header[100..108].copy_from_slice(b"0000644\0");
        header[108..116].copy_from_slice(b"0000000\0");
        header[116..124].copy_from_slice(b"0000000\0");
        header[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        header[136..148].copy_from_slice(b"00000000000\0");
        header[156] = b'0';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|&b| b as u32).sum();
        header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        tar.extend_from_slice(&header);
        tar.extend_from_slice(&content);
        tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);
        let diff_id = Digest::sha256_of(&tar);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        (self.blob(&gz.finish().unwrap()), diff_id)
    }

    /// An image manifest for one platform; returns its descriptor.
    fn image(&self, arch: &str, seed: u32) -> Value {
        let (layer, diff_id) = self.layer(&format!("file-{arch}"), 200_000 + seed as usize, seed);
        let config = serde_json::to_vec(&json!({
            "architecture": arch, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
            "config": {"Cmd": ["/file"]}
        }))
        .unwrap();
        let (c, cs) = self.blob(&config);
        let m = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": c.to_string(), "size": cs},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer.0.to_string(), "size": layer.1}],
        }))
        .unwrap();
        let (md, ms) = self.blob(&m);
        json!({"mediaType": OCI_MANIFEST, "digest": md.to_string(), "size": ms, "platform": {"architecture": arch, "os": "linux"}})
    }

    /// Writes index.json naming each entry by its ref.
    fn refs(&self, entries: Vec<(&str, Value)>) {
        let manifests: Vec<Value> = entries
            .into_iter()
            .map(|(name, mut d)| {
                d["annotations"] = json!({"org.opencontainers.image.ref.name": name});
                d.as_object_mut().unwrap().remove("platform");
                d
            })
            .collect();
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": manifests})).unwrap(),
        )
        .unwrap();
    }

    /// A multi-platform index blob over two images.
    fn multi(&self) -> Value {
        let a = self.image("amd64", 7);
        let b = self.image("arm64", 8);
        let idx = serde_json::to_vec(
            &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [a, b]}),
        )
        .unwrap();
        let (d, s) = self.blob(&idx);
        json!({"mediaType": OCI_INDEX, "digest": d.to_string(), "size": s})
    }
}

/// Every blob of a layout hashes to its file name.
fn assert_blobs_verify(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let data = std::fs::read(e.path()).unwrap();
        assert_eq!(
            Digest::sha256_of(&data).hex(),
            e.file_name().to_string_lossy(),
            "{}",
            e.path().display()
        );
        n += 1;
    }
    n
}

fn policy(dir: &Path) -> PathBuf {
    let p = dir.join("policy.json");
    std::fs::write(&p, r#"{"default":[{"type":"insecureAcceptAnything"}]}"#).unwrap();
    p
}

fn skopeo(policy: &Path, args: &[&str]) -> String {
    let out = common::run(
        Command::new("skopeo")
            .arg("--policy")
            .arg(policy)
            .args(args)
            .stdin(Stdio::null()),
    );
    assert!(
        out.status.success(),
        "skopeo {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn skopeo_fails(policy: &Path, args: &[&str]) -> String {
    let out = common::run(
        Command::new("skopeo")
            .arg("--policy")
            .arg(policy)
            .args(args)
            .stdin(Stdio::null()),
    );
    assert!(!out.status.success(), "skopeo {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A daemon with its registry, and the certs.d folder `berth certs install` made for it.
async fn registry_with_certs() -> (TestDaemon, String, PathBuf) {
    let d = TestDaemon::with_registry();
    let host = format!("localhost:{}", d.registry[0].port());
    let c = d.client().await;
    c.certs_install(&host, Some("e2e"), Trees::CONTAINERS, false, false)
        .await
        .unwrap();
    let certs = d.docker_root().join(&host);
    for f in ["ca.crt", "client.cert", "client.key"] {
        assert!(certs.join(f).is_file(), "{f}");
        assert!(d.containers_root().join(&host).join(f).is_file(), "{f}");
    }
    (d, host, certs)
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_pushes_and_pulls_through_mtls_with_installed_certs() {
    let (d, host, certs) = registry_with_certs().await;
    let work = common::temp_dir();
    let pol = policy(work.path());
    let src = Layout::new(&work.path().join("src"));
    let single = src.image("amd64", 1);
    let multi = src.multi();
    src.refs(vec![("single", single.clone()), ("multi", multi.clone())]);
    let src_dir = src.dir.display().to_string();
    let cert_dir = certs.display().to_string();
    let containers_dir = d.containers_root().join(&host).display().to_string();

    // OCI image.
    skopeo(
        &pol,
        &[
            "copy",
            "--dest-cert-dir",
            &cert_dir,
            &format!("oci:{src_dir}:single"),
            &format!("docker://{host}/team/app:1.0"),
        ],
    );
    let back = work.path().join("back");
    skopeo(
        &pol,
        &[
            "copy",
            "--src-cert-dir",
            &containers_dir,
            &format!("docker://{host}/team/app:1.0"),
            &format!("oci:{}:1.0", back.display()),
        ],
    );
    assert!(assert_blobs_verify(&back) >= 3);
    let index: Value =
        serde_json::from_slice(&std::fs::read(back.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["digest"], single["digest"],
        "the manifest came back byte for byte"
    );

    // Docker schema 2 image.
    skopeo(
        &pol,
        &[
            "copy",
            "--format",
            "v2s2",
            "--dest-cert-dir",
            &cert_dir,
            &format!("oci:{src_dir}:single"),
            &format!("docker://{host}/team/docker:1.0"),
        ],
    );
    let raw = skopeo(
        &pol,
        &[
            "inspect",
            "--raw",
            "--cert-dir",
            &cert_dir,
            &format!("docker://{host}/team/docker:1.0"),
        ],
    );
    let m: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        m["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let back2 = work.path().join("back2");
    skopeo(
        &pol,
        &[
            "copy",
            "--src-cert-dir",
            &cert_dir,
            &format!("docker://{host}/team/docker:1.0"),
            &format!("oci:{}:x", back2.display()),
        ],
    );
    assert_blobs_verify(&back2);

    // Multi-platform index, all platforms.
    skopeo(
        &pol,
        &[
            "copy",
            "--all",
            "--dest-cert-dir",
            &cert_dir,
            &format!("oci:{src_dir}:multi"),
            &format!("docker://{host}/team/multi:1.0"),
        ],
    );
    let raw = skopeo(
        &pol,
        &[
            "inspect",
            "--raw",
            "--cert-dir",
            &cert_dir,
            &format!("docker://{host}/team/multi:1.0"),
        ],
    );
    let idx: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(idx["manifests"].as_array().unwrap().len(), 2);
    assert_eq!(
        Digest::sha256_of(raw.as_bytes()).to_string(),
        multi["digest"]
    );
    let back3 = work.path().join("back3");
    skopeo(
        &pol,
        &[
            "copy",
            "--all",
            "--src-cert-dir",
            &cert_dir,
            &format!("docker://{host}/team/multi:1.0"),
            &format!("oci:{}:m", back3.display()),
        ],
    );
    assert!(assert_blobs_verify(&back3) >= 7);
    let tags = skopeo(
        &pol,
        &[
            "list-tags",
            "--cert-dir",
            &cert_dir,
            &format!("docker://{host}/team/app"),
        ],
    );
    assert!(tags.contains("\"1.0\""), "{tags}");

    // Without the client certificate the registry is closed: only the CA, no key pair.
    let ca_only = work.path().join("ca-only");
    std::fs::create_dir_all(&ca_only).unwrap();
    std::fs::copy(certs.join("ca.crt"), ca_only.join("ca.crt")).unwrap();
    let err = skopeo_fails(
        &pol,
        &[
            "inspect",
            "--cert-dir",
            &ca_only.display().to_string(),
            &format!("docker://{host}/team/app:1.0"),
        ],
    );
    assert!(!err.is_empty());
}

/// Debian's docker-registry on a free loopback port over `root`, plain HTTP.
struct DockerRegistry {
    child: Child,
    addr: String,
    _config: tempfile::TempDir,
}

impl DockerRegistry {
    fn start(root: &Path) -> DockerRegistry {
        DockerRegistry::start_with(root, "")
    }

    /// With `http_extra` appended under `http:` (distribution's `tls:` keys).
    fn start_with(root: &Path, http_extra: &str) -> DockerRegistry {
        DockerRegistry::serve(&Shared::Folder(root.to_path_buf()), http_extra)
    }

    /// Over `store`, with `http_extra` appended under `http:`.
    fn serve(store: &Shared, http_extra: &str) -> DockerRegistry {
        let bin = which("docker-registry").unwrap_or_else(|| {
            panic!("docker-registry is not installed: apt-get install -y docker-registry (.ci/run does)")
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = common::temp_dir();
        let file = config.path().join("config.yml");
        std::fs::write(
            &file,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n{}  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{http_extra}",
                store.distribution_storage()
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&file)
            // Its AWS SDK fails to start with a CA bundle it cannot load into its own HTTP
            // transport (some hosts set one); the store it talks to here is plain HTTP.
            .env_remove("AWS_CA_BUNDLE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let r = DockerRegistry {
            child,
            addr,
            _config: config,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let tls = !http_extra.is_empty();
        while !(if tls {
            TcpStream::connect(&r.addr).is_ok()
        } else {
            r.answers()
        }) {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start on {}",
                r.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    /// GET /v2/ answers 200.
    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(&self.addr) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        if s.write_all(format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr).as_bytes())
            .is_err()
        {
            return false;
        }
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200")
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(cmd))
        .find(|p| p.is_file())
}

/// Where berth and docker-registry keep what they share: a folder, or an S3 bucket (with
/// its prefix, registry:2's `rootdirectory`) on a moto server.
enum Shared {
    Folder(PathBuf),
    Bucket {
        moto: std::sync::Arc<common::moto::Moto>,
        name: String,
        credentials: PathBuf,
    },
}

impl Shared {
    /// A new bucket on `moto`, its credentials file in `dir`.
    fn bucket(moto: &std::sync::Arc<common::moto::Moto>, dir: &Path) -> Shared {
        let name = common::moto::unique_bucket();
        moto.create_bucket(&name);
        Shared::Bucket {
            moto: moto.clone(),
            name,
            credentials: moto.credentials_file(dir),
        }
    }

    /// berthd's settings for it.
    fn configure(&self, c: &mut berth::config::Config) {
        match self {
            Shared::Folder(root) => c.registry.root = Some(root.clone()),
            Shared::Bucket {
                moto,
                name,
                credentials,
            } => {
                c.registry.s3 = Some(berth::registry::S3Settings {
                    bucket: name.clone(),
                    region: Some("us-east-1".into()),
                    endpoint: Some(moto.url()),
                    prefix: "/shared/registry".into(),
                    path_style: true,
                    credentials_file: Some(credentials.clone()),
                    ca_file: None,
                    ..Default::default()
                })
            }
        }
    }

    /// distribution's `storage:` driver section for it (indented under `storage:`).
    fn distribution_storage(&self) -> String {
        match self {
            Shared::Folder(root) => {
                format!("  filesystem:\n    rootdirectory: {}\n", root.display())
            }
            // distribution 2.8 addresses the bucket in the path when given an endpoint.
            Shared::Bucket { moto, name, .. } => format!(
                "  s3:\n    accesskey: testing\n    secretkey: testing\n    region: us-east-1\n    regionendpoint: {}\n    bucket: {name}\n    rootdirectory: /shared/registry\n    secure: false\n    v4auth: true\n",
                moto.url()
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn data_moves_between_berth_and_docker_registry_in_both_directions() {
    let work = common::temp_dir();
    let mine = work.path().join("berth-data");
    let theirs = work.path().join("registry-data");
    std::fs::create_dir_all(&theirs).unwrap();
    interop(&work, Shared::Folder(mine), Shared::Folder(theirs)).await;
}

/// registry:2's s3 driver and berth's read each other's buckets: same keys, same objects.
#[tokio::test(flavor = "multi_thread")]
async fn data_moves_between_berth_and_docker_registry_over_s3() {
    let work = common::temp_dir();
    let moto = common::moto::shared();
    let mine = Shared::bucket(&moto, work.path());
    let theirs = Shared::bucket(&moto, work.path());
    interop(&work, mine, theirs).await;
}

/// berth writes to `mine` and docker-registry serves it; docker-registry writes to
/// `theirs` and berth serves it.
async fn interop(work: &tempfile::TempDir, mine: Shared, theirs: Shared) {
    let pol = policy(work.path());
    let src = Layout::new(&work.path().join("src"));
    let single = src.image("amd64", 3);
    let multi = src.multi();
    src.refs(vec![("single", single.clone()), ("multi", multi.clone())]);
    let src_dir = src.dir.display().to_string();

    // berth writes, docker-registry serves.
    let d = TestDaemon::start_with(|c| {
        c.registry.enabled = true;
        mine.configure(c);
    });
    let host = format!("localhost:{}", d.registry[0].port());
    d.client()
        .await
        .certs_install(&host, Some("interop"), Trees::DOCKER, false, false)
        .await
        .unwrap();
    let certs = d.docker_root().join(&host).display().to_string();
    skopeo(
        &pol,
        &[
            "copy",
            "--dest-cert-dir",
            &certs,
            &format!("oci:{src_dir}:single"),
            &format!("docker://{host}/interop/app:1.0"),
        ],
    );
    skopeo(
        &pol,
        &[
            "copy",
            "--all",
            "--dest-cert-dir",
            &certs,
            &format!("oci:{src_dir}:multi"),
            &format!("docker://{host}/interop/multi:2.0"),
        ],
    );
    drop(d);
    let reg = DockerRegistry::serve(&mine, "");
    let out = work.path().join("from-docker-registry");
    skopeo(
        &pol,
        &[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{}/interop/app:1.0", reg.addr),
            &format!("oci:{}:a", out.display()),
        ],
    );
    assert_blobs_verify(&out);
    let raw = skopeo(
        &pol,
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{}/interop/multi:2.0", reg.addr),
        ],
    );
    assert_eq!(
        Digest::sha256_of(raw.as_bytes()).to_string(),
        multi["digest"]
    );
    let raw = skopeo(
        &pol,
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{}/interop/app:1.0", reg.addr),
        ],
    );
    assert_eq!(
        Digest::sha256_of(raw.as_bytes()).to_string(),
        single["digest"]
    );
    let tags = skopeo(
        &pol,
        &[
            "list-tags",
            "--tls-verify=false",
            &format!("docker://{}/interop/multi", reg.addr),
        ],
    );
    assert!(tags.contains("\"2.0\""), "{tags}");
    drop(reg);

    // docker-registry writes, berth serves.
    let reg = DockerRegistry::serve(&theirs, "");
    skopeo(
        &pol,
        &[
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{src_dir}:single"),
            &format!("docker://{}/from/them:1.0", reg.addr),
        ],
    );
    skopeo(
        &pol,
        &[
            "copy",
            "--all",
            "--dest-tls-verify=false",
            &format!("oci:{src_dir}:multi"),
            &format!("docker://{}/from/multi:1.0", reg.addr),
        ],
    );
    drop(reg);
    let d = TestDaemon::start_with(|c| {
        c.registry.enabled = true;
        theirs.configure(c);
    });
    let host = format!("localhost:{}", d.registry[0].port());
    d.client()
        .await
        .certs_install(&host, Some("interop"), Trees::DOCKER, false, false)
        .await
        .unwrap();
    let certs = d.docker_root().join(&host).display().to_string();
    let out = work.path().join("from-berth");
    skopeo(
        &pol,
        &[
            "copy",
            "--src-cert-dir",
            &certs,
            &format!("docker://{host}/from/them:1.0"),
            &format!("oci:{}:a", out.display()),
        ],
    );
    assert_blobs_verify(&out);
    let raw = skopeo(
        &pol,
        &[
            "inspect",
            "--raw",
            "--cert-dir",
            &certs,
            &format!("docker://{host}/from/multi:1.0"),
        ],
    );
    assert_eq!(
        Digest::sha256_of(raw.as_bytes()).to_string(),
        multi["digest"]
    );
    let out2 = work.path().join("from-berth-multi");
    skopeo(
        &pol,
        &[
            "copy",
            "--all",
            "--src-cert-dir",
            &certs,
            &format!("docker://{host}/from/multi:1.0"),
            &format!("oci:{}:m", out2.display()),
        ],
    );
    assert!(assert_blobs_verify(&out2) >= 7);
    let tags = skopeo(
        &pol,
        &[
            "list-tags",
            "--cert-dir",
            &certs,
            &format!("docker://{host}/from/them"),
        ],
    );
    assert!(tags.contains("\"1.0\""), "{tags}");
}

/// Runs `ctr` against a private containerd, returning its output or panicking with it.
fn ctr(sock: &Path, args: &[&str]) -> std::process::Output {
    common::run(
        Command::new("ctr")
            .arg("--address")
            .arg(sock)
            .args(args)
            .stdin(Stdio::null()),
    )
}

/// A containerd of the test's own: own root, state, socket; no CRI, nothing shared with a
/// containerd the host may run. Killed on drop.
struct Containerd {
    child: Child,
    sock: PathBuf,
}

impl Containerd {
    fn start(dir: &Path) -> Containerd {
        std::fs::create_dir_all(dir).unwrap();
        let sock = dir.join("containerd.sock");
        let cfg = dir.join("config.toml");
        std::fs::write(
            &cfg,
            format!(
                "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{}\"\n[ttrpc]\n  address = \"{}\"\n",
                dir.join("root").display(),
                dir.join("state").display(),
                sock.display(),
                dir.join("ttrpc.sock").display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd (apt install containerd; .ci/run does)");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ctr(&sock, &["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd never answered: {}",
                std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Containerd { child, sock }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// containerd (Kubernetes nodes, Docker 29's image store) pulls and pushes through mutual
/// TLS with nothing but the hosts folder `berth certs install --containerd` wrote; without
/// its hosts.toml the same pull fails.
#[tokio::test(flavor = "multi_thread")]
async fn containerd_pulls_and_pushes_with_the_installed_hosts_toml() {
    let d = TestDaemon::with_registry();
    let host = format!("localhost:{}", d.registry[0].port());
    let c = d.client().await;
    let out = c
        .certs_install(
            &host,
            Some("ctrd"),
            berth::client::Trees {
                containers: false,
                containerd: true,
            },
            false,
            false,
        )
        .await
        .unwrap();
    assert!(
        out.notes.iter().any(|n| n.contains("config_path")),
        "{:?}",
        out.notes
    );
    let hosts_dir = d.containerd_root().to_path_buf();
    let toml = std::fs::read_to_string(hosts_dir.join(&host).join("hosts.toml")).unwrap();
    assert!(
        toml.contains(&format!("[host.\"https://{host}\"]")),
        "{toml}"
    );

    // An image to pull, pushed with skopeo.
    let work = common::temp_dir();
    let pol = policy(work.path());
    let src = Layout::new(&work.path().join("src"));
    let single = src.image("amd64", 3);
    src.refs(vec![("single", single.clone())]);
    skopeo(
        &pol,
        &[
            "copy",
            "--dest-cert-dir",
            &d.docker_root().join(&host).display().to_string(),
            &format!("oci:{}:single", src.dir.display()),
            &format!("docker://{host}/team/ctr:1.0"),
        ],
    );

    let cd = Containerd::start(work.path());
    let image = format!("{host}/team/ctr:1.0");
    let hosts = hosts_dir.display().to_string();
    let o = ctr(
        &cd.sock,
        &[
            "images",
            "pull",
            "--snapshotter",
            "native",
            "--hosts-dir",
            &hosts,
            &image,
        ],
    );
    assert!(
        o.status.success(),
        "ctr pull: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let ls = String::from_utf8_lossy(&ctr(&cd.sock, &["images", "ls"]).stdout).to_string();
    let digest = single["digest"].as_str().unwrap();
    assert!(ls.contains(&image) && ls.contains(digest), "{ls}");

    // And back: containerd pushes the image under a new name.
    let copy = format!("{host}/team/ctr-copy:1.0");
    let o = ctr(
        &cd.sock,
        &["images", "push", "--hosts-dir", &hosts, &copy, &image],
    );
    assert!(
        o.status.success(),
        "ctr push: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(c.registry_tags("team/ctr-copy").await.unwrap(), ["1.0"]);
    let info = c.image_inspect("team/ctr-copy:1.0").await.unwrap();
    assert_eq!(info.digest.to_string(), digest);

    // Without the hosts.toml containerd does not know how to reach the registry.
    std::fs::remove_file(hosts_dir.join(&host).join("hosts.toml")).unwrap();
    let o = ctr(
        &cd.sock,
        &[
            "images",
            "pull",
            "--snapshotter",
            "native",
            "--hosts-dir",
            &hosts,
            &format!("{host}/team/ctr-copy:1.0"),
        ],
    );
    assert!(!o.status.success(), "pulled without hosts.toml");
}

/// Runs the `berth` CLI.
fn berth_cli(args: &[&str]) -> std::process::Output {
    common::run(
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(args)
            .stdin(Stdio::null()),
    )
}

/// Two hosts on one machine: berthd (the CA host, control listener on loopback) makes a
/// token; a client host (its own temp roots, no berthd) joins with it, and skopeo and a
/// private containerd use what `join` wrote. Bad tokens and a wrong CA pin are refused, the
/// latter before the token is sent.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_joins_with_a_token_and_pushes_with_what_join_wrote() {
    let d = TestDaemon::start_with(|cfg| {
        cfg.registry.enabled = true;
        cfg.control.listen = vec!["tcp://127.0.0.1:0".parse().unwrap()];
    });
    let sock = d.socket.display().to_string();
    let server = format!("tcp://127.0.0.1:{}", d.tcp[0].port());
    let registry = format!("localhost:{}", d.registry[0].port());
    let c = d.client().await;
    let fp = c.info().await.unwrap().ca_fingerprint_sha256;
    let token = |name: &str, ttl: &str| {
        let o = berth_cli(&[
            "--socket", &sock, "token", "create", "--name", name, "--ttl", ttl,
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    };
    let host = common::temp_dir();
    let roots = |name: &str| host.path().join(name).display().to_string();
    let join = |tok: &str, pin: &str| {
        berth_cli(&[
            "join",
            &registry,
            "--server",
            &server,
            "--token",
            tok,
            "--ca-fingerprint",
            pin,
            "--state-dir",
            &roots("state"),
            "--certs-d",
            &roots("docker"),
            "--containers-certs-d",
            &roots("containers"),
            "--containerd-certs-d",
            &roots("containerd"),
            "--buildkit",
            "--buildkit-config",
            &roots("buildkit/buildkitd.toml"),
            "--k3s",
            "--k3s-registries",
            &roots("rancher/k3s/registries.yaml"),
        ])
    };
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).to_string();

    // A wrong pin: refused before the token leaves the host, so the token still works.
    let t1 = token("ci-runner-07", "1h");
    let wrong = "sha256:".to_string() + &"00".repeat(32);
    let o = join(&t1, &wrong);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--ca-fingerprint"), "{}", stderr(&o));
    let ls =
        String::from_utf8_lossy(&berth_cli(&["--socket", &sock, "token", "ls"]).stdout).to_string();
    assert!(ls.contains("usable"), "{ls}");
    // A wrong token.
    let o = join("bt1.0011223344ff.notthesecret", &fp);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("token is not valid"), "{}", stderr(&o));
    // The right one.
    let o = join(&t1, &fp);
    assert!(o.status.success(), "{}", stderr(&o));
    let docker_dir = host.path().join("docker").join(&registry);
    for f in ["ca.crt", "client.cert", "client.key", "hosts.toml"] {
        assert!(docker_dir.join(f).is_file(), "{f}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(docker_dir.join("client.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    common::openssl_verify(&docker_dir.join("ca.crt"), &docker_dir.join("client.cert"));
    // buildkit and k3s point at the same pair, and berth says they need a restart.
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        stdout.contains("restart buildkitd") && stdout.contains("restart k3s"),
        "{stdout}"
    );
    let bk = std::fs::read_to_string(host.path().join("buildkit/buildkitd.toml")).unwrap();
    assert!(
        bk.contains(&format!("[registry.\"{registry}\"]"))
            && bk.contains(&docker_dir.join("client.key").display().to_string()),
        "{bk}"
    );
    let k3s = std::fs::read_to_string(host.path().join("rancher/k3s/registries.yaml")).unwrap();
    assert!(
        k3s.contains(&format!("\"{registry}\":"))
            && k3s.contains(&format!(
                "cert_file: {}",
                docker_dir.join("client.cert").display()
            )),
        "{k3s}"
    );
    let listed = c.list(None, Some("ci-runner-07".into())).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(!listed[0].key_held, "berthd never saw the key");
    assert!(listed[0].names.dns_names.is_empty());
    // Used once: not again.
    let o = join(&t1, &fp);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("token is not valid"), "{}", stderr(&o));
    // Revoked and expired tokens.
    let t2 = token("other", "1h");
    let id = t2.split('.').nth(1).unwrap().to_string();
    assert!(
        berth_cli(&["--socket", &sock, "token", "revoke", &id])
            .status
            .success()
    );
    assert!(!join(&t2, &fp).status.success());
    let t3 = token("late", "1s");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&berth_cli(&["--socket", &sock, "token", "ls"]).stdout)
        .lines()
        .any(|l| l.contains("late") && l.contains("expired"))
    {
        assert!(Instant::now() < deadline, "the token never expired");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!join(&t3, &fp).status.success());

    // skopeo pushes and pulls with the files join wrote.
    let work = common::temp_dir();
    let pol = policy(work.path());
    let src = Layout::new(&work.path().join("src"));
    let single = src.image("amd64", 5);
    src.refs(vec![("single", single.clone())]);
    skopeo(
        &pol,
        &[
            "copy",
            "--dest-cert-dir",
            &docker_dir.display().to_string(),
            &format!("oci:{}:single", src.dir.display()),
            &format!("docker://{registry}/fleet/app:1.0"),
        ],
    );
    skopeo(
        &pol,
        &[
            "copy",
            "--src-cert-dir",
            &host
                .path()
                .join("containers")
                .join(&registry)
                .display()
                .to_string(),
            &format!("docker://{registry}/fleet/app:1.0"),
            &format!("oci:{}:1.0", work.path().join("back").display()),
        ],
    );
    // And containerd pulls with join's hosts.toml.
    let cd = Containerd::start(&work.path().join("ctrd"));
    let o = ctr(
        &cd.sock,
        &[
            "images",
            "pull",
            "--snapshotter",
            "native",
            "--hosts-dir",
            &roots("containerd"),
            &format!("{registry}/fleet/app:1.0"),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // status shows the enrolment; renew leaves a fresh certificate alone (exit 0)...
    let state = roots("state");
    let o = berth_cli(&["status", "--state-dir", &state]);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success() && text.contains(&registry) && text.contains(&server),
        "{text}"
    );
    let o = berth_cli(&["renew", "--all", "--state-dir", &state]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("not due"));
    // ...and --force renews it with the current certificate: every copy replaced.
    let before = std::fs::read_to_string(docker_dir.join("client.cert")).unwrap();
    let o = berth_cli(&["renew", "--all", "--force", "--state-dir", &state]);
    assert!(o.status.success(), "{}", stderr(&o));
    let after = std::fs::read_to_string(docker_dir.join("client.cert")).unwrap();
    assert_ne!(before, after);
    for tree in ["containers", "containerd"] {
        let copy = host.path().join(tree).join(&registry).join("client.cert");
        assert_eq!(std::fs::read_to_string(copy).unwrap(), after, "{tree}");
    }
    let certs = c.list(None, Some("ci-runner-07".into())).await.unwrap();
    assert_eq!(certs.len(), 2, "a successor, same name");
    // The next push uses the new certificate.
    skopeo(
        &pol,
        &[
            "copy",
            "--dest-cert-dir",
            &docker_dir.display().to_string(),
            &format!("oci:{}:single", src.dir.display()),
            &format!("docker://{registry}/fleet/app:2.0"),
        ],
    );
    // berth agent renews on time by itself: make the record look long due and watch it.
    let record = host.path().join("state/enrolments.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    let due_serial = v[0]["serial"].as_str().unwrap().to_string();
    v[0]["not_before"] = json!("2020-01-01T00:00:00Z");
    v[0]["not_after"] = json!("2020-04-01T00:00:00Z");
    std::fs::write(&record, serde_json::to_vec(&v).unwrap()).unwrap();
    let agent = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["agent", "--state-dir", &state])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = berth::client::host::enrolments(&host.path().join("state")).unwrap();
        if now[0].serial != due_serial {
            break;
        }
        assert!(Instant::now() < deadline, "berth agent never renewed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let out = agent.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("renewed"));
    let after = std::fs::read_to_string(docker_dir.join("client.cert")).unwrap();
    let certs = c.list(None, Some("ci-runner-07".into())).await.unwrap();

    // A revoked certificate cannot renew (passive revocation): a non-zero exit.
    // The certificate installed now is the one the enrolment record names.
    let newest = berth::client::host::enrolments(&host.path().join("state"))
        .unwrap()
        .remove(0)
        .serial;
    assert!(
        certs
            .iter()
            .any(|r| r.serial == newest && r.certificate_pem.trim() == after.trim())
    );
    assert_ne!(newest, listed[0].serial, "the record follows the renewal");
    c.revoke(&newest).await.unwrap();
    let o = berth_cli(&["renew", "--all", "--force", "--state-dir", &state]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("revoked"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(docker_dir.join("client.cert")).unwrap(),
        after
    );
}

/// docker for real: a private dockerd and berthd in a network namespace of the test's own
/// (lo given the non-loopback 10.99.0.1, nothing leaves it), a host joined with a token,
/// `docker push` and `docker pull` through the certs.d folder `berth join` wrote, the image
/// ID equal to the config digest; then docker against the same registry on loopback fails
/// the way berth warned it would, with the registry's hint in docker's own error.
#[test]
fn docker_pushes_and_pulls_through_what_join_wrote() {
    let work = common::temp_dir();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/docker-netns.sh");
    let out = common::run(
        Command::new("unshare")
            .args([
                "--net",
                "--mount",
                "--pid",
                "--fork",
                "--mount-proc",
                "bash",
            ])
            .arg(&script)
            .arg(work.path())
            .env("BERTHD", env!("CARGO_BIN_EXE_berthd"))
            .env("BERTH", env!("CARGO_BIN_EXE_berth"))
            .stdin(Stdio::null()),
    );
    let log = |name: &str| std::fs::read_to_string(work.path().join(name)).unwrap_or_default();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && stdout.contains("docker push and pull through berth: ok")
            && stdout.contains("docker and loopback, as berth says: ok"),
        "stdout:\n{stdout}\nstderr:\n{}\nberthd.log:\n{}\ndockerd.log (tail):\n{}",
        String::from_utf8_lossy(&out.stderr),
        log("berthd.log"),
        log("dockerd.log")
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A CA made here, with rcgen.
struct TestCa(rcgen::CertifiedIssuer<'static, rcgen::KeyPair>);

impl TestCa {
    fn new(cn: &str) -> TestCa {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        TestCa(rcgen::CertifiedIssuer::self_signed(p, rcgen::KeyPair::generate().unwrap()).unwrap())
    }

    /// (cert PEM, key PEM) for `names` (server) or a client `cn`.
    fn leaf(&self, cn: &str, names: &[&str], client: bool) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        (
            p.signed_by(&key, &self.0).unwrap().pem(),
            key.serialize_pem(),
        )
    }
}

/// docker-registry over TLS with `server_ca`'s certificate for `names`, asking for
/// client certificates from `client_ca`.
fn tls_registry(
    work: &Path,
    server_ca: &TestCa,
    names: &[&str],
    client_ca: &TestCa,
) -> DockerRegistry {
    let (cert, key) = server_ca.leaf("registry", names, false);
    let dir = work.join("server");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
    std::fs::write(dir.join("clientca.pem"), client_ca.0.pem()).unwrap();
    std::fs::create_dir_all(work.join("storage")).unwrap();
    DockerRegistry::start_with(
        &work.join("storage"),
        &format!(
            "  tls:\n    certificate: {0}/cert.pem\n    key: {0}/key.pem\n    clientcas:\n      - {0}/clientca.pem\n",
            dir.display()
        ),
    )
}

/// A certs.d tree with one host folder: `ca` trusted, a client pair from `client_ca`.
fn certs_d(work: &Path, host: &str, ca: &TestCa, client_ca: &TestCa) -> (PathBuf, PathBuf) {
    let root = work.join("certs.d");
    let dir = root.join(host);
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = client_ca.leaf("ci-bot", &[], true);
    std::fs::write(dir.join("ca.crt"), ca.0.pem()).unwrap();
    std::fs::write(dir.join("client.cert"), cert).unwrap();
    std::fs::write(dir.join("client.key"), key).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("client.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    (root, dir)
}

async fn doctor_errors(root: &Path, host: &str) -> Vec<berth::doctor::Finding> {
    let r = berth::doctor::diagnose(
        &berth::doctor::Roots::certs_d(root),
        &host.parse().unwrap(),
        true,
    )
    .await;
    r.findings
        .into_iter()
        .filter(|f| f.severity == berth::doctor::Severity::Error)
        .collect()
}

/// skopeo's error for `host` with the folder `dir` (it must fail).
fn skopeo_error(work: &Path, dir: &Path, host: &str) -> String {
    let pol = policy(work);
    skopeo_fails(
        &pol,
        &[
            "inspect",
            "--cert-dir",
            dir.to_str().unwrap(),
            &format!("docker://{host}/team/app:1.0"),
        ],
    )
}

/// The live probe against Debian's docker-registry, set up wrong the ways users do; each
/// finding is proven by skopeo failing the way the finding says it will.
#[tokio::test(flavor = "multi_thread")]
async fn doctor_probes_docker_registry_set_up_wrong() {
    common::crypto();
    let (ca, other) = (TestCa::new("registry CA"), TestCa::new("another CA"));

    // Healthy: no error, and skopeo gets as far as the registry (the image is missing).
    let work = common::temp_dir();
    let r = tls_registry(work.path(), &ca, &["127.0.0.1"], &ca);
    let (root, dir) = certs_d(work.path(), &r.addr, &ca, &ca);
    assert_eq!(doctor_errors(&root, &r.addr).await, Vec::new());
    let err = skopeo_error(work.path(), &dir, &r.addr);
    assert!(
        err.contains("manifest unknown") || err.contains("not found"),
        "{err}"
    );
    drop(r);

    type Setup<'a> = Box<dyn Fn(&Path) -> (DockerRegistry, PathBuf, PathBuf) + 'a>;
    let cases: Vec<(&str, Setup, &[&str])> = vec![
        (
            "server-name-mismatch",
            Box::new(|w: &Path| {
                let r = tls_registry(w, &ca, &["registry.example.internal"], &ca);
                let (root, dir) = certs_d(w, &r.addr, &ca, &ca);
                (r, root, dir)
            }),
            &["127.0.0.1"],
        ),
        (
            "server-untrusted",
            Box::new(|w: &Path| {
                let r = tls_registry(w, &other, &["127.0.0.1"], &ca);
                let (root, dir) = certs_d(w, &r.addr, &ca, &ca);
                (r, root, dir)
            }),
            &["unknown authority"],
        ),
        (
            "client-ca-not-requested",
            Box::new(|w: &Path| {
                let r = tls_registry(w, &ca, &["127.0.0.1"], &other);
                let (root, dir) = certs_d(w, &r.addr, &ca, &ca);
                (r, root, dir)
            }),
            &["tls: "],
        ),
    ];
    for (code, build, skopeo_says) in cases {
        let work = common::temp_dir();
        let (r, root, dir) = build(work.path());
        let errors = doctor_errors(&root, &r.addr).await;
        let codes: Vec<&str> = errors.iter().map(|f| f.code).collect();
        assert!(codes.contains(&code), "{code}: {errors:#?}");
        let err = skopeo_error(work.path(), &dir, &r.addr);
        for s in skopeo_says {
            assert!(err.contains(s), "{code}: skopeo said {err}");
        }
        // What doctor says the client will print is what it prints.
        let f = errors.iter().find(|f| f.code == code).unwrap();
        if code != "client-ca-not-requested" {
            let said = f.client_error.as_deref().unwrap();
            assert!(
                err.contains(said),
                "{code}: doctor predicted {said:?}, skopeo said {err}"
            );
        }
    }

    // The server's own certificate as ca.crt: Go accepts it (until renewal); a warning.
    let work = common::temp_dir();
    let r = tls_registry(work.path(), &ca, &["127.0.0.1"], &ca);
    let (root, dir) = certs_d(work.path(), &r.addr, &ca, &ca);
    std::fs::copy(work.path().join("server/cert.pem"), dir.join("ca.crt")).unwrap();
    let report = berth::doctor::diagnose(
        &berth::doctor::Roots::certs_d(&root),
        &r.addr.parse().unwrap(),
        true,
    )
    .await;
    let codes: Vec<&str> = report.findings.iter().map(|f| f.code).collect();
    assert!(
        !report.has_errors() && codes.contains(&"ca-is-server-cert"),
        "{codes:?}"
    );
    let err = skopeo_error(work.path(), &dir, &r.addr);
    assert!(
        err.contains("manifest unknown") || err.contains("not found"),
        "{err}"
    );
    drop(r);

    // Plain HTTP on the port.
    let work = common::temp_dir();
    let r = DockerRegistry::start(&work.path().join("storage"));
    let (root, dir) = certs_d(work.path(), &r.addr, &ca, &ca);
    let codes: Vec<&str> = doctor_errors(&root, &r.addr)
        .await
        .iter()
        .map(|f| f.code)
        .collect();
    assert_eq!(codes, ["port-not-tls"]);
    let err = skopeo_error(work.path(), &dir, &r.addr);
    assert!(
        err.contains("server gave HTTP response to HTTPS client"),
        "{err}"
    );
}

/// The live probe against berth's own registry: healthy after `certs install`, and a
/// revoked client told apart from everything else; the CLI's exit codes and JSON.
#[tokio::test(flavor = "multi_thread")]
async fn doctor_probes_berths_registry() {
    let (d, host, certs) = registry_with_certs().await;
    let root = d.containers_root().to_path_buf();
    assert_eq!(doctor_errors(&root, &host).await, Vec::new());
    let out = berth_cli(&["doctor", "--certs-d", root.to_str().unwrap(), &host]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Without a registry: every folder in the tree, files only with --no-probe.
    let out = berth_cli(&["doctor", "--certs-d", root.to_str().unwrap(), "--no-probe"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.starts_with(&host), "{text}");
    // Revoke the installed client: the registry refuses it, and doctor says so.
    let c = d.client().await;
    let serial = c.list(None, Some("e2e".to_string())).await.unwrap()[0]
        .serial
        .clone();
    c.revoke(&serial).await.unwrap();
    let errors = doctor_errors(&root, &host).await;
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].code, "client-rejected");
    assert!(
        errors[0]
            .client_error
            .as_deref()
            .unwrap()
            .contains("revoked"),
        "{errors:#?}"
    );
    let work = common::temp_dir();
    let err = skopeo_error(work.path(), &certs, &host);
    assert!(
        err.contains("revoked") || err.contains("bad certificate"),
        "{err}"
    );
    let out = berth_cli(&[
        "--json",
        "doctor",
        "--certs-d",
        root.to_str().unwrap(),
        &host,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v[0]["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["code"] == "client-rejected" && f["severity"] == "error")
    );
    // Nothing to examine: exit 2 with what to do.
    let out = berth_cli(&["doctor", "--certs-d", "/nonexistent"]);
    assert_eq!(out.status.code(), Some(2));
}

/// Each class of file finding, proven with skopeo: a folder `berth certs install` wrote,
/// broken one way at a time, makes doctor report the code and skopeo fail, printing what
/// doctor said it would.
#[tokio::test(flavor = "multi_thread")]
async fn file_findings_are_what_skopeo_fails_on() {
    let (d, host, certs) = registry_with_certs().await;
    let _ = &d;
    type Break = fn(&Path);
    let cases: &[(&str, Break)] = &[
        ("orphan-key", |p| {
            std::fs::remove_file(p.join("client.cert")).unwrap()
        }),
        ("cert-without-key", |p| {
            std::fs::remove_file(p.join("client.key")).unwrap()
        }),
        ("client-cert-named-crt", |p| {
            std::fs::rename(p.join("client.cert"), p.join("client.crt")).unwrap()
        }),
        ("key-mismatch", |p| {
            let k = rcgen::KeyPair::generate().unwrap();
            std::fs::write(p.join("client.key"), k.serialize_pem()).unwrap();
        }),
        ("key-encrypted", |p| {
            let out = Command::new("openssl")
                .args([
                    "pkey",
                    "-in",
                    "client.key",
                    "-aes256",
                    "-passout",
                    "pass:x",
                    "-out",
                    "enc",
                ])
                .current_dir(p)
                .output()
                .unwrap();
            assert!(out.status.success());
            std::fs::rename(p.join("enc"), p.join("client.key")).unwrap();
        }),
        ("ignored-file", |p| {
            std::fs::rename(p.join("ca.crt"), p.join("ca.pem")).unwrap()
        }),
        ("ca-not-pem", |p| {
            let out = Command::new("openssl")
                .args(["x509", "-in", "ca.crt", "-outform", "der", "-out", "der"])
                .current_dir(p)
                .output()
                .unwrap();
            assert!(out.status.success());
            std::fs::rename(p.join("der"), p.join("ca.crt")).unwrap();
        }),
    ];
    for (code, breaks) in cases {
        let work = common::temp_dir();
        let root = work.path().join("certs.d");
        let dir = root.join(&host);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["ca.crt", "client.cert", "client.key"] {
            std::fs::copy(certs.join(f), dir.join(f)).unwrap();
        }
        breaks(&dir);
        let report = berth::doctor::diagnose(
            &berth::doctor::Roots::certs_d(&root),
            &host.parse().unwrap(),
            true,
        )
        .await;
        let errors: Vec<_> = report
            .findings
            .iter()
            .filter(|f| f.severity == berth::doctor::Severity::Error)
            .collect();
        let f = errors
            .iter()
            .find(|f| f.code == *code)
            .unwrap_or_else(|| panic!("{code}: {errors:#?}"));
        let err = skopeo_error(work.path(), &dir, &host);
        let said = f.client_error.as_deref().unwrap();
        assert!(
            err.contains(said),
            "{code}: doctor predicted {said:?}, skopeo said {err}"
        );
    }
}

/// A primary and its replicas on one moto bucket, for the replica tests.
struct Fleet {
    work: tempfile::TempDir,
    primary: TestDaemon,
    bucket: Shared,
    token: String,
    fingerprint: String,
    policy_file: PathBuf,
    gc: Option<(Duration, Duration)>,
}

/// Sets the bucket's GC grace floor and fence, when given.
fn tune_gc(c: &mut berth::config::Config, gc: Option<(Duration, Duration)>) {
    if let (Some((grace, fence)), Some(s3)) = (gc, c.registry.s3.as_mut()) {
        s3.gc_min_grace = grace;
        s3.fence = fence;
    }
}

impl Fleet {
    /// A primary with a TCP control listener and a replica token for `localhost` and
    /// 127.0.0.1; its CRL lasts `crl_lifetime`.
    async fn new(crl_lifetime: Duration) -> Fleet {
        Fleet::with_gc(crl_lifetime, None).await
    }

    /// [`Fleet::new`] with the bucket's `gc_min_grace` and `fence` set on every node.
    async fn with_gc(crl_lifetime: Duration, gc: Option<(Duration, Duration)>) -> Fleet {
        let work = common::temp_dir();
        let moto = common::moto::shared();
        let bucket = Shared::bucket(&moto, work.path());
        let policy_file = work.path().join("registry-policy.toml");
        std::fs::write(&policy_file, "version = 1\n").unwrap();
        let primary = TestDaemon::start_with(|c| {
            c.control.listen = vec!["tcp://127.0.0.1:0".parse().unwrap()];
            c.pki.crl_lifetime = crl_lifetime;
            c.registry.policy = Some(policy_file.clone());
            bucket.configure(c);
            tune_gc(c, gc);
        });
        let client = primary.client().await;
        let names = ["localhost".to_string(), "127.0.0.1".to_string()];
        let token = client
            .token_create("registry", Some(Duration::from_secs(3600)), Some(&names))
            .await
            .unwrap()
            .secret;
        let fingerprint = client.info().await.unwrap().ca_fingerprint_sha256;
        Fleet {
            work,
            primary,
            bucket,
            token,
            fingerprint,
            policy_file,
            gc,
        }
    }

    /// A replica's config: its socket under `name`, the registry on the shared bucket.
    fn replica_config(&self, name: &str, grace: Duration) -> berth::config::Config {
        let mut c = common::config(&self.work.path().join(name));
        c.registry.enabled = true;
        c.metrics.enabled = true;
        c.metrics.listen = "127.0.0.1:0".parse().unwrap();
        self.bucket.configure(&mut c);
        tune_gc(&mut c, self.gc);
        c.replica = Some(berth::config::ReplicaConfig {
            primary: format!("127.0.0.1:{}", self.primary.tcp[0].port()),
            ca_fingerprint: self.fingerprint.clone(),
            token_file: None,
            crl_grace: grace,
        });
        c
    }

    fn replica(&self, name: &str) -> common::TestReplica {
        common::TestReplica::start(
            self.replica_config(name, Duration::from_secs(3600)),
            &self.token,
        )
        .unwrap()
    }

    /// Installs a client certificate `cn` for `host` from the primary; its certs.d folder.
    async fn certs(&self, host: &str, cn: &str) -> PathBuf {
        self.primary
            .client()
            .await
            .certs_install(host, Some(cn), Trees::DOCKER, false, false)
            .await
            .unwrap();
        self.primary.docker_root().join(host)
    }
}

/// A rustls client config from a certs.d folder (ca.crt, client.cert, client.key).
fn certs_d_tls(dir: &Path, alpn: &[u8]) -> std::sync::Arc<rustls::ClientConfig> {
    let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap();
    common::client_config(
        &read("ca.crt"),
        Some((&read("client.cert"), &read("client.key"))),
        alpn,
    )
}

/// The serial of the client certificate in a certs.d folder.
fn certs_d_serial(dir: &Path) -> String {
    let pem = std::fs::read(dir.join("client.cert")).unwrap();
    berth::client::inspect_offline(&pem).unwrap()[0]
        .serial
        .clone()
}

/// Polls `f` until it is true or `limit` passes; how long it took, or `None`.
async fn within<F, Fut>(limit: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if f().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// The replica role end to end on one bucket: skopeo pushes to replica A and pulls from
/// B; a chunked upload begun on A is finished on B; a revocation and a policy reload on
/// the primary reach both replicas within a second, on connections opened before them
/// too; and a replica whose primary is gone says so and keeps serving until its CRL
/// lapses (plus the grace), then refuses with 503 UNAVAILABLE.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_serve_one_bucket_and_enforce_the_primarys_trust() {
    let fleet = Fleet::new(Duration::from_secs(6)).await;
    // A replica on another prefix of the bucket would serve content GC never sees.
    let mut elsewhere = fleet.replica_config("elsewhere", Duration::from_secs(60));
    if let Some(s3) = elsewhere.registry.s3.as_mut() {
        s3.prefix = "/other".into();
    }
    let refused = common::TestReplica::start(elsewhere, &fleet.token)
        .err()
        .unwrap_or_default();
    assert!(refused.contains("its primary at"), "{refused}");
    let a = fleet.replica("a");
    let b = common::TestReplica::start(
        fleet.replica_config("b", Duration::from_secs(1)),
        &fleet.token,
    )
    .unwrap();
    let (host_a, host_b) = (
        format!("localhost:{}", a.registry[0].port()),
        format!("localhost:{}", b.registry[0].port()),
    );
    let certs_a = fleet.certs(&host_a, "ci").await;
    let certs_b = fleet.certs(&host_b, "ci").await;
    // Each replica's certificate is its own, a replica certificate for the token's names.
    let (sa, sb) = (a.status().await, b.status().await);
    assert!(sa.connected && sb.connected, "{sa:?} {sb:?}");
    assert_ne!(sa.certificate_serial, sb.certificate_serial);
    let rec = fleet
        .primary
        .client()
        .await
        .list(None, Some("registry".into()))
        .await
        .unwrap();
    // The refused one enrolled too, before it learnt where its primary keeps content.
    assert_eq!(rec.len(), 3, "{rec:?}");
    for serial in [&sa.certificate_serial, &sb.certificate_serial] {
        assert!(
            rec.iter().any(|r| &r.serial == serial),
            "{serial} not in {rec:?}"
        );
    }
    assert!(rec.iter().all(|r| r.kind == berth::pki::CertKind::Replica));

    // skopeo pushes to A and pulls from B.
    let pol = policy(fleet.work.path());
    let src = Layout::new(&fleet.work.path().join("src"));
    let image = src.image("amd64", 11);
    src.refs(vec![("app", image.clone())]);
    skopeo(
        &pol,
        &[
            "copy",
            "--dest-cert-dir",
            &certs_a.display().to_string(),
            &format!("oci:{}:app", src.dir.display()),
            &format!("docker://{host_a}/fleet/app:1.0"),
        ],
    );
    let out = fleet.work.path().join("pulled");
    skopeo(
        &pol,
        &[
            "copy",
            "--src-cert-dir",
            &certs_b.display().to_string(),
            &format!("docker://{host_b}/fleet/app:1.0"),
            &format!("oci:{}:app", out.display()),
        ],
    );
    let pulled: Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    assert_eq!(pulled["manifests"][0]["digest"], image["digest"]);
    assert!(assert_blobs_verify(&out) >= 3);

    // The primary's one audit log has the push, as the replica that took it reported it.
    let primary_client = fleet.primary.client().await;
    let audited = within(Duration::from_secs(10), || async {
        let filter = berth::audit::Filter {
            repository: Some("fleet/app".into()),
            action: Some("manifest.put".into()),
            ..Default::default()
        };
        primary_client
            .audit(&filter)
            .await
            .unwrap()
            .iter()
            .any(|r| {
                r.via
                    .as_deref()
                    .is_some_and(|v| v.contains(&sa.certificate_serial))
                    && r.actor.subject.as_deref().is_some_and(|s| s.contains("ci"))
            })
    })
    .await;
    assert!(
        audited.is_some(),
        "the push through A never reached the primary's audit log"
    );

    // A chunked upload begun on A, continued and committed on B, is served by A.
    let tls = certs_d_tls(&certs_a, b"http/1.1");
    let blob: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let digest = Digest::sha256_of(&blob);
    let (s, h, _) = common::tls_exchange(
        a.registry[0],
        tls.clone(),
        axum::http::Method::POST,
        "/v2/fleet/chunked/blobs/uploads/",
        &[],
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(s.as_u16(), 202);
    let loc = h["location"].to_str().unwrap().to_string();
    let half = blob.len() / 2;
    let (s, h, _) = common::tls_exchange(
        a.registry[0],
        tls.clone(),
        axum::http::Method::PATCH,
        &loc,
        &[
            ("content-type", "application/octet-stream"),
            ("content-range", &format!("0-{}", half - 1)),
        ],
        blob[..half].to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(s.as_u16(), 202);
    let loc = h["location"].to_str().unwrap().to_string();
    let (s, h, body) = common::tls_exchange(
        b.registry[0],
        tls.clone(),
        axum::http::Method::PATCH,
        &loc,
        &[
            ("content-type", "application/octet-stream"),
            ("content-range", &format!("{half}-{}", blob.len() - 1)),
        ],
        blob[half..].to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(s.as_u16(), 202, "{}", String::from_utf8_lossy(&body));
    let loc = h["location"].to_str().unwrap().to_string();
    let sep = if loc.contains('?') { '&' } else { '?' };
    let (s, _, body) = common::tls_exchange(
        b.registry[0],
        tls.clone(),
        axum::http::Method::PUT,
        &format!("{loc}{sep}digest={digest}"),
        &[],
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(s.as_u16(), 201, "{}", String::from_utf8_lossy(&body));
    let (s, got) = common::tls_get(
        a.registry[0],
        tls.clone(),
        &format!("/v2/fleet/chunked/blobs/{digest}"),
    )
    .await
    .unwrap();
    assert_eq!(s.as_u16(), 200);
    assert!(got == blob, "A serves the blob B committed");

    // A policy reload on the primary reaches both replicas.
    let h2 = certs_d_tls(&certs_a, b"h2");
    let open_a = common::OpenConnection::open(a.registry[0], h2.clone())
        .await
        .unwrap();
    let open_b = common::OpenConnection::open(b.registry[0], h2.clone())
        .await
        .unwrap();
    assert_eq!(
        open_a.get("/v2/fleet/app/manifests/1.0").await.unwrap().0,
        200
    );
    assert_eq!(
        open_b.get("/v2/fleet/app/manifests/1.0").await.unwrap().0,
        200
    );
    std::fs::write(
        &fleet.policy_file,
        "version = 1\n[[rules]]\nname = \"freeze\"\nrepositories = [\"fleet/**\"]\nactions = [\"pull\"]\nsubjects = [{ cn = \"ci\" }]\neffect = \"deny\"\n",
    )
    .unwrap();
    fleet.primary.client().await.reload_policy().await.unwrap();
    for (name, conn) in [("A", &open_a), ("B", &open_b)] {
        let took = within(Duration::from_secs(1), || async {
            conn.get("/v2/fleet/app/manifests/1.0").await.unwrap().0 == 403
        })
        .await;
        assert!(
            took.is_some(),
            "the policy reload did not reach replica {name} within 1 s"
        );
    }
    std::fs::write(&fleet.policy_file, "version = 1\n").unwrap();
    fleet.primary.client().await.reload_policy().await.unwrap();
    for conn in [&open_a, &open_b] {
        let back = within(Duration::from_secs(1), || async {
            conn.get("/v2/fleet/app/manifests/1.0").await.unwrap().0 == 200
        })
        .await;
        assert!(back.is_some(), "the default policy came back");
    }

    // A revocation on the primary refuses the client on both replicas within a second,
    // on the connections opened before it as well as on new handshakes.
    let serial = certs_d_serial(&certs_a);
    let other = fleet.certs(&host_b, "ci-2").await;
    fleet.primary.client().await.revoke(&serial).await.unwrap();
    for (name, conn) in [("A", &open_a), ("B", &open_b)] {
        let took = within(Duration::from_secs(1), || async {
            let (s, body) = conn.get("/v2/").await.unwrap();
            s == 403 && body.contains("revoked")
        })
        .await;
        assert!(
            took.is_some(),
            "replica {name} still served the revoked certificate on an open connection after 1 s"
        );
    }
    for addr in [a.registry[0], b.registry[0]] {
        let r = common::tls_get(addr, h2.clone(), "/v2/").await;
        assert!(
            !matches!(r, Ok((s, _)) if s.as_u16() == 200),
            "a new handshake with the revoked certificate was served: {r:?}"
        );
    }
    let fine = certs_d_tls(&other, b"h2");
    assert_eq!(
        common::tls_get(b.registry[0], fine.clone(), "/v2/")
            .await
            .unwrap()
            .0
            .as_u16(),
        200
    );

    // A revoked replica certificate: the primary ends that replica's stream, and the
    // replica enrols again with its token and serves under its new certificate.
    fleet
        .primary
        .client()
        .await
        .revoke(&sa.certificate_serial)
        .await
        .unwrap();
    let renewed = within(Duration::from_secs(20), || async {
        let s = a.status().await;
        s.connected && s.certificate_serial != sa.certificate_serial
    })
    .await;
    assert!(
        renewed.is_some(),
        "replica A never enrolled again: {:?}",
        a.status().await
    );
    let certs_a2 = fleet.certs(&host_a, "ci-2").await;
    assert_eq!(
        common::tls_get(a.registry[0], certs_d_tls(&certs_a2, b"h2"), "/v2/")
            .await
            .unwrap()
            .0
            .as_u16(),
        200,
        "A serves under its new certificate"
    );

    // The primary goes away: both replicas say so and keep serving with what they have;
    // B, whose grace is 1 s past a 6 s CRL, stops once that has passed.
    let Fleet { primary, work, .. } = fleet;
    drop(primary);
    for r in [&a, &b] {
        let lost = within(Duration::from_secs(20), || async {
            !r.status().await.connected
        })
        .await;
        assert!(
            lost.is_some(),
            "the replica never noticed its primary was gone"
        );
    }
    let (_, metrics) = common::scrape(a.metrics.unwrap()).await;
    assert!(
        metrics.contains("berth_replica_primary_connected 0"),
        "{metrics}"
    );
    assert_eq!(
        common::tls_get(a.registry[0], fine.clone(), "/v2/")
            .await
            .unwrap()
            .0
            .as_u16(),
        200,
        "A serves while its CRL is current"
    );
    let until = b.status().await.serving_until.unwrap();
    let lapsed = within(Duration::from_secs(20), || async {
        let (s, body) = common::tls_get(b.registry[0], fine.clone(), "/v2/")
            .await
            .unwrap();
        s.as_u16() == 503 && String::from_utf8_lossy(&body).contains("UNAVAILABLE")
    })
    .await;
    assert!(lapsed.is_some(), "B kept serving past its CRL and grace");
    assert!(time::OffsetDateTime::now_utc() >= until);
    drop(work);
}

/// A replica as its own `berthd --role registry` process, so it can be killed with -9.
struct ReplicaProcess {
    child: Child,
    registry: std::net::SocketAddr,
    socket: PathBuf,
}

impl ReplicaProcess {
    /// Starts one from `fleet`'s replica config, written as the file it would read, with
    /// the token in the environment; returns once its status answers.
    async fn start(fleet: &Fleet, name: &str) -> ReplicaProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut c = fleet.replica_config(name, Duration::from_secs(3600));
        c.metrics.enabled = false;
        c.registry.listen = vec![format!("127.0.0.1:{port}").parse().unwrap()];
        let file = fleet.work.path().join(format!("{name}.toml"));
        std::fs::write(&file, toml::to_string(&c).unwrap()).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_berthd"))
            .args(["--role", "registry", "--config"])
            .arg(&file)
            .env("BERTH_JOIN_TOKEN", &fleet.token)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(fleet.work.path().join(format!("{name}.log"))).unwrap())
            .spawn()
            .unwrap();
        let socket = c.control.socket.clone();
        let ready = within(Duration::from_secs(30), || async {
            match berth::client::Client::connect(&berth::client::Target::Unix(socket.clone())).await
            {
                Ok(cl) => cl.replica_status().await.is_ok_and(|s| s.connected),
                Err(_) => false,
            }
        })
        .await;
        assert!(
            ready.is_some(),
            "replica {name} never served: {}",
            std::fs::read_to_string(fleet.work.path().join(format!("{name}.log"))).unwrap()
        );
        ReplicaProcess {
            child,
            registry: format!("127.0.0.1:{port}").parse().unwrap(),
            socket,
        }
    }
}

impl Drop for ReplicaProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// kill -9 of the replica a push goes through, mid-way through a layer: the client retries
/// on the other replica and the image arrives whole; fsck of the bucket finds nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_push_cut_by_a_killed_replica_completes_on_the_other() {
    let fleet = Fleet::new(Duration::from_secs(7 * 24 * 3600)).await;
    let mut a = ReplicaProcess::start(&fleet, "a").await;
    let b = ReplicaProcess::start(&fleet, "b").await;
    assert!(b.socket.exists());
    let (host_a, host_b) = (
        format!("localhost:{}", a.registry.port()),
        format!("localhost:{}", b.registry.port()),
    );
    let certs_a = fleet.certs(&host_a, "ci").await;
    let certs_b = fleet.certs(&host_b, "ci").await;

    // One uncompressed 48 MB layer, so the push takes long enough to be cut.
    let src = Layout::new(&fleet.work.path().join("src"));
    let mut x = 0x9e37_79b9u32;
    let layer: Vec<u8> = (0..48_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let (ld, ls) = src.blob(&layer);
    drop(layer);
    let (cd, cs) = src
        .blob(br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#);
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld.to_string(), "size": ls}],
    }))
    .unwrap();
    let (md, ms) = src.blob(&m);
    src.refs(vec![(
        "big",
        json!({"mediaType": OCI_MANIFEST, "digest": md.to_string(), "size": ms}),
    )]);
    let pol = policy(fleet.work.path());
    let copy = |certs: &Path, host: &str| {
        let mut c = Command::new("skopeo");
        c.arg("--policy")
            .arg(&pol)
            .args(["copy", "--preserve-digests", "--dest-cert-dir"])
            .arg(certs)
            .arg(format!("oci:{}:big", src.dir.display()))
            .arg(format!("docker://{host}/fleet/big:1"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    let push = copy(&certs_a, &host_a).spawn().unwrap();
    // Killed while the layer's upload is open in the bucket.
    let primary = fleet.primary.client().await;
    let uploading = within(Duration::from_secs(60), || async {
        !primary
            .registry_uploads(false, None, false)
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    assert!(uploading.is_some(), "the push never opened an upload");
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let cut = push.wait_with_output().unwrap();
    assert!(
        !cut.status.success(),
        "the push finished before replica A was killed; the test proved nothing"
    );

    // The retry, on B.
    let retry = copy(&certs_b, &host_b).output().unwrap();
    assert!(
        retry.status.success(),
        "the retry on B failed: {}",
        String::from_utf8_lossy(&retry.stderr)
    );
    let out = fleet.work.path().join("pulled");
    skopeo(
        &pol,
        &[
            "copy",
            "--dest-oci-accept-uncompressed-layers",
            "--src-cert-dir",
            &certs_b.display().to_string(),
            &format!("docker://{host_b}/fleet/big:1"),
            &format!("oci:{}:big", out.display()),
        ],
    );
    assert_eq!(assert_blobs_verify(&out), 3);
    assert!(
        out.join("blobs/sha256").join(ld.hex()).exists(),
        "the 48 MB layer came back whole"
    );
    let pulled: Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    assert_eq!(pulled["manifests"][0]["digest"], md.to_string());
    let report = primary.registry_fsck(false).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.blobs_checked >= 3);
}

/// GC on the primary in a loop while a client pushes through a replica, docker's way
/// (HEAD every blob, upload what is missing, then the manifest), the image deleted after
/// each round so its shared layers become garbage again: every push the replica accepts
/// is whole, and GC meanwhile collects the throwaway blobs each round leaves.
#[tokio::test(flavor = "multi_thread")]
async fn gc_on_the_primary_never_breaks_pushes_through_a_replica() {
    use axum::http::Method;
    let grace = Duration::from_secs(4);
    let fleet = Fleet::with_gc(
        Duration::from_secs(7 * 24 * 3600),
        Some((grace, Duration::from_millis(500))),
    )
    .await;
    std::fs::write(
        &fleet.policy_file,
        "version = 1\n[[rules]]\nname = \"clean-up\"\nrepositories = [\"**\"]\nactions = [\"delete\"]\nsubjects = [{ cn = \"ci\" }]\neffect = \"allow\"\n",
    )
    .unwrap();
    fleet.primary.client().await.reload_policy().await.unwrap();
    let b = fleet.replica("b");
    let addr = b.registry[0];
    let certs = fleet
        .certs(&format!("localhost:{}", addr.port()), "ci")
        .await;
    let tls = certs_d_tls(&certs, b"http/1.1");
    let call =
        |method: Method, path: String, headers: Vec<(&'static str, String)>, body: Vec<u8>| {
            let tls = tls.clone();
            async move {
                let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                common::tls_exchange(addr, tls, method, &path, &h, body)
                    .await
                    .unwrap()
            }
        };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gc = {
        let primary = fleet.primary.client().await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut freed = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                freed += primary
                    .registry_gc(false, false, Some(grace))
                    .await
                    .unwrap()
                    .blobs_deleted
                    .len();
            }
            freed
        })
    };
    let layers: Vec<Vec<u8>> = (0..3)
        .map(|i| format!("shared layer {i} ").repeat(500).into_bytes())
        .collect();
    let config = b"{}".to_vec();
    let started = Instant::now();
    let mut round = 0;
    while started.elapsed() < 3 * grace || round < 3 {
        round += 1;
        common::push_blob(
            addr,
            tls.clone(),
            "team/junk",
            format!("junk {round}").as_bytes(),
        )
        .await;
        let blobs: Vec<&Vec<u8>> = std::iter::once(&config).chain(layers.iter()).collect();
        let heads = futures_util::future::join_all(blobs.iter().map(|blob| {
            let path = format!("/v2/team/app/blobs/{}", Digest::sha256_of(blob));
            let call = &call;
            async move { call(Method::HEAD, path, vec![], vec![]).await.0 }
        }))
        .await;
        let mut named = Vec::new();
        for (blob, status) in blobs.iter().zip(heads) {
            if status.as_u16() == 404 {
                common::push_blob(addr, tls.clone(), "team/app", blob).await;
            } else {
                assert_eq!(status.as_u16(), 200, "round {round}");
            }
            if **blob != config {
                named.push((Digest::sha256_of(blob), blob.len()));
            }
        }
        let top = format!("top {round} ").repeat(40_000).into_bytes();
        let d = common::push_blob(addr, tls.clone(), "team/app", &top).await;
        named.push((d, top.len()));
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": Digest::sha256_of(&config).to_string(), "size": config.len()},
            "layers": named.iter().map(|(d, n)| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d.to_string(), "size": n})).collect::<Vec<_>>(),
        }))
        .unwrap();
        let (s, _, body) = call(
            Method::PUT,
            "/v2/team/app/manifests/latest".into(),
            vec![("content-type", OCI_MANIFEST.to_string())],
            manifest.clone(),
        )
        .await;
        assert_eq!(
            s.as_u16(),
            201,
            "round {round}: {}",
            String::from_utf8_lossy(&body)
        );
        for l in &layers {
            let (s, _, body) = call(
                Method::GET,
                format!("/v2/team/app/blobs/{}", Digest::sha256_of(l)),
                vec![],
                vec![],
            )
            .await;
            assert_eq!((s.as_u16(), &body), (200, l), "round {round}");
        }
        let (s, _, _) = call(
            Method::DELETE,
            format!("/v2/team/app/manifests/{}", Digest::sha256_of(&manifest)),
            vec![],
            vec![],
        )
        .await;
        assert_eq!(s.as_u16(), 202, "round {round}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let freed = gc.await.unwrap();
    assert!(freed > 0, "GC collected nothing in {round} rounds");
}
