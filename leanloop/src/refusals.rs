//! Answers the server gives on its own, before, around or instead of a
//! handler: unknown routes, wrong methods, extractor refusals and requests
//! past their deadline. Each is a JSON error like every other refusal, never
//! an empty or plain-text body.

use axum::extract::{Request, State};
use axum::http::header::{ALLOW, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use leanloop_core::{ApiError, ErrorClass};
use std::time::Duration;

/// Seconds a client is told to wait after a request ran out of time.
const RETRY_AFTER_SECS: u32 = 5;

/// Runs the request within `timeout`; past it, 503 with `Retry-After` and a
/// message saying so (a slow body or a long query both end here).
pub async fn deadline(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => closing(
            ApiError::from_class(
                ErrorClass::Unavailable { retry_after_secs: RETRY_AFTER_SECS },
                format!(
                    "the request took longer than {} s (request_timeout_secs): a body sent too slowly or a \
                 query too long; narrow the query or retry",
                    timeout.as_secs()
                ),
            )
            .into_response(),
        ),
    }
}

/// Marks `response` as the connection's last. A request refused before its
/// body was read leaves the rest of that body on the wire: the server will
/// not read it, so it closes the connection, and says so — a client that
/// took the connection back to its pool would send its next request into a
/// socket being closed and see it fail.
fn closing(mut response: Response) -> Response {
    response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

pub async fn not_found(request: Request) -> ApiError {
    ApiError::from_class(ErrorClass::NotFound, format!("no such route: {}", request.uri().path()))
}

/// Refusals made below the handlers — a route asked with a method it lacks
/// (405), a body over an extractor's limit (413), a path that is not UTF-8 —
/// come with an empty or plain-text body: they are turned into JSON errors
/// on the way out, keeping their status and `Allow`/`Retry-After`. HTML
/// (the dashboard's pages) and JSON pass untouched. A router's method
/// fallback is not used for 405s: it would also catch the CORS preflights
/// that layers answer.
///
/// A body refused as too large (413, here or in a handler) also closes the
/// connection (`closing`).
pub async fn as_json(request: Request, next: Next) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let response = jsonified(&method, &path, next.run(request).await).await;
    match response.status() {
        StatusCode::PAYLOAD_TOO_LARGE => closing(response),
        _ => response,
    }
}

async fn jsonified(method: &axum::http::Method, path: &str, response: Response) -> Response {
    let plain = match response.headers().get(CONTENT_TYPE) {
        None => true,
        Some(kind) => kind.as_bytes().starts_with(b"text/plain"),
    };
    if !plain || !(response.status().is_client_error() || response.status().is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let said = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let said = String::from_utf8_lossy(&said).trim().to_owned();
    let (code, field, default) = match parts.status {
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", None, format!("{method} is not allowed on {path}")),
        StatusCode::NOT_FOUND => ("not_found", None, format!("no such route: {path}")),
        StatusCode::PAYLOAD_TOO_LARGE => ("too_large", Some("body".to_owned()), String::new()),
        // A path segment that does not decode: axum names it in backticks.
        StatusCode::BAD_REQUEST => ("bad_request", said.split('`').nth(1).map(str::to_owned), String::new()),
        StatusCode::INTERNAL_SERVER_ERROR => ("internal", None, String::new()),
        status if status.is_server_error() => ("unavailable", None, String::new()),
        _ => ("refused", None, String::new()),
    };
    let message = match (said.is_empty(), default.is_empty()) {
        (false, _) => said,
        (true, false) => default,
        (true, true) => parts.status.canonical_reason().unwrap_or("refused").to_owned(),
    };
    let mut json = ApiError { status: parts.status, code, message, field, retry_after_secs: None }.into_response();
    for name in [ALLOW, RETRY_AFTER] {
        if let Some(value) = parts.headers.get(&name) {
            json.headers_mut().insert(name, value.clone());
        }
    }
    json
}
