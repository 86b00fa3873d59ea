//! Error classes and the one place they become HTTP answers.
//!
//! Each crate keeps its own `thiserror` enum and implements [`Classify`]; the
//! HTTP layer converts with [`ApiError::from_error`]. Clients see a precise
//! message for their own mistakes and a bare "internal error" with a request id
//! for ours; the detail of an internal error goes to the log only.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// What kind of failure an error is, independent of any transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request is malformed; `field` names the offending input when known.
    BadRequest {
        field: Option<String>,
    },
    /// No or unknown credentials, or a key used for the wrong purpose.
    Unauthorized,
    /// The caller may not touch this resource.
    Forbidden,
    NotFound,
    /// The resource's state does not allow the request (a finished run
    /// cancelled, nothing to roll back to). `reason` tells the cases apart
    /// for programs; one that passes (a deploy under way) says when to retry.
    Conflict {
        reason: &'static str,
        retry_after_secs: Option<u32>,
    },
    /// A body, event or batch is over a limit.
    TooLarge {
        field: Option<String>,
    },
    /// Temporarily unable to accept work (queue full, store down); retry later.
    Unavailable {
        retry_after_secs: u32,
    },
    /// A bug or an unexpected failure of ours.
    Internal,
}

/// Implemented by every crate's error enum.
pub trait Classify: std::error::Error {
    fn class(&self) -> ErrorClass;
}

impl ErrorClass {
    /// The class of an SQLite failure by its (extended) result code: its
    /// disk full, read-only or failing, or the file busy, is a condition that
    /// passes (503 and a retry); anything else is ours.
    pub fn of_sqlite(extended_code: i32) -> ErrorClass {
        // SQLITE_BUSY, _LOCKED, _NOMEM, _READONLY, _IOERR, _FULL, _CANTOPEN.
        const PASSING: [i32; 7] = [5, 6, 7, 8, 10, 13, 14];
        if PASSING.contains(&(extended_code & 0xff)) {
            ErrorClass::Unavailable { retry_after_secs: 5 }
        } else {
            ErrorClass::Internal
        }
    }
}

/// An error ready to be sent to an HTTP client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Which conflict, for programs (`code` is `conflict`).
    pub reason: Option<&'static str>,
    pub retry_after_secs: Option<u32>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
    /// `error.code` and `error.message` again at the top, where the clients
    /// of Segment's API (analytics-python, rudder-sdk-python) read them:
    /// without them such a client takes a refusal for a network failure
    /// and sends it again.
    code: &'a str,
    message: &'a str,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

impl ApiError {
    /// Classifies `err`; internal errors are logged here with their detail and
    /// answered without it.
    pub fn from_error<E: Classify + ?Sized>(err: &E) -> ApiError {
        let class = err.class();
        if class == ErrorClass::Internal {
            let id = uuid::Uuid::new_v4();
            tracing::error!(error = %err, error_id = %id, "internal error");
            return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("internal error (id {id})"));
        }
        ApiError::from_class(class, err.to_string())
    }

    pub fn from_class(class: ErrorClass, message: String) -> ApiError {
        let mut reason = None;
        let (status, code, field, retry) = match class {
            ErrorClass::BadRequest { field } => (StatusCode::BAD_REQUEST, "bad_request", field, None),
            ErrorClass::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", None, None),
            ErrorClass::Forbidden => (StatusCode::FORBIDDEN, "forbidden", None, None),
            ErrorClass::NotFound => (StatusCode::NOT_FOUND, "not_found", None, None),
            ErrorClass::Conflict { reason: why, retry_after_secs } => {
                reason = Some(why);
                (StatusCode::CONFLICT, "conflict", None, retry_after_secs)
            }
            ErrorClass::TooLarge { field } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large", field, None),
            ErrorClass::Unavailable { retry_after_secs } => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable", None, Some(retry_after_secs))
            }
            ErrorClass::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None, None),
        };
        ApiError { status, code, message, field, reason, retry_after_secs: retry }
    }

    pub fn new(status: StatusCode, code: &'static str, message: String) -> ApiError {
        ApiError { status, code, message, field: None, reason: None, retry_after_secs: None }
    }

    pub fn bad_request(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::from_class(ErrorClass::BadRequest { field: Some(field.to_owned()) }, message.into())
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(Body {
            error: Inner { code: self.code, message: &self.message, field: self.field.as_deref(), reason: self.reason },
            code: self.code,
            message: &self.message,
        })
        .unwrap_or_default()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.to_json())).into_response();
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl<E: Classify> From<E> for ApiError {
    fn from(err: E) -> ApiError {
        ApiError::from_error(&err)
    }
}

/// What a failed typed JSON decode says about the input, for answers that
/// name the field at fault. Callers word their own messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonFault {
    /// A field the type does not have, with the path down to it.
    Unknown { name: String, path: String },
    /// A required field absent; `path` is the object it is missing from.
    Missing { name: String, path: String },
    /// A value of the wrong kind at `path`.
    Invalid { path: String },
    /// Not JSON at all (or a value with no path).
    Syntax,
}

impl JsonFault {
    /// Classifies a decode error tracked with `serde_path_to_error`
    /// (`path` is its path, `"."` for the top level).
    pub fn of(path: &str, inner: &serde_json::Error) -> JsonFault {
        let message = inner.to_string();
        let named = |prefix: &str| message.strip_prefix(prefix).and_then(|m| m.split('`').next()).map(str::to_owned);
        if let Some(name) = named("unknown field `") {
            JsonFault::Unknown { name, path: path.to_owned() }
        } else if let Some(name) = named("missing field `") {
            JsonFault::Missing { name, path: path.to_owned() }
        } else if let Some(name) = named("duplicate field `") {
            // The path may or may not have entered the repeated key yet.
            let path = match path {
                "." => name,
                p if p.ends_with(&format!(".{name}")) || p == name => p.to_owned(),
                p => format!("{p}.{name}"),
            };
            JsonFault::Invalid { path }
        } else if inner.is_data() && path != "." {
            JsonFault::Invalid { path: path.to_owned() }
        } else if inner.is_syntax() && path != "." && !path.contains('?') {
            // A malformed value under a known field (`null` where a name is
            // expected, a lone surrogate) is that field's fault; broken JSON
            // elsewhere (a key not even a string) is the body's.
            JsonFault::Invalid { path: path.to_owned() }
        } else {
            JsonFault::Syntax
        }
    }
}
