//! DuckDB's memory limit follows what the store is doing.
//!
//! DuckDB keeps every block it writes in its buffer pool until its memory
//! limit pushes it out, so a server that only ingests would grow to the
//! limit that questions need, though ingest itself needs little of it. So
//! the store runs under the smaller ingest limit; a question (an analytics
//! `select`) raises the limit to the full one for as long as questions keep
//! coming, and once none has run for a while the next write brings it back
//! down, DuckDB evicting its cache to fit. Counts, recent events and point
//! look-ups need little memory and run within the ingest limit.
//! `memory_limit` is one setting for the whole database: a change made
//! through any connection applies to all of them.

use super::lock;
use crate::StoreError;
use ::duckdb::Connection;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Budget {
    query_limit: String,
    ingest_limit: String,
    /// How long after the last read the ingest limit comes back.
    idle_after: Duration,
    state: Mutex<State>,
}

struct State {
    /// Reads running now.
    reading: usize,
    /// Whether the query limit is in force.
    raised: bool,
    last_read: Instant,
}

impl Budget {
    /// Checks both limits on `conn` (DuckDB refuses a malformed size) and
    /// leaves the ingest limit in force.
    pub fn start(
        conn: &Connection,
        query_limit: &str,
        ingest_limit: &str,
        idle_after: Duration,
    ) -> Result<Budget, StoreError> {
        set_limit(conn, query_limit)?;
        set_limit(conn, ingest_limit)?;
        Ok(Budget {
            query_limit: query_limit.to_owned(),
            ingest_limit: ingest_limit.to_owned(),
            idle_after,
            state: Mutex::new(State { reading: 0, raised: false, last_read: Instant::now() }),
        })
    }

    /// Puts the query limit in force for a read; it stays until a write
    /// finds no read running for `idle_after` after the guard is dropped.
    pub fn reading(&self, conn: &Connection) -> Result<Reading<'_>, StoreError> {
        let mut state = lock(&self.state);
        if !state.raised {
            set_limit(conn, &self.query_limit)?;
            state.raised = true;
        }
        state.reading += 1;
        Ok(Reading(self))
    }

    /// Before a write: back to the ingest limit once no read has run for
    /// `idle_after`. A pool that cannot shrink yet (DuckDB refuses while
    /// more than the new limit is pinned) is tried again at the next write.
    pub fn settle(&self, conn: &Connection) {
        let mut state = lock(&self.state);
        if state.raised && state.reading == 0 && state.last_read.elapsed() >= self.idle_after {
            match set_limit(conn, &self.ingest_limit) {
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

fn set_limit(conn: &Connection, limit: &str) -> Result<(), StoreError> {
    // SET takes no bound parameters; the size is quoted as a literal.
    conn.execute_batch(&format!("SET memory_limit = '{}'", limit.replace('\'', "''")))?;
    Ok(())
}
