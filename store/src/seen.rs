//! Exact deduplication of event uuids without an index, for every backend.
//!
//! An index on `(project_id, uuid)` is expensive on both stores: measured on
//! DuckDB it cut bulk insert throughput to a third (an ART index over random
//! UUIDs), and ClickHouse has no unique index at all. Instead the writer keeps
//! a Bloom filter of stored keys. A key the filter has never seen is new — no
//! database work. A key it may have seen (a real retry, or a false positive at
//! about one in a million) is checked against the table. The filter is
//! built from the table on start. The rate is that low because a look-up
//! has no index to use: on DuckDB it scans the uuid column (18–38 ms at 10
//! million events), and at one in ten thousand up to half of the log's
//! 8,192-event chunks paid for one, a cost growing with the store.
//!
//! What the filter covers is the backend's choice ([`KeySource`]): DuckDB
//! loads every stored key; ClickHouse loads the keys received within its
//! dedup window, so a retry older than the window is not recognised.
//!
//! When the filter outgrows its capacity, one that must know every key
//! grows by another filter as large as all before it, each at half the
//! false-positive rate of the one before (together they stay within twice
//! the rate): a store of millions of events is not read again while
//! deliveries wait. A window's filter is rebuilt from the table instead,
//! which lets the keys that left the window go.

use crate::StoreError;
use fastbloom::BloomFilter;
use leanloop_core::Event;
use std::collections::HashSet;

const FALSE_POSITIVE_RATE: f64 = 0.000_001;
/// Smallest capacity, so a new store does not rebuild after every few writes.
pub const MIN_CAPACITY: usize = 1 << 20;

/// `(project_id, uuid)`.
pub type Key = (i64, u128);

pub fn key(event: &Event) -> Key {
    (event.project_id, event.uuid.as_u128())
}

/// Where the stored keys come from.
pub trait KeySource {
    /// How many keys [`KeySource::each_stored`] will produce (sizes the filter).
    fn stored_count(&self) -> Result<usize, StoreError>;
    /// Calls `f` with every stored key the filter should know.
    fn each_stored(&self, f: &mut dyn FnMut(Key)) -> Result<(), StoreError>;
    /// Which of `candidates` are stored (looked up exactly).
    fn stored_among(&self, candidates: &[&Event]) -> Result<HashSet<Key>, StoreError>;
    /// Whether the filter covers every key ever stored, so it only grows.
    fn keeps_every_key(&self) -> bool {
        false
    }
}

pub struct SeenKeys {
    /// Oldest first; new keys go into the last.
    blooms: Vec<BloomFilter>,
    /// The newest filter's false-positive rate at its capacity.
    rate: f64,
    /// Keys all the filters together were sized for.
    pub(crate) capacity: usize,
    recorded: usize,
}

impl SeenKeys {
    /// Builds the filter from the stored keys, sized for at least `min_capacity`.
    pub fn load(source: &dyn KeySource, min_capacity: usize) -> Result<SeenKeys, StoreError> {
        let stored = source.stored_count()?;
        let capacity = (stored * 2).max(min_capacity);
        let mut bloom = BloomFilter::with_false_pos(FALSE_POSITIVE_RATE).expected_items(capacity);
        let mut loaded = 0;
        source.each_stored(&mut |k| {
            bloom.insert(&k);
            loaded += 1;
        })?;
        let mut seen = SeenKeys { blooms: vec![bloom], rate: FALSE_POSITIVE_RATE, capacity, recorded: 0 };
        seen.recorded = loaded;
        tracing::debug!(loaded, capacity, "dedup filter loaded");
        Ok(seen)
    }

    /// Indices of the events in `batch` that are not stored yet, first
    /// occurrence within the batch winning. With `check_all`, every key is
    /// looked up in the table, not only those the filter may have seen: for
    /// events that may have been stored by a write whose outcome was lost.
    pub fn new_events(
        &self,
        source: &dyn KeySource,
        batch: &[Event],
        check_all: bool,
    ) -> Result<Vec<usize>, StoreError> {
        let mut in_batch = HashSet::with_capacity(batch.len());
        let mut fresh = Vec::with_capacity(batch.len());
        let mut maybe = Vec::new();
        for (i, event) in batch.iter().enumerate() {
            let k = key(event);
            if !in_batch.insert(k) {
                continue;
            }
            if check_all || self.blooms.iter().any(|bloom| bloom.contains(&k)) {
                maybe.push(i);
            } else {
                fresh.push(i);
            }
        }
        if !maybe.is_empty() {
            let candidates: Vec<&Event> = maybe.iter().map(|&i| &batch[i]).collect();
            let stored = source.stored_among(&candidates)?;
            fresh.extend(maybe.into_iter().filter(|&i| !stored.contains(&key(&batch[i]))));
            fresh.sort_unstable();
        }
        Ok(fresh)
    }

    /// Records keys as stored. When they would take the filter past its
    /// capacity (its false-positive rate would climb), it first grows by a
    /// new filter or is rebuilt from the source, larger (see the module
    /// docs). `unsettled`: keys sent in a write still open, which the
    /// source cannot show yet; a rebuild keeps them, or their retries would
    /// pass as new.
    pub fn record<'a>(
        &mut self,
        source: &dyn KeySource,
        stored: impl Iterator<Item = &'a Event>,
        unsettled: &HashSet<Key>,
    ) -> Result<(), StoreError> {
        let keys: Vec<Key> = stored.map(key).collect();
        if self.recorded + keys.len() > self.capacity {
            let min_capacity = self.capacity.max(keys.len() * 2);
            if source.keeps_every_key() {
                self.rate /= 2.0;
                self.blooms.push(BloomFilter::with_false_pos(self.rate).expected_items(min_capacity));
                self.capacity += min_capacity;
                tracing::debug!(filters = self.blooms.len(), capacity = self.capacity, "dedup filter grown");
            } else {
                *self = SeenKeys::load(source, min_capacity)?;
                let newest = self.blooms.last_mut().expect("a filter from the start");
                for k in unsettled {
                    newest.insert(k);
                }
                self.recorded += unsettled.len();
            }
        }
        let newest = self.blooms.last_mut().expect("a filter from the start");
        for k in &keys {
            newest.insert(k);
        }
        self.recorded += keys.len();
        Ok(())
    }

    /// How many filters the keys are spread over.
    #[cfg(test)]
    pub(crate) fn filters(&self) -> usize {
        self.blooms.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Keys a window's source shows: only those whose insert has ended.
    #[derive(Default)]
    struct Settled(RefCell<HashSet<Key>>);

    impl KeySource for Settled {
        fn stored_count(&self) -> Result<usize, StoreError> {
            Ok(self.0.borrow().len())
        }
        fn each_stored(&self, f: &mut dyn FnMut(Key)) -> Result<(), StoreError> {
            self.0.borrow().iter().for_each(|k| f(*k));
            Ok(())
        }
        fn stored_among(&self, candidates: &[&Event]) -> Result<HashSet<Key>, StoreError> {
            let settled = self.0.borrow();
            Ok(candidates.iter().map(|e| key(e)).filter(|k| settled.contains(k)).collect())
        }
    }

    fn event(n: u128) -> Event {
        Event::new(uuid::Uuid::from_u128(n), 1, leanloop_core::EventKind::Track, "e", 1_700_000_000_000)
    }

    #[test]
    fn a_rebuild_during_an_open_write_keeps_the_keys_it_sent() {
        let source = Settled::default();
        let mut seen = SeenKeys::load(&source, 4).unwrap();
        let first: Vec<Event> = (0..3).map(event).collect();
        let mut sent: HashSet<Key> = first.iter().map(key).collect();
        seen.record(&source, first.iter(), &sent).unwrap();
        // The write's next chunk takes the filter past its capacity: it is
        // rebuilt from the table, which does not show the first chunk yet.
        let second: Vec<Event> = (3..6).map(event).collect();
        sent.extend(second.iter().map(key));
        seen.record(&source, second.iter(), &sent).unwrap();
        // The write ends; a later retry of the first chunk is found stored.
        source.0.borrow_mut().extend(sent);
        assert_eq!(seen.new_events(&source, &first, false).unwrap(), Vec::<usize>::new());
    }
}
