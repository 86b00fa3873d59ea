//! Operations endpoints: `/healthz` (the process answers), `/readyz` (it can
//! take events now) and `/metrics` (Prometheus text).

use crate::app::Shared;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

/// Above this share of the log (or queue) in use, the instance reports not
/// ready so a load balancer sends traffic elsewhere before clients see 503s.
const READY_QUEUE_SHARE: f64 = 0.9;

pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

async fn readyz(State(shared): State<Shared>) -> impl IntoResponse {
    let backlog = shared.collector.queue().backlog();
    let ready = (backlog.used as f64) < READY_QUEUE_SHARE * backlog.capacity as f64;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "ready": ready,
        "backlog": backlog.used,
        "backlog_capacity": backlog.capacity,
        "backlog_unit": backlog.unit,
    });
    (status, Json(body))
}

async fn metrics(State(shared): State<Shared>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], shared.metrics.render())
}
