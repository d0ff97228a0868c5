//! berthd's configuration: embedded defaults, an optional TOML file, then flags.
//!
//! Each module owns its settings type (`pki::Settings`, `registry::Settings`,
//! `certsd::Settings`, `net::Settings`); this module only composes them, so no core imports
//! the configuration layer. `Config::default()` is what berthd runs with when given nothing, so the README's first
//! command works on a fresh machine. A file must say `version = 1`; an unknown key is an error
//! that names the key, because a misspelt setting silently ignored is a security bug.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{certsd, net, pki, registry};

/// The only config file version this build reads.
pub const CONFIG_VERSION: u32 = 1;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type...).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's message, which names the key and line.
        message: String,
    },
    /// The file declares a version this build does not understand.
    #[error(
        "config file {path} has version = {found}; this berthd reads version = {CONFIG_VERSION}"
    )]
    Version {
        /// The config file.
        path: PathBuf,
        /// The version it declares.
        found: u32,
    },
    /// A `tcp://` listen address is malformed.
    #[error("invalid listen address {0:?}: expected tcp://IP:PORT, e.g. tcp://0.0.0.0:2376")]
    Listen(String),
}

/// The whole daemon configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Schema version of the file; always [`CONFIG_VERSION`].
    pub version: u32,
    /// Folder holding the CA, the certificate index, issued keys and the lock file.
    pub state_dir: PathBuf,
    /// How clients reach the control API.
    pub control: ControlConfig,
    /// Certificate authority settings.
    pub pki: pki::Settings,
    /// Where the certs.d installer writes.
    pub certsd: certsd::Settings,
    /// The embedded registry.
    pub registry: registry::Settings,
    /// Limits and timeouts of every TCP listener (registry and control).
    pub net: net::Settings,
    /// The audit log.
    pub audit: crate::audit::Settings,
    /// The Prometheus endpoint.
    pub metrics: crate::metrics::Settings,
    /// Set on a registry replica (`berthd --role registry`): where its primary is.
    pub replica: Option<ReplicaConfig>,
}

/// A registry replica's link to its primary (`[replica]`). A replica keeps nothing on
/// disk: it enrols with the token at every start and takes the CA, CRL and policy from
/// the primary's watch stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaConfig {
    /// The primary's TCP control listener, `host:port` (its `control.listen`).
    pub primary: String,
    /// SHA-256 fingerprint of the primary's CA (`berth system info`); the token is only
    /// sent to a server that shows this CA, as with `berth join`.
    pub ca_fingerprint: String,
    /// File holding the replica token (`berth token create --name NAME --replica --san ...`);
    /// `BERTH_JOIN_TOKEN` in the environment takes its place.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// How long past the CRL's nextUpdate a replica cut off from its primary keeps
    /// serving; after that it refuses every request with 503 UNAVAILABLE.
    #[serde(default = "default_crl_grace", with = "crate::humantime_serde")]
    pub crl_grace: std::time::Duration,
}

fn default_crl_grace() -> std::time::Duration {
    std::time::Duration::from_secs(3600)
}

impl Config {
    /// Where the audit log lives.
    pub fn audit_dir(&self) -> PathBuf {
        self.audit
            .dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("audit"))
    }

    /// Where registry content lives.
    pub fn registry_root(&self) -> PathBuf {
        self.registry
            .root
            .clone()
            .unwrap_or_else(|| self.state_dir.join("registry"))
    }
}

/// The control API's listeners and who may use them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Unix socket path.
    pub socket: PathBuf,
    /// Group (name or numeric gid) that owns the socket and whose members may use it.
    pub group: Option<String>,
    /// Mode of the socket file. 0o660 lets only the owner and the group connect.
    pub socket_mode: u32,
    /// Opt-in TCP listeners with mutual TLS, e.g. `tcp://0.0.0.0:2376`.
    pub listen: Vec<ListenAddr>,
    /// Extra certificate common names allowed to administer over TCP, besides every
    /// unrevoked certificate issued with the admin profile.
    pub admins: Vec<String>,
    /// Extra DNS names or IPs for the TCP listener's server certificate.
    pub tls_names: Vec<String>,
    /// The role members of `group` get on the socket (root and berthd's own user are
    /// always admins). `admin` by default, as the docker group is.
    pub group_role: Role,
    /// Roles of TCP callers by certificate identity, besides admin-profile certificates
    /// and `admins`. A certificate matching several gets the strongest; an issuer's
    /// `names` add up.
    pub roles: Vec<RoleGrant>,
}

/// What a caller may do on the control API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A registry replica: it may watch the trust material (CA, CRL, policy) and
    /// nothing else. Replica certificates have it; it sorts below viewer.
    Replica,
    /// Read-only: status, listings, inspection, events, the audit log.
    Viewer,
    /// A viewer that may also issue, sign, renew and revoke certificates, and make
    /// enrolment tokens, for the subjects its `names` match (never admin certificates).
    Issuer,
    /// Everything.
    #[default]
    Admin,
}

impl Role {
    /// The role's name in config files and messages.
    pub fn name(self) -> &'static str {
        match self {
            Role::Replica => "replica",
            Role::Viewer => "viewer",
            Role::Issuer => "issuer",
            Role::Admin => "admin",
        }
    }
}

/// One grant of a role to the certificates `subjects` match (`[[control.roles]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleGrant {
    /// The role.
    pub role: Role,
    /// Who gets it: any of these matchers (the registry policy's: cn, o, ou, serial,
    /// dns, email, uri and their `_prefix` forms; no groups).
    pub subjects: Vec<registry::policy::Matcher>,
    /// For issuers: common-name patterns (`ci-*`, `runner-??` is not a pattern; `*` is
    /// any run of characters) of the certificates and tokens it may act on.
    #[serde(default)]
    pub names: Vec<String>,
}

/// A TCP address to serve the control API on with mutual TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ListenAddr(pub SocketAddr);

impl FromStr for ListenAddr {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let rest = s
            .strip_prefix("tcp://")
            .ok_or_else(|| Error::Listen(s.to_string()))?;
        rest.parse()
            .map(ListenAddr)
            .map_err(|_| Error::Listen(s.to_string()))
    }
}

impl TryFrom<String> for ListenAddr {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<ListenAddr> for String {
    fn from(a: ListenAddr) -> String {
        a.to_string()
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tcp://{}", self.0)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            version: CONFIG_VERSION,
            state_dir: default_state_dir(),
            control: ControlConfig::default(),
            pki: pki::Settings::default(),
            certsd: certsd::Settings::default(),
            registry: registry::Settings::default(),
            net: net::Settings::default(),
            audit: crate::audit::Settings::default(),
            metrics: crate::metrics::Settings::default(),
            replica: None,
        }
    }
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: default_socket_path(),
            group: None,
            socket_mode: 0o660,
            listen: Vec::new(),
            admins: Vec::new(),
            tls_names: Vec::new(),
            group_role: Role::Admin,
            roles: Vec::new(),
        }
    }
}

impl Default for certsd::Settings {
    fn default() -> Self {
        if is_root() {
            certsd::Settings {
                docker_root: PathBuf::from("/etc/docker/certs.d"),
                containers_root: PathBuf::from("/etc/containers/certs.d"),
                containerd_root: PathBuf::from("/etc/containerd/certs.d"),
            }
        } else {
            // Rootless docker and rootless podman read these.
            let cfg = xdg_dir("XDG_CONFIG_HOME", ".config");
            certsd::Settings {
                docker_root: cfg.join("docker/certs.d"),
                containers_root: cfg.join("containers/certs.d"),
                containerd_root: cfg.join("containerd/certs.d"),
            }
        }
    }
}

impl Config {
    /// Reads a TOML file over the embedded defaults: keys it omits keep their defaults.
    pub fn from_file(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// Parses TOML text; `path` is only used in messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, Error> {
        #[derive(Deserialize)]
        struct Versioned {
            version: Option<u32>,
        }
        let parse = |message: String| Error::Parse {
            path: path.to_path_buf(),
            message,
        };
        // Check the version first, so a future file gets a version error, not a key error.
        let v: toml::Table = toml::from_str(text).map_err(|e| parse(e.to_string()))?;
        let versioned: Versioned = v
            .try_into()
            .map_err(|e: toml::de::Error| parse(e.to_string()))?;
        match versioned.version {
            Some(CONFIG_VERSION) => {}
            Some(found) => {
                return Err(Error::Version {
                    path: path.to_path_buf(),
                    found,
                });
            }
            None => return Err(parse("missing `version = 1`".to_string())),
        }
        let config: Config =
            toml::from_str(text).map_err(|e| parse(e.to_string().trim_end().to_string()))?;
        if let Some(s3) = &config.registry.s3 {
            if config.registry.root.is_some() {
                return Err(parse(
                    "registry.root and [registry.s3] are both set, but content goes to one place: remove one"
                        .to_string(),
                ));
            }
            if s3.bucket.is_empty() {
                return Err(parse(
                    "[registry.s3] needs bucket = \"NAME\" (an existing bucket)".to_string(),
                ));
            }
        }
        Ok(config)
    }

    /// Puts every piece of state under one folder: the state dir itself and the socket.
    /// certs.d roots are left alone, since they belong to docker, not to berth.
    pub fn set_root(&mut self, root: &Path) {
        self.state_dir = root.to_path_buf();
        self.control.socket = root.join("berthd.sock");
    }
}

/// True when running as root, which picks system-wide defaults.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Default state folder: `/var/lib/berth` for root, else `$XDG_STATE_HOME/berth`
/// (falling back to `~/.local/state/berth`).
pub fn default_state_dir() -> PathBuf {
    if is_root() {
        PathBuf::from("/var/lib/berth")
    } else {
        xdg_dir("XDG_STATE_HOME", ".local/state").join("berth")
    }
}

/// Default control socket, shared by berthd and the CLI so both agree without flags:
/// `/run/berth/berthd.sock` for root, else `$XDG_RUNTIME_DIR/berth/berthd.sock`
/// (falling back to the state folder).
pub fn default_socket_path() -> PathBuf {
    if is_root() {
        return PathBuf::from("/run/berth/berthd.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("berth/berthd.sock"),
        _ => default_state_dir().join("berthd.sock"),
    }
}

fn xdg_dir(var: &str, fallback_under_home: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(d) if !d.is_empty() && Path::new(&d).is_absolute() => PathBuf::from(d),
        _ => match std::env::var_os("HOME") {
            Some(h) if !h.is_empty() => PathBuf::from(h).join(fallback_under_home),
            _ => std::env::temp_dir().join(format!("berth-{}", nix::unistd::geteuid())),
        },
    }
}

#[cfg(test)]
mod tests;

/// The log filter `spec` names (`info`, `berth=debug,warn`: a level, or `target=level`
/// pairs, as `--log` and `RUST_LOG` take them), and what was wrong with it when it names
/// none, in which case `info` is used. tracing-subscriber's `Targets`, not its
/// `EnvFilter`: the span and field matching only `EnvFilter` has needs a regex engine,
/// which was code mapped into every berthd for a syntax no berth log needs.
pub fn log_filter(spec: &str) -> (tracing_subscriber::filter::Targets, Option<String>) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    match spec.parse::<Targets>() {
        Ok(t) => (t, None),
        Err(e) => (
            Targets::new().with_default(LevelFilter::INFO),
            Some(format!(
                "log filter {spec:?} not understood ({e}); logging at info. Give a level (info) or target=level pairs (berth=debug,warn)"
            )),
        ),
    }
}
