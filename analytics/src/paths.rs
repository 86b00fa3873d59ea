//! Paths: what people do right after (or before) a given event or page,
//! within the same session.
//!
//! Items are event names (`kind = events`) or the paths of `$pageview`
//! events (`kind = pages`). A session's items are ordered by time, then by
//! event uuid; each occurrence of the start item counts its neighbour once.
//! `null` means the session ended (or began) there.

use crate::fields::{compile_all, Filter};
use crate::sql::{self, Source, Sql};
use crate::time::Window;
use crate::{bounded, cells, AnalyticsError, Ask};
use leanloop_store::{ColumnKind, Dialect};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Next,
    Previous,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ItemKind {
    #[default]
    Events,
    Pages,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathsQuery {
    pub date_from: Option<String>,
    pub date_to: Option<String>,
    pub timezone: Option<String>,
    /// The event name or page path to start from.
    #[schemars(length(min = 1))]
    pub start: String,
    #[serde(default)]
    pub kind: ItemKind,
    #[serde(default)]
    pub direction: Direction,
    /// Entries shown (default 10, at most 100).
    #[schemars(range(min = 1, max = 100))]
    pub limit: Option<usize>,
    #[serde(default)]
    #[schemars(length(max = crate::fields::MAX_FILTERS))]
    pub filters: Vec<Filter>,
}

#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct PathStep {
    pub item: Option<String>,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct PathsResult {
    pub start: String,
    pub direction: Direction,
    /// How often the start item occurred.
    pub occurrences: u64,
    pub steps: Vec<PathStep>,
}

pub fn paths(ask: &Ask, q: &PathsQuery) -> Result<PathsResult, AnalyticsError> {
    let d = ask.dialect();
    let window = Window::parse(q.date_from.as_deref(), q.date_to.as_deref(), q.timezone.as_deref(), ask.now_ms)?;
    let limit = bounded(q.limit, 10, 100, "limit")?;
    if q.start.is_empty() {
        return Err(AnalyticsError::invalid("start", "`start` must name an event or a page path"));
    }
    let item = match q.kind {
        ItemKind::Events => "name",
        ItemKind::Pages => "coalesce(path, '')",
    };
    let mut src = Source::new(d, ask.project_id)
        .column("x_s", Sql::new("session_id"))
        .column("x_i", Sql::new(item))
        .column("x_key", Sql::new(sql::time_key(d, &sql::timestamp_ms(d).text, &sql::uuid_text(d).text)))
        .filter(Sql::new("session_id IS NOT NULL"));
    if q.kind == ItemKind::Pages {
        src = src.filter(Sql::new("name = '$pageview'"));
    }
    src = src.between(Some(window.from_ms), Some(window.to_ms)).filters(compile_all(ask, &q.filters, "filters")?);
    let neighbours = match (d, q.direction) {
        (Dialect::DuckDb, dir) => {
            let f = if dir == Direction::Next { "lead" } else { "lag" };
            Sql::new(format!("SELECT x_i, {f}(x_i) OVER (PARTITION BY x_s ORDER BY x_key) AS x_n FROM "))
                .push(src.render())
        }
        // 18.16 has no window functions: each session's items as a sorted
        // array, zipped with the same array shifted by one. Each row holds
        // two items, not the session's array: joined by position, a session
        // of 20,000 events needed gigabytes.
        (Dialect::ClickHouse, dir) => {
            let shifted = if dir == Direction::Next {
                "arrayPushBack(arrayPopFront(x_items), NULL)"
            } else {
                "arrayPushFront(arrayPopBack(x_items), NULL)"
            };
            let sessions =
                Sql::new("SELECT arraySort((i, k) -> k, groupArray(x_i), groupArray(x_key)) AS x_items FROM ")
                    .push(src.render())
                    .raw(" GROUP BY x_s");
            Sql::new("SELECT x_i, x_n FROM ")
                .push(sessions.wrap())
                .raw(&format!(" ARRAY JOIN x_items AS x_i, {shifted} AS x_n"))
        }
    };
    let sql = Sql::new("SELECT x_n, count(*) AS x_c FROM ")
        .push(neighbours.wrap())
        .raw(" WHERE x_i = ")
        .text(&q.start)
        .raw(" GROUP BY x_n ORDER BY x_c DESC, x_n");
    let rows = ask.rows(sql.select(&[ColumnKind::Text, ColumnKind::Int]))?;
    let occurrences = rows.iter().map(|r| r[1].int() as u64).sum();
    let steps = rows
        .into_iter()
        .take(limit)
        .map(|r| {
            let mut next = cells(r);
            PathStep { item: next().text(), count: next().int() as u64 }
        })
        .collect();
    Ok(PathsResult { start: q.start.clone(), direction: q.direction, occurrences, steps })
}
