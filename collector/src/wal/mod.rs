//! The durable write-ahead log in front of the event store.
//!
//! Guarantee: a request is answered 2xx only after its events are in the log
//! and fsync'd. One writer thread appends with group commit (many requests,
//! one fsync); one delivery thread ships the log to the store and moves the
//! acknowledged position only after the store confirmed the write. On start
//! the unacknowledged tail is replayed; the store's uuid dedup turns replays
//! and client retries into no-ops, so every acknowledged event is stored
//! exactly once.
//!
//! Bounds: the backlog (written but not yet delivered, plus appends waiting
//! for the writer) is capped in bytes. An append that does not fit is refused
//! whole with 503 and Retry-After; a disk error is a 503 too, never a silent
//! drop. Only one process may use a log directory at a time.

mod delivery;
mod record;
mod segments;
mod spare;
mod writer;

pub use segments::Reserve;

use crate::IngestError;
use leanloop_core::{Event, UserUpdate};
use leanloop_store::EventStore;
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How the log is laid out and how it delivers.
#[derive(Debug, Clone)]
pub struct WalOptions {
    pub dir: PathBuf,
    /// Largest backlog, in bytes, before appends are refused.
    pub max_bytes: u64,
    /// Size at which the writer starts a new segment file.
    pub segment_bytes: u64,
    /// Free space on its disk the log leaves to the event store.
    pub reserve: segments::Reserve,
    /// Most events per store write.
    pub batch_events: usize,
    /// Longest a delivered record waits for more to share its store write.
    pub interval: Duration,
    /// Longest a write stays open, under sustained load, to reach the
    /// store's [`EventStore::fill_write_events`].
    pub fill_wait: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log {dir}: {source}")]
    Io { dir: PathBuf, source: std::io::Error },
}

pub struct Wal {
    shared: Arc<Shared>,
    appends: Mutex<Option<mpsc::Sender<writer::Append>>>,
    max_bytes: u64,
    _lock: File,
}

/// State the HTTP side, the writer and the delivery loop share.
pub(crate) struct Shared {
    dir: PathBuf,
    state: Mutex<State>,
    changed: Condvar,
}

struct State {
    /// Log position up to which everything is written and synced.
    end: u64,
    /// Log position up to which the store confirmed everything.
    acked: u64,
    /// Bytes handed to the writer and not yet written.
    reserved: u64,
    /// Start positions of the segment files on disk.
    segments: BTreeSet<u64>,
    /// Set when the log cannot be written or read; appends answer 503.
    failed: Option<String>,
    /// The last append round's failure (a full disk, say), until one succeeds.
    write_error: Option<(String, Instant)>,
    closing: bool,
    /// Set when shutdown stops waiting: delivery gives up its retries.
    abandon: bool,
    paused: bool,
    /// Segments begun in a delivered segment's file.
    reused: u64,
    /// Reads of the log the system refused, each tried again.
    read_retries: u64,
    /// Damaged log bytes set aside and skipped.
    damaged_bytes: u64,
}

impl State {
    fn backlog(&self) -> u64 {
        self.end - self.acked + self.reserved
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Wal {
    /// Opens (or creates) the log in `options.dir`, cuts a torn tail left by
    /// a crash, and starts the writer and the delivery loop, which first
    /// replays whatever the store had not confirmed.
    pub fn open(options: WalOptions, store: Arc<dyn EventStore>) -> Result<Wal, WalError> {
        let dir = options.dir.clone();
        let io = |source| WalError::Io { dir: dir.clone(), source };
        let lock = segments::lock(&dir).map_err(io)?;
        let (writer_file, start, len, acked, starts) = recover(&dir).map_err(io)?;
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            state: Mutex::new(State {
                end: start + len,
                acked,
                reserved: 0,
                segments: starts,
                failed: None,
                write_error: None,
                closing: false,
                abandon: false,
                read_retries: 0,
                damaged_bytes: 0,
                paused: false,
                reused: 0,
            }),
            changed: Condvar::new(),
        });
        let replay = start + len - acked;
        if replay > 0 {
            tracing::info!(bytes = replay, "replaying the write-ahead log's undelivered tail");
        }
        metrics::gauge!("leanloop_log_capacity_bytes").set(options.max_bytes as f64);
        metrics::gauge!("leanloop_log_backlog_bytes").set(replay as f64);
        delivery::mark_delivered();

        let (tx, rx) = mpsc::channel();
        let writer = writer::Writer {
            shared: shared.clone(),
            file: writer_file,
            start,
            len,
            allocated: len,
            segment_bytes: options.segment_bytes.max(1),
            roll_at: segments::roll_at(&dir, options.segment_bytes.max(1), len, options.reserve),
            spare: spare::Spare::start(&dir, options.segment_bytes.max(1), options.reserve).map_err(io)?,
            reserve: options.reserve,
        };
        std::thread::Builder::new().name("log-writer".into()).spawn(move || writer.run(rx)).map_err(io)?;
        let delivery = delivery::Delivery {
            shared: shared.clone(),
            batch_events: options.batch_events.max(1),
            interval: options.interval,
            fill: store.fill_write_events().map(|events| delivery::Fill {
                events,
                wait: options.fill_wait,
                // Holding keeps bytes in the log: never so many that
                // ingest would be refused for it.
                max_backlog: options.max_bytes / 2,
            }),
            store,
            replay_end: start + len,
        };
        std::thread::Builder::new().name("log-delivery".into()).spawn(move || delivery.run()).map_err(io)?;
        Ok(Wal { shared, appends: Mutex::new(Some(tx)), max_bytes: options.max_bytes, _lock: lock })
    }

    /// Appends one request's events durably; returns once they are synced.
    pub async fn append(&self, events: &[Event], users: &[UserUpdate]) -> Result<(), IngestError> {
        if events.is_empty() && users.is_empty() {
            return Ok(());
        }
        let record = record::encode(events, users).map_err(|e| IngestError::LogUnavailable(e.to_string()))?;
        let size = record.len() as u64;
        // Recovery reads a longer record as damage: never write one. One
        // larger than the log could never be taken: retrying cannot help.
        if record.len() - record::HEADER_BYTES > record::MAX_PAYLOAD_BYTES || size > self.max_bytes {
            let limit = self.max_bytes.min((record::HEADER_BYTES + record::MAX_PAYLOAD_BYTES) as u64);
            return Err(IngestError::LogRecordTooLarge { size, limit });
        }
        let (done, answer) = oneshot::channel();
        {
            let mut state = self.shared.lock();
            if let Some(reason) = &state.failed {
                return Err(IngestError::LogUnavailable(reason.clone()));
            }
            if state.closing {
                return Err(IngestError::ShuttingDown);
            }
            if state.backlog() + size > self.max_bytes {
                metrics::counter!("leanloop_log_full_total").increment(1);
                return Err(IngestError::QueueFull { retry_after_secs: 1 });
            }
            state.reserved += size;
            let appends = self.appends.lock().unwrap_or_else(|p| p.into_inner());
            let sent = appends.as_ref().map(|tx| tx.send(writer::Append { record, done }));
            if !matches!(sent, Some(Ok(()))) {
                state.reserved -= size;
                return Err(IngestError::ShuttingDown);
            }
        }
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(IngestError::LogUnavailable(reason)),
            Err(_) => Err(IngestError::ShuttingDown),
        }
    }

    /// Bytes written or waiting to be written and not yet delivered.
    pub fn backlog(&self) -> u64 {
        self.shared.lock().backlog()
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Why appends are being refused, if the log stopped taking them or its
    /// last append failed within `recent` (no later one succeeded).
    pub fn refusing(&self, recent: Duration) -> Option<String> {
        let state = self.shared.lock();
        let failed_lately = state.write_error.as_ref().filter(|(_, at)| at.elapsed() < recent);
        state.failed.clone().or_else(|| failed_lately.map(|(reason, _)| reason.clone()))
    }

    pub fn pause(&self) {
        self.set_paused(true);
    }

    pub fn resume(&self) {
        self.set_paused(false);
    }

    fn set_paused(&self, paused: bool) {
        self.shared.lock().paused = paused;
        self.shared.changed.notify_all();
    }

    /// Refuses new appends and waits up to `timeout` for the backlog to be
    /// delivered. What is left stays in the log for the next start. Returns
    /// the bytes left.
    pub fn drain(&self, timeout: Duration) -> u64 {
        self.appends.lock().unwrap_or_else(|p| p.into_inner()).take();
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        state.closing = true;
        state.paused = false;
        self.shared.changed.notify_all();
        while state.backlog() > 0 && state.failed.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self.shared.changed.wait_timeout(state, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        state.abandon = true;
        let left = state.backlog();
        drop(state);
        self.shared.changed.notify_all();
        left
    }
}

/// Bytes a log directory holds that its store has not confirmed, read
/// without changing anything: `0` for a directory with no log in it.
pub fn undelivered(dir: &Path) -> std::io::Result<u64> {
    let found = match segments::list(dir) {
        Ok(found) => found,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let Some((&last, last_path)) = found.iter().next_back() else { return Ok(0) };
    let first = *found.keys().next().expect("at least one segment");
    let acked = segments::read_acked(dir)?.unwrap_or(first).max(first);
    let file = File::open(last_path)?;
    let file_len = file.metadata()?.len();
    let from = acked.saturating_sub(last).min(file_len);
    let end = last + kept_len(&file, last_path, last, from, file_len)?;
    Ok(end.saturating_sub(acked))
}

/// How much of the last segment (`file`, at `last`) the log keeps, scanning
/// from `from`: its whole records, and damage followed by whole records,
/// which delivery sets aside when it meets them. Zeros to the end are the
/// rest of a segment filled ahead; anything else after the last whole
/// record is one a crash tore, what a reused segment held before, or
/// damage to the log's end.
fn kept_len(file: &File, path: &Path, last: u64, from: u64, file_len: u64) -> std::io::Result<u64> {
    let mut len = segments::valid_len(file, last, from)?;
    while len < file_len {
        let search_from = match segments::zeros_at(file, len)? {
            // A record's first bytes are its length, little-endian and not
            // zero: one of its first four bytes is the first that is not.
            true => match segments::next_nonzero(file, len, file_len)? {
                Some(at) => at.saturating_sub(3).max(len + 1),
                None => break,
            },
            false => len + 1,
        };
        let Some(next) = segments::next_whole_record(file, last, search_from, file_len)? else { break };
        tracing::error!(
            segment = %path.display(),
            damaged = len,
            resumes = next,
            "the log holds damaged bytes followed by whole records; its delivery sets the damaged bytes aside"
        );
        len = segments::valid_len(file, last, next)?;
    }
    Ok(len)
}

/// Finds the segments, cuts a torn tail off the last one (keeping whole
/// records that follow damage, for delivery to skip it), and returns the
/// file to append to, its start and valid length, the acknowledged position
/// and every segment start.
fn recover(dir: &Path) -> std::io::Result<(File, u64, u64, u64, BTreeSet<u64>)> {
    let found = segments::list(dir)?;
    let acked_on_disk = segments::read_acked(dir)?;
    let Some((&last, last_path)) = found.iter().next_back() else {
        let start = acked_on_disk.unwrap_or(0);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(segments::segment_path(dir, start))?;
        segments::sync_dir(dir)?;
        return Ok((file, start, 0, start, BTreeSet::from([start])));
    };
    let first = *found.keys().next().expect("at least one segment");
    // Segments before the first on disk were delivered and deleted.
    let acked = acked_on_disk.unwrap_or(first).max(first);
    let file = OpenOptions::new().read(true).write(true).open(last_path)?;
    let file_len = file.metadata()?.len();
    let scan_from = acked.saturating_sub(last).min(file_len);
    let len = kept_len(&file, last_path, last, scan_from, file_len)?;
    if len < file_len {
        // A warning: a record a crash tore was never acknowledged, but
        // damage to the log's end looks the same and loses what it held.
        if !segments::zeros_at(&file, len)? {
            tracing::warn!(
                segment = %last_path.display(),
                valid = len,
                "cutting the log after its last whole record (a record torn by a crash, a reused segment's old \
                 data, or damage to the log's end)"
            );
        }
        file.set_len(len)?;
        file.sync_all()?;
    }
    let acked = acked.min(last + len);
    Ok((file, last, len, acked, found.keys().copied().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use leanloop_store::{Chunk, Dialect, EventFilter, Rows, Select, StoreError, UserRecord, WriteOutcome};
    use std::io::Write;

    /// A record as the writer lays it down at log position `at`.
    fn record(n: u128, at: u64) -> Vec<u8> {
        let mut event = record::tests::event(n);
        event.properties = format!(r#"{{"n":{n}}}"#);
        let mut bytes = record::encode(&[event], &[]).unwrap();
        record::seal(&mut bytes, at);
        bytes
    }

    #[test]
    fn recovery_cuts_a_torn_tail_and_resumes_from_the_acknowledged_position() {
        let dir = tempfile::tempdir().unwrap();
        let a = record(1, 0);
        let b = record(2, a.len() as u64);
        let whole = (a.len() + b.len()) as u64;
        let mut file = File::create(segments::segment_path(dir.path(), 0)).unwrap();
        file.write_all(&a).unwrap();
        file.write_all(&b).unwrap();
        file.write_all(&record(3, whole)[..10]).unwrap(); // a crash mid-append
        drop(file);
        segments::write_acked(dir.path(), a.len() as u64).unwrap();

        let (_file, start, len, acked, starts) = recover(dir.path()).unwrap();
        assert_eq!((start, len, acked), (0, whole, a.len() as u64));
        assert_eq!(starts, BTreeSet::from([0]));
        let on_disk = std::fs::metadata(segments::segment_path(dir.path(), 0)).unwrap().len();
        assert_eq!(on_disk, whole, "the torn record is cut off");
    }

    /// Two segment files: events 1–4 from position 0, then 5–6, each a
    /// record sealed to its position; `damage` may change a record's bytes
    /// (by event number). Answers the records' bytes and the second
    /// segment's start.
    fn damaged_log(dir: &Path, damage: impl Fn(u128, &mut Vec<u8>)) -> (Vec<Vec<u8>>, u64) {
        std::fs::create_dir_all(dir).unwrap();
        let (mut written, mut at, mut second) = (Vec::new(), 0u64, 0);
        for events in [1..=4u128, 5..=6] {
            second = at;
            let mut file = File::create(segments::segment_path(dir, at)).unwrap();
            for n in events {
                let mut bytes = record(n, at);
                at += bytes.len() as u64;
                damage(n, &mut bytes);
                file.write_all(&bytes).unwrap();
                written.push(bytes);
            }
            // Rolled: the rest of the file was filled ahead.
            file.write_all(&[0; 4096]).unwrap();
        }
        (written, second)
    }

    /// The numbers (`record`'s `n`) of the events `store` holds, in order.
    fn stored_numbers(store: &Arc<dyn EventStore>) -> Vec<u64> {
        let mut stored: Vec<u64> = store
            .recent(&EventFilter::project(1), 1000)
            .unwrap()
            .iter()
            .map(|e| serde_json::from_str::<serde_json::Value>(&e.properties).unwrap()["n"].as_u64().unwrap())
            .collect();
        stored.sort();
        stored
    }

    #[test]
    fn damaged_records_are_set_aside_and_delivery_goes_on() {
        // Record 2's payload has a bit flipped; record 3's length is
        // garbage, so only a search finds where record 4 begins; record 5,
        // the last segment's first, is damaged where a crash could have
        // torn it, but a whole record follows: the start keeps the log.
        for (case, damage) in
            [("a flipped bit", 2usize), ("a garbled length", 3), ("the last segment's first record", 5)]
        {
            let dir = tempfile::tempdir().unwrap();
            let (store, options) = duckdb_log(dir.path(), 1 << 20);
            let (written, second) = damaged_log(&options.dir, |n, bytes| {
                if n == damage as u128 {
                    match n {
                        2 => *bytes.last_mut().unwrap() ^= 1,
                        3 => bytes[..4].copy_from_slice(&0x00ff_ff00u32.to_le_bytes()),
                        _ => bytes[20] ^= 0xff,
                    }
                }
            });
            // What a start on another log directory is refused over counts
            // the records after the damage too.
            let total = written.iter().map(Vec::len).sum::<usize>() as u64;
            assert_eq!(undelivered(&options.dir).unwrap(), total, "{case}");
            let wal = Wal::open(options.clone(), store.clone()).unwrap();
            assert_eq!(wal.drain(Duration::from_secs(60)), 0, "{case}");
            assert_eq!(wal.shared.lock().failed, None, "{case}");
            assert_eq!(wal.shared.lock().damaged_bytes, written[damage - 1].len() as u64, "{case}");
            let stored = stored_numbers(&store);
            let expected: Vec<u64> = (1..=6).filter(|&n| n != damage as u64).collect();
            assert_eq!(stored, expected, "{case}: every whole record is delivered");
            let start = if damage == 5 { second } else { 0 };
            let offset = written[..damage - 1].iter().map(Vec::len).sum::<usize>() as u64 - start;
            let saved = std::fs::read(options.dir.join(format!("damaged-{start:020}-{offset}.bin"))).unwrap();
            assert_eq!(saved, written[damage - 1], "{case}: the damaged record's bytes are kept");
        }
    }

    #[test]
    fn zeroed_blocks_before_whole_records_are_damage_not_the_end() {
        // The disk lost two blocks of the last segment (they read as
        // zeros), and whole records follow: not the rest filled ahead.
        let dir = tempfile::tempdir().unwrap();
        let (store, options) = duckdb_log(dir.path(), 1 << 20);
        std::fs::create_dir_all(&options.dir).unwrap();
        let (mut bytes, mut starts) = (Vec::new(), Vec::new());
        for n in 1..=200u128 {
            starts.push(bytes.len());
            bytes.extend(record(n, bytes.len() as u64));
        }
        let zeroed = 8192;
        assert!(bytes.len() > 2 * zeroed, "records after the zeros");
        bytes[..zeroed].fill(0);
        bytes.extend([0; 4096]);
        std::fs::write(segments::segment_path(&options.dir, 0), &bytes).unwrap();
        let wal = Wal::open(options.clone(), store.clone()).unwrap();
        assert_eq!(wal.drain(Duration::from_secs(60)), 0);
        let first_whole = starts.iter().position(|&s| s >= zeroed).unwrap();
        assert_eq!(wal.shared.lock().damaged_bytes, starts[first_whole] as u64);
        assert_eq!(stored_numbers(&store), (first_whole as u64 + 1..=200).collect::<Vec<_>>());
    }

    #[test]
    fn recovery_cuts_what_a_reused_segment_held_before() {
        let dir = tempfile::tempdir().unwrap();
        // The file as its first use, at position 0, left it: records of
        // one size back to back.
        let mut earlier = Vec::new();
        for n in 1..=9 {
            earlier.extend(record(n, earlier.len() as u64));
        }
        // Reused as the segment at 1 MiB, with one new record of the same
        // size written over its start: the next old record begins exactly
        // where a new one would, whole but for its seal.
        let start = 1 << 20;
        let new = record(0, start);
        let mut file_bytes = earlier.clone();
        file_bytes[..new.len()].copy_from_slice(&new);
        assert_eq!(&file_bytes[new.len()..2 * new.len()], &earlier[new.len()..2 * new.len()]);
        std::fs::write(segments::segment_path(dir.path(), start), &file_bytes).unwrap();
        segments::write_acked(dir.path(), start).unwrap();

        let (file, found_start, len, acked, _) = recover(dir.path()).unwrap();
        assert_eq!((found_start, len, acked), (start, new.len() as u64, start));
        assert_eq!(file.metadata().unwrap().len(), new.len() as u64, "the old records are cut off");
    }

    #[test]
    fn delivered_segments_are_reused_and_what_they_held_is_never_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let (store, options) = duckdb_log(dir.path(), 16 * 1024);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let wal = Wal::open(options.clone(), store.clone()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut sent = 0u128;
        // Each segment is delivered long before the next fills, so rolls
        // find one waiting; keep going past a few reuses.
        while wal.shared.lock().reused < 3 {
            assert!(Instant::now() < deadline, "no delivered segment was reused ({sent} appends)");
            runtime.block_on(wal.append(&[record::tests::event(sent)], &[])).unwrap();
            sent += 1;
        }
        assert_eq!(wal.drain(Duration::from_secs(60)), 0);
        let end = wal.shared.lock().end;
        drop(wal);
        // Reopened: the active segment's old records, past its new ones,
        // are cut rather than replayed (they are sealed to positions they
        // no longer hold): the log ends where it ended.
        let wal = Wal::open(options.clone(), store.clone()).unwrap();
        assert_eq!(wal.shared.lock().end, end);
        runtime.block_on(wal.append(&[record::tests::event(sent)], &[])).unwrap();
        assert_eq!(wal.drain(Duration::from_secs(60)), 0);
        assert_eq!(store.count(&EventFilter::project(1)).unwrap() as u128, sent + 1);
        let on_disk =
            segments::list(&options.dir).unwrap().len() + usize::from(segments::recycled_ready(&options.dir, 0));
        assert!(on_disk <= 3, "delivered segments are deleted or kept for reuse, one at a time: {on_disk} files");
    }

    fn duckdb_log(dir: &Path, segment_bytes: u64) -> (Arc<dyn EventStore>, WalOptions) {
        let store: Arc<dyn EventStore> = Arc::new(
            leanloop_store::duckdb::DuckDbStore::open(&dir.join("events.duckdb"), &Default::default()).unwrap(),
        );
        let options = WalOptions {
            dir: dir.join("log"),
            max_bytes: 1 << 30,
            segment_bytes,
            reserve: segments::Reserve { min_free: 0 },
            batch_events: 1 << 20,
            interval: Duration::from_millis(5),
            fill_wait: Duration::from_secs(10),
        };
        (store, options)
    }

    #[test]
    fn delivered_segments_are_deleted_even_when_the_position_cannot_be_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let (store, options) = duckdb_log(dir.path(), 16 * 1024);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let wal = Wal::open(options.clone(), store.clone()).unwrap();
        // What a full disk does to the small file that records the position.
        std::fs::create_dir(options.dir.join("acked.tmp")).unwrap();
        let sent = 400u128;
        for i in 0..sent {
            runtime.block_on(wal.append(&[record::tests::event(i)], &[])).unwrap();
        }
        assert_eq!(wal.drain(Duration::from_secs(60)), 0);
        let segments = segments::list(&options.dir).unwrap().len();
        assert!(segments <= 2, "delivered segments are deleted: {segments} left");
        drop(wal);
        // The start replays from the first segment left, stored once.
        let wal = Wal::open(options, store.clone()).unwrap();
        assert_eq!(wal.drain(Duration::from_secs(60)), 0);
        assert_eq!(store.count(&EventFilter::project(1)).unwrap() as u128, sent);
    }

    #[test]
    fn a_segment_that_cannot_be_opened_for_a_while_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        // No disk has room for a spare segment this large: the first append
        // would otherwise roll onto a spare ready by then, under the name
        // of the file moved away, and find nothing missing.
        let (store, options) = duckdb_log(dir.path(), 1 << 50);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let wal = Wal::open(options.clone(), store.clone()).unwrap();
        let segment = segments::segment_path(&options.dir, 0);
        let away = options.dir.join("away");
        std::fs::rename(&segment, &away).unwrap();
        runtime.block_on(wal.append(&[record::tests::event(1)], &[])).unwrap();
        // Delivery meets the missing file, as it meets no file descriptors
        // left, and keeps trying rather than giving up on the log.
        let (state, waited) = wal
            .shared
            .changed
            .wait_timeout_while(wal.shared.lock(), Duration::from_secs(30), |s| {
                s.read_retries == 0 && s.failed.is_none()
            })
            .unwrap();
        assert!(
            !waited.timed_out() && state.failed.is_none(),
            "delivery never retried the missing segment: failed {:?}, acked {} of {}, stored {:?}",
            state.failed,
            state.acked,
            state.end,
            store.count(&EventFilter::project(1))
        );
        drop(state);
        assert_eq!(store.count(&EventFilter::project(1)).unwrap(), 0);
        assert_eq!(wal.shared.lock().failed, None);
        std::fs::rename(&away, &segment).unwrap();
        assert_eq!(wal.drain(Duration::from_secs(60)), 0);
        assert_eq!(store.count(&EventFilter::project(1)).unwrap(), 1);
    }

    #[test]
    fn recovery_cuts_the_zeros_after_the_last_record() {
        let dir = tempfile::tempdir().unwrap();
        let a = record(1, 0);
        let mut file = File::create(segments::segment_path(dir.path(), 0)).unwrap();
        file.write_all(&a).unwrap();
        file.write_all(&vec![0; 100_000]).unwrap(); // the rest of a segment filled ahead
        drop(file);
        let (file, start, len, acked, _) = recover(dir.path()).unwrap();
        assert_eq!((start, len, acked), (0, a.len() as u64, 0));
        assert_eq!(file.metadata().unwrap().len(), a.len() as u64);
        assert!(!segments::zeros_at(&file, 0).unwrap());
    }

    #[test]
    fn appends_roll_onto_a_zero_filled_segment_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn EventStore> = Arc::new(
            leanloop_store::duckdb::DuckDbStore::open(&dir.path().join("events.duckdb"), &Default::default()).unwrap(),
        );
        let segment_bytes = 64 * 1024;
        let options = WalOptions {
            dir: dir.path().join("log"),
            max_bytes: 1 << 30,
            segment_bytes,
            reserve: segments::Reserve { min_free: 0 },
            batch_events: 1 << 20,
            interval: Duration::from_millis(20),
            fill_wait: Duration::from_secs(10),
        };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let newest_file_len = || {
            let found = segments::list(&options.dir).unwrap();
            let (_, path) = found.iter().next_back().unwrap();
            (found.len(), std::fs::metadata(path).unwrap().len())
        };
        // A first record, then a reopen: the active segment holds records,
        // so a spare that is ready at once cannot simply replace it (as it
        // replaces an empty one).
        let wal = Wal::open(options.clone(), store.clone()).unwrap();
        runtime.block_on(wal.append(&[record::tests::event(0)], &[])).unwrap();
        assert_eq!(wal.drain(Duration::from_secs(60)), 0);
        drop(wal);
        let wal = Wal::open(options.clone(), store.clone()).unwrap();
        // The first segment grows as written; once the spare is ready the
        // next append moves onto it, long before the first is full. Its own
        // thread fills the spare: appends wait until it is written, or on a
        // busy machine they could fill the first segment before it is.
        let deadline = Instant::now() + Duration::from_secs(20);
        let spare = options.dir.join(spare::SPARE_FILE);
        while std::fs::metadata(&spare).map_or(true, |m| m.len() < segment_bytes) {
            assert!(Instant::now() < deadline, "the spare segment was never written");
            std::thread::yield_now();
        }
        let mut sent = 1u128;
        while newest_file_len() != (2, segment_bytes) {
            assert!(Instant::now() < deadline, "no append moved onto the spare: {:?}", newest_file_len());
            runtime.block_on(wal.append(&[record::tests::event(sent)], &[])).unwrap();
            sent += 1;
        }
        let first = std::fs::metadata(segments::segment_path(&options.dir, 0)).unwrap().len();
        assert!(first < segment_bytes, "rolled early, not because the first was full");
        for n in sent..sent + 10 {
            runtime.block_on(wal.append(&[record::tests::event(n)], &[])).unwrap();
        }
        assert_eq!(wal.drain(Duration::from_secs(60)), 0);
        drop(wal);
        // Reopened: the zeros after the last record are cut, new records
        // follow the old ones, and nothing is stored twice.
        let wal = Wal::open(options.clone(), store.clone()).unwrap();
        runtime.block_on(wal.append(&[record::tests::event(sent + 10)], &[])).unwrap();
        assert_eq!(wal.drain(Duration::from_secs(60)), 0);
        assert_eq!(store.count(&EventFilter::project(1)).unwrap() as u128, sent + 11);
    }

    /// How a [`Watched`] store takes its first streamed write.
    #[derive(Clone, Copy, PartialEq)]
    enum FirstWrite {
        Whole,
        /// Fails after taking one chunk, as a store going away mid-write would.
        Fails,
        /// Stores one chunk and ends the write there, leaving the rest.
        StopsAfterOne,
    }

    /// A real DuckDB store that records the size of every chunk and every
    /// stored write it is handed, names `fill` as its cheapest write size
    /// and takes its first streamed write as `first` says.
    struct Watched {
        inner: leanloop_store::duckdb::DuckDbStore,
        first: FirstWrite,
        fill: Option<usize>,
        attempts: std::sync::atomic::AtomicUsize,
        chunk_events: std::sync::Mutex<Vec<usize>>,
        write_events: std::sync::Mutex<Vec<usize>>,
    }

    impl Watched {
        fn open(dir: &Path, first: FirstWrite, fill: Option<usize>) -> Arc<Watched> {
            let inner =
                leanloop_store::duckdb::DuckDbStore::open(&dir.join("events.duckdb"), &Default::default()).unwrap();
            Arc::new(Watched {
                inner,
                first,
                fill,
                attempts: Default::default(),
                chunk_events: Default::default(),
                write_events: Default::default(),
            })
        }
    }

    impl EventStore for Watched {
        fn write(&self, events: &[Event], users: &[UserUpdate]) -> Result<WriteOutcome, StoreError> {
            self.inner.write(events, users)
        }
        fn write_stream(&self, chunks: &mut dyn Iterator<Item = Chunk>) -> Result<WriteOutcome, StoreError> {
            let mut chunks = chunks.inspect(|c| self.chunk_events.lock().unwrap().push(c.events.len()));
            let first = self.attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
            let outcome = match self.first {
                FirstWrite::Fails if first => {
                    let _ = chunks.next();
                    return Err(StoreError::Corrupt("the store went away".into()));
                }
                FirstWrite::StopsAfterOne if first => self.inner.write_stream(&mut chunks.by_ref().take(1))?,
                _ => self.inner.write_stream(&mut chunks)?,
            };
            self.write_events.lock().unwrap().push(outcome.inserted + outcome.duplicates);
            Ok(outcome)
        }
        fn fill_write_events(&self) -> Option<usize> {
            self.fill
        }
        fn count(&self, filter: &EventFilter) -> Result<u64, StoreError> {
            self.inner.count(filter)
        }
        fn recent(&self, filter: &EventFilter, limit: usize) -> Result<Vec<Event>, StoreError> {
            self.inner.recent(filter, limit)
        }
        fn user(&self, project_id: i64, user_id: &str) -> Result<Option<UserRecord>, StoreError> {
            self.inner.user(project_id, user_id)
        }
        fn identity(&self, project_id: i64, anonymous_id: &str) -> Result<Option<String>, StoreError> {
            self.inner.identity(project_id, anonymous_id)
        }
        fn delete_person(
            &self,
            project_id: i64,
            user_id: &str,
            wait_until: std::time::Instant,
        ) -> Result<u64, StoreError> {
            self.inner.delete_person(project_id, user_id, wait_until)
        }
        fn dialect(&self) -> Dialect {
            self.inner.dialect()
        }
        fn select(&self, query: &Select) -> Result<Rows, StoreError> {
            self.inner.select(query)
        }
        fn write_cohort(
            &self,
            project_id: i64,
            cohort_id: i64,
            version: i64,
            ids: &[String],
        ) -> Result<(), StoreError> {
            self.inner.write_cohort(project_id, cohort_id, version, ids)
        }
        fn drop_cohort_versions(&self, project_id: i64, cohort_id: i64, below: i64) -> Result<(), StoreError> {
            self.inner.drop_cohort_versions(project_id, cohort_id, below)
        }
        fn people_revision(&self, project_id: i64) -> Result<u64, StoreError> {
            self.inner.people_revision(project_id)
        }
    }

    /// A log in `dir` delivering to a [`Watched`] store, with a runtime to
    /// append from.
    fn watched_log(
        dir: &Path,
        first: FirstWrite,
        interval: Duration,
        fill: Option<usize>,
        max_bytes: u64,
    ) -> (Arc<Watched>, Wal, tokio::runtime::Runtime) {
        let store = Watched::open(dir, first, fill);
        let options = WalOptions {
            dir: dir.join("log"),
            max_bytes,
            segment_bytes: 1 << 20,
            reserve: segments::Reserve { min_free: 0 },
            batch_events: 1 << 20,
            interval,
            // Long enough that only the fill size or a pause ends a hold.
            fill_wait: Duration::from_secs(60),
        };
        let wal = Wal::open(options, store.clone()).unwrap();
        (store, wal, tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap())
    }

    #[test]
    fn a_write_that_fails_midway_is_read_again_from_the_log_and_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let (store, wal, runtime) =
            watched_log(dir.path(), FirstWrite::Fails, Duration::from_millis(50), None, 1 << 30);
        // More than one chunk's worth, in records of 1,000 events, and
        // across several segments.
        for r in 0..20u128 {
            let events: Vec<Event> = (r * 1000..r * 1000 + 1000).map(record::tests::event).collect();
            runtime.block_on(wal.append(&events, &[])).unwrap();
        }
        // A client retry of already-logged events.
        runtime.block_on(wal.append(&[record::tests::event(7)], &[])).unwrap();
        assert_eq!(wal.drain(Duration::from_secs(60)), 0, "everything delivered");
        assert!(
            store.attempts.load(std::sync::atomic::Ordering::SeqCst) >= 2,
            "the first write failed and was retried"
        );
        assert_eq!(store.count(&EventFilter::project(1)).unwrap(), 20_000);
    }

    #[test]
    fn what_a_store_leaves_of_a_write_is_delivered_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let (store, wal, runtime) =
            watched_log(dir.path(), FirstWrite::StopsAfterOne, Duration::from_millis(50), None, 1 << 30);
        // Several chunks' worth, logged before delivery can start on them:
        // the reader has chunks ready beyond the one the store takes.
        wal.pause();
        for r in 0..20u128 {
            let events: Vec<Event> = (r * 1000..r * 1000 + 1000).map(record::tests::event).collect();
            runtime.block_on(wal.append(&events, &[])).unwrap();
        }
        wal.resume();
        assert_eq!(wal.drain(Duration::from_secs(60)), 0, "everything delivered");
        let writes = store.write_events.lock().unwrap().clone();
        assert!(writes.len() >= 2 && writes[0] < 20_000, "the first write took part of the log: {writes:?}");
        assert_eq!(writes.iter().sum::<usize>(), 20_000, "the rest came in later writes, none twice: {writes:?}");
        assert_eq!(store.count(&EventFilter::project(1)).unwrap(), 20_000);
    }

    #[test]
    fn records_that_trickle_in_reach_the_store_as_one_chunk() {
        let dir = tempfile::tempdir().unwrap();
        // A wait longer than the appends take: only the drain ends the write.
        let (store, wal, runtime) = watched_log(dir.path(), FirstWrite::Whole, Duration::from_secs(600), None, 1 << 30);
        // One event per append, each acknowledged (synced) before the next
        // is sent, as single events arrive: every one is its own record.
        for n in 0..50u128 {
            runtime.block_on(wal.append(&[record::tests::event(n)], &[])).unwrap();
        }
        assert_eq!(wal.drain(Duration::from_secs(60)), 0, "everything delivered");
        assert_eq!(*store.chunk_events.lock().unwrap(), vec![50], "one append to the store, not one per record");
        assert_eq!(store.count(&EventFilter::project(1)).unwrap(), 50);
    }

    /// Appends `records` records of `per_record` events, one per `pace` at
    /// most (each waits for its sync), numbered from `first`.
    fn paced_appends(
        wal: &Wal,
        runtime: &tokio::runtime::Runtime,
        first: u128,
        records: u128,
        per_record: u128,
        pace: Duration,
    ) {
        runtime.block_on(async {
            let mut tick = tokio::time::interval(pace);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for r in 0..records {
                tick.tick().await;
                let from = first + r * per_record;
                let events: Vec<Event> = (from..from + per_record).map(record::tests::event).collect();
                wal.append(&events, &[]).await.unwrap();
            }
        });
    }

    /// Waits until everything appended is stored, within `deadline`.
    fn wait_delivered(wal: &Wal, deadline: Duration) {
        let until = Instant::now() + deadline;
        let mut state = wal.shared.lock();
        while state.backlog() > 0 {
            let left = until.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{} bytes still undelivered", state.backlog());
            state = wal.shared.changed.wait_timeout(state, left).unwrap().0;
        }
    }

    #[test]
    fn under_sustained_load_a_write_is_held_open_until_it_fills_the_stores_size() {
        let dir = tempfile::tempdir().unwrap();
        let fill = 2000;
        let (store, wal, runtime) =
            watched_log(dir.path(), FirstWrite::Whole, Duration::from_millis(40), Some(fill), 1 << 30);
        // At most 5 events a millisecond: an interval alone takes at most
        // about 200, a tenth of the size a held write reaches.
        paced_appends(&wal, &runtime, 0, 1600, 5, Duration::from_millis(1));
        // Records stop: the pause ends the last write, long before the
        // fill wait (60 s) would.
        wait_delivered(&wal, Duration::from_secs(20));
        let writes = store.write_events.lock().unwrap().clone();
        assert_eq!(writes.iter().sum::<usize>(), 8000, "{writes:?}");
        // A stall of the appends (a busy machine) ends a held write early,
        // as any pause does: not every write is full, but some must be.
        assert!(writes.iter().any(|&w| w >= fill), "no write was held until full: {writes:?}");
        assert!(writes.len() <= 20, "writes held to fill, not one per interval: {writes:?}");
        assert_eq!(store.count(&EventFilter::project(1)).unwrap(), 8000);
    }

    #[test]
    fn a_held_write_ends_when_the_backlog_reaches_half_the_logs_bound() {
        let dir = tempfile::tempdir().unwrap();
        let record_bytes = record::encode(&(0..5).map(record::tests::event).collect::<Vec<_>>(), &[]).unwrap().len();
        // Half the bound is 350 records of 5 events: a write held to the
        // fill size (4,000) would first fill the log and have appends
        // refused; ended at half, it leaves them 350 ms of room at the pace.
        let max_bytes = 700 * record_bytes as u64;
        let (store, wal, runtime) =
            watched_log(dir.path(), FirstWrite::Whole, Duration::from_millis(40), Some(4000), max_bytes);
        paced_appends(&wal, &runtime, 0, 1600, 5, Duration::from_millis(1));
        wait_delivered(&wal, Duration::from_secs(20));
        let writes = store.write_events.lock().unwrap().clone();
        assert_eq!(writes.iter().sum::<usize>(), 8000, "{writes:?}");
        assert!(writes.iter().all(|&w| w < 4000), "{writes:?}");
    }

    #[test]
    fn a_trickle_too_slow_to_fill_the_size_is_written_every_interval() {
        let dir = tempfile::tempdir().unwrap();
        // 200 events a second at most: never 100,000 within the fill wait.
        // Records come closer together than a quarter interval, so only
        // the pace keeps the write from being held.
        let (store, wal, runtime) =
            watched_log(dir.path(), FirstWrite::Whole, Duration::from_millis(40), Some(100_000), 1 << 30);
        paced_appends(&wal, &runtime, 0, 120, 1, Duration::from_millis(5));
        wait_delivered(&wal, Duration::from_secs(20));
        let writes = store.write_events.lock().unwrap().clone();
        assert_eq!(writes.iter().sum::<usize>(), 120, "{writes:?}");
        assert!(writes.len() >= 3, "600 ms of records in 40 ms writes, not one held write: {writes:?}");
    }

    #[test]
    fn a_log_directory_takes_one_process_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let _held = segments::lock(dir.path()).unwrap();
        let err = segments::lock(dir.path()).unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
    }
}
