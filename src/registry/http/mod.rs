//! The Docker Registry HTTP API v2 / OCI distribution-spec v1.1 over axum. One wildcard
//! route feeds [`route::parse`]; handlers call the registry core; errors leave through the
//! table in [`errcode`]. [`tls`] serves it over rustls with client certificates required.

pub mod errcode;
mod handlers;
pub mod route;
pub mod tls;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::any;

use self::errcode::{ApiError, Code};
use self::route::RouteError;
use super::Registry;

/// Who is calling, from the client certificate the TLS handshake verified. Attached to
/// every request and logged with it, ready for per-repository policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// Subject CN.
    pub common_name: String,
    /// SANs (DNS, IP, URI, email), typed like `DNS:x`.
    pub sans: Vec<String>,
    /// Certificate serial, lowercase hex.
    pub serial: String,
}

/// The registry's HTTP application.
pub fn router(registry: Registry) -> Router {
    let state = Arc::new(registry);
    Router::new()
        .route("/v2", any(base))
        .route("/v2/", any(base))
        .route("/v2/{*rest}", any(dispatch))
        .fallback(not_found)
        .layer(middleware::from_fn(common_headers))
        .with_state(state)
}

async fn base(State(reg): State<Arc<Registry>>, method: Method, req: Request) -> Response {
    run(&reg, Ok(route::Route::Base), method, HashMap::new(), req).await
}

async fn dispatch(
    State(reg): State<Arc<Registry>>,
    Path(rest): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    req: Request,
) -> Response {
    run(&reg, route::parse(&rest), method, query, req).await
}

async fn run(
    reg: &Registry,
    route: Result<route::Route, RouteError>,
    method: Method,
    query: HashMap<String, String>,
    req: Request,
) -> Response {
    let route = match route {
        Ok(r) => r,
        Err(RouteError::Invalid(e)) => return ApiError::from(e).into_response(),
        Err(RouteError::NotFound) => return not_found().await,
    };
    let (parts, body) = req.into_parts();
    let actor = parts
        .extensions
        .get::<ClientIdentity>()
        .map(|i| i.common_name.clone())
        .unwrap_or_default();
    let r = handlers::Req {
        head: handlers::Head {
            method,
            query,
            headers: parts.headers,
            actor,
        },
        body: Body::new(body),
    };
    match handlers::handle(reg, route, r).await {
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

/// Adds `Docker-Distribution-API-Version` to every answer and logs each request with the
/// caller's identity.
async fn common_headers(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let who = req
        .extensions()
        .get::<ClientIdentity>()
        .map(|i| i.common_name.clone())
        .unwrap_or_default();
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    let status = resp.status().as_u16();
    if status >= 500 {
        tracing::error!(%method, %path, status, client = %who, "registry request failed");
    } else {
        tracing::info!(%method, %path, status, client = %who, "registry request");
    }
    resp
}
