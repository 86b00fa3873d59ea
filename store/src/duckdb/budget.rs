//! DuckDB's memory limit and threads follow what the store is doing.
//!
//! DuckDB keeps every block it writes in its buffer pool until its memory
//! limit pushes it out, so a server that only ingests would grow to the
//! limit that questions need, though ingest itself needs little of it. And
//! the writer's inserts run serially (`write.rs`): with a second thread,
//! DuckDB's worker often takes the insert while the writing thread polls
//! its scheduler until it is done, a quarter of that thread's time spent
//! spinning. So the store runs in its ingest mode — the smaller ingest
//! limit, one thread, on which each connection runs its own statements — and
//! a question (an analytics `select`) switches to the query mode — the full
//! limit and every thread — for as long as questions keep coming; once none
//! has run for a while the next write switches back, DuckDB evicting its
//! cache to fit. Counts and point look-ups need little and run in the mode
//! in force (the events list is a question: large events need room). Both settings are the whole database's: a change
//! made through any connection applies to all of them.

use super::lock;
use crate::StoreError;
use ::duckdb::Connection;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// DuckDB's resources in one of the store's modes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mode {
    /// DuckDB's `memory_limit`, e.g. `"256MB"`.
    pub memory_limit: String,
    pub threads: usize,
}

impl Mode {
    fn apply(&self, conn: &Connection) -> Result<(), StoreError> {
        // SET takes no bound parameters; the size is quoted as a literal.
        // The limit goes first: when DuckDB cannot shrink its pool yet, the
        // threads stay as they were with it.
        conn.execute_batch(&format!(
            "SET memory_limit = '{}'; SET threads = {}",
            self.memory_limit.replace('\'', "''"),
            self.threads.max(1)
        ))?;
        Ok(())
    }
}

pub struct Budget {
    query: Mode,
    ingest: Mode,
    /// How long after the last read the ingest mode comes back.
    idle_after: Duration,
    state: Mutex<State>,
}

struct State {
    /// Reads running now.
    reading: usize,
    /// Whether the query mode is in force.
    raised: bool,
    last_read: Instant,
}

impl Budget {
    /// Checks both modes on `conn` (DuckDB refuses a malformed size) and
    /// leaves the ingest mode in force.
    pub fn start(conn: &Connection, query: Mode, ingest: Mode, idle_after: Duration) -> Result<Budget, StoreError> {
        query.apply(conn)?;
        ingest.apply(conn)?;
        Ok(Budget {
            query,
            ingest,
            idle_after,
            state: Mutex::new(State { reading: 0, raised: false, last_read: Instant::now() }),
        })
    }

    /// Puts the query mode in force for a read; it stays until a write
    /// finds no read running for `idle_after` after the guard is dropped.
    pub fn reading(&self, conn: &Connection) -> Result<Reading<'_>, StoreError> {
        let mut state = lock(&self.state);
        if !state.raised {
            self.query.apply(conn)?;
            state.raised = true;
        }
        state.reading += 1;
        Ok(Reading(self))
    }

    /// Before a write: back to the ingest mode once no read has run for
    /// `idle_after`. A pool that cannot shrink yet (DuckDB refuses while
    /// more than the new limit is pinned) is tried again at the next write.
    pub fn settle(&self, conn: &Connection) {
        let mut state = lock(&self.state);
        if state.raised && state.reading == 0 && state.last_read.elapsed() >= self.idle_after {
            match self.ingest.apply(conn) {
                Ok(()) => state.raised = false,
                Err(e) => tracing::debug!(error = %e, "DuckDB's memory could not shrink to the ingest limit yet"),
            }
        }
    }
}

/// A read in progress (see [`Budget::reading`]).
pub struct Reading<'a>(&'a Budget);

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.0.state);
        state.reading -= 1;
        state.last_read = Instant::now();
    }
}
