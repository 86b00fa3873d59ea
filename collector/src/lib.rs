//! The ingestion edge: HTTP endpoints that speak Segment's and PostHog's wire
//! formats and Leanloop's feedback call, enrichment, and the bounded queue
//! that feeds the event store.
//!
//! Invariants: the collector never touches Docker and never answers queries;
//! a client's mistake is a 4xx naming the field, never a 5xx or a panic; a
//! request is acknowledged only once all its accepted events are queued, and
//! a full queue refuses whole requests (503) instead of dropping events.

mod body;
mod config;
mod enrich;
mod error;
mod queue;
mod routes;
mod sessions;
pub mod wire;

pub use config::CollectorConfig;
pub use enrich::event_uuid;
pub use error::IngestError;
pub use queue::IngestQueue;

use enrich::Enricher;
use leanloop_control::KeyCache;
use leanloop_store::EventStore;
use sessions::Sessions;
use std::sync::Arc;

pub struct Collector {
    config: CollectorConfig,
    keys: Arc<KeyCache>,
    enricher: Enricher,
    queue: IngestQueue,
}

impl Collector {
    /// Starts the writer over `store` and returns the collector, ready to route.
    pub fn start(config: CollectorConfig, keys: Arc<KeyCache>, store: Arc<dyn EventStore>) -> Arc<Collector> {
        let sessions = Sessions::new(config.session_capacity, config.session_timeout_minutes);
        let enricher = Enricher::new(config.user_agent_cache, sessions);
        let queue = IngestQueue::start(store, config.queue_capacity, config.write_batch_events);
        Arc::new(Collector { config, keys, enricher, queue })
    }

    /// The ingest routes, CORS included.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        routes::router(self.clone())
    }

    pub fn queue(&self) -> &IngestQueue {
        &self.queue
    }
}
