//! The OCI distribution error table: one code, one HTTP status, one JSON envelope
//! `{"errors":[{"code","message","detail"}]}`. Domain errors are translated here with an
//! exhaustive match, so a new error cannot reach a client without a decision.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::registry::{Error, reference};

/// The spec's error codes (and distribution's statuses for them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Blob unknown to registry.
    BlobUnknown,
    /// Blob upload invalid.
    BlobUploadInvalid,
    /// Blob upload unknown to registry.
    BlobUploadUnknown,
    /// Provided digest did not match uploaded content.
    DigestInvalid,
    /// Manifest references a blob unknown to the registry.
    ManifestBlobUnknown,
    /// Manifest invalid.
    ManifestInvalid,
    /// Manifest unknown.
    ManifestUnknown,
    /// Invalid repository name.
    NameInvalid,
    /// Repository name not known to registry.
    NameUnknown,
    /// Provided length did not match content length.
    SizeInvalid,
    /// Invalid content range.
    RangeInvalid,
    /// Manifest tag did not match URI / invalid tag.
    TagInvalid,
    /// Authentication required.
    Unauthorized,
    /// Requested access to the resource is denied.
    Denied,
    /// The operation is unsupported.
    Unsupported,
    /// Invalid number of results requested.
    PaginationNumberInvalid,
    /// Too many requests.
    TooManyRequests,
    /// The registry cannot serve now (a replica whose trust material lapsed); distribution's
    /// `UNAVAILABLE`, so clients and load balancers try another replica.
    Unavailable,
    /// Unknown error.
    Unknown,
}

impl Code {
    /// The code string on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BlobUnknown => "BLOB_UNKNOWN",
            Code::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            Code::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Code::DigestInvalid => "DIGEST_INVALID",
            Code::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            Code::ManifestInvalid => "MANIFEST_INVALID",
            Code::ManifestUnknown => "MANIFEST_UNKNOWN",
            Code::NameInvalid => "NAME_INVALID",
            Code::NameUnknown => "NAME_UNKNOWN",
            Code::SizeInvalid => "SIZE_INVALID",
            Code::RangeInvalid => "RANGE_INVALID",
            Code::TagInvalid => "TAG_INVALID",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::Denied => "DENIED",
            Code::Unsupported => "UNSUPPORTED",
            Code::PaginationNumberInvalid => "PAGINATION_NUMBER_INVALID",
            Code::TooManyRequests => "TOOMANYREQUESTS",
            Code::Unavailable => "UNAVAILABLE",
            Code::Unknown => "UNKNOWN",
        }
    }

    /// The HTTP status distribution answers with.
    pub fn status(self) -> StatusCode {
        match self {
            Code::BlobUnknown | Code::BlobUploadUnknown | Code::BlobUploadInvalid => {
                StatusCode::NOT_FOUND
            }
            Code::ManifestUnknown | Code::NameUnknown => StatusCode::NOT_FOUND,
            Code::DigestInvalid
            | Code::ManifestBlobUnknown
            | Code::ManifestInvalid
            | Code::NameInvalid
            | Code::SizeInvalid
            | Code::TagInvalid
            | Code::PaginationNumberInvalid => StatusCode::BAD_REQUEST,
            Code::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Denied => StatusCode::FORBIDDEN,
            Code::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            Code::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error response: a code, a message, optional detail, and an optional status that
/// overrides the code's usual one (413 for an oversized manifest, 404 for no route).
#[derive(Debug)]
pub struct ApiError {
    /// The code.
    pub code: Code,
    /// Human message.
    pub message: String,
    /// Structured detail.
    pub detail: Value,
    /// Status when not the code's own.
    pub status: Option<StatusCode>,
    /// Extra header (Content-Range on 416, Range on an out-of-order chunk).
    pub header: Option<Box<(header::HeaderName, HeaderValue)>>,
}

impl ApiError {
    /// An error with the code's status.
    pub fn new(code: Code, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            detail: Value::Null,
            status: None,
            header: None,
        }
    }

    /// The same error with another status.
    pub fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = Some(status);
        self
    }

    /// The same error with detail.
    pub fn with_detail(mut self, detail: Value) -> ApiError {
        self.detail = detail;
        self
    }

    /// The same error with a header.
    pub fn with_header(mut self, name: header::HeaderName, value: String) -> ApiError {
        if let Ok(v) = HeaderValue::from_str(&value) {
            self.header = Some(Box::new((name, v)));
        }
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status.unwrap_or_else(|| self.code.status());
        let mut err = json!({ "code": self.code.as_str(), "message": self.message });
        if !self.detail.is_null() {
            err["detail"] = self.detail;
        }
        let body = json!({ "errors": [err] }).to_string();
        let mut resp = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if let Some((k, v)) = self.header.map(|b| *b) {
            resp.headers_mut().insert(k, v);
        }
        resp
    }
}

impl From<reference::Error> for ApiError {
    /// A malformed tag in a URL is a malformed manifest reference: MANIFEST_INVALID.
    /// TAG_INVALID keeps its table meaning, a schema 1 manifest whose tag differs from the
    /// URL, which berth never accepts in the first place.
    fn from(e: reference::Error) -> ApiError {
        let code = match &e {
            reference::Error::Name(_) => Code::NameInvalid,
            reference::Error::Tag(_) => Code::ManifestInvalid,
            reference::Error::Digest(_) => Code::DigestInvalid,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let msg = e.to_string();
        match e {
            Error::Reference(r) => r.into(),
            Error::NameUnknown(n) => {
                ApiError::new(Code::NameUnknown, msg).with_detail(json!({ "name": n.as_str() }))
            }
            Error::ManifestUnknown { .. } => ApiError::new(Code::ManifestUnknown, msg),
            Error::BlobUnknown(d) => ApiError::new(Code::BlobUnknown, msg)
                .with_detail(json!({ "digest": d.to_string() })),
            Error::UploadUnknown(_) => ApiError::new(Code::BlobUploadUnknown, msg),
            Error::DigestMismatch { expected, .. } => ApiError::new(Code::DigestInvalid, msg)
                .with_detail(json!({ "digest": expected.to_string() })),
            Error::DigestMissing => ApiError::new(Code::DigestInvalid, msg),
            Error::RangeInvalid { size, .. } | Error::ChunkLength { size, .. } => {
                let range = if size == 0 {
                    "0-0".to_string()
                } else {
                    format!("0-{}", size - 1)
                };
                ApiError::new(Code::RangeInvalid, msg).with_header(header::RANGE, range)
            }
            Error::RangeNotSatisfiable { size } => ApiError::new(Code::RangeInvalid, msg)
                .with_header(header::CONTENT_RANGE, format!("bytes */{size}")),
            Error::SizeInvalid(_) => ApiError::new(Code::SizeInvalid, msg),
            Error::ManifestInvalid(_) => ApiError::new(Code::ManifestInvalid, msg),
            Error::ManifestBlobUnknown(d) => ApiError::new(Code::ManifestBlobUnknown, msg)
                .with_detail(json!({ "digest": d.to_string() })),
            Error::ManifestTooLarge { .. } => {
                ApiError::new(Code::SizeInvalid, msg).with_status(StatusCode::PAYLOAD_TOO_LARGE)
            }
            Error::PaginationInvalid(_) => ApiError::new(Code::PaginationNumberInvalid, msg),
            Error::DeleteDisabled => ApiError::new(Code::Unsupported, msg),
            // GC is never asked for over HTTP.
            Error::GraceTooShort { .. } => ApiError::new(Code::Unsupported, msg),
            Error::Denied { .. } => ApiError::new(Code::Denied, msg),
            Error::Body(_) => {
                ApiError::new(Code::BlobUploadInvalid, msg).with_status(StatusCode::BAD_REQUEST)
            }
            Error::Io { .. } | Error::Fs(_) if e.is_storage_full() => ApiError::new(
                Code::Unknown,
                "the registry's storage is full: this write was not kept (pulls still work); its operator must free space, e.g. berth registry gc",
            )
            .with_status(StatusCode::INSUFFICIENT_STORAGE),
            Error::Io { .. } | Error::Fs(_) => {
                tracing::error!(error = %msg, "registry storage failure");
                ApiError::new(Code::Unknown, "storage failure; see berthd's log")
            }
        }
    }
}
