//! The loop that ships the log to the event store.
//!
//! A store write starts as soon as anything durable is undelivered. It pulls
//! the log's records a chunk at a time ([`EventStore::write_stream`]), so
//! only one chunk of decoded events is in memory however large the write; it
//! takes what becomes durable meanwhile, up to `write_batch_events`, and
//! when it has caught up with the log it waits at most the delivery interval
//! (from its first record) for more. A store whose writes get much cheaper
//! from some size on ([`EventStore::fill_write_events`]; DuckDB: a row
//! group) has the write held open past the interval while records keep
//! coming fast enough to reach that size within the fill wait: the write
//! ends once it is reached, when records pause for a quarter interval,
//! when the fill wait is over, or when the backlog held reaches half the
//! log's bound. Events then show up a few seconds later under heavy load
//! and cost about half the CPU to store. The store may retry the write whole:
//! on failure it is started again from the acknowledged position, re-read
//! from the log, and a quarter as large (down to a chunk): a store short of
//! disk or memory for a large write (DuckDB on a nearly full disk it shares
//! with the log) may still take small ones, each of which lets the log free
//! what it held. Sizes double back with each write stored. Only after the
//! store confirmed the write does the acknowledged position move and
//! segments wholly behind it get deleted. A
//! crash between the write and the move replays those records: the store's
//! uuid dedup makes the replay harmless.

use super::record::{self, Next};
use super::{segments, Shared, State};
use crate::queue::write_with_retry;
use leanloop_store::{Chunk, EventStore};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Take};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Events decoded from the log before they are handed to the store.
const CHUNK_EVENTS: usize = 8192;

/// Room for the record that takes a chunk past [`CHUNK_EVENTS`]: one
/// request's events, 1,000 at most by default.
const CHUNK_SLACK: usize = 1024;

/// Log bytes a chunk takes at most (past one record): large events fill
/// memory long before [`CHUNK_EVENTS`] of them are read. Ordinary events
/// (a few hundred bytes each) never reach it.
const CHUNK_BYTES: u64 = 32 << 20;

/// Log bytes one store write takes at most, for the same reason: a write
/// of `write_batch_events` large events would hold gigabytes uncommitted.
const WRITE_BYTES: u64 = 256 << 20;

pub struct Delivery {
    pub shared: Arc<Shared>,
    pub store: Arc<dyn EventStore>,
    pub batch_events: usize,
    pub interval: Duration,
    /// How a write is held past the interval to fill the store's cheapest
    /// size; `None`: never.
    pub fill: Option<Fill>,
    /// The log's end when this process opened it: records before it are a
    /// replay, which a dead process may already have stored.
    pub replay_end: u64,
}

/// A store's cheapest write size and how long, and with how much backlog,
/// a write may be held open to reach it.
pub struct Fill {
    pub events: usize,
    pub wait: Duration,
    pub max_backlog: u64,
}

/// Where the loop reads: an open segment and the log position of its reader.
/// The reader never buffers past the durable end: bytes beyond it may still
/// be rewritten (a failed append is cut back and written again).
struct Cursor {
    start: u64,
    reader: BufReader<Take<File>>,
    position: u64,
}

/// Why the log could not be read at a position.
enum ReadFailure {
    /// The system refused a file operation (no file descriptors left,
    /// memory, an I/O error): tried again after a pause.
    Io(String),
    /// Bytes below the durable end do not form a record: the disk damaged
    /// them. Delivery sets them aside and goes on from the next record.
    Damaged(String),
    /// A whole record this build cannot decode (written by a newer one),
    /// or a position no segment holds: delivery stops rather than skip it.
    Unusable(String),
}

/// The pause before the log is read again after the system refused.
const READ_RETRY: Duration = Duration::from_secs(1);

impl Delivery {
    pub fn run(self) {
        let mut cursor: Option<Cursor> = None;
        let smallest = CHUNK_EVENTS.min(self.batch_events);
        let mut limit = self.batch_events;
        while let Some(from) = self.next_start() {
            let mut end = from;
            let mut failure = None;
            let mut tried = false;
            let mut write = || {
                if tried {
                    limit = (limit / 4).max(smallest);
                }
                tried = true;
                let mut records = Records::new(&self, &mut cursor, from, limit);
                let written = self.store.write_stream(&mut records);
                (end, failure) = (records.position, records.failure.take());
                written.map(|outcome| (outcome, records.waited))
            };
            let stored = write_with_retry(&mut write, &|| self.shared.lock().abandon);
            if !stored {
                return;
            }
            limit = (limit * 2).min(self.batch_events);
            self.acknowledge(end);
            let failure = match failure {
                Some(ReadFailure::Damaged(e)) => match self.skip_damage(end, &e) {
                    Ok(resume) => {
                        self.acknowledge(resume);
                        None
                    }
                    Err(failure) => Some(failure),
                },
                other => other,
            };
            match failure {
                None => {}
                Some(ReadFailure::Io(e)) => {
                    // Running out of file descriptors under a burst of
                    // connections passes: read again, from a fresh open.
                    tracing::warn!(error = %e, position = end, retry_in_ms = READ_RETRY.as_millis() as u64, "could not read the write-ahead log");
                    cursor = None;
                    metrics::counter!("leanloop_log_read_retries_total").increment(1);
                    let mut state = self.shared.lock();
                    state.read_retries += 1;
                    if state.abandon {
                        return;
                    }
                    drop(state);
                    self.shared.changed.notify_all();
                    std::thread::sleep(READ_RETRY);
                }
                Some(ReadFailure::Damaged(e) | ReadFailure::Unusable(e)) => return self.stop(end, &e),
            }
        }
        tracing::debug!("log delivery stopped: everything stored");
    }

    /// Stops delivering (the backlog grows, ingest turns 503, `/readyz`
    /// says why) rather than skip acknowledged data.
    fn stop(&self, position: u64, why: &str) {
        tracing::error!(error = %why, position, "write-ahead log unreadable; delivery stopped");
        self.shared.lock().failed = Some(format!("log unreadable at {position}: {why}"));
        self.shared.changed.notify_all();
    }

    /// Sets aside the damaged bytes at `position` and answers where whole
    /// records resume: the next record sealed to its own position within
    /// the segment, else the next segment's start, else the durable end.
    /// The damaged record is lost (its bytes are kept for whoever looks);
    /// the acknowledged records after it are not.
    /// A file the system refuses is tried again, as for any read.
    fn skip_damage(&self, position: u64, damage: &str) -> Result<u64, ReadFailure> {
        let (start, bound) = {
            let state = self.shared.lock();
            let start = state.segments.range(..=position).next_back().copied();
            let next = state.segments.range(position + 1..).next().copied();
            (start, next.map_or(state.end, |n| n.min(state.end)))
        };
        let unusable = |why: &str| ReadFailure::Unusable(format!("{damage}; {why}"));
        let start = start.ok_or_else(|| unusable("no segment holds this position"))?;
        if bound <= position {
            return Err(unusable("nothing follows the damage"));
        }
        let path = segments::segment_path(&self.shared.dir, start);
        let io = |e: std::io::Error| ReadFailure::Io(format!("{}: {e}", path.display()));
        let file = File::open(&path).map_err(io)?;
        let (from, to) = (position - start, bound - start);
        let resume = segments::next_whole_record(&file, start, from + 1, to).map_err(io)?.unwrap_or(to) + start;
        let saved = segments::save_damaged(&self.shared.dir, &file, start, from, resume - start);
        tracing::error!(
            segment = %path.display(),
            position,
            resumes = resume,
            saved = ?saved.as_ref().map(|p| p.display().to_string()).map_err(|e| e.to_string()),
            "write-ahead log damaged: its bytes, kept aside where the disk had room, are skipped"
        );
        metrics::counter!("leanloop_log_damaged_bytes_total").increment(resume - position);
        self.shared.lock().damaged_bytes += resume - position;
        Ok(resume)
    }

    /// Waits until something durable is undelivered and delivery is not
    /// paused; answers where it starts. `None` once the log is closing and
    /// everything is stored.
    fn next_start(&self) -> Option<u64> {
        let mut state = self.shared.lock();
        loop {
            if state.end > state.acked && !state.paused {
                return Some(state.acked);
            }
            if state.closing && state.reserved == 0 && state.end == state.acked {
                return None;
            }
            // Resuming, new records and shutdown all notify.
            state =
                self.shared.changed.wait_timeout(state, Duration::from_secs(1)).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    fn acknowledge(&self, position: u64) {
        let dir = self.shared.dir.clone();
        if let Err(e) = segments::write_acked(&dir, position) {
            // A full disk refuses even this small file. The delivered
            // segments are deleted all the same, or the disk would never
            // empty: a start takes the first segment left as delivered up to
            // its beginning, and the store's dedup absorbs what it replays.
            tracing::warn!(error = %e, "could not record the delivered log position");
        }
        let finished: Vec<u64> = {
            let mut state = self.shared.lock();
            let starts: Vec<u64> = state.segments.iter().copied().collect();
            let finished = starts.windows(2).filter(|w| w[1] <= position).map(|w| w[0]).collect();
            for start in &finished {
                state.segments.remove(start);
            }
            finished
        };
        // Retired before the position is published: whoever waits for the
        // backlog to empty (a drain, then a start in the same directory)
        // finds the files as they will stay.
        for start in finished {
            // A segment this process began holds only records sealed to
            // their positions; one from before may hold unsealed ones,
            // which would read as records wherever the file was reused.
            if let Err(e) = segments::retire(&dir, start, start >= self.replay_end) {
                tracing::warn!(error = %e, start, "could not retire a delivered log segment");
            }
        }
        let mut state = self.shared.lock();
        state.acked = position;
        let backlog = state.backlog();
        drop(state);
        // Marked first: a scrape that reads no backlog reads this delivery,
        // and so does a waiter woken by it.
        mark_delivered();
        metrics::gauge!("leanloop_log_backlog_bytes").set(backlog as f64);
        self.shared.changed.notify_all();
    }

    /// Reads the record at `position`, opening the segment that holds it.
    fn read_record(
        &self,
        cursor: &mut Option<Cursor>,
        position: u64,
        end: u64,
    ) -> Result<(record::Batch, u64), ReadFailure> {
        let start = {
            let state = self.shared.lock();
            let start = state.segments.range(..=position).next_back();
            *start.ok_or_else(|| ReadFailure::Unusable("no segment holds this position".into()))?
        };
        if cursor.as_ref().is_none_or(|c| c.start != start || c.position != position) {
            let path: PathBuf = segments::segment_path(&self.shared.dir, start);
            let io = |e: std::io::Error| ReadFailure::Io(format!("{}: {e}", path.display()));
            let mut file = File::open(&path).map_err(io)?;
            file.seek(SeekFrom::Start(position - start)).map_err(io)?;
            *cursor = Some(Cursor { start, reader: BufReader::with_capacity(1 << 20, file.take(0)), position });
        }
        let c = cursor.as_mut().expect("cursor was just opened");
        let buffered = c.reader.buffer().len() as u64;
        c.reader.get_mut().set_limit(end - position - buffered);
        match record::read_next(&mut c.reader, position).map_err(|e| ReadFailure::Io(e.to_string()))? {
            Next::Record(payload, size) => {
                c.position += size;
                let batch = record::decode(&payload).map_err(ReadFailure::Unusable)?;
                Ok((batch, size))
            }
            Next::End | Next::Torn => {
                Err(ReadFailure::Damaged("record below the durable end is missing or damaged".into()))
            }
        }
    }
}

/// One store write's records, read from the log a chunk at a time.
struct Records<'a> {
    delivery: &'a Delivery,
    cursor: &'a mut Option<Cursor>,
    /// Most events in this write (see [`Delivery::run`]).
    limit: usize,
    /// Log position the write started from.
    from: u64,
    /// Log position just past the last record handed out.
    position: u64,
    events: usize,
    /// When the first record was read: the write waits for more until
    /// the interval after it.
    first_read: Option<Instant>,
    /// When the last record was read: a write held to fill ends when
    /// records pause.
    last_read: Instant,
    /// Why reading stopped early, when the log could not be read.
    failure: Option<ReadFailure>,
    /// How long the write waited for records to arrive: not the store's
    /// time (`leanloop_store_write_seconds` leaves it out).
    waited: Duration,
}

impl<'a> Records<'a> {
    fn new(delivery: &'a Delivery, cursor: &'a mut Option<Cursor>, from: u64, limit: usize) -> Records<'a> {
        Records {
            delivery,
            cursor,
            limit,
            from,
            position: from,
            events: 0,
            first_read: None,
            last_read: Instant::now(),
            failure: None,
            waited: Duration::ZERO,
        }
    }

    /// The durable end once it is past what was read; `None` when the chunk
    /// being filled should go to the store as it is: delivery paused, the
    /// log closing, or the write's wait for more over (from then on a chunk
    /// takes only what is already durable, and an empty one ends the write).
    fn more(&mut self) -> Option<u64> {
        let delivery = self.delivery;
        let shared = &delivery.shared;
        let mut state = shared.lock();
        loop {
            if state.paused {
                return None;
            }
            if state.end > self.position {
                return Some(state.end);
            }
            let left = self.wait_left(&state);
            if state.closing || left.is_zero() {
                return None;
            }
            let waiting = Instant::now();
            state = shared.changed.wait_timeout(state, left).unwrap_or_else(|p| p.into_inner()).0;
            self.waited += waiting.elapsed();
        }
    }

    /// How much longer the write may wait for its next record: the rest
    /// of the interval, then, while it is being held to fill, the rest of
    /// a quarter interval since the last record (within the fill wait).
    fn wait_left(&self, state: &State) -> Duration {
        let Some(first) = self.first_read else { return Duration::ZERO };
        let elapsed = first.elapsed();
        let interval_left = self.delivery.interval.saturating_sub(elapsed);
        if !interval_left.is_zero() {
            return interval_left;
        }
        let Some(fill) = &self.delivery.fill else { return Duration::ZERO };
        // The pace so far must reach the size within the fill wait, or
        // holding would only delay a write that stays small.
        let on_pace = self.events as f64 * fill.wait.as_secs_f64() >= fill.events as f64 * elapsed.as_secs_f64();
        if self.events >= fill.events || !on_pace || state.backlog() >= fill.max_backlog {
            return Duration::ZERO;
        }
        let pause_left = (self.delivery.interval / 4).saturating_sub(self.last_read.elapsed());
        pause_left.min(fill.wait.saturating_sub(elapsed))
    }
}

impl Iterator for Records<'_> {
    type Item = Chunk;

    fn next(&mut self) -> Option<Chunk> {
        // Sized for a full chunk: growing it moved every event again.
        let mut chunk = Chunk { events: Vec::with_capacity(CHUNK_EVENTS + CHUNK_SLACK), ..Chunk::default() };
        let chunk_start = self.position;
        while self.failure.is_none()
            && chunk.events.len() < CHUNK_EVENTS
            && self.position - chunk_start < CHUNK_BYTES
            && self.events < self.limit
            && self.position - self.from < WRITE_BYTES
        {
            // A chunk waits for records until it is full or the write's
            // interval is up: every chunk is one append, whose fixed cost
            // (DuckDB plans a scan of each record batch) would otherwise be
            // paid per group commit when events trickle in.
            let Some(end) = self.more() else { break };
            match self.delivery.read_record(self.cursor, self.position, end) {
                Ok((batch, size)) => {
                    chunk.replayed |= self.position < self.delivery.replay_end;
                    self.last_read = Instant::now();
                    self.first_read.get_or_insert(self.last_read);
                    self.position += size;
                    self.events += batch.events.len();
                    chunk.events.extend(batch.events);
                    chunk.users.extend(batch.users);
                }
                Err(e) => self.failure = Some(e),
            }
        }
        (!chunk.is_empty()).then_some(chunk)
    }
}

/// Publishes now as the time of the last delivery. With the backlog, it
/// tells how long delivery has been stuck: `time() - it` while
/// `leanloop_log_backlog_bytes > 0`. A start counts as a delivery, so a
/// server that has not delivered since does not look stuck since 1970.
pub(super) fn mark_delivered() {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    metrics::gauge!("leanloop_log_last_delivery_timestamp_seconds").set(now.as_secs_f64());
}
