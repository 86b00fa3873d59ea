//! The collector's part of the configuration, with the limits it enforces.

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// Largest request body, compressed or not, in bytes.
    pub max_body_bytes: usize,
    /// Request bodies held at once across every connection, in bytes,
    /// from their first byte read until their events are logged. When
    /// taken, ingest answers 503 with Retry-After: slow or stalled uploads
    /// cannot add up to more memory than this.
    pub max_bodies_bytes: usize,
    /// Largest single event (its JSON text), in bytes.
    pub max_event_bytes: usize,
    /// Most events in one batch request.
    pub max_batch_events: usize,
    /// Keep accepted events in the durable write-ahead log until the store
    /// confirms them (a 2xx then survives a crash). Off: an in-memory queue.
    pub log: bool,
    /// Largest undelivered backlog in the log, in bytes. When full, ingest
    /// answers 503 with Retry-After until delivery catches up.
    pub log_max_bytes: u64,
    /// Size of one log segment file; delivered segments are deleted whole.
    pub log_segment_bytes: u64,
    /// Free space the log leaves on its disk for the event store (at most a
    /// quarter of the disk), beside room for the backlog; an append that
    /// would take it is a 503.
    pub log_min_free_bytes: u64,
    /// Longest an event waits in the log for others to share its store write.
    pub delivery_interval_ms: u64,
    /// Longest a store write stays open to fill the store's cheapest write
    /// size (DuckDB: one row group) while events keep arriving fast enough
    /// to fill it in this time. Under lighter load writes go every
    /// `delivery_interval_ms`; at or below it, holding is off.
    pub delivery_fill_wait_ms: u64,
    /// Without the log: events (and person updates) held between HTTP and the
    /// store. When full, ingest answers 503 with Retry-After.
    pub queue_capacity: usize,
    /// Most events the writer stores in one transaction. Unset: what the
    /// store writes best (DuckDB: two row groups, 245,760; ClickHouse: 50,000).
    pub write_batch_events: Option<usize>,
    /// Idle time that ends a server-side session, in minutes.
    pub session_timeout_minutes: u32,
    /// People whose session the collector remembers (least recently seen are forgotten).
    pub session_capacity: usize,
    /// Distinct user agents whose parse is cached.
    pub user_agent_cache: usize,
    /// Header set by a trusted proxy with the client's country code (e.g. `cf-ipcountry`).
    pub country_header: Option<String>,
    /// Take the client address from `X-Forwarded-For` (only behind a trusted proxy).
    pub trust_forwarded_for: bool,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            max_body_bytes: 5 * 1024 * 1024,
            max_bodies_bytes: 64 * 1024 * 1024,
            max_event_bytes: 32 * 1024,
            max_batch_events: 1000,
            log: true,
            log_max_bytes: 2 * 1024 * 1024 * 1024,
            log_segment_bytes: 64 * 1024 * 1024,
            log_min_free_bytes: 128 * 1024 * 1024,
            delivery_interval_ms: 1000,
            delivery_fill_wait_ms: 10_000,
            queue_capacity: 100_000,
            write_batch_events: None,
            session_timeout_minutes: 30,
            session_capacity: 200_000,
            user_agent_cache: 10_000,
            country_header: None,
            trust_forwarded_for: false,
        }
    }
}

impl CollectorConfig {
    /// Checks the limits make sense together; the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_body_bytes", self.max_body_bytes),
            ("max_event_bytes", self.max_event_bytes),
            ("max_batch_events", self.max_batch_events),
            ("queue_capacity", self.queue_capacity),
            ("log_segment_bytes", self.log_segment_bytes as usize),
            ("delivery_interval_ms", self.delivery_interval_ms as usize),
            ("write_batch_events", self.write_batch_events.unwrap_or(1)),
            ("session_timeout_minutes", self.session_timeout_minutes as usize),
            ("session_capacity", self.session_capacity),
            ("user_agent_cache", self.user_agent_cache),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("collector.{name} must be greater than 0"));
        }
        // Far above any use, and below what would overflow or exhaust memory
        // the moment the value is used (a semaphore's permits, a table's
        // capacity, a time added to now).
        let at_most: [(&str, u64, u64); 13] = [
            ("max_body_bytes", self.max_body_bytes as u64, 1 << 30),
            // A semaphore takes at most `usize::MAX >> 3` permits.
            ("max_bodies_bytes", self.max_bodies_bytes as u64, 1 << 34),
            ("max_batch_events", self.max_batch_events as u64, 1_000_000),
            ("queue_capacity", self.queue_capacity as u64, 100_000_000),
            ("log_segment_bytes", self.log_segment_bytes, 1 << 34),
            ("delivery_interval_ms", self.delivery_interval_ms, 3_600_000),
            ("delivery_fill_wait_ms", self.delivery_fill_wait_ms, 3_600_000),
            ("write_batch_events", self.write_batch_events.unwrap_or(1) as u64, 10_000_000),
            ("session_timeout_minutes", self.session_timeout_minutes.into(), 10_080),
            ("session_capacity", self.session_capacity as u64, 100_000_000),
            ("user_agent_cache", self.user_agent_cache as u64, 10_000_000),
            ("log_max_bytes", self.log_max_bytes, 1 << 50),
            ("log_min_free_bytes", self.log_min_free_bytes, 1 << 50),
        ];
        if let Some((name, value, max)) = at_most.iter().find(|(_, v, max)| v > max) {
            return Err(format!("collector.{name}: {value} is above the most it may be, {max}"));
        }
        if let Some(header) = &self.country_header {
            if axum::http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                return Err(format!("collector.country_header: `{header}` is not a header name"));
            }
        }
        // A compressed body and what it inflates to are both held: one
        // request alone must always fit.
        if self.max_bodies_bytes / 2 < self.max_body_bytes {
            return Err(
                "collector.max_bodies_bytes must hold at least two full request bodies (2 × max_body_bytes: a \
                 compressed body and what it inflates to)"
                    .into(),
            );
        }
        if self.max_event_bytes > self.max_body_bytes {
            return Err("collector.max_event_bytes must not exceed collector.max_body_bytes".into());
        }
        if self.log && self.log_max_bytes < self.max_body_bytes as u64 * 2 {
            return Err(
                "collector.log_max_bytes must hold at least two full request bodies (2 × max_body_bytes)".into()
            );
        }
        if self.queue_capacity < self.max_batch_events {
            return Err("collector.queue_capacity must hold at least one full batch (max_batch_events)".into());
        }
        Ok(())
    }
}
