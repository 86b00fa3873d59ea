//! Releases as a dimension: the list of releases seen in events, and
//! "release impact" — a metric before vs after a release's time, or on
//! release A's events vs release B's.
//!
//! A release's time is given by the caller when it knows better (the HTTP
//! layer passes the time the pipeline recorded the release live), else the
//! first event that carries it.

use crate::fields::compile_all;
use crate::sql::{self, Source, Sql};
use crate::time::{rfc3339, Window};
use crate::trends::{measure, Plan, Series};
use crate::{bounded, cells, AnalyticsError, Ask};
use leanloop_store::ColumnKind;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleasesQuery {
    pub date_from: Option<String>,
    pub date_to: Option<String>,
    /// The zone whose midnights dates in `date_from`/`date_to` name.
    pub timezone: Option<String>,
    /// At most this many releases, newest first (default 100, at most 1000).
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct ReleaseSummary {
    pub release: String,
    pub first_seen: String,
    pub last_seen: String,
    pub events: u64,
    pub users: u64,
    /// When the pipeline first recorded this release live (filled by the
    /// caller, which knows the pipeline's records; `None` here).
    pub deployed_at: Option<String>,
}

pub fn releases(ask: &Ask, q: &ReleasesQuery) -> Result<Vec<ReleaseSummary>, AnalyticsError> {
    let d = ask.dialect();
    let limit = bounded(q.limit, 100, 1000, "limit")?;
    // Without a range, all time: releases are few and long-lived.
    let range = match (q.date_from.as_deref(), q.date_to.as_deref()) {
        (None, None) => {
            // A zone is checked even when no date needs it.
            crate::time::zone(q.timezone.as_deref())?;
            None
        }
        (None, Some(_)) => return Err(AnalyticsError::invalid("date_from", "`date_from` is needed with `date_to`")),
        (from, to) => {
            let w = Window::parse(from, to, q.timezone.as_deref(), ask.now_ms)?;
            Some((w.from_ms, w.to_ms))
        }
    };
    let src = Source::new(d, ask.project_id)
        .with_person()
        .column("x_ts", sql::timestamp_ms(d))
        .column("x_r", Sql::new("release"))
        .filter(Sql::new("release IS NOT NULL"))
        .between(range.map(|r| r.0), range.map(|r| r.1));
    let rows = ask.rows(
        Sql::new(format!(
            "SELECT x_r, min(x_ts) AS x_first, max(x_ts), count(*), {} FROM ",
            sql::count_distinct(d, "person")
        ))
        .push(src.render())
        .raw(&format!(" GROUP BY x_r ORDER BY x_first DESC, x_r LIMIT {limit}"))
        .select(&[ColumnKind::Text, ColumnKind::Int, ColumnKind::Int, ColumnKind::Int, ColumnKind::Int]),
    )?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let mut next = cells(r);
            ReleaseSummary {
                release: next().text().unwrap_or_default(),
                first_seen: rfc3339(next().int()),
                last_seen: rfc3339(next().int()),
                events: next().int() as u64,
                users: next().int() as u64,
                deployed_at: None,
            }
        })
        .collect())
}

/// The time a release was first seen, if it was.
fn first_seen(ask: &Ask, release: &str) -> Result<Option<i64>, AnalyticsError> {
    let d = ask.dialect();
    let src = Source::new(d, ask.project_id)
        .column("x_ts", sql::timestamp_ms(d))
        .filter(Sql::new("release = ").text(release));
    let rows = ask.rows(
        Sql::new("SELECT min(x_ts), count(*) FROM ").push(src.render()).select(&[ColumnKind::Int, ColumnKind::Int]),
    )?;
    Ok(rows.first().filter(|r| r[1].int() > 0).map(|r| r[0].int()))
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImpactQuery {
    #[schemars(length(min = 1))]
    pub release: String,
    /// Compare with this release's events instead of before/after.
    pub compare_to: Option<String>,
    pub series: Series,
    /// Before/after: the length of each side (default 7 days), or the time
    /// since the release when that is shorter. Release vs release: both
    /// sides cover the range `date_from`..`date_to`.
    #[schemars(range(min = 60, max = 31_622_400))]
    pub window_seconds: Option<i64>,
    pub date_from: Option<String>,
    pub date_to: Option<String>,
    /// The zone whose midnights dates in `date_from`/`date_to` name.
    pub timezone: Option<String>,
    #[serde(default)]
    #[schemars(length(max = crate::fields::MAX_FILTERS))]
    pub filters: Vec<crate::fields::Filter>,
    /// The release's time (RFC 3339) for before/after; by default the time
    /// the pipeline put it live, else its first event.
    pub release_time: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct ImpactSide {
    pub label: String,
    pub from: String,
    pub to: String,
    pub value: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct ImpactResult {
    pub release: String,
    pub release_time: Option<String>,
    /// `query` (given), or `events` (the first event carrying the release).
    pub release_time_source: Option<String>,
    pub baseline: ImpactSide,
    pub candidate: ImpactSide,
    /// (candidate − baseline) / baseline, when both are numbers and the
    /// baseline is not zero.
    pub change: Option<f64>,
}

pub fn impact(ask: &Ask, q: &ImpactQuery) -> Result<ImpactResult, AnalyticsError> {
    if q.release.is_empty() {
        return Err(AnalyticsError::invalid("release", "`release` must name a release"));
    }
    let global = compile_all(ask, &q.filters, "filters")?;
    let plan = || Plan::new(ask, &q.series, &global, "series");
    let side = |label: &str, w: &Window, plan: Plan| -> Result<ImpactSide, AnalyticsError> {
        Ok(ImpactSide {
            label: label.to_owned(),
            from: rfc3339(w.from_ms),
            to: rfc3339(w.to_ms),
            value: measure(ask, w, &plan)?,
        })
    };
    let (released, source) = match q.release_time.as_deref() {
        Some(text) => {
            let at = crate::time::parse_rfc3339_ms(text)
                .ok_or_else(|| AnalyticsError::invalid("release_time", "`release_time` must be an RFC 3339 time"))?;
            (Some(at), "query")
        }
        None => (first_seen(ask, &q.release)?, "events"),
    };
    // Settings of the other mode are refused rather than silently ignored.
    let misplaced = match &q.compare_to {
        Some(_) => (q.window_seconds.as_ref().map(|_| "window_seconds"))
            .or(q.release_time.as_ref().map(|_| "release_time"))
            .map(|f| (f, "before/after (without `compare_to`)")),
        None => (q.date_from.as_ref().map(|_| "date_from"))
            .or(q.date_to.as_ref().map(|_| "date_to"))
            .or(q.timezone.as_ref().map(|_| "timezone"))
            .map(|f| {
                (f, "release against release (with `compare_to`); before/after windows are `window_seconds` long")
            }),
    };
    if let Some((field, applies)) = misplaced {
        return Err(AnalyticsError::invalid(field, format!("`{field}` applies only to {applies}")));
    }
    let (baseline, candidate) = match &q.compare_to {
        Some(other) => {
            if *other == q.release {
                return Err(AnalyticsError::invalid(
                    "compare_to",
                    "`compare_to` must name another release than `release`",
                ));
            }
            if released.is_none() {
                return Err(AnalyticsError::invalid("release", format!("no events carry release `{}`", q.release)));
            }
            if other.is_empty() || first_seen(ask, other)?.is_none() {
                return Err(AnalyticsError::invalid("compare_to", format!("no events carry release `{other}`")));
            }
            let w = Window::parse(q.date_from.as_deref(), q.date_to.as_deref(), q.timezone.as_deref(), ask.now_ms)?;
            let of = |r: &str| Sql::new("release = ").text(r);
            (side(other, &w, plan()?.filter(of(other)))?, side(&q.release, &w, plan()?.filter(of(&q.release)))?)
        }
        None => {
            let at = released.ok_or_else(|| {
                AnalyticsError::invalid("release", format!("no events carry release `{}`", q.release))
            })?;
            let len = q.window_seconds.unwrap_or(7 * 86_400);
            if !(60..=366 * 86_400).contains(&len) {
                return Err(AnalyticsError::invalid(
                    "window_seconds",
                    "`window_seconds` must be from 60 to 31,622,400",
                ));
            }
            // Both sides as long as the release has been out, when that is
            // shorter: an after window reaching into the future would set a
            // day of a new release against a week of the old one.
            let span = (len * 1000).min(ask.now_ms - at);
            // From the request, or from an event whose clock was off.
            let (field, what) = match source {
                "query" => ("release_time", "the release time"),
                _ => ("release", "the release's first event"),
            };
            if span <= 0 {
                return Err(AnalyticsError::invalid(field, format!("{what} is in the future: nothing to compare yet")));
            }
            if at - span < crate::time::EARLIEST_MS {
                return Err(AnalyticsError::invalid(
                    field,
                    format!("{what} is too early: the before window must start at 1970-01-02T00:00:00Z or later"),
                ));
            }
            let tz = chrono_tz::Tz::UTC;
            let before = Window { from_ms: at - span, to_ms: at, tz };
            let after = Window { from_ms: at, to_ms: at + span, tz };
            (side("before", &before, plan()?)?, side("after", &after, plan()?)?)
        }
    };
    let change = match (baseline.value.as_f64(), candidate.value.as_f64()) {
        (Some(b), Some(c)) if b != 0.0 => Some((c - b) / b),
        _ => None,
    };
    Ok(ImpactResult {
        release: q.release.clone(),
        release_time: released.map(rfc3339),
        release_time_source: released.map(|_| source.to_owned()),
        baseline,
        candidate,
        change,
    })
}
