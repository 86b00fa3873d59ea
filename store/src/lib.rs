//! Event stores: where canonical events are kept and read back.
//!
//! [`EventStore`] is the one interface the collector writes through and the
//! query side reads through. Backends live in their own modules with the same
//! file roles (`schema.rs`, `write.rs`, `read.rs`); the embedded DuckDB backend
//! is the default.
//!
//! Invariants: a store never speaks HTTP and never decodes wire formats; an
//! event's `(project_id, uuid)` is stored at most once however often it is
//! written; every method is blocking and is called off the async runtime.

pub mod clickhouse;
pub mod duckdb;
mod error;
mod filter;
mod seen;
pub mod select;

pub use error::StoreError;
pub use filter::EventFilter;
pub use select::{Cell, ColumnKind, Dialect, Param, Rows, Select};

use leanloop_core::{Event, UserUpdate};

/// What one write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Events stored by this write.
    pub inserted: usize,
    /// Events skipped because their uuid was already stored.
    pub duplicates: usize,
}

/// A person as stored: merged traits and when they were seen.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    pub user_id: String,
    pub traits: serde_json::Value,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
}

pub trait EventStore: Send + Sync + 'static {
    /// Stores events and user updates in one transaction, skipping events whose
    /// uuid is already stored for their project.
    fn write(&self, events: &[Event], users: &[UserUpdate]) -> Result<WriteOutcome, StoreError>;

    /// Like [`EventStore::write`], for events a previous process may have
    /// written just before it died (a write-ahead log's replayed tail): every
    /// uuid is checked against what is stored, not only suspected ones.
    fn write_replayed(&self, events: &[Event], users: &[UserUpdate]) -> Result<WriteOutcome, StoreError> {
        self.write(events, users)
    }

    /// Number of stored events matching `filter` (each uuid once).
    fn count(&self, filter: &EventFilter) -> Result<u64, StoreError>;

    /// Newest events first, at most `limit`.
    fn recent(&self, filter: &EventFilter, limit: usize) -> Result<Vec<Event>, StoreError>;

    fn user(&self, project_id: i64, user_id: &str) -> Result<Option<UserRecord>, StoreError>;

    /// The user id an anonymous id was identified as, if any.
    fn identity(&self, project_id: i64, anonymous_id: &str) -> Result<Option<String>, StoreError>;

    /// Erases a person (GDPR): their traits, their identity links, and every
    /// event carrying their user id or an anonymous id linked to them.
    /// Returns the number of events deleted. Done when it returns.
    fn delete_person(&self, project_id: i64, user_id: &str) -> Result<u64, StoreError>;

    /// The dialect [`EventStore::select`] expects.
    fn dialect(&self) -> Dialect;

    /// Runs a read-only query compiled for [`EventStore::dialect`].
    fn select(&self, query: &Select) -> Result<Rows, StoreError>;

    /// Stores the members of a cohort as computed at `version`, a number
    /// larger than any earlier version of that cohort. Queries name the
    /// version they read (`cohort_members` rows), so a version being written
    /// or dropped is never half-seen.
    fn write_cohort(
        &self,
        project_id: i64,
        cohort_id: i64,
        version: i64,
        user_ids: &[String],
    ) -> Result<(), StoreError>;

    /// Removes a cohort's member versions older than `below` (all of them
    /// for `i64::MAX`).
    fn drop_cohort_versions(&self, project_id: i64, cohort_id: i64, below: i64) -> Result<(), StoreError>;

    /// A number that changes whenever the project's people change (traits
    /// written, a person erased), so cohorts computed from them can tell
    /// they are stale.
    fn people_revision(&self, project_id: i64) -> Result<u64, StoreError>;
}
