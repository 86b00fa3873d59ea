//! Answers the server gives on its own, before, around or instead of a
//! handler: unknown routes, wrong methods, extractor refusals and requests
//! past their deadline. Each is a JSON error like every other refusal, never
//! an empty or plain-text body.
//!
//! [`Refusals`] wraps every route as a plain tower layer rather than
//! `axum::middleware::from_fn`, which clones and boxes the service beneath
//! it for every request: two such layers took about 18 % of the server's
//! CPU per single event (README, "Benchmarks").

use axum::extract::Request;
use axum::http::header::{
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE,
    ORIGIN, RETRY_AFTER, TRANSFER_ENCODING,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use leanloop_core::{ApiError, ErrorClass};
use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service};

/// Seconds a client is told to wait after a request ran out of time.
const RETRY_AFTER_SECS: u32 = 5;

/// Runs each request within `timeout` and turns refusals made below the
/// handlers into JSON errors (see [`jsonified`]). A body refused as too
/// large (413, below the handlers or in one), or a request with a body
/// refused by its key, route or method, also closes the connection
/// (`closing`).
#[derive(Clone, Copy)]
pub struct Refusals {
    pub timeout: Duration,
}

impl<S> Layer<S> for Refusals {
    type Service = WithRefusals<S>;

    fn layer(&self, inner: S) -> WithRefusals<S> {
        WithRefusals { inner, timeout: self.timeout }
    }
}

#[derive(Clone)]
pub struct WithRefusals<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Service<Request> for WithRefusals<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if declared_too_large(&request) {
            let refused = ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: "too_large",
                message: format!("the body is over {API_BODY_LIMIT} bytes, the most this API reads"),
                field: Some("body".to_owned()),
                reason: None,
                retry_after_secs: None,
            };
            return Box::pin(async move { Ok(closing(refused.into_response())) });
        }
        // Kept for the messages of refusals.
        let (method, uri) = (request.method().clone(), request.uri().clone());
        let origin = request.headers().get(ORIGIN).cloned();
        let with_body = carries_body(request.headers());
        let handled = self.inner.call(request);
        let timeout = self.timeout;
        Box::pin(async move {
            let answered = async {
                let Ok(response) = handled.await;
                let response = jsonified(&method, &uri, response).await;
                match response.status() {
                    StatusCode::PAYLOAD_TOO_LARGE => closing(response),
                    // Decided from the head (a key in a header, the route,
                    // the method), so the body may be unread.
                    StatusCode::UNAUTHORIZED | StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED if with_body => {
                        closing(response)
                    }
                    _ => response,
                }
            };
            Ok(tokio::time::timeout(timeout, answered).await.unwrap_or_else(|_| late(timeout, origin)))
        })
    }
}

/// Past the deadline (a slow body or a long query): 503 with
/// `Retry-After` and a message saying so. The route's own CORS headers
/// never came, so a browser's request gets them here, as ingest gives them
/// (the SDK backs off by `Retry-After`).
fn late(timeout: Duration, origin: Option<HeaderValue>) -> Response {
    let mut response = closing(
        ApiError::from_class(
            ErrorClass::Unavailable { retry_after_secs: RETRY_AFTER_SECS },
            format!(
                "the request took longer than {} s (request_timeout_secs): a body sent too slowly or a \
                 query too long; narrow the query or retry",
                timeout.as_secs()
            ),
        )
        .into_response(),
    );
    if let Some(origin) = origin {
        response.headers_mut().insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        response.headers_mut().insert(ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("retry-after"));
    }
    response
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

/// The most the read, cohort and pipeline APIs read of a body (axum's
/// limit for its body extractors); ingest has limits of its own.
const API_BODY_LIMIT: u64 = 2 * 1024 * 1024;

/// A request to those APIs whose declared length is over their limit:
/// refused from its head, not after waiting for a body never read whole.
fn declared_too_large(request: &Request) -> bool {
    let path = request.uri().path();
    (path.starts_with("/api/") || path.starts_with("/hooks/"))
        && request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|n| n.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|n| n > API_BODY_LIMIT)
}

/// Whether a request's head announces a body.
fn carries_body(headers: &HeaderMap) -> bool {
    headers.contains_key(TRANSFER_ENCODING)
        || headers.get(CONTENT_LENGTH).is_some_and(|n| n.as_bytes().iter().any(|&b| b != b'0'))
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
async fn jsonified(method: &Method, uri: &Uri, response: Response) -> Response {
    let path = uri.path();
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
        // A body cut short; a path segment that does not decode: axum
        // names it in backticks.
        StatusCode::BAD_REQUEST if said.starts_with("Failed to buffer the request body") => {
            ("bad_request", Some("body".to_owned()), String::new())
        }
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
    let mut json =
        ApiError { status: parts.status, code, message, field, reason: None, retry_after_secs: None }.into_response();
    for name in [ALLOW, RETRY_AFTER] {
        if let Some(value) = parts.headers.get(&name) {
            json.headers_mut().insert(name, value.clone());
        }
    }
    json
}
