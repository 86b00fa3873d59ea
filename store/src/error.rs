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
    /// Earlier inserts, whose rows a write must see first, still run.
    #[error("clickhouse: {0} earlier inserts are still running; the write waits for them to end")]
    InFlight(u64),
    /// The store's server does not answer (yet); the caller may retry.
    #[error("the event store is unavailable: {0}")]
    Unavailable(String),
    /// The read was stopped, or not started, as its asker had gone.
    #[error("the question was abandoned: its request ended before the answer")]
    Abandoned,
    /// A query needed more memory than the store may use; names the limit,
    /// and whether other queries share it (then the same query asked alone
    /// may pass).
    #[error("the query needs more memory than the event store may use ({limit}); narrow its date range or filters, or raise the limit")]
    QueryMemory { limit: String, shared: bool },
    /// An erasure's deletes are made, and still running when its wait
    /// ended: `events` of the person's events go as they finish.
    #[error("the person's {events} events and their rows are being deleted; the deletes are still running")]
    StillDeleting { events: u64 },
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

    /// Whether DuckDB stopped on a fatal error (a checkpoint that could not
    /// write): the database refuses everything until it is opened again.
    pub fn is_fatal(&self) -> bool {
        let StoreError::DuckDb(e) = self else { return false };
        let said = e.to_string();
        said.contains("FATAL Error") || said.contains("database has been invalidated")
    }

    /// Whether the store's server did not answer at all (refused, timed
    /// out, not yet open), as against answering with a refusal.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_)
                | StoreError::ClickHouse(clickhouse::error::Error::Network(_) | clickhouse::error::Error::TimedOut)
        )
    }

    /// `self`, or [`StoreError::QueryMemory`] naming `limit` when the engine
    /// refused the query for want of memory: an answer the asker can act on
    /// (a narrower query, a larger limit) instead of an internal error.
    pub(crate) fn or_query_memory(self, limit: &str) -> StoreError {
        let detail = self.to_string();
        let (limit, shared) = match &self {
            // DuckDB's limit is one pool for every query.
            StoreError::DuckDb(_) if detail.contains("Out of Memory Error") => (limit.to_owned(), true),
            // Code 241 is MEMORY_LIMIT_EXCEEDED on every server version. A
            // query's own limit is its alone; the user's and the server's
            // are shared with the queries running beside it.
            StoreError::ClickHouse(_) if clickhouse_code(&detail) == Some(241) => {
                if detail.contains("(for user)") {
                    ("ClickHouse's max_memory_usage_for_user".to_owned(), true)
                } else if detail.contains("(total)") {
                    ("ClickHouse's server memory".to_owned(), true)
                } else {
                    (limit.to_owned(), false)
                }
            }
            _ => return self,
        };
        tracing::warn!(error = %detail, "query refused for want of memory");
        StoreError::QueryMemory { limit, shared }
    }
}

impl Classify for StoreError {
    fn class(&self) -> ErrorClass {
        match self {
            // Memory is shared with the queries running meanwhile.
            StoreError::QueryMemory { .. } => ErrorClass::Unavailable { retry_after_secs: 5 },
            // No one waits for this answer; never logged as a failure.
            StoreError::Abandoned => ErrorClass::Unavailable { retry_after_secs: 1 },
            StoreError::StillDeleting { .. } => ErrorClass::Unavailable { retry_after_secs: 5 },
            // Outages end: the asker may try again, not report a bug. A
            // fatal DuckDB error ends as the database is opened again.
            e if e.is_unreachable() || e.is_fatal() => ErrorClass::Unavailable { retry_after_secs: 5 },
            // Limits the server's operator set (its message names which),
            // and servers of a cluster out of reach.
            StoreError::ClickHouse(_)
                if clickhouse_code(&self.to_string()).is_some_and(|c| PASSING_LIMITS.contains(&c)) =>
            {
                ErrorClass::Unavailable { retry_after_secs: 5 }
            }
            _ => ErrorClass::Internal,
        }
    }
}

/// ClickHouse refusals that pass with time: TIMEOUT_EXCEEDED (159), a
/// quota used up (201), TOO_MANY_SIMULTANEOUS_QUERIES (202),
/// NO_FREE_CONNECTION (203), TOO_MANY_PARTS (252); and, on a cluster, a
/// server the one asked cannot reach (SOCKET_TIMEOUT 209, NETWORK_ERROR
/// 210, ALL_CONNECTION_TRIES_FAILED 279): a shard down is an outage.
const PASSING_LIMITS: [u32; 8] = [159, 201, 202, 203, 209, 210, 252, 279];

/// The error code in a ClickHouse refusal: `Code: 241, e.displayText() …`
/// on old servers, `Code: 241. DB::Exception …` on current ones.
pub(crate) fn clickhouse_code(detail: &str) -> Option<u32> {
    let digits = detail.split("Code: ").nth(1)?;
    let end = digits.find(|c: char| !c.is_ascii_digit())?;
    digits[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clickhouse_memory_refusals_name_the_limit_and_other_errors_stay_internal() {
        let refused = clickhouse::error::Error::BadResponse(
            "Code: 241, e.displayText() = DB::Exception: Memory limit (for query) exceeded".into(),
        );
        let e = StoreError::from(refused).or_query_memory("ClickHouse's max_memory_usage");
        assert!(
            matches!(&e, StoreError::QueryMemory { limit, shared: false } if limit == "ClickHouse's max_memory_usage")
        );
        assert_eq!(e.class(), ErrorClass::Unavailable { retry_after_secs: 5 });
        let other = StoreError::from(clickhouse::error::Error::BadResponse("Code: 62, syntax error".into()));
        assert_eq!(other.or_query_memory("x").class(), ErrorClass::Internal);
        let near = StoreError::from(clickhouse::error::Error::BadResponse("Code: 2410, something else".into()));
        assert_eq!(near.or_query_memory("x").class(), ErrorClass::Internal);
        let total = clickhouse::error::Error::BadResponse(
            "Code: 241. DB::Exception: Memory limit (total) exceeded: would use 9.31 GiB".into(),
        );
        let e = StoreError::from(total).or_query_memory("ClickHouse's max_memory_usage");
        assert!(matches!(&e, StoreError::QueryMemory { limit, shared: true } if limit == "ClickHouse's server memory"));
        let user = clickhouse::error::Error::BadResponse("Code: 241, Memory limit (for user) exceeded".into());
        let e = StoreError::from(user).or_query_memory("ClickHouse's max_memory_usage");
        assert!(matches!(e, StoreError::QueryMemory { shared: true, .. }));
    }

    #[test]
    fn clickhouse_limits_that_pass_are_503s() {
        for text in [
            "Code: 201, e.displayText() = DB::Exception: Quota for user default for 3600s has been exceeded",
            "Code: 202. DB::Exception: Too many simultaneous queries. Maximum: 100",
            "Code: 159, e.displayText() = DB::Exception: Timeout exceeded: elapsed 30.1 seconds",
            "Code: 279, e.displayText() = DB::NetException: All connection tries failed. Log: Connection refused",
            "Code: 210. DB::NetException: Connection refused (127.0.0.1:9002)",
        ] {
            let e = StoreError::from(clickhouse::error::Error::BadResponse(text.into()));
            assert_eq!(e.class(), ErrorClass::Unavailable { retry_after_secs: 5 }, "{text}");
        }
    }
}
