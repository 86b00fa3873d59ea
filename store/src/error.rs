//! Errors of the event stores.

use leanloop_core::{Classify, ErrorClass};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("duckdb: {0}")]
    DuckDb(#[from] ::duckdb::Error),
    #[error("arrow data: {0}")]
    Arrow(#[from] ::duckdb::arrow::error::ArrowError),
    #[error("event store schema is at version {found}, newer than this build knows ({known})")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("stored row is malformed: {0}")]
    Corrupt(String),
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("event store configuration: {0}")]
    Config(String),
}

impl StoreError {
    /// Whether retrying the same write later can succeed. The writer retries
    /// every failed write regardless (acknowledged events are never dropped;
    /// events are validated before they reach the store, so a failure means
    /// the store, not the data); this only tells operators when a retry
    /// cannot help without their intervention.
    pub fn is_retriable(&self) -> bool {
        !matches!(self, StoreError::SchemaTooNew { .. } | StoreError::Config(_))
    }
}

impl Classify for StoreError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Internal
    }
}
