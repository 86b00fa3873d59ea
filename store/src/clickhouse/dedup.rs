//! ClickHouse's side of uuid deduplication (see [`crate::seen`]): the filter
//! holds the keys received within the dedup window, and "maybe seen" keys are
//! looked up by uuid over the days a stored copy can belong to (the window
//! before their timestamps, a day after), which the table's order key makes
//! cheaper than a scan.

use crate::seen::{Key, KeySource};
use crate::StoreError;
use clickhouse::Row;
use leanloop_core::Event;
use serde::Deserialize;
use std::collections::{BTreeSet, HashSet};
use std::time::Duration;
use uuid::Uuid;

const CHECK_CHUNK: usize = 1000;

pub struct ClickHouseKeys<'a> {
    pub client: &'a clickhouse::Client,
    pub runtime: &'a tokio::runtime::Runtime,
    pub window: Duration,
}

#[derive(Row, Deserialize)]
struct StoredKey {
    project_id: i64,
    #[serde(with = "clickhouse::serde::uuid")]
    uuid: Uuid,
}

impl ClickHouseKeys<'_> {
    fn since_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis() - self.window.as_millis() as i64
    }
}

impl KeySource for ClickHouseKeys<'_> {
    fn stored_count(&self) -> Result<usize, StoreError> {
        let query = self.client.query("SELECT count() FROM events WHERE received_at_ms >= ?").bind(self.since_ms());
        let n: u64 = super::block(self.runtime, query.fetch_one())?;
        Ok(n as usize)
    }

    fn each_stored(&self, f: &mut dyn FnMut(Key)) -> Result<(), StoreError> {
        super::block(self.runtime, async {
            let mut cursor = self
                .client
                .query("SELECT project_id, uuid FROM events WHERE received_at_ms >= ?")
                .bind(self.since_ms())
                .fetch::<StoredKey>()?;
            while let Some(row) = cursor.next().await? {
                f((row.project_id, row.uuid.as_u128()));
            }
            Ok(())
        })
    }

    /// Values are spliced, not bound: they are formatted from an `i64` and
    /// parsed `Uuid`s, never client text, and an `IN (...)` tuple is the one
    /// list form every server version reads.
    fn stored_among(&self, candidates: &[&Event]) -> Result<HashSet<Key>, StoreError> {
        let mut found = HashSet::new();
        for chunk in candidates.chunks(CHECK_CHUNK) {
            let projects: BTreeSet<i64> = chunk.iter().map(|e| e.project_id).collect();
            let projects: Vec<String> = projects.iter().map(i64::to_string).collect();
            let uuids: Vec<String> = chunk.iter().map(|e| format!("'{}'", e.uuid.hyphenated())).collect();
            // The time range lets ClickHouse skip partitions and granules. It
            // is wide because one event's timestamp differs between its
            // attempts when it depends on when it was received (no client
            // timestamp, clock-skew correction, the future clamp): a stored
            // copy is at most the dedup window older, or a clamped one up to
            // a day newer.
            let (window, day) = (self.window.as_secs() as i64, 86_400);
            let first = chunk.iter().map(|e| e.timestamp_ms).min().unwrap_or(0).div_euclid(1000) - window - day;
            let last = chunk.iter().map(|e| e.timestamp_ms).max().unwrap_or(0).div_euclid(1000) + day;
            let sql = format!(
                "SELECT project_id, uuid FROM events
                 WHERE project_id IN ({}) AND timestamp BETWEEN toDateTime({}) AND toDateTime({})
                   AND toString(uuid) IN ({})",
                projects.join(","),
                super::write::clamp_seconds(first),
                super::write::clamp_seconds(last),
                uuids.join(",")
            );
            let rows: Vec<StoredKey> = super::block(self.runtime, self.client.query(&sql).fetch_all())?;
            found.extend(rows.into_iter().map(|r| (r.project_id, r.uuid.as_u128())));
        }
        Ok(found)
    }
}
