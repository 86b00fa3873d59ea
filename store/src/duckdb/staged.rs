//! The events a write is storing, offered to DuckDB as a table function
//! (`leanloop_staged_events_N()`), so that one `INSERT ... SELECT` stores
//! them.
//!
//! The scan takes the next vector's worth of events at a time (fewer when
//! their text would pass [`MAX_VECTOR_TEXT_BYTES`]) and writes their values
//! straight into DuckDB's vectors; any number of DuckDB's
//! threads may scan at once, though the writer's inserts keep their order
//! and so run on one (`write.rs` says why). An appender fed Arrow arrays
//! builds the arrays first (a copy of every string) and checks every
//! string's UTF-8 again.
//!
//! The writer fills a slot for one statement and empties it afterwards; a
//! scan takes its own reference to the slot's events when it starts, so any
//! query calling the function sees a whole write's events or none. Each
//! writer registers a function of its own name: registering a name again
//! replaces the function database-wide, and with it the slot it reads.

use super::schema;
use crate::StoreError;
use ::duckdb::core::{DataChunkHandle, LogicalTypeHandle, LogicalTypeId};
use ::duckdb::vtab::{BindInfo, InitInfo, TableFunctionInfo, VTab};
use ::duckdb::{ffi, Connection};
use leanloop_core::Event;
use std::error::Error;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Numbers the functions registered in this process.
static REGISTERED: AtomicU64 = AtomicU64::new(0);

/// The slot a writer hands its events to DuckDB through, and the name of
/// the function that reads it.
#[derive(Clone)]
pub struct Staged {
    slot: Arc<Mutex<Option<Arc<Vec<Event>>>>>,
    function: Arc<str>,
}

impl Staged {
    /// Registers a table function (for the whole database) over a new slot.
    pub fn register(conn: &Connection) -> Result<Staged, StoreError> {
        let function = format!("leanloop_staged_events_{}", REGISTERED.fetch_add(1, Ordering::Relaxed));
        let staged = Staged { slot: Arc::default(), function: function.into() };
        conn.register_table_function_with_extra_info::<Scan, _>(&staged.function, &staged)?;
        Ok(staged)
    }

    /// Appends `rows` to `events` in the transaction open on `conn`.
    pub fn insert(&self, conn: &Connection, rows: Arc<Vec<Event>>) -> Result<(), StoreError> {
        *self.slot() = Some(rows);
        let inserted = conn
            .prepare_cached(&format!("INSERT INTO events SELECT * FROM {}()", self.function))
            .and_then(|mut s| s.execute([]));
        *self.slot() = None;
        inserted?;
        Ok(())
    }

    fn slot(&self) -> MutexGuard<'_, Option<Arc<Vec<Event>>>> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Scan;

/// Most text one output vector holds. DuckDB keeps a vector's strings
/// outside its memory limit's reach to spill, and a full vector of large
/// events (2,048 of 60 KB is 120 MB) ran out of memory inside the scan,
/// where a C++ exception aborts the process.
const MAX_VECTOR_TEXT_BYTES: usize = 4 << 20;

/// One scan's events, cut into the pieces each output vector takes, and
/// the next piece no thread has taken yet.
struct ScanState {
    rows: Option<Arc<Vec<Event>>>,
    pieces: Vec<std::ops::Range<usize>>,
    next: AtomicUsize,
}

impl VTab for Scan {
    type InitData = ScanState;
    type BindData = ();

    fn bind(bind: &BindInfo) -> Result<(), Box<dyn Error>> {
        for &column in schema::EVENT_COLUMNS {
            bind.add_result_column(column, LogicalTypeHandle::from(column_type(column)));
        }
        Ok(())
    }

    fn init(init: &InitInfo) -> Result<ScanState, Box<dyn Error>> {
        // SAFETY: the function is only registered with a `Staged` as its
        // extra info, which DuckDB keeps as long as the function.
        let staged = unsafe { &*init.get_extra_info::<Staged>() };
        let rows = staged.slot().clone();
        let pieces = pieces(rows.as_deref().map_or(&[][..], Vec::as_slice), vector_size(), MAX_VECTOR_TEXT_BYTES);
        init.set_max_threads(pieces.len().max(1) as u64);
        Ok(ScanState { rows, pieces, next: AtomicUsize::new(0) })
    }

    fn func(info: &TableFunctionInfo<Scan>, output: &mut DataChunkHandle) -> Result<(), Box<dyn Error>> {
        let state = info.get_init_data();
        let all = state.rows.as_deref().map_or(&[][..], Vec::as_slice);
        let piece = state.pieces.get(state.next.fetch_add(1, Ordering::Relaxed)).cloned().unwrap_or(0..0);
        let rows = &all[piece];
        fill(output, rows);
        output.set_len(rows.len());
        Ok(())
    }
}

/// `rows` cut into runs of at most `size` events and, but for a single
/// event larger than that, `max_bytes` of text.
fn pieces(rows: &[Event], size: usize, max_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let mut pieces = Vec::with_capacity(rows.len().div_ceil(size));
    let (mut start, mut bytes) = (0, 0);
    for (i, event) in rows.iter().enumerate() {
        let len = text_bytes(event);
        if i > start && (i - start == size || bytes + len > max_bytes) {
            pieces.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += len;
    }
    if start < rows.len() {
        pieces.push(start..rows.len());
    }
    pieces
}

/// The bytes of an event's text values.
fn text_bytes(e: &Event) -> usize {
    let optional = [
        &e.anonymous_id,
        &e.user_id,
        &e.session_id,
        &e.release,
        &e.url,
        &e.path,
        &e.page_name,
        &e.referrer,
        &e.referrer_domain,
        &e.utm_source,
        &e.utm_medium,
        &e.utm_campaign,
        &e.utm_term,
        &e.utm_content,
    ];
    e.name.len() + e.properties.len() + optional.iter().map(|v| v.as_ref().map_or(0, String::len)).sum::<usize>()
}

fn vector_size() -> usize {
    // SAFETY: a constant of the library.
    unsafe { ffi::duckdb_vector_size() as usize }
}

/// The DuckDB type of each column of `events` (`schema.rs`).
fn column_type(column: &str) -> LogicalTypeId {
    match column {
        "project_id" => LogicalTypeId::Bigint,
        "uuid" => LogicalTypeId::Uuid,
        "timestamp" | "received_at" => LogicalTypeId::Timestamp,
        "timestamp_clamped" => LogicalTypeId::Boolean,
        _ => LogicalTypeId::Varchar,
    }
}

/// Writes `rows` into `output`, column by column in `schema::EVENT_COLUMNS` order.
fn fill(output: &DataChunkHandle, rows: &[Event]) {
    let mut column = 0..;
    let mut next = || column.next().expect("unbounded");
    put(output, next(), rows, |e| e.project_id);
    // DuckDB keeps a UUID as a 128-bit integer with the top bit flipped, so
    // that signed order is the UUIDs' byte order.
    put(output, next(), rows, |e| i128::from_be_bytes(e.uuid.into_bytes()) ^ i128::MIN);
    text(output, next(), rows, |e| Some(e.kind.as_str()));
    text(output, next(), rows, |e| Some(&e.name));
    put(output, next(), rows, |e| e.timestamp_ms.saturating_mul(1000));
    put(output, next(), rows, |e| e.received_at_ms.saturating_mul(1000));
    put(output, next(), rows, |e| e.timestamp_clamped);
    debug_assert_eq!(schema::EVENT_COLUMNS[schema::FIRST_TEXT_COLUMN], "anonymous_id");
    let optional: [fn(&Event) -> Option<&str>; 21] = [
        |e| e.anonymous_id.as_deref(),
        |e| e.user_id.as_deref(),
        |e| e.session_id.as_deref(),
        |e| e.release.as_deref(),
        |e| e.url.as_deref(),
        |e| e.path.as_deref(),
        |e| e.page_name.as_deref(),
        |e| e.referrer.as_deref(),
        |e| e.referrer_domain.as_deref(),
        |e| e.utm_source.as_deref(),
        |e| e.utm_medium.as_deref(),
        |e| e.utm_campaign.as_deref(),
        |e| e.utm_term.as_deref(),
        |e| e.utm_content.as_deref(),
        |e| e.browser.as_deref(),
        |e| e.browser_version.as_deref(),
        |e| e.os.as_deref(),
        |e| e.device_type.as_deref(),
        |e| e.country.as_deref(),
        |e| e.ip.as_deref(),
        |e| e.library.as_deref(),
    ];
    for field in optional {
        text(output, next(), rows, field);
    }
    text(output, next(), rows, |e| Some(&e.properties));
    debug_assert_eq!(next(), schema::EVENT_COLUMNS.len());
}

/// Fixed-width values: `T` must be the column's physical type.
fn put<T: Copy>(output: &DataChunkHandle, column: usize, rows: &[Event], value: impl Fn(&Event) -> T) {
    let mut vector = output.flat_vector(column);
    // SAFETY: every column `put` writes has `T` as its physical type
    // (`column_type`), and the vector holds a full vector's rows.
    let slots = unsafe { vector.as_mut_slice_with_len::<T>(rows.len()) };
    for (slot, event) in slots.iter_mut().zip(rows) {
        *slot = value(event);
    }
}

/// Text values, NULL where `value` gives none.
fn text(output: &DataChunkHandle, column: usize, rows: &[Event], value: impl Fn(&Event) -> Option<&str>) {
    let mut vector = output.flat_vector(column);
    // SAFETY: the chunk has this column; DuckDB copies each string into the
    // vector's own storage (or inlines it) before the call returns.
    let raw = unsafe { ffi::duckdb_data_chunk_get_vector(output.get_ptr(), column as u64) };
    for (row, event) in rows.iter().enumerate() {
        match value(event) {
            // Rust strings are valid UTF-8: DuckDB's own check would only repeat it.
            Some(s) => unsafe {
                ffi::duckdb_unsafe_vector_assign_string_element_len(raw, row as u64, s.as_ptr().cast(), s.len() as u64)
            },
            None => vector.set_null(row),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duckdb::read;

    #[test]
    fn vectors_of_large_events_are_cut_by_their_text() {
        let mut large = event(0);
        large.url = Some("u".repeat(3000));
        let small: Vec<Event> = (0..5).map(event).collect();
        assert!(small.iter().all(|e| text_bytes(e) < 1000));
        assert_eq!(pieces(&small, 2, 6000), [0..2, 2..4, 4..5], "a vector's rows");
        let mut rows = small[..2].to_vec();
        rows.extend(std::iter::repeat_n(large.clone(), 4));
        assert_eq!(pieces(&rows, 10, 2 * text_bytes(&large)), [0..3, 3..5, 5..6], "a vector's text");
        assert_eq!(pieces(&[large], 10, 100), vec![0..1], "an event larger than the bound goes alone");
        assert!(pieces(&[], 3, 6000).is_empty());
    }
    use crate::EventFilter;
    use leanloop_core::EventKind;
    use uuid::Uuid;

    /// Every column set, or left empty, by the row's number; text of every
    /// length around DuckDB's 12-byte inline limit, and beyond ASCII.
    fn event(n: u32) -> Event {
        let kind = EventKind::ALL[n as usize % EventKind::ALL.len()];
        let uuid = Uuid::from_u128(u128::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
        let mut e = Event::new(
            uuid,
            1 + i64::from(n % 3),
            kind,
            format!("évènement {}", "x".repeat(n as usize % 20)),
            1_700_000_000_000 + i64::from(n),
        );
        e.received_at_ms = e.timestamp_ms + 17;
        e.timestamp_clamped = n.is_multiple_of(2);
        let some = |i: u32| !(n + i).is_multiple_of(3);
        let text = |i: u32| Some(format!("{i}:{}\u{0}ü", "y".repeat(((n + i) % 16) as usize)));
        e.anonymous_id = text(1).filter(|_| some(1));
        e.user_id = text(2).filter(|_| some(2));
        e.session_id = text(3).filter(|_| some(3));
        e.release = text(4).filter(|_| some(4));
        e.url = text(5).filter(|_| some(5));
        e.path = text(6).filter(|_| some(6));
        e.page_name = text(7).filter(|_| some(7));
        e.referrer = text(8).filter(|_| some(8));
        e.referrer_domain = text(9).filter(|_| some(9));
        e.utm_source = text(10).filter(|_| some(10));
        e.utm_medium = text(11).filter(|_| some(11));
        e.utm_campaign = text(12).filter(|_| some(12));
        e.utm_term = text(13).filter(|_| some(13));
        e.utm_content = text(14).filter(|_| some(14));
        e.browser = text(15).filter(|_| some(15));
        e.browser_version = text(16).filter(|_| some(16));
        e.os = text(17).filter(|_| some(17));
        e.device_type = text(18).filter(|_| some(18));
        e.country = text(19).filter(|_| some(19));
        e.ip = text(20).filter(|_| some(20));
        e.library = text(21).filter(|_| some(21));
        e.properties = format!(r#"{{"n":{n}}}"#);
        e
    }

    #[test]
    fn every_value_arrives_as_written_across_threads_and_vectors() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("SET threads = 2").unwrap();
        schema::migrate(&conn).unwrap();
        let staged = Staged::register(&conn).unwrap();
        // Several vectors, the last one partial.
        let rows: Vec<Event> = (0..3 * vector_size() as u32 + 100).map(event).collect();
        staged.insert(&conn, Arc::new(rows.clone())).unwrap();
        staged.insert(&conn, Arc::new(Vec::new())).unwrap();

        let mut stored = Vec::new();
        for project_id in 1..=3 {
            stored.extend(read::recent(&conn, &EventFilter::project(project_id), usize::MAX >> 1).unwrap());
        }
        let by_uuid = |events: &mut Vec<Event>| events.sort_by_key(|e| e.uuid);
        let mut expected = rows.clone();
        by_uuid(&mut expected);
        by_uuid(&mut stored);
        assert_eq!(stored.len(), expected.len());
        for (stored, expected) in stored.iter().zip(&expected) {
            assert_eq!(stored, expected);
        }
        // UUIDs keep their order inside DuckDB, not only their text.
        let smallest: String =
            conn.query_row("SELECT CAST(min(uuid) AS VARCHAR) FROM events", [], |r| r.get(0)).unwrap();
        assert_eq!(smallest, expected[0].uuid.to_string());
        // The slot is empty between writes: a stray call sees no rows.
        let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(count(&format!("SELECT count(*) FROM {}()", staged.function)), 0);
        // A second writer on the same database has a slot of its own.
        let other = Staged::register(&conn).unwrap();
        assert_ne!(other.function, staged.function);
        staged.insert(&conn, Arc::new(vec![event(u32::MAX)])).unwrap();
        assert_eq!(count("SELECT count(*) FROM events"), rows.len() as i64 + 1);
    }
}
