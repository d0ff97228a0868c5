//! The registry's settings (`[registry]` in the config file), owned here and composed by
//! `config`, so the core never imports the configuration layer.

use std::net::SocketAddr;
use std::path::PathBuf;

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
        }
    }
}
