//! Retention: people grouped into cohorts by the period (day, week, month)
//! of a cohort event, and how many of each cohort came back (did the return
//! event) in each following period.
//!
//! `first_time` cohorts place a person by their first cohort event ever;
//! `any` cohorts place them in every period where they did it. Period 0 is
//! the cohort itself; period k counts the cohort's people who did the return
//! event k periods later. Periods are calendar periods in the query's zone.

use crate::fields::{compile_all, Filter};
use crate::sql::{self, Source, Sql};
use crate::time::{Interval, Window};
use crate::{AnalyticsError, Ask};
use leanloop_store::{ColumnKind, Dialect};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

pub const MAX_PERIODS: i64 = 100;
/// Any `date_from` before it is accepted.
const FAR_FUTURE: &str = "2100-01-01";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Week,
    Month,
}

impl Period {
    fn interval(self) -> Interval {
        match self {
            Period::Day => Interval::Day,
            Period::Week => Interval::Week,
            Period::Month => Interval::Month,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CohortType {
    #[default]
    FirstTime,
    Any,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventSpec {
    pub event: Option<String>,
    #[serde(default)]
    #[schemars(length(max = crate::fields::MAX_FILTERS))]
    pub filters: Vec<Filter>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionQuery {
    /// Start of the first cohort period (its period is the one containing it).
    pub date_from: Option<String>,
    pub timezone: Option<String>,
    pub cohort_event: EventSpec,
    #[serde(default)]
    pub cohort_type: CohortType,
    pub return_event: EventSpec,
    pub period: Period,
    /// Number of cohorts and of periods after each (1 to 100).
    #[schemars(range(min = 1, max = MAX_PERIODS))]
    pub periods: i64,
    #[serde(default)]
    #[schemars(length(max = crate::fields::MAX_FILTERS))]
    pub filters: Vec<Filter>,
}

#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct Cohort {
    /// Start of the cohort's period, in the query's zone.
    pub period_start: String,
    pub size: u64,
    /// `values[0]` = size; `values[k]` = people back k periods later.
    /// Periods that have not begun by the query's time are left out.
    pub values: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct RetentionResult {
    pub period: Period,
    pub cohort_type: CohortType,
    pub cohorts: Vec<Cohort>,
}

pub fn retention(ask: &Ask, q: &RetentionQuery) -> Result<RetentionResult, AnalyticsError> {
    let d = ask.dialect();
    if !(1..=MAX_PERIODS).contains(&q.periods) {
        return Err(AnalyticsError::invalid("periods", format!("`periods` must be from 1 to {MAX_PERIODS}")));
    }
    let interval = q.period.interval();
    // Only the zone and `date_from` matter here; the end is worked out below.
    let probe = Window::parse(q.date_from.as_deref(), Some(FAR_FUTURE), q.timezone.as_deref(), ask.now_ms)?;
    let now_key = probe.key(interval, ask.now_ms);
    let first = match q.date_from.as_deref().filter(|t| !t.is_empty()) {
        Some(_) => probe.key(interval, probe.from_ms),
        None => now_key - (q.periods - 1),
    };
    // The window spans the cohorts and the periods after the last one.
    let window = Window {
        from_ms: end_of(&probe, interval, first - 1),
        to_ms: end_of(&probe, interval, first + 2 * q.periods - 2),
        tz: probe.tz,
    };

    let global = compile_all(ask, &q.filters, "filters")?;
    let events = |spec: &EventSpec, at: &str, from: Option<i64>| -> Result<Source, AnalyticsError> {
        let mut src = Source::new(d, ask.project_id)
            .with_person()
            .column("x_ts", sql::timestamp_ms(d))
            .between(from, Some(window.to_ms));
        if let Some(event) = &spec.event {
            src = src.filter(Sql::new("name = ").text(event));
        }
        for f in global.iter().cloned().chain(compile_all(ask, &spec.filters, &format!("{at}.filters"))?) {
            src = src.filter(f);
        }
        Ok(src)
    };
    let key = |ts: &str| window.key_sql(d, interval, ts);
    let cohort_rows = match q.cohort_type {
        // A first cohort event before the window places the person in an
        // earlier cohort, so look back without a lower bound.
        CohortType::FirstTime => Sql::new(format!("SELECT person, {} AS x_cp FROM ", key("min(x_ts)")))
            .push(events(&q.cohort_event, "cohort_event", None)?.render())
            .raw(" GROUP BY person"),
        CohortType::Any => Sql::new(format!("SELECT person, {} AS x_cp FROM ", key("x_ts")))
            .push(events(&q.cohort_event, "cohort_event", Some(window.from_ms))?.render())
            .raw(" GROUP BY person, x_cp"),
    };
    let members = Sql::new("SELECT person, x_cp FROM ")
        .push(cohort_rows.wrap())
        .raw(&format!(" WHERE x_cp >= {first} AND x_cp < {}", first + q.periods));
    let return_events = events(&q.return_event, "return_event", Some(window.from_ms))?.render();
    // Rows (cohort period, k, people): k = 0 is the cohort's size, k > 0 the
    // people back k periods later.
    let sizes = |cohorts: Sql| Sql::new("SELECT x_cp, 0 AS x_k, count(*) FROM ").push(cohorts).raw(" GROUP BY x_cp");
    // Return events are joined to the cohorts' people before anything is
    // grouped: grouping every return event by person and period first would
    // build a table the size of the whole audience. The cohorts are the
    // smaller side, so they come last (ClickHouse holds the right side).
    let back = |cohorts: Sql| {
        let join = match d {
            Dialect::DuckDb => " JOIN ",
            Dialect::ClickHouse => " ALL INNER JOIN ",
        };
        let returns = Sql::new(format!("SELECT person, x_cp, {} AS x_rp FROM ", key("x_ts")))
            .push(return_events.clone())
            .raw(join)
            .push(cohorts)
            .raw(" USING (person)");
        // Distinct (person, cohort, return period) rows, then counted: the
        // same as distinct people per cell, and cheaper than a distinct
        // count per group (measured on DuckDB).
        let visits = Sql::new("SELECT DISTINCT person, x_cp, x_rp FROM ")
            .push(returns.wrap())
            .raw(&format!(" WHERE x_rp > x_cp AND x_rp - x_cp < {}", q.periods));
        Sql::new("SELECT x_cp, x_rp - x_cp AS x_k, count(*) FROM ").push(visits.wrap()).raw(" GROUP BY x_cp, x_k")
    };
    let statements = match d {
        // One statement: the cohorts are found once and read twice.
        Dialect::DuckDb => vec![Sql::new("WITH x_c AS ")
            .push(members.wrap())
            .raw(" ")
            .push(sizes(Sql::new("x_c")))
            .raw(" UNION ALL ")
            .push(back(Sql::new("x_c")))],
        // ClickHouse 18.16 has no common table expressions.
        Dialect::ClickHouse => vec![sizes(members.clone().wrap()), back(members.wrap())],
    };
    let mut counts: HashMap<(i64, i64), u64> = HashMap::new();
    for statement in statements {
        for r in ask.rows(statement.select(&[ColumnKind::Int, ColumnKind::Int, ColumnKind::Int]))? {
            counts.insert((r[0].int(), r[1].int()), r[2].int() as u64);
        }
    }
    let cohorts = (first..first + q.periods)
        .filter(|&cp| cp <= now_key && !window.is_skipped(interval, cp))
        .map(|cp| {
            let values: Vec<u64> = (0..q.periods)
                .take_while(|&k| cp + k <= now_key)
                .map(|k| counts.get(&(cp, k)).copied().unwrap_or(0))
                .collect();
            // Period 0 always belongs (`cp <= now_key`): it is the size.
            let size = values.first().copied().unwrap_or(0);
            Cohort { period_start: window.label(interval, cp), size, values }
        })
        .collect();
    Ok(RetentionResult { period: q.period, cohort_type: q.cohort_type, cohorts })
}

/// The UTC ms at which bucket `key` ends.
fn end_of(window: &Window, interval: Interval, key: i64) -> i64 {
    let next = crate::time::local_start(interval, key + 1);
    let guess = next.and_utc().timestamp_millis();
    guess - window.offset_ms(guess)
}
