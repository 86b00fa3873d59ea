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
    // Entry and exit pages: each session's first and last page view (its
    // smallest and largest time key).
    let key = sql::time_key(d, "x_ts", "x_p");
    let per_session =
        Sql::new(format!("SELECT x_s, min(person) AS person, min({key}) AS x_first, max({key}) AS x_last FROM "))
            .push(with(&[("x_s", "session_id"), ("x_ts", &ts), ("x_p", "path")]).with_person().render())
            .raw(" WHERE x_s IS NOT NULL GROUP BY x_s")
            .wrap();
    let (first, last) = (sql::after_time_key(d, "x_first"), sql::after_time_key(d, "x_last"));
    let ends = ranked_together(ask, per_session, &[(&first, BY_VISITORS), (&last, BY_VISITORS)], limit)?;

    // The other lists: one column's values each, counting page views.
    let lists: [(&str, Order); 9] = [
        ("path", BY_PAGEVIEWS),
        ("referrer_domain", BY_VISITORS),
        ("utm_source", BY_VISITORS),
        ("utm_medium", BY_VISITORS),
        ("utm_campaign", BY_VISITORS),
        ("browser", BY_VISITORS),
        ("os", BY_VISITORS),
        ("device_type", BY_VISITORS),
        ("country", BY_VISITORS),
    ];
    let src = lists
        .iter()
        .zip(LIST_ALIASES)
        .fold(base.clone(), |src, (&(column, _), alias)| src.column(alias, Sql::new(column)));
    let mut values: Vec<(&str, Order)> =
        lists.iter().zip(LIST_ALIASES).map(|(&(_, order), alias)| (alias, order)).collect();
    // A list of one constant value has one entry: all visitors, all page
    // views. It rides along with the others instead of a pass of its own.
    values.push(("''", BY_VISITORS));
    let lists = ranked_together(ask, src.with_person().render(), &values, limit)?;
    // `ranked_together` answers one list per value asked, in order.
    let [pages, referrers, utm_sources, utm_mediums, utm_campaigns, browsers, os, devices, countries, total] =
        <[Vec<Entry>; 10]>::try_from(lists).unwrap_or_default();
    let total = total.first().map_or((0, 0), |t| (t.visitors, t.count));
    let ratio = |a: i64, b: i64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let overview = Overview {
        visitors: total.0,
        pageviews: total.1,
        // Each session id is one group of the session statistics.
        sessions: n_sessions as u64,
        bounce_rate: ratio(bounces, n_sessions),
        avg_session_seconds: ratio(length_ms, n_sessions) / 1000.0,
    };
    let [entry_pages, exit_pages] = <[Vec<Entry>; 2]>::try_from(ends).unwrap_or_default();
    Ok(WebResult {
        overview,
        pages,
        entry_pages,
        exit_pages,
        referrers,
        utm_sources,
        utm_mediums,
        utm_campaigns,
        browsers,
        os,
        devices,
        countries,
    })
}

/// Column aliases of the lists' values.
const LIST_ALIASES: [&str; 9] = ["x_l0", "x_l1", "x_l2", "x_l3", "x_l4", "x_l5", "x_l6", "x_l7", "x_l8"];

/// How a list is ranked: (first, second) of visitors and count, then value.
type Order = (&'static str, &'static str);
/// Sources by visitors, then page views.
const BY_VISITORS: Order = ("x_visitors", "x_count");
/// Pages by page views, then visitors.
const BY_PAGEVIEWS: Order = ("x_count", "x_visitors");

/// Several lists of values in `src`: list `k` ranks the values of
/// `values[k].0` (an expression over `src`'s columns) by `values[k].1`, in
/// one pass (one identity join): DuckDB groups by grouping sets, ClickHouse
/// 18.16 (without them) multiplies each row by its values with `ARRAY JOIN`.
fn ranked_together(
    ask: &Ask,
    src: Sql,
    values: &[(&str, Order)],
    limit: usize,
) -> Result<Vec<Vec<Entry>>, AnalyticsError> {
    let d = ask.dialect();
    let by_count: Vec<String> =
        (0..values.len()).filter(|&k| values[k].1 == BY_PAGEVIEWS).map(|k| k.to_string()).collect();
    let rank = |first: bool| {
        let (count, visitors) = if first { ("x_count", "x_visitors") } else { ("x_visitors", "x_count") };
        match by_count.is_empty() {
            true => visitors.to_owned(),
            false => format!("CASE WHEN x_k IN ({}) THEN {count} ELSE {visitors} END", by_count.join(", ")),
        }
    };
    let order = format!("{} DESC, {} DESC, x_val", rank(true), rank(false));
    let sql = match d {
        Dialect::DuckDb => {
            let aliases: Vec<String> = (0..values.len()).map(|k| format!("x_v{k}")).collect();
            let columns: Vec<String> =
                values.iter().zip(&aliases).map(|((v, _), a)| format!("{} AS {a}", unset_if_empty(d, v))).collect();
            // Each row of a grouping set has that set's column grouped.
            let of_set = |f: &dyn Fn(usize, &str) -> String| {
                let arms: Vec<String> = aliases
                    .iter()
                    .enumerate()
                    .map(|(k, a)| format!("WHEN grouping({a}) = 0 THEN {}", f(k, a)))
                    .collect();
                format!("CASE {} END", arms.join(" "))
            };
            // Grouped by (value, person) first, then people counted per value:
            // with a distinct count per grouping set, the entry and exit
            // pages of 10M events outgrew DuckDB's default 256 MB; this form
            // fits, at 5–10 % more time (measured on the bench store).
            let sets: Vec<String> = aliases.iter().map(|a| format!("({a}, person)")).collect();
            let per_person = Sql::new(format!(
                "SELECT {} AS x_k, {} AS x_val, person, count(*) AS x_n FROM (SELECT person, {} FROM ",
                of_set(&|k, _| k.to_string()),
                of_set(&|_, a| a.to_owned()),
                columns.join(", ")
            ))
            .push(src)
            .raw(&format!(") GROUP BY GROUPING SETS ({})", sets.join(", ")));
            // `count(person)`: a value's rows without a person add page
            // views but no visitor, as a distinct count would.
            Sql::new("SELECT x_k, x_val, count(person) AS x_visitors, sum(x_n) AS x_count FROM ")
                .push(per_person.wrap())
                .raw(&format!(
                    " GROUP BY x_k, x_val QUALIFY row_number() OVER (PARTITION BY x_k ORDER BY {order}) <= {limit} \
                     ORDER BY x_k, {order}"
                ))
        }
        Dialect::ClickHouse => {
            let keys: Vec<String> = (0..values.len()).map(|k| k.to_string()).collect();
            let exprs: Vec<String> = values.iter().map(|(v, _)| format!("CAST(ifNull({v}, '') AS String)")).collect();
            let (keys, exprs) = (keys.join(", "), exprs.join(", "));
            let counts = format!("{} AS x_visitors, count(*) AS x_count", sql::count_distinct(d, "person"));
            Sql::new(format!("SELECT x_k, {} AS x_val, {counts} FROM ", unset_if_empty(d, "x_v")))
                .push(src)
                .raw(&format!(" ARRAY JOIN [{keys}] AS x_k, [{exprs}] AS x_v GROUP BY x_k, x_val "))
                .raw(&format!("ORDER BY x_k, {order} LIMIT {limit} BY x_k"))
        }
    };
    let mut lists = vec![Vec::new(); values.len()];
    for r in ask.rows(sql.select(&[ColumnKind::Int, ColumnKind::Text, ColumnKind::Int, ColumnKind::Int]))? {
        let mut next = cells(r);
        let k = next().int();
        if let Some(list) = usize::try_from(k).ok().and_then(|k| lists.get_mut(k)) {
            list.push(entry(next));
        }
    }
    Ok(lists)
}

/// One ranked row: value, visitors, count.
fn entry(mut next: impl FnMut() -> Cell) -> Entry {
    let value = next().text();
    let visitors = next().int() as u64;
    let count = next().int() as u64;
    Entry { value, visitors, count }
}

/// `x` as a list value: empty (e.g. the path of an entry key) reads as unset.
fn unset_if_empty(d: Dialect, x: &str) -> String {
    match d {
        Dialect::DuckDb => format!("nullif({x}, '')"),
        Dialect::ClickHouse => format!("nullIf({x}, '')"),
    }
}
