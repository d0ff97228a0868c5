//! `/v2/...` paths to routes. Repository names contain `/`, so one wildcard route feeds this
//! parser, which reads the path from its end: the last components say what is asked for,
//! everything before them is the name.

use crate::registry::reference::Error as RefError;
use crate::registry::reference::{Digest, Reference, RepoName};

/// What a path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags(RepoName),
    /// `/v2/<name>/manifests/<reference>`
    Manifest(RepoName, Reference),
    /// `/v2/<name>/blobs/<digest>`
    Blob(RepoName, Digest),
    /// `/v2/<name>/blobs/uploads/`
    UploadStart(RepoName),
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload(RepoName, String),
    /// `/v2/<name>/referrers/<digest>`
    Referrers(RepoName, Digest),
}

/// Why a path is not a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// No endpoint has this shape.
    NotFound,
    /// The shape is right but a part is malformed.
    Invalid(RefError),
    /// A manifest route whose repository is valid but whose reference is not a tag or
    /// digest: no such manifest can exist (a GET answers 404, a PUT 400).
    ManifestReference(RefError),
}

impl From<RefError> for RouteError {
    fn from(e: RefError) -> RouteError {
        RouteError::Invalid(e)
    }
}

/// Parses the part of the path after `/v2/`.
pub fn parse(rest: &str) -> Result<Route, RouteError> {
    if rest.is_empty() {
        return Ok(Route::Base);
    }
    if rest == "_catalog" {
        return Ok(Route::Catalog);
    }
    let trailing_slash = rest.ends_with('/');
    let segs: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    let n = segs.len();
    let name = |upto: usize| -> Result<RepoName, RouteError> {
        if upto == 0 {
            return Err(RouteError::NotFound);
        }
        Ok(segs[..upto].join("/").parse::<RepoName>()?)
    };
    if n >= 3 && segs[n - 2] == "blobs" && segs[n - 1] == "uploads" {
        return Ok(Route::UploadStart(name(n - 2)?));
    }
    if trailing_slash {
        return Err(RouteError::NotFound);
    }
    if n >= 3 && segs[n - 2] == "tags" && segs[n - 1] == "list" {
        return Ok(Route::Tags(name(n - 2)?));
    }
    if n >= 4 && segs[n - 3] == "blobs" && segs[n - 2] == "uploads" {
        return Ok(Route::Upload(name(n - 3)?, segs[n - 1].to_string()));
    }
    if n >= 3 {
        let (kind, last) = (segs[n - 2], segs[n - 1]);
        if kind == "manifests" {
            let repo = name(n - 2)?;
            return match last.parse() {
                Ok(r) => Ok(Route::Manifest(repo, r)),
                Err(e) => Err(RouteError::ManifestReference(e)),
            };
        }
        if kind == "blobs" {
            return Ok(Route::Blob(name(n - 2)?, last.parse()?));
        }
        if kind == "referrers" {
            return Ok(Route::Referrers(name(n - 2)?, last.parse()?));
        }
    }
    Err(RouteError::NotFound)
}

#[cfg(test)]
mod tests;
