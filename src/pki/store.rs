//! The certificate index (`index.json`) and the keys berthd holds (`keys/`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{CertRecord, Error, SecretKeyPem};
use crate::fsutil;

const INDEX_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexFile {
    version: u32,
    crl_number: u64,
    certificates: Vec<CertRecord>,
}

/// In-memory copy of the index; every change is written to disk before it is kept.
pub(super) struct Store {
    dir: PathBuf,
    index: IndexFile,
}

impl Store {
    /// Reads the index, or starts an empty one when there is none. Anything unreadable is
    /// reported with the file's path and never overwritten.
    pub(super) fn open(dir: &Path) -> Result<Store, Error> {
        let path = dir.join("index.json");
        let index = match std::fs::read(&path) {
            Ok(bytes) => {
                let index: IndexFile =
                    serde_json::from_slice(&bytes).map_err(|e| Error::CorruptIndex {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                if index.version != INDEX_VERSION {
                    return Err(Error::CorruptIndex {
                        path,
                        reason: format!("version {} is not {INDEX_VERSION}", index.version),
                    });
                }
                index
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => IndexFile {
                version: INDEX_VERSION,
                crl_number: 0,
                certificates: Vec::new(),
            },
            Err(source) => {
                return Err(fsutil::Error::Io {
                    op: "read",
                    path,
                    source,
                }
                .into());
            }
        };
        fsutil::create_dir_all(&dir.join("keys"), 0o700)?;
        Ok(Store {
            dir: dir.to_path_buf(),
            index,
        })
    }

    pub(super) fn records(&self) -> &[CertRecord] {
        &self.index.certificates
    }

    pub(super) fn find(&self, serial: &str) -> Option<&CertRecord> {
        self.index.certificates.iter().find(|r| r.serial == serial)
    }

    /// A random serial of 127 bits that the index has never seen. Positive and without a
    /// leading zero byte, so its DER and hex forms are the same bytes everywhere.
    pub(super) fn fresh_serial(&self) -> Result<Vec<u8>, Error> {
        loop {
            let mut b = [0u8; 16];
            getrandom::fill(&mut b).map_err(|e| Error::KeyGeneration(e.to_string()))?;
            b[0] &= 0x7f;
            if b[0] == 0 {
                b[0] = 1;
            }
            if self.find(&hex::encode(b)).is_none() {
                return Ok(b.to_vec());
            }
        }
    }

    /// Records a certificate: its key first (so an index entry that says `key_held` always
    /// has its key), then the index.
    pub(super) fn insert(
        &mut self,
        record: CertRecord,
        key: Option<&SecretKeyPem>,
    ) -> Result<(), Error> {
        if let Some(key) = key {
            fsutil::write_atomic(
                &self.key_path(&record.serial),
                key.secret_pem().as_bytes(),
                0o600,
            )?;
        }
        let mut next = self.index.clone();
        next.certificates.push(record);
        self.save(next)
    }

    pub(super) fn revoke(&mut self, serial: &str, at: OffsetDateTime) -> Result<CertRecord, Error> {
        let mut next = self.index.clone();
        let rec = next
            .certificates
            .iter_mut()
            .find(|r| r.serial == serial)
            .ok_or_else(|| Error::NotFound(serial.to_string()))?;
        if rec.revoked_at.is_some() {
            return Err(Error::AlreadyRevoked(serial.to_string()));
        }
        rec.revoked_at = Some(at);
        let out = rec.clone();
        self.save(next)?;
        Ok(out)
    }

    pub(super) fn next_crl_number(&mut self) -> Result<u64, Error> {
        let mut next = self.index.clone();
        next.crl_number += 1;
        let n = next.crl_number;
        self.save(next)?;
        Ok(n)
    }

    pub(super) fn read_key(&self, serial: &str) -> Result<SecretKeyPem, Error> {
        let bytes = fsutil::read(&self.key_path(serial))?;
        String::from_utf8(bytes)
            .map(SecretKeyPem::new)
            .map_err(|_| Error::InvalidRequest(format!("held key of {serial} is not PEM text")))
    }

    fn key_path(&self, serial: &str) -> PathBuf {
        self.dir.join("keys").join(format!("{serial}.key"))
    }

    fn save(&mut self, next: IndexFile) -> Result<(), Error> {
        let json =
            serde_json::to_vec_pretty(&next).map_err(|e| Error::InvalidRequest(e.to_string()))?;
        fsutil::write_atomic(&self.dir.join("index.json"), &json, 0o644)?;
        self.index = next;
        Ok(())
    }
}
