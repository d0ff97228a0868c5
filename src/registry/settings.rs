//! The registry's settings (`[registry]` in the config file), owned here and composed by
//! `config`, so the core never imports the configuration layer.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The embedded OCI registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Serve the registry at all.
    pub enabled: bool,
    /// Addresses to listen on (mutual TLS always). Both loopbacks by default. dockerd treats
    /// 127.0.0.0/8 and (Engine 28+) ::1 as insecure and never sends them a client
    /// certificate, so docker hosts need a real name in `names` and a listen address on it.
    pub listen: Vec<SocketAddr>,
    /// Extra DNS names or IPs for the registry's server certificate, besides localhost,
    /// 127.0.0.1, ::1, the host name and the listen addresses.
    pub names: Vec<String>,
    /// Storage root (registry:2's `rootdirectory`); default `<state_dir>/registry`.
    pub root: Option<PathBuf>,
    /// Allow DELETE of manifests, tags and blobs over HTTP (the control API can always).
    pub delete_enabled: bool,
    /// Upload sessions idle longer than this many hours are purged (checked hourly).
    pub upload_max_age_hours: u64,
    /// At start, upload sessions a previous run left that started longer ago than this
    /// many minutes are purged: their clients lost them when that run ended.
    pub orphan_upload_minutes: u64,
    /// Who may pull, push, delete and list what (see `registry::policy`); read at start, on
    /// SIGHUP and on `berth policy reload`. None: the built-in defaults (any berth client
    /// may pull, push and list; nobody may delete over HTTP).
    pub policy: Option<PathBuf>,
    /// Keep content in an S3-compatible bucket instead of below `root` (see
    /// [`S3Settings`]); `root` is then unused.
    pub s3: Option<S3Settings>,
}

/// `[registry.s3]`: an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, Garage, R2...) laid
/// out as registry:2's s3 driver lays it out, so either can serve the other's bucket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// The bucket, which must exist.
    pub bucket: String,
    /// Region; default from `AWS_REGION`, else `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// The store's URL for stores other than AWS (`https://minio.example:9000`). Plain
    /// `http://` is accepted because it was written down, for a store on loopback or a
    /// private network.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Keys below this prefix (registry:2's `rootdirectory`); default the bucket's top.
    #[serde(default)]
    pub prefix: String,
    /// Address the bucket in the path (`endpoint/bucket/key`), as MinIO, Ceph and most
    /// self-hosted stores need, instead of as a host name (`bucket.endpoint/key`).
    #[serde(default)]
    pub path_style: bool,
    /// A TOML file with `access_key_id`, `secret_access_key` and optionally
    /// `session_token`, readable by its owner only. Without it the keys come from the
    /// environment (`AWS_ACCESS_KEY_ID`...) or the instance's metadata service.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// PEM certificates to trust for the store's TLS besides the system's (a private CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Several berthd may write to one bucket, so GC cannot rely on a lock inside one
    /// process: a GC on this bucket refuses a grace period shorter than this, and a blob
    /// a client relies on (told it exists, mounted, named by a manifest) is marked in the
    /// store once every half of it (see `storage::gc`).
    #[serde(default = "default_min_grace", with = "crate::humantime_serde")]
    pub gc_min_grace: Duration,
    /// How long any request to the store may take; the coordination waits this long
    /// after marking a blob before it trusts that no GC is about to delete it.
    #[serde(default = "default_fence", with = "crate::humantime_serde")]
    pub fence: Duration,
}

fn default_min_grace() -> Duration {
    Duration::from_secs(3600)
}

fn default_fence() -> Duration {
    Duration::from_secs(5)
}

impl S3Settings {
    /// Where the content lives, as one comparable text: the store, the bucket and the
    /// prefix (`https://minio:9000/registry/shared`; `s3` for AWS). Two nodes with the
    /// same location share their content.
    pub fn location(&self) -> String {
        let store = self
            .endpoint
            .as_deref()
            .map_or("s3", |e| e.trim_end_matches('/'));
        let prefix = self.prefix.trim_matches('/');
        if prefix.is_empty() {
            format!("{store}/{}", self.bucket)
        } else {
            format!("{store}/{}/{prefix}", self.bucket)
        }
    }
}

impl Default for S3Settings {
    /// Everything but the bucket, which has no default.
    fn default() -> Self {
        S3Settings {
            bucket: String::new(),
            region: None,
            endpoint: None,
            prefix: String::new(),
            path_style: false,
            credentials_file: None,
            ca_file: None,
            gc_min_grace: default_min_grace(),
            fence: default_fence(),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            enabled: true,
            listen: vec![
                SocketAddr::from(([127, 0, 0, 1], 5443)),
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 5443)),
            ],
            names: Vec::new(),
            root: None,
            delete_enabled: true,
            upload_max_age_hours: 24,
            orphan_upload_minutes: 15,
            policy: None,
            s3: None,
        }
    }
}
