//! The distribution API edge: Docker Registry HTTP API v2 / OCI distribution-spec v1.1
//! over axum. One wildcard route feeds [`route::parse`]; handlers decode the request, call
//! the [`Registry`] door with the caller's [`Identity`] (put on every request by
//! `net::serve`) and set the headers clients expect; errors leave through the table in
//! [`errcode`]. This edge never touches storage.

pub mod errcode;
pub(crate) mod handlers;
pub mod route;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::any;

use self::errcode::{ApiError, Code};
use self::route::RouteError;
use crate::identity::Identity;
use crate::net::Refusal;
use crate::registry::Registry;

/// What the handlers share.
struct App {
    registry: Registry,
    /// A request body that makes no progress for this long ends the request.
    body_stall: Duration,
}

/// The registry's HTTP application; `body_stall` is `net.body_stall_timeout`.
pub fn router(registry: Registry, body_stall: Duration) -> Router {
    let state = Arc::new(App {
        registry,
        body_stall,
    });
    Router::new()
        .route("/v2", any(base))
        .route("/v2/", any(base))
        .route("/v2/{*rest}", any(dispatch))
        .fallback(not_found)
        .layer(middleware::from_fn(common_headers))
        .with_state(state)
}

/// The answer to a request `net::serve` refused (revoked or expired certificate on an
/// open connection): 403 DENIED with the reason.
pub fn refuse(r: &Refusal) -> Response {
    let code = match r {
        Refusal::Revoked { .. } | Refusal::Expired { .. } => Code::Denied,
        Refusal::TrustLapsed { .. } => Code::Unavailable,
    };
    let mut resp = ApiError::new(code, r.to_string()).into_response();
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    resp
}

/// The route label of a registry request for metrics, from a fixed set (never the
/// repository: clients choose those).
pub fn route_name(path: &str) -> &'static str {
    let Some(rest) = path
        .strip_prefix("/v2/")
        .or_else(|| (path == "/v2").then_some(""))
    else {
        return "other";
    };
    match route::parse(rest) {
        Ok(route::Route::Base) => "base",
        Ok(route::Route::Catalog) => "catalog",
        Ok(route::Route::Tags(_)) => "tags",
        Ok(route::Route::Manifest(..)) => "manifest",
        Ok(route::Route::Blob(..)) => "blob",
        Ok(route::Route::UploadStart(_) | route::Route::Upload(..)) => "upload",
        Ok(route::Route::Referrers(..)) => "referrers",
        Err(_) => "invalid",
    }
}

/// What a plain-HTTP client on the registry's TLS port is told (see `net::serve`).
pub fn plain_http_hint(addr: Option<std::net::SocketAddr>) -> String {
    let port = addr.map_or_else(|| "its port".to_string(), |a| a.port().to_string());
    format!(
        "This is an HTTPS registry (berth, port {port}) that requires a client certificate from its berth CA; this request came in plain HTTP. docker speaks plain HTTP to registries on loopback addresses (127.0.0.0/8, ::1) and never sends them a certificate: serve the registry under a real name on a non-loopback address (registry.names and registry.listen) and use NAME:{port}, with the files from `berth certs install NAME:{port}`."
    )
}

async fn base(State(app): State<Arc<App>>, method: Method, req: Request) -> Response {
    run(&app, Ok(route::Route::Base), method, Vec::new(), req).await
}

async fn dispatch(
    State(app): State<Arc<App>>,
    Path(rest): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
    method: Method,
    req: Request,
) -> Response {
    run(&app, route::parse(&rest), method, pairs, req).await
}

async fn run(
    app: &App,
    route: Result<route::Route, RouteError>,
    method: Method,
    pairs: Vec<(String, String)>,
    req: Request,
) -> Response {
    // Every parameter but `tag` is named once; `tag` may repeat (a manifest PUT by digest
    // with several tags).
    let tags = pairs
        .iter()
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| v.clone())
        .collect();
    let query: HashMap<String, String> = pairs.into_iter().collect();
    let route = match route {
        Ok(r) => r,
        Err(RouteError::Invalid(e)) => return ApiError::from(e).into_response(),
        // distribution-spec v1.1: a manifest that cannot be found is 404 MANIFEST_UNKNOWN,
        // and one named by a malformed reference cannot be found. A PUT is refused as
        // malformed (400 TAG_INVALID).
        Err(RouteError::ManifestReference(e)) if method != Method::PUT => {
            return ApiError::new(Code::ManifestUnknown, format!("manifest unknown: {e}"))
                .into_response();
        }
        Err(RouteError::ManifestReference(e)) => return ApiError::from(e).into_response(),
        Err(RouteError::NotFound) => return not_found().await,
    };
    let (parts, body) = req.into_parts();
    // net::serve puts the verified identity on every request; a request without one did
    // not come through the network edge and gets nothing.
    let Some(who) = parts.extensions.get::<Identity>().cloned() else {
        return ApiError::new(
            Code::Unauthorized,
            "no client identity on this request: a client certificate from the berth CA is required",
        )
        .into_response();
    };
    let r = handlers::Req {
        head: handlers::Head {
            method,
            query,
            tags,
            headers: parts.headers,
            who,
        },
        body: Body::new(body),
    };
    match handlers::handle(&app.registry, app.body_stall, route, r).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn not_found() -> Response {
    ApiError::new(
        Code::Unsupported,
        "no such endpoint in the distribution API",
    )
    .with_status(axum::http::StatusCode::NOT_FOUND)
    .into_response()
}

/// Adds `Docker-Distribution-API-Version` to every answer and logs each request, in one
/// span with the caller, so every line of a request can be found.
async fn common_headers(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let who = req
        .extensions()
        .get::<Identity>()
        .map(ToString::to_string)
        .unwrap_or_default();
    let started = std::time::Instant::now();
    let span = tracing::info_span!("request", %method, %path, client = %who);
    let mut resp = tracing::Instrument::instrument(next.run(req), span).await;
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    let status = resp.status().as_u16();
    let micros = started.elapsed().as_micros() as u64;
    if status >= 500 {
        tracing::error!(%method, %path, status, client = %who, micros, "registry request failed");
    } else {
        tracing::info!(%method, %path, status, client = %who, micros, "registry request");
    }
    resp
}
