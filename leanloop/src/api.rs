//! The read API, authorised by a project's secret read key as a Bearer token.

use crate::app::Shared;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::routing::get;
use axum::{Json, Router};
use leanloop_analytics::{Analytics, AnalyticsError, EventQuery};
use leanloop_control::KeyKind;
use leanloop_core::{ApiError, ErrorClass};
use serde_json::{json, Value};

pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/api/v1/projects/{id}/events", get(list_events))
        .route("/api/v1/projects/{id}/events/count", get(count_events))
        .with_state(shared)
}

/// Checks the Bearer read key belongs to project `id`.
fn authorise(shared: &Shared, headers: &HeaderMap, id: &str) -> Result<i64, ApiError> {
    let unauthorized = |message: &str| ApiError::from_class(ErrorClass::Unauthorized, message.to_owned());
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or_else(|| unauthorized("send the project's read key as `Authorization: Bearer <key>`"))?;
    let id: i64 = id.parse().map_err(|_| ApiError::bad_request("id", "project id must be a number"))?;
    match shared.keys.lookup(key)? {
        Some((project, KeyKind::Read)) if project.id == id => Ok(id),
        Some((_, KeyKind::Read)) => {
            Err(ApiError::from_class(ErrorClass::Forbidden, format!("this read key is not for project {id}")))
        }
        Some((_, KeyKind::Write)) => Err(unauthorized("this is a write key; the query API needs the read key")),
        None => Err(unauthorized("unknown read key")),
    }
}

/// Rejections of the query string name the parameter at fault.
fn query(q: Result<Query<EventQuery>, QueryRejection>) -> Result<EventQuery, ApiError> {
    q.map(|Query(q)| q).map_err(|e| {
        let text = e.body_text();
        let field = text.split('`').nth(1).unwrap_or("query").to_owned();
        ApiError::from_class(ErrorClass::BadRequest { field: Some(field) }, text)
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AnalyticsError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::from_class(ErrorClass::Internal, format!("query task failed: {e}")))?
        .map_err(ApiError::from)
}

/// Authorises, validates the query, and answers it off the runtime.
async fn answer<T: serde::Serialize + Send + 'static>(
    shared: Shared,
    id: String,
    headers: HeaderMap,
    q: Result<Query<EventQuery>, QueryRejection>,
    ask: impl FnOnce(&Analytics, i64, &EventQuery) -> Result<T, AnalyticsError> + Send + 'static,
) -> Result<T, ApiError> {
    let project = authorise(&shared, &headers, &id)?;
    let q = query(q)?;
    blocking(move || ask(&shared.analytics, project, &q)).await
}

async fn count_events(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Result<Query<EventQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let count = answer(shared, id, headers, q, |a, project, q| a.count(project, q)).await?;
    Ok(Json(json!({ "count": count })))
}

async fn list_events(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Result<Query<EventQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let events = answer(shared, id, headers, q, |a, project, q| a.recent(project, q)).await?;
    Ok(Json(json!({ "events": events })))
}
