//! Exact deduplication of event uuids without an index on `events`.
//!
//! A primary key on `(project_id, uuid)` makes DuckDB maintain an ART index
//! over random UUIDs: measured here it cut bulk insert throughput to a third
//! and kept the whole index in memory. Instead the writer keeps a Bloom filter
//! of every stored key. A key the filter has never seen is new — no database
//! work. A key it may have seen (a real retry, or a false positive at about
//! one in ten thousand) is checked against the table. The filter is rebuilt
//! from the table on start and whenever it outgrows its capacity.

use crate::StoreError;
use ::duckdb::arrow::array::{Array, Int64Array, StringArray};
use ::duckdb::Connection;
use fastbloom::BloomFilter;
use leanloop_core::Event;
use std::collections::HashSet;
use uuid::Uuid;

const FALSE_POSITIVE_RATE: f64 = 0.0001;
/// Smallest capacity, so a new store does not rebuild after every few writes.
const MIN_CAPACITY: usize = 1 << 20;
/// Keys checked against the table per query.
const CHECK_CHUNK: usize = 1000;

type Key = (i64, u128);

fn key(event: &Event) -> Key {
    (event.project_id, event.uuid.as_u128())
}

pub struct SeenKeys {
    bloom: BloomFilter,
    capacity: usize,
    recorded: usize,
}

impl SeenKeys {
    /// Builds the filter from every key stored in `events`.
    pub fn load(conn: &Connection) -> Result<SeenKeys, StoreError> {
        SeenKeys::load_with(conn, MIN_CAPACITY)
    }

    fn load_with(conn: &Connection, min_capacity: usize) -> Result<SeenKeys, StoreError> {
        let stored: i64 = conn.query_row("SELECT count(*) FROM events", [], |row| row.get(0))?;
        let stored = stored as usize;
        let capacity = (stored * 2).max(min_capacity);
        let mut seen = SeenKeys {
            bloom: BloomFilter::with_false_pos(FALSE_POSITIVE_RATE).expected_items(capacity),
            capacity,
            recorded: 0,
        };
        let mut stmt = conn.prepare("SELECT project_id, CAST(uuid AS VARCHAR) FROM events")?;
        for batch in stmt.query_arrow([])? {
            let projects = batch.column(0).as_any().downcast_ref::<Int64Array>();
            let uuids = batch.column(1).as_any().downcast_ref::<StringArray>();
            let (Some(projects), Some(uuids)) = (projects, uuids) else {
                return Err(StoreError::Corrupt("unexpected key column types".into()));
            };
            for i in 0..batch.num_rows() {
                let uuid = Uuid::parse_str(uuids.value(i)).map_err(|e| StoreError::Corrupt(format!("uuid: {e}")))?;
                seen.bloom.insert(&(projects.value(i), uuid.as_u128()));
            }
        }
        seen.recorded = stored;
        tracing::debug!(stored, capacity, "dedup filter loaded");
        Ok(seen)
    }

    /// Indices of the events in `batch` that are not stored yet, first
    /// occurrence within the batch winning.
    pub fn new_events(&self, conn: &Connection, batch: &[Event]) -> Result<Vec<usize>, StoreError> {
        let mut in_batch = HashSet::with_capacity(batch.len());
        let mut fresh = Vec::with_capacity(batch.len());
        let mut maybe = Vec::new();
        for (i, event) in batch.iter().enumerate() {
            let k = key(event);
            if !in_batch.insert(k) {
                continue;
            }
            if self.bloom.contains(&k) {
                maybe.push(i);
            } else {
                fresh.push(i);
            }
        }
        if !maybe.is_empty() {
            let stored = stored_among(conn, maybe.iter().map(|&i| &batch[i]))?;
            fresh.extend(maybe.into_iter().filter(|&i| !stored.contains(&key(&batch[i]))));
            fresh.sort_unstable();
        }
        Ok(fresh)
    }

    /// Records keys that were committed; rebuilds from the table when the
    /// filter would exceed its capacity (its false-positive rate would climb).
    pub fn record<'a>(&mut self, conn: &Connection, stored: impl Iterator<Item = &'a Event>) -> Result<(), StoreError> {
        for event in stored {
            self.bloom.insert(&key(event));
            self.recorded += 1;
        }
        if self.recorded > self.capacity {
            let min_capacity = self.capacity;
            *self = SeenKeys::load_with(conn, min_capacity)?;
        }
        Ok(())
    }
}

/// Which of `candidates` are already in `events`. The uuids are spliced as
/// literals: they are formatted from parsed `Uuid`s, never client text.
fn stored_among<'a>(
    conn: &Connection,
    candidates: impl Iterator<Item = &'a Event>,
) -> Result<HashSet<Key>, StoreError> {
    let candidates: Vec<&Event> = candidates.collect();
    let mut found = HashSet::new();
    for chunk in candidates.chunks(CHECK_CHUNK) {
        let list: Vec<String> = chunk.iter().map(|e| format!("'{}'", e.uuid.hyphenated())).collect();
        let sql = format!("SELECT project_id, CAST(uuid AS VARCHAR) FROM events WHERE uuid IN ({})", list.join(","));
        let mut stmt = conn.prepare(&sql)?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let project: i64 = row.get(0)?;
            let uuid: String = row.get(1)?;
            let uuid = Uuid::parse_str(&uuid).map_err(|e| StoreError::Corrupt(format!("uuid: {e}")))?;
            found.insert((project, uuid.as_u128()));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use leanloop_core::EventKind;

    fn event(project_id: i64, n: u128) -> Event {
        Event {
            uuid: Uuid::from_u128(n),
            project_id,
            kind: EventKind::Track,
            name: "e".into(),
            timestamp_ms: 1_700_000_000_000,
            received_at_ms: 1_700_000_000_000,
            timestamp_clamped: false,
            anonymous_id: Some("a".into()),
            user_id: None,
            session_id: None,
            release: None,
            url: None,
            path: None,
            page_name: None,
            referrer: None,
            referrer_domain: None,
            utm_source: None,
            utm_medium: None,
            utm_campaign: None,
            utm_term: None,
            utm_content: None,
            browser: None,
            browser_version: None,
            os: None,
            device_type: None,
            country: None,
            ip: None,
            library: None,
            properties: "{}".into(),
        }
    }

    fn store_in(dir: &std::path::Path) -> super::super::DuckDbStore {
        super::super::DuckDbStore::open(&dir.join("events.duckdb"), &Default::default()).unwrap()
    }

    #[test]
    fn uuids_are_stored_once_across_batches_reopens_and_projects() {
        use crate::EventStore;
        let dir = tempfile::tempdir().unwrap();
        let batch: Vec<Event> = (0..100).map(|n| event(1, n)).collect();
        let store = store_in(dir.path());
        assert_eq!(store.write(&batch, &[]).unwrap().inserted, 100);
        let outcome = store.write(&batch, &[]).unwrap();
        assert_eq!((outcome.inserted, outcome.duplicates), (0, 100));
        drop(store);

        let store = store_in(dir.path());
        let mut mixed: Vec<Event> = batch[..10].to_vec();
        mixed.extend((100..110).map(|n| event(1, n)));
        mixed.extend((0..10).map(|n| event(2, n)));
        mixed.push(event(2, 0));
        let outcome = store.write(&mixed, &[]).unwrap();
        assert_eq!((outcome.inserted, outcome.duplicates), (20, 11), "new uuids and other projects' uuids are stored");
        assert_eq!(store.count(&crate::EventFilter::project(1)).unwrap(), 110);
        assert_eq!(store.count(&crate::EventFilter::project(2)).unwrap(), 10);
    }

    #[test]
    fn the_filter_is_rebuilt_when_it_outgrows_its_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(dir.path());
        drop(store);
        let conn = Connection::open(dir.path().join("events.duckdb")).unwrap();
        let mut writer = super::super::write::Writer::new(conn.try_clone().unwrap()).unwrap();
        writer.seen = SeenKeys::load_with(&conn, 8).unwrap();
        for round in 0..5u128 {
            let batch: Vec<Event> = (round * 10..round * 10 + 10).map(|n| event(1, n)).collect();
            assert_eq!(writer.write(&batch, &[]).unwrap().inserted, 10);
        }
        assert!(writer.seen.capacity >= 40, "capacity grew to {}", writer.seen.capacity);
        let all: Vec<Event> = (0..50).map(|n| event(1, n)).collect();
        assert_eq!(writer.write(&all, &[]).unwrap().inserted, 0);
    }
}
