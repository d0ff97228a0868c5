//! One-time enrolment tokens: an operator makes one per client host (`berth token create`),
//! that host trades it with a CSR for its client certificate (`berth join`). The token text
//! is `bt1.<id>.<secret>`; only a SHA-256 of the secret is stored (0600), so the file
//! cannot be replayed. A token is bound to a subject name, expires, is used once, and can
//! be revoked. A replica token (`--replica`) is the exception to "used once": registry
//! replicas keep no state, so each start enrols again with the same token until it expires
//! or is revoked.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::Error;
use crate::fsutil;

/// Prefix and version of the token text.
const PREFIX: &str = "bt1";

/// A token as stored (no secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id, hex.
    pub id: String,
    /// Subject common name it enrols.
    pub name: String,
    /// When it was made.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it stops working.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// When it was used.
    #[serde(with = "time::serde::rfc3339::option")]
    pub used_at: Option<OffsetDateTime>,
    /// When it was revoked.
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// Serial of the certificate it enrolled (the latest, for a replica token).
    pub certificate_serial: Option<String>,
    /// A replica token: usable again until it expires or is revoked (a replica keeps no
    /// state, so every start enrols anew), and it enrols replica certificates.
    #[serde(default)]
    pub replica: bool,
    /// The DNS names and IP addresses a replica token's certificates carry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}

/// A token in the file: its record and the hash of its secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    record: TokenRecord,
    /// SHA-256 of the secret, hex.
    hash: String,
}

/// A freshly made token and its text, shown once.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// The stored record.
    pub record: TokenRecord,
    /// `bt1.<id>.<secret>`: what `berth join --token` takes.
    pub secret: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    tokens: Vec<Stored>,
}

/// The token file.
#[derive(Debug)]
pub(super) struct Tokens {
    path: PathBuf,
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Equal without an early exit, so the time taken says nothing about the secret.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn random_hex(bytes: usize) -> Result<String, Error> {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).map_err(|e| Error::KeyGeneration(e.to_string()))?;
    Ok(hex::encode(b))
}

impl Tokens {
    pub(super) fn open(dir: &Path) -> Tokens {
        Tokens {
            path: dir.join("tokens.json"),
        }
    }

    fn load(&self) -> Result<File, Error> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::CorruptIndex {
                path: self.path.clone(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(File::default()),
            Err(source) => Err(fsutil::Error::Io {
                op: "read",
                path: self.path.clone(),
                source,
            }
            .into()),
        }
    }

    fn save(&self, f: &File) -> Result<(), Error> {
        let bytes = serde_json::to_vec_pretty(f).map_err(|e| Error::CorruptIndex {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        Ok(fsutil::write_atomic(&self.path, &bytes, 0o600)?)
    }

    pub(super) fn create(
        &self,
        name: &str,
        ttl: std::time::Duration,
        replica_names: Option<&[String]>,
    ) -> Result<NewToken, Error> {
        let mut f = self.load()?;
        let id = random_hex(6)?;
        let secret_part = random_hex(24)?;
        // Whole seconds, as the wire carries them, so every side agrees on the expiry.
        let now = OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap_or_else(|_| OffsetDateTime::now_utc());
        let ttl = time::Duration::try_from(ttl).map_err(|_| {
            Error::InvalidRequest("token lifetime is too long: give at most a few days".into())
        })?;
        let record = TokenRecord {
            id: id.clone(),
            name: name.to_string(),
            created_at: now,
            expires_at: now + ttl,
            used_at: None,
            revoked_at: None,
            certificate_serial: None,
            replica: replica_names.is_some(),
            names: replica_names.map(<[String]>::to_vec).unwrap_or_default(),
        };
        f.tokens.push(Stored {
            record: record.clone(),
            hash: hash(&secret_part),
        });
        self.save(&f)?;
        Ok(NewToken {
            record,
            secret: format!("{PREFIX}.{id}.{secret_part}"),
        })
    }

    pub(super) fn list(&self) -> Result<Vec<TokenRecord>, Error> {
        Ok(self.load()?.tokens.into_iter().map(|t| t.record).collect())
    }

    pub(super) fn revoke(&self, id: &str) -> Result<TokenRecord, Error> {
        let mut f = self.load()?;
        let t = f
            .tokens
            .iter_mut()
            .map(|t| &mut t.record)
            .find(|t| t.id == id)
            .ok_or_else(|| Error::NotFound(format!("token {id}")))?;
        if t.revoked_at.is_none() {
            t.revoked_at = Some(OffsetDateTime::now_utc());
        }
        let t = t.clone();
        self.save(&f)?;
        Ok(t)
    }

    /// Uses a token up: it must exist, match, be unused, unrevoked and unexpired. Marked
    /// used before the certificate is signed, so a failure later burns it rather than
    /// leaving it replayable.
    pub(super) fn redeem(&self, text: &str) -> Result<TokenRecord, Error> {
        let refused = |why: &'static str| {
            tracing::warn!(reason = why, "enrolment token refused");
            Error::TokenRefused
        };
        let mut parts = text.trim().splitn(3, '.');
        let (Some(PREFIX), Some(id), Some(secret)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(refused("malformed"));
        };
        let mut f = self.load()?;
        let Some(stored) = f.tokens.iter_mut().find(|t| t.record.id == id) else {
            return Err(refused("unknown id"));
        };
        if !same(&stored.hash, &hash(secret)) {
            return Err(refused("wrong secret"));
        }
        let t = &mut stored.record;
        if t.revoked_at.is_some() {
            return Err(refused("revoked"));
        }
        if t.used_at.is_some() && !t.replica {
            return Err(refused("already used"));
        }
        if t.expires_at <= OffsetDateTime::now_utc() {
            return Err(refused("expired"));
        }
        t.used_at = Some(OffsetDateTime::now_utc());
        let t = t.clone();
        self.save(&f)?;
        Ok(t)
    }

    /// Records which certificate a redeemed token produced.
    pub(super) fn record_serial(&self, id: &str, serial: &str) -> Result<(), Error> {
        let mut f = self.load()?;
        if let Some(t) = f.tokens.iter_mut().find(|t| t.record.id == id) {
            t.record.certificate_serial = Some(serial.to_string());
        }
        self.save(&f)
    }
}
