//! DuckDB's side of uuid deduplication (see [`crate::seen`]): every stored
//! key feeds the filter, and "maybe seen" keys are looked up by uuid.

use crate::seen::{Key, KeySource};
use crate::StoreError;
use ::duckdb::arrow::array::{Array, Int64Array, StringArray};
use ::duckdb::arrow::record_batch::RecordBatch;
use ::duckdb::Connection;
use leanloop_core::Event;
use std::collections::HashSet;
use uuid::Uuid;

/// Keys checked against the table per query.
const CHECK_CHUNK: usize = 1000;

pub struct DuckKeys<'a>(pub &'a Connection);

impl KeySource for DuckKeys<'_> {
    fn stored_count(&self) -> Result<usize, StoreError> {
        let stored: i64 = self.0.query_row("SELECT count(*) FROM events", [], |row| row.get(0))?;
        Ok(stored as usize)
    }

    fn each_stored(&self, f: &mut dyn FnMut(Key)) -> Result<(), StoreError> {
        let mut stmt = self.0.prepare("SELECT project_id, CAST(uuid AS VARCHAR) FROM events")?;
        // `execute` + `step`, as queries are read: `query_arrow`'s iterator
        // panics on a fetch error instead of returning it.
        stmt.execute([])?;
        while let Some(chunk) = stmt.step()? {
            let batch = RecordBatch::from(&chunk);
            let projects = batch.column(0).as_any().downcast_ref::<Int64Array>();
            let uuids = batch.column(1).as_any().downcast_ref::<StringArray>();
            let (Some(projects), Some(uuids)) = (projects, uuids) else {
                return Err(StoreError::Corrupt("unexpected key column types".into()));
            };
            for i in 0..batch.num_rows() {
                let uuid = Uuid::parse_str(uuids.value(i)).map_err(|e| StoreError::Corrupt(format!("uuid: {e}")))?;
                f((projects.value(i), uuid.as_u128()));
            }
        }
        Ok(())
    }

    /// The uuids are spliced as literals: they are formatted from parsed
    /// `Uuid`s, never client text.
    fn stored_among(&self, candidates: &[&Event]) -> Result<HashSet<Key>, StoreError> {
        let mut found = HashSet::new();
        for chunk in candidates.chunks(CHECK_CHUNK) {
            let list: Vec<String> = chunk.iter().map(|e| format!("'{}'", e.uuid.hyphenated())).collect();
            let sql =
                format!("SELECT project_id, CAST(uuid AS VARCHAR) FROM events WHERE uuid IN ({})", list.join(","));
            let mut stmt = self.0.prepare(&sql)?;
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

    fn keeps_every_key(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seen::SeenKeys;
    use leanloop_core::EventKind;

    fn event(project_id: i64, n: u128) -> Event {
        let mut event = Event::new(Uuid::from_u128(n), project_id, EventKind::Track, "e", 1_700_000_000_000);
        event.anonymous_id = Some("a".into());
        event
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
    fn the_filter_grows_when_it_outgrows_its_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(dir.path());
        drop(store);
        let conn = Connection::open(dir.path().join("events.duckdb")).unwrap();
        let mut writer = super::super::write::Writer::new(conn.try_clone().unwrap()).unwrap();
        writer.seen = SeenKeys::load(&DuckKeys(&conn), 8).unwrap();
        for round in 0..5u128 {
            let batch: Vec<Event> = (round * 10..round * 10 + 10).map(|n| event(1, n)).collect();
            assert_eq!(writer.write(&batch, &[]).unwrap().inserted, 10);
        }
        assert!(writer.seen.capacity >= 40, "capacity grew to {}", writer.seen.capacity);
        assert!(writer.seen.filters() > 1, "grown by filters, not rebuilt");
        let all: Vec<Event> = (0..50).map(|n| event(1, n)).collect();
        assert_eq!(writer.write(&all, &[]).unwrap().inserted, 0);
        // Every key is still known after a reopen, which loads one filter.
        drop(writer);
        let mut writer = super::super::write::Writer::new(conn.try_clone().unwrap()).unwrap();
        assert_eq!(writer.seen.filters(), 1);
        let mut more = all.clone();
        more.push(event(1, 50));
        assert_eq!(writer.write(&more, &[]).unwrap().inserted, 1);
    }
}
