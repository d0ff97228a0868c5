//! The image model computed from stored content, not guessed: manifest, config (image ID),
//! each layer's diff ID (sha256 of the uncompressed tar, computed by decompressing gzip or
//! zstd and checked against the config's `rootfs.diff_ids`), chain IDs, and for an index
//! its platform entries.

use std::io::{BufRead, BufReader, Read};

use serde::Serialize;
use serde_json::Value;

use super::manifest::{Kind, Manifest};
use super::reference::{Algorithm, Digest, Reference, RepoName};
use super::{Error, Registry};
use crate::identity::Identity;

/// Largest config blob read into memory.
const MAX_CONFIG: u64 = 16 * 1024 * 1024;

/// One layer of an image.
#[derive(Debug, Clone, Serialize)]
pub struct LayerInfo {
    /// Compressed (stored) digest.
    pub digest: Digest,
    /// Stored size.
    pub size: u64,
    /// Layer media type.
    pub media_type: String,
    /// Compression found in the content: gzip, zstd or none.
    pub compression: String,
    /// Diff ID computed from the content (absent when the blob is not stored here, e.g. a
    /// non-distributable layer).
    pub diff_id: Option<Digest>,
    /// Diff ID the config records for this layer.
    pub config_diff_id: Option<String>,
    /// Whether the two agree (absent when one of them is missing).
    pub diff_id_matches: Option<bool>,
    /// Chain ID up to and including this layer.
    pub chain_id: Option<Digest>,
}

/// One entry of an index.
#[derive(Debug, Clone, Serialize)]
pub struct PlatformEntry {
    /// Child manifest digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its size.
    pub size: u64,
    /// Platform OS.
    pub os: Option<String>,
    /// Platform architecture.
    pub architecture: Option<String>,
    /// Platform variant.
    pub variant: Option<String>,
}

/// What `berth image inspect` shows.
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    /// Repository.
    pub repository: String,
    /// Manifest digest.
    pub digest: Digest,
    /// Manifest media type.
    pub media_type: String,
    /// "image" or "index".
    pub kind: String,
    /// Manifest size.
    pub manifest_size: u64,
    /// Config digest: the image ID.
    pub config_digest: Option<Digest>,
    /// Config OS.
    pub os: Option<String>,
    /// Config architecture.
    pub architecture: Option<String>,
    /// Layers, base first.
    pub layers: Vec<LayerInfo>,
    /// Index entries.
    pub platforms: Vec<PlatformEntry>,
    /// Sum of config and layer sizes (image) or of child manifests (index).
    pub total_size: u64,
}

/// `ChainID(L1) = DiffID(L1)`, `ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))`.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => Digest::sha256_of(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// The sha256 of a layer's uncompressed content and the compression found, by magic
/// bytes (media types lie more often than bytes do).
pub fn diff_id_of(reader: &mut dyn Read) -> Result<(Digest, &'static str), Error> {
    let io = |op: &'static str| {
        move |source| Error::Io {
            op,
            path: std::path::PathBuf::from("layer"),
            source,
        }
    };
    let mut r = BufReader::with_capacity(1024 * 1024, reader);
    let head = r.fill_buf().map_err(io("read"))?.to_vec();
    let mut h = Algorithm::Sha256.hasher();
    let mut sink = HashWriter(&mut h);
    let bad = |what: String| Error::Io {
        op: "decompress",
        path: std::path::PathBuf::from("layer"),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, what),
    };
    let kind = if head.starts_with(&[0x1f, 0x8b]) {
        let mut d = flate2::bufread::MultiGzDecoder::new(r);
        std::io::copy(&mut d, &mut sink).map_err(|e| bad(format!("gzip: {e}")))?;
        "gzip"
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd_frames(&mut r, &mut sink).map_err(bad)?;
        "zstd"
    } else {
        std::io::copy(&mut r, &mut sink).map_err(io("read"))?;
        "none"
    };
    Ok((h.finish(), kind))
}

/// Decodes every zstd frame in a stream (zstd:chunked layers have many, and skippable
/// frames between them).
fn zstd_frames(
    r: &mut BufReader<&mut dyn Read>,
    sink: &mut impl std::io::Write,
) -> Result<(), String> {
    loop {
        if r.fill_buf().map_err(|e| e.to_string())?.is_empty() {
            return Ok(());
        }
        let head = r.fill_buf().map_err(|e| e.to_string())?;
        if head.len() >= 8 && head[0] & 0xf0 == 0x50 && head[1..4] == [0x2a, 0x4d, 0x18] {
            // Skippable frame: magic, 4-byte little-endian length, payload.
            let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as u64;
            r.consume(8);
            std::io::copy(&mut r.by_ref().take(len), &mut std::io::sink())
                .map_err(|e| e.to_string())?;
            continue;
        }
        let mut dec = ruzstd::decoding::StreamingDecoder::new(r.by_ref())
            .map_err(|e| format!("zstd: {e}"))?;
        std::io::copy(&mut dec, sink).map_err(|e| format!("zstd: {e}"))?;
    }
}

struct HashWriter<'a>(&'a mut super::reference::Hasher);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn str_field(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_string)
}

impl Registry {
    /// Inspects an image or index by tag or digest.
    pub async fn inspect(
        &self,
        who: &Identity,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<ImageInfo, Error> {
        let stored = self.head_manifest(who, name, reference).await?;
        let m = Manifest::parse(&stored.bytes, Some(&stored.media_type))?;
        let mut info = ImageInfo {
            repository: name.to_string(),
            digest: stored.digest.clone(),
            media_type: stored.media_type.clone(),
            kind: match m.kind {
                Kind::Image => "image".into(),
                Kind::Index => "index".into(),
            },
            manifest_size: stored.bytes.len() as u64,
            config_digest: None,
            os: None,
            architecture: None,
            layers: Vec::new(),
            platforms: Vec::new(),
            total_size: 0,
        };
        if m.kind == Kind::Index {
            let raw: Value = serde_json::from_slice(&stored.bytes).unwrap_or(Value::Null);
            let entries = raw
                .get("manifests")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for (d, e) in m.manifests.iter().zip(entries.iter()) {
                let p = e.get("platform").cloned().unwrap_or(Value::Null);
                info.total_size += d.size;
                info.platforms.push(PlatformEntry {
                    digest: d.digest.clone(),
                    media_type: d.media_type.clone(),
                    size: d.size,
                    os: str_field(&p, "os"),
                    architecture: str_field(&p, "architecture"),
                    variant: str_field(&p, "variant"),
                });
            }
            return Ok(info);
        }
        let Some((config, layers)) = m.blobs.split_first() else {
            return Ok(info);
        };
        info.config_digest = Some(config.digest.clone());
        info.total_size = m.blobs.iter().map(|b| b.size).sum();
        let cfg: Value = match self
            .storage
            .read_small_blob(name, &config.digest, MAX_CONFIG)
            .await
        {
            Ok(b) => serde_json::from_slice(&b).unwrap_or(Value::Null),
            Err(Error::BlobUnknown(_)) => Value::Null,
            Err(e) => return Err(e),
        };
        info.os = str_field(&cfg, "os");
        info.architecture = str_field(&cfg, "architecture");
        let recorded: Vec<String> = cfg
            .pointer("/rootfs/diff_ids")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let mut effective = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            let stored = self.storage.blob_size(name, &l.digest).await?.is_some();
            let (diff_id, compression) = if stored {
                let (d, c) = self.storage.with_blob(&l.digest, diff_id_of).await?;
                (Some(d), c.to_string())
            } else {
                (None, "unknown (not stored here)".to_string())
            };
            let config_diff_id = recorded.get(i).cloned();
            let diff_id_matches = match (&diff_id, &config_diff_id) {
                (Some(a), Some(b)) => Some(a.to_string() == *b),
                _ => None,
            };
            let eff = diff_id
                .clone()
                .or_else(|| config_diff_id.as_deref().and_then(|s| s.parse().ok()));
            if let Some(e) = &eff {
                effective.push(e.clone());
            }
            let chain_id = (eff.is_some() && effective.len() == i + 1)
                .then(|| chain_ids(&effective).pop())
                .flatten();
            info.layers.push(LayerInfo {
                digest: l.digest.clone(),
                size: l.size,
                media_type: l.media_type.clone(),
                compression,
                diff_id,
                config_diff_id,
                diff_id_matches,
                chain_id,
            });
        }
        Ok(info)
    }
}

#[cfg(test)]
mod tests;
