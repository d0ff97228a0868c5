//! What the files alone show: each runtime's folder for a registry, the files it loads and
//! the ones it silently ignores, every certificate and key in them.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{Finding, Severity};
use crate::certsd::HostPort;

/// A client certificate expiring sooner than this is a warning.
const EXPIRING_DAYS: i64 = 14;

/// What a probe presents and trusts: the folder as the runtime loaded it.
#[derive(Debug, Default)]
pub struct Material {
    /// CA certificates the runtime trusts for this registry (besides the system's).
    pub cas: Vec<CertificateDer<'static>>,
    /// The client chain and key it presents (the first pair, as Go picks it when the
    /// server names no acceptable CAs).
    pub pair: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

fn err(code: &'static str, runtime: &'static str, m: String) -> Finding {
    Finding::new(code, Severity::Error, runtime, m)
}

fn warn(code: &'static str, runtime: &'static str, m: String) -> Finding {
    Finding::new(code, Severity::Warning, runtime, m)
}

/// The runtime's folder for `host` among `dirs` (first match wins), and what is wrong.
pub(super) fn check_tree(
    runtime: &'static str,
    dirs: &[PathBuf],
    host: &HostPort,
) -> (Option<PathBuf>, Vec<Finding>) {
    let name = host.dir_name();
    let existing: Vec<&PathBuf> = dirs.iter().filter(|d| d.is_dir()).collect();
    if existing.is_empty() {
        if runtime == "certs.d" {
            let d = dirs.first().cloned().unwrap_or_default();
            return (
                None,
                vec![
                    err(
                        "folder-missing",
                        runtime,
                        format!("{} is not a folder", d.display()),
                    )
                    .at(&d),
                ],
            );
        }
        return (None, Vec::new());
    }
    let with: Vec<PathBuf> = existing
        .iter()
        .map(|d| d.join(&name))
        .filter(|p| p.is_dir())
        .collect();
    let mut out = Vec::new();
    let Some(used) = with.first().cloned() else {
        for d in &existing {
            out.extend(misnamed(runtime, d, host));
        }
        if out.is_empty() {
            let root = existing[0];
            let f = Finding::new(
                "folder-missing",
                if runtime == "certs.d" { Severity::Error } else { Severity::Warning },
                runtime,
                format!(
                    "no folder for {name} in {}: this client will trust only the system CAs and send no client certificate",
                    root.display()
                ),
            )
            .at(&root.join(&name))
            .client("remote error: tls: certificate required (or: x509: certificate signed by unknown authority)")
            .fix(format!("berth certs install {name}"));
            out.push(f);
        }
        return (None, out);
    };
    // containers/image uses the first folder; a different one further down is shadowed.
    for other in with.iter().skip(1) {
        if listing(other) != listing(&used) {
            out.push(
                warn(
                    "shadowed",
                    runtime,
                    format!(
                        "{} is ignored: {} comes first and wins, and the two differ",
                        other.display(),
                        used.display()
                    ),
                )
                .at(other)
                .fix(format!(
                    "make them the same, or remove one: rm -r {}",
                    other.display()
                )),
            );
        }
    }
    let hosts_toml = used.join("hosts.toml");
    let containerd_view = runtime == "containerd" || (runtime == "certs.d" && hosts_toml.exists());
    if containerd_view && hosts_toml.exists() {
        out.extend(containerd(runtime, &used, host));
    } else {
        out.extend(docker_style(runtime, &used));
    }
    if let Some(why) = host.docker_loopback() {
        match runtime {
            "docker" => out.push(
                err("loopback-insecure", runtime, why)
                    .at(&used)
                    .client("remote error: tls: certificate required (docker sent no client certificate)")
                    .fix("serve the registry under a non-loopback address and name, and install for that name"),
            ),
            "certs.d" => out.push(warn("loopback-insecure", runtime, why).at(&used)),
            _ => {}
        }
    }
    (Some(used), out)
}

/// The file names and sizes of a folder, to tell two copies apart.
fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        std::fs::read(e.path()).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Folders in `root` that were meant for `host` but that no client will look in.
fn misnamed(runtime: &'static str, root: &Path, host: &HostPort) -> Vec<Finding> {
    let want = host.dir_name();
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(root) else {
        return out;
    };
    for e in rd.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if !e.path().is_dir() || name == want {
            continue;
        }
        let (h, port) = match name.rsplit_once(':') {
            Some((h, p)) if !name.ends_with(']') && p.chars().all(|c| c.is_ascii_digit()) => {
                (h.to_string(), Some(p.to_string()))
            }
            _ => (name.clone(), None),
        };
        let wanted = format!("the image reference {want}/... makes clients look in {want}",);
        if h == host.host() {
            let what = match port {
                None => "has no port".to_string(),
                Some(p) => format!("names port {p}"),
            };
            out.push(
                err(
                    "folder-name-port",
                    runtime,
                    format!("{} {what}: {wanted}; this folder is never read", e.path().display()),
                )
                .at(&e.path())
                .client("x509: certificate signed by unknown authority (or: remote error: tls: certificate required)")
                .fix(format!("mv '{}' '{}'", e.path().display(), root.join(&want).display())),
            );
        } else if h.eq_ignore_ascii_case(host.host())
            && port.as_deref().map(str::to_string)
                == host.port().filter(|p| *p != 443).map(|p| p.to_string())
        {
            out.push(
                err(
                    "folder-name-case",
                    runtime,
                    format!(
                        "{} differs from {want} in case; the lookup is exact, so it is never read",
                        e.path().display()
                    ),
                )
                .at(&e.path())
                .fix(format!(
                    "mv '{}' '{}'",
                    e.path().display(),
                    root.join(&want).display()
                )),
            );
        }
    }
    out
}

/// A parsed certificate's facts.
struct CertFacts {
    is_ca: bool,
    client_auth: bool,
    has_eku: bool,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    subject: String,
}

fn facts(der: &[u8]) -> Option<CertFacts> {
    let (_, c) = X509Certificate::from_der(der).ok()?;
    let eku = c
        .extended_key_usage()
        .ok()
        .flatten()
        .map(|e| e.value.clone());
    let (has_eku, client_auth) = match &eku {
        None => (false, true),
        Some(e) => (true, e.client_auth || e.any),
    };
    Some(CertFacts {
        is_ca: c.is_ca(),
        client_auth,
        has_eku,
        not_before: c.validity().not_before.to_datetime(),
        not_after: c.validity().not_after.to_datetime(),
        subject: c.subject().to_string(),
    })
}

/// PEM certificates in `data`: `None` when there are none (DER, garbage, a key).
fn pem_certs(data: &[u8]) -> Option<Vec<CertificateDer<'static>>> {
    let v: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(data)
        .filter_map(Result::ok)
        .collect();
    (!v.is_empty()).then_some(v)
}

/// Why a key file will not load in Go's `tls.X509KeyPair`, or the key.
fn load_key(data: &[u8]) -> Result<PrivateKeyDer<'static>, (&'static str, String, &'static str)> {
    let text = String::from_utf8_lossy(data);
    if !text.contains("-----BEGIN") {
        return Err((
            "key-not-pem",
            "is not PEM (DER or another encoding); Go reads only PEM keys".into(),
            "tls: failed to find any PEM data in key input",
        ));
    }
    if text.contains("ENCRYPTED") {
        return Err((
            "key-encrypted",
            "is encrypted with a passphrase; no container runtime can ask for one".into(),
            "tls: failed to parse private key",
        ));
    }
    PrivateKeyDer::from_pem_slice(data).map_err(|_| {
        (
            "key-not-pem",
            "holds no PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block".into(),
            "tls: failed to find any PEM data in key input",
        )
    })
}

fn key_matches(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
) -> Result<(), &'static str> {
    let provider = rustls::crypto::ring::default_provider();
    // A key ring cannot load (P-521, say) may still be one Go reads: no verdict then.
    let Ok(signing) = provider.key_provider.load_private_key(key.clone_key()) else {
        return Ok(());
    };
    match rustls::sign::CertifiedKey::new(chain.to_vec(), signing).keys_match() {
        Ok(()) => Ok(()),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err("tls: private key does not match public key")
        }
        Err(_) => Ok(()),
    }
}

fn mode_of(p: &Path) -> Option<(u32, u32)> {
    std::fs::metadata(p)
        .ok()
        .map(|m| (m.permissions().mode() & 0o777, m.uid()))
}

/// A folder read the way docker and containers/image read it.
fn docker_style(runtime: &'static str, dir: &Path) -> Vec<Finding> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => {
            let mut v: Vec<PathBuf> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
            v.sort();
            v
        }
        Err(e) => {
            return vec![
                err(
                    "folder-unreadable",
                    runtime,
                    format!("cannot read {}: {e}", dir.display()),
                )
                .at(dir)
                .fix(format!("chmod 755 '{}'", dir.display())),
            ];
        }
    };
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let names: Vec<String> = entries.iter().map(|p| name(p)).collect();
    let has = |n: &str| names.iter().any(|x| x == n);
    let mut usable_ca = false;
    let mut unusable_ca: Vec<PathBuf> = Vec::new();
    let mut has_pair = false;
    let mut ignored_ca: Vec<PathBuf> = Vec::new();
    let mut ignored_pair: Vec<PathBuf> = Vec::new();
    let now = OffsetDateTime::now_utc();
    for p in &entries {
        let n = name(p);
        if p.is_dir() {
            continue;
        }
        let data = match std::fs::read(p) {
            Ok(d) => d,
            Err(e)
                if std::fs::symlink_metadata(p).is_ok()
                    && e.kind() == std::io::ErrorKind::NotFound =>
            {
                out.push(
                    err(
                        "dangling-link",
                        runtime,
                        format!("{} is a symbolic link to nothing", p.display()),
                    )
                    .at(p)
                    .client(format!("open {}: no such file or directory", p.display()))
                    .fix(format!("rm '{}' or point it at the file", p.display())),
                );
                continue;
            }
            Err(e) => {
                out.push(
                    err(
                        "file-unreadable",
                        runtime,
                        format!("cannot read {}: {e}", p.display()),
                    )
                    .at(p),
                );
                continue;
            }
        };
        if let Some(stem) = n.strip_suffix(".crt") {
            match pem_certs(&data) {
                None => unusable_ca.push(p.clone()),
                Some(certs) => {
                    let leaf = certs.first().and_then(|c| facts(c));
                    // A client certificate named .crt beside its key: loaded as a CA, and
                    // no client certificate is sent.
                    if has(&format!("{stem}.key"))
                        && !has(&format!("{stem}.cert"))
                        && leaf.as_ref().is_some_and(|f| !f.is_ca)
                    {
                        out.push(
                            err(
                                "client-cert-named-crt",
                                runtime,
                                format!("{} is a client certificate, but *.crt files are CAs: it is trusted as a CA and never sent, and {stem}.key has no {stem}.cert", p.display()),
                            )
                            .at(p)
                            .client(format!("missing client certificate {stem}.cert for key {stem}.key"))
                            .fix(format!("mv '{}' '{}'", p.display(), dir.join(format!("{stem}.cert")).display())),
                        );
                        has_pair = true;
                        continue;
                    }
                    usable_ca = true;
                    for c in &certs {
                        let Some(f) = facts(c) else { continue };
                        if f.not_after < now {
                            out.push(err("ca-expired", runtime, format!("CA {} in {} expired at {}", f.subject, p.display(), f.not_after)).at(p)
                                .client("x509: certificate has expired or is not yet valid")
                                .fix("install the current CA: berth ca show > ca.crt (on the registry's berth host)"));
                        } else if !f.is_ca {
                            out.push(warn("ca-not-ca", runtime, format!("{} holds {}, which is not a CA certificate; it can only vouch for itself", p.display(), f.subject)).at(p));
                        }
                    }
                }
            }
        } else if let Some(stem) = n.strip_suffix(".cert") {
            let key = dir.join(format!("{stem}.key"));
            if !has(&format!("{stem}.key")) {
                out.push(
                    err("cert-without-key", runtime, format!("{} has no {stem}.key beside it", p.display()))
                        .at(p)
                        .client(format!("missing key {stem}.key for client certificate {stem}.cert. Note that CA certificates should use the extension .crt"))
                        .fix(match pem_certs(&data).and_then(|c| c.first().and_then(|c| facts(c))) {
                            Some(f) if f.is_ca => format!("mv '{}' '{}'", p.display(), dir.join(format!("{stem}.crt")).display()),
                            _ => format!("put the key beside it as {}", key.display()),
                        }),
                );
                continue;
            }
            has_pair = true;
            out.extend(pair(runtime, p, &data, &key, now));
        } else if let Some(stem) = n.strip_suffix(".key") {
            if !has(&format!("{stem}.cert")) && !has(&format!("{stem}.crt")) {
                out.push(
                    err(
                        "orphan-key",
                        runtime,
                        format!("{} has no {stem}.cert beside it", p.display()),
                    )
                    .at(p)
                    .client(format!(
                        "missing client certificate {stem}.cert for key {stem}.key"
                    ))
                    .fix(format!(
                        "put the client certificate beside it as {stem}.cert, or rm '{}'",
                        p.display()
                    )),
                );
            }
            if let Some((mode, _)) = mode_of(p)
                && mode & 0o077 != 0
            {
                out.push(
                    warn(
                        "key-mode",
                        runtime,
                        format!(
                            "{} is mode {mode:o}: others can read the private key",
                            p.display()
                        ),
                    )
                    .at(p)
                    .fix(format!("chmod 600 '{}'", p.display())),
                );
            }
        } else if n != "hosts.toml" {
            // Ignored by every runtime: say so when it looks like something meant to count.
            let certs = pem_certs(&data);
            let is_key = String::from_utf8_lossy(&data).contains("PRIVATE KEY");
            match certs
                .as_ref()
                .and_then(|c| c.first().and_then(|c| facts(c)))
            {
                Some(f) if f.is_ca => ignored_ca.push(p.clone()),
                Some(_) => ignored_pair.push(p.clone()),
                None if is_key => ignored_pair.push(p.clone()),
                None => {}
            }
        }
    }
    // What the runtime ends up without, and why.
    if !usable_ca {
        if let Some(p) = unusable_ca.first() {
            out.push(
                err("ca-not-pem", runtime, format!("{} holds no PEM certificate (DER, or not a certificate): it is skipped without a word, and the registry's CA is not trusted", p.display()))
                    .at(p)
                    .client("x509: certificate signed by unknown authority")
                    .fix(format!("openssl x509 -inform der -in '{0}' -out '{0}.pem' && mv '{0}.pem' '{0}'", p.display())),
            );
        } else if let Some(p) = ignored_ca.first() {
            out.push(
                err("ignored-file", runtime, format!("{} is a CA certificate, but only *.crt files are read as CAs: it is ignored", p.display()))
                    .at(p)
                    .client("x509: certificate signed by unknown authority")
                    .fix(format!("mv '{}' '{}'", p.display(), dir.join("ca.crt").display())),
            );
        } else {
            out.push(
                warn(
                    "no-ca",
                    runtime,
                    format!(
                        "{} has no *.crt: only the system's CAs are trusted for this registry",
                        dir.display()
                    ),
                )
                .at(dir)
                .fix("if the registry's certificate is from a private CA, put it here as ca.crt"),
            );
        }
    } else {
        for p in &unusable_ca {
            out.push(
                warn(
                    "ca-not-pem",
                    runtime,
                    format!("{} holds no PEM certificate and is skipped", p.display()),
                )
                .at(p),
            );
        }
        for p in &ignored_ca {
            out.push(
                warn(
                    "ignored-file",
                    runtime,
                    format!(
                        "{} is ignored: only *.crt files are read as CAs",
                        p.display()
                    ),
                )
                .at(p),
            );
        }
    }
    if let Some(first) = ignored_pair.first() {
        let sev = if has_pair {
            Severity::Warning
        } else {
            Severity::Error
        };
        let all: Vec<String> = ignored_pair.iter().map(|p| name(p)).collect();
        out.push(
            Finding::new("ignored-file", sev, runtime, format!("{} in {} {} ignored: a client certificate must be NAME.cert and its key NAME.key", all.join(", "), dir.display(), if all.len() == 1 { "is" } else { "are" }))
                .at(first)
                .client("remote error: tls: certificate required")
                .fix("rename the pair to client.cert and client.key"),
        );
    }
    out
}

/// A client certificate and its key, as `tls.LoadX509KeyPair` loads them.
fn pair(
    runtime: &'static str,
    cert_path: &Path,
    data: &[u8],
    key_path: &Path,
    now: OffsetDateTime,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let Some(chain) = pem_certs(data) else {
        return vec![
            err(
                "cert-not-pem",
                runtime,
                format!("{} holds no PEM certificate", cert_path.display()),
            )
            .at(cert_path)
            .client("tls: failed to find any PEM data in certificate input")
            .fix(format!(
                "openssl x509 -inform der -in '{0}' -out '{0}.pem' && mv '{0}.pem' '{0}'",
                cert_path.display()
            )),
        ];
    };
    let key_data = match std::fs::read(key_path) {
        Ok(d) => d,
        Err(e) => {
            return vec![
                err(
                    "file-unreadable",
                    runtime,
                    format!("cannot read {}: {e}", key_path.display()),
                )
                .at(key_path),
            ];
        }
    };
    match load_key(&key_data) {
        Err((code, why, client)) => {
            let fix = if code == "key-encrypted" {
                format!(
                    "openssl pkey -in '{0}' -out '{0}.plain' && mv '{0}.plain' '{0}' && chmod 600 '{0}'",
                    key_path.display()
                )
            } else {
                format!(
                    "openssl pkey -inform der -in '{0}' -out '{0}.pem' && mv '{0}.pem' '{0}' && chmod 600 '{0}'",
                    key_path.display()
                )
            };
            out.push(
                err(code, runtime, format!("{} {why}", key_path.display()))
                    .at(key_path)
                    .client(client)
                    .fix(fix),
            );
        }
        Ok(key) => {
            if let Err(client) = key_matches(&chain, &key) {
                out.push(
                    err("key-mismatch", runtime, format!("{} is not the key of {}", key_path.display(), cert_path.display()))
                        .at(key_path)
                        .client(client)
                        .fix("put the key the certificate was issued for beside it (or issue a new pair: berth join / berth certs install)"),
                );
            }
        }
    }
    if let Some(f) = chain.first().and_then(|c| facts(c)) {
        if f.not_after < now {
            out.push(err("cert-expired", runtime, format!("{} ({}) expired at {}", cert_path.display(), f.subject, f.not_after))
                .at(cert_path)
                .client("remote error: tls: bad certificate (the server's log: certificate has expired)")
                .fix("berth renew (on a joined host), or berth cert renew SERIAL and install it"));
        } else if f.not_before > now {
            out.push(
                err(
                    "cert-not-yet-valid",
                    runtime,
                    format!(
                        "{} ({}) is valid only from {}: check this host's clock",
                        cert_path.display(),
                        f.subject,
                        f.not_before
                    ),
                )
                .at(cert_path)
                .client("remote error: tls: bad certificate")
                .fix("timedatectl set-ntp true"),
            );
        } else if f.not_after - now < time::Duration::days(EXPIRING_DAYS) {
            out.push(
                warn(
                    "cert-expiring",
                    runtime,
                    format!(
                        "{} ({}) expires at {}",
                        cert_path.display(),
                        f.subject,
                        f.not_after
                    ),
                )
                .at(cert_path)
                .fix("berth renew (on a joined host), or run berth agent"),
            );
        }
        if f.has_eku && !f.client_auth {
            out.push(err("cert-no-client-auth", runtime, format!("{} ({}) is not for client authentication: its extended key usage lacks clientAuth", cert_path.display(), f.subject))
                .at(cert_path)
                .client("remote error: tls: bad certificate (the server's log: certificate specifies an incompatible key usage)")
                .fix("issue a client certificate: berth cert issue client --name NAME"));
        }
        if f.is_ca {
            out.push(
                warn(
                    "cert-is-ca",
                    runtime,
                    format!(
                        "{} ({}) is a CA certificate used as a client certificate",
                        cert_path.display(),
                        f.subject
                    ),
                )
                .at(cert_path),
            );
        }
    }
    out
}

/// containerd's view of a folder with a hosts.toml.
fn containerd(runtime: &'static str, dir: &Path, host: &HostPort) -> Vec<Finding> {
    let runtime = if runtime == "certs.d" {
        "containerd"
    } else {
        runtime
    };
    let path = dir.join("hosts.toml");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            return vec![
                err(
                    "file-unreadable",
                    runtime,
                    format!("cannot read {}: {e}", path.display()),
                )
                .at(&path),
            ];
        }
    };
    let doc: toml::Table = match toml::from_str(&text) {
        Ok(d) => d,
        Err(e) => {
            return vec![
                err(
                    "hosts-toml-invalid",
                    runtime,
                    format!(
                        "{} does not parse: {}",
                        path.display(),
                        e.to_string().lines().next().unwrap_or_default()
                    ),
                )
                .at(&path)
                .client("failed to load hosts.toml")
                .fix(format!(
                    "berth certs install {host} --containerd rewrites it"
                )),
            ];
        }
    };
    let mut out = Vec::new();
    let now = OffsetDateTime::now_utc();
    let server = doc.get("server").and_then(|v| v.as_str());
    if let Some(s) = server {
        let authority = s.split("://").nth(1).unwrap_or(s).trim_end_matches('/');
        let want = format!("{}:{}", host.host(), host.port_or_default());
        let given = if authority.contains(':') && !authority.ends_with(']') {
            authority.to_string()
        } else {
            format!("{authority}:443")
        };
        if given != want {
            out.push(
                warn(
                    "hosts-toml-server-mismatch",
                    runtime,
                    format!("{} sends {host} to server {s}", path.display()),
                )
                .at(&path),
            );
        }
    } else if host.docker_loopback().is_some() {
        out.push(warn("loopback-http-fallback", runtime, format!("{} sets no server for a loopback registry: containerd may fall back to plain HTTP and skip verification for localhost", path.display())).at(&path)
            .fix(format!("add server = \"https://{host}\" to {}", path.display())));
    }
    // Entries: top level (the server) and every [host."..."].
    let mut entries: Vec<(String, &toml::Table)> = vec![("server".into(), &doc)];
    if let Some(hosts) = doc.get("host").and_then(|h| h.as_table()) {
        for (k, v) in hosts {
            if let Some(t) = v.as_table() {
                entries.push((k.clone(), t));
            }
        }
    }
    let resolve = |p: &str| {
        if Path::new(p).is_absolute() {
            PathBuf::from(p)
        } else {
            dir.join(p)
        }
    };
    let mut any_client = false;
    for (name, t) in &entries {
        if t.get("skip_verify").and_then(|v| v.as_bool()) == Some(true) {
            out.push(
                warn(
                    "skip-verify",
                    runtime,
                    format!(
                        "{} [{name}] sets skip_verify: the registry's certificate is not checked",
                        path.display()
                    ),
                )
                .at(&path)
                .fix("remove skip_verify and set ca to the registry's CA"),
            );
        }
        let cas: Vec<String> = match t.get("ca") {
            Some(toml::Value::String(s)) => vec![s.clone()],
            Some(toml::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        for ca in cas {
            let p = resolve(&ca);
            match std::fs::read(&p) {
                Err(_) => out.push(
                    err(
                        "hosts-toml-missing-file",
                        runtime,
                        format!(
                            "{} [{name}] names ca {}, which cannot be read",
                            path.display(),
                            p.display()
                        ),
                    )
                    .at(&p)
                    .client(format!("failed to read {}", p.display()))
                    .fix(format!("berth certs install {host} --containerd")),
                ),
                Ok(d) if pem_certs(&d).is_none() => out.push(
                    err(
                        "ca-not-pem",
                        runtime,
                        format!("{} holds no PEM certificate", p.display()),
                    )
                    .at(&p)
                    .client("x509: certificate signed by unknown authority"),
                ),
                Ok(_) => {}
            }
        }
        let pairs: Vec<(String, Option<String>)> = match t.get("client") {
            Some(toml::Value::String(s)) => vec![(s.clone(), None)],
            Some(toml::Value::Array(a)) => a
                .iter()
                .filter_map(|v| match v {
                    toml::Value::String(s) => Some((s.clone(), None)),
                    toml::Value::Array(p) => Some((
                        p.first()?.as_str()?.to_string(),
                        p.get(1).and_then(|k| k.as_str()).map(str::to_string),
                    )),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        for (cert, key) in pairs {
            any_client = true;
            let cp = resolve(&cert);
            let kp = resolve(key.as_deref().unwrap_or(&cert));
            let (Ok(cd), true) = (std::fs::read(&cp), kp.exists()) else {
                out.push(
                    err(
                        "hosts-toml-missing-file",
                        runtime,
                        format!(
                            "{} [{name}] names client {} / {}, which cannot both be read",
                            path.display(),
                            cp.display(),
                            kp.display()
                        ),
                    )
                    .at(&cp)
                    .fix(format!("berth certs install {host} --containerd")),
                );
                continue;
            };
            out.extend(pair(runtime, &cp, &cd, &kp, now));
        }
    }
    if !any_client {
        let has_files = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().ends_with(".cert"))
            })
            .unwrap_or(false);
        if has_files {
            out.push(err("hosts-toml-no-client", runtime, format!("{} names no client certificate; with a hosts.toml present containerd ignores the *.cert and *.key files beside it", path.display())).at(&path)
                .client("remote error: tls: certificate required")
                .fix(format!("add client = [[\"client.cert\", \"client.key\"]] under [host.\"https://{host}\"] in {}", path.display())));
        }
    }
    out
}

/// The CAs and client pair a runtime loads from `dir` (for the probe).
pub(super) fn material(dir: &Path) -> Material {
    let mut m = Material::default();
    let hosts = dir.join("hosts.toml");
    if let Ok(text) = std::fs::read_to_string(&hosts)
        && let Ok(doc) = toml::from_str::<toml::Table>(&text)
    {
        let resolve = |p: &str| {
            if Path::new(p).is_absolute() {
                PathBuf::from(p)
            } else {
                dir.join(p)
            }
        };
        let mut tables = vec![&doc];
        if let Some(h) = doc.get("host").and_then(|h| h.as_table()) {
            tables.extend(h.values().filter_map(|v| v.as_table()));
        }
        for t in tables {
            let cas: Vec<&str> = match t.get("ca") {
                Some(toml::Value::String(s)) => vec![s.as_str()],
                Some(toml::Value::Array(a)) => a.iter().filter_map(|v| v.as_str()).collect(),
                _ => Vec::new(),
            };
            for ca in cas {
                if let Some(c) = std::fs::read(resolve(ca)).ok().and_then(|d| pem_certs(&d)) {
                    m.cas.extend(c);
                }
            }
            if m.pair.is_none()
                && let Some(toml::Value::Array(a)) = t.get("client")
                && let Some(toml::Value::Array(p)) = a.first()
                && let (Some(c), Some(k)) = (
                    p.first().and_then(|v| v.as_str()),
                    p.get(1).and_then(|v| v.as_str()),
                )
                && let (Some(chain), Ok(key)) = (
                    std::fs::read(resolve(c)).ok().and_then(|d| pem_certs(&d)),
                    std::fs::read(resolve(k))
                        .map_err(|_| ())
                        .and_then(|d| load_key(&d).map_err(|_| ())),
                )
            {
                m.pair = Some((chain, key));
            }
        }
        return m;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return m;
    };
    let mut names: Vec<PathBuf> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
    names.sort();
    for p in names {
        let n = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Ok(data) = std::fs::read(&p) else {
            continue;
        };
        if n.ends_with(".crt") {
            if let Some(c) = pem_certs(&data) {
                m.cas.extend(c);
            }
        } else if let Some(stem) = n.strip_suffix(".cert")
            && m.pair.is_none()
            && let (Some(chain), Ok(key)) = (
                pem_certs(&data),
                std::fs::read(dir.join(format!("{stem}.key")))
                    .map_err(|_| ())
                    .and_then(|d| load_key(&d).map_err(|_| ())),
            )
        {
            m.pair = Some((chain, key));
        }
    }
    m
}
