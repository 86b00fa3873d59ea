//! Trends: a metric per time bucket for one or more series, optionally
//! broken down by a field (top N values plus "other") and compared with the
//! previous period.

use crate::fields::{compile_all, Field, Filter};
use crate::sql::{self, Source, Sql};
use crate::time::{Interval, Window};
use crate::{bounded, AnalyticsError, Ask};
use leanloop_store::{Cell, ColumnKind, Dialect};
use serde::{Deserialize, Serialize};
use std::collections::hash_map::Entry;
use std::collections::HashMap;

/// What a series measures per bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Math {
    /// Number of events.
    Total,
    /// Distinct people (identify stitches anonymous ids to users).
    UniqueUsers,
    /// Distinct sessions.
    Sessions,
    Sum,
    Avg,
    Min,
    Max,
    P50,
    P90,
    P95,
    P99,
}

impl Math {
    fn needs_property(self) -> bool {
        !matches!(self, Math::Total | Math::UniqueUsers | Math::Sessions)
    }

    fn quantile(self) -> Option<f64> {
        match self {
            Math::P50 => Some(0.5),
            Math::P90 => Some(0.9),
            Math::P95 => Some(0.95),
            Math::P99 => Some(0.99),
            _ => None,
        }
    }

    /// SQL aggregate(s) over a [`Source`] with `x_v` (value), `person` and
    /// `x_s` (session) as needed. `Avg` answers sum and count.
    fn aggregates(self, d: Dialect) -> (Vec<String>, Vec<ColumnKind>) {
        use ColumnKind::*;
        match self {
            Math::Total => (vec!["count(*)".into()], vec![Int]),
            Math::UniqueUsers => (vec![sql::count_distinct(d, "person")], vec![Int]),
            Math::Sessions => (vec![sql::count_distinct(d, "x_s")], vec![Int]),
            Math::Sum => (vec!["sum(x_v)".into()], vec![Float]),
            Math::Avg => (vec!["sum(x_v)".into(), "count(x_v)".into()], vec![Float, Int]),
            Math::Min => (vec!["min(x_v)".into()], vec![Float]),
            Math::Max => (vec!["max(x_v)".into()], vec![Float]),
            _ => (vec![sql::percentile(d, "x_v", self.quantile().unwrap_or(0.5))], vec![Float]),
        }
    }

    /// Whether the aggregate over a range follows from the aggregates of its
    /// buckets (see [`Math::merge`]); distinct counts and percentiles do not.
    fn mergeable(self) -> bool {
        matches!(self, Math::Total | Math::Sum | Math::Avg | Math::Min | Math::Max)
    }

    /// The aggregate cells of two disjoint sets of events, from theirs.
    fn merge(self, a: &[Cell], b: &[Cell]) -> Vec<Cell> {
        let floats = |x: &Cell, y: &Cell, pick: fn(f64, f64) -> f64| match (x.float(), y.float()) {
            (Some(x), Some(y)) => Cell::Float(pick(x, y)),
            (Some(v), None) | (None, Some(v)) => Cell::Float(v),
            (None, None) => Cell::Null,
        };
        match self {
            Math::Total => vec![Cell::Int(a[0].int() + b[0].int())],
            Math::Sum => vec![floats(&a[0], &b[0], |x, y| x + y)],
            Math::Avg => vec![floats(&a[0], &b[0], |x, y| x + y), Cell::Int(a[1].int() + b[1].int())],
            Math::Min => vec![floats(&a[0], &b[0], f64::min)],
            Math::Max => vec![floats(&a[0], &b[0], f64::max)],
            _ => a.to_vec(),
        }
    }

    /// The answer from the aggregate cells; counts are whole numbers.
    fn value(self, cells: &[Cell]) -> serde_json::Value {
        match self {
            Math::Total | Math::UniqueUsers | Math::Sessions => cells[0].int().into(),
            Math::Sum => cells[0].float().unwrap_or(0.0).into(),
            Math::Avg => match cells[1].int() {
                0 => serde_json::Value::Null,
                n => (cells[0].float().unwrap_or(0.0) / n as f64).into(),
            },
            _ => cells[0].float().map_or(serde_json::Value::Null, Into::into),
        }
    }

    /// The value of a bucket with no events.
    fn empty(self) -> serde_json::Value {
        match self {
            Math::Total | Math::UniqueUsers | Math::Sessions => 0.into(),
            Math::Sum => 0.0.into(),
            _ => serde_json::Value::Null,
        }
    }
}

/// One line of a trend: which events, and what to measure of them.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Series {
    /// Event name; all events when absent.
    pub event: Option<String>,
    #[serde(default = "total")]
    pub math: Math,
    /// The numeric property `sum`..`p99` measure (`properties.<key>` or a key).
    pub property: Option<String>,
    #[serde(default)]
    #[schemars(length(max = crate::fields::MAX_FILTERS))]
    pub filters: Vec<Filter>,
}

fn total() -> Math {
    Math::Total
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrendQuery {
    pub date_from: Option<String>,
    pub date_to: Option<String>,
    pub timezone: Option<String>,
    #[serde(default = "day")]
    pub interval: Interval,
    #[schemars(length(min = 1, max = MAX_SERIES))]
    pub series: Vec<Series>,
    #[serde(default)]
    #[schemars(length(max = crate::fields::MAX_FILTERS))]
    pub filters: Vec<Filter>,
    /// A column, `properties.<key>`, or `release`.
    pub breakdown: Option<String>,
    /// Values shown besides "other" (default 10, at most 100).
    #[schemars(range(min = 1, max = 100))]
    pub breakdown_limit: Option<usize>,
    #[serde(default)]
    pub compare: bool,
}

fn day() -> Interval {
    Interval::Day
}

#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct SeriesResult {
    pub event: Option<String>,
    pub math: Math,
    /// The breakdown value (`null`: events without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breakdown_value: Option<Option<String>>,
    /// This line sums up the values outside the top N.
    /// Left out when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub other: bool,
    pub data: Vec<serde_json::Value>,
    /// The metric over the whole range (distinct counts are not the sum of
    /// the buckets).
    pub aggregate: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct TrendPeriod {
    pub buckets: Vec<String>,
    pub series: Vec<SeriesResult>,
}

#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct TrendResult {
    pub interval: Interval,
    pub timezone: String,
    #[serde(flatten)]
    pub current: TrendPeriod,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<TrendPeriod>,
}

pub const MAX_SERIES: usize = 20;

/// The most values one trend may answer (series × lines × buckets ×
/// periods): each limit alone is sane, but all of them at once would build
/// tens of millions of values, gigabytes in memory, for one request.
pub const MAX_VALUES: usize = 500_000;

/// A series made ready to run: its events and what it measures.
pub(crate) struct Plan {
    event: Option<String>,
    math: Math,
    filters: Vec<Sql>,
    value: Option<Field>,
}

impl Plan {
    /// Validates `s` (found at `at`, e.g. `series[0]`) with `global` filters added.
    pub(crate) fn new(ask: &Ask, s: &Series, global: &[Sql], at: &str) -> Result<Plan, AnalyticsError> {
        let mut filters = global.to_vec();
        filters.extend(compile_all(ask, &s.filters, &format!("{at}.filters"))?);
        let value = match (s.math.needs_property(), s.property.as_deref()) {
            (true, Some(p)) if !p.is_empty() => {
                let p = if p.starts_with("properties.") { p.to_owned() } else { format!("properties.{p}") };
                Some(Field::parse(&p, &format!("{at}.property"))?)
            }
            (true, _) => {
                return Err(AnalyticsError::invalid(
                    format!("{at}.property"),
                    format!("`{at}.property` names the numeric property this math needs"),
                ))
            }
            (false, _) => None,
        };
        Ok(Plan { event: s.event.clone(), math: s.math, filters, value })
    }

    pub(crate) fn filter(mut self, condition: Sql) -> Plan {
        self.filters.push(condition);
        self
    }
}

/// The metric of `plan` over the whole of `window`.
pub(crate) fn measure(ask: &Ask, window: &Window, plan: &Plan) -> Result<serde_json::Value, AnalyticsError> {
    let src = source(ask, window, plan, None);
    let (aggs, kinds) = plan.math.aggregates(ask.dialect());
    let sql = Sql::new("SELECT ").push(Sql::join(aggs.iter().map(|a| Sql::new(a.as_str())), ", ")).raw(" FROM ");
    let rows = ask.rows(sql.push(src.render()).select(&kinds))?;
    Ok(rows.first().map_or_else(|| plan.math.empty(), |r| plan.math.value(r)))
}

pub fn trend(ask: &Ask, q: &TrendQuery) -> Result<TrendResult, AnalyticsError> {
    let window = Window::parse(q.date_from.as_deref(), q.date_to.as_deref(), q.timezone.as_deref(), ask.now_ms)?;
    window.keys(q.interval)?;
    if q.series.is_empty() || q.series.len() > MAX_SERIES {
        return Err(AnalyticsError::invalid("series", format!("`series` must have from 1 to {MAX_SERIES} entries")));
    }
    let global = compile_all(ask, &q.filters, "filters")?;
    let breakdown = q.breakdown.as_deref().map(|b| Field::parse(b, "breakdown")).transpose()?;
    let limit = bounded(q.breakdown_limit, 10, 100, "breakdown_limit")?;
    let lines = if breakdown.is_some() { limit + 1 } else { 1 };
    let values = q.series.len() * lines * window.keys(q.interval)?.len() * if q.compare { 2 } else { 1 };
    if values > MAX_VALUES {
        return Err(AnalyticsError::invalid(
            "interval",
            format!(
                "{values} values requested (series × breakdown lines × buckets × periods); at most {MAX_VALUES}: \
                 use a longer interval, a shorter range, fewer series or a smaller breakdown_limit"
            ),
        ));
    }
    let plans = q
        .series
        .iter()
        .enumerate()
        .map(|(i, s)| Plan::new(ask, s, &global, &format!("series[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    // The previous period is broken down by the current period's values,
    // so that each line has its own to compare with.
    let period = |w: &Window, shown: Option<&[Vec<Option<String>>]>| {
        let keys = w.keys(q.interval)?;
        let mut series = Vec::new();
        let mut values = Vec::new();
        for (i, plan) in plans.iter().enumerate() {
            let by = breakdown.as_ref().map(|field| Breakdown { field, limit, shown: shown.map(|s| &s[i][..]) });
            let (lines, line_values) = run_series(ask, w, q.interval, &keys, plan, by)?;
            series.extend(lines);
            values.push(line_values);
        }
        let buckets = w.labels(q.interval, &keys);
        Ok::<_, AnalyticsError>((TrendPeriod { buckets, series }, values))
    };
    let (current, shown) = period(&window, None)?;
    let previous = if q.compare { Some(period(&window.previous(q.interval), Some(&shown))?.0) } else { None };
    Ok(TrendResult { interval: q.interval, timezone: window.tz.name().to_owned(), current, previous })
}

/// The events of one series as a [`Source`] with the columns its math and
/// breakdown need.
fn source(ask: &Ask, window: &Window, plan: &Plan, breakdown: Option<&Field>) -> Source {
    let d = ask.dialect();
    let mut src = Source::new(d, ask.project_id)
        .column("x_ts", sql::timestamp_ms(d))
        .between(Some(window.from_ms), Some(window.to_ms));
    if let Some(event) = &plan.event {
        src = src.filter(Sql::new("name = ").text(event));
    }
    for f in &plan.filters {
        src = src.filter(f.clone());
    }
    if let Some(v) = &plan.value {
        src = src.column("x_v", sql::number(d, v.text(d)));
    }
    if let Some(b) = breakdown {
        src = src.column("x_b", b.text(d));
    }
    match plan.math {
        Math::UniqueUsers => src.with_person(),
        Math::Sessions => src.column("x_s", Sql::new("session_id")),
        _ => src,
    }
}

/// The most frequent breakdown values (by events), most first.
fn top_values(ask: &Ask, src: &Source, limit: usize) -> Result<Vec<Option<String>>, AnalyticsError> {
    let sql = Sql::new("SELECT x_b, count(*) AS x_c FROM ")
        .push(src.render())
        .raw(&format!(" GROUP BY x_b ORDER BY x_c DESC, x_b LIMIT {}", limit + 1));
    let rows = ask.rows(sql.select(&[ColumnKind::Text, ColumnKind::Int]))?;
    Ok(rows.into_iter().map(|mut r| r.swap_remove(0).text()).collect())
}

/// A series' breakdown: by `field`, its `limit` most frequent values, or
/// the values `shown` (another period's).
struct Breakdown<'a> {
    field: &'a Field,
    limit: usize,
    shown: Option<&'a [Option<String>]>,
}

/// The series' lines, and the breakdown values they show.
fn run_series(
    ask: &Ask,
    window: &Window,
    interval: Interval,
    keys: &[i64],
    plan: &Plan,
    by: Option<Breakdown>,
) -> Result<(Vec<SeriesResult>, Vec<Option<String>>), AnalyticsError> {
    let d = ask.dialect();
    let breakdown = by.as_ref().map(|b| b.field);
    let src = source(ask, window, plan, breakdown);
    let (aggs, kinds) = plan.math.aggregates(d);
    let key = window.key_sql(d, interval, "x_ts");
    // Group columns: bucket key (per bucket only), then the breakdown group:
    // x_o = 1 for "other", x_g the value otherwise.
    let (group, group_kinds, top) = match &by {
        None => (Vec::new(), Vec::new(), Vec::new()),
        Some(by) => {
            let shown: Vec<Option<String>> = match by.shown {
                Some(shown) => shown.to_vec(),
                None => top_values(ask, &src, by.limit)?.into_iter().take(by.limit).collect(),
            };
            let named: Vec<&String> = shown.iter().flatten().collect();
            let mut conds = Vec::new();
            if !named.is_empty() {
                conds.push(sql::in_list(d, Sql::new("x_b"), named.iter().map(|v| Sql::default().text(v))));
            }
            if shown.iter().any(Option::is_none) {
                conds.push(Sql::new("x_b IS NULL"));
            }
            let shown_cond = if conds.is_empty() { Sql::new("1 = 0") } else { Sql::join(conds, " OR ") };
            let group = vec![
                Sql::new("CASE WHEN ").push(shown_cond.clone()).raw(" THEN 0 ELSE 1 END AS x_o"),
                Sql::new("CASE WHEN ").push(shown_cond).raw(" THEN x_b ELSE NULL END AS x_g"),
            ];
            (group, vec![ColumnKind::Int, ColumnKind::Text], shown)
        }
    };
    let query = |per_bucket: bool| -> Result<Vec<Vec<Cell>>, AnalyticsError> {
        let mut select = Vec::new();
        let mut columns = Vec::new();
        if per_bucket {
            select.push(Sql::new(format!("{key} AS x_k")));
            columns.push(ColumnKind::Int);
        }
        select.extend(group.iter().cloned());
        columns.extend(group_kinds.iter().copied());
        select.extend(aggs.iter().map(|a| Sql::new(a.as_str())));
        columns.extend(kinds.iter().copied());
        let mut by: Vec<&str> = Vec::new();
        if per_bucket {
            by.push("x_k");
        }
        if breakdown.is_some() {
            by.extend(["x_o", "x_g"]);
        }
        let mut sql = Sql::new("SELECT ").push(Sql::join(select, ", ")).raw(" FROM ").push(src.render());
        if !by.is_empty() {
            sql = sql.raw(&format!(" GROUP BY {}", by.join(", ")));
        }
        ask.rows(sql.select(&columns))
    };
    let per_bucket = query(true)?;
    // Totals, sums, averages and extremes over the range follow from the
    // buckets, which saves a second pass over the events.
    let overall = if plan.math.mergeable() { None } else { Some(query(false)?) };

    // Lines: one per shown value (in rank order) plus "other" when present,
    // or the single line without a breakdown.
    type Line = (bool, Option<String>);
    let mut lines: Vec<Line> = match breakdown {
        None => vec![(false, None)],
        Some(_) => top.iter().map(|v| (false, v.clone())).collect(),
    };
    let line_of = |row: &[Cell], at: usize| -> Line {
        match breakdown {
            None => (false, None),
            Some(_) => (row[at].int() == 1, row[at + 1].clone().text()),
        }
    };
    let n_group = group_kinds.len();
    let mut data: HashMap<Line, Vec<serde_json::Value>> = HashMap::new();
    let position: HashMap<i64, usize> = keys.iter().enumerate().map(|(i, &k)| (k, i)).collect();
    for row in &per_bucket {
        let line = line_of(row, 1);
        let Some(&at) = position.get(&row[0].int()) else { continue };
        let values = data.entry(line).or_insert_with(|| vec![plan.math.empty(); keys.len()]);
        values[at] = plan.math.value(&row[1 + n_group..]);
    }
    let mut cells: HashMap<Line, Vec<Cell>> = HashMap::new();
    match &overall {
        Some(rows) => {
            for row in rows {
                cells.insert(line_of(row, 0), row[n_group..].to_vec());
            }
        }
        None => {
            for row in &per_bucket {
                let bucket = &row[1 + n_group..];
                match cells.entry(line_of(row, 1)) {
                    Entry::Occupied(mut e) => {
                        let merged = plan.math.merge(e.get(), bucket);
                        e.insert(merged);
                    }
                    Entry::Vacant(e) => {
                        e.insert(bucket.to_vec());
                    }
                }
            }
        }
    }
    let mut aggregates: HashMap<Line, serde_json::Value> =
        cells.into_iter().map(|(line, c)| (line, plan.math.value(&c))).collect();
    if aggregates.keys().any(|(other, _)| *other) {
        lines.push((true, None));
    }
    let lines = lines
        .into_iter()
        .map(|line| SeriesResult {
            event: plan.event.clone(),
            math: plan.math,
            breakdown_value: breakdown.map(|_| line.1.clone()),
            other: line.0,
            data: data.remove(&line).unwrap_or_else(|| vec![plan.math.empty(); keys.len()]),
            aggregate: aggregates.remove(&line).unwrap_or_else(|| plan.math.empty()),
        })
        .collect();
    Ok((lines, top))
}
