//! A ClickHouse store that opens once the server answers.
//!
//! A collector fronts the store with its durable log, so it can take events
//! while ClickHouse is down and deliver them once it is back. Refusing to
//! start then would turn a store outage into an ingest outage, for every
//! collector restarted (or crashed) during it. So the process starts, and
//! the store opens (migrations, the insert fence, the dedup filter) on the
//! first call after the server answers. Until then every call fails with
//! [`StoreError::Unavailable`]: the log keeps its events and retries, and
//! reads answer 503 with Retry-After.
//!
//! Attempts are at least [`RETRY_EVERY`] apart, and a call made while another
//! thread attempts fails at once instead of queueing behind it. Only a
//! server that does not answer defers the store: one that answers with a
//! refusal at start (a wrong user or password, a port that is not
//! ClickHouse's HTTP one, a schema newer than this build) refuses start, as
//! a bad URL does.

use super::{ClickHouseOptions, ClickHouseStore, Endpoint};
use crate::{Chunk, Column, Dialect, EventFilter, EventStore, Rows, Select, StoreError, UserRecord, WriteOutcome};
use leanloop_core::{Event, UserUpdate};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The least time between two attempts to open.
pub const RETRY_EVERY: Duration = Duration::from_secs(2);

pub struct Deferred {
    options: ClickHouseOptions,
    store: OnceLock<ClickHouseStore>,
    /// The last failed attempt: when, why, and whether waiting can mend it.
    failed: Mutex<Option<Failed>>,
}

struct Failed {
    at: Instant,
    why: String,
    retriable: bool,
}

impl Failed {
    fn error(&self) -> StoreError {
        match self.retriable {
            true => StoreError::Unavailable(self.why.clone()),
            false => StoreError::Config(self.why.clone()),
        }
    }
}

impl Deferred {
    /// Opens the store now if the server answers; else starts without it
    /// (logging why) and opens it on a later call. Fails when the server
    /// answers with a refusal, and for a bad URL.
    pub fn open(options: &ClickHouseOptions) -> Result<Deferred, StoreError> {
        Endpoint::parse(&options.url)?;
        let failed = Mutex::new(None);
        match ClickHouseStore::open(options) {
            Ok(store) => Ok(Deferred { options: options.clone(), store: OnceLock::from(store), failed }),
            Err(e) if e.is_unreachable() => {
                tracing::warn!(
                    error = %e,
                    "ClickHouse does not answer: starting without it; events wait (in the log, or with the log off the in-memory queue) until it does"
                );
                let last = Failed { at: Instant::now(), why: e.to_string(), retriable: true };
                Ok(Deferred { options: options.clone(), store: OnceLock::new(), failed: Mutex::new(Some(last)) })
            }
            Err(e) => Err(e),
        }
    }

    /// The open store, opening it first when due.
    fn ready(&self) -> Result<&ClickHouseStore, StoreError> {
        if let Some(store) = self.store.get() {
            return Ok(store);
        }
        let Ok(mut failed) = self.failed.try_lock() else {
            return Err(StoreError::Unavailable("the event store is being opened".into()));
        };
        if let Some(store) = self.store.get() {
            return Ok(store);
        }
        if let Some(last) = failed.as_ref().filter(|f| f.at.elapsed() < RETRY_EVERY) {
            return Err(last.error());
        }
        match ClickHouseStore::open(&self.options) {
            Ok(store) => {
                *failed = None;
                Ok(self.store.get_or_init(|| store))
            }
            Err(e) => {
                let last = Failed { at: Instant::now(), why: e.to_string(), retriable: e.is_retriable() };
                let error = if last.retriable { last.error() } else { e };
                *failed = Some(last);
                Err(error)
            }
        }
    }
}

/// Everything but the dialect waits for the store; the write sizes keep the
/// trait's answers, as [`ClickHouseStore`] does, since the log reads them
/// before the store may have opened.
impl EventStore for Deferred {
    fn write(&self, events: &[Event], users: &[UserUpdate]) -> Result<WriteOutcome, StoreError> {
        self.ready()?.write(events, users)
    }

    fn write_stream(&self, chunks: &mut dyn Iterator<Item = Chunk>) -> Result<WriteOutcome, StoreError> {
        self.ready()?.write_stream(chunks)
    }

    fn write_replayed(&self, events: &[Event], users: &[UserUpdate]) -> Result<WriteOutcome, StoreError> {
        self.ready()?.write_replayed(events, users)
    }

    fn count(&self, filter: &EventFilter) -> Result<u64, StoreError> {
        self.ready()?.count(filter)
    }

    fn recent(&self, filter: &EventFilter, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.ready()?.recent(filter, limit)
    }

    fn user(&self, project_id: i64, user_id: &str) -> Result<Option<UserRecord>, StoreError> {
        self.ready()?.user(project_id, user_id)
    }

    fn identity(&self, project_id: i64, anonymous_id: &str) -> Result<Option<String>, StoreError> {
        self.ready()?.identity(project_id, anonymous_id)
    }

    fn delete_person(&self, project_id: i64, user_id: &str, wait_until: Instant) -> Result<u64, StoreError> {
        self.ready()?.delete_person(project_id, user_id, wait_until)
    }

    fn settle(&self) -> Result<(), StoreError> {
        self.ready()?.settle()
    }

    fn dialect(&self) -> Dialect {
        Dialect::ClickHouse
    }

    fn select(&self, query: &Select) -> Result<Rows, StoreError> {
        self.ready()?.select(query)
    }

    fn select_columns(&self, query: &Select) -> Result<Vec<Column>, StoreError> {
        self.ready()?.select_columns(query)
    }

    fn select_batches(&self, query: &Select, each: &mut dyn FnMut(Vec<Column>)) -> Result<(), StoreError> {
        self.ready()?.select_batches(query, each)
    }

    fn write_cohort(
        &self,
        project_id: i64,
        cohort_id: i64,
        version: i64,
        user_ids: &[String],
    ) -> Result<(), StoreError> {
        self.ready()?.write_cohort(project_id, cohort_id, version, user_ids)
    }

    fn drop_cohort_versions(&self, project_id: i64, cohort_id: i64, below: i64) -> Result<(), StoreError> {
        self.ready()?.drop_cohort_versions(project_id, cohort_id, below)
    }

    fn people_revision(&self, project_id: i64) -> Result<u64, StoreError> {
        self.ready()?.people_revision(project_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_server_is_retried_no_sooner_than_due_and_a_bad_url_is_refused() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let store = Deferred::open(&ClickHouseOptions::new(format!("http://{closed}/?database=x"))).unwrap();
        assert!(store.store.get().is_none(), "not opened");
        let first = store.count(&EventFilter::project(1)).unwrap_err();
        assert!(matches!(&first, StoreError::Unavailable(why) if why.contains("clickhouse")), "{first}");
        assert_eq!(store.dialect(), Dialect::ClickHouse);

        let bad = Deferred::open(&ClickHouseOptions::new("ftp://127.0.0.1/")).err().expect("refused");
        assert!(matches!(bad, StoreError::Config(_)), "{bad}");
    }

    #[test]
    fn a_server_that_answers_with_a_refusal_refuses_start() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                let body = "Code: 516, e.displayText() = DB::Exception: default: Authentication failed";
                let _ = write!(stream, "HTTP/1.1 401 Unauthorized\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            }
        });
        let refused = Deferred::open(&ClickHouseOptions::new(format!("http://{address}/?database=x"))).err();
        let refused = refused.expect("a refusal is not an outage");
        assert!(!refused.is_unreachable() && refused.to_string().contains("Authentication failed"), "{refused}");
    }
}
