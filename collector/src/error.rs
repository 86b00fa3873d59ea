//! Errors the collector answers clients with.

use leanloop_core::{Classify, ErrorClass};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("request body is not valid JSON: {0}")]
    BadJson(String),
    #[error("{message}")]
    BadField { field: String, message: String },
    #[error("no write key: send it as the HTTP Basic user name, or as `writeKey` / `api_key` in the body")]
    MissingKey,
    #[error("unknown write key")]
    UnknownKey,
    /// A project's secret key (read or deploy) sent where the public write key goes.
    #[error("this is a {0} key; ingest needs the project's write key")]
    SecretKeyUsed(&'static str),
    /// The client stopped sending (or the connection broke) mid-body.
    #[error("the request body ended before all of it arrived: {0}")]
    BodyCut(String),
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("decompressed body is larger than {limit} bytes")]
    InflatedTooLarge { limit: usize },
    #[error("event is larger than {limit} bytes")]
    EventTooLarge { limit: usize },
    #[error("the request's events take {size} bytes in the write-ahead log, which holds {limit}; send fewer at once")]
    LogRecordTooLarge { size: u64, limit: u64 },
    #[error("batch has {count} events; at most {limit} are accepted per request")]
    BatchTooLarge { count: usize, limit: usize },
    /// A batch's shared `context` is copied into each of its events.
    #[error("the batch's events take {size} bytes with its shared `context` copied into each; at most {limit} are accepted per request")]
    BatchExpandsTooLarge { size: usize, limit: usize },
    #[error("the server holds as many request bodies as it may at once (collector.max_bodies_bytes); retry")]
    BodiesBusy,
    #[error("ingest queue is full; retry after {retry_after_secs} s")]
    QueueFull { retry_after_secs: u32 },
    #[error("write-ahead log cannot take events: {0}")]
    LogUnavailable(String),
    #[error("collector is shutting down")]
    ShuttingDown,
    #[error("control plane: {0}")]
    Control(#[from] leanloop_control::ControlError),
}

impl IngestError {
    pub fn field(field: &str, message: impl Into<String>) -> IngestError {
        IngestError::BadField { field: field.to_owned(), message: message.into() }
    }

    /// Short label for the `reason` of rejection metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            IngestError::BadJson(_) => "bad_json",
            IngestError::BadField { .. } => "bad_field",
            IngestError::BodyCut(_) => "body_cut",
            IngestError::MissingKey => "missing_key",
            IngestError::UnknownKey => "unknown_key",
            IngestError::SecretKeyUsed(_) => "secret_key",
            IngestError::BodyTooLarge { .. } | IngestError::InflatedTooLarge { .. } => "body_too_large",
            IngestError::EventTooLarge { .. } => "event_too_large",
            IngestError::BatchTooLarge { .. } | IngestError::BatchExpandsTooLarge { .. } => "batch_too_large",
            IngestError::LogRecordTooLarge { .. } => "log_record_too_large",
            IngestError::QueueFull { .. } => "queue_full",
            IngestError::BodiesBusy => "bodies_busy",
            IngestError::LogUnavailable(_) => "log_unavailable",
            IngestError::ShuttingDown => "shutting_down",
            IngestError::Control(_) => "internal",
        }
    }
}

/// Every [`IngestError::reason`], and `every_event_refused` (a batch none
/// of whose events was taken): the `reason` labels of the rejection
/// counters, which exist at 0 from the start.
pub const REJECTION_REASONS: &[&str] = &[
    "bad_json",
    "bad_field",
    "body_cut",
    "missing_key",
    "unknown_key",
    "secret_key",
    "body_too_large",
    "event_too_large",
    "batch_too_large",
    "log_record_too_large",
    "queue_full",
    "bodies_busy",
    "log_unavailable",
    "shutting_down",
    "internal",
    "every_event_refused",
];

/// The Retry-After of a 503 for a log that cannot take events (its disk
/// refused them, say) or a collector shutting down.
pub const UNAVAILABLE_RETRY_AFTER_SECS: u32 = 5;

impl Classify for IngestError {
    fn class(&self) -> ErrorClass {
        match self {
            IngestError::BadJson(_) | IngestError::BodyCut(_) => ErrorClass::BadRequest { field: Some("body".into()) },
            IngestError::BadField { field, .. } => ErrorClass::BadRequest { field: Some(field.clone()) },
            IngestError::MissingKey | IngestError::UnknownKey | IngestError::SecretKeyUsed(_) => {
                ErrorClass::Unauthorized
            }
            IngestError::BodyTooLarge { .. } | IngestError::InflatedTooLarge { .. } => {
                ErrorClass::TooLarge { field: Some("body".into()) }
            }
            IngestError::EventTooLarge { .. } => ErrorClass::TooLarge { field: Some("event".into()) },
            IngestError::BatchTooLarge { .. } => ErrorClass::TooLarge { field: Some("batch".into()) },
            IngestError::BatchExpandsTooLarge { .. } => ErrorClass::TooLarge { field: Some("context".into()) },
            IngestError::LogRecordTooLarge { .. } => ErrorClass::TooLarge { field: Some("body".into()) },
            IngestError::BodiesBusy => ErrorClass::Unavailable { retry_after_secs: 1 },
            IngestError::QueueFull { retry_after_secs } => {
                ErrorClass::Unavailable { retry_after_secs: *retry_after_secs }
            }
            IngestError::LogUnavailable(_) | IngestError::ShuttingDown => {
                ErrorClass::Unavailable { retry_after_secs: UNAVAILABLE_RETRY_AFTER_SECS }
            }
            IngestError::Control(_) => ErrorClass::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_a_label_the_counters_start_with() {
        let text = || String::from("x");
        let every = [
            IngestError::BadJson(text()),
            IngestError::field("event", "missing"),
            IngestError::MissingKey,
            IngestError::UnknownKey,
            IngestError::SecretKeyUsed("read"),
            IngestError::BodyCut(text()),
            IngestError::BodyTooLarge { limit: 1 },
            IngestError::InflatedTooLarge { limit: 1 },
            IngestError::EventTooLarge { limit: 1 },
            IngestError::LogRecordTooLarge { size: 2, limit: 1 },
            IngestError::BatchTooLarge { count: 2, limit: 1 },
            IngestError::BatchExpandsTooLarge { size: 2, limit: 1 },
            IngestError::BodiesBusy,
            IngestError::QueueFull { retry_after_secs: 1 },
            IngestError::LogUnavailable(text()),
            IngestError::ShuttingDown,
            IngestError::Control(leanloop_control::ControlError::NoSuchProject(1)),
        ];
        for e in &every {
            assert!(REJECTION_REASONS.contains(&e.reason()), "{} is not in REJECTION_REASONS", e.reason());
        }
    }
}
