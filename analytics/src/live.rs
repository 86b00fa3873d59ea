//! Live: who is here now, and events per minute over the last half hour.

use crate::sql::{self, Source, Sql};
use crate::time::{Interval, Window};
use crate::{AnalyticsError, Ask};
use leanloop_store::ColumnKind;
use serde::Serialize;
use std::collections::HashMap;

const ACTIVE_MS: i64 = 5 * 60_000;
const MINUTES: i64 = 30;

#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct LiveResult {
    /// Distinct people with an event in the last 5 minutes.
    pub active_users: u64,
    /// Start of each minute (UTC), oldest first; the last is the current one.
    pub minutes: Vec<String>,
    pub events_per_minute: Vec<u64>,
}

pub fn live(ask: &Ask) -> Result<LiveResult, AnalyticsError> {
    let d = ask.dialect();
    let now = ask.now_ms;
    let window =
        Window { from_ms: (now.div_euclid(60_000) - (MINUTES - 1)) * 60_000, to_ms: now + 1, tz: chrono_tz::Tz::UTC };
    let src = |from: i64| {
        Source::new(d, ask.project_id).column("x_ts", sql::timestamp_ms(d)).between(Some(from), Some(now + 1))
    };
    let active = ask.rows(
        Sql::new(format!("SELECT {} FROM ", sql::count_distinct(d, "person")))
            .push(src(now - ACTIVE_MS).with_person().render())
            .select(&[ColumnKind::Int]),
    )?;
    let key = window.key_sql(d, Interval::Minute, "x_ts");
    let counts: HashMap<i64, u64> = ask
        .rows(
            Sql::new(format!("SELECT {key} AS x_k, count(*) FROM "))
                .push(src(window.from_ms).render())
                .raw(" GROUP BY x_k")
                .select(&[ColumnKind::Int, ColumnKind::Int]),
        )?
        .into_iter()
        .map(|r| (r[0].int(), r[1].int() as u64))
        .collect();
    let keys = window.keys(Interval::Minute)?;
    Ok(LiveResult {
        active_users: active.first().map_or(0, |r| r[0].int() as u64),
        minutes: window.labels(Interval::Minute, &keys),
        events_per_minute: keys.iter().map(|k| counts.get(k).copied().unwrap_or(0)).collect(),
    })
}
