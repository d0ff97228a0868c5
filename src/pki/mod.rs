//! The berth certificate authority.
//!
//! A CA (created on first start), leaf certificates for three profiles (server, client,
//! admin), CSR signing, revocation with a CRL, and inspection of any certificate. Every
//! certificate the CA signs is recorded in an index in the state folder, so `cert ls`
//! survives restarts and serial numbers are never reused.
//!
//! Files under `<state>/pki/`:
//! ```text
//! ca.crt            CA certificate            0644
//! ca.key            CA private key            0600
//! index.json        every issued certificate  0644 (a snapshot)
//! index.log         changes since the snapshot 0644 (one JSON line each, fdatasynced)
//! index.log.old     a journal being folded    0644 (only while a fold runs or after a crash)
//! crl.pem           current CRL               0644
//! keys/held.log     keys berthd holds         0600 (folder 0700; one JSON line each)
//! ```

mod ca;
mod csr;
mod inspect;
mod issue;
mod keys;
mod revoke;
mod settings;
mod store;
mod tokens;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use ca::Ca;
pub use inspect::{CertDetails, fingerprint_sha256, parse_certificates};
pub use keys::{KeyAlgorithm, SecretKeyPem};
pub use revoke::Crl;
pub use settings::Settings;
pub use tokens::{NewToken, TokenRecord};

use crate::audit::{self, Audit, Record};
use crate::fsutil;
use crate::identity::Identity;
use store::Store;

/// Why a PKI operation failed. Each variant maps to one gRPC status class at the edge.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller may not have this certificate (outside its role's names).
    #[error("{0}")]
    NotPermitted(String),
    /// A subject name or SAN is malformed.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidName {
        /// Which field, e.g. "DNS name".
        field: &'static str,
        /// The offending value.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A required name is missing.
    #[error("{0}")]
    MissingName(&'static str),
    /// The request is not acceptable for another reason (profile, validity).
    #[error("{0}")]
    InvalidRequest(String),
    /// The CSR cannot be decoded or asks for something berth does not sign.
    #[error("invalid CSR: {0}")]
    InvalidCsr(String),
    /// The CSR's self-signature does not verify: it was tampered with or is not the
    /// requester's key.
    #[error(
        "CSR signature does not verify: the request was altered or was not signed by its own key"
    )]
    CsrSignature,
    /// The bytes hold no certificate berth can decode.
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    /// No issued certificate has this serial.
    #[error("no certificate with serial {0} in the index")]
    NotFound(String),
    /// The certificate is already revoked.
    #[error("certificate {0} is already revoked")]
    AlreadyRevoked(String),
    /// A freshly drawn serial is already in the index (one chance in 2^127).
    #[error("serial {0} was drawn twice; issue again")]
    SerialTaken(String),
    /// An unknown key algorithm name.
    #[error(
        "unknown key algorithm {0:?}: use ecdsa-p256, ecdsa-p384, ed25519, rsa2048, rsa3072 or rsa4096"
    )]
    UnknownKeyAlgorithm(String),
    /// An enrolment token is unknown, wrong, used, expired or revoked (which one is only
    /// logged: an anonymous caller learns nothing about other tokens).
    #[error(
        "the enrolment token is not valid (unknown, already used, expired or revoked): ask the registry's operator for a new one (berth token create)"
    )]
    TokenRefused,
    /// Key generation failed.
    #[error("key generation failed: {0}")]
    KeyGeneration(String),
    /// The index file exists but cannot be parsed; berthd refuses to start rather than
    /// overwrite it.
    #[error(
        "certificate index {path} is corrupt ({reason}); berthd will not overwrite it: restore it from a backup or move it away"
    )]
    CorruptIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The CA files are missing a half or do not parse.
    #[error("CA in {path} is unusable: {reason}")]
    CorruptCa {
        /// The CA file at fault.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing state failed.
    #[error(transparent)]
    Fs(#[from] fsutil::Error),
    /// rcgen refused to build or sign a certificate.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// The profile a certificate is issued with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertKind {
    /// TLS server: serverAuth, DNS/IP SANs.
    Server,
    /// TLS client (docker, podman, skopeo): clientAuth.
    Client,
    /// Remote administrator of berthd over TCP: clientAuth, in the admin set.
    Admin,
    /// A registry replica (`berthd --role registry`): serverAuth for its clients and
    /// clientAuth towards the primary, names fixed by its replica token. Only enrolment
    /// with a replica token makes one, so a CSR cannot ask for a replica's rights.
    Replica,
}

impl CertKind {
    /// Lowercase name for tables and messages.
    pub fn name(self) -> &'static str {
        match self {
            CertKind::Server => "server",
            CertKind::Client => "client",
            CertKind::Admin => "admin",
            CertKind::Replica => "replica",
        }
    }

    /// Whether certificates of this kind are presented by servers (DNS/IP SANs required,
    /// wildcards allowed).
    pub fn serves(self) -> bool {
        matches!(self, CertKind::Server | CertKind::Replica)
    }
}

/// Subject names and SANs of a certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Names {
    /// Subject CN.
    pub common_name: String,
    /// Subject O.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub organizations: Vec<String>,
    /// Subject OU.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub organizational_units: Vec<String>,
    /// DNS SANs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    /// IP SANs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_addresses: Vec<IpAddr>,
    /// URI SANs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uris: Vec<String>,
    /// Email SANs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub emails: Vec<String>,
}

/// A certificate's state now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertStatus {
    /// In its validity period and not revoked.
    Valid,
    /// Past notAfter.
    Expired,
    /// Revoked by the berth CA.
    Revoked,
    /// Before notBefore.
    NotYetValid,
}

impl CertStatus {
    /// Lowercase name for tables.
    pub fn name(self) -> &'static str {
        match self {
            CertStatus::Valid => "valid",
            CertStatus::Expired => "expired",
            CertStatus::Revoked => "revoked",
            CertStatus::NotYetValid => "not-yet-valid",
        }
    }

    fn by_clock(not_before: OffsetDateTime, not_after: OffsetDateTime) -> CertStatus {
        let now = OffsetDateTime::now_utc();
        if now > not_after {
            CertStatus::Expired
        } else if now < not_before {
            CertStatus::NotYetValid
        } else {
            CertStatus::Valid
        }
    }
}

/// One certificate the CA signed, as kept in the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    /// Serial, lowercase hex without separators.
    pub serial: String,
    /// Profile it was issued with.
    pub kind: CertKind,
    /// Subject and SANs, read back from the signed certificate.
    pub names: Names,
    /// Start of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// End of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// SHA-256 of the DER, uppercase hex with colons (as `openssl x509 -fingerprint`).
    pub fingerprint_sha256: String,
    /// When it was revoked.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// Whether berthd keeps the private key.
    pub key_held: bool,
    /// Whether it was signed from a caller's CSR.
    pub from_csr: bool,
    /// Public key algorithm, e.g. "ECDSA P-256".
    pub key_algorithm: String,
    /// The certificate, PEM.
    pub certificate_pem: String,
}

impl CertRecord {
    /// Status now: revoked wins over the clock.
    pub fn status(&self) -> CertStatus {
        if self.revoked_at.is_some() {
            CertStatus::Revoked
        } else {
            CertStatus::by_clock(self.not_before, self.not_after)
        }
    }

    /// Fraction of the validity period still ahead (0.0 when expired).
    pub fn life_left(&self) -> f64 {
        let total = (self.not_after - self.not_before).as_seconds_f64();
        let left = (self.not_after - OffsetDateTime::now_utc()).as_seconds_f64();
        if total <= 0.0 {
            0.0
        } else {
            (left / total).clamp(0.0, 1.0)
        }
    }
}

/// What to issue.
#[derive(Debug, Clone)]
pub struct IssueSpec {
    /// Profile.
    pub kind: CertKind,
    /// Subject and SANs.
    pub names: Names,
    /// Validity in days; `None` takes the configured default.
    pub validity_days: Option<u32>,
    /// Key algorithm of the new key.
    pub key_algorithm: KeyAlgorithm,
    /// Keep the key in the state folder so berthd can install it later (certs.d, its own
    /// listeners). Client keys are held; server and admin keys only go to the caller.
    pub hold_key: bool,
}

/// A newly issued certificate with its key.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The index entry.
    pub record: CertRecord,
    /// The private key.
    pub key: SecretKeyPem,
}

/// Filter for [`Pki::list`].
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this profile.
    pub kind: Option<CertKind>,
    /// Only this common name.
    pub common_name: Option<String>,
}

/// Takes group and other permissions off a secret file or folder that has them (a restore
/// from backup, a careless chmod), and says so: the CA key must never be readable by others.
fn tighten(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(m) = std::fs::metadata(path) else {
        return;
    };
    let have = m.permissions().mode() & 0o777;
    if have & !mode != 0 {
        match std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
            Ok(()) => {
                tracing::warn!(path = %path.display(), was = format!("{have:o}"), now = format!("{mode:o}"), "secret was readable by others; permissions tightened")
            }
            Err(e) => {
                tracing::error!(path = %path.display(), was = format!("{have:o}"), error = %e, "secret is readable by others and cannot be tightened")
            }
        }
    }
}

/// The CA, its index and its key store, shared by every request. Operations are
/// synchronous and short, except RSA key generation; callers on an async runtime run them
/// on a blocking thread.
pub struct Pki {
    dir: PathBuf,
    ca: Ca,
    store: Mutex<Store>,
    tokens: Mutex<tokens::Tokens>,
    default_validity_days: u32,
    /// The nextUpdate distance of every CRL it signs.
    crl_lifetime: time::Duration,
    /// Where every issue, signing, renewal, revocation and token change is recorded.
    audit: Audit,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// An issue made durable: logged and answered.
fn issued_ok(issued: Issued) -> Issued {
    tracing::info!(serial = %issued.record.serial, kind = issued.record.kind.name(), cn = %issued.record.names.common_name, "issued certificate");
    issued
}

/// An issue refused before anything was stored, and the audit record to write of it.
struct Refused(Error, Option<Box<Record>>);

/// An issue signed and written, its sync and audit record still to come.
struct IssueStarted<'a> {
    issued: Issued,
    syncer: std::sync::Arc<store::Syncer>,
    ticket: store::Ticket,
    rec: Record,
    pending: audit::Pending<'a>,
}

impl Pki {
    /// Opens `<state>/pki`, creating the CA on first start. A corrupt index or a CA with a
    /// missing half is an error that names the file; nothing is overwritten.
    pub fn open(state_dir: &Path, cfg: &Settings) -> Result<Pki, Error> {
        let dir = state_dir.join("pki");
        fsutil::create_dir_all(&dir, 0o700)?;
        let tokens_dir = dir.clone();
        let store = Store::open(&dir)?;
        let issued = store.records().len();
        let lost = !dir.join("ca.crt").exists() && !dir.join("ca.key").exists();
        if lost && issued > 0 && !cfg.replace_lost_ca {
            // A new CA would leave every certificate handed out, and the server
            // certificates in the index, unverifiable, while looking healthy.
            return Err(Error::CorruptCa {
                path: dir.join("ca.crt"),
                reason: format!(
                    "ca.crt and ca.key are missing, but {} lists {issued} certificates the old CA signed; restore both files from a backup, or start berthd once with --new-ca to make a new CA (every issued certificate then has to be replaced)",
                    dir.join("index.json").display()
                ),
            });
        }
        tighten(&dir, 0o700);
        tighten(&dir.join("keys"), 0o700);
        tighten(&dir.join("ca.key"), 0o600);
        let ca = Ca::load_or_create(&dir, cfg)?;
        let mut store = store;
        store.settle()?;
        if lost && issued > 0 {
            tracing::warn!(
                certificates = issued,
                "created a new CA over an index of the old one (--new-ca): reissue and reinstall every certificate"
            );
        }
        let pki = Pki {
            dir,
            ca,
            store: Mutex::new(store),
            tokens: Mutex::new(tokens::Tokens::open(&tokens_dir)),
            default_validity_days: cfg.default_validity_days,
            crl_lifetime: crl_lifetime(cfg.crl_lifetime)?,
            audit: Audit::disabled(),
        };
        // Re-sign the CRL at every start so its nextUpdate never lapses on a long-running host.
        pki.write_crl(&mut pki.lock())?;
        Ok(pki)
    }

    /// Records every mutation from now on in `audit`.
    pub fn set_audit(&mut self, audit: Audit) {
        self.audit = audit;
    }

    /// Records `r`'s outcome as `rec` (plus what `done` adds from a success); the
    /// operation has happened either way, so a lost record is logged, not returned.
    fn audited<T>(
        &self,
        rec: Record,
        r: Result<T, Error>,
        done: impl FnOnce(&T, Record) -> Record,
    ) -> Result<T, Error> {
        if matches!(r, Err(Error::NotPermitted(_))) {
            // Refused by the caller's role, which recorded the denial itself.
            return r;
        }
        let rec = rec.outcome(&r);
        let rec = match &r {
            Ok(t) => done(t, rec),
            Err(_) => rec,
        };
        self.audit.note(&rec);
        r
    }

    /// The CA.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// Folder of the PKI state.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Issues a certificate with a fresh key, for `who` (blocking callers).
    pub fn issue(&self, who: &Identity, spec: &IssueSpec) -> Result<Issued, Error> {
        let s = match self.issue_started(who, spec) {
            Ok(s) => s,
            Err(refused) => {
                let Refused(e, rec) = *refused;
                if let Some(rec) = rec {
                    self.audit.note(&rec);
                }
                return Err(e);
            }
        };
        let synced = s.syncer.wait(s.ticket);
        s.pending.note();
        match synced {
            Ok(()) => Ok(issued_ok(s.issued)),
            Err(e) => {
                // Refused, and recorded after the record of its start.
                self.audit.note(&s.rec.outcome(&Err::<(), _>(&e)));
                Err(e)
            }
        }
    }

    /// Issues a certificate with a fresh key, for `who`, on a runtime thread: it signs
    /// there (well under a millisecond of CPU for ECDSA and Ed25519; RSA key generation
    /// takes up to seconds and belongs on a blocking thread, with [`Pki::issue`]) and then
    /// waits for the index and audit syncs without a thread of its own. Handing each
    /// issue to a blocking thread and back cost more than the signing at 16 callers.
    pub async fn issue_async(&self, who: &Identity, spec: &IssueSpec) -> Result<Issued, Error> {
        let s = match self.issue_started(who, spec) {
            Ok(s) => s,
            Err(refused) => {
                let Refused(e, rec) = *refused;
                if let Some(rec) = rec {
                    self.audit.note_async(&rec).await;
                }
                return Err(e);
            }
        };
        let synced = s.syncer.wait_async(s.ticket).await;
        s.pending.note_async().await;
        match synced {
            Ok(()) => Ok(issued_ok(s.issued)),
            Err(e) => {
                self.audit
                    .note_async(&s.rec.outcome(&Err::<(), _>(&e)))
                    .await;
                Err(e)
            }
        }
    }

    /// Signs and writes an issue and queues its audit record, which is written while the
    /// index syncs (see `Audit::begin`). A refusal carries the record to write of it.
    fn issue_started(
        &self,
        who: &Identity,
        spec: &IssueSpec,
    ) -> Result<IssueStarted<'_>, Box<Refused>> {
        let rec = Record::new(who, audit::Action::CertIssue).name(spec.names.common_name.clone());
        let (issued, syncer, ticket) = match self.issue_written(spec) {
            Ok(w) => w,
            Err(e) => {
                // A refusal by role was recorded as a denial already.
                let rec = (!matches!(e, Error::NotPermitted(_)))
                    .then(|| Box::new(rec.outcome(&Err::<(), _>(&e))));
                return Err(Box::new(Refused(e, rec)));
            }
        };
        let rec = rec.serial(issued.record.serial.clone());
        let pending = self.audit.begin(&rec);
        Ok(IssueStarted {
            issued,
            syncer,
            ticket,
            rec,
            pending,
        })
    }

    /// Signs and records a certificate; durable once the returned ticket is waited for.
    fn issue_written(
        &self,
        spec: &IssueSpec,
    ) -> Result<(Issued, std::sync::Arc<store::Syncer>, store::Ticket), Error> {
        if spec.kind == CertKind::Replica {
            return Err(replica_only_by_token());
        }
        let days = spec.validity_days.unwrap_or(self.default_validity_days);
        let key = spec.key_algorithm.generate()?;
        let secret = SecretKeyPem::new(key.serialize_pem());
        // Signed before the lock, so two callers sign on two cores; the lock only records.
        let serial = store::Store::random_serial()?;
        let params = issue::leaf_params(
            spec.kind,
            &spec.names,
            spec.key_algorithm,
            &serial,
            days,
            &self.ca,
        )?;
        let cert = params.signed_by(&key, self.ca.issuer())?;
        let record = self.record(spec.kind, cert.der(), spec.hold_key, false)?;
        let mut store = self.lock();
        let ticket = store.insert(record.clone(), spec.hold_key.then_some(&secret))?;
        // Durable before the answer, but synced outside the lock: concurrent issues
        // share one sync.
        let syncer = store.syncer();
        Ok((
            Issued {
                record,
                key: secret,
            },
            syncer,
            ticket,
        ))
    }

    /// Renews a certificate: the same kind and names, a fresh key of the same algorithm and
    /// a new serial. The old certificate stays valid until it expires or is revoked, so
    /// nothing using it breaks mid-rollout. A CSR-signed certificate cannot be renewed
    /// here (its key is not ours): sign a new CSR.
    pub fn renew(
        &self,
        who: &Identity,
        serial: &str,
        validity_days: Option<u32>,
    ) -> Result<Issued, Error> {
        let rec = Record::new(who, audit::Action::CertRenew).serial(serial);
        let r = self.renew_inner(serial, validity_days);
        self.audited(rec, r, |i, rec| {
            rec.name(format!(
                "{} -> {}",
                i.record.names.common_name, i.record.serial
            ))
        })
    }

    fn renew_inner(&self, serial: &str, validity_days: Option<u32>) -> Result<Issued, Error> {
        let old = self.get(serial)?;
        if old.revoked_at.is_some() {
            return Err(Error::AlreadyRevoked(old.serial));
        }
        if old.from_csr {
            return Err(Error::InvalidRequest(format!(
                "certificate {} was signed from a CSR and berthd never had its key: sign a new CSR with `berth cert sign`",
                old.serial
            )));
        }
        let key_algorithm = KeyAlgorithm::from_description(&old.key_algorithm).unwrap_or_default();
        let (issued, syncer, ticket) = self.issue_written(&IssueSpec {
            kind: old.kind,
            names: old.names.clone(),
            validity_days,
            key_algorithm,
            hold_key: old.key_held,
        })?;
        syncer.wait(ticket)?;
        tracing::info!(old = %old.serial, new = %issued.record.serial, "renewed certificate");
        Ok(issued)
    }

    /// Signs a CSR with a fixed profile. The CSR contributes only its public key and names:
    /// CA rights, key usages and EKUs come from the profile. The key is never seen here.
    /// `permit` sees the names the certificate would carry before anything is stored,
    /// and may refuse them (an issuer signs only for its own subjects).
    pub fn sign_csr(
        &self,
        who: &Identity,
        csr: &[u8],
        profile: CertKind,
        validity_days: Option<u32>,
        permit: &dyn Fn(&Names) -> Result<(), String>,
    ) -> Result<CertRecord, Error> {
        let rec = Record::new(who, audit::Action::CertSign);
        let r = if profile == CertKind::Replica {
            Err(replica_only_by_token())
        } else {
            self.sign_csr_for(csr, profile, validity_days, None, permit)
        };
        self.audited(rec, r, |c, rec| {
            rec.serial(c.serial.clone())
                .name(c.names.common_name.clone())
        })
    }

    /// [`Pki::sign_csr`], optionally with the subject and SANs fixed (an enrolment: the
    /// token's, never the CSR's).
    fn sign_csr_for(
        &self,
        csr: &[u8],
        profile: CertKind,
        validity_days: Option<u32>,
        subject: Option<&Names>,
        permit: &dyn Fn(&Names) -> Result<(), String>,
    ) -> Result<CertRecord, Error> {
        let days = validity_days.unwrap_or(self.default_validity_days);
        let serial = store::Store::random_serial()?;
        let der = csr::sign(csr, profile, &serial, days, &self.ca, subject)?;
        let record = self.record(profile, &der, false, true)?;
        // A name with a control character would forge lines in logs, events and the audit
        // trail (a CN of "x\n2026-... WARN ..."): refuse it, as issuing does.
        let n = &record.names;
        let values = std::iter::once(&n.common_name)
            .chain(&n.organizations)
            .chain(&n.organizational_units)
            .chain(&n.dns_names)
            .chain(&n.uris)
            .chain(&n.emails);
        for v in values {
            if v.chars().any(char::is_control) {
                return Err(Error::InvalidCsr(format!(
                    "it names {v:?}, which contains control characters"
                )));
            }
        }
        permit(&record.names).map_err(Error::NotPermitted)?;
        let mut store = self.lock();
        let ticket = store.insert(record.clone(), None)?;
        let syncer = store.syncer();
        drop(store);
        syncer.wait(ticket)?;
        tracing::info!(serial = %record.serial, kind = profile.name(), cn = %record.names.common_name, "signed CSR");
        Ok(record)
    }

    /// Makes a one-time enrolment token for a client named `name`, usable for `ttl`; or,
    /// with `replica_names`, a reusable token for registry replicas whose certificates
    /// carry those DNS names and IP addresses.
    pub fn create_token(
        &self,
        who: &Identity,
        name: &str,
        ttl: std::time::Duration,
        replica_names: Option<&[String]>,
    ) -> Result<NewToken, Error> {
        let rec = Record::new(who, audit::Action::TokenCreate).name(name);
        let r = issue::check_common_name(name)
            .and_then(|()| match replica_names {
                Some(n) => token_names(name, n).map(|_| ()),
                None => Ok(()),
            })
            .and_then(|()| self.tokens_lock().create(name, ttl, replica_names));
        if let Ok(t) = &r {
            tracing::info!(id = %t.record.id, name, "enrolment token created");
        }
        // The id, never the secret.
        self.audited(rec, r, |t, rec| {
            rec.serial(format!("token {}", t.record.id))
        })
    }

    /// Every token, oldest first (no secrets).
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, Error> {
        self.tokens_lock().list()
    }

    /// Makes a token unusable.
    pub fn revoke_token(&self, who: &Identity, id: &str) -> Result<TokenRecord, Error> {
        let rec = Record::new(who, audit::Action::TokenRevoke).serial(format!("token {id}"));
        let r = self.tokens_lock().revoke(id);
        if let Ok(t) = &r {
            tracing::warn!(id, name = %t.name, "enrolment token revoked");
        }
        self.audited(rec, r, |t, rec| rec.name(t.name.clone()))
    }

    /// Enrols a host: redeems `token` and signs `csr` as a client certificate for the
    /// token's subject. Only the CSR's key is used: the subject is the token's and no SANs
    /// are copied, so a token for `ci-runner-07` cannot mint a certificate for another name.
    pub fn enrol(&self, who: &Identity, token: &str, csr: &[u8]) -> Result<CertRecord, Error> {
        // The token's id (its public half) names it; the secret is never recorded.
        let id = token
            .split('.')
            .nth(1)
            .unwrap_or("?")
            .chars()
            .take(32)
            .collect::<String>();
        let rec = Record::new(who, audit::Action::TokenUse).name(format!("token {id}"));
        let r = self.enrol_inner(token, csr);
        self.audited(rec, r, |c, rec| {
            rec.serial(c.serial.clone())
                .name(format!("token {id} -> {}", c.names.common_name))
        })
    }

    fn enrol_inner(&self, token: &str, csr: &[u8]) -> Result<CertRecord, Error> {
        let tokens = self.tokens_lock();
        let t = tokens.redeem(token)?;
        let (kind, names) = if t.replica {
            (CertKind::Replica, token_names(&t.name, &t.names)?)
        } else {
            (
                CertKind::Client,
                Names {
                    common_name: t.name.clone(),
                    ..Names::default()
                },
            )
        };
        let record = self.sign_csr_for(csr, kind, None, Some(&names), &|_| Ok(()))?;
        tokens.record_serial(&t.id, &record.serial)?;
        tracing::info!(token = %t.id, serial = %record.serial, cn = %t.name, "enrolled a host");
        Ok(record)
    }

    /// Renews an enrolled host's certificate, asked for with that certificate: the same
    /// name, the CSR's key, a new serial. Only a valid (unrevoked, unexpired) client
    /// certificate may do this.
    pub fn renew_enrolled(
        &self,
        who: &Identity,
        serial: &str,
        csr: &[u8],
    ) -> Result<CertRecord, Error> {
        let rec = Record::new(who, audit::Action::CertRenew).serial(serial);
        let r = self.renew_enrolled_inner(serial, csr);
        self.audited(rec, r, |c, rec| {
            rec.name(format!("{} -> {}", c.names.common_name, c.serial))
        })
    }

    fn renew_enrolled_inner(&self, serial: &str, csr: &[u8]) -> Result<CertRecord, Error> {
        let old = self.get(serial)?;
        let renewable = matches!(old.kind, CertKind::Client | CertKind::Replica);
        if !renewable || old.status() != CertStatus::Valid {
            return Err(Error::InvalidRequest(format!(
                "certificate {} is a {} certificate in state {}: only a valid client or replica certificate renews itself",
                old.serial,
                old.kind.name(),
                old.status().name()
            )));
        }
        // The same names: a replica's SANs came from its token, a client has none.
        let names = Names {
            common_name: old.names.common_name.clone(),
            dns_names: old.names.dns_names.clone(),
            ip_addresses: old.names.ip_addresses.clone(),
            ..Names::default()
        };
        let record = self.sign_csr_for(csr, old.kind, None, Some(&names), &|_| Ok(()))?;
        tracing::info!(old = %old.serial, new = %record.serial, cn = %old.names.common_name, "renewed an enrolled host");
        Ok(record)
    }

    fn tokens_lock(&self) -> MutexGuard<'_, tokens::Tokens> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every recorded certificate matching `filter`, oldest first.
    pub fn list(&self, filter: &ListFilter) -> Vec<CertRecord> {
        self.list_page(filter, 0, usize::MAX).0
    }

    /// At most `take` of the matching records after the first `skip`, and whether more
    /// follow. The index only grows at its end, so positions are stable between pages.
    pub fn list_page(
        &self,
        filter: &ListFilter,
        skip: usize,
        take: usize,
    ) -> (Vec<CertRecord>, bool) {
        let store = self.lock();
        let mut matching = store
            .records()
            .iter()
            .filter(|r| filter.kind.is_none_or(|k| r.kind == k))
            .filter(|r| {
                filter
                    .common_name
                    .as_deref()
                    .is_none_or(|cn| r.names.common_name == cn)
            })
            .skip(skip);
        let page: Vec<CertRecord> = matching
            .by_ref()
            .take(take)
            .map(|r| (**r).clone())
            .collect();
        let more = matching.next().is_some();
        (page, more)
    }

    /// The record for `serial` (hex, colons and case ignored).
    pub fn get(&self, serial: &str) -> Result<CertRecord, Error> {
        let serial = normalize_serial(serial)?;
        self.lock()
            .find(&serial)
            .cloned()
            .ok_or(Error::NotFound(serial))
    }

    /// The private key berthd holds for `serial`, for callers inside the daemon (the certs.d
    /// installer, its own listeners). Never exposed over the API.
    pub fn held_key(&self, serial: &str) -> Result<SecretKeyPem, Error> {
        let serial = normalize_serial(serial)?;
        let store = self.lock();
        let rec = store
            .find(&serial)
            .ok_or_else(|| Error::NotFound(serial.clone()))?;
        if !rec.key_held {
            return Err(Error::InvalidRequest(format!(
                "berthd does not hold the key of certificate {serial}"
            )));
        }
        store.read_key(&serial)
    }

    /// Newest valid certificate of `kind` named `cn` whose key berthd holds.
    pub fn find_held(&self, kind: CertKind, cn: &str) -> Option<CertRecord> {
        self.lock()
            .records()
            .iter()
            .rev()
            .find(|r| {
                r.kind == kind
                    && r.names.common_name == cn
                    && r.key_held
                    && r.status() == CertStatus::Valid
            })
            .map(|r| (**r).clone())
    }

    /// A server certificate for one of berthd's own listeners. It is reused across restarts
    /// and replaced when less than a third of its life is left, when it was revoked, or
    /// when the names it must carry changed. berthd holds its key.
    pub fn service_identity(
        &self,
        common_name: &str,
        names: &Names,
    ) -> Result<(CertRecord, SecretKeyPem), Error> {
        let covers = |r: &CertRecord| {
            names
                .dns_names
                .iter()
                .all(|d| r.names.dns_names.contains(d))
                && names
                    .ip_addresses
                    .iter()
                    .all(|ip| r.names.ip_addresses.contains(ip))
        };
        let current = self
            .list(&ListFilter {
                kind: Some(CertKind::Server),
                common_name: Some(common_name.to_string()),
            })
            .into_iter()
            .rev()
            .find(|r| {
                r.key_held
                    && r.status() == CertStatus::Valid
                    && r.life_left() > 1.0 / 3.0
                    && covers(r)
                    // A key lost from keys/ means a new certificate, not a failed start.
                    && self.held_key(&r.serial).is_ok()
            });
        if let Some(r) = current {
            let key = self.held_key(&r.serial)?;
            return Ok((r, key));
        }
        let mut n = names.clone();
        n.common_name = common_name.to_string();
        let issued = self.issue(
            &Identity::Daemon,
            &IssueSpec {
                kind: CertKind::Server,
                names: n,
                validity_days: None,
                key_algorithm: KeyAlgorithm::default(),
                hold_key: true,
            },
        )?;
        Ok((issued.record, issued.key))
    }

    /// Revokes `serial` and re-signs the CRL.
    pub fn revoke(&self, who: &Identity, serial: &str) -> Result<CertRecord, Error> {
        let rec = Record::new(who, audit::Action::CertRevoke).serial(serial);
        let r = self.revoke_inner(serial);
        self.audited(rec, r, |c, rec| rec.name(c.names.common_name.clone()))
    }

    fn revoke_inner(&self, serial: &str) -> Result<CertRecord, Error> {
        let serial = normalize_serial(serial)?;
        let mut store = self.lock();
        let rec = store.revoke(&serial, OffsetDateTime::now_utc())?;
        self.write_crl(&mut store)?;
        tracing::warn!(serial = %serial, cn = %rec.names.common_name, "revoked certificate");
        Ok(rec)
    }

    /// Serials of every revoked certificate (what the CRL lists), so the network edge can
    /// refuse a revoked client on a connection opened before the revocation.
    pub fn revoked_serials(&self) -> std::collections::HashSet<String> {
        self.lock()
            .records()
            .iter()
            .filter(|r| r.revoked_at.is_some())
            .map(|r| r.serial.clone())
            .collect()
    }

    /// The current CRL.
    pub fn crl(&self) -> Result<Crl, Error> {
        let store = self.lock();
        Crl::read(&self.dir, store.records(), self.crl_lifetime)
    }

    /// Re-signs the CRL once less than half of its lifetime is left, so it never lapses
    /// on a primary that runs long without a revocation. True when it did.
    pub fn refresh_crl_if_due(&self) -> Result<bool, Error> {
        let mut store = self.lock();
        let crl = Crl::read(&self.dir, store.records(), self.crl_lifetime)?;
        if crl.next_update - OffsetDateTime::now_utc() > self.crl_lifetime / 2 {
            return Ok(false);
        }
        self.write_crl(&mut store)?;
        tracing::info!("CRL re-signed before its nextUpdate");
        Ok(true)
    }

    /// The nextUpdate distance of the CRLs this PKI signs.
    pub fn crl_lifetime(&self) -> std::time::Duration {
        self.crl_lifetime.try_into().unwrap_or_default()
    }

    /// Decodes every certificate in `data` (PEM bundle or one DER) and relates each to the
    /// berth CA.
    pub fn inspect(&self, data: &[u8]) -> Result<Vec<CertDetails>, Error> {
        let ders = parse_certificates(data)?;
        let store = self.lock();
        ders.iter()
            .map(|der| {
                inspect::details(der, Some(&self.ca), |serial| {
                    store.find(serial).is_some_and(|r| r.revoked_at.is_some())
                })
            })
            .collect()
    }

    fn record(
        &self,
        kind: CertKind,
        der: &[u8],
        key_held: bool,
        from_csr: bool,
    ) -> Result<CertRecord, Error> {
        let d = inspect::details(der, None, |_| false)?;
        Ok(CertRecord {
            serial: d.serial,
            kind,
            names: d.names,
            not_before: d.not_before,
            not_after: d.not_after,
            fingerprint_sha256: d.fingerprint_sha256,
            revoked_at: None,
            key_held,
            from_csr,
            key_algorithm: d.key_algorithm,
            certificate_pem: inspect::pem_encode(der),
        })
    }

    fn write_crl(&self, store: &mut Store) -> Result<(), Error> {
        let number = store.next_crl_number()?;
        Crl::sign_and_write(
            &self.dir,
            &self.ca,
            store.records(),
            number,
            self.crl_lifetime,
        )
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave the store half-updated: it only
        // swaps in a new index after the file write succeeded.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The identity a verified client certificate carries (the first certificate in `der`).
pub fn cert_identity(der: &[u8]) -> Result<crate::identity::CertIdentity, Error> {
    let d = inspect::details(der, None, |_| false)?;
    Ok(crate::identity::CertIdentity {
        subject: d.subject,
        common_name: d.names.common_name,
        organizations: d.names.organizations,
        organizational_units: d.names.organizational_units,
        dns_names: d.names.dns_names,
        ip_addresses: d
            .names
            .ip_addresses
            .iter()
            .map(ToString::to_string)
            .collect(),
        uris: d.names.uris,
        emails: d.names.emails,
        serial: d.serial,
        not_after: d.not_after,
        issuer: d.issuer,
    })
}

/// Decodes certificates without a CA at hand: everything but the relation to the berth CA.
pub fn inspect_standalone(data: &[u8]) -> Result<Vec<CertDetails>, Error> {
    parse_certificates(data)?
        .iter()
        .map(|der| inspect::details(der, None, |_| false))
        .collect()
}

/// Whether `name` can go into a certificate as a DNS name (used to filter host names
/// picked up from the system before asking for a certificate).
pub fn is_valid_dns_name(name: &str) -> bool {
    issue::check_dns(name, false).is_ok()
}

/// Normalises a serial typed by a person: strips colons and spaces, lowercases, checks hex.
pub fn normalize_serial(s: &str) -> Result<String, Error> {
    let n: String = s
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    let n = n.trim_start_matches("0x").to_string();
    if n.is_empty() || !n.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Error::InvalidRequest(format!(
            "invalid serial {s:?}: expected hex digits as shown by `berth cert ls`"
        )));
    }
    Ok(n)
}

#[cfg(test)]
mod tests;

/// Why a replica certificate cannot be issued or signed directly.
fn replica_only_by_token() -> Error {
    Error::InvalidRequest(
        "replica certificates are made only by enrolling with a replica token: `berth token create --name NAME --replica --san HOST`, then `berthd --role registry --join-token-file FILE`".into(),
    )
}

/// The names of a replica token's certificates: its CN and each of `names` as a DNS name
/// or an IP address, checked as a server certificate's.
fn token_names(common_name: &str, names: &[String]) -> Result<Names, Error> {
    if names.is_empty() {
        return Err(Error::MissingName(
            "a replica token needs the names its clients dial it by (--san registry.example.com, --san 10.0.0.5): they go into the replica's server certificate",
        ));
    }
    let mut n = Names {
        common_name: common_name.to_string(),
        ..Names::default()
    };
    for s in names {
        match s.trim().parse::<std::net::IpAddr>() {
            Ok(ip) => n.ip_addresses.push(ip),
            Err(_) => n.dns_names.push(s.trim().to_string()),
        }
    }
    issue::validate(CertKind::Replica, &n)
}

/// `pki.crl_lifetime`, checked: a CRL must outlive a few re-signing rounds.
fn crl_lifetime(d: std::time::Duration) -> Result<time::Duration, Error> {
    if d < std::time::Duration::from_secs(2) {
        return Err(Error::InvalidRequest(format!(
            "pki.crl_lifetime = {:?} is too short: give at least 2s (days in production)",
            d
        )));
    }
    time::Duration::try_from(d)
        .map_err(|_| Error::InvalidRequest("pki.crl_lifetime is too long: give days".into()))
}
