//! One handler per endpoint of the distribution API. Each decodes the request, calls the
//! registry's door with the caller's identity, and sets the headers the spec and docker expect (`Location`,
//! `Docker-Content-Digest`, `Range`, `Docker-Upload-UUID`, `OCI-Subject`, `Link`).

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio_util::io::StreamReader;

use super::errcode::{ApiError, Code};
use super::route::Route;
use crate::identity::Identity;
use crate::registry::reference::{Digest, Reference, RepoName, Tag};
use crate::registry::{
    BlobCommit, ByteRange, Error, MAX_MANIFEST_BYTES, Registry, manifest, paginate,
};

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
    /// Every `tag` parameter, in order (the query map keeps only one).
    pub tags: Vec<String>,
    pub headers: HeaderMap,
    /// Who is asking, as `net::serve` verified it.
    pub who: Identity,
}

/// Routes a parsed path and method to its handler.
pub(super) async fn handle(
    reg: &Registry,
    stall: Duration,
    route: Route,
    req: Req,
) -> Result<Response> {
    let m = req.head.method.clone();
    let who = &req.head.who;
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
        (Route::Manifest(name, r), Method::PUT) => put_manifest(reg, stall, &name, &r, req).await,
        (Route::Manifest(name, r), Method::DELETE) => {
            reg.delete_manifest(who, &name, &r).await?;
            Ok(accepted())
        }
        (Route::Blob(name, d), Method::GET | Method::HEAD) => {
            get_blob(reg, &name, &d, &req.head).await
        }
        (Route::Blob(name, d), Method::DELETE) => {
            reg.delete_blob(who, &name, &d).await?;
            Ok(accepted())
        }
        (Route::UploadStart(name), Method::POST) => start_upload(reg, stall, &name, req).await,
        (Route::Upload(name, id), Method::GET) => {
            let st = reg.upload_status(who, &name, &id).await?;
            Ok(upload_response(
                StatusCode::NO_CONTENT,
                &name,
                &st.id,
                st.size,
            ))
        }
        (Route::Upload(name, id), Method::PATCH) => patch_upload(reg, stall, &name, &id, req).await,
        (Route::Upload(name, id), Method::PUT) => put_upload(reg, stall, &name, &id, req).await,
        (Route::Upload(name, id), Method::DELETE) => {
            reg.cancel_upload(who, &name, &id).await?;
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

/// A body as a reader, so storage streams it to disk without holding it in memory. A body
/// that makes no progress for `stall` fails with `TimedOut`: the request ends, the upload
/// keeps what arrived and its lock is released, so the client can resume.
fn reader(body: Body, stall: Duration) -> impl AsyncRead + Unpin + Send {
    Stalling {
        inner: StreamReader::new(body.into_data_stream().map_err(std::io::Error::other)),
        stall,
        deadline: Box::pin(tokio::time::sleep(stall)),
    }
}

struct Stalling<R> {
    inner: R,
    stall: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Stalling<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                let next = tokio::time::Instant::now() + self.stall;
                self.deadline.as_mut().reset(next);
                Poll::Ready(r)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "the request body made no progress for {}; resume the upload from the reported size",
                        humantime::format_duration(self.stall)
                    ),
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
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
    let all = reg.catalog(&req.who).await?;
    let page = paginate(all, n.or(Some(MAX_PAGE)), last.as_deref());
    let mut resp = axum::Json(json!({ "repositories": page.items })).into_response();
    if let Some(after) = page.next_after {
        set(&mut resp, "link", &link_next("/v2/_catalog", n, &after));
    }
    Ok(resp)
}

async fn tags(reg: &Registry, name: &RepoName, req: &Head) -> Result<Response> {
    let (n, last) = pagination(req)?;
    let all = reg.tags(&req.who, name).await?;
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
    let m = if req.method == Method::HEAD {
        reg.head_manifest(&req.who, name, r).await?
    } else {
        reg.get_manifest(&req.who, name, r).await?
    };
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
    stall: Duration,
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
    let mut rd = reader(req.body, stall).take(MAX_MANIFEST_BYTES as u64 + 1);
    rd.read_to_end(&mut body)
        .await
        .map_err(|e| ApiError::from(Error::Body(e.to_string())))?;
    if body.len() > MAX_MANIFEST_BYTES {
        return Err(Error::ManifestTooLarge {
            limit: MAX_MANIFEST_BYTES,
        }
        .into());
    }
    // distribution-spec: tags pushed with a manifest PUT by digest. A malformed one refuses
    // the whole PUT (400 TAG_INVALID) before anything is stored.
    let also = req
        .head
        .tags
        .iter()
        .map(|t| t.parse::<Tag>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(ApiError::from)?;
    let put = reg
        .put_manifest(&req.head.who, name, r, body, content_type.as_deref(), &also)
        .await?;
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
    for t in &put.tagged {
        if let Ok(v) = HeaderValue::from_str(t.as_str()) {
            resp.headers_mut().append("oci-tag", v);
        }
    }
    Ok(resp)
}

/// A `Range: bytes=...` header: `Ok(None)` means serve everything (no header, or a
/// multi-range, which registries answer whole).
pub(crate) fn byte_range(h: Option<&str>) -> std::result::Result<Option<ByteRange>, ()> {
    let Some(spec) = h.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| s.parse::<u64>().map_err(|_| ());
    match (a.is_empty(), b.is_empty()) {
        (false, true) => Ok(Some(ByteRange::From(num(a)?))),
        (false, false) => Ok(Some(ByteRange::FromTo(num(a)?, num(b)?))),
        (true, false) => Ok(Some(ByteRange::Suffix(num(b)?))),
        (true, true) => Err(()),
    }
}

fn range_error(size: Option<u64>) -> ApiError {
    let e = ApiError::new(
        Code::RangeInvalid,
        match size {
            Some(size) => format!("requested range is not within the blob's {size} bytes"),
            None => "malformed Range header: expected bytes=START-END".to_string(),
        },
    );
    match size {
        Some(size) => e.with_header(header::CONTENT_RANGE, format!("bytes */{size}")),
        None => e,
    }
}

async fn get_blob(reg: &Registry, name: &RepoName, d: &Digest, req: &Head) -> Result<Response> {
    let mut resp = if req.method == Method::HEAD {
        let size = reg.stat_blob(&req.who, name, d).await?;
        let mut resp = (StatusCode::OK, Body::empty()).into_response();
        set(&mut resp, "content-length", &size.to_string());
        resp
    } else {
        let range =
            byte_range(header_str(&req.headers, &header::RANGE)).map_err(|()| range_error(None))?;
        let blob = match reg.get_blob(&req.who, name, d, range).await {
            Err(Error::RangeNotSatisfiable { size }) => return Err(range_error(Some(size))),
            r => r?,
        };
        let partial = range.is_some();
        let (start, len, size) = (blob.start, blob.len, blob.size);
        let stream = tokio_stream::wrappers::ReceiverStream::new(blob.chunks);
        let status = if partial {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        };
        let mut resp = (status, Body::from_stream(stream)).into_response();
        set(&mut resp, "content-length", &len.to_string());
        if partial {
            set(
                &mut resp,
                "content-range",
                &format!("bytes {start}-{}/{size}", start + len - 1),
            );
        }
        resp
    };
    set(&mut resp, "content-type", "application/octet-stream");
    set(&mut resp, "docker-content-digest", &d.to_string());
    set(&mut resp, "accept-ranges", "bytes");
    set(&mut resp, "etag", &format!("\"{d}\""));
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

fn blob_created(name: &RepoName, d: &Digest) -> Response {
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

async fn start_upload(
    reg: &Registry,
    stall: Duration,
    name: &RepoName,
    req: Req,
) -> Result<Response> {
    let who = &req.head.who;
    if let Some(d) = digest_param(&req.head, "mount")?
        && let Some(from) = req
            .head
            .query
            .get("from")
            .map(|f| f.parse::<RepoName>())
            .transpose()?
    {
        return match reg.mount_blob(who, name, &from, &d).await? {
            BlobCommit::Created(d) => Ok(blob_created(name, &d)),
            // Cannot mount: a normal upload session, as the spec asks.
            BlobCommit::Upload(st) => Ok(upload_response(StatusCode::ACCEPTED, name, &st.id, 0)),
        };
    }
    if let Some(d) = digest_param(&req.head, "digest")? {
        // Monolithic upload: the whole blob is in this request.
        reg.put_blob(who, name, &d, &mut reader(req.body, stall))
            .await?;
        return Ok(blob_created(name, &d));
    }
    let st = reg.start_upload(who, name).await?;
    Ok(upload_response(StatusCode::ACCEPTED, name, &st.id, 0))
}

/// `Content-Range: <start>-<end>` (distribution's form; `bytes ` prefix tolerated).
pub(crate) fn content_range(h: &HeaderMap) -> Result<Option<(u64, u64)>> {
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

async fn patch_upload(
    reg: &Registry,
    stall: Duration,
    name: &RepoName,
    id: &str,
    req: Req,
) -> Result<Response> {
    let range = content_range(&req.head.headers)?;
    let len = range.map(|(a, b)| b - a + 1);
    // A declared length that disagrees is refused before the body is read.
    if let (Some(want), Some(cl)) = (len, header_str(&req.head.headers, &header::CONTENT_LENGTH))
        && cl.trim().parse::<u64>().is_ok_and(|cl| cl != want)
    {
        let st = reg.upload_status(&req.head.who, name, id).await?;
        return Err(ApiError::new(
            Code::RangeInvalid,
            format!("Content-Length {cl} differs from the Content-Range's {want} bytes; the chunk was not kept"),
        )
        .with_header(header::RANGE, format!("0-{}", st.size.max(1) - 1)));
    }
    let st = reg
        .append_upload(
            &req.head.who,
            name,
            id,
            range.map(|r| r.0),
            len,
            &mut reader(req.body, stall),
        )
        .await?;
    Ok(upload_response(StatusCode::ACCEPTED, name, &st.id, st.size))
}

async fn put_upload(
    reg: &Registry,
    stall: Duration,
    name: &RepoName,
    id: &str,
    req: Req,
) -> Result<Response> {
    let d = digest_param(&req.head, "digest")?.ok_or(Error::DigestMissing)?;
    let range = content_range(&req.head.headers)?;
    let has_body = header_str(&req.head.headers, &header::CONTENT_LENGTH).is_none_or(|l| l != "0");
    let mut body = reader(req.body, stall);
    let last = (has_body || range.is_some()).then(|| {
        (
            range.map(|r| r.0),
            &mut body as &mut (dyn AsyncRead + Unpin + Send),
        )
    });
    reg.finish_upload(&req.head.who, name, id, &d, last).await?;
    Ok(blob_created(name, &d))
}

async fn referrers(reg: &Registry, name: &RepoName, d: &Digest, req: &Head) -> Result<Response> {
    let filter = req.query.get("artifactType").map(String::as_str);
    let (index, filtered) = reg.referrers(&req.who, name, d, filter).await?;
    let mut resp = (StatusCode::OK, index.to_string()).into_response();
    set(&mut resp, "content-type", manifest::OCI_INDEX);
    if filtered {
        set(&mut resp, "oci-filters-applied", "artifactType");
    }
    Ok(resp)
}

#[cfg(test)]
mod tests;
