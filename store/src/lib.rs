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

pub mod asker;
pub mod clickhouse;
pub mod duckdb;
mod error;
mod filter;
mod links;
mod seen;
pub mod select;
pub mod traits;

pub use error::StoreError;
pub use filter::EventFilter;
pub use select::{Cell, Column, ColumnKind, Dialect, Param, Rows, Select, CLICKHOUSE_FIRST_LINK};

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

/// One piece of a streamed write ([`EventStore::write_stream`]).
#[derive(Debug, Default)]
pub struct Chunk {
    pub events: Vec<Event>,
    pub users: Vec<UserUpdate>,
    /// Some of these events may have been stored by a process that died (a
    /// write-ahead log's replayed tail): every uuid is looked up.
    pub replayed: bool,
}

impl Chunk {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.users.is_empty()
    }

    /// Adds `other` to this chunk.
    pub fn extend(&mut self, other: Chunk) {
        self.events.extend(other.events);
        self.users.extend(other.users);
        self.replayed |= other.replayed;
    }
}

pub trait EventStore: Send + Sync + 'static {
    /// Stores events and user updates in one transaction, skipping events whose
    /// uuid is already stored for their project.
    fn write(&self, events: &[Event], users: &[UserUpdate]) -> Result<WriteOutcome, StoreError>;

    /// Stores every chunk `chunks` yields as one write, pulling the next only
    /// when the last is handed to the store, so a large write never has to be
    /// held in memory whole. The default gathers the chunks into one
    /// [`EventStore::write`]; a store that can append in pieces within one
    /// transaction does so.
    fn write_stream(&self, chunks: &mut dyn Iterator<Item = Chunk>) -> Result<WriteOutcome, StoreError> {
        let mut all = Chunk::default();
        chunks.for_each(|chunk| all.extend(chunk));
        match (all.is_empty(), all.replayed) {
            (true, _) => Ok(WriteOutcome::default()),
            (false, true) => self.write_replayed(&all.events, &all.users),
            (false, false) => self.write(&all.events, &all.users),
        }
    }

    /// Events per write when the configuration names no number: what this
    /// store writes best in one go.
    fn preferred_write_events(&self) -> usize {
        50_000
    }

    /// Events from which one write costs markedly less per event, when this
    /// store has such a size: under sustained load a delivery keeps its
    /// write open past its usual interval (within a bound) to reach it.
    fn fill_write_events(&self) -> Option<usize> {
        None
    }

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

    /// The user an id (anonymous, or an alias's previous id) is linked to,
    /// at the end of its chain (links name a final id), if any.
    fn identity(&self, project_id: i64, anonymous_id: &str) -> Result<Option<String>, StoreError>;

    /// Erases a person (GDPR): their traits, their identity links, and every
    /// event whose person they are, as insights stitch them (its user id,
    /// else anonymous id, linked to them, or their own id when it is linked
    /// to no one; another user's events from a shared device stay).
    /// Returns the number of events deleted. Done when it returns, or, for
    /// deletes that run on after they are made (ClickHouse's mutations),
    /// [`StoreError::StillDeleting`] when they have not finished by
    /// `wait_until`.
    fn delete_person(&self, project_id: i64, user_id: &str, wait_until: std::time::Instant) -> Result<u64, StoreError>;

    /// Brings what the store derives from events up to date now, as it
    /// otherwise does within minutes of writes (DuckDB compacts its session
    /// parts). Answers are the same before and after; only their speed is not.
    fn settle(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The dialect [`EventStore::select`] expects.
    fn dialect(&self) -> Dialect;

    /// Runs a read-only query compiled for [`EventStore::dialect`].
    fn select(&self, query: &Select) -> Result<Rows, StoreError>;

    /// [`EventStore::select`] a column at a time: a store that reads columns
    /// natively spares a result of millions of rows (a funnel's) an
    /// allocation per row and integers their boxing as cells.
    fn select_columns(&self, query: &Select) -> Result<Vec<Column>, StoreError> {
        let rows = self.select(query)?;
        let mut columns: Vec<Column> = query.columns.iter().map(|&k| Column::with_capacity(k, rows.len())).collect();
        for row in rows {
            for (cells, cell) in columns.iter_mut().zip(row) {
                cells.push(cell);
            }
        }
        Ok(columns)
    }

    /// [`EventStore::select_columns`] handed to `each` a batch of rows at a
    /// time, as they are read, so a caller can work on early rows while
    /// later ones are still being read. A store that reads whole results
    /// hands over one batch.
    fn select_batches(&self, query: &Select, each: &mut dyn FnMut(Vec<Column>)) -> Result<(), StoreError> {
        each(self.select_columns(query)?);
        Ok(())
    }

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
