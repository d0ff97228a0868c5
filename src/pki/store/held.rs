//! The keys berthd holds, in one append-only file, `keys/held.log` (0600, folder 0700):
//! one JSON line per key, `{"serial": "...", "key": "<PEM>"}`. A file per key cost an
//! inode, a create, a rename and a folder sync per certificate, which capped issuance near
//! 1,000 a second on ext4; appending a line costs a write, and the group sync that makes
//! the index durable makes the keys durable first. Only offsets are kept in memory (the
//! PEM is read back on use), so 100,000 held keys cost a few MiB, not their contents.
//!
//! Keys an older berth kept as `keys/<serial>.key` are still read.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::super::{Error, SecretKeyPem};
use crate::fsutil;

/// The file's name in `keys/`.
pub(super) const HELD_LOG: &str = "held.log";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    serial: String,
    key: String,
}

/// The open log and where each key's line is.
#[derive(Debug)]
pub(super) struct Held {
    file: File,
    path: PathBuf,
    len: u64,
    at: HashMap<String, (u64, usize)>,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| fsutil::Error::Io { op, path, source }.into()
}

impl Held {
    /// Opens (or creates, 0600) `keys/held.log` and indexes its lines. A last line without
    /// its newline was torn by a crash before any answer: it is cut off. Any other line
    /// that does not parse is damage, reported by line number, and nothing is rewritten.
    pub(super) fn open(keys: &Path) -> Result<Held, Error> {
        let path = keys.join(HELD_LOG);
        let created = !path.exists();
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io("open", &path))?;
        // The umask may have cleared bits, or someone loosened them: exactly 0600.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io("set mode on", &path))?;
        if created {
            // The file's name must survive a crash before any key in it is relied on.
            File::open(keys)
                .and_then(|d| d.sync_all())
                .map_err(io("fsync folder", keys))?;
        }
        let bytes = std::fs::read(&path).map_err(io("read", &path))?;
        let complete = bytes.len() - bytes.iter().rev().take_while(|b| **b != b'\n').count();
        let mut at = HashMap::new();
        let mut offset = 0usize;
        for (n, line) in bytes[..complete]
            .split_inclusive(|b| *b == b'\n')
            .enumerate()
        {
            let l: Line = serde_json::from_slice(line).map_err(|e| Error::CorruptIndex {
                path: path.clone(),
                reason: format!("line {}: {e}", n + 1),
            })?;
            at.entry(l.serial).or_insert((offset as u64, line.len()));
            offset += line.len();
        }
        if complete < bytes.len() {
            file.set_len(complete as u64)
                .map_err(io("truncate", &path))?;
            file.sync_all().map_err(io("fsync", &path))?;
        }
        Ok(Held {
            file,
            path,
            len: complete as u64,
            at,
        })
    }

    /// A second handle on the log, for the group sync.
    pub(super) fn handle(&self) -> Result<File, Error> {
        self.file.try_clone().map_err(io("open", &self.path))
    }

    /// Appends `key` for `serial` (not yet synced: the group sync does that before the
    /// index change that names it).
    pub(super) fn append(&mut self, serial: &str, key: &SecretKeyPem) -> Result<(), Error> {
        let mut line = serde_json::to_vec(&Line {
            serial: serial.to_string(),
            key: key.secret_pem().to_string(),
        })
        .map_err(|e| Error::InvalidRequest(e.to_string()))?;
        line.push(b'\n');
        if let Err(e) = self.file.write_all(&line) {
            // A partial line would glue onto the next one: cut back to where it began.
            let _ = self.file.set_len(self.len);
            return Err(io("append to", &self.path)(e));
        }
        self.at.insert(serial.to_string(), (self.len, line.len()));
        self.len += line.len() as u64;
        Ok(())
    }

    /// The key held for `serial`, from the log or from an older berth's
    /// `keys/<serial>.key`.
    pub(super) fn read(&self, keys: &Path, serial: &str) -> Result<SecretKeyPem, Error> {
        let Some(&(offset, len)) = self.at.get(serial) else {
            let bytes = fsutil::read(&keys.join(format!("{serial}.key")))?;
            return String::from_utf8(bytes)
                .map(SecretKeyPem::new)
                .map_err(|_| {
                    Error::InvalidRequest(format!("held key of {serial} is not PEM text"))
                });
        };
        let mut buf = vec![0u8; len];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(io("read", &self.path))?;
        let l: Line = serde_json::from_slice(&buf).map_err(|e| Error::CorruptIndex {
            path: self.path.clone(),
            reason: format!("the key of {serial}: {e}"),
        })?;
        Ok(SecretKeyPem::new(l.key))
    }

    /// True when a key is held for `serial` (in the log or as an older file).
    pub(super) fn has(&self, keys: &Path, serial: &str) -> bool {
        self.at.contains_key(serial) || keys.join(format!("{serial}.key")).is_file()
    }
}
