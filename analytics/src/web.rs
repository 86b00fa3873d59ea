//! Web analytics: the Plausible-style overview of `$pageview` events.
//!
//! Visitors are distinct people; sessions are the collector's session ids.
//! A session's length is from its first page view to its last; a bounce is a
//! session with one page view. Entry and exit pages are a session's first and
//! last page views (on equal times, the smallest and the largest path).
//! Source lists (referrers, UTM, browsers, ...) rank values by visitors.

use crate::fields::{compile_all, Filter};
use crate::sql::{self, Source, Sql};
use crate::time::Window;
use crate::{bounded, cells, AnalyticsError, Ask};
use leanloop_store::{Cell, ColumnKind, Dialect};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebQuery {
    pub date_from: Option<String>,
    pub date_to: Option<String>,
    pub timezone: Option<String>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    /// Entries per list (default 10, at most 100).
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct Overview {
    pub visitors: u64,
    pub pageviews: u64,
    pub sessions: u64,
    /// Share of sessions with one page view, 0 to 1.
    pub bounce_rate: f64,
    pub avg_session_seconds: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct Entry {
    /// The value (`null`: not set).
    pub value: Option<String>,
    pub visitors: u64,
    /// Page views for pages; sessions for entry and exit pages; page views
    /// for the other lists.
    pub count: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct WebResult {
    pub overview: Overview,
    pub pages: Vec<Entry>,
    pub entry_pages: Vec<Entry>,
    pub exit_pages: Vec<Entry>,
    pub referrers: Vec<Entry>,
    pub utm_sources: Vec<Entry>,
    pub utm_mediums: Vec<Entry>,
    pub utm_campaigns: Vec<Entry>,
    pub browsers: Vec<Entry>,
    pub os: Vec<Entry>,
    pub devices: Vec<Entry>,
    pub countries: Vec<Entry>,
}

pub fn web(ask: &Ask, q: &WebQuery) -> Result<WebResult, AnalyticsError> {
    let d = ask.dialect();
    let window = Window::parse(q.date_from.as_deref(), q.date_to.as_deref(), q.timezone.as_deref(), ask.now_ms)?;
    let limit = bounded(q.limit, 10, 100, "limit")?;
    let base = Source::new(d, ask.project_id)
        .filter(Sql::new("name = '$pageview'"))
        .between(Some(window.from_ms), Some(window.to_ms))
        .filters(compile_all(ask, &q.filters, "filters")?);
    let with = |cols: &[(&'static str, &str)]| {
        cols.iter().fold(base.clone(), |src, &(alias, expr)| src.column(alias, Sql::new(expr)))
    };

    let people = with(&[("x_s", "session_id")]).with_person().render();
    let totals = ask.rows(
        Sql::new(format!(
            "SELECT {}, count(*), {} FROM ",
            sql::count_distinct(d, "person"),
            sql::count_distinct(d, "x_s")
        ))
        .push(people)
        .select(&[ColumnKind::Int, ColumnKind::Int, ColumnKind::Int]),
    )?;
    let ts = sql::timestamp_ms(d).text;
    let sessions = Sql::new("SELECT x_s, count(*) AS x_n, max(x_ts) - min(x_ts) AS x_d FROM ")
        .push(with(&[("x_s", "session_id"), ("x_ts", &ts)]).render())
        .raw(" WHERE x_s IS NOT NULL GROUP BY x_s");
    let session_stats = ask.rows(
        Sql::new("SELECT count(*), sum(CASE WHEN x_n = 1 THEN 1 ELSE 0 END), sum(x_d) FROM ")
            .push(sessions.wrap())
            .select(&[ColumnKind::Int, ColumnKind::Int, ColumnKind::Int]),
    )?;
    let (n_sessions, bounces, length_ms) = match session_stats.first() {
        Some(r) => (r[0].int(), r[1].int(), r[2].int()),
        None => (0, 0, 0),
    };
    let ratio = |a: i64, b: i64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let t = totals.first().cloned().unwrap_or_else(|| vec![Cell::Int(0); 3]);
    let overview = Overview {
        visitors: t[0].int() as u64,
        pageviews: t[1].int() as u64,
        sessions: t[2].int() as u64,
        bounce_rate: ratio(bounces, n_sessions),
        avg_session_seconds: ratio(length_ms, n_sessions) / 1000.0,
    };

    // A list of one column's values by visitors, counting page views.
    let list = |column: &'static str| -> Result<Vec<Entry>, AnalyticsError> {
        let src = with(&[("x_v", column)]).with_person().render();
        top(ask, src, "count(*)", limit)
    };
    let ends = |first: bool| -> Result<Vec<Entry>, AnalyticsError> {
        let key = sql::time_key(d, "x_ts", "x_p");
        let pick = if first { "min" } else { "max" };
        let per_session = Sql::new(format!("SELECT x_s, min(person) AS person, {pick}({key}) AS x_key FROM "))
            .push(with(&[("x_s", "session_id"), ("x_ts", &ts), ("x_p", "path")]).with_person().render())
            .raw(" WHERE x_s IS NOT NULL GROUP BY x_s");
        let src = Sql::new(format!("SELECT person, {} AS x_v FROM ", sql::after_time_key(d, "x_key")))
            .push(per_session.wrap())
            .wrap();
        top(ask, src, "count(*)", limit)
    };
    Ok(WebResult {
        overview,
        pages: top_by_count(ask, with(&[("x_v", "path")]).with_person().render(), limit)?,
        entry_pages: ends(true)?,
        exit_pages: ends(false)?,
        referrers: list("referrer_domain")?,
        utm_sources: list("utm_source")?,
        utm_mediums: list("utm_medium")?,
        utm_campaigns: list("utm_campaign")?,
        browsers: list("browser")?,
        os: list("os")?,
        devices: list("device_type")?,
        countries: list("country")?,
    })
}

/// Values of `x_v` in `src` ranked by visitors, then `count`, then value.
fn top(ask: &Ask, src: Sql, count: &str, limit: usize) -> Result<Vec<Entry>, AnalyticsError> {
    ranked(ask, src, count, limit, "x_visitors DESC, x_count DESC")
}

/// Values of `x_v` in `src` ranked by rows (page views), then visitors.
fn top_by_count(ask: &Ask, src: Sql, limit: usize) -> Result<Vec<Entry>, AnalyticsError> {
    ranked(ask, src, "count(*)", limit, "x_count DESC, x_visitors DESC")
}

fn ranked(ask: &Ask, src: Sql, count: &str, limit: usize, order: &str) -> Result<Vec<Entry>, AnalyticsError> {
    let d = ask.dialect();
    let visitors = sql::count_distinct(d, "person");
    // Empty entry/exit paths read back as '' from a time key: show them as unset.
    let value = match d {
        Dialect::DuckDb => "nullif(x_v, '')",
        Dialect::ClickHouse => "nullIf(x_v, '')",
    };
    let sql = Sql::new(format!("SELECT {value} AS x_val, {visitors} AS x_visitors, {count} AS x_count FROM "))
        .push(src)
        .raw(&format!(" GROUP BY x_val ORDER BY {order}, x_val LIMIT {limit}"));
    let rows = ask.rows(sql.select(&[ColumnKind::Text, ColumnKind::Int, ColumnKind::Int]))?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let mut next = cells(r);
            let value = next().text();
            let visitors = next().int() as u64;
            let count = next().int() as u64;
            Entry { value, visitors, count }
        })
        .collect())
}
