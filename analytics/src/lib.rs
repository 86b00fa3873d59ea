//! Questions asked of the event store, validated and answered.
//!
//! Invariants: analytics never speaks HTTP and never writes events; every
//! value a caller supplies reaches SQL as a bound parameter.

mod events;

pub use events::{EventQuery, EventView};

use leanloop_core::{Classify, ErrorClass};
use leanloop_store::{EventStore, StoreError};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum AnalyticsError {
    #[error("{message}")]
    InvalidQuery { field: &'static str, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AnalyticsError {
    fn invalid(field: &'static str, message: impl Into<String>) -> AnalyticsError {
        AnalyticsError::InvalidQuery { field, message: message.into() }
    }
}

impl Classify for AnalyticsError {
    fn class(&self) -> ErrorClass {
        match self {
            AnalyticsError::InvalidQuery { field, .. } => ErrorClass::BadRequest { field: Some((*field).to_owned()) },
            AnalyticsError::Store(e) => e.class(),
        }
    }
}

/// Answers queries for any project; callers decide who may ask.
#[derive(Clone)]
pub struct Analytics {
    store: Arc<dyn EventStore>,
}

impl Analytics {
    pub fn new(store: Arc<dyn EventStore>) -> Analytics {
        Analytics { store }
    }

    /// Stored events matching `query`, each uuid once.
    pub fn count(&self, project_id: i64, query: &EventQuery) -> Result<u64, AnalyticsError> {
        Ok(self.store.count(&query.filter(project_id)?)?)
    }

    /// The newest matching events.
    pub fn recent(&self, project_id: i64, query: &EventQuery) -> Result<Vec<EventView>, AnalyticsError> {
        let filter = query.filter(project_id)?;
        let events = self.store.recent(&filter, query.limit()?)?;
        Ok(events.into_iter().map(EventView::from).collect())
    }
}
