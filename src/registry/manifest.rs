//! Manifests as the registry needs them: which media type a body is, and which blobs, child
//! manifests and subject it references. The exact bytes are what is stored and served;
//! parsing only decides whether to accept them.

use serde_json::{Map, Value};

use super::reference::Digest;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list, schema 2.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Why a manifest body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not a manifest berth accepts: bad JSON, a missing or mistyped field.
    #[error("{0}")]
    Invalid(String),
}

/// Image manifest or index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Config plus layers.
    Image,
    /// A list of manifests (multi-platform image, or an artifact index).
    Index,
}

/// A content descriptor inside a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Artifact type, when the descriptor carries one.
    pub artifact_type: Option<String>,
    /// Annotations, verbatim.
    pub annotations: Option<Map<String, Value>>,
    /// External URLs (non-distributable layers are fetched from these, not from us).
    pub urls: Vec<String>,
}

/// What the registry needs to know of a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The media type it is served with.
    pub media_type: String,
    /// Image or index.
    pub kind: Kind,
    /// Config and layers of an image manifest.
    pub blobs: Vec<Descriptor>,
    /// Child manifests of an index.
    pub manifests: Vec<Descriptor>,
    /// The manifest this one refers to (referrers API).
    pub subject: Option<Descriptor>,
    /// `artifactType`, or for an image manifest without one its config media type, as the
    /// referrers API reports it.
    pub artifact_type: Option<String>,
    /// Top-level annotations.
    pub annotations: Option<Map<String, Value>>,
}

impl Manifest {
    /// Parses and checks a manifest body. `content_type` is the request's Content-Type;
    /// when the body also names a media type, the two must agree.
    pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<Manifest, Error> {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| Error::Invalid(format!("manifest is not valid JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| Error::Invalid("manifest must be a JSON object".into()))?;
        match obj.get("schemaVersion").and_then(Value::as_u64) {
            Some(2) => {}
            Some(1) => {
                return Err(Error::Invalid(
                    "docker schema 1 manifests are not supported: push with a current client"
                        .into(),
                ));
            }
            _ => return Err(Error::Invalid("manifest needs \"schemaVersion\": 2".into())),
        }
        let declared = match obj.get("mediaType") {
            None => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => return Err(Error::Invalid("mediaType must be a string".into())),
        };
        let header = content_type
            .map(|c| c.split(';').next().unwrap_or("").trim())
            .filter(|c| {
                !c.is_empty() && *c != "application/json" && *c != "application/octet-stream"
            });
        let media_type = match (declared, header) {
            (Some(d), Some(h)) if d != h => {
                return Err(Error::Invalid(format!(
                    "Content-Type {h} does not match the manifest's mediaType {d}"
                )));
            }
            (Some(d), _) => d.to_string(),
            (None, Some(h)) => h.to_string(),
            (None, None) if obj.contains_key("manifests") => OCI_INDEX.to_string(),
            (None, None) => OCI_MANIFEST.to_string(),
        };
        let kind = match media_type.as_str() {
            OCI_MANIFEST | DOCKER_MANIFEST => Kind::Image,
            OCI_INDEX | DOCKER_LIST => Kind::Index,
            other => {
                return Err(Error::Invalid(format!(
                    "unsupported manifest media type {other:?}: expected an OCI image manifest or index, or a docker schema 2 manifest or list"
                )));
            }
        };
        let annotations = annotations(obj.get("annotations"), "manifest")?;
        let subject = obj
            .get("subject")
            .map(|s| descriptor(s, "subject"))
            .transpose()?;
        let mut artifact_type = match obj.get("artifactType") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(Error::Invalid("artifactType must be a string".into())),
        };
        let (blobs, manifests) = match kind {
            Kind::Image => {
                let config = obj
                    .get("config")
                    .ok_or_else(|| Error::Invalid("image manifest has no config".into()))?;
                let config = descriptor(config, "config")?;
                if artifact_type.is_none() {
                    artifact_type = Some(config.media_type.clone());
                }
                let layers = match obj.get("layers") {
                    Some(Value::Array(a)) => a
                        .iter()
                        .map(|l| descriptor(l, "layer"))
                        .collect::<Result<Vec<_>, _>>()?,
                    Some(_) => return Err(Error::Invalid("layers must be an array".into())),
                    None => {
                        return Err(Error::Invalid("image manifest has no layers array".into()));
                    }
                };
                if obj.contains_key("manifests") {
                    return Err(Error::Invalid(
                        "an image manifest cannot list manifests".into(),
                    ));
                }
                let mut blobs = vec![config];
                blobs.extend(layers);
                (blobs, Vec::new())
            }
            Kind::Index => {
                let list = match obj.get("manifests") {
                    Some(Value::Array(a)) => a
                        .iter()
                        .map(|m| descriptor(m, "manifest entry"))
                        .collect::<Result<Vec<_>, _>>()?,
                    _ => return Err(Error::Invalid("index needs a manifests array".into())),
                };
                (Vec::new(), list)
            }
        };
        Ok(Manifest {
            media_type,
            kind,
            blobs,
            manifests,
            subject,
            artifact_type,
            annotations,
        })
    }

    /// Blobs the registry must hold before accepting this manifest: config and layers, but
    /// not non-distributable layers that clients fetch from their `urls`.
    pub fn required_blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.blobs.iter().filter(|d| d.urls.is_empty())
    }
}

/// The media type to serve stored bytes with when nothing recorded it (content written by
/// registry:2): the body's `mediaType`, else what its shape says.
pub fn detect_media_type(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if let Some(m) = v.get("mediaType").and_then(Value::as_str) {
        return m.to_string();
    }
    if v.get("manifests").is_some() {
        OCI_INDEX.to_string()
    } else {
        OCI_MANIFEST.to_string()
    }
}

fn descriptor(v: &Value, what: &str) -> Result<Descriptor, Error> {
    let o = v
        .as_object()
        .ok_or_else(|| Error::Invalid(format!("{what} must be a descriptor object")))?;
    let media_type = o
        .get("mediaType")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Invalid(format!("{what} descriptor needs a mediaType")))?
        .to_string();
    let digest = o
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Invalid(format!("{what} descriptor needs a digest")))?;
    let digest = digest
        .parse::<Digest>()
        .map_err(|e| Error::Invalid(format!("{what} descriptor: {e}")))?;
    let size = o.get("size").and_then(Value::as_u64).ok_or_else(|| {
        Error::Invalid(format!(
            "{what} descriptor needs a non-negative integer size"
        ))
    })?;
    let urls = match o.get("urls") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|u| u.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::Invalid(format!("{what} descriptor: urls must be strings")))?,
        Some(_) => {
            return Err(Error::Invalid(format!(
                "{what} descriptor: urls must be an array"
            )));
        }
    };
    let artifact_type = o
        .get("artifactType")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(Descriptor {
        media_type,
        digest,
        size,
        artifact_type,
        annotations: annotations(o.get("annotations"), what)?,
        urls,
    })
}

fn annotations(v: Option<&Value>, what: &str) -> Result<Option<Map<String, Value>>, Error> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) if m.values().all(Value::is_string) => Ok(Some(m.clone())),
        Some(_) => Err(Error::Invalid(format!(
            "{what} annotations must map strings to strings"
        ))),
    }
}

#[cfg(test)]
mod tests;
