//! Feedback: NPS, the score distribution, recent messages, and NPS per
//! release, from `$feedback` events (`/v1/feedback` and the SDK's widget).
//!
//! NPS = % promoters (9–10) − % detractors (0–6) of scored feedback.

use crate::fields::{compile_all, Filter};
use crate::sql::{self, Source, Sql};
use crate::time::{rfc3339, Window};
use crate::{bounded, cells, AnalyticsError, Ask};
use leanloop_store::{Cell, ColumnKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackQuery {
    pub date_from: Option<String>,
    pub date_to: Option<String>,
    pub timezone: Option<String>,
    #[serde(default)]
    #[schemars(length(max = crate::fields::MAX_FILTERS))]
    pub filters: Vec<Filter>,
    /// Newest messages shown (default 20, at most 500).
    #[schemars(range(min = 1, max = 500))]
    pub messages_limit: Option<usize>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, schemars::JsonSchema)]
pub struct Nps {
    /// From −100 to 100; `null` without scores.
    pub nps: Option<f64>,
    pub responses: u64,
    pub promoters: u64,
    pub passives: u64,
    pub detractors: u64,
}

impl Nps {
    fn add(&mut self, score: i64, n: u64) {
        self.responses += n;
        match score {
            9.. => self.promoters += n,
            7 | 8 => self.passives += n,
            _ => self.detractors += n,
        }
        self.nps = Some((self.promoters as f64 - self.detractors as f64) * 100.0 / self.responses as f64);
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct ReleaseNps {
    pub release: Option<String>,
    #[serde(flatten)]
    pub nps: Nps,
}

#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct Message {
    pub timestamp: String,
    pub message: String,
    pub score: Option<i64>,
    pub category: Option<String>,
    pub release: Option<String>,
    pub user: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct FeedbackResult {
    #[serde(flatten)]
    pub nps: Nps,
    /// Responses per score, 0 to 10.
    pub distribution: Vec<u64>,
    pub by_release: Vec<ReleaseNps>,
    pub messages: Vec<Message>,
}

pub fn feedback(ask: &Ask, q: &FeedbackQuery) -> Result<FeedbackResult, AnalyticsError> {
    let d = ask.dialect();
    let window = Window::parse(q.date_from.as_deref(), q.date_to.as_deref(), q.timezone.as_deref(), ask.now_ms)?;
    let limit = bounded(q.messages_limit, 20, 500, "messages_limit")?;
    let src = Source::new(d, ask.project_id)
        .filter(Sql::new("name = '$feedback'"))
        .column("x_ts", sql::timestamp_ms(d))
        .column("x_score", sql::number(d, sql::property(d, "score")))
        .column("x_r", Sql::new("release"))
        .between(Some(window.from_ms), Some(window.to_ms))
        .filters(compile_all(ask, &q.filters, "filters")?);
    let scores = ask.rows(
        Sql::new("SELECT x_r, x_score, count(*) FROM ")
            .push(src.render())
            .raw(" WHERE x_score IS NOT NULL GROUP BY x_r, x_score")
            .select(&[ColumnKind::Text, ColumnKind::Int, ColumnKind::Int]),
    )?;
    let mut total = Nps::default();
    let mut distribution = vec![0u64; 11];
    let mut by_release: BTreeMap<Option<String>, Nps> = BTreeMap::new();
    for row in scores {
        let mut row = row.into_iter();
        let release = row.next().and_then(Cell::text);
        let score = row.next().map_or(0, |c| c.int()).clamp(0, 10);
        let n = row.next().map_or(0, |c| c.int()) as u64;
        total.add(score, n);
        distribution[score as usize] += n;
        by_release.entry(release).or_default().add(score, n);
    }
    let messages = src
        .column("x_m", sql::property(d, "message"))
        .column("x_c", sql::property(d, "category"))
        .column("x_u", sql::uuid_order(d))
        // Who sent it is the person, stitched: an anonymous visitor
        // identified later is named by their user id.
        .with_person();
    let rows = ask.rows(
        Sql::new("SELECT x_ts, x_m, x_score, x_c, x_r, person FROM ")
            .push(messages.render())
            .raw(&format!(" WHERE x_m IS NOT NULL ORDER BY x_ts DESC, x_u LIMIT {limit}"))
            .select(&[
                ColumnKind::Int,
                ColumnKind::Text,
                ColumnKind::Int,
                ColumnKind::Text,
                ColumnKind::Text,
                ColumnKind::Text,
            ]),
    )?;
    let messages = rows
        .into_iter()
        .map(|r| {
            let mut next = cells(r);
            let timestamp = rfc3339(next().int());
            let message = next().text().unwrap_or_default();
            let score = match next() {
                Cell::Null => None,
                c => Some(c.int()),
            };
            Message { timestamp, message, score, category: next().text(), release: next().text(), user: next().text() }
        })
        .collect();
    Ok(FeedbackResult {
        nps: total,
        distribution,
        by_release: by_release.into_iter().map(|(release, nps)| ReleaseNps { release, nps }).collect(),
        messages,
    })
}
