//! The client-host side of fleet provisioning: joining (`berth join`), remembering what was
//! joined, and renewing it (`berth renew --all`, `berth status`). Nothing here needs a
//! berthd on this host: the key is made here, the CA is pinned by fingerprint, and the
//! files go through the same certs.d installer berthd uses.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::{Client, Enrolled, Error};
use crate::certsd::{self, HostPort, InstallOutcome, InstallRequest, Installer};
use crate::fsutil;
use crate::pki::SecretKeyPem;

/// One registry this host joined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolment {
    /// The registry as docker names it.
    pub registry: String,
    /// berthd's control listener host and port.
    pub server_host: String,
    /// Its port.
    pub server_port: u16,
    /// The pinned CA fingerprint.
    pub ca_fingerprint: String,
    /// Serial of the certificate installed now.
    pub serial: String,
    /// Its validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// Its expiry.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// The trees it is installed in.
    pub roots: certsd::Settings,
    /// Whether containers' tree has it.
    pub containers: bool,
    /// Whether containerd's tree has it.
    pub containerd: bool,
}

impl Enrolment {
    /// When this enrolment's certificate should be renewed (see [`renewal_at`]).
    pub fn renewal_at(&self) -> OffsetDateTime {
        renewal_at(self.not_before, self.not_after, &self.serial)
    }
}

/// When a certificate should be renewed: at two thirds of its life, minus a jitter of up
/// to a tenth of its life (stable per serial), so a fleet issued at once does not renew at
/// once.
pub fn renewal_at(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    serial: &str,
) -> OffsetDateTime {
    let life = not_after - not_before;
    if life <= time::Duration::ZERO {
        return not_before;
    }
    let h = Sha256::digest(serial.as_bytes());
    let spread = u16::from_be_bytes([h[0], h[1]]) as f64 / f64::from(u16::MAX);
    not_before + life * (2.0 / 3.0) - life * (spread / 10.0)
}

/// Whether a certificate is due for renewal at `now`.
pub fn renewal_due(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    serial: &str,
    now: OffsetDateTime,
) -> bool {
    now >= renewal_at(not_before, not_after, serial)
}

/// What joining needs.
#[derive(Debug, Clone)]
pub struct JoinSpec {
    /// The registry as docker names it.
    pub registry: HostPort,
    /// berthd's control listener.
    pub server_host: String,
    /// Its port.
    pub server_port: u16,
    /// The token.
    pub token: String,
    /// The CA fingerprint to pin.
    pub ca_fingerprint: String,
    /// Where this host records its enrolments and what berth wrote.
    pub state_dir: PathBuf,
    /// The trees to write.
    pub roots: certsd::Settings,
    /// Write containers' tree.
    pub containers: bool,
    /// Write containerd's tree.
    pub containerd: bool,
}

/// What a renewal pass did for one enrolment.
#[derive(Debug, Clone, Serialize)]
pub struct Renewal {
    /// The registry.
    pub registry: String,
    /// The serial installed before.
    pub old_serial: String,
    /// The serial installed now, when renewed.
    pub new_serial: Option<String>,
    /// When the next renewal is due.
    #[serde(with = "time::serde::rfc3339")]
    pub next: OffsetDateTime,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

fn file(state_dir: &Path) -> PathBuf {
    state_dir.join("enrolments.json")
}

/// Every enrolment recorded on this host.
pub fn enrolments(state_dir: &Path) -> Result<Vec<Enrolment>, Error> {
    match std::fs::read(file(state_dir)) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| Error::Host(format!("{}: {e}", file(state_dir).display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::Host(format!("{}: {e}", file(state_dir).display()))),
    }
}

fn save(state_dir: &Path, all: &[Enrolment]) -> Result<(), Error> {
    let bytes = serde_json::to_vec_pretty(all).map_err(|e| Error::Host(e.to_string()))?;
    fsutil::write_atomic(&file(state_dir), &bytes, 0o600).map_err(|e| Error::Host(e.to_string()))
}

/// A fresh key and a CSR for it (the subject is decided by berthd).
fn key_and_csr() -> Result<(SecretKeyPem, String), Error> {
    let key = rcgen::KeyPair::generate().map_err(|e| Error::Host(format!("key: {e}")))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| Error::Host(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "berth host");
    let csr = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|e| Error::Host(format!("CSR: {e}")))?;
    Ok((SecretKeyPem::new(key.serialize_pem()), csr))
}

fn install(
    state_dir: &Path,
    roots: &certsd::Settings,
    registry: HostPort,
    containers: bool,
    containerd: bool,
    got: &Enrolled,
    key: &SecretKeyPem,
) -> Result<InstallOutcome, Error> {
    fsutil::create_dir_all(state_dir, 0o700).map_err(|e| Error::Host(e.to_string()))?;
    let installer = Installer::open(state_dir, roots).map_err(|e| Error::Host(e.to_string()))?;
    let req = InstallRequest {
        host: registry,
        client: None,
        containers,
        containerd,
        dry_run: false,
        force: false,
    };
    installer
        .install_pair(&req, &got.ca_pem, &got.certificate_pem, key, &got.serial)
        .map_err(|e| Error::Host(e.to_string()))
}

fn validity(pem: &str) -> Result<(OffsetDateTime, OffsetDateTime), Error> {
    let d =
        crate::pki::inspect_standalone(pem.as_bytes()).map_err(|e| Error::Host(e.to_string()))?;
    let d = d
        .into_iter()
        .next()
        .ok_or_else(|| Error::Host("no certificate".into()))?;
    Ok((d.not_before, d.not_after))
}

/// Joins: makes the key here, enrols with the token (the CA pinned), installs the pair in
/// every tree asked for, and records the enrolment for renewal.
pub async fn join(spec: &JoinSpec) -> Result<(Enrolled, InstallOutcome), Error> {
    let (key, csr) = key_and_csr()?;
    let client = Client::connect_pinned(
        &spec.server_host,
        spec.server_port,
        &spec.ca_fingerprint,
        None,
    )
    .await?;
    let got = client.enrol(&spec.token, &csr).await?;
    let out = install(
        &spec.state_dir,
        &spec.roots,
        spec.registry.clone(),
        spec.containers,
        spec.containerd,
        &got,
        &key,
    )?;
    let (not_before, not_after) = validity(&got.certificate_pem)?;
    let mut all = enrolments(&spec.state_dir)?;
    all.retain(|e| e.registry != spec.registry.to_string());
    all.push(Enrolment {
        registry: spec.registry.to_string(),
        server_host: spec.server_host.clone(),
        server_port: spec.server_port,
        ca_fingerprint: spec.ca_fingerprint.clone(),
        serial: got.serial.clone(),
        not_before,
        not_after,
        roots: spec.roots.clone(),
        containers: spec.containers,
        containerd: spec.containerd,
    });
    save(&spec.state_dir, &all)?;
    Ok((got, out))
}

/// Renews every enrolment that is due (every one, with `force`), authenticated by the
/// certificate installed now; each copy is replaced atomically. A failure of one does not
/// stop the others; each is reported.
pub async fn renew_all(state_dir: &Path, force: bool) -> Result<Vec<Renewal>, Error> {
    let mut all = enrolments(state_dir)?;
    let now = OffsetDateTime::now_utc();
    let mut out = Vec::new();
    for i in 0..all.len() {
        let e = &mut all[i];
        let mut r = Renewal {
            registry: e.registry.clone(),
            old_serial: e.serial.clone(),
            new_serial: None,
            next: e.renewal_at(),
            error: None,
        };
        if force || renewal_due(e.not_before, e.not_after, &e.serial, now) {
            match renew_one(state_dir, e).await {
                Ok(serial) => {
                    r.new_serial = Some(serial);
                    r.next = e.renewal_at();
                    // Recorded at once: the agent may be stopped while a later
                    // enrolment is renewed, and the record must name what is installed.
                    save(state_dir, &all)?;
                }
                Err(err) => r.error = Some(err.to_string()),
            }
        }
        out.push(r);
    }
    Ok(out)
}

/// When the agent should look again: the earliest renewal due among the enrolments
/// (never sooner than a minute, never later than a day), or after `backoff` when the last
/// pass failed.
pub fn next_pass(
    all: &[Enrolment],
    now: OffsetDateTime,
    backoff: Option<std::time::Duration>,
) -> std::time::Duration {
    let minute = std::time::Duration::from_secs(60);
    let day = std::time::Duration::from_secs(86_400);
    let due = all
        .iter()
        .map(|e| e.renewal_at() - now)
        .min()
        .map_or(day, |d| std::time::Duration::try_from(d).unwrap_or(minute));
    let wait = backoff.map_or(due, |b| b.min(due));
    wait.clamp(minute, day)
}

/// `berth agent`: renews on time until `stop` resolves. A failed pass is retried with a
/// growing pause (1 minute doubling up to an hour); every pass is logged.
pub async fn agent(
    state_dir: &Path,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let mut stop = std::pin::pin!(stop);
    let mut backoff: Option<std::time::Duration> = None;
    loop {
        // A stop ends a pass at its next wait (a berthd that does not answer must not
        // hold up `systemctl stop`); renew_all records each renewal as it is installed,
        // so what it leaves is consistent.
        let pass = tokio::select! {
            () = &mut stop => return Ok(()),
            p = renew_all(state_dir, false) => p,
        };
        let failed = match &pass {
            Ok(done) => {
                for r in done {
                    match (&r.new_serial, &r.error) {
                        (_, Some(e)) => {
                            tracing::warn!(registry = %r.registry, error = %e, "renewal failed")
                        }
                        (Some(s), None) => {
                            tracing::info!(registry = %r.registry, old = %r.old_serial, new = %s, "renewed")
                        }
                        (None, None) => {
                            tracing::debug!(registry = %r.registry, next = %r.next, "not due")
                        }
                    }
                }
                done.iter().any(|r| r.error.is_some())
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewal pass failed");
                true
            }
        };
        backoff = if failed {
            Some(backoff.map_or(std::time::Duration::from_secs(60), |b| {
                (b * 2).min(std::time::Duration::from_secs(3600))
            }))
        } else {
            None
        };
        let all = enrolments(state_dir).unwrap_or_default();
        let wait = next_pass(&all, OffsetDateTime::now_utc(), backoff);
        tracing::info!(seconds = wait.as_secs(), "next renewal check");
        tokio::select! {
            () = &mut stop => return Ok(()),
            () = tokio::time::sleep(wait) => {}
        }
    }
}

async fn renew_one(state_dir: &Path, e: &mut Enrolment) -> Result<String, Error> {
    let dir = e.roots.docker_root.join(
        e.registry
            .parse::<HostPort>()
            .map_err(|x| Error::Host(x.to_string()))?
            .dir_name(),
    );
    let read = |n: &str| {
        std::fs::read_to_string(dir.join(n))
            .map_err(|x| Error::Host(format!("{}: {x}", dir.join(n).display())))
    };
    let (cert, key) = (read("client.cert")?, read("client.key")?);
    let client = Client::connect_pinned(
        &e.server_host,
        e.server_port,
        &e.ca_fingerprint,
        Some((&cert, &key)),
    )
    .await?;
    let (new_key, csr) = key_and_csr()?;
    let got = client
        .renew_own(&csr)
        .await
        .map_err(|x| renewal_failed(&e.serial, x))?;
    let registry: HostPort = e
        .registry
        .parse()
        .map_err(|x: certsd::Error| Error::Host(x.to_string()))?;
    install(
        state_dir,
        &e.roots,
        registry,
        e.containers,
        e.containerd,
        &got,
        &new_key,
    )?;
    let (nb, na) = validity(&got.certificate_pem)?;
    e.serial = got.serial.clone();
    e.not_before = nb;
    e.not_after = na;
    Ok(got.serial)
}

/// What a failed renewal of `serial` tells the operator. A refusal that is not about the
/// request most likely means the certificate can no longer renew itself, so it says how to
/// join again; a bad request, or a berthd that never answered, is passed on as it is:
/// joining again would not help.
fn renewal_failed(serial: &str, x: Error) -> Error {
    match x.kind() {
        Some(super::ErrorKind::InvalidArgument | super::ErrorKind::FailedPrecondition) => x,
        _ if matches!(x, Error::NoAnswer { .. }) => x,
        _ => Error::Host(format!(
            "berthd did not renew certificate {serial} ({x}); a revoked or expired certificate cannot renew itself: join again with a new token (berth token create on the CA host)"
        )),
    }
}

#[cfg(test)]
mod tests;
