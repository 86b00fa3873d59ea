//! Which events a read asks for.

/// Conditions combined with AND. Times are ms since the epoch; `from` is
/// inclusive and `to` exclusive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub project_id: i64,
    pub name: Option<String>,
    /// Matches the user id or the anonymous id.
    pub user: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

impl EventFilter {
    pub fn project(project_id: i64) -> EventFilter {
        EventFilter { project_id, ..EventFilter::default() }
    }
}
