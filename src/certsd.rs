//! The certs.d installer: the files docker and containers/image read to trust a registry
//! and to present a client certificate to it.
//!
//! ```text
//! <root>/<host[:port]>/ca.crt        CA to trust          0644
//!                      client.cert   client certificate   0644
//!                      client.key    its private key      0600
//! ```
//! docker pairs every `X.cert` with `X.key` and fails every pull from the host when one
//! of a pair is missing, so the pair is only ever written together, certificate first,
//! and rolled back together. Which files berth wrote (and their hashes) is kept in
//! `<state>/certsd.json`, so `remove` never deletes a file someone else put there or changed.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use rcgen::{KeyPair, PublicKeyData};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::fsutil;
use crate::identity::Identity;
use crate::pki::{self, CertKind, CertStatus, IssueSpec, KeyAlgorithm, Names, Pki, SecretKeyPem};

/// Roots of the certs.d trees the installer manages (`[certsd]` in the config file). Its
/// embedded defaults depend on whether berthd runs as root, so `config` provides them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// docker's tree.
    pub docker_root: PathBuf,
    /// containers' tree (podman, skopeo, buildah, cri-o).
    pub containers_root: PathBuf,
    /// containerd's hosts tree (`config_path`; Kubernetes nodes, nerdctl, ctr --hosts-dir).
    pub containerd_root: PathBuf,
}

/// Why an installer operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The registry host is not a valid `host[:port]`.
    #[error("invalid registry host {value:?}: {reason}")]
    InvalidHost {
        /// What was given.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A file exists that berth did not write (or that was changed since).
    #[error(
        "{0} exists and was not written by berth (or was changed since); pass --force to replace it"
    )]
    Conflict(PathBuf),
    /// Nothing berth installed exists for the host.
    #[error("berth has installed nothing for {0}; see `berth certs ls`")]
    NotInstalled(String),
    /// The client certificate to install cannot be used.
    #[error("{0}")]
    Client(String),
    /// The state file of managed files is unreadable; it is never overwritten.
    #[error("certs.d state {path} is corrupt ({reason}); move it away to start over")]
    CorruptState {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error(transparent)]
    Fs(#[from] fsutil::Error),
    /// Issuing the client certificate failed.
    #[error(transparent)]
    Pki(#[from] pki::Error),
}

/// A registry as docker names it: `host` or `host:port`, where host is a DNS name, an
/// IPv4 address or a bracketed IPv6 address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    host: String,
    port: Option<u16>,
}

impl HostPort {
    /// Why docker will not use client certificates for this registry, when it will not:
    /// dockerd treats every registry on a loopback address (127.0.0.0/8, and ::1 since
    /// Engine 28, moby 6a1d8a9) as insecure, including a name that resolves there, never
    /// reads certs.d for it and speaks plain HTTP to it. podman, skopeo and containerd
    /// have no such rule. Names are looked up in /etc/hosts only (where loopback names
    /// live, e.g. Debian's 127.0.1.1 for the host name), never in DNS.
    pub fn docker_loopback(&self) -> Option<String> {
        let h = self.host.trim_start_matches('[').trim_end_matches(']');
        let loopback = match h.parse::<std::net::IpAddr>() {
            Ok(ip) => ip.is_loopback(),
            Err(_) => {
                h.eq_ignore_ascii_case("localhost")
                    || h.to_ascii_lowercase().ends_with(".localhost")
                    || std::fs::read_to_string("/etc/hosts").is_ok_and(|t| hosts_loopback(&t, h))
            }
        };
        loopback.then(|| {
            format!(
                "docker will not use these files for {self}: it treats registries on loopback addresses (127.0.0.0/8, ::1) as insecure, sends them no client certificate and speaks plain HTTP to them. Serve the registry under a real name on a non-loopback address (registry.names and registry.listen, e.g. berthd --registry-listen 10.0.0.5:5443) and install for that name; podman, skopeo and containerd are not affected"
            )
        })
    }

    /// The host: a name, an IPv4 address, or an IPv6 address in brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, when one was given.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The port a client connects to (443 when none was given).
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(443)
    }

    /// The certs.d folder name docker looks up: `host:port`, or `host` alone for port 443.
    pub fn dir_name(&self) -> String {
        match self.port {
            Some(443) | None => self.host.clone(),
            Some(p) => format!("{}:{p}", self.host),
        }
    }
}

/// True when an /etc/hosts text maps `name` to a loopback address.
fn hosts_loopback(hosts: &str, name: &str) -> bool {
    hosts.lines().any(|l| {
        let mut f = l.split('#').next().unwrap_or("").split_whitespace();
        let loopback = f
            .next()
            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
            .is_some_and(|ip| ip.is_loopback());
        loopback && f.any(|n| n.eq_ignore_ascii_case(name))
    })
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.dir_name())
    }
}

impl FromStr for HostPort {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |reason| Error::InvalidHost {
            value: s.to_string(),
            reason,
        };
        if s.is_empty() {
            return Err(bad("empty"));
        }
        if s.contains("://") {
            return Err(bad(
                "give the registry as docker names it, host[:port], without a scheme",
            ));
        }
        if s.contains('/') || s.contains('\\') {
            return Err(bad(
                "a registry host has no path: give host[:port] only, e.g. registry.example.internal:5443",
            ));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) || s.contains(['@', '?', '#']) {
            return Err(bad(
                "only a host name or IP address and an optional :port are allowed",
            ));
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (ip, after) = rest
                .split_once(']')
                .ok_or_else(|| bad("missing ']' after the IPv6 address"))?;
            ip.parse::<Ipv6Addr>()
                .map_err(|_| bad("not a valid IPv6 address inside [...]"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad("expected :port after ']'"))?,
                ),
            };
            (format!("[{ip}]"), port)
        } else {
            let (h, p) = match s.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            };
            if h.contains(':') {
                return Err(bad("IPv6 addresses need brackets, e.g. [::1]:5443"));
            }
            if h.parse::<Ipv4Addr>().is_err() {
                check_host_label(h).map_err(bad)?;
            }
            (h.to_string(), p)
        };
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(bad("the port must be a number from 1 to 65535")),
                Ok(n) => Some(n),
            },
        };
        Ok(HostPort { host, port })
    }
}

fn check_host_label(h: &str) -> Result<(), &'static str> {
    if h.is_empty() {
        return Err("empty host name");
    }
    if h.len() > 253 {
        return Err("host name longer than 253 characters");
    }
    for label in h.split('.') {
        if label.is_empty() {
            return Err("empty label in the host name (two dots in a row?)");
        }
        if label.len() > 63 {
            return Err("a host name label is longer than 63 characters");
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err("a host name has only letters, digits, '-' and '_'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a host name label cannot start or end with '-'");
        }
    }
    Ok(())
}

/// Which certs.d tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Root {
    /// docker's.
    Docker,
    /// containers/image's (podman, skopeo, buildah).
    Containers,
    /// containerd's hosts tree (hosts.toml beside the pair).
    Containerd,
}

impl Root {
    /// Lowercase name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Root::Docker => "docker",
            Root::Containers => "containers",
            Root::Containerd => "containerd",
        }
    }
}

/// What the installer does to one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActionKind {
    /// Create a folder.
    CreateDir,
    /// Write a new file.
    Create,
    /// Replace a file.
    Replace,
    /// Leave a file that is already right.
    Unchanged,
    /// Delete a file berth wrote.
    Delete,
    /// Keep a file that changed since berth wrote it.
    KeepModified,
    /// Delete an empty folder.
    DeleteDir,
}

impl ActionKind {
    /// Verb for the CLI's plan output.
    pub fn verb(self) -> &'static str {
        match self {
            ActionKind::CreateDir => "mkdir",
            ActionKind::Create => "create",
            ActionKind::Replace => "replace",
            ActionKind::Unchanged => "unchanged",
            ActionKind::Delete => "delete",
            ActionKind::KeepModified => "keep (modified)",
            ActionKind::DeleteDir => "rmdir",
        }
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileAction {
    /// What happens.
    pub kind: ActionKind,
    /// Where.
    pub path: PathBuf,
    /// Mode of a written file; 0 otherwise.
    pub mode: u32,
}

/// What an install asks for.
#[derive(Debug, Clone)]
pub struct InstallRequest {
    /// The registry.
    pub host: HostPort,
    /// Common name of the client certificate to install; `None` installs ca.crt only.
    pub client: Option<String>,
    /// Also install into the containers tree (docker's is always written).
    pub containers: bool,
    /// Also install into containerd's hosts tree.
    pub containerd: bool,
    /// Plan only.
    pub dry_run: bool,
    /// Replace files berth did not write.
    pub force: bool,
}

/// What an install did.
#[derive(Debug, Clone, Serialize)]
pub struct InstallOutcome {
    /// Steps in order.
    pub actions: Vec<FileAction>,
    /// Serial of the installed client certificate.
    pub client_serial: Option<String>,
    /// Whether the client certificate was issued for this install.
    pub issued_client: bool,
    /// The entry's folders.
    pub directories: Vec<PathBuf>,
    /// What will still not work, e.g. docker and a loopback registry.
    pub warnings: Vec<String>,
    /// What the user must still do, e.g. containerd's `config_path` before 2.2.
    pub notes: Vec<String>,
}

/// What following a renewal did to the certs.d entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Followed {
    /// Entry folders that now hold the successor.
    pub updated: Vec<PathBuf>,
    /// Entries that could not be updated, and why.
    pub problems: Vec<String>,
}

/// A certificate file found in an entry.
#[derive(Debug, Clone, Serialize)]
pub struct CertFile {
    /// Its path.
    pub path: PathBuf,
    /// Subject; empty when unreadable.
    pub subject: String,
    /// End of validity.
    #[serde(with = "time::serde::rfc3339::option")]
    pub not_after: Option<OffsetDateTime>,
    /// It is, or is signed by, the berth CA.
    pub berth_ca: bool,
}

/// One `<root>/<host>/` folder.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Which tree.
    pub root: Root,
    /// Folder name (the registry).
    pub host: String,
    /// Folder path.
    pub directory: PathBuf,
    /// berth wrote files here.
    pub managed: bool,
    /// CA files (`*.crt`).
    pub cas: Vec<CertFile>,
    /// Client certificates (`*.cert`).
    pub clients: Vec<CertFile>,
    /// What docker or podman would trip over.
    pub problems: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    /// Folder -> file name -> sha256 of the content berth wrote.
    entries: BTreeMap<PathBuf, BTreeMap<String, String>>,
}

/// The installer: owns the roots and the record of what berth wrote in them.
#[derive(Debug)]
pub struct Installer {
    state_path: PathBuf,
    docker_root: PathBuf,
    containers_root: PathBuf,
    containerd_root: PathBuf,
    lock: Mutex<()>,
    /// Where installs and removals are recorded.
    audit: crate::audit::Audit,
}

const CA_FILE: &str = "ca.crt";
const CERT_FILE: &str = "client.cert";
const KEY_FILE: &str = "client.key";

impl Installer {
    /// An installer writing under the configured roots and recording in `state_dir`.
    /// The record is read now, so a corrupt one stops the daemon at start.
    pub fn open(state_dir: &Path, cfg: &Settings) -> Result<Installer, Error> {
        let inst = Installer {
            state_path: state_dir.join("certsd.json"),
            docker_root: cfg.docker_root.clone(),
            containers_root: cfg.containers_root.clone(),
            containerd_root: cfg.containerd_root.clone(),
            lock: Mutex::new(()),
            audit: crate::audit::Audit::disabled(),
        };
        inst.load_state()?;
        Ok(inst)
    }

    /// Records every install and removal from now on in `audit`.
    pub fn set_audit(&mut self, audit: crate::audit::Audit) {
        self.audit = audit;
    }

    /// The root folder of a tree.
    pub fn root(&self, root: Root) -> &Path {
        match root {
            Root::Docker => &self.docker_root,
            Root::Containers => &self.containers_root,
            Root::Containerd => &self.containerd_root,
        }
    }

    /// Installs the berth CA, and a client pair when asked, for a registry. A client that
    /// berthd holds no valid certificate for is issued one here, so a single command sets up
    /// a new machine.
    pub fn install(
        &self,
        who: &Identity,
        pki: &Pki,
        req: &InstallRequest,
    ) -> Result<InstallOutcome, Error> {
        let r = self.install_inner(who, pki, req);
        if !req.dry_run {
            let mut rec = crate::audit::Record::new(who, crate::audit::Action::CertsInstall)
                .name(req.host.to_string())
                .outcome(&r);
            if let Ok(Some(serial)) = r.as_ref().map(|o| o.client_serial.clone()) {
                rec = rec.serial(serial);
            }
            self.audit.note(&rec);
        }
        r
    }

    fn install_inner(
        &self,
        who: &Identity,
        pki: &Pki,
        req: &InstallRequest,
    ) -> Result<InstallOutcome, Error> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut issued_client = false;
        let client = match &req.client {
            None => None,
            Some(name) => {
                let rec = match pki.find_held(CertKind::Client, name) {
                    Some(rec) => rec,
                    None if req.dry_run => {
                        return self.plan_only(req, true);
                    }
                    None => {
                        issued_client = true;
                        pki.issue(
                            who,
                            &IssueSpec {
                                kind: CertKind::Client,
                                names: Names {
                                    common_name: name.clone(),
                                    ..Names::default()
                                },
                                validity_days: None,
                                key_algorithm: KeyAlgorithm::default(),
                                hold_key: true,
                            },
                        )?
                        .record
                    }
                };
                let key = pki.held_key(&rec.serial)?;
                Some((rec, key))
            }
        };
        self.write_entry(
            pki.ca().cert_pem(),
            client
                .as_ref()
                .map(|(r, k)| (r.certificate_pem.as_str(), k)),
            client.as_ref().map(|(r, _)| r.serial.clone()),
            issued_client,
            req,
        )
    }

    /// Installs a pair this host holds itself (a host that enrolled with `berth join`: its
    /// own key, the certificate berthd signed, the CA it pinned), for every tree asked.
    pub fn install_pair(
        &self,
        req: &InstallRequest,
        ca_pem: &str,
        certificate_pem: &str,
        key: &SecretKeyPem,
        serial: &str,
    ) -> Result<InstallOutcome, Error> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.write_entry(
            ca_pem,
            Some((certificate_pem, key)),
            Some(serial.to_string()),
            false,
            req,
        )
    }

    /// Plans and (unless dry) writes the files of an entry into every tree asked, and
    /// records what berth wrote. The caller holds the lock.
    fn write_entry(
        &self,
        ca_pem: &str,
        client: Option<(&str, &SecretKeyPem)>,
        client_serial: Option<String>,
        issued_client: bool,
        req: &InstallRequest,
    ) -> Result<InstallOutcome, Error> {
        let mut state = self.load_state()?;
        let mut outcome = InstallOutcome {
            actions: Vec::new(),
            client_serial,
            issued_client,
            directories: Vec::new(),
            warnings: req.host.docker_loopback().into_iter().collect(),
            notes: self.notes(req),
        };
        for root in self.roots_for(req.containers, req.containerd) {
            let files = desired_files(ca_pem, client, root, &req.host);
            let dir = self.root(root).join(req.host.dir_name());
            let managed = state.entries.get(&dir).cloned().unwrap_or_default();
            let plan = plan_install(&dir, &files, &managed, req.force)?;
            if !req.dry_run {
                apply_install(&dir, &files, &plan)?;
                let rec = state.entries.entry(dir.clone()).or_default();
                for (name, content, _) in &files {
                    rec.insert(name.to_string(), sha256_hex(content));
                }
                self.save_state(&state)?;
                tracing::info!(dir = %dir.display(), client = req.client.as_deref().unwrap_or(""), "installed certs.d entry");
            }
            outcome.actions.extend(plan);
            outcome.directories.push(dir);
        }
        Ok(outcome)
    }

    /// After a client certificate was renewed on this host: every certs.d entry berth
    /// installed with the old certificate gets its successor (the newest valid certificate
    /// of the same name whose key berthd holds), atomically, so nothing keeps presenting a
    /// certificate that is about to expire. Entries someone changed by hand are left alone
    /// and reported.
    pub fn follow_renewal(&self, pki: &Pki, old: &pki::CertRecord) -> Result<Followed, Error> {
        let mut out = Followed::default();
        if old.kind != CertKind::Client {
            return Ok(out);
        }
        let old_hash = sha256_hex(old.certificate_pem.as_bytes());
        let state = self.load_state()?;
        // host dir name -> (containers tree has it, containerd tree has it)
        let mut hosts: BTreeMap<String, (bool, bool)> = BTreeMap::new();
        for (dir, files) in &state.entries {
            if files.get(CERT_FILE) != Some(&old_hash) {
                continue;
            }
            let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
                continue;
            };
            let name = name.to_string_lossy().into_owned();
            let t = hosts.entry(name).or_default();
            t.0 |= parent == self.containers_root;
            t.1 |= parent == self.containerd_root;
        }
        for (name, (containers, containerd)) in hosts {
            let req = InstallRequest {
                host: name.parse()?,
                client: Some(old.names.common_name.clone()),
                containers,
                containerd,
                dry_run: false,
                force: false,
            };
            match self.install(&Identity::Daemon, pki, &req) {
                Ok(o) => out.updated.extend(o.directories),
                Err(e) => out.problems.push(format!("{name}: {e}")),
            }
        }
        Ok(out)
    }

    /// The plan of an install whose client certificate does not exist yet (dry run).
    fn plan_only(&self, req: &InstallRequest, would_issue: bool) -> Result<InstallOutcome, Error> {
        let mut outcome = InstallOutcome {
            actions: Vec::new(),
            client_serial: None,
            issued_client: would_issue,
            directories: Vec::new(),
            warnings: req.host.docker_loopback().into_iter().collect(),
            notes: self.notes(req),
        };
        let state = self.load_state()?;
        let placeholder = SecretKeyPem::new(String::new());
        for root in self.roots_for(req.containers, req.containerd) {
            let dir = self.root(root).join(req.host.dir_name());
            let managed = state.entries.get(&dir).cloned().unwrap_or_default();
            // Content is unknown before issuing, so every existing client file is a change.
            let files = desired_files("", Some(("", &placeholder)), root, &req.host);
            let mut plan = plan_install(&dir, &files, &managed, req.force)?;
            for a in &mut plan {
                if a.kind == ActionKind::Unchanged {
                    a.kind = ActionKind::Replace;
                }
            }
            outcome.actions.extend(plan);
            outcome.directories.push(dir);
        }
        Ok(outcome)
    }

    /// Deletes the files berth wrote for a registry, and the folder when that leaves it
    /// empty. Files changed since berth wrote them are kept and reported.
    pub fn remove(
        &self,
        who: &Identity,
        host: &HostPort,
        containers: bool,
        containerd: bool,
        dry_run: bool,
    ) -> Result<Vec<FileAction>, Error> {
        let r = self.remove_inner(host, containers, containerd, dry_run);
        if !dry_run {
            self.audit.note(
                &crate::audit::Record::new(who, crate::audit::Action::CertsRemove)
                    .name(host.to_string())
                    .outcome(&r),
            );
        }
        r
    }

    fn remove_inner(
        &self,
        host: &HostPort,
        containers: bool,
        containerd: bool,
        dry_run: bool,
    ) -> Result<Vec<FileAction>, Error> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut state = self.load_state()?;
        let mut actions = Vec::new();
        let mut found = false;
        for root in self.roots_for(containers, containerd) {
            let dir = self.root(root).join(host.dir_name());
            let Some(managed) = state.entries.get(&dir).cloned() else {
                continue;
            };
            found = true;
            let mut plan: Vec<FileAction> = Vec::new();
            for (name, hash) in &managed {
                let path = dir.join(name);
                match std::fs::read(&path) {
                    Ok(content) if sha256_hex(&content) == *hash => {
                        plan.push(action(ActionKind::Delete, &path, 0))
                    }
                    Ok(_) => plan.push(action(ActionKind::KeepModified, &path, 0)),
                    Err(_) => {}
                }
            }
            // Never split the client pair: docker fails on a .cert without its .key.
            let kept = |n: &str| {
                plan.iter()
                    .any(|a| a.kind == ActionKind::KeepModified && a.path == dir.join(n))
            };
            if kept(CERT_FILE) || kept(KEY_FILE) {
                for a in &mut plan {
                    if a.path == dir.join(CERT_FILE) || a.path == dir.join(KEY_FILE) {
                        a.kind = ActionKind::KeepModified;
                    }
                }
            }
            let deleting: Vec<&Path> = plan
                .iter()
                .filter(|a| a.kind == ActionKind::Delete)
                .map(|a| a.path.as_path())
                .collect();
            let left = std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.filter_map(Result::ok)
                        .filter(|e| !deleting.contains(&e.path().as_path()))
                        .count()
                })
                .unwrap_or(0);
            if left == 0 && dir.is_dir() {
                plan.push(action(ActionKind::DeleteDir, &dir, 0));
            }
            if !dry_run {
                // Key before certificate, the reverse of install.
                plan.sort_by_key(|a| {
                    (
                        a.kind == ActionKind::DeleteDir,
                        a.path.file_name().is_some_and(|n| n != KEY_FILE),
                    )
                });
                for a in &plan {
                    match a.kind {
                        ActionKind::Delete => fsutil::remove_durable(&a.path)?,
                        ActionKind::DeleteDir => {
                            std::fs::remove_dir(&a.path).map_err(|source| fsutil::Error::Io {
                                op: "remove folder",
                                path: a.path.clone(),
                                source,
                            })?
                        }
                        _ => {}
                    }
                }
                state.entries.remove(&dir);
                self.save_state(&state)?;
                tracing::info!(dir = %dir.display(), "removed certs.d entry");
            }
            actions.extend(plan);
        }
        if !found {
            return Err(Error::NotInstalled(host.to_string()));
        }
        Ok(actions)
    }

    /// Every folder under both roots, berth's or not, with what is wrong with it.
    pub fn list(&self, pki: &Pki) -> Result<Vec<Entry>, Error> {
        let state = self.load_state()?;
        let mut out = Vec::new();
        for root in [Root::Docker, Root::Containers, Root::Containerd] {
            let Ok(rd) = std::fs::read_dir(self.root(root)) else {
                continue;
            };
            let mut dirs: Vec<PathBuf> = rd
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect();
            dirs.sort();
            for dir in dirs {
                out.push(entry(root, &dir, state.entries.contains_key(&dir), pki));
            }
        }
        Ok(out)
    }

    /// The entries of one registry.
    pub fn verify(&self, host: &HostPort, pki: &Pki) -> Result<Vec<Entry>, Error> {
        let state = self.load_state()?;
        Ok([Root::Docker, Root::Containers, Root::Containerd]
            .into_iter()
            .map(|root| (root, self.root(root).join(host.dir_name())))
            .filter(|(_, dir)| dir.is_dir())
            .map(|(root, dir)| {
                let managed = state.entries.contains_key(&dir);
                let mut e = entry(root, &dir, managed, pki);
                if root == Root::Docker
                    && let Some(w) = host.docker_loopback()
                {
                    e.problems.push(w);
                }
                e
            })
            .collect())
    }

    fn roots_for(&self, containers: bool, containerd: bool) -> Vec<Root> {
        let mut roots = vec![Root::Docker];
        if containers {
            roots.push(Root::Containers);
        }
        if containerd {
            roots.push(Root::Containerd);
        }
        roots
    }

    /// What the user must still do that berth does not do for them.
    fn notes(&self, req: &InstallRequest) -> Vec<String> {
        if !req.containerd {
            return Vec::new();
        }
        let root = self.containerd_root.display();
        vec![format!(
            "containerd reads {root}/{}/hosts.toml only where its config_path names {root}: containerd 2.2 and later look in /etc/containerd/certs.d by default; before 2.2 add to /etc/containerd/config.toml\n  [plugins.\"io.containerd.grpc.v1.cri\".registry]\n    config_path = \"{root}\"\nand restart containerd; ctr needs --hosts-dir {root}",
            req.host.dir_name()
        )]
    }

    fn load_state(&self) -> Result<StateFile, Error> {
        match std::fs::read(&self.state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::CorruptState {
                path: self.state_path.clone(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StateFile {
                version: 1,
                entries: BTreeMap::new(),
            }),
            Err(source) => Err(fsutil::Error::Io {
                op: "read",
                path: self.state_path.clone(),
                source,
            }
            .into()),
        }
    }

    fn save_state(&self, state: &StateFile) -> Result<(), Error> {
        let json = serde_json::to_vec_pretty(state).map_err(|e| Error::CorruptState {
            path: self.state_path.clone(),
            reason: e.to_string(),
        })?;
        Ok(fsutil::write_atomic(&self.state_path, &json, 0o644)?)
    }
}

type DesiredFile<'a> = (&'static str, Vec<u8>, u32);

/// The files of an entry, in the order they must be written: CA, certificate, key, then
/// (docker's and containerd's trees) the hosts.toml that points containerd at them.
fn desired_files<'a>(
    ca_pem: &str,
    client: Option<(&str, &SecretKeyPem)>,
    root: Root,
    host: &HostPort,
) -> Vec<DesiredFile<'a>> {
    let mut files = vec![(CA_FILE, ca_pem.as_bytes().to_vec(), 0o644)];
    if let Some((cert, key)) = client {
        files.push((CERT_FILE, cert.as_bytes().to_vec(), 0o644));
        files.push((KEY_FILE, key.secret_pem().as_bytes().to_vec(), 0o600));
    }
    match root {
        // docker ignores hosts.toml; Docker 29's containerd image store reads it there.
        Root::Docker | Root::Containerd => files.push((
            HOSTS_FILE,
            hosts_toml(host, client.is_some()).into_bytes(),
            0o644,
        )),
        Root::Containers => {}
    }
    files
}

/// What buildkitd needs for `host` (in /etc/buildkit/buildkitd.toml), pointing at the pair
/// installed in `dir`. berth does not edit buildkitd.toml: it holds the user's other
/// settings, and buildkitd must be restarted to read it.
pub fn buildkit_snippet(host: &HostPort, dir: &Path) -> String {
    let d = dir.display();
    format!(
        "[registry.\"{}\"]\n  ca = [\"{d}/{CA_FILE}\"]\n  [[registry.\"{}\".keypair]]\n    key = \"{d}/{KEY_FILE}\"\n    cert = \"{d}/{CERT_FILE}\"\n",
        host.dir_name(),
        host.dir_name()
    )
}

/// What k3s needs for `host` (in /etc/rancher/k3s/registries.yaml), pointing at the pair in
/// `dir`; k3s reads the file only at start, so it must be restarted.
pub fn k3s_snippet(host: &HostPort, dir: &Path) -> String {
    let d = dir.display();
    format!(
        "configs:\n  \"{}\":\n    tls:\n      ca_file: {d}/{CA_FILE}\n      cert_file: {d}/{CERT_FILE}\n      key_file: {d}/{KEY_FILE}\n",
        host.dir_name()
    )
}

/// What [`configure_buildkit`] and [`configure_k3s`] did to a runtime's config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConfigChange {
    /// The file did not exist and now holds the entry.
    Created,
    /// The entry was added at the end of the file (which still parses).
    Appended,
    /// The file already had exactly this entry.
    Unchanged,
    /// The file has another entry for this registry, or cannot be merged safely: it was
    /// left alone, and the entry must be added by hand.
    LeftAlone(String),
}

/// Points buildkitd at the pair in `dir`: creates `file` with the section, or appends the
/// section to an existing file that has none for this registry and still parses after;
/// anything else is left alone and said. buildkitd reads the file only when it starts.
pub fn configure_buildkit(file: &Path, host: &HostPort, dir: &Path) -> Result<ConfigChange, Error> {
    let snippet = buildkit_snippet(host, dir);
    let old = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = file.parent() {
                fsutil::create_dir_all(parent, 0o755)?;
            }
            fsutil::write_atomic(file, snippet.as_bytes(), 0o644)?;
            return Ok(ConfigChange::Created);
        }
        Err(source) => {
            return Err(fsutil::Error::Io {
                op: "read",
                path: file.to_path_buf(),
                source,
            }
            .into());
        }
    };
    let Ok(table) = toml::from_str::<toml::Table>(&old) else {
        return Ok(ConfigChange::LeftAlone(format!(
            "{} does not parse as TOML",
            file.display()
        )));
    };
    let ours: toml::Table = toml::from_str(&snippet).unwrap_or_default();
    let key = host.dir_name();
    let theirs = table
        .get("registry")
        .and_then(|r| r.as_table())
        .and_then(|r| r.get(&key));
    match theirs {
        Some(t) if ours.get("registry").and_then(|r| r.get(&key)) == Some(t) => {
            Ok(ConfigChange::Unchanged)
        }
        Some(_) => Ok(ConfigChange::LeftAlone(format!(
            "{} already has a [registry.\"{key}\"] section of its own",
            file.display()
        ))),
        None => {
            let merged = format!("{}\n# Added by berth for {key}.\n{snippet}", old.trim_end());
            if toml::from_str::<toml::Table>(&merged).is_err() {
                return Ok(ConfigChange::LeftAlone(format!(
                    "adding the section would make {} invalid TOML",
                    file.display()
                )));
            }
            fsutil::write_atomic(file, merged.as_bytes(), 0o644)?;
            Ok(ConfigChange::Appended)
        }
    }
}

/// Points k3s at the pair in `dir`: creates `file` (registries.yaml) when there is none.
/// An existing one holds the user's mirrors and other registries and is YAML, which berth
/// does not rewrite: it is left alone and the entry must be added by hand. k3s reads the
/// file only when it starts.
pub fn configure_k3s(file: &Path, host: &HostPort, dir: &Path) -> Result<ConfigChange, Error> {
    if file.exists() {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let snippet = k3s_snippet(host, dir);
        if text == snippet {
            return Ok(ConfigChange::Unchanged);
        }
        return Ok(ConfigChange::LeftAlone(format!(
            "{} exists; berth does not rewrite it",
            file.display()
        )));
    }
    if let Some(parent) = file.parent() {
        fsutil::create_dir_all(parent, 0o755)?;
    }
    fsutil::write_atomic(file, k3s_snippet(host, dir).as_bytes(), 0o600)?;
    Ok(ConfigChange::Created)
}

/// File name containerd reads in a hosts folder.
const HOSTS_FILE: &str = "hosts.toml";

/// containerd's hosts.toml for `host`: `server` plus a `[host."https://..."]` table, because
/// containerd 1.6 refuses top-level keys alone ("invalid `host` tree") and without a host
/// table it speaks plain HTTP to localhost. Paths are relative to the folder.
fn hosts_toml(host: &HostPort, with_client: bool) -> String {
    let url = format!("https://{}", host.dir_name());
    let mut t = format!(
        "# Written by berth: containerd's registry settings for {host}.\nserver = \"{url}\"\n\n[host.\"{url}\"]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n  ca = \"{CA_FILE}\"\n"
    );
    if with_client {
        t.push_str(&format!("  client = [[\"{CERT_FILE}\", \"{KEY_FILE}\"]]\n"));
    }
    t
}

fn action(kind: ActionKind, path: &Path, mode: u32) -> FileAction {
    FileAction {
        kind,
        path: path.to_path_buf(),
        mode,
    }
}

fn plan_install(
    dir: &Path,
    files: &[DesiredFile<'_>],
    managed: &BTreeMap<String, String>,
    force: bool,
) -> Result<Vec<FileAction>, Error> {
    let mut plan = Vec::new();
    if !dir.is_dir() {
        plan.push(action(ActionKind::CreateDir, dir, 0o755));
    }
    for (name, content, mode) in files {
        let path = dir.join(name);
        let kind = match std::fs::read(&path) {
            Err(_) => ActionKind::Create,
            Ok(current) => {
                let same_mode =
                    std::fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o777 == *mode);
                if current == *content && same_mode {
                    ActionKind::Unchanged
                } else if force
                    || managed
                        .get(*name)
                        .is_some_and(|h| *h == sha256_hex(&current))
                {
                    ActionKind::Replace
                } else {
                    return Err(Error::Conflict(path));
                }
            }
        };
        plan.push(action(kind, &path, *mode));
    }
    Ok(plan)
}

/// A file's content and mode before an install replaced it, to put back on failure.
type Previous = (Vec<u8>, u32);

/// Writes the planned files: all are staged first, then renamed into place in order. If a
/// rename fails, the files already renamed get their old content back (or are deleted), so
/// the entry is never left with a certificate and someone else's key.
fn apply_install(dir: &Path, files: &[DesiredFile<'_>], plan: &[FileAction]) -> Result<(), Error> {
    fsutil::create_dir_all(dir, 0o755)?;
    let mut staged = Vec::new();
    for (name, content, mode) in files {
        let path = dir.join(name);
        if plan
            .iter()
            .any(|a| a.path == path && a.kind == ActionKind::Unchanged)
        {
            continue;
        }
        let old = std::fs::read(&path).ok().map(|b| {
            (
                b,
                std::fs::metadata(&path)
                    .map(|m| m.permissions().mode() & 0o777)
                    .unwrap_or(0o600),
            )
        });
        match fsutil::stage(&path, content, *mode) {
            Ok(tmp) => staged.push((tmp, path, old)),
            Err(e) => {
                for (tmp, _, _) in &staged {
                    let _ = std::fs::remove_file(tmp);
                }
                return Err(e.into());
            }
        }
    }
    let mut done: Vec<(PathBuf, Option<Previous>)> = Vec::new();
    let mut iter = staged.into_iter();
    while let Some((tmp, path, old)) = iter.next() {
        if let Err(e) = fsutil::commit(&tmp, &path) {
            for (tmp, _, _) in iter {
                let _ = std::fs::remove_file(tmp);
            }
            for (path, old) in done.into_iter().rev() {
                let _ = match old {
                    Some((bytes, mode)) => fsutil::write_atomic(&path, &bytes, mode),
                    None => fsutil::remove_durable(&path),
                };
            }
            return Err(e.into());
        }
        done.push((path, old));
    }
    Ok(())
}

fn entry(root: Root, dir: &Path, managed: bool, pki: &Pki) -> Entry {
    let mut e = Entry {
        root,
        host: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        directory: dir.to_path_buf(),
        managed,
        cas: Vec::new(),
        clients: Vec::new(),
        problems: Vec::new(),
    };
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|d| d.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let now = OffsetDateTime::now_utc();
    for name in &names {
        let path = dir.join(name);
        if let Some(stem) = name.strip_suffix(".crt") {
            let (file, _) = cert_file(&path, pki, &mut e.problems);
            if file.not_after.is_some_and(|t| t < now) {
                e.problems
                    .push(format!("{name} expired on {}", date(file.not_after)));
            }
            let _ = stem;
            e.cas.push(file);
        } else if let Some(stem) = name.strip_suffix(".cert") {
            let key_name = format!("{stem}.key");
            let (file, der) = cert_file(&path, pki, &mut e.problems);
            if !names.contains(&key_name) {
                e.problems.push(format!(
                    "{name} has no {key_name}: docker refuses every pull from this host"
                ));
            } else if let Some(der) = &der {
                check_pair(dir, name, &key_name, der, &mut e.problems);
            }
            if file.not_after.is_some_and(|t| t < now) {
                e.problems
                    .push(format!("{name} expired on {}", date(file.not_after)));
            }
            if let Some(der) = &der
                && let Ok((_, x)) = X509Certificate::from_der(der)
                && let Ok(Some(eku)) = x.extended_key_usage()
                && !eku.value.client_auth
                && !eku.value.any
            {
                e.problems.push(format!(
                    "{name} lacks the clientAuth extended key usage: registries will refuse it"
                ));
            }
            if managed && !file.berth_ca {
                e.problems
                    .push(format!("{name} is not signed by the berth CA"));
            }
            e.clients.push(file);
        } else if let Some(stem) = name.strip_suffix(".key") {
            let cert_name = format!("{stem}.cert");
            if !names.contains(&cert_name) {
                e.problems.push(format!(
                    "{name} has no {cert_name}: docker refuses every pull from this host"
                ));
            }
            if let Ok(m) = std::fs::metadata(dir.join(name))
                && m.permissions().mode() & 0o077 != 0
            {
                e.problems.push(format!(
                    "{name} is readable by group or others (mode {:04o}): chmod 600 it",
                    m.permissions().mode() & 0o777
                ));
            }
        }
    }
    if managed && !e.cas.iter().any(|c| c.berth_ca) {
        e.problems
            .push("no ca.crt of the berth CA: clients will not trust the registry".into());
    }
    e
}

fn cert_file(path: &Path, pki: &Pki, problems: &mut Vec<String>) -> (CertFile, Option<Vec<u8>>) {
    let mut file = CertFile {
        path: path.to_path_buf(),
        subject: String::new(),
        not_after: None,
        berth_ca: false,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(err) => {
            problems.push(format!("cannot read {name}: {err}"));
            return (file, None);
        }
    };
    match pki.inspect(&bytes) {
        Ok(certs) if !certs.is_empty() => {
            let leaf = &certs[0];
            file.subject = leaf.subject.clone();
            file.not_after = Some(leaf.not_after);
            file.berth_ca = leaf.chains_to_berth_ca;
            if leaf.status == CertStatus::Revoked {
                problems.push(format!("{name} was revoked by the berth CA"));
            }
            let der = pki::parse_certificates(&bytes)
                .ok()
                .and_then(|v| v.into_iter().next());
            (file, der)
        }
        Ok(_) => (file, None),
        Err(err) => {
            problems.push(format!("cannot parse {name}: {err}"));
            (file, None)
        }
    }
}

fn check_pair(
    dir: &Path,
    cert_name: &str,
    key_name: &str,
    cert_der: &[u8],
    problems: &mut Vec<String>,
) {
    let Ok(key_pem) = std::fs::read_to_string(dir.join(key_name)) else {
        problems.push(format!("cannot read {key_name}"));
        return;
    };
    // Only PKCS#8 keys can be checked here; other encodings are left to the client.
    let Ok(key) = KeyPair::from_pem(&key_pem) else {
        return;
    };
    let Ok((_, x)) = X509Certificate::from_der(cert_der) else {
        return;
    };
    if x.public_key().raw != key.subject_public_key_info().as_slice() {
        problems.push(format!(
            "{key_name} does not match {cert_name}: the TLS handshake will fail"
        ));
    }
}

fn date(t: Option<OffsetDateTime>) -> String {
    t.map(|t| t.date().to_string()).unwrap_or_default()
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

#[cfg(test)]
mod tests;
