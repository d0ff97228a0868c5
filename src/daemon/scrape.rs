//! The `/metrics` edge: plain HTTP on its own (loopback by default) listener. The counters
//! are kept by `net::serve` and the cores as things happen; the gauges that describe
//! state (uploads in progress, certificate expiry, lost audit records) are read here, at
//! scrape time, so they are never stale.

use std::sync::Arc;

use axum::Router;
use axum::extract::State as AxumState;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::State;
use crate::identity::Identity;
use crate::metrics::CertLabels;
use crate::net::Refusal;
use crate::net::tls::{CONTROL_CN, REGISTRY_CN};
use crate::pki::{CertKind, CertStatus, ListFilter};

/// The OpenMetrics text format's content type.
pub(super) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The metrics router.
pub(super) fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .fallback(|| async { (StatusCode::NOT_FOUND, "berthd serves /metrics here\n") })
        .with_state(state)
}

/// The route label of a metrics request.
pub(super) fn route(path: &str) -> &'static str {
    if path == "/metrics" {
        "metrics"
    } else {
        "other"
    }
}

/// Never used: the metrics listener has no certificates to refuse.
pub(super) fn refuse(r: &Refusal) -> Response {
    (StatusCode::FORBIDDEN, r.to_string()).into_response()
}

async fn scrape(AxumState(state): AxumState<Arc<State>>) -> Response {
    let m = &state.metrics;
    if let Ok(u) = state.registry.uploads(&Identity::Daemon).await {
        m.uploads_in_progress
            .set(i64::try_from(u.len()).unwrap_or(i64::MAX));
    }
    m.audit_records_lost
        .set(i64::try_from(state.audit.lost()).unwrap_or(i64::MAX));
    let set = |certificate: &'static str, t: time::OffsetDateTime| {
        m.cert_expiry
            .get_or_create(&CertLabels { certificate })
            .set(t.unix_timestamp());
    };
    if let Ok(t) = state.pki.ca().not_after() {
        set("ca", t);
    }
    let valid = |kind, cn: Option<&str>| {
        state
            .pki
            .list(&ListFilter {
                kind: Some(kind),
                common_name: cn.map(str::to_string),
            })
            .into_iter()
            .filter(|r| r.status() == CertStatus::Valid)
    };
    // The newest of berthd's own: the one its listener presents.
    if let Some(r) = valid(CertKind::Server, Some(REGISTRY_CN)).max_by_key(|r| r.not_after) {
        set("registry", r.not_after);
    }
    if let Some(r) = valid(CertKind::Server, Some(CONTROL_CN)).max_by_key(|r| r.not_after) {
        set("control", r.not_after);
    }
    if let Some(r) = valid(CertKind::Client, None).min_by_key(|r| r.not_after) {
        set("soonest_client", r.not_after);
    }
    let mut resp = m.encode().into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    resp
}
