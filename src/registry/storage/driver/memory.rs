//! The in-memory driver: a sorted map of keys, for tests and for proving that storage
//! logic depends on the driver trait only (the same suite runs against it and the
//! filesystem). Not durable, by design.

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use super::{Driver, Entry, Key, Meta, Writer};
use crate::registry::Error;

#[derive(Debug, Clone)]
struct Object {
    bytes: Vec<u8>,
    modified: SystemTime,
}

type Map = BTreeMap<String, Object>;

/// Objects in a map shared by clones.
#[derive(Debug, Default, Clone)]
pub(crate) struct MemoryDriver {
    map: Arc<Mutex<Map>>,
}

impl MemoryDriver {
    /// An empty store.
    pub(crate) fn new() -> MemoryDriver {
        MemoryDriver::default()
    }

    fn lock(&self) -> MutexGuard<'_, Map> {
        // Every update is a single map operation, so a panic cannot leave it half-done.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `key/`, the prefix of everything below `key` (everything, for the empty key).
fn below(key: &Key) -> String {
    if key.as_str().is_empty() {
        String::new()
    } else {
        format!("{}/", key.as_str())
    }
}

struct MemWriter {
    driver: MemoryDriver,
    key: String,
}

impl Write for MemWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut map = self.driver.lock();
        let o = map.entry(self.key.clone()).or_insert_with(|| Object {
            bytes: Vec::new(),
            modified: SystemTime::now(),
        });
        o.bytes.extend_from_slice(buf);
        o.modified = SystemTime::now();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl super::Append for MemWriter {
    fn finish(self: Box<Self>) -> std::io::Result<()> {
        Ok(())
    }
}

impl Driver for MemoryDriver {
    fn locate(&self, key: &Key) -> PathBuf {
        PathBuf::from(format!("memory:{key}"))
    }

    fn put_scratch(&self, key: &Key, bytes: &[u8]) -> Result<(), Error> {
        self.put(key, bytes)
    }

    fn changed_at(&self, _key: &Key) -> Result<Option<SystemTime>, Error> {
        // Folders are implied by keys here and keep no times: callers always list.
        Ok(None)
    }

    fn stat(&self, key: &Key) -> Result<Option<Meta>, Error> {
        Ok(self.lock().get(key.as_str()).map(|o| Meta {
            size: o.bytes.len() as u64,
            modified: o.modified,
        }))
    }

    fn has_children(&self, key: &Key) -> Result<bool, Error> {
        let p = below(key);
        Ok(self
            .lock()
            .range(p.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&p)))
    }

    fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.lock().get(key.as_str()).map(|o| o.bytes.clone()))
    }

    fn reader(&self, key: &Key, offset: u64) -> Result<Option<Box<dyn Read + Send>>, Error> {
        let Some(bytes) = self.get(key)? else {
            return Ok(None);
        };
        let mut c = Cursor::new(bytes);
        c.set_position(offset);
        Ok(Some(Box::new(c)))
    }

    fn put(&self, key: &Key, bytes: &[u8]) -> Result<(), Error> {
        self.lock().insert(
            key.as_str().to_string(),
            Object {
                bytes: bytes.to_vec(),
                modified: SystemTime::now(),
            },
        );
        Ok(())
    }

    fn append(&self, key: &Key) -> Result<Writer, Error> {
        self.lock()
            .entry(key.as_str().to_string())
            .or_insert_with(|| Object {
                bytes: Vec::new(),
                modified: SystemTime::now(),
            });
        Ok(Box::new(MemWriter {
            driver: self.clone(),
            key: key.as_str().to_string(),
        }))
    }

    fn truncate(&self, key: &Key, len: u64) -> Result<(), Error> {
        if let Some(o) = self.lock().get_mut(key.as_str()) {
            o.bytes.truncate(usize::try_from(len).unwrap_or(usize::MAX));
            o.modified = SystemTime::now();
        }
        Ok(())
    }

    fn list(&self, key: &Key) -> Result<Vec<Entry>, Error> {
        let p = below(key);
        let map = self.lock();
        let mut out: Vec<Entry> = Vec::new();
        for (k, _) in map.range(p.clone()..) {
            let Some(rest) = k.strip_prefix(&p) else {
                break;
            };
            let (name, is_dir) = match rest.split_once('/') {
                Some((n, _)) => (n, true),
                None => (rest, false),
            };
            match out.iter_mut().find(|e| e.name == name) {
                Some(e) => e.is_dir |= is_dir,
                _ => out.push(Entry {
                    name: name.to_string(),
                    is_dir,
                }),
            }
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &Key) -> Result<bool, Error> {
        let mut map = self.lock();
        let mut found = map.remove(key.as_str()).is_some();
        let p = below(key);
        let doomed: Vec<String> = map
            .range(p.clone()..)
            .take_while(|(k, _)| k.starts_with(&p))
            .map(|(k, _)| k.clone())
            .collect();
        found |= !doomed.is_empty();
        for k in doomed {
            map.remove(&k);
        }
        Ok(found)
    }

    fn rename(&self, from: &Key, to: &Key) -> Result<(), Error> {
        let mut map = self.lock();
        let o = map.remove(from.as_str()).ok_or_else(|| Error::Io {
            op: "move",
            path: PathBuf::from(format!("memory:{from}")),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        map.insert(to.as_str().to_string(), o);
        Ok(())
    }
}
