//! Questions asked of the event store, validated and answered: raw event
//! lists, and the insights product managers read (trends, funnels,
//! retention, paths, web analytics, feedback, releases, live), with cohorts
//! (saved people filters) usable as a filter in all of them.
//!
//! Each insight is a typed query compiled to SQL for the store's dialect
//! (`sql.rs` holds every piece that differs between DuckDB and ClickHouse),
//! so both stores give the same answers; where SQL alone cannot express a
//! definition the same way on both (a funnel's walk), the store returns
//! ordered rows and the walk is done here, once.
//!
//! Invariants: analytics never speaks HTTP and never writes events; every
//! value a caller supplies reaches SQL as a bound parameter.

pub mod cohorts;
mod events;
pub mod feedback;
pub mod fields;
mod folded;
pub mod funnels;
pub mod live;
pub mod paths;
pub mod people;
mod re2;
pub mod releases;
pub mod retention;
mod sql;
pub mod time;
pub mod trends;
pub mod web;

pub use cohorts::{CohortBook, CohortDefinition, StoredCohort};
pub use events::{EventQuery, EventView};

use cohorts::Cohorts;

use leanloop_core::{Classify, ErrorClass};
use leanloop_store::{Cell, Column, Dialect, EventStore, Rows, Select, StoreError};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum AnalyticsError {
    #[error("{message}")]
    InvalidQuery { field: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The cohort definitions could not be read.
    #[error("cohort definitions: {0}")]
    Cohorts(String),
}

impl AnalyticsError {
    fn invalid(field: impl Into<String>, message: impl Into<String>) -> AnalyticsError {
        AnalyticsError::InvalidQuery { field: field.into(), message: message.into() }
    }
}

/// Reads a row's cells in order; a missing cell reads as NULL.
fn cells(row: Vec<Cell>) -> impl FnMut() -> Cell {
    let mut row = row.into_iter();
    move || row.next().unwrap_or(Cell::Null)
}

/// `value` (or `default`) when from 1 to `max`, else a 400 naming `field`.
fn bounded(value: Option<usize>, default: usize, max: usize, field: &str) -> Result<usize, AnalyticsError> {
    match value.unwrap_or(default) {
        n if (1..=max).contains(&n) => Ok(n),
        _ => Err(AnalyticsError::invalid(field, format!("`{field}` must be from 1 to {max}"))),
    }
}

/// One question's context: the store, the project, "now", and the cohorts
/// its filters may name.
pub struct Ask<'a> {
    store: &'a dyn EventStore,
    cohorts: &'a Cohorts,
    project_id: i64,
    now_ms: i64,
}

impl Ask<'_> {
    fn dialect(&self) -> Dialect {
        self.store.dialect()
    }

    fn rows(&self, select: Select) -> Result<Rows, AnalyticsError> {
        tracing::debug!(sql = %select.sql, "insight query");
        Ok(self.store.select(&select)?)
    }

    /// The rows of `select`, handed to `each` a batch of columns at a time:
    /// for results of millions of rows.
    fn batches(&self, select: Select, each: &mut dyn FnMut(Vec<Column>)) -> Result<(), AnalyticsError> {
        tracing::debug!(sql = %select.sql, "insight query");
        Ok(self.store.select_batches(&select, each)?)
    }
}

impl Classify for AnalyticsError {
    fn class(&self) -> ErrorClass {
        match self {
            AnalyticsError::InvalidQuery { field, .. } => ErrorClass::BadRequest { field: Some(field.clone()) },
            AnalyticsError::Store(e) => e.class(),
            AnalyticsError::Cohorts(_) => ErrorClass::Internal,
        }
    }
}

/// Answers queries for any project; callers decide who may ask.
#[derive(Clone)]
pub struct Analytics {
    store: Arc<dyn EventStore>,
    cohorts: Arc<Cohorts>,
}

impl Analytics {
    /// Queries `store`; cohorts named in filters are looked up in `book`.
    pub fn new(store: Arc<dyn EventStore>, book: Arc<dyn CohortBook>) -> Analytics {
        Analytics { store, cohorts: Arc::new(Cohorts::new(book)) }
    }

    /// Stored events matching `query`, each uuid once.
    pub fn count(&self, project_id: i64, query: &EventQuery) -> Result<u64, AnalyticsError> {
        // Refused, not ignored: a count that looks limited but is not.
        if query.limit.is_some() {
            return Err(AnalyticsError::invalid("limit", "a count takes no `limit`; it counts every match"));
        }
        Ok(self.store.count(&query.filter(project_id)?)?)
    }

    /// The newest matching events.
    pub fn recent(&self, project_id: i64, query: &EventQuery) -> Result<Vec<EventView>, AnalyticsError> {
        let filter = query.filter(project_id)?;
        let events = self.store.recent(&filter, query.limit()?)?;
        Ok(events.into_iter().map(EventView::from).collect())
    }

    /// A context for one question about `project_id`, asked at `now_ms`.
    pub fn ask(&self, project_id: i64, now_ms: i64) -> Ask<'_> {
        Ask { store: self.store.as_ref(), cohorts: &self.cohorts, project_id, now_ms }
    }

    /// The number of people in cohort `id` now (computing its members if
    /// they are out of date); a 400 at `id` when there is no such cohort.
    pub fn cohort_size(&self, project_id: i64, id: i64) -> Result<u64, AnalyticsError> {
        let ask = self.ask(project_id, now_ms());
        Ok(self.cohorts.current(&ask, id, "id")?.size)
    }

    /// Deletes the stored members of a cohort that was deleted.
    pub fn forget_cohort(&self, project_id: i64, id: i64) -> Result<(), AnalyticsError> {
        self.cohorts.forget(&self.ask(project_id, now_ms()), id)
    }

    pub fn trend(&self, project_id: i64, q: &trends::TrendQuery) -> Result<trends::TrendResult, AnalyticsError> {
        trends::trend(&self.ask(project_id, now_ms()), q)
    }

    pub fn funnel(&self, project_id: i64, q: &funnels::FunnelQuery) -> Result<funnels::FunnelResult, AnalyticsError> {
        funnels::funnel(&self.ask(project_id, now_ms()), q)
    }

    pub fn retention(
        &self,
        project_id: i64,
        q: &retention::RetentionQuery,
    ) -> Result<retention::RetentionResult, AnalyticsError> {
        retention::retention(&self.ask(project_id, now_ms()), q)
    }

    pub fn paths(&self, project_id: i64, q: &paths::PathsQuery) -> Result<paths::PathsResult, AnalyticsError> {
        paths::paths(&self.ask(project_id, now_ms()), q)
    }

    pub fn web(&self, project_id: i64, q: &web::WebQuery) -> Result<web::WebResult, AnalyticsError> {
        web::web(&self.ask(project_id, now_ms()), q)
    }

    pub fn feedback(
        &self,
        project_id: i64,
        q: &feedback::FeedbackQuery,
    ) -> Result<feedback::FeedbackResult, AnalyticsError> {
        feedback::feedback(&self.ask(project_id, now_ms()), q)
    }

    pub fn releases(
        &self,
        project_id: i64,
        q: &releases::ReleasesQuery,
    ) -> Result<Vec<releases::ReleaseSummary>, AnalyticsError> {
        releases::releases(&self.ask(project_id, now_ms()), q)
    }

    pub fn impact(&self, project_id: i64, q: &releases::ImpactQuery) -> Result<releases::ImpactResult, AnalyticsError> {
        releases::impact(&self.ask(project_id, now_ms()), q)
    }

    pub fn people(&self, project_id: i64, q: &people::PeopleQuery) -> Result<people::PeopleResult, AnalyticsError> {
        people::people(&self.ask(project_id, now_ms()), q)
    }

    pub fn profile(
        &self,
        project_id: i64,
        user_id: &str,
        limit: usize,
    ) -> Result<Option<people::Profile>, AnalyticsError> {
        people::profile(&self.ask(project_id, now_ms()), user_id, limit)
    }

    pub fn live(&self, project_id: i64) -> Result<live::LiveResult, AnalyticsError> {
        live::live(&self.ask(project_id, now_ms()))
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
