//! The ingestion edge: HTTP endpoints that speak Segment's and PostHog's wire
//! formats and Leanloop's feedback call, enrichment, and the durable
//! write-ahead log (or, switched off, a bounded in-memory queue) that feeds
//! the event store.
//!
//! Invariants: the collector never touches Docker and never answers queries;
//! a client's mistake is a 4xx naming the field, never a 5xx or a panic; a
//! request is acknowledged only once all its accepted events are in the log
//! and synced (or queued, without the log), and a full log or queue refuses
//! whole requests (503) instead of dropping events.

mod body;
mod config;
mod enrich;
mod error;
mod flags;
mod queue;
mod remote_config;
mod routes;
mod sdk;
mod sessions;
mod spool;
mod wal;
pub mod wire;

pub use config::CollectorConfig;
pub use enrich::event_uuid;
pub use error::{IngestError, REJECTION_REASONS, UNAVAILABLE_RETRY_AFTER_SECS};
pub use queue::IngestQueue;
pub use routes::{segment_call_paths, SEGMENT_BATCH_PATHS};
pub use spool::{Backlog, Spool};
pub use wal::{undelivered, Wal, WalError, WalOptions};

use enrich::Enricher;
use leanloop_control::KeyCache;
use leanloop_store::EventStore;
use sessions::Sessions;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub struct Collector {
    config: CollectorConfig,
    bodies: body::BodyBudget,
    /// Bodies decoded off the runtime at once (see `routes.rs`).
    decoders: Arc<tokio::sync::Semaphore>,
    keys: Arc<KeyCache>,
    enricher: Enricher,
    queue: Spool,
}

impl Collector {
    /// Opens the write-ahead log in `log_dir` (unless the configuration
    /// switches it off), starts delivery to `store`, and returns the
    /// collector, ready to route.
    pub fn start(
        config: CollectorConfig,
        keys: Arc<KeyCache>,
        store: Arc<dyn EventStore>,
        log_dir: &Path,
    ) -> Result<Arc<Collector>, WalError> {
        let sessions = Sessions::new(config.session_capacity, config.session_timeout_minutes);
        let enricher = Enricher::new(config.user_agent_cache, sessions);
        let batch_events = config.write_batch_events.unwrap_or_else(|| store.preferred_write_events());
        let queue = if config.log {
            Spool::Log(Wal::open(
                WalOptions {
                    dir: log_dir.to_path_buf(),
                    max_bytes: config.log_max_bytes,
                    // A segment, and so its spare, is never larger than the
                    // whole backlog may be.
                    segment_bytes: config.log_segment_bytes.min(config.log_max_bytes),
                    reserve: wal::Reserve { min_free: config.log_min_free_bytes },
                    batch_events,
                    interval: Duration::from_millis(config.delivery_interval_ms),
                    fill_wait: Duration::from_millis(config.delivery_fill_wait_ms),
                },
                store,
            )?)
        } else {
            Spool::Memory(IngestQueue::start(store, config.queue_capacity, batch_events))
        };
        let bodies = body::BodyBudget::new(config.max_bodies_bytes);
        let decoders = Arc::new(tokio::sync::Semaphore::new(routes::MAX_OFFLOADED_DECODES));
        Ok(Arc::new(Collector { config, bodies, decoders, keys, enricher, queue }))
    }

    /// The ingest routes, CORS included.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        routes::router(self.clone())
    }

    pub fn queue(&self) -> &Spool {
        &self.queue
    }
}
