//! One handler per endpoint of the distribution API. Each decodes the request, calls the
//! registry core, and sets the headers the spec and docker expect (`Location`,
//! `Docker-Content-Digest`, `Range`, `Docker-Upload-UUID`, `OCI-Subject`, `Link`).

use std::collections::HashMap;
use std::io::SeekFrom;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};
use tokio_util::io::{ReaderStream, StreamReader};

use super::errcode::{ApiError, Code};
use super::route::Route;
use crate::registry::events::{Action, Target};
use crate::registry::reference::{Digest, Reference, RepoName};
use crate::registry::{Error, MAX_MANIFEST_BYTES, Registry, manifest, paginate};

/// The most entries one catalog or tags page returns.
const MAX_PAGE: usize = 10_000;

type Result<T> = std::result::Result<T, ApiError>;

/// The request pieces handlers use. The body stays apart from the rest because it is not
/// `Sync`: handlers borrow the head across awaits and consume the body.
pub(super) struct Req {
    pub head: Head,
    pub body: Body,
}

/// Method, query, headers and who is asking.
pub(super) struct Head {
    pub method: Method,
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
    /// Client certificate CN, for events.
    pub actor: String,
}

fn tag_of(r: &Reference) -> Option<String> {
    match r {
        Reference::Tag(t) => Some(t.to_string()),
        Reference::Digest(_) => None,
    }
}

/// Routes a parsed path and method to its handler.
pub(super) async fn handle(reg: &Registry, route: Route, req: Req) -> Result<Response> {
    let m = req.head.method.clone();
    match (route, m) {
        (Route::Base, Method::GET | Method::HEAD) => Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "{}",
        )
            .into_response()),
        (Route::Catalog, Method::GET) => catalog(reg, &req.head).await,
        (Route::Tags(name), Method::GET) => tags(reg, &name, &req.head).await,
        (Route::Manifest(name, r), Method::GET | Method::HEAD) => {
            get_manifest(reg, &name, &r, &req.head).await
        }
        (Route::Manifest(name, r), Method::PUT) => put_manifest(reg, &name, &r, req).await,
        (Route::Manifest(name, r), Method::DELETE) => {
            reg.delete_manifest(&name, &r).await?;
            let (target, digest) = match &r {
                Reference::Digest(d) => (Target::Manifest, Some(d.to_string())),
                Reference::Tag(_) => (Target::Tag, None),
            };
            reg.events().emit(
                Action::Delete,
                target,
                name.as_str(),
                digest,
                tag_of(&r),
                &req.head.actor,
            );
            Ok(accepted())
        }
        (Route::Blob(name, d), Method::GET | Method::HEAD) => {
            get_blob(reg, &name, &d, &req.head).await
        }
        (Route::Blob(name, d), Method::DELETE) => {
            reg.delete_blob(&name, &d).await?;
            reg.events().emit(
                Action::Delete,
                Target::Blob,
                name.as_str(),
                Some(d.to_string()),
                None,
                &req.head.actor,
            );
            Ok(accepted())
        }
        (Route::UploadStart(name), Method::POST) => start_upload(reg, &name, req).await,
        (Route::Upload(name, id), Method::GET) => {
            let st = reg.storage().upload_status(&name, &id).await?;
            Ok(upload_response(
                StatusCode::NO_CONTENT,
                &name,
                &st.id,
                st.size,
            ))
        }
        (Route::Upload(name, id), Method::PATCH) => patch_upload(reg, &name, &id, req).await,
        (Route::Upload(name, id), Method::PUT) => put_upload(reg, &name, &id, req).await,
        (Route::Upload(name, id), Method::DELETE) => {
            reg.storage().cancel_upload(&name, &id).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (Route::Referrers(name, d), Method::GET) => referrers(reg, &name, &d, &req.head).await,
        (_, m) => Err(ApiError::new(
            Code::Unsupported,
            format!("{m} is not supported on this endpoint"),
        )),
    }
}

fn accepted() -> Response {
    (StatusCode::ACCEPTED, [(header::CONTENT_LENGTH, "0")]).into_response()
}

fn header_str<'a>(h: &'a HeaderMap, name: &header::HeaderName) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn set(resp: &mut Response, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

/// A body as a reader, so storage streams it to disk without holding it in memory.
fn reader(body: Body) -> impl AsyncRead + Unpin {
    StreamReader::new(body.into_data_stream().map_err(std::io::Error::other))
}

fn pagination(req: &Head) -> Result<(Option<usize>, Option<String>)> {
    let n = match req.query.get("n") {
        None => None,
        Some(v) => Some(
            v.parse::<usize>()
                .map_err(|_| {
                    ApiError::from(Error::PaginationInvalid(format!(
                        "n must be a non-negative integer, not {v:?}"
                    )))
                })?
                .min(MAX_PAGE),
        ),
    };
    Ok((n, req.query.get("last").cloned()))
}

fn link_next(base: &str, n: Option<usize>, last: &str) -> String {
    let enc = percent(last);
    match n {
        Some(n) => format!("<{base}?last={enc}&n={n}>; rel=\"next\""),
        None => format!("<{base}?last={enc}>; rel=\"next\""),
    }
}

/// Query-string escaping for names and tags (their alphabet only needs `/` kept).
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            let unreserved =
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/');
            if unreserved {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn catalog(reg: &Registry, req: &Head) -> Result<Response> {
    let (n, last) = pagination(req)?;
    let all = reg.storage().repositories().await?;
    let page = paginate(all, n.or(Some(MAX_PAGE)), last.as_deref());
    let mut resp = axum::Json(json!({ "repositories": page.items })).into_response();
    if let Some(after) = page.next_after {
        set(&mut resp, "link", &link_next("/v2/_catalog", n, &after));
    }
    Ok(resp)
}

async fn tags(reg: &Registry, name: &RepoName, req: &Head) -> Result<Response> {
    let (n, last) = pagination(req)?;
    let all = reg.storage().tags(name).await?;
    let page = paginate(all, n.or(Some(MAX_PAGE)), last.as_deref());
    let mut resp = axum::Json(json!({ "name": name.as_str(), "tags": page.items })).into_response();
    if let Some(after) = page.next_after {
        set(
            &mut resp,
            "link",
            &link_next(&format!("/v2/{name}/tags/list"), n, &after),
        );
    }
    Ok(resp)
}

async fn get_manifest(
    reg: &Registry,
    name: &RepoName,
    r: &Reference,
    req: &Head,
) -> Result<Response> {
    let m = reg.manifest(name, r).await?;
    if req.method == Method::GET {
        reg.events().emit(
            Action::Pull,
            Target::Manifest,
            name.as_str(),
            Some(m.digest.to_string()),
            tag_of(r),
            &req.actor,
        );
    }
    let len = m.bytes.len();
    let body = if req.method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(m.bytes)
    };
    let mut resp = (StatusCode::OK, body).into_response();
    set(&mut resp, "content-type", &m.media_type);
    set(&mut resp, "content-length", &len.to_string());
    set(&mut resp, "docker-content-digest", &m.digest.to_string());
    set(&mut resp, "etag", &format!("\"{}\"", m.digest));
    Ok(resp)
}

async fn put_manifest(
    reg: &Registry,
    name: &RepoName,
    r: &Reference,
    req: Req,
) -> Result<Response> {
    let content_type = header_str(&req.head.headers, &header::CONTENT_TYPE).map(str::to_string);
    if let Some(len) =
        header_str(&req.head.headers, &header::CONTENT_LENGTH).and_then(|v| v.parse::<usize>().ok())
        && len > MAX_MANIFEST_BYTES
    {
        return Err(Error::ManifestTooLarge {
            limit: MAX_MANIFEST_BYTES,
        }
        .into());
    }
    let mut body = Vec::new();
    let mut rd = reader(req.body).take(MAX_MANIFEST_BYTES as u64 + 1);
    rd.read_to_end(&mut body)
        .await
        .map_err(|e| ApiError::from(Error::Body(e.to_string())))?;
    if body.len() > MAX_MANIFEST_BYTES {
        return Err(Error::ManifestTooLarge {
            limit: MAX_MANIFEST_BYTES,
        }
        .into());
    }
    let put = reg
        .put_manifest(name, r, body, content_type.as_deref())
        .await?;
    reg.events().emit(
        Action::Push,
        Target::Manifest,
        name.as_str(),
        Some(put.digest.to_string()),
        tag_of(r),
        &req.head.actor,
    );
    let mut resp = (StatusCode::CREATED, [(header::CONTENT_LENGTH, "0")]).into_response();
    set(
        &mut resp,
        "location",
        &format!("/v2/{name}/manifests/{}", put.digest),
    );
    set(&mut resp, "docker-content-digest", &put.digest.to_string());
    if let Some(s) = put.subject {
        set(&mut resp, "oci-subject", &s.to_string());
    }
    Ok(resp)
}

/// A parsed `Range: bytes=...` against a size: `Ok(None)` means serve everything.
fn byte_range(h: Option<&str>, size: u64) -> std::result::Result<Option<(u64, u64)>, ()> {
    let Some(spec) = h.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = match (a.is_empty(), b.is_empty()) {
        (false, _) => {
            let start: u64 = a.parse().map_err(|_| ())?;
            let end = if b.is_empty() {
                size.saturating_sub(1)
            } else {
                b.parse::<u64>()
                    .map_err(|_| ())?
                    .min(size.saturating_sub(1))
            };
            (start, end)
        }
        (true, false) => {
            let n: u64 = b.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            (size.saturating_sub(n), size.saturating_sub(1))
        }
        (true, true) => return Err(()),
    };
    if start >= size || end < start {
        return Err(());
    }
    Ok(Some((start, end)))
}

async fn get_blob(reg: &Registry, name: &RepoName, d: &Digest, req: &Head) -> Result<Response> {
    let mut blob = reg.storage().open_blob(name, d).await?;
    let size = blob.size;
    let range = byte_range(header_str(&req.headers, &header::RANGE), size).map_err(|()| {
        ApiError::new(
            Code::RangeInvalid,
            format!("requested range is not within the blob's {size} bytes"),
        )
        .with_header(header::CONTENT_RANGE, format!("bytes */{size}"))
    })?;
    let (status, start, len) = match range {
        Some((s, e)) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        None => (StatusCode::OK, 0, size),
    };
    let body = if req.method == Method::HEAD {
        Body::empty()
    } else {
        if start == 0 {
            reg.events().emit(
                Action::Pull,
                Target::Blob,
                name.as_str(),
                Some(d.to_string()),
                None,
                &req.actor,
            );
        }
        if start > 0 {
            blob.file
                .seek(SeekFrom::Start(start))
                .await
                .map_err(|e| ApiError::from(Error::Body(e.to_string())))?;
        }
        Body::from_stream(ReaderStream::with_capacity(
            blob.file.take(len),
            1024 * 1024,
        ))
    };
    let mut resp = (status, body).into_response();
    set(&mut resp, "content-type", "application/octet-stream");
    set(&mut resp, "content-length", &len.to_string());
    set(&mut resp, "docker-content-digest", &d.to_string());
    set(&mut resp, "accept-ranges", "bytes");
    set(&mut resp, "etag", &format!("\"{d}\""));
    if status == StatusCode::PARTIAL_CONTENT {
        set(
            &mut resp,
            "content-range",
            &format!("bytes {start}-{}/{size}", start + len - 1),
        );
    }
    Ok(resp)
}

fn upload_response(status: StatusCode, name: &RepoName, id: &str, size: u64) -> Response {
    let mut resp = (status, [(header::CONTENT_LENGTH, "0")]).into_response();
    set(
        &mut resp,
        "location",
        &format!("/v2/{name}/blobs/uploads/{id}"),
    );
    set(&mut resp, "range", &format!("0-{}", size.saturating_sub(1)));
    set(&mut resp, "docker-upload-uuid", id);
    resp
}

fn blob_created(reg: &Registry, name: &RepoName, d: &Digest, actor: &str) -> Response {
    reg.events().emit(
        Action::Push,
        Target::Blob,
        name.as_str(),
        Some(d.to_string()),
        None,
        actor,
    );
    let mut resp = (StatusCode::CREATED, [(header::CONTENT_LENGTH, "0")]).into_response();
    set(&mut resp, "location", &format!("/v2/{name}/blobs/{d}"));
    set(&mut resp, "docker-content-digest", &d.to_string());
    resp
}

fn digest_param(req: &Head, key: &str) -> Result<Option<Digest>> {
    match req.query.get(key) {
        None => Ok(None),
        Some(v) => Ok(Some(v.parse::<Digest>()?)),
    }
}

async fn start_upload(reg: &Registry, name: &RepoName, req: Req) -> Result<Response> {
    if let Some(d) = digest_param(&req.head, "mount")? {
        let from = req
            .head
            .query
            .get("from")
            .map(|f| f.parse::<RepoName>())
            .transpose()?;
        if let Some(from) = from
            && reg.storage().mount(name, &from, &d).await?
        {
            tracing::debug!(repo = %name, from = %from, digest = %d, "mounted blob");
            return Ok(blob_created(reg, name, &d, &req.head.actor));
        }
        // Cannot mount: fall back to a normal upload session, as the spec asks.
    }
    let st = reg.storage().start_upload(name).await?;
    if let Some(d) = digest_param(&req.head, "digest")? {
        // Monolithic upload: the whole blob is in this request.
        let result = async {
            reg.storage()
                .append(name, &st.id, Some(0), &mut reader(req.body))
                .await?;
            reg.storage().finish_upload(name, &st.id, &d).await
        }
        .await;
        if let Err(e) = result {
            let _ = reg.storage().cancel_upload(name, &st.id).await;
            return Err(e.into());
        }
        return Ok(blob_created(reg, name, &d, &req.head.actor));
    }
    Ok(upload_response(StatusCode::ACCEPTED, name, &st.id, 0))
}

/// `Content-Range: <start>-<end>` (distribution's form; `bytes ` prefix tolerated).
fn content_range(h: &HeaderMap) -> Result<Option<(u64, u64)>> {
    let Some(v) = header_str(h, &header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let v = v
        .trim()
        .trim_start_matches("bytes")
        .trim()
        .trim_end_matches("/*");
    let bad = || {
        ApiError::new(
            Code::RangeInvalid,
            format!("malformed Content-Range {v:?}: expected START-END"),
        )
    };
    let (a, b) = v.split_once('-').ok_or_else(bad)?;
    let a: u64 = a.trim().parse().map_err(|_| bad())?;
    let b: u64 = b.trim().parse().map_err(|_| bad())?;
    if b < a {
        return Err(bad());
    }
    Ok(Some((a, b)))
}

async fn patch_upload(reg: &Registry, name: &RepoName, id: &str, req: Req) -> Result<Response> {
    let range = content_range(&req.head.headers)?;
    let st = reg
        .storage()
        .append(name, id, range.map(|r| r.0), &mut reader(req.body))
        .await?;
    if let Some((a, b)) = range
        && st.size != b + 1
    {
        tracing::warn!(upload = %st.id, start = a, end = b, size = st.size, "chunk length differs from its Content-Range");
    }
    Ok(upload_response(StatusCode::ACCEPTED, name, &st.id, st.size))
}

async fn put_upload(reg: &Registry, name: &RepoName, id: &str, req: Req) -> Result<Response> {
    let d = digest_param(&req.head, "digest")?.ok_or(Error::DigestMissing)?;
    let range = content_range(&req.head.headers)?;
    let has_body = header_str(&req.head.headers, &header::CONTENT_LENGTH).is_none_or(|l| l != "0");
    if has_body || range.is_some() {
        reg.storage()
            .append(name, id, range.map(|r| r.0), &mut reader(req.body))
            .await?;
    }
    reg.storage().finish_upload(name, id, &d).await?;
    Ok(blob_created(reg, name, &d, &req.head.actor))
}

async fn referrers(reg: &Registry, name: &RepoName, d: &Digest, req: &Head) -> Result<Response> {
    let filter = req.query.get("artifactType").map(String::as_str);
    let (index, filtered) = reg.referrers(name, d, filter).await?;
    let mut resp = (StatusCode::OK, index.to_string()).into_response();
    set(&mut resp, "content-type", manifest::OCI_INDEX);
    if filtered {
        set(&mut resp, "oci-filters-applied", "artifactType");
    }
    Ok(resp)
}

#[cfg(test)]
mod tests;
