//! `berth doctor`: why docker, podman or containerd will refuse a registry, before they do.
//!
//! Every Go client prints the same `remote error: tls: bad certificate` or `x509:
//! certificate signed by unknown authority`; the reason is on another machine. This reads
//! the files the way each runtime reads them (`files`) and then talks to the registry the
//! way a client would (`probe`), and says what is wrong as [`Finding`]s: a stable code, a
//! severity, the file, the error the client would print and the fix.
//!
//! The rules, from the runtimes' code:
//! - docker (moby `registry.ReadCertsDirectory`) and containers/image (podman, skopeo,
//!   buildah: `tlsclientconfig.SetupCertificates`) read `<root>/<host[:port]>/`: every
//!   `*.crt` is a CA (PEM; anything else in it is silently skipped), every `*.cert` needs
//!   the `*.key` of the same stem and the reverse, and every other file is ignored. The
//!   folder is the registry as the image reference names it: `host:port`, or `host` alone
//!   when the reference has no port (443).
//! - containers/image looks in `~/.config/containers/certs.d`, `/etc/containers/certs.d`
//!   and `/etc/docker/certs.d`, and uses the first that has the host's folder.
//! - dockerd treats registries on loopback (127.0.0.0/8; `::1` too since Engine 28) as
//!   insecure: it never reads certs.d for them and sends no client certificate.
//! - containerd reads `<root>/<host[:port]>/hosts.toml` when there is one (and then only
//!   the files it names); without one it reads the folder docker's way.
//!
//! It needs no berthd: it is what a client host sees.

mod files;
mod probe;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::certsd::HostPort;

pub use probe::probe;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The client will fail.
    Error,
    /// It works, but is unsafe or fragile.
    Warning,
}

/// One thing wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable code, e.g. `orphan-key`, `folder-name-port`, `loopback-insecure`.
    pub code: &'static str,
    /// Error or warning.
    pub severity: Severity,
    /// Whose view: `docker`, `podman` (containers/image: podman, skopeo, buildah),
    /// `containerd`, or `certs.d` for a folder given with `--certs-d`.
    pub runtime: &'static str,
    /// The file or folder concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// What is wrong, in words.
    pub message: String,
    /// What the client prints when it fails this way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_error: Option<String>,
    /// What to do, as a command where there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    fn new(
        code: &'static str,
        severity: Severity,
        runtime: &'static str,
        message: String,
    ) -> Finding {
        Finding {
            code,
            severity,
            runtime,
            path: None,
            message,
            client_error: None,
            fix: None,
        }
    }

    fn at(mut self, p: &Path) -> Finding {
        self.path = Some(p.to_path_buf());
        self
    }

    fn client(mut self, e: impl Into<String>) -> Finding {
        self.client_error = Some(e.into());
        self
    }

    fn fix(mut self, f: impl Into<String>) -> Finding {
        self.fix = Some(f.into());
        self
    }
}

/// Where each runtime looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    /// The trees, in the order findings are reported: (runtime, root).
    pub trees: Vec<(&'static str, Vec<PathBuf>)>,
}

impl Roots {
    /// This host's trees: docker's, containers/image's (user, system, then docker's, first
    /// match wins) and containerd's.
    pub fn system(home: Option<&Path>) -> Roots {
        let mut containers = Vec::new();
        if let Some(h) = home {
            containers.push(h.join(".config/containers/certs.d"));
        }
        containers.push(PathBuf::from("/etc/containers/certs.d"));
        containers.push(PathBuf::from("/etc/docker/certs.d"));
        Roots {
            trees: vec![
                ("docker", vec![PathBuf::from("/etc/docker/certs.d")]),
                ("podman", containers),
                ("containerd", vec![PathBuf::from("/etc/containerd/certs.d")]),
            ],
        }
    }

    /// One folder of host folders that berth did not write, or another host's copy: read
    /// by the certs.d rules docker and containers/image share, and containerd's when it
    /// holds a hosts.toml.
    pub fn certs_d(root: &Path) -> Roots {
        Roots {
            trees: vec![("certs.d", vec![root.to_path_buf()])],
        }
    }
}

/// What doctor found for one registry.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The registry, as docker names it.
    pub registry: String,
    /// The folder each runtime uses (none: it has no folder for this registry).
    pub folders: Vec<(String, Option<PathBuf>)>,
    /// Everything wrong, most severe first.
    pub findings: Vec<Finding>,
}

impl Report {
    /// True when some client will fail.
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }
}

/// What the files alone say about `host` in `roots`.
pub fn check_files(roots: &Roots, host: &HostPort) -> Report {
    let mut findings = Vec::new();
    let mut folders = Vec::new();
    for (runtime, dirs) in &roots.trees {
        let (used, mut f) = files::check_tree(runtime, dirs, host);
        folders.push((runtime.to_string(), used));
        findings.append(&mut f);
    }
    if findings.is_empty() && folders.iter().all(|(_, d)| d.is_none()) {
        let looked: Vec<String> = roots
            .trees
            .iter()
            .flat_map(|(_, d)| {
                d.iter()
                    .map(|p| p.join(host.dir_name()).display().to_string())
            })
            .fold(Vec::new(), |mut v, p| {
                if !v.contains(&p) {
                    v.push(p);
                }
                v
            });
        findings.push(
            Finding::new(
                "folder-missing",
                Severity::Error,
                roots.trees.first().map_or("certs.d", |t| t.0),
                format!(
                    "no runtime has a folder for {host} (looked in {}): clients trust only the system CAs and send no client certificate",
                    looked.join(", ")
                ),
            )
            .client("remote error: tls: certificate required (or: x509: certificate signed by unknown authority)")
            .fix(format!("berth certs install {host} (on the berth host), or berth join (on this one)")),
        );
    }
    let mut report = Report {
        registry: host.to_string(),
        folders,
        findings,
    };
    sort(&mut report.findings);
    report
}

/// Files, then (unless `probe` is false) the live registry.
pub async fn diagnose(roots: &Roots, host: &HostPort, live: bool) -> Report {
    let mut report = check_files(roots, host);
    if live {
        let mut seen: Vec<PathBuf> = Vec::new();
        let mut all = Vec::new();
        for (runtime, dir) in &report.folders {
            let Some(dir) = dir else { continue };
            if seen.contains(dir) {
                continue;
            }
            seen.push(dir.clone());
            let material = files::material(dir);
            let runtime = roots
                .trees
                .iter()
                .map(|(r, _)| *r)
                .find(|r| *r == runtime.as_str())
                .unwrap_or("certs.d");
            all.extend(probe(runtime, host, dir, &material).await);
        }
        if report.folders.iter().all(|(_, d)| d.is_none()) {
            let runtime = roots.trees.first().map_or("certs.d", |t| t.0);
            all.extend(probe(runtime, host, Path::new(""), &files::Material::default()).await);
        }
        report.findings.extend(all);
        sort(&mut report.findings);
    }
    report
}

/// Every registry some tree has a folder for.
pub fn registries(roots: &Roots) -> Vec<HostPort> {
    let mut out: Vec<HostPort> = Vec::new();
    for (_, dirs) in &roots.trees {
        for d in dirs {
            let Ok(rd) = std::fs::read_dir(d) else {
                continue;
            };
            for e in rd.filter_map(Result::ok) {
                if !e.path().is_dir() {
                    continue;
                }
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('_') || name.starts_with('.') {
                    continue;
                }
                if let Ok(h) = name.parse::<HostPort>()
                    && !out.contains(&h)
                {
                    out.push(h);
                }
            }
        }
    }
    out.sort_by_key(ToString::to_string);
    out
}

/// Grouped by runtime, the group with the worst finding first; most severe first within.
fn sort(f: &mut [Finding]) {
    let worst = |rt: &str, all: &[Finding]| {
        all.iter()
            .filter(|x| x.runtime == rt)
            .map(|x| x.severity)
            .min()
            .unwrap_or(Severity::Warning)
    };
    let keys: Vec<(Severity, &'static str)> =
        f.iter().map(|x| (worst(x.runtime, f), x.runtime)).collect();
    let mut idx: Vec<usize> = (0..f.len()).collect();
    idx.sort_by_key(|&i| (keys[i].0, keys[i].1, f[i].severity));
    let sorted: Vec<Finding> = idx.iter().map(|&i| f[i].clone()).collect();
    f.clone_from_slice(&sorted);
}

/// The registry part of what a user may paste: `host:port`, an image reference
/// (`host:port/team/app:1.0`), or either with `docker://` or `https://` in front.
pub fn registry_of(s: &str) -> &str {
    let s = s
        .trim()
        .trim_start_matches("docker://")
        .trim_start_matches("https://");
    s.split('/').next().unwrap_or(s)
}

#[cfg(test)]
mod tests;
