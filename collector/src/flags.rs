//! PostHog's feature-flag calls, `/flags` and the older `/decide`, answered
//! with no flags. Leanloop has no feature flags; PostHog's SDKs ask for them
//! on start or on demand, and a team that switches by changing the host name
//! should see them fall back to their defaults quietly, not log a failed
//! request on every page. The key is checked as for capture, so a wrong key
//! is still told so. Server SDKs given a personal API key poll for flag
//! definitions to evaluate locally (`GET /flags/definitions`, and the older
//! `/api/feature_flag/local_evaluation`): they are answered with none.

use crate::body::{read_limited, unpack, without_bom, Held, Packing};
use crate::routes::{compression, header_key, query_param};
use crate::wire::{parse_body, Text};
use crate::{Collector, IngestError};
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use leanloop_core::{ApiError, ErrorClass};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

#[derive(Deserialize)]
struct FlagsRequest {
    token: Option<Text>,
    api_key: Option<Text>,
}

/// The handler for every flags path.
pub async fn answer(
    State(c): State<Arc<Collector>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match no_flags(&c, query, headers, body).await {
        Ok(answer) => answer.into_response(),
        Err(err) => ApiError::from(err).into_response(),
    }
}

/// The handler for the flag-definition paths. The project's key is the
/// `token` query parameter; the Bearer token is the SDK's personal API key,
/// which Leanloop has no use for.
pub async fn definitions(State(c): State<Arc<Collector>>, RawQuery(query): RawQuery) -> Response {
    let Some(key) = query_param(query.as_deref(), "token").filter(|k| !k.is_empty()) else {
        let message = "no project key: send the project's write key as the `token` query parameter";
        return ApiError::from_class(ErrorClass::Unauthorized, message.into()).into_response();
    };
    match c.project_for(&key) {
        Ok(_) => Json(json!({ "flags": [], "group_type_mapping": {}, "cohorts": {} })).into_response(),
        Err(err) => ApiError::from(err).into_response(),
    }
}

async fn no_flags(
    c: &Collector,
    query: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>, IngestError> {
    let limit = c.config.max_event_bytes;
    let packing = Packing::detect(&headers, compression(query.as_deref()).as_deref())?;
    let held = read_limited(&headers, body, limit, &c.bodies).await?;
    let mut grown = Held::default();
    let json = unpack(held.bytes.clone(), packing.sniffed(&held.bytes), limit, &c.bodies, &mut grown)?;
    let text = std::str::from_utf8(without_bom(&json)).map_err(|_| IngestError::BadJson("body is not UTF-8".into()))?;
    let request: FlagsRequest = parse_body(text)?;
    let key = header_key(&headers)
        .or(Text::take(request.token))
        .or(Text::take(request.api_key))
        .ok_or(IngestError::MissingKey)?;
    c.project_for(&key)?;
    // Both shapes: `flags` (v2 of `/flags`) and `featureFlags` (`/decide`).
    Ok(Json(json!({
        "flags": {},
        "featureFlags": {},
        "featureFlagPayloads": {},
        "errorsWhileComputingFlags": false,
        "quotaLimited": [],
        "requestId": uuid::Uuid::now_v7(),
        "sessionRecording": false,
        "supportedCompression": ["gzip", "gzip-js"],
    })))
}
