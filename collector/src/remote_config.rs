//! PostHog's remote config, `GET /array/{token}/config` (JSON) and
//! `/array/{token}/config.js` (a script that files the same JSON under the
//! token in `window._POSTHOG_REMOTE_CONFIG`). posthog-js fetches one of them
//! on start to learn what the project has switched on. Leanloop answers
//! with events sent to `/i/v0/e/` and everything else off: no flags, so
//! the SDK skips its flags call, and no recordings, surveys or heatmaps,
//! which Leanloop does not collect. The token must be a write key, as for
//! capture.

use crate::Collector;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use leanloop_core::ApiError;
use serde_json::{json, Value};
use std::sync::Arc;

/// Browsers may reuse an answer for five minutes: it changes only when
/// the key is revoked.
const CACHE: &str = "public, max-age=300";

pub fn router() -> Router<Arc<Collector>> {
    Router::new().route("/array/{token}/config", get(json_config)).route("/array/{token}/config.js", get(script_config))
}

async fn json_config(State(c): State<Arc<Collector>>, Path(token): Path<String>) -> Response {
    answer(&c, token, Packaging::Json)
}

async fn script_config(State(c): State<Arc<Collector>>, Path(token): Path<String>) -> Response {
    answer(&c, token, Packaging::Script)
}

#[derive(Clone, Copy)]
enum Packaging {
    Json,
    Script,
}

fn answer(c: &Collector, token: String, packaging: Packaging) -> Response {
    let mut response = packaged(c, token, packaging);
    // Read from any page's origin, without credentials.
    response.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

fn packaged(c: &Collector, token: String, packaging: Packaging) -> Response {
    let config = match c.project_for(&token) {
        Ok(_) => config(&token),
        Err(err) => return ApiError::from(err).into_response(),
    };
    let cache = (header::CACHE_CONTROL, HeaderValue::from_static(CACHE));
    match packaging {
        Packaging::Json => ([cache], Json(config)).into_response(),
        Packaging::Script => {
            // JSON is a JavaScript expression; the token, a known write key,
            // goes in as a JSON string too.
            let script = format!(
                "(function() {{\n  window._POSTHOG_REMOTE_CONFIG = window._POSTHOG_REMOTE_CONFIG || {{}};\n  \
                 window._POSTHOG_REMOTE_CONFIG[{}] = {{ config: {config}, siteApps: [] }};\n}})();\n",
                Value::String(token)
            );
            let javascript = (header::CONTENT_TYPE, HeaderValue::from_static("text/javascript; charset=utf-8"));
            ([cache, javascript], script).into_response()
        }
    }
}

fn config(token: &str) -> Value {
    json!({
        "token": token,
        "supportedCompression": ["gzip", "gzip-js"],
        "hasFeatureFlags": false,
        "captureDeadClicks": false,
        "capturePerformance": false,
        "autocapture_opt_out": false,
        "autocaptureExceptions": false,
        "analytics": { "endpoint": "/i/v0/e/" },
        "elementsChainAsString": true,
        "sessionRecording": false,
        "heatmaps": false,
        "surveys": false,
        "siteApps": [],
    })
}
