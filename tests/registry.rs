//! The registry's HTTP API at the router (every endpoint, status, header and error code,
//! with `oneshot` on a real temp storage root) and over loopback mutual TLS (who gets in).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use berth::identity::Identity;
use berth::oci;
use berth::registry::{Backend, Digest, Registry};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tempfile::TempDir;
use tower::ServiceExt;

struct Resp {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn h(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// Asserts an OCI error response: this status, this code, a message, the JSON type.
    #[track_caller]
    fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(
            (self.status, self.code().as_str()),
            (status, code),
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.h("content-type"), "application/json");
        assert!(
            self.json()["errors"][0]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }

    /// The OCI error code of an error response.
    fn code(&self) -> String {
        let v = self.json();
        v["errors"][0]["code"].as_str().unwrap().to_string()
    }
}

struct Api {
    _dir: TempDir,
    app: Router,
    root: std::path::PathBuf,
    registry: Registry,
    store: Store,
}

/// Where an [`Api`]'s registry keeps its content.
enum Store {
    /// Below `Api::root`.
    Fs,
    /// In a bucket of its own on a moto server, below a prefix; `bucket` reads it as the
    /// test's own client.
    S3 {
        _moto: Arc<common::moto::Moto>,
        bucket: object_store::aws::AmazonS3,
        prefix: String,
    },
}

/// The key of a blob's data below the store's root (registry:2's layout).
fn blob_key(d: &Digest) -> String {
    let (alg, hex) = d
        .to_string()
        .split_once(':')
        .map(|(a, h)| (a.to_string(), h.to_string()))
        .unwrap();
    format!("docker/registry/v2/blobs/{alg}/{}/{hex}/data", &hex[..2])
}

/// The caller the router tests act as (net::serve puts one on every real request).
fn tester() -> Identity {
    Identity::Unix {
        uid: 0,
        gid: 0,
        pid: None,
    }
}

impl Api {
    fn new() -> Api {
        let dir = common::temp_dir();
        Api::over(dir.path().to_path_buf(), dir)
    }

    /// A registry (as a fresh berthd process would open it) over `root`.
    fn over(root: std::path::PathBuf, dir: TempDir) -> Api {
        let registry = Registry::open(Backend::Filesystem(root.clone()), true).unwrap();
        let app = oci::router(registry.clone(), Duration::from_secs(60));
        Api {
            _dir: dir,
            app,
            root,
            registry,
            store: Store::Fs,
        }
    }

    /// A registry over a new bucket on the shared moto server.
    fn s3() -> Api {
        let moto = common::moto::shared();
        let name = common::moto::unique_bucket();
        moto.create_bucket(&name);
        Api::s3_on(moto, &name, |_| {})
    }

    /// A registry over the bucket `name` (which exists), as another berthd sharing it would
    /// open it, with `tune` applied to its settings.
    fn s3_on(
        moto: Arc<common::moto::Moto>,
        name: &str,
        tune: impl FnOnce(&mut berth::registry::S3Settings),
    ) -> Api {
        let dir = common::temp_dir();
        let name = name.to_string();
        let prefix = "team-registry".to_string();
        let mut settings = berth::registry::S3Settings {
            bucket: name.clone(),
            region: Some("us-east-1".into()),
            endpoint: Some(moto.url()),
            prefix: prefix.clone(),
            path_style: true,
            credentials_file: Some(moto.credentials_file(dir.path())),
            ca_file: None,
            ..Default::default()
        };
        tune(&mut settings);
        let registry = Registry::open(Backend::S3(settings), true).unwrap();
        let bucket = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(moto.url())
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_bucket_name(&name)
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .build()
            .unwrap();
        let app = oci::router(registry.clone(), Duration::from_secs(60));
        Api {
            root: dir.path().join("unused"),
            _dir: dir,
            app,
            registry,
            store: Store::S3 {
                _moto: moto,
                bucket,
                prefix,
            },
        }
    }

    fn blob_path(&self, d: &Digest) -> std::path::PathBuf {
        common::blob_path(&self.root, d)
    }

    /// The object at `key` (below the store's root), if there is one.
    async fn object(&self, key: &str) -> Option<Vec<u8>> {
        use object_store::ObjectStoreExt;
        match &self.store {
            Store::Fs => std::fs::read(self.root.join(key)).ok(),
            Store::S3 { bucket, prefix, .. } => {
                let path = object_store::path::Path::from(format!("{prefix}/{key}"));
                match bucket.get(&path).await {
                    Ok(r) => Some(r.bytes().await.unwrap().to_vec()),
                    Err(object_store::Error::NotFound { .. }) => None,
                    Err(e) => panic!("{e}"),
                }
            }
        }
    }

    /// True when `key` is a folder (any object lies below it).
    async fn has_below(&self, key: &str) -> bool {
        use futures_util::StreamExt;
        match &self.store {
            Store::Fs => self.root.join(key).is_dir(),
            Store::S3 { bucket, prefix, .. } => {
                let path = object_store::path::Path::from(format!("{prefix}/{key}"));
                object_store::ObjectStore::list(bucket, Some(&path))
                    .next()
                    .await
                    .is_some()
            }
        }
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Resp {
        let mut b = Request::builder()
            .method(method)
            .uri(uri)
            .extension(tester());
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = self
            .app
            .clone()
            .oneshot(b.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        assert_eq!(
            headers.get("docker-distribution-api-version").unwrap(),
            "registry/2.0"
        );
        Resp {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, uri: &str) -> Resp {
        self.call(Method::GET, uri, &[], Vec::new()).await
    }

    /// Monolithic upload; returns the digest.
    async fn push_blob(&self, repo: &str, data: &[u8]) -> Digest {
        let d = Digest::sha256_of(data);
        let r = self
            .call(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
                &[],
                data.to_vec(),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        d
    }

    async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Resp {
        self.call(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("content-type", media_type)],
            body.to_vec(),
        )
        .await
    }
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

fn image_manifest(
    media_type: &str,
    config: &Digest,
    config_len: usize,
    layers: &[(&Digest, usize)],
) -> Vec<u8> {
    let layer_type = if media_type == DOCKER_MANIFEST {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    } else {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    };
    let config_type = if media_type == DOCKER_MANIFEST {
        "application/vnd.docker.container.image.v1+json"
    } else {
        "application/vnd.oci.image.config.v1+json"
    };
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": config_type, "digest": config.to_string(), "size": config_len},
        "layers": layers.iter().map(|(d, n)| json!({"mediaType": layer_type, "digest": d.to_string(), "size": n})).collect::<Vec<_>>(),
    }))
    .unwrap()
}

/// Pushes config + one layer + manifest under `tag`; returns the manifest digest.
async fn push_image(api: &Api, repo: &str, tag: &str, seed: &str) -> (Digest, Vec<u8>) {
    let config = format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"seed\":\"{seed}\"}}");
    let layer = format!("layer bytes {seed}").repeat(100);
    let c = api.push_blob(repo, config.as_bytes()).await;
    let l = api.push_blob(repo, layer.as_bytes()).await;
    let m = image_manifest(OCI_MANIFEST, &c, config.len(), &[(&l, layer.len())]);
    let r = api.put_manifest(repo, tag, OCI_MANIFEST, &m).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    (Digest::sha256_of(&m), m)
}

async fn base_endpoint_and_unknown_routes(api: Api) {
    for uri in ["/v2/", "/v2"] {
        let r = api.get(uri).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let r = api.call(Method::HEAD, "/v2/", &[], Vec::new()).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = api.get("/v2/nothing").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = api.get("/other").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // A route that exists, with a method it does not take.
    let r = api
        .call(Method::POST, "/v2/team/app/tags/list", &[], Vec::new())
        .await;
    r.assert_error(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED");
}

async fn blobs_monolithic_head_get_and_ranges(api: Api) {
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let d = Digest::sha256_of(&data);
    let r = api
        .call(
            Method::POST,
            &format!("/v2/team/app/blobs/uploads/?digest={d}"),
            &[],
            data.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.h("location"), format!("/v2/team/app/blobs/{d}"));
    assert_eq!(r.h("docker-content-digest"), d.to_string());

    let r = api
        .call(
            Method::HEAD,
            &format!("/v2/team/app/blobs/{d}"),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.h("content-length"), "100000");
    assert_eq!(r.h("docker-content-digest"), d.to_string());
    assert!(r.body.is_empty());
    let r = api.get(&format!("/v2/team/app/blobs/{d}")).await;
    assert_eq!((r.status, r.body.len()), (StatusCode::OK, data.len()));
    assert_eq!(r.body, data);
    assert_eq!(r.h("content-type"), "application/octet-stream");

    let r = api
        .call(
            Method::GET,
            &format!("/v2/team/app/blobs/{d}"),
            &[("range", "bytes=10-19")],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body, &data[10..20]);
    assert_eq!(r.h("content-range"), "bytes 10-19/100000");
    assert_eq!(r.h("content-length"), "10");
    let r = api
        .call(
            Method::GET,
            &format!("/v2/team/app/blobs/{d}"),
            &[("range", "bytes=-5")],
            Vec::new(),
        )
        .await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (StatusCode::PARTIAL_CONTENT, &data[99_995..])
    );
    let r = api
        .call(
            Method::GET,
            &format!("/v2/team/app/blobs/{d}"),
            &[("range", "bytes=99990-")],
            Vec::new(),
        )
        .await;
    assert_eq!(r.body, &data[99_990..]);
    let r = api
        .call(
            Method::GET,
            &format!("/v2/team/app/blobs/{d}"),
            &[("range", "bytes=100000-")],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.h("content-range"), "bytes */100000");
    assert_eq!(r.code(), "RANGE_INVALID");

    // The blob belongs to team/app only.
    let r = api.get(&format!("/v2/other/blobs/{d}")).await;
    r.assert_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
    let unknown = Digest::sha256_of(b"nope");
    let r = api
        .call(
            Method::HEAD,
            &format!("/v2/team/app/blobs/{unknown}"),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Stored exactly where registry:2 keeps it.
    assert_eq!(api.object(&blob_key(&d)).await.unwrap(), data);
}

/// The bytes of `path` in the page cache, as util-linux's `fincore` counts them.
fn cached_bytes(path: &std::path::Path) -> u64 {
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .expect("fincore (util-linux-extra; .ci/run installs it)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A pull right after a push (CI pushes, then every node pulls) is served from memory: the
/// commit syncs the blob but leaves its pages cached. The writeback hint the commit gives
/// staged files drops every clean page, and an upload's data is mostly clean by then
/// (synced in the background as it arrived), so given to the blob it emptied the cache of
/// all of it but nothing said so.
#[tokio::test(flavor = "multi_thread")]
async fn a_pushed_blob_stays_in_the_page_cache() {
    // On the disk beside the build, not in /tmp: on a tmpfs the cache is the storage.
    let dir = tempfile::Builder::new()
        .prefix("berth-test-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let api = Api::over(dir.path().to_path_buf(), dir);
    // Three times the 8 MiB an upload writes between its background syncs.
    let data: Vec<u8> = (0u32..24 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let d = api.push_blob("cache/blob", &data).await;
    let path = api.blob_path(&d);
    let size = data.len() as u64;
    let cached = cached_bytes(&path);
    assert!(
        cached >= size * 9 / 10,
        "only {cached} of the blob's {size} bytes are cached after its push"
    );

    // The check can tell: dropping the pages on purpose shows on this filesystem.
    let f = std::fs::File::open(&path).unwrap();
    nix::fcntl::posix_fadvise(
        &f,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .unwrap();
    let dropped = cached_bytes(&path);
    assert!(
        dropped < size / 10,
        "{dropped} bytes still cached after POSIX_FADV_DONTNEED: this filesystem cannot show it"
    );
    let r = api.get(&format!("/v2/cache/blob/blobs/{d}")).await;
    assert_eq!((r.status, r.body == data), (StatusCode::OK, true));
}

async fn chunked_uploads_in_order_status_and_out_of_order(api: Api) {
    let r = api
        .call(Method::POST, "/v2/team/app/blobs/uploads/", &[], Vec::new())
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let loc = r.h("location").to_string();
    assert!(loc.starts_with("/v2/team/app/blobs/uploads/"), "{loc}");
    assert_eq!(r.h("range"), "0-0");
    let id = r.h("docker-upload-uuid").to_string();
    assert!(loc.ends_with(&id));
    assert_eq!(r.h("content-length"), "0");

    let r = api
        .call(
            Method::PATCH,
            &loc,
            &[
                ("content-range", "0-9"),
                ("content-type", "application/octet-stream"),
            ],
            b"0123456789".to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.h("range"), "0-9");
    assert_eq!(r.h("location"), loc);
    // A body that is not what its Content-Range says: 416 with the current range, and the
    // upload is as it was, whether the length was declared (Content-Length) or streamed.
    for headers in [
        vec![("content-range", "10-19"), ("content-length", "5")],
        vec![("content-range", "10-19")],
    ] {
        let r = api
            .call(Method::PATCH, &loc, &headers, b"short".to_vec())
            .await;
        r.assert_error(StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID");
        assert_eq!(r.h("range"), "0-9", "{headers:?}");
        let r = api.call(Method::GET, &loc, &[], Vec::new()).await;
        assert_eq!(r.h("range"), "0-9", "{headers:?}");
    }
    let r = api
        .call(
            Method::PATCH,
            &loc,
            &[("content-range", "10-12")],
            b"toolong".to_vec(),
        )
        .await;
    r.assert_error(StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID");
    assert_eq!(r.h("range"), "0-9");
    // Out of order: refused with 416 and the current range; nothing appended.
    let r = api
        .call(
            Method::PATCH,
            &loc,
            &[("content-range", "20-29")],
            b"abcdefghij".to_vec(),
        )
        .await;
    r.assert_error(StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID");
    assert_eq!(r.h("range"), "0-9");
    let r = api.get(&loc).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(r.h("range"), "0-9");
    assert_eq!(r.h("docker-upload-uuid"), id);
    // A chunk without Content-Range is appended (docker sends those).
    let r = api.call(Method::PATCH, &loc, &[], b"abcde".to_vec()).await;
    assert_eq!(r.h("range"), "0-14");
    // Upload state on disk is registry:2's.
    let session = format!("docker/registry/v2/repositories/team/app/_uploads/{id}");
    assert!(api.object(&format!("{session}/startedat")).await.is_some());

    let whole = b"0123456789abcdeFINAL";
    let d = Digest::sha256_of(whole);
    let r = api
        .call(
            Method::PUT,
            &format!("{loc}?digest={d}"),
            &[("content-range", "15-19")],
            b"FINAL".to_vec(),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.h("location"), format!("/v2/team/app/blobs/{d}"));
    assert_eq!(r.h("docker-content-digest"), d.to_string());
    assert_eq!(
        api.get(&format!("/v2/team/app/blobs/{d}")).await.body,
        whole
    );
    // The session is gone, and its folder with it.
    let r = api.get(&loc).await;
    r.assert_error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN");
    assert!(!api.has_below(&session).await);
}

async fn digest_mismatch_makes_nothing_visible(api: Api) {
    let wrong = Digest::sha256_of(b"something else");
    let r = api
        .call(
            Method::POST,
            &format!("/v2/team/app/blobs/uploads/?digest={wrong}"),
            &[],
            b"payload".to_vec(),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID");
    assert_eq!(
        api.get(&format!("/v2/team/app/blobs/{wrong}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert!(api.object(&blob_key(&wrong)).await.is_none());
    assert!(
        api.object(&blob_key(&Digest::sha256_of(b"payload")))
            .await
            .is_none()
    );

    let r = api
        .call(Method::POST, "/v2/team/app/blobs/uploads/", &[], Vec::new())
        .await;
    let loc = r.h("location").to_string();
    api.call(Method::PATCH, &loc, &[], b"payload".to_vec())
        .await;
    let r = api
        .call(
            Method::PUT,
            &format!("{loc}?digest={wrong}"),
            &[("content-length", "0")],
            Vec::new(),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID");
    assert_eq!(api.get(&loc).await.status, StatusCode::NOT_FOUND);
    // Missing or malformed digest on PUT.
    let r = api
        .call(Method::POST, "/v2/team/app/blobs/uploads/", &[], Vec::new())
        .await;
    let loc = r.h("location").to_string();
    let r = api.call(Method::PUT, &loc, &[], Vec::new()).await;
    r.assert_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID");
    let r = api
        .call(
            Method::PUT,
            &format!("{loc}?digest=sha256:123"),
            &[],
            Vec::new(),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID");
    // Cancel.
    let r = api.call(Method::DELETE, &loc, &[], Vec::new()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = api.call(Method::DELETE, &loc, &[], Vec::new()).await;
    r.assert_error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN");
    let r = api
        .call(
            Method::PATCH,
            "/v2/team/app/blobs/uploads/not-a-uuid",
            &[],
            b"x".to_vec(),
        )
        .await;
    r.assert_error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN");
}

async fn sha512_blobs_and_cross_repository_mount(api: Api) {
    let data = b"sha512 content".to_vec();
    let d = Digest::of(berth::registry::reference::Algorithm::Sha512, &data);
    let r = api
        .call(
            Method::POST,
            &format!("/v2/a/blobs/uploads/?digest={d}"),
            &[],
            data.clone(),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(api.get(&format!("/v2/a/blobs/{d}")).await.body, data);

    let d2 = api.push_blob("a", b"shared layer").await;
    let r = api
        .call(
            Method::POST,
            &format!("/v2/b/blobs/uploads/?mount={d2}&from=a"),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.h("location"), format!("/v2/b/blobs/{d2}"));
    assert_eq!(
        api.get(&format!("/v2/b/blobs/{d2}")).await.body,
        b"shared layer"
    );
    // Cannot mount: an upload session instead (202).
    let r = api
        .call(
            Method::POST,
            &format!("/v2/c/blobs/uploads/?mount={d2}&from=nowhere"),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert!(r.h("location").starts_with("/v2/c/blobs/uploads/"));
    let r = api
        .call(
            Method::POST,
            "/v2/c/blobs/uploads/?mount=sha256:bad&from=a",
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(r.code(), "DIGEST_INVALID");
}

async fn manifests_by_tag_and_digest_with_exact_bytes_and_types(api: Api) {
    let config = b"{\"os\":\"linux\"}";
    let c = api.push_blob("team/app", config).await;
    let l = api.push_blob("team/app", b"layer").await;
    let m = image_manifest(DOCKER_MANIFEST, &c, config.len(), &[(&l, 5)]);
    let md = Digest::sha256_of(&m);
    let r = api
        .put_manifest("team/app", "1.0", DOCKER_MANIFEST, &m)
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.h("location"), format!("/v2/team/app/manifests/{md}"));
    assert_eq!(r.h("docker-content-digest"), md.to_string());
    for reference in ["1.0".to_string(), md.to_string()] {
        let r = api
            .get(&format!("/v2/team/app/manifests/{reference}"))
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, m, "exact bytes");
        assert_eq!(r.h("content-type"), DOCKER_MANIFEST);
        assert_eq!(r.h("docker-content-digest"), md.to_string());
        let r = api
            .call(
                Method::HEAD,
                &format!("/v2/team/app/manifests/{reference}"),
                &[],
                Vec::new(),
            )
            .await;
        assert_eq!(
            (r.status, r.h("content-length")),
            (StatusCode::OK, m.len().to_string().as_str())
        );
        assert!(r.body.is_empty());
    }
    // The type the bytes name needs no record of its own; one they do not name is
    // recorded and served, and replaced by a later push of the same bytes.
    let record = |d: &Digest| format!("docker/registry/v2/_berth/mediatypes/sha256/{}", d.hex());
    assert_eq!(api.object(&record(&md)).await, None);
    let bare = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": c.to_string(), "size": config.len()},
        "layers": [],
    }))
    .unwrap();
    let bd = Digest::sha256_of(&bare);
    for (pushed, served, recorded) in [
        (OCI_MANIFEST, OCI_MANIFEST, None),
        (DOCKER_MANIFEST, DOCKER_MANIFEST, Some(DOCKER_MANIFEST)),
        (OCI_MANIFEST, OCI_MANIFEST, Some(OCI_MANIFEST)),
    ] {
        let r = api.put_manifest("team/app", "bare", pushed, &bare).await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{pushed}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let r = api.get(&format!("/v2/team/app/manifests/{bd}")).await;
        assert_eq!(r.h("content-type"), served, "pushed as {pushed}");
        assert_eq!(
            api.object(&record(&bd)).await,
            recorded.map(|t| t.as_bytes().to_vec()),
            "pushed as {pushed}"
        );
    }
    api.call(
        Method::DELETE,
        &format!("/v2/team/app/manifests/{bd}"),
        &[],
        Vec::new(),
    )
    .await;

    // Pretty-printed bytes hash differently and are kept exactly.
    let pretty = serde_json::to_vec_pretty(&serde_json::from_slice::<Value>(&m).unwrap()).unwrap();
    let pd = Digest::sha256_of(&pretty);
    let r = api
        .put_manifest("team/app", &pd.to_string(), DOCKER_MANIFEST, &pretty)
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        api.get(&format!("/v2/team/app/manifests/{pd}")).await.body,
        pretty
    );
    // PUT by a digest the bytes do not hash to.
    let r = api
        .put_manifest("team/app", &md.to_string(), DOCKER_MANIFEST, &pretty)
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID");

    // Missing blobs.
    let ghost = Digest::sha256_of(b"ghost");
    let bad = image_manifest(OCI_MANIFEST, &c, config.len(), &[(&ghost, 5)]);
    let r = api
        .put_manifest("team/app", "bad", OCI_MANIFEST, &bad)
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN");
    assert_eq!(r.json()["errors"][0]["detail"]["digest"], ghost.to_string());
    // A blob of another repository does not count.
    let bad = image_manifest(OCI_MANIFEST, &c, config.len(), &[(&l, 5)]);
    let r = api.put_manifest("other/app", "x", OCI_MANIFEST, &bad).await;
    assert_eq!(r.code(), "MANIFEST_BLOB_UNKNOWN");
    // Malformed, mismatched type, schema 1, too large.
    for (ct, body) in [
        (OCI_MANIFEST, b"{not json".to_vec()),
        (OCI_INDEX, m.clone()),
        (
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            br#"{"schemaVersion":1}"#.to_vec(),
        ),
    ] {
        let r = api.put_manifest("team/app", "bad", ct, &body).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
            "{ct}"
        );
    }
    let huge = vec![b' '; 4 * 1024 * 1024 + 1];
    let r = api
        .put_manifest("team/app", "huge", OCI_MANIFEST, &huge)
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Nothing refused became a tag.
    let tags = api.get("/v2/team/app/tags/list").await.json();
    assert_eq!(tags, json!({"name": "team/app", "tags": ["1.0"]}));
    // Unknown manifest and unknown repository.
    let r = api.get("/v2/team/app/manifests/nope").await;
    r.assert_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
    let r = api.get("/v2/nobody/manifests/latest").await;
    r.assert_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN");
}

async fn indexes_need_their_children(api: Api) {
    let (amd, amd_bytes) = push_image(&api, "multi", "amd64", "a").await;
    let (arm, arm_bytes) = push_image(&api, "multi", "arm64", "b").await;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": amd.to_string(), "size": amd_bytes.len(), "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": OCI_MANIFEST, "digest": arm.to_string(), "size": arm_bytes.len(), "platform": {"architecture": "arm64", "os": "linux"}},
        ]
    }))
    .unwrap();
    let r = api.put_manifest("multi", "latest", OCI_INDEX, &index).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = api.get("/v2/multi/manifests/latest").await;
    assert_eq!((r.h("content-type"), r.body.clone()), (OCI_INDEX, index));
    let ghost = Digest::sha256_of(b"ghost manifest");
    let bad = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{"mediaType": OCI_MANIFEST, "digest": ghost.to_string(), "size": 3}]})).unwrap();
    let r = api.put_manifest("multi", "bad", OCI_INDEX, &bad).await;
    assert_eq!(r.code(), "MANIFEST_BLOB_UNKNOWN");
}

async fn tags_and_catalog_paginate_with_link(api: Api) {
    for (repo, tag) in [("b/x", "t1"), ("a", "t1"), ("c", "t1")] {
        push_image(&api, repo, tag, repo).await;
    }
    for tag in ["v3", "v1", "v2", "latest"] {
        push_image(&api, "a", tag, tag).await;
    }
    let r = api.get("/v2/_catalog").await;
    assert_eq!(r.json(), json!({"repositories": ["a", "b/x", "c"]}));
    assert_eq!(r.h("link"), "");
    let r = api.get("/v2/_catalog?n=2").await;
    assert_eq!(r.json(), json!({"repositories": ["a", "b/x"]}));
    assert_eq!(r.h("link"), "</v2/_catalog?last=b/x&n=2>; rel=\"next\"");
    let r = api.get("/v2/_catalog?n=2&last=b/x").await;
    assert_eq!(r.json(), json!({"repositories": ["c"]}));
    assert_eq!(r.h("link"), "");

    let r = api.get("/v2/a/tags/list").await;
    assert_eq!(r.json()["tags"], json!(["latest", "t1", "v1", "v2", "v3"]));
    let r = api.get("/v2/a/tags/list?n=2&last=t1").await;
    assert_eq!(r.json()["tags"], json!(["v1", "v2"]));
    assert_eq!(r.h("link"), "</v2/a/tags/list?last=v2&n=2>; rel=\"next\"");
    let r = api.get("/v2/a/tags/list?n=0").await;
    assert_eq!(r.json()["tags"], json!([]));
    let r = api.get("/v2/a/tags/list?n=-1").await;
    r.assert_error(StatusCode::BAD_REQUEST, "PAGINATION_NUMBER_INVALID");
    let r = api.get("/v2/zzz/tags/list").await;
    r.assert_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN");
}

async fn referrers_list_manifests_by_subject_with_filter(api: Api) {
    let (subject, subject_bytes) = push_image(&api, "app", "1.0", "s").await;
    let empty = api.push_blob("app", b"{}").await;
    let sig = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty.to_string(), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty.to_string(), "size": 2}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject.to_string(), "size": subject_bytes.len()},
        "annotations": {"org.example.by": "ci"},
    }))
    .unwrap();
    let sig_digest = Digest::sha256_of(&sig);
    let r = api
        .put_manifest("app", &sig_digest.to_string(), OCI_MANIFEST, &sig)
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.h("oci-subject"), subject.to_string());
    let sbom = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.example.sbom", "digest": empty.to_string(), "size": 2},
        "layers": [],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject.to_string(), "size": subject_bytes.len()},
    }))
    .unwrap();
    assert_eq!(
        api.put_manifest("app", "sbom", OCI_MANIFEST, &sbom)
            .await
            .status,
        StatusCode::CREATED
    );

    let r = api.get(&format!("/v2/app/referrers/{subject}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.h("content-type"), OCI_INDEX);
    assert_eq!(r.h("oci-filters-applied"), "");
    let v = r.json();
    assert_eq!(v["schemaVersion"], 2);
    let mut types: Vec<String> = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["artifactType"].as_str().unwrap().to_string())
        .collect();
    types.sort();
    assert_eq!(
        types,
        [
            "application/vnd.example.sbom",
            "application/vnd.example.signature"
        ]
    );
    let r = api
        .get(&format!(
            "/v2/app/referrers/{subject}?artifactType=application/vnd.example.signature"
        ))
        .await;
    assert_eq!(r.h("oci-filters-applied"), "artifactType");
    let v = r.json();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(v["manifests"][0]["digest"], sig_digest.to_string());
    assert_eq!(v["manifests"][0]["size"], sig.len());
    assert_eq!(v["manifests"][0]["annotations"]["org.example.by"], "ci");
    // No referrers: an empty index, still 200.
    let r = api.get(&format!("/v2/app/referrers/{sig_digest}")).await;
    assert_eq!(
        (r.status, r.json()["manifests"].clone()),
        (StatusCode::OK, json!([]))
    );
    let r = api.get("/v2/app/referrers/sha256:nothex").await;
    r.assert_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID");
}

async fn deletes_of_tags_manifests_and_blobs(api: Api) {
    let (d, _) = push_image(&api, "app", "1.0", "x").await;
    let r = api
        .put_manifest(
            "app",
            "also",
            OCI_MANIFEST,
            &api.get("/v2/app/manifests/1.0").await.body,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    // Untag.
    let r = api
        .call(Method::DELETE, "/v2/app/manifests/also", &[], Vec::new())
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(
        api.get("/v2/app/manifests/also").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get(&format!("/v2/app/manifests/{d}")).await.status,
        StatusCode::OK
    );
    // Delete by digest: the manifest and the tags pointing at it go.
    let r = api
        .call(
            Method::DELETE,
            &format!("/v2/app/manifests/{d}"),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(
        api.get(&format!("/v2/app/manifests/{d}")).await.code(),
        "MANIFEST_UNKNOWN"
    );
    assert_eq!(
        api.get("/v2/app/manifests/1.0").await.code(),
        "MANIFEST_UNKNOWN"
    );
    assert_eq!(api.get("/v2/app/tags/list").await.json()["tags"], json!([]));
    let r = api
        .call(
            Method::DELETE,
            &format!("/v2/app/manifests/{d}"),
            &[],
            Vec::new(),
        )
        .await;
    r.assert_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
    // Blobs.
    let b = api.push_blob("app", b"blob to delete").await;
    let r = api
        .call(
            Method::DELETE,
            &format!("/v2/app/blobs/{b}"),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(
        api.call(Method::HEAD, &format!("/v2/app/blobs/{b}"), &[], Vec::new())
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let r = api
        .call(
            Method::DELETE,
            &format!("/v2/app/blobs/{b}"),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(r.code(), "BLOB_UNKNOWN");

    // With deletes switched off.
    let dir = common::temp_dir();
    let app = oci::router(
        Registry::open(Backend::Filesystem(dir.path().to_path_buf()), false).unwrap(),
        Duration::from_secs(60),
    );
    let r = app
        .oneshot(
            Request::builder()
                .method(Method::DELETE)
                .uri(format!("/v2/app/manifests/{d}"))
                .extension(tester())
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
}

async fn malformed_names_tags_and_digests_are_client_errors(api: Api) {
    for (uri, code) in [
        ("/v2/Team/App/tags/list", "NAME_INVALID"),
        ("/v2/a//b/tags/list", "NAME_INVALID"),
        (
            "/v2/app/blobs/md5:d41d8cd98f00b204e9800998ecf8427e",
            "DIGEST_INVALID",
        ),
    ] {
        let r = api.get(uri).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::BAD_REQUEST, code),
            "{uri}"
        );
        assert!(
            r.json()["errors"][0]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        assert_eq!(r.h("content-type"), "application/json");
    }
    // distribution-spec v1.1: a manifest that cannot be found is 404 MANIFEST_UNKNOWN,
    // and one named by a malformed tag or digest cannot be found; a PUT is refused as
    // malformed.
    for reference in [".INVALID_MANIFEST_NAME", "-bad", "sha256:zz"] {
        for method in [Method::GET, Method::HEAD, Method::DELETE] {
            let r = api
                .call(
                    method.clone(),
                    &format!("/v2/app/manifests/{reference}"),
                    &[],
                    Vec::new(),
                )
                .await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{method} {reference}");
            if method != Method::HEAD {
                assert_eq!(r.code(), "MANIFEST_UNKNOWN", "{method} {reference}");
            }
        }
        let r = api
            .put_manifest("app", reference, OCI_MANIFEST, b"{}")
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "PUT {reference}");
        assert!(
            ["TAG_INVALID", "MANIFEST_INVALID", "DIGEST_INVALID"].contains(&r.code().as_str()),
            "{}",
            r.code()
        );
    }
    // An encoded path escape never reaches storage.
    let r = api.get("/v2/app/blobs/sha256:..%2F..%2Fetc").await;
    assert!(r.status.is_client_error(), "{}", r.status);
}

async fn concurrent_pushes_of_one_blob_and_one_tag_are_safe(api: Api) {
    let api = Arc::new(api);
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 241) as u8).collect();
    let d = Digest::sha256_of(&data);
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (api, data) = (api.clone(), data.clone());
        tasks.push(tokio::spawn(async move {
            // Chunked, so the uploads interleave on disk.
            let r = api
                .call(Method::POST, "/v2/race/blobs/uploads/", &[], Vec::new())
                .await;
            let loc = r.h("location").to_string();
            for (i, chunk) in data.chunks(300_000).enumerate() {
                let start = i * 300_000;
                let range = format!("{}-{}", start, start + chunk.len() - 1);
                let r = api
                    .call(
                        Method::PATCH,
                        &loc,
                        &[("content-range", &range)],
                        chunk.to_vec(),
                    )
                    .await;
                assert_eq!(r.status, StatusCode::ACCEPTED);
            }
            let d = Digest::sha256_of(&data);
            api.call(
                Method::PUT,
                &format!("{loc}?digest={d}"),
                &[("content-length", "0")],
                Vec::new(),
            )
            .await
            .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::CREATED);
    }
    assert_eq!(api.get(&format!("/v2/race/blobs/{d}")).await.body, data);

    let mut tasks = Vec::new();
    for i in 0..8 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            push_image(&api, "race", "latest", &i.to_string()).await.0
        }));
    }
    let mut pushed = Vec::new();
    for t in tasks {
        pushed.push(t.await.unwrap());
    }
    let r = api.get("/v2/race/manifests/latest").await;
    assert_eq!(r.status, StatusCode::OK);
    let current = Digest::sha256_of(&r.body);
    assert!(pushed.contains(&current));
    for d in &pushed {
        assert_eq!(
            api.get(&format!("/v2/race/manifests/{d}")).await.status,
            StatusCode::OK
        );
    }
}

// ---- over loopback mutual TLS ----

#[tokio::test(flavor = "multi_thread")]
async fn only_clients_with_a_valid_berth_certificate_reach_http() {
    use berth::client::IssueRequest;
    use berth::pki::{CertKind, KeyAlgorithm, Names};
    let d = common::TestDaemon::with_registry();
    let addr = d.registry[0];
    let c = d.client().await;
    let info = c.info().await.unwrap();
    assert_eq!(info.registry_listeners, vec![addr.to_string()]);
    let me = c
        .issue(IssueRequest {
            kind: CertKind::Client,
            names: Names {
                common_name: "me".into(),
                ..Names::default()
            },
            validity_days: None,
            key_algorithm: KeyAlgorithm::EcdsaP256,
            return_key: true,
        })
        .await
        .unwrap();
    let key = me.key.as_ref().unwrap().secret_pem().to_string();
    let ca = me.ca_pem.clone();

    for alpn in [&b"http/1.1"[..], &b"h2"[..]] {
        let (status, body) = common::tls_get(
            addr,
            common::client_config(&ca, Some((&me.record.certificate_pem, &key)), alpn),
            "/v2/",
        )
        .await
        .unwrap();
        assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"{}"[..]));
    }
    // The registry's certificate covers localhost and the loopback addresses.
    let (rec, _) = {
        let list = c
            .list(Some(CertKind::Server), Some("berth registry".into()))
            .await
            .unwrap();
        (list[0].clone(), ())
    };
    assert!(rec.names.dns_names.contains(&"localhost".to_string()));
    assert!(
        rec.names
            .ip_addresses
            .contains(&"127.0.0.1".parse().unwrap())
    );
    assert!(rec.names.ip_addresses.contains(&"::1".parse().unwrap()));
    assert!(common::holds_key(&d.config.state_dir, &rec.serial));

    // No certificate.
    assert!(
        common::tls_get(addr, common::client_config(&ca, None, b"http/1.1"), "/v2/")
            .await
            .is_err()
    );
    // Another CA's certificate.
    let rogue_key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let rogue_ca = rcgen::CertifiedIssuer::self_signed(p, rogue_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, "me");
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let leaf = p.signed_by(&leaf_key, &rogue_ca).unwrap();
    assert!(
        common::tls_get(
            addr,
            common::client_config(
                &ca,
                Some((&leaf.pem(), &leaf_key.serialize_pem())),
                b"http/1.1"
            ),
            "/v2/"
        )
        .await
        .is_err()
    );
    // An expired certificate from the berth CA itself (signed here with the CA's key).
    let ca_key = rcgen::KeyPair::from_pem(
        &std::fs::read_to_string(d.config.state_dir.join("pki/ca.key")).unwrap(),
    )
    .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca, ca_key).unwrap();
    let old_key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, "old");
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2020, 2, 1);
    let old = p.signed_by(&old_key, &issuer).unwrap();
    assert!(
        common::tls_get(
            addr,
            common::client_config(
                &ca,
                Some((&old.pem(), &old_key.serialize_pem())),
                b"http/1.1"
            ),
            "/v2/"
        )
        .await
        .is_err()
    );
    // A revoked certificate: refused from the next connection on.
    c.revoke(&me.record.serial).await.unwrap();
    assert!(
        common::tls_get(
            addr,
            common::client_config(&ca, Some((&me.record.certificate_pem, &key)), b"http/1.1"),
            "/v2/"
        )
        .await
        .is_err()
    );
}

// ---- operations: gc, fsck, inspect, uploads, events ----

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use berth::registry::GcOptions;

const HOUR: Duration = Duration::from_secs(3600);

/// Makes every file under `dir` look `by` older, as if written long ago.
fn age_all(dir: &std::path::Path, by: Duration) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            age_all(&p, by);
        } else {
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(SystemTime::now() - by).unwrap();
        }
    }
}

fn gc_opts(delete_untagged: bool) -> GcOptions {
    GcOptions {
        dry_run: false,
        delete_untagged,
        grace: HOUR,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_in_a_loop_never_breaks_a_push_in_progress() {
    let api = Arc::new(Api::new());
    let garbage = api.push_blob("old", b"garbage nobody references").await;
    let (kept, _) = push_image(&api, "app", "1.0", "kept").await;
    let (untagged, _) = push_image(&api, "app", "doomed", "untagged").await;
    assert_eq!(
        api.call(Method::DELETE, "/v2/app/manifests/doomed", &[], Vec::new())
            .await
            .status,
        StatusCode::ACCEPTED
    );
    age_all(api.root.as_path(), 2 * HOUR);

    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let gc = {
        let (registry, stop, rounds) = (api.registry.clone(), stop.clone(), rounds.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                registry.gc(&tester(), gc_opts(true)).await.unwrap();
                rounds.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        })
    };
    // Push image after image, letting a whole GC round run between the layer uploads and
    // the manifest PUT: the window in which registry:2's GC deletes the new layers.
    for i in 0..12 {
        let config = format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"n\":{i}}}");
        let layer = format!("layer of push {i}").repeat(1000);
        let c = api.push_blob("live", config.as_bytes()).await;
        let l = api.push_blob("live", layer.as_bytes()).await;
        let before = rounds.load(Ordering::SeqCst);
        while rounds.load(Ordering::SeqCst) < before + 2 {
            tokio::task::yield_now().await;
        }
        let m = image_manifest(OCI_MANIFEST, &c, config.len(), &[(&l, layer.len())]);
        let r = api
            .put_manifest("live", &format!("v{i}"), OCI_MANIFEST, &m)
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "push {i}: {}",
            String::from_utf8_lossy(&r.body)
        );
        for d in [&c, &l] {
            assert_eq!(
                api.get(&format!("/v2/live/blobs/{d}")).await.status,
                StatusCode::OK,
                "push {i} lost {d}"
            );
        }
    }
    stop.store(true, Ordering::SeqCst);
    gc.await.unwrap();
    assert!(rounds.load(Ordering::SeqCst) >= 24);
    // Every pushed image is whole after all those rounds.
    for i in 0..12 {
        let r = api.get(&format!("/v2/live/manifests/v{i}")).await;
        assert_eq!(r.status, StatusCode::OK);
        let m: Value = serde_json::from_slice(&r.body).unwrap();
        for d in [&m["config"]["digest"], &m["layers"][0]["digest"]] {
            assert_eq!(
                api.get(&format!("/v2/live/blobs/{}", d.as_str().unwrap()))
                    .await
                    .status,
                StatusCode::OK
            );
        }
    }
    // And the collector did collect: old garbage and the untagged manifest are gone.
    assert!(!api.blob_path(&garbage).exists());
    assert_eq!(
        api.get(&format!("/v2/app/manifests/{untagged}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert!(!api.blob_path(&untagged).exists());
    assert_eq!(
        api.get(&format!("/v2/app/manifests/{kept}")).await.status,
        StatusCode::OK
    );
}

/// The lock alone, with no grace period to hide behind: for every push, a GC round with
/// grace 0 starts at the same moment as the manifest PUT, on another thread. Either GC wins
/// (the fresh blobs go and the PUT is refused with MANIFEST_BLOB_UNKNOWN) or the PUT does
/// (the image is whole and GC keeps it); an accepted manifest whose blobs were swept would
/// be distribution#3045. The check and the write happen under the lock GC takes
/// exclusively; without it this test fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_lock_alone_keeps_every_accepted_image_whole() {
    let api = Api::new();
    // Bulk for each round to walk, so a round's mark and sweep are far enough apart.
    for i in 0..100 {
        api.push_blob("bulk", format!("old garbage {i}").as_bytes())
            .await;
    }
    let zero = GcOptions {
        dry_run: false,
        delete_untagged: false,
        grace: Duration::ZERO,
    };
    let (mut accepted, mut refused) = (Vec::new(), 0);
    for i in 0..150 {
        let config = format!("{{\"os\":\"linux\",\"i\":{i}}}");
        let layer = format!("layer {i}").repeat(200);
        let c = api.push_blob("race", config.as_bytes()).await;
        let l = api.push_blob("race", layer.as_bytes()).await;
        let m = image_manifest(OCI_MANIFEST, &c, config.len(), &[(&l, layer.len())]);
        let tag = format!("v{i}");
        let registry = api.registry.clone();
        let opts = zero.clone();
        let round = tokio::spawn(async move { registry.gc(&tester(), opts).await.unwrap() });
        let r = api.put_manifest("race", &tag, OCI_MANIFEST, &m).await;
        round.await.unwrap();
        match r.status {
            StatusCode::CREATED => accepted.push((tag, c, l)),
            _ => {
                r.assert_error(StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN");
                refused += 1;
            }
        }
    }
    api.registry.gc(&tester(), zero).await.unwrap();
    assert!(
        !accepted.is_empty(),
        "no push got through ({refused} refused)"
    );
    for (tag, c, l) in &accepted {
        assert_eq!(
            api.get(&format!("/v2/race/manifests/{tag}")).await.status,
            StatusCode::OK
        );
        for d in [c, l] {
            assert_eq!(
                api.get(&format!("/v2/race/blobs/{d}")).await.status,
                StatusCode::OK,
                "{tag} was accepted, then lost {d} to GC ({} accepted, {refused} refused)",
                accepted.len()
            );
        }
    }
}

#[tokio::test]
async fn old_blobs_reused_by_a_new_push_are_protected() {
    let api = Api::new();
    let layer = b"a layer uploaded long ago".to_vec();
    let config = b"{\"os\":\"linux\"}".to_vec();
    let l = api.push_blob("app", &layer).await;
    let c = api.push_blob("app", &config).await;
    age_all(api.root.as_path(), 2 * HOUR);
    // Dry run reports what would go and frees nothing.
    let dry = api
        .registry
        .gc(
            &tester(),
            GcOptions {
                dry_run: true,
                ..gc_opts(false)
            },
        )
        .await
        .unwrap();
    assert_eq!(dry.blobs_deleted.len(), 2);
    assert_eq!(dry.bytes_freed, (layer.len() + config.len()) as u64);
    assert!(api.blob_path(&l).exists());
    // A new push uploads the same bytes again (the blob exists: dedupe) and mounts the
    // config from another repository; GC runs before the manifest arrives.
    assert_eq!(api.push_blob("app", &layer).await, l);
    let r = api
        .call(
            Method::POST,
            &format!("/v2/other/blobs/uploads/?mount={c}&from=app"),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = api
        .call(
            Method::POST,
            &format!("/v2/other/blobs/uploads/?mount={l}&from=app"),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let report = api.registry.gc(&tester(), gc_opts(false)).await.unwrap();
    assert!(report.blobs_deleted.is_empty(), "{report:?}");
    assert_eq!(report.blobs_young, 2);
    let m = image_manifest(OCI_MANIFEST, &c, config.len(), &[(&l, layer.len())]);
    assert_eq!(
        api.put_manifest("other", "1", OCI_MANIFEST, &m)
            .await
            .status,
        StatusCode::CREATED
    );
    age_all(api.root.as_path(), 2 * HOUR);
    let report = api.registry.gc(&tester(), gc_opts(false)).await.unwrap();
    assert!(
        report.blobs_deleted.is_empty(),
        "referenced now: {report:?}"
    );
    assert_eq!(report.blobs_in_use, 3);
}

#[tokio::test]
async fn gc_keeps_index_children_and_referrers_of_tagged_images() {
    let api = Api::new();
    let (amd, amd_b) = push_image(&api, "multi", "amd", "a").await;
    let (arm, arm_b) = push_image(&api, "multi", "arm", "b").await;
    let index = serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": amd.to_string(), "size": amd_b.len()},
        {"mediaType": OCI_MANIFEST, "digest": arm.to_string(), "size": arm_b.len()}]}),
    )
    .unwrap();
    assert_eq!(
        api.put_manifest("multi", "latest", OCI_INDEX, &index)
            .await
            .status,
        StatusCode::CREATED
    );
    let empty = api.push_blob("multi", b"{}").await;
    let sig = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.example.sig",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty.to_string(), "size": 2}, "layers": [],
        "subject": {"mediaType": OCI_INDEX, "digest": Digest::sha256_of(&index).to_string(), "size": index.len()}}))
    .unwrap();
    let sig_d = Digest::sha256_of(&sig);
    assert_eq!(
        api.put_manifest("multi", &sig_d.to_string(), OCI_MANIFEST, &sig)
            .await
            .status,
        StatusCode::CREATED
    );
    // Only the index is tagged now.
    for t in ["amd", "arm"] {
        api.call(
            Method::DELETE,
            &format!("/v2/multi/manifests/{t}"),
            &[],
            Vec::new(),
        )
        .await;
    }
    age_all(api.root.as_path(), 2 * HOUR);
    let r = api.registry.gc(&tester(), gc_opts(true)).await.unwrap();
    assert!(r.manifests_deleted.is_empty(), "{r:?}");
    assert!(r.blobs_deleted.is_empty(), "{r:?}");
    for d in [&amd, &arm, &sig_d] {
        assert_eq!(
            api.get(&format!("/v2/multi/manifests/{d}")).await.status,
            StatusCode::OK
        );
    }
    // Untag the index: everything becomes unreachable and goes.
    api.call(
        Method::DELETE,
        "/v2/multi/manifests/latest",
        &[],
        Vec::new(),
    )
    .await;
    let r = api.registry.gc(&tester(), gc_opts(true)).await.unwrap();
    assert_eq!(r.manifests_deleted.len(), 4, "{r:?}");
    assert_eq!(
        api.get(&format!("/v2/multi/manifests/{amd}")).await.status,
        StatusCode::NOT_FOUND
    );
    // The signature's entry in the referrers index went with it.
    let entries = api.root.join(format!(
        "docker/registry/v2/repositories/multi/_referrers/sha256/{}/sha256",
        Digest::sha256_of(&index).hex()
    ));
    let left: Vec<_> = std::fs::read_dir(&entries)
        .map(|rd| rd.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?} left in {}", entries.display());
}

#[tokio::test]
async fn fsck_finds_corruption_and_quarantines_on_repair() {
    let api = Api::new();
    let (m, _) = push_image(&api, "app", "1.0", "fsck").await;
    let report = api.registry.fsck(&tester(), false).await.unwrap();
    assert_eq!((report.blobs_checked, report.problems.len()), (3, 0));
    let manifest: Value =
        serde_json::from_slice(&api.get("/v2/app/manifests/1.0").await.body).unwrap();
    let layer: Digest = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let path = api.blob_path(&layer);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    // A dangling tag too: its manifest revision is gone.
    std::fs::remove_dir_all(
        api.root
            .join("docker/registry/v2")
            .join("repositories/app/_manifests/revisions/sha256")
            .join(m.hex()),
    )
    .unwrap();
    let report = api.registry.fsck(&tester(), false).await.unwrap();
    let kinds: Vec<&str> = report.problems.iter().map(|p| p.kind.as_str()).collect();
    assert!(
        kinds.contains(&"corrupt-blob") && kinds.contains(&"dangling-tag"),
        "{kinds:?}"
    );
    assert!(path.exists(), "without --repair nothing moves");
    let report = api.registry.fsck(&tester(), true).await.unwrap();
    let corrupt = report
        .problems
        .iter()
        .find(|p| p.kind == "corrupt-blob")
        .unwrap();
    assert!(corrupt.detail.contains("quarantine"), "{}", corrupt.detail);
    assert!(!path.exists());
    let q = api
        .root
        .join("docker/registry/v2")
        .join("_berth/quarantine/sha256")
        .join(layer.hex())
        .join("data");
    assert_eq!(std::fs::read(q).unwrap(), bytes, "kept, not deleted");
    assert_eq!(
        api.get(&format!("/v2/app/blobs/{layer}")).await.status,
        StatusCode::NOT_FOUND
    );
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// sha256 with the sha2 crate directly, so expectations do not come from berth's code.
fn sha(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

async fn inspect_computes_diff_ids_and_chain_ids(api: Api) {
    let tars: Vec<Vec<u8>> = (0..3)
        .map(|i| format!("tar stream {i} ").repeat(5000).into_bytes())
        .collect();
    let stored = [gzip(&tars[0]), gzip(&tars[1]), tars[2].clone()];
    let diff_ids: Vec<String> = tars.iter().map(|t| sha(t)).collect();
    let chain: Vec<String> = {
        let mut c = vec![diff_ids[0].clone()];
        for d in &diff_ids[1..] {
            let prev = c.last().unwrap().clone();
            c.push(sha(format!("{prev} {d}").as_bytes()));
        }
        c
    };
    // The config records the first two correctly and lies about the third.
    let config = serde_json::to_vec(&json!({"architecture": "arm64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_ids[0], diff_ids[1], sha(b"wrong")]}}))
    .unwrap();
    let c = api.push_blob("img", &config).await;
    let mut layers = Vec::new();
    for s in &stored {
        layers.push((api.push_blob("img", s).await, s.len()));
    }
    let m = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": c.to_string(), "size": config.len()},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layers[0].0.to_string(), "size": layers[0].1},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layers[1].0.to_string(), "size": layers[1].1},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layers[2].0.to_string(), "size": layers[2].1}]}))
    .unwrap();
    assert_eq!(
        api.put_manifest("img", "1", OCI_MANIFEST, &m).await.status,
        StatusCode::CREATED
    );
    let info = api
        .registry
        .inspect(&tester(), &"img".parse().unwrap(), &"1".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(info.digest.to_string(), sha(&m));
    assert_eq!(
        info.config_digest.as_ref().unwrap().to_string(),
        sha(&config)
    );
    assert_eq!(
        (info.os.as_deref(), info.architecture.as_deref()),
        (Some("linux"), Some("arm64"))
    );
    let got: Vec<String> = info
        .layers
        .iter()
        .map(|l| l.diff_id.as_ref().unwrap().to_string())
        .collect();
    assert_eq!(got, diff_ids);
    let got: Vec<String> = info
        .layers
        .iter()
        .map(|l| l.chain_id.as_ref().unwrap().to_string())
        .collect();
    assert_eq!(got, chain);
    let comp: Vec<&str> = info.layers.iter().map(|l| l.compression.as_str()).collect();
    assert_eq!(comp, ["gzip", "gzip", "none"]);
    let matches: Vec<Option<bool>> = info.layers.iter().map(|l| l.diff_id_matches).collect();
    assert_eq!(matches, [Some(true), Some(true), Some(false)]);
}

#[tokio::test]
async fn stale_uploads_are_listed_and_purged_fresh_ones_kept() {
    let api = Api::new();
    let old = api
        .call(Method::POST, "/v2/app/blobs/uploads/", &[], Vec::new())
        .await
        .h("docker-upload-uuid")
        .to_string();
    api.call(
        Method::PATCH,
        &format!("/v2/app/blobs/uploads/{old}"),
        &[],
        b"partial".to_vec(),
    )
    .await;
    let fresh = api
        .call(Method::POST, "/v2/app/blobs/uploads/", &[], Vec::new())
        .await
        .h("docker-upload-uuid")
        .to_string();
    let started = api
        .root
        .join("docker/registry/v2")
        .join("repositories/app/_uploads")
        .join(&old)
        .join("startedat");
    std::fs::write(&started, "2020-01-01T00:00:00Z").unwrap();
    let list = api.registry.uploads(&tester()).await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!((list[0].id.as_str(), list[0].size), (old.as_str(), 7));
    let dry = api
        .registry
        .purge_uploads(&tester(), Some(24 * HOUR), true)
        .await
        .unwrap();
    assert_eq!(dry.len(), 1);
    assert!(started.exists());
    let purged = api
        .registry
        .purge_uploads(&tester(), Some(24 * HOUR), false)
        .await
        .unwrap();
    assert_eq!(purged[0].id, old);
    assert_eq!(
        api.get(&format!("/v2/app/blobs/uploads/{old}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get(&format!("/v2/app/blobs/uploads/{fresh}"))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
}

async fn events_report_pushes_pulls_and_deletes_and_never_block(api: Api) {
    let mut rx = api.registry.subscribe();
    let (d, _) = push_image(&api, "ev", "1.0", "e").await;
    api.get("/v2/ev/manifests/1.0").await;
    api.call(Method::DELETE, "/v2/ev/manifests/1.0", &[], Vec::new())
        .await;
    let mut seen = Vec::new();
    while let Ok(e) = rx.try_recv() {
        seen.push(format!(
            "{:?} {:?} {} {}",
            e.action,
            e.target,
            e.repository,
            e.tag.unwrap_or_default()
        ));
    }
    assert_eq!(
        seen,
        [
            "Push Blob ev ",
            "Push Blob ev ",
            "Push Manifest ev 1.0",
            "Pull Manifest ev 1.0",
            "Delete Tag ev 1.0"
        ]
    );
    let _ = d;
    // A subscriber that never reads does not slow publishing; it learns it fell behind.
    let mut slow = api.registry.subscribe();
    let (d, _) = push_image(&api, "ev", "2.0", "f").await;
    for _ in 0..1100 {
        assert_eq!(
            api.get(&format!("/v2/ev/manifests/{d}")).await.status,
            StatusCode::OK
        );
    }
    assert!(matches!(
        slow.try_recv(),
        Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_))
    ));
}

#[tokio::test]
async fn a_blob_a_client_was_told_exists_survives_until_its_manifest() {
    let api = Api::new();
    // Written by an earlier berthd (or registry:2): old, unreferenced, linked in "app".
    let config = b"{\"os\":\"linux\"}".to_vec();
    let layer = b"a layer everyone already has".to_vec();
    let c = api.push_blob("app", &config).await;
    let l = api.push_blob("app", &layer).await;
    let j = api.push_blob("junk", b"nobody asked for this").await;
    age_all(api.root.as_path(), 2 * HOUR);
    // A fresh berthd process over the same folder: nothing in memory about these blobs.
    let fresh = Api::over(api.root.clone(), common::temp_dir());
    // docker HEADs each layer and skips the upload of those that exist...
    for d in [&c, &l] {
        let r = fresh
            .call(Method::HEAD, &format!("/v2/app/blobs/{d}"), &[], Vec::new())
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // ...GC runs in between...
    let report = fresh.registry.gc(&tester(), gc_opts(false)).await.unwrap();
    // ...only the blob nobody asked about goes...
    assert_eq!(report.blobs_deleted.len(), 1, "{report:?}");
    assert_eq!(report.blobs_deleted[0].0, j.to_string());
    // ...and the manifest that relies on the others is accepted.
    let m = image_manifest(OCI_MANIFEST, &c, config.len(), &[(&l, layer.len())]);
    assert_eq!(
        fresh
            .put_manifest("app", "1", OCI_MANIFEST, &m)
            .await
            .status,
        StatusCode::CREATED
    );
}

/// What a crash mid-write leaves (a blob folder with only `.data.tmp-*`, a tag folder with
/// only `current/.link.tmp-*`): nothing trips over it, fsck reports it, `--repair` and GC
/// remove it once it is past the grace period, and a young one (a write in progress)
/// is left alone.
#[tokio::test(flavor = "multi_thread")]
async fn crash_leftovers_are_reported_and_cleaned() {
    let api = Api::new();
    let (digest, _) = push_image(&api, "team/app", "1.0", "leftovers").await;
    let v2 = api.root.join("docker/registry/v2");
    let make = |young: bool| {
        let blob = v2.join(
            "blobs/sha256/ab/ab00000000000000000000000000000000000000000000000000000000000000",
        );
        let tag = v2.join("repositories/team/app/_manifests/tags/ghost/current");
        for (dir, name) in [
            (&blob, ".data.tmp-0123456789ab"),
            (&tag, ".link.tmp-0123456789ab"),
        ] {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join(name), b"half").unwrap();
        }
        if !young {
            age_all(&blob, Duration::from_secs(3600));
            age_all(&tag, Duration::from_secs(3600));
        }
        (blob, tag.parent().unwrap().to_path_buf())
    };
    let (blob, tag) = make(false);
    // Nothing trips over them.
    let tags = api.get("/v2/team/app/tags/list").await.json();
    assert_eq!(tags["tags"], json!(["1.0"]));
    assert_eq!(
        api.get(&format!("/v2/team/app/manifests/{digest}"))
            .await
            .status,
        StatusCode::OK
    );
    let kinds = |r: &berth::registry::FsckReport| -> Vec<String> {
        r.problems.iter().map(|p| p.kind.clone()).collect()
    };
    let r = api.registry.fsck(&tester(), false).await.unwrap();
    assert_eq!(kinds(&r), ["temp-leftover", "temp-leftover"], "{r:?}");
    assert!(blob.exists() && tag.exists());
    let r = api.registry.fsck(&tester(), true).await.unwrap();
    assert!(
        r.problems.iter().all(|p| p.detail.ends_with("; removed")),
        "{r:?}"
    );
    assert!(!blob.exists() && !tag.exists());
    assert!(
        api.registry
            .fsck(&tester(), false)
            .await
            .unwrap()
            .problems
            .is_empty()
    );
    // GC removes old ones too, and keeps young ones.
    let (blob, tag) = make(false);
    api.registry.gc(&tester(), gc_opts(false)).await.unwrap();
    assert!(!blob.exists() && !tag.exists());
    let (blob, tag) = make(true);
    api.registry.gc(&tester(), gc_opts(false)).await.unwrap();
    let r = api.registry.fsck(&tester(), true).await.unwrap();
    assert!(
        blob.exists() && tag.exists(),
        "a young temp file was removed"
    );
    assert!(
        r.problems.iter().all(|p| p.detail.contains("kept")),
        "{r:?}"
    );
    // The image is whole throughout.
    assert_eq!(
        api.get(&format!("/v2/team/app/manifests/{digest}"))
            .await
            .status,
        StatusCode::OK
    );
}

/// The bad-input table: every request a hostile or broken client sends gets its status
/// and OCI code, and nothing reaches storage or stops the registry.
async fn bad_input_table(api: Api) {
    push_image(&api, "team/app", "1.0", "bad-input").await;
    let long_name = format!("/v2/{}/tags/list", "a".repeat(300));
    let long_tag = format!("/v2/team/app/manifests/{}", "t".repeat(129));
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let zero = "0".repeat(64);
    type Row<'a> = (
        Method,
        String,
        Vec<(&'a str, &'a str)>,
        Vec<u8>,
        u16,
        &'a str,
    );
    let rows: Vec<Row> = vec![
        // Names.
        (Method::GET, "/v2/../etc/tags/list".into(), vec![], vec![], 400, "NAME_INVALID"),
        (Method::GET, "/v2/team/%2e%2e/tags/list".into(), vec![], vec![], 400, "NAME_INVALID"),
        (Method::GET, "/v2/Team/app/tags/list".into(), vec![], vec![], 400, "NAME_INVALID"),
        (Method::GET, long_name, vec![], vec![], 400, "NAME_INVALID"),
        (Method::GET, "/v2/t%C3%A9am/app/tags/list".into(), vec![], vec![], 400, "NAME_INVALID"),
        (Method::GET, "/v2/nobody/here/tags/list".into(), vec![], vec![], 404, "NAME_UNKNOWN"),
        // Tags and digests.
        (Method::GET, long_tag, vec![], vec![], 404, "MANIFEST_UNKNOWN"),
        (Method::GET, "/v2/team/app/manifests/t%C3%A9".into(), vec![], vec![], 404, "MANIFEST_UNKNOWN"),
        (Method::GET, format!("/v2/team/app/blobs/sha256:{}", &zero[..10]), vec![], vec![], 400, "DIGEST_INVALID"),
        (Method::GET, format!("/v2/team/app/blobs/sha256:{}", zero.to_uppercase().replace('0', "A")), vec![], vec![], 400, "DIGEST_INVALID"),
        (Method::GET, format!("/v2/team/app/blobs/sha256:{zero}"), vec![], vec![], 404, "BLOB_UNKNOWN"),
        // Ranges.
        (Method::GET, "/v2/team/app/blobs/SELF".into(), vec![("range", "bytes=999999-")], vec![], 416, "RANGE_INVALID"),
        // Upload state machine misuse.
        (Method::PATCH, "/v2/team/app/blobs/uploads/no-such-upload".into(), vec![], b"x".to_vec(), 404, "BLOB_UPLOAD_UNKNOWN"),
        (Method::PUT, "/v2/team/app/blobs/uploads/no-such-upload?digest=sha256:".to_string() + &zero, vec![], vec![], 404, "BLOB_UPLOAD_UNKNOWN"),
        (Method::GET, "/v2/team/app/blobs/uploads/../../../../etc".into(), vec![], vec![], 404, "UNSUPPORTED"),
        // Manifest bodies.
        (Method::PUT, "/v2/team/app/manifests/bad".into(), vec![("content-type", OCI_MANIFEST)], b"{not json".to_vec(), 400, "MANIFEST_INVALID"),
        (Method::PUT, "/v2/team/app/manifests/nested".into(), vec![("content-type", OCI_MANIFEST)], nested.into_bytes(), 400, "MANIFEST_INVALID"),
        (Method::PUT, "/v2/team/app/manifests/wrongtype".into(), vec![("content-type", "text/plain")], br#"{"schemaVersion":2}"#.to_vec(), 400, "MANIFEST_INVALID"),
        (Method::PUT, "/v2/team/app/manifests/missing".into(), vec![("content-type", OCI_MANIFEST)], serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{zero}"), "size": 2},
            "layers": [],
        })).unwrap(), 400, "MANIFEST_BLOB_UNKNOWN"),
    ];
    let mut wrong = Vec::new();
    for (m, uri, headers, body, status, code) in rows {
        // A real blob for the range row.
        let uri = if uri.ends_with("/SELF") {
            let d = api.push_blob("team/app", b"ranged").await;
            uri.replace("SELF", &d.to_string())
        } else {
            uri
        };
        let r = api.call(m.clone(), &uri, &headers, body).await;
        let got = (
            r.status.as_u16(),
            if r.body.is_empty() {
                String::new()
            } else {
                r.code()
            },
        );
        if got != (status, code.to_string()) {
            wrong.push(format!(
                "{m} {}: got {got:?}, want ({status}, {code})",
                &uri[..uri.len().min(80)]
            ));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    // Still serving, and nothing refused became content.
    let tags = api.get("/v2/team/app/tags/list").await.json();
    assert_eq!(tags["tags"], json!(["1.0"]));
    assert!(!api.has_below("etc").await && api.object("etc").await.is_none());
}

/// distribution-spec: a manifest PUT by digest may carry `?tag=` parameters; every tag
/// then points at the manifest and is named in an `OCI-Tag` header (once, however often
/// it is asked for). A malformed tag refuses the whole PUT before anything is stored.
async fn a_put_by_digest_pushes_the_tags_it_names(api: Api) {
    let repo = "team/tagged";
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer = b"tagged layer".repeat(50);
    let c = api.push_blob(repo, config).await;
    let l = api.push_blob(repo, &layer).await;
    let m = image_manifest(OCI_MANIFEST, &c, config.len(), &[(&l, layer.len())]);
    let d = Digest::sha256_of(&m);

    let ct = [("content-type", OCI_MANIFEST)];
    let r = api
        .call(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{d}?tag=1.0&tag=bad%20tag"),
            &ct,
            m.clone(),
        )
        .await;
    // A malformed tag is a malformed manifest reference, as in the URL.
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "MANIFEST_INVALID");
    assert!(String::from_utf8_lossy(&r.body).contains("bad tag"));
    assert_eq!(
        api.get(&format!("/v2/{repo}/manifests/{d}")).await.status,
        StatusCode::NOT_FOUND
    );

    let r = api
        .call(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{d}?tag=1.0&tag=latest&tag=1.0"),
            &ct,
            m.clone(),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let named: Vec<&str> = r
        .headers
        .get_all("oci-tag")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(named, ["1.0", "latest"]);
    for tag in ["1.0", "latest"] {
        let r = api.get(&format!("/v2/{repo}/manifests/{tag}")).await;
        assert_eq!(r.status, StatusCode::OK, "{tag}");
        assert_eq!(r.body, m);
        assert_eq!(
            r.headers.get("docker-content-digest").unwrap(),
            &d.to_string()
        );
    }
    let r = api.get(&format!("/v2/{repo}/tags/list")).await;
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["tags"], json!(["1.0", "latest"]));
}

/// Two berthd on one bucket, GC in a loop on A while B pushes the same layers again and
/// again, deleting each image after it checked it (so the layers keep falling back to
/// garbage and ageing past the grace period): every push B accepts is whole, and GC
/// meanwhile collects the throwaway blobs each round leaves.
#[tokio::test(flavor = "multi_thread")]
async fn gc_in_a_loop_on_one_node_never_breaks_pushes_on_another() {
    // A mark keeps a blob for half the grace period: the HEADs of one round, their fence
    // and the upload after them fit well inside it.
    let grace = Duration::from_secs(4);
    let (a, b) = two_on_one_bucket(grace, Duration::from_millis(500));
    let a = Arc::new(a);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gc = {
        let (a, stop) = (a.clone(), stop.clone());
        tokio::spawn(async move {
            let mut freed = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let opts = GcOptions {
                    dry_run: false,
                    delete_untagged: false,
                    grace,
                };
                freed += a
                    .registry
                    .gc(&tester(), opts)
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
    let config = Digest::sha256_of(b"{}");
    let started = std::time::Instant::now();
    let mut round = 0;
    // Rounds until the layers have aged past the grace period several times over.
    while started.elapsed() < 3 * grace || round < 3 {
        round += 1;
        b.push_blob("team/junk", format!("junk {round}").as_bytes())
            .await;
        // As docker does: HEAD every blob at once, then upload only the missing ones.
        let blobs: Vec<&[u8]> = std::iter::once(&b"{}"[..])
            .chain(layers.iter().map(|l| l.as_slice()))
            .collect();
        let heads = futures_util::future::join_all(blobs.iter().map(|blob| {
            let path = format!("/v2/team/app/blobs/{}", Digest::sha256_of(blob));
            let b = &b;
            async move { b.call(Method::HEAD, &path, &[], Vec::new()).await.status }
        }))
        .await;
        let mut named = Vec::new();
        for (blob, status) in blobs.iter().zip(heads) {
            if status == StatusCode::NOT_FOUND {
                b.push_blob("team/app", blob).await;
            } else {
                assert_eq!(status, StatusCode::OK);
            }
            let d = Digest::sha256_of(blob);
            if d != config {
                named.push((d, blob.len()));
            }
        }
        // The image's own top layer, new each round, goes up after the HEADs found the
        // base: the time a client takes for it is when a GC elsewhere would strike.
        let top = format!("top {round} ").repeat(40_000).into_bytes();
        let d = b.push_blob("team/app", &top).await;
        named.push((d, top.len()));
        let sized: Vec<(&Digest, usize)> = named.iter().map(|(d, n)| (d, *n)).collect();
        let manifest = image_manifest(OCI_MANIFEST, &config, 2, &sized);
        let r = b
            .put_manifest("team/app", "latest", OCI_MANIFEST, &manifest)
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "round {round}: {}",
            String::from_utf8_lossy(&r.body)
        );
        for l in &layers {
            let r = a
                .get(&format!("/v2/team/app/blobs/{}", Digest::sha256_of(l)))
                .await;
            assert_eq!((r.status, &r.body), (StatusCode::OK, l), "round {round}");
        }
        let d = Digest::sha256_of(&manifest);
        let r = b
            .call(
                Method::DELETE,
                &format!("/v2/team/app/manifests/{d}"),
                &[],
                Vec::new(),
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let freed = gc.await.unwrap();
    assert!(freed > 0, "GC collected nothing in {round} rounds");
}

/// Generates one test per store for each API test that needs no file of its own store:
/// the same requests must give the same answers over the filesystem and over S3.
macro_rules! on_every_store {
    ($($t:ident),* $(,)?) => {
        mod filesystem {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $t() {
                    super::$t(super::Api::new()).await
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $t() {
                    super::$t(super::Api::s3()).await
                }
            )*
        }
    };
}

on_every_store!(
    base_endpoint_and_unknown_routes,
    blobs_monolithic_head_get_and_ranges,
    chunked_uploads_in_order_status_and_out_of_order,
    digest_mismatch_makes_nothing_visible,
    sha512_blobs_and_cross_repository_mount,
    manifests_by_tag_and_digest_with_exact_bytes_and_types,
    indexes_need_their_children,
    tags_and_catalog_paginate_with_link,
    referrers_list_manifests_by_subject_with_filter,
    deletes_of_tags_manifests_and_blobs,
    malformed_names_tags_and_digests_are_client_errors,
    concurrent_pushes_of_one_blob_and_one_tag_are_safe,
    inspect_computes_diff_ids_and_chain_ids,
    events_report_pushes_pulls_and_deletes_and_never_block,
    bad_input_table,
    a_put_by_digest_pushes_the_tags_it_names,
);

/// Two registries on one new bucket, as two berthd sharing it would open it, with GC's
/// minimum grace and the fence set for a test.
fn two_on_one_bucket(grace: Duration, fence: Duration) -> (Api, Api) {
    let moto = common::moto::shared();
    let bucket = common::moto::unique_bucket();
    moto.create_bucket(&bucket);
    let tune = |s: &mut berth::registry::S3Settings| {
        s.gc_min_grace = grace;
        s.fence = fence;
    };
    (
        Api::s3_on(moto.clone(), &bucket, tune),
        Api::s3_on(moto, &bucket, tune),
    )
}

/// Two berthd on one bucket (distribution#3045 across processes): a GC on A never takes a
/// blob B told a client exists before the client's manifest lands, though A's own memory
/// knows nothing of B's answer. Without the marks B leaves in the bucket, A's GC deletes
/// the layers and the manifest is refused.
#[tokio::test(flavor = "multi_thread")]
async fn gc_on_one_node_keeps_what_a_push_on_another_relies_on() {
    let grace = Duration::from_secs(3);
    let (a, b) = two_on_one_bucket(grace, Duration::from_millis(300));
    let opts = |dry_run| GcOptions {
        dry_run,
        delete_untagged: false,
        grace,
    };
    // A GC below the grace other writers count on is refused, saying what to use.
    let e = a
        .registry
        .gc(
            &tester(),
            GcOptions {
                grace: Duration::from_secs(1),
                ..opts(true)
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("gc_min_grace"), "{e}");

    // A push to B cut short: layers stored, no manifest. They are garbage once old.
    let layers: Vec<Digest> = (0..3)
        .map(|i| format!("layer {i} ").repeat(1000).into_bytes())
        .collect::<Vec<_>>()
        .iter()
        .map(|l| Digest::sha256_of(l))
        .collect();
    for i in 0..3 {
        b.push_blob("team/app", format!("layer {i} ").repeat(1000).as_bytes())
            .await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = a.registry.gc(&tester(), opts(true)).await.unwrap();
        let doomed: Vec<&str> = r.blobs_deleted.iter().map(|(d, _)| d.as_str()).collect();
        if layers
            .iter()
            .all(|l| doomed.contains(&l.to_string().as_str()))
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{r:?}");
        tokio::task::yield_now().await;
    }
    // The push is tried again through B: each layer exists, so the client skips it...
    for l in &layers {
        let r = b
            .call(
                Method::HEAD,
                &format!("/v2/team/app/blobs/{l}"),
                &[],
                Vec::new(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // ...A collects right then...
    let report = a.registry.gc(&tester(), opts(false)).await.unwrap();
    assert!(report.blobs_deleted.is_empty(), "{report:?}");
    // ...and the manifest naming them lands on B, whole.
    let config = b.push_blob("team/app", b"{}").await;
    let sized: Vec<(&Digest, usize)> = layers.iter().map(|l| (l, 8000)).collect();
    let manifest = image_manifest(OCI_MANIFEST, &config, 2, &sized);
    let r = b
        .put_manifest("team/app", "1.0", OCI_MANIFEST, &manifest)
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    for l in &layers {
        let r = a.get(&format!("/v2/team/app/blobs/{l}")).await;
        assert_eq!(r.status, StatusCode::OK, "{l}");
    }
}
