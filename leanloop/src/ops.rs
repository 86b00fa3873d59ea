//! Operations endpoints: `/healthz` (the process answers), `/readyz` (it can
//! take events now, and is not stopping) and `/metrics` (Prometheus text).

use crate::app::Shared;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use leanloop_collector::UNAVAILABLE_RETRY_AFTER_SECS;
use serde_json::json;
use std::time::Duration;

/// Above this share of the log (or queue) in use, the instance reports not
/// ready so a load balancer sends traffic elsewhere before clients see 503s.
const READY_QUEUE_SHARE: f64 = 0.9;

/// How long after a failed append (a full disk, say) the instance reports
/// not ready, unless an append succeeds first: as long as the 503's
/// Retry-After, after which traffic may come back to try the disk again.
const READY_AFTER_WRITE_ERROR: Duration = Duration::from_secs(UNAVAILABLE_RETRY_AFTER_SECS as u64);

pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

async fn readyz(State(shared): State<Shared>) -> impl IntoResponse {
    let queue = shared.collector.queue();
    let backlog = queue.backlog();
    let refusing = queue.refusing(READY_AFTER_WRITE_ERROR);
    let leaving = shared.leaving.is_cancelled();
    let ready = (backlog.used as f64) < READY_QUEUE_SHARE * backlog.capacity as f64 && refusing.is_none() && !leaving;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut body = json!({
        "ready": ready,
        "backlog": backlog.used,
        "backlog_capacity": backlog.capacity,
        "backlog_unit": backlog.unit,
    });
    match refusing {
        _ if leaving => body["error"] = json!("the server is stopping"),
        Some(reason) => body["error"] = json!(reason),
        None if !ready => {
            body["error"] = json!(format!(
                "{} of {} {} not yet stored: the event store takes events slower than they arrive, or is down",
                backlog.used, backlog.capacity, backlog.unit
            ))
        }
        None => {}
    }
    (status, Json(body))
}

async fn metrics(State(shared): State<Shared>) -> impl IntoResponse {
    // The backlog as of this scrape: delivery sets the gauge when it
    // delivers, which stops while the store is down, when it matters most.
    let backlog = shared.collector.queue().backlog();
    let gauge = if backlog.unit == "bytes" { "leanloop_log_backlog_bytes" } else { "leanloop_ingest_queue_depth" };
    metrics::gauge!(gauge).set(backlog.used as f64);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], shared.metrics.render())
}
