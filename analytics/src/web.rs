//! Web analytics: the Plausible-style overview of `$pageview` events.
//!
//! Visitors are distinct people; sessions are the collector's session ids.
//! A session's length is from its first page view to its last; a bounce is a
//! session with one page view. Entry and exit pages are a session's first and
//! last page views (on equal times, the smallest and the largest path).
//! Referrers and UTM values are a session's own, from its entry page view,
//! as Plausible and PostHog attribute them (a session's later views would
//! otherwise count as direct visits); a referrer on the entry page's own
//! domain is no referrer (a session started again inside the site). Every
//! list ranks values by visitors (pages by page views).
//!
//! A question names the [`Section`]s it wants (all by default): a dashboard
//! asks for its headline figures and each list on requests of their own, as
//! Plausible's does, so the figures never wait for the slowest list.
//!
//! The overview, entry and exit pages read page views as visit rows: one
//! per view, or, for unfiltered questions on DuckDB, folded per session and
//! hour (`folded.rs`), which is exact and a fraction of the rows.

use crate::fields::{compile_all, Filter};
use crate::folded::{visit_columns, Counts, Folded};
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
    #[schemars(length(max = crate::fields::MAX_FILTERS))]
    pub filters: Vec<Filter>,
    /// Entries per list (default 10, at most 100).
    #[schemars(range(min = 1, max = 100))]
    pub limit: Option<usize>,
    /// The parts to answer (every one when absent); the answer holds those.
    #[schemars(length(min = 1))]
    pub sections: Option<Vec<Section>>,
}

/// A part of the web report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Section {
    Overview,
    Pages,
    EntryPages,
    ExitPages,
    Referrers,
    UtmSources,
    UtmMediums,
    UtmCampaigns,
    Browsers,
    Os,
    Devices,
    Countries,
}

/// The lists of one column's values over page views: the column and its ranking.
const LISTS: [(Section, &str, Order); 5] = [
    (Section::Pages, "path", BY_PAGEVIEWS),
    (Section::Browsers, "browser", BY_VISITORS),
    (Section::Os, "os", BY_VISITORS),
    (Section::Devices, "device_type", BY_VISITORS),
    (Section::Countries, "country", BY_VISITORS),
];

/// The lists of sessions' sources, each session's value its entry page
/// view's: the column (`None`: the referrer domain, unless the entry
/// page's own).
const SOURCES: [(Section, Option<&str>); 4] = [
    (Section::Referrers, None),
    (Section::UtmSources, Some("utm_source")),
    (Section::UtmMediums, Some("utm_medium")),
    (Section::UtmCampaigns, Some("utm_campaign")),
];

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
    /// Page views for pages, browsers, OS, devices and countries; sessions
    /// for entry and exit pages, referrers and UTM values.
    pub count: u64,
}

/// The sections asked for; the others are left out.
#[derive(Debug, Clone, Default, Serialize, PartialEq, schemars::JsonSchema)]
pub struct WebResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overview: Option<Overview>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pages: Option<Vec<Entry>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry_pages: Option<Vec<Entry>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_pages: Option<Vec<Entry>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub referrers: Option<Vec<Entry>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utm_sources: Option<Vec<Entry>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utm_mediums: Option<Vec<Entry>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utm_campaigns: Option<Vec<Entry>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub browsers: Option<Vec<Entry>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os: Option<Vec<Entry>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<Entry>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub countries: Option<Vec<Entry>>,
}

impl WebResult {
    /// Where a list section's answer goes (`None` for the overview).
    fn list(&mut self, section: Section) -> Option<&mut Option<Vec<Entry>>> {
        Some(match section {
            Section::Overview => return None,
            Section::Pages => &mut self.pages,
            Section::EntryPages => &mut self.entry_pages,
            Section::ExitPages => &mut self.exit_pages,
            Section::Referrers => &mut self.referrers,
            Section::UtmSources => &mut self.utm_sources,
            Section::UtmMediums => &mut self.utm_mediums,
            Section::UtmCampaigns => &mut self.utm_campaigns,
            Section::Browsers => &mut self.browsers,
            Section::Os => &mut self.os,
            Section::Devices => &mut self.devices,
            Section::Countries => &mut self.countries,
        })
    }
}

pub fn web(ask: &Ask, q: &WebQuery) -> Result<WebResult, AnalyticsError> {
    let d = ask.dialect();
    let window = Window::parse(q.date_from.as_deref(), q.date_to.as_deref(), q.timezone.as_deref(), ask.now_ms)?;
    let limit = bounded(q.limit, 10, 100, "limit")?;
    if q.sections.as_ref().is_some_and(Vec::is_empty) {
        return Err(AnalyticsError::invalid("sections", "`sections` must name at least one section"));
    }
    let asked = |s: Section| q.sections.as_ref().is_none_or(|list| list.contains(&s));
    let base = Source::new(d, ask.project_id)
        .filter(Sql::new("name = '$pageview'"))
        .between(Some(window.from_ms), Some(window.to_ms))
        .filters(compile_all(ask, &q.filters, "filters")?);
    let folded = Folded::new(ask, &window, q.filters.is_empty());
    let visits = folded.as_ref().map_or_else(|| by_view(d, base.clone()), Folded::visits);
    let mut out = WebResult::default();
    if asked(Section::Overview) {
        let counts = match &folded {
            Some(f) => f.counts(ask)?,
            None => counts(ask, &visits)?,
        };
        out.overview = Some(overview(counts));
    }

    // Entry and exit pages: each session's first and last page view (its
    // smallest and largest time key), in one pass over the sessions.
    let (first, last) = (sql::after_time_key(d, "x_entry"), sql::after_time_key(d, "x_exit"));
    let ends: Vec<(Section, &str)> = [(Section::EntryPages, first.as_str()), (Section::ExitPages, last.as_str())]
        .into_iter()
        .filter(|&(s, _)| asked(s))
        .collect();
    if !ends.is_empty() {
        let (entry, exit) = (sql::time_key(d, "x_first", "x_fp"), sql::time_key(d, "x_last", "x_lp"));
        let per_session = Sql::new(format!(
            "SELECT x_s, min(person) AS person, min({entry}) AS x_entry, max({exit}) AS x_exit FROM "
        ))
        .push(visits.clone().with_person().render())
        .raw(" WHERE x_s IS NOT NULL GROUP BY x_s")
        .wrap();
        let values: Vec<(&str, Order)> = ends.iter().map(|&(_, v)| (v, BY_VISITORS)).collect();
        fill(&mut out, ends.iter().map(|&(s, _)| s), ranked_together(ask, per_session, &values, limit)?);
    }

    // Sources: each session's from its entry page view (its smallest time
    // key, as for entry pages), in one pass over the sessions.
    let sources: Vec<(Section, Option<&str>)> = SOURCES.into_iter().filter(|&(s, _)| asked(s)).collect();
    if !sources.is_empty() {
        // Each session's values under their own names: ClickHouse refuses
        // an alias that names its own expression's argument.
        const ROW_ALIASES: [&str; 4] = ["x_e0", "x_e1", "x_e2", "x_e3"];
        let rows = sources.iter().zip(ROW_ALIASES).fold(
            base.clone()
                .column("x_s", Sql::new("session_id"))
                .column("x_ts", sql::timestamp_ms(d))
                .column("x_p", Sql::new("path")),
            |rows, (&(_, column), alias)| {
                let value = column.map_or_else(|| sql::referrer_off_site(d), |c| sql::empty_if_unset(d, c));
                rows.column(alias, Sql::new(value))
            },
        );
        let key = sql::time_key(d, "x_ts", "x_p");
        let entries: Vec<String> = ROW_ALIASES
            .iter()
            .zip(LIST_ALIASES)
            .take(sources.len())
            .map(|(row, alias)| format!("{} AS {alias}", sql::arg_min(d, row, &key)))
            .collect();
        let per_session = Sql::new(format!("SELECT x_s, min(person) AS person, {} FROM ", entries.join(", ")))
            .push(rows.with_person().render())
            .raw(" WHERE x_s IS NOT NULL GROUP BY x_s")
            .wrap();
        let values: Vec<(&str, Order)> = LIST_ALIASES[..sources.len()].iter().map(|&a| (a, BY_VISITORS)).collect();
        fill(&mut out, sources.iter().map(|&(s, _)| s), ranked_together(ask, per_session, &values, limit)?);
    }

    // The other lists: one column's values each, in one pass.
    let lists: Vec<(Section, &str, Order)> = LISTS.into_iter().filter(|&(s, _, _)| asked(s)).collect();
    if !lists.is_empty() {
        let src = lists
            .iter()
            .zip(LIST_ALIASES)
            .fold(base.clone(), |src, (&(_, column, _), alias)| src.column(alias, Sql::new(column)));
        let values: Vec<(&str, Order)> =
            lists.iter().zip(LIST_ALIASES).map(|(&(_, _, order), alias)| (alias, order)).collect();
        let ranked = ranked_together(ask, src.with_person().render(), &values, limit)?;
        fill(&mut out, lists.iter().map(|&(s, _, _)| s), ranked);
    }
    Ok(out)
}

/// Puts list `k` of `lists` into `sections[k]`'s place in `out`.
fn fill(out: &mut WebResult, sections: impl IntoIterator<Item = Section>, lists: Vec<Vec<Entry>>) {
    for (section, list) in sections.into_iter().zip(lists) {
        if let Some(place) = out.list(section) {
            *place = Some(list);
        }
    }
}

/// `base`'s page views as visit rows, one per view (as [`Folded::visits`]
/// gives them folded).
fn by_view(d: Dialect, base: Source) -> Source {
    let ts = sql::timestamp_ms(d);
    visit_columns(base, [Sql::new("1"), ts.clone(), Sql::new("path"), ts, Sql::new("path")])
}

/// The overview's counts from visit rows.
fn counts(ask: &Ask, visits: &Source) -> Result<Counts, AnalyticsError> {
    let d = ask.dialect();
    let sessions = Sql::new("SELECT x_s, sum(x_n) AS x_n, max(x_last) - min(x_first) AS x_d FROM ")
        .push(visits.render())
        .raw(" WHERE x_s IS NOT NULL GROUP BY x_s");
    let session_stats = ask.rows(
        Sql::new("SELECT count(*), sum(CASE WHEN x_n = 1 THEN 1 ELSE 0 END), sum(x_d) FROM ")
            .push(sessions.wrap())
            .select(&[ColumnKind::Int, ColumnKind::Int, ColumnKind::Int]),
    )?;
    let totals = ask.rows(
        Sql::new(format!("SELECT {}, sum(x_n) FROM ", sql::count_distinct(d, "person")))
            .push(visits.clone().with_person().render())
            .select(&[ColumnKind::Int, ColumnKind::Int]),
    )?;
    let int = |rows: &[Vec<Cell>], k: usize| rows.first().map_or(0, |r| r[k].int());
    Ok(Counts {
        sessions: int(&session_stats, 0),
        bounces: int(&session_stats, 1),
        length_ms: int(&session_stats, 2),
        visitors: int(&totals, 0),
        pageviews: int(&totals, 1),
    })
}

/// The headline figures from the counts.
fn overview(c: Counts) -> Overview {
    let ratio = |a: i64, b: i64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Overview {
        visitors: c.visitors as u64,
        pageviews: c.pageviews as u64,
        sessions: c.sessions as u64,
        bounce_rate: ratio(c.bounces, c.sessions),
        avg_session_seconds: ratio(c.length_ms, c.sessions) / 1000.0,
    }
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
