//! Where accepted events wait for the store: the durable write-ahead log
//! (the default) or, when the log is switched off, the in-memory queue.
//! Both are bounded and refuse whole requests with 503 when full.

use crate::queue::IngestQueue;
use crate::wal::Wal;
use crate::IngestError;
use leanloop_core::{Event, UserUpdate};
use std::time::Duration;

pub enum Spool {
    Log(Wal),
    Memory(IngestQueue),
}

/// How full the spool is, in its own unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    pub used: u64,
    pub capacity: u64,
    /// `"bytes"` for the log, `"items"` for the in-memory queue.
    pub unit: &'static str,
}

impl Spool {
    /// Returns once the events are held durably (log) or queued (memory).
    pub async fn push(&self, events: Vec<Event>, users: Vec<UserUpdate>) -> Result<(), IngestError> {
        match self {
            Spool::Log(wal) => wal.append(&events, &users).await,
            Spool::Memory(queue) => queue.push(events, users),
        }
    }

    pub fn backlog(&self) -> Backlog {
        match self {
            Spool::Log(wal) => Backlog { used: wal.backlog(), capacity: wal.max_bytes(), unit: "bytes" },
            Spool::Memory(queue) => {
                Backlog { used: queue.depth() as u64, capacity: queue.capacity() as u64, unit: "items" }
            }
        }
    }

    /// Why the spool is refusing events now: the log's disk failing its
    /// appends (within `recent`, unless one has succeeded since), or the log
    /// stopped. The in-memory queue only refuses when full.
    pub fn refusing(&self, recent: Duration) -> Option<String> {
        match self {
            Spool::Log(wal) => wal.refusing(recent),
            Spool::Memory(_) => None,
        }
    }

    /// Holds delivery to the store (maintenance, back-pressure tests).
    pub fn pause(&self) {
        match self {
            Spool::Log(wal) => wal.pause(),
            Spool::Memory(queue) => queue.pause(),
        }
    }

    pub fn resume(&self) {
        match self {
            Spool::Log(wal) => wal.resume(),
            Spool::Memory(queue) => queue.resume(),
        }
    }

    /// Stops taking events and waits up to `timeout` for the backlog to be
    /// stored. Returns what is left: kept on disk by the log, lost by the
    /// in-memory queue.
    pub fn drain(&self, timeout: Duration) -> u64 {
        match self {
            Spool::Log(wal) => wal.drain(timeout),
            Spool::Memory(queue) => queue.drain(timeout) as u64,
        }
    }
}
