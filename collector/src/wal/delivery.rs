//! The loop that ships the log to the event store.
//!
//! It reads records from the acknowledged position on, gathers them into one
//! store write (up to `write_batch_events`, or whatever arrived within the
//! delivery interval), retries that write until the store accepts it, and
//! only then moves the acknowledged position and deletes segments wholly
//! behind it. A crash between the write and the move replays those records:
//! the store's uuid dedup makes the replay harmless.

use super::record::{self, Next};
use super::{segments, Shared};
use crate::queue::write_with_retry;
use leanloop_core::{Event, UserUpdate};
use leanloop_store::EventStore;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Take};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Delivery {
    pub shared: Arc<Shared>,
    pub store: Arc<dyn EventStore>,
    pub batch_events: usize,
    pub interval: Duration,
    /// The log's end when this process opened it: records before it are a
    /// replay, which a dead process may already have stored.
    pub replay_end: u64,
}

/// Where the loop reads: an open segment and the log position of its reader.
/// The reader never buffers past the durable end: bytes beyond it may still
/// be rewritten (a failed append is cut back and written again).
struct Cursor {
    start: u64,
    reader: BufReader<Take<File>>,
    position: u64,
}

struct Pending {
    events: Vec<Event>,
    users: Vec<UserUpdate>,
    /// Log position of the first record gathered.
    start: u64,
    /// Log position just past the last record gathered.
    end: u64,
    since: Option<Instant>,
}

impl Delivery {
    pub fn run(self) {
        let mut position = self.shared.lock().acked;
        let mut cursor: Option<Cursor> = None;
        let mut pending =
            Pending { events: Vec::new(), users: Vec::new(), start: position, end: position, since: None };
        loop {
            // Gather what is durable, up to one batch.
            let end = self.shared.lock().end;
            while position < end && pending.events.len() < self.batch_events {
                match self.read_record(&mut cursor, position, end) {
                    Ok((batch, size)) => {
                        if pending.since.is_none() {
                            pending.start = position;
                        }
                        position += size;
                        pending.events.extend(batch.events);
                        pending.users.extend(batch.users);
                        pending.end = position;
                        pending.since.get_or_insert_with(Instant::now);
                    }
                    Err(e) => {
                        // Unreadable below the durable end: the disk lied. Stop
                        // delivering (the backlog grows, ingest turns 503)
                        // rather than skip acknowledged data.
                        tracing::error!(error = %e, position, "write-ahead log unreadable; delivery stopped");
                        self.shared.lock().failed = Some(format!("log unreadable at {position}: {e}"));
                        self.shared.changed.notify_all();
                        return;
                    }
                }
            }

            let due = pending.since.is_some_and(|since| {
                pending.events.len() >= self.batch_events
                    || since.elapsed() >= self.interval
                    || self.shared.lock().closing
            });
            if due && !self.shared.lock().paused {
                if !self.deliver(&mut pending) {
                    return;
                }
                continue;
            }

            let state = self.shared.lock();
            if state.closing && state.reserved == 0 && state.end == pending.end && pending.since.is_none() {
                tracing::debug!("log delivery stopped: everything stored");
                return;
            }
            if state.end == position || state.paused {
                // Resuming, new records and shutdown all notify; the timeout
                // only ends the interval of what is pending.
                let wait = match pending.since {
                    Some(since) if !state.paused => {
                        self.interval.saturating_sub(since.elapsed()).max(Duration::from_millis(1))
                    }
                    _ => Duration::from_secs(1),
                };
                let _unused = self.shared.changed.wait_timeout(state, wait).unwrap_or_else(|p| p.into_inner());
            }
        }
    }

    /// Stores what is pending and acknowledges it. False when the process is
    /// giving up (shutdown timed out); the records stay in the log.
    fn deliver(&self, pending: &mut Pending) -> bool {
        let abandon = || self.shared.lock().abandon;
        let replayed = pending.start < self.replay_end;
        if !write_with_retry(self.store.as_ref(), &pending.events, &pending.users, replayed, &abandon) {
            return false;
        }
        pending.events.clear();
        pending.users.clear();
        pending.since = None;
        self.acknowledge(pending.end);
        true
    }

    fn acknowledge(&self, position: u64) {
        let dir = self.shared.dir.clone();
        let persisted = segments::write_acked(&dir, position);
        if let Err(e) = &persisted {
            // In memory the room is freed anyway; the next start replays more.
            tracing::warn!(error = %e, "could not record the delivered log position");
        }
        let mut state = self.shared.lock();
        state.acked = position;
        let finished: Vec<u64> = if persisted.is_ok() {
            let starts: Vec<u64> = state.segments.iter().copied().collect();
            starts.windows(2).filter(|w| w[1] <= position).map(|w| w[0]).collect()
        } else {
            Vec::new()
        };
        for start in &finished {
            state.segments.remove(start);
        }
        let backlog = state.backlog();
        drop(state);
        self.shared.changed.notify_all();
        metrics::gauge!("leanloop_log_backlog_bytes").set(backlog as f64);
        for start in finished {
            if let Err(e) = std::fs::remove_file(segments::segment_path(&dir, start)) {
                tracing::warn!(error = %e, start, "could not delete a delivered log segment");
            }
        }
    }

    /// Reads the record at `position`, opening the segment that holds it.
    fn read_record(
        &self,
        cursor: &mut Option<Cursor>,
        position: u64,
        end: u64,
    ) -> Result<(record::Batch, u64), String> {
        let start = {
            let state = self.shared.lock();
            *state.segments.range(..=position).next_back().ok_or("no segment holds this position")?
        };
        if cursor.as_ref().is_none_or(|c| c.start != start || c.position != position) {
            let path: PathBuf = segments::segment_path(&self.shared.dir, start);
            let mut file = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            file.seek(SeekFrom::Start(position - start)).map_err(|e| e.to_string())?;
            *cursor = Some(Cursor { start, reader: BufReader::with_capacity(1 << 20, file.take(0)), position });
        }
        let c = cursor.as_mut().expect("cursor was just opened");
        let buffered = c.reader.buffer().len() as u64;
        c.reader.get_mut().set_limit(end - position - buffered);
        match record::read_next(&mut c.reader).map_err(|e| e.to_string())? {
            Next::Record(payload, size) => {
                c.position += size;
                let batch = record::decode(&payload)?;
                Ok((batch, size))
            }
            Next::End | Next::Torn => Err("record below the durable end is missing or damaged".into()),
        }
    }
}
