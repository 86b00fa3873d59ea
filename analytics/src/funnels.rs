//! Funnels: how many people go through 2–10 steps in order within a
//! conversion window, counted per person (identify joins a visitor's
//! anonymous events to the user they became).
//!
//! The store returns the matching events in any order; grouping them by
//! person, their order (time, and events at the same ms in step order: see
//! `walk`) and the walk over them are here, so both stores share one
//! definition:
//! - loose order: other events may come between steps. A person's level is
//!   the most steps any chain reaches, a chain starting at a first-step event
//!   and taking each next step at its first chance after the previous one,
//!   all within the window of its start (as ClickHouse's `windowFunnel`).
//! - strict order: the steps must be consecutive among the person's events
//!   (after global filters); any other event breaks the chain.
//!
//! Times to convert come from the chain that first reached the person's
//! level; a breakdown takes the value on that chain's first step.

use crate::fields::{compile_all, Field, Filter};
use crate::sql::{self, Source, Sql};
use crate::time::Window;
use crate::{bounded, AnalyticsError, Ask};
use leanloop_store::{Column, ColumnKind};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::HashMap;

pub const MAX_STEPS: usize = 10;
const DEFAULT_WINDOW_SECONDS: i64 = 14 * 86_400;
/// A year: longer windows are almost always a mistake.
const MAX_WINDOW_SECONDS: i64 = 366 * 86_400;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Event name; any event when absent.
    pub event: Option<String>,
    #[serde(default)]
    pub filters: Vec<Filter>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    #[default]
    Loose,
    Strict,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FunnelQuery {
    pub date_from: Option<String>,
    pub date_to: Option<String>,
    pub timezone: Option<String>,
    pub steps: Vec<Step>,
    /// Seconds from the first step within which the last must happen.
    pub window_seconds: Option<i64>,
    #[serde(default)]
    pub order: Order,
    #[serde(default)]
    pub filters: Vec<Filter>,
    pub breakdown: Option<String>,
    pub breakdown_limit: Option<usize>,
}

#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct StepResult {
    pub event: Option<String>,
    /// People who reached this step.
    pub count: u64,
    /// `count` over the first step's count.
    pub conversion_rate: f64,
    /// `count` over the previous step's count.
    pub step_conversion_rate: f64,
    /// People who reached the previous step but not this one.
    pub drop_off: u64,
    /// Median seconds from the previous step (nearest rank), for people who
    /// reached this step.
    pub median_seconds_from_previous: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct FunnelGroup {
    pub steps: Vec<StepResult>,
    /// Median seconds from the first step to the last, for people who
    /// completed the funnel.
    pub median_seconds_to_convert: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct BreakdownGroup {
    pub breakdown_value: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub other: bool,
    #[serde(flatten)]
    pub funnel: FunnelGroup,
}

#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct FunnelResult {
    pub order: Order,
    pub window_seconds: i64,
    #[serde(flatten)]
    pub total: FunnelGroup,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breakdown: Option<Vec<BreakdownGroup>>,
}

/// A person's best chain: the steps' times and the row of its first step
/// (where its breakdown value is). Fixed-size, so the walk over millions of
/// events allocates nothing per event.
#[derive(Debug, Clone, Copy)]
struct Chain {
    times: [i64; MAX_STEPS],
    len: usize,
    first_row: usize,
}

impl Chain {
    fn start(ts: i64, row: usize) -> Chain {
        let mut times = [0; MAX_STEPS];
        times[0] = ts;
        Chain { times, len: 1, first_row: row }
    }

    fn times(&self) -> &[i64] {
        &self.times[..self.len]
    }

    /// This chain one step further (the caller checks there is room).
    fn then(mut self, ts: i64) -> Chain {
        self.times[self.len] = ts;
        self.len += 1;
        self
    }
}

pub fn funnel(ask: &Ask, q: &FunnelQuery) -> Result<FunnelResult, AnalyticsError> {
    let window = Window::parse(q.date_from.as_deref(), q.date_to.as_deref(), q.timezone.as_deref(), ask.now_ms)?;
    if q.steps.len() < 2 || q.steps.len() > MAX_STEPS {
        return Err(AnalyticsError::invalid("steps", format!("`steps` must have from 2 to {MAX_STEPS} entries")));
    }
    let window_seconds = q.window_seconds.unwrap_or(DEFAULT_WINDOW_SECONDS);
    if !(1..=MAX_WINDOW_SECONDS).contains(&window_seconds) {
        return Err(AnalyticsError::invalid(
            "window_seconds",
            format!("`window_seconds` must be from 1 to {MAX_WINDOW_SECONDS}"),
        ));
    }
    let limit = bounded(q.breakdown_limit, 10, 100, "breakdown_limit")?;
    let breakdown = q.breakdown.as_deref().map(|b| Field::parse(b, "breakdown")).transpose()?;
    let mut step_conditions = Vec::new();
    for (i, step) in q.steps.iter().enumerate() {
        let mut conds = compile_all(ask, &step.filters, &format!("steps[{i}].filters"))?;
        if let Some(event) = &step.event {
            conds.insert(0, Sql::new("name = ").text(event));
        }
        step_conditions.push(if conds.is_empty() { Sql::new("1 = 1") } else { Sql::join(conds, " AND ") });
    }
    let started = std::time::Instant::now();
    let mut columns = ask.columns(rows_query(ask, &window, q, &step_conditions, breakdown.as_ref())?)?.into_iter();
    let read = started.elapsed();
    let mut ints = || columns.next().map(Column::into_ints).unwrap_or_default();
    let (person, ts, mask) = (ints(), ints(), ints());
    let values = columns.next();
    let rows = person.len();
    let chains = chains(&person, &ts, &mask, values.as_ref(), q.steps.len(), window_seconds * 1000, q.order);
    tracing::debug!(
        rows,
        read_ms = read.as_millis() as u64,
        walk_ms = (started.elapsed() - read).as_millis() as u64,
        "funnel rows walked"
    );

    let total = summarise(q, chains.iter());
    let breakdown = breakdown.map(|_| {
        let mut by_value: HashMap<Option<String>, Vec<&Chain>> = HashMap::new();
        for c in &chains {
            let value = values.as_ref().and_then(|v| v.cell(c.first_row).text());
            by_value.entry(value).or_default().push(c);
        }
        let mut values: Vec<(Option<String>, Vec<&Chain>)> = by_value.into_iter().collect();
        values.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| cmp_values(&a.0, &b.0)));
        let rest: Vec<&Chain> = values.iter().skip(limit).flat_map(|(_, c)| c.iter().copied()).collect();
        let mut groups: Vec<BreakdownGroup> = values
            .iter()
            .take(limit)
            .map(|(v, c)| BreakdownGroup {
                breakdown_value: v.clone(),
                other: false,
                funnel: summarise(q, c.iter().copied()),
            })
            .collect();
        if !rest.is_empty() {
            groups.push(BreakdownGroup { breakdown_value: None, other: true, funnel: summarise(q, rest.into_iter()) });
        }
        groups
    });
    Ok(FunnelResult { order: q.order, window_seconds, total, breakdown })
}

/// Values sort as the stores sort them: NULL last.
fn cmp_values(a: &Option<String>, b: &Option<String>) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => a.cmp(b),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

/// Each candidate event: person, time, which steps it matches (bit mask)
/// and, with a breakdown, its value; ordered for the walk.
fn rows_query(
    ask: &Ask,
    window: &Window,
    q: &FunnelQuery,
    steps: &[Sql],
    breakdown: Option<&Field>,
) -> Result<leanloop_store::Select, AnalyticsError> {
    let d = ask.dialect();
    let mut src = Source::new(d, ask.project_id).with_person().column("x_ts", sql::timestamp_ms(d));
    let mask = Sql::join(
        steps
            .iter()
            .enumerate()
            .map(|(i, c)| Sql::new("CASE WHEN ").push(c.clone().wrap()).raw(&format!(" THEN {} ELSE 0 END", 1 << i))),
        " + ",
    );
    src = src.column("x_m", mask);
    if let Some(b) = breakdown {
        src = src.column("x_b", b.text(d));
    }
    src = src.between(Some(window.from_ms), Some(window.to_ms)).filters(compile_all(ask, &q.filters, "filters")?);
    // A chain's breakdown value is its first step's: other rows carry none.
    let b = if breakdown.is_some() { ", CASE WHEN x_m % 2 = 1 THEN x_b END" } else { "" };
    // The walk only needs each person's rows together, so they are sorted by
    // a hash of the person, not the text: two people merge only if their
    // hashes collide.
    let person = sql::group_hash(d, "person");
    let keep = if q.order == Order::Loose { " WHERE x_m > 0" } else { "" };
    let carried = if breakdown.is_some() { ", x_b" } else { "" };
    let rows = Sql::new(format!("SELECT {person} AS x_h, x_ts, x_m{carried} FROM ")).push(src.render()).raw(keep);
    // In no order: `chains` puts each person's rows together.
    let sql = Sql::new(format!("SELECT x_h, x_ts, x_m{b} FROM ")).push(rows.wrap());
    let kinds = [ColumnKind::Int, ColumnKind::Int, ColumnKind::Int, ColumnKind::Text];
    Ok(sql.select(&kinds[..if breakdown.is_some() { 4 } else { 3 }]))
}

/// A candidate event: its person's hash, time, step mask and row in the
/// store's answer (where its breakdown value is).
#[derive(Debug, Clone, Copy, Default)]
struct Candidate {
    person: i64,
    ts: i64,
    mask: i64,
    row: usize,
}

/// Each person's best chain (people who matched no first step are left out),
/// from the store's candidate rows in any order.
///
/// Rows are spread over buckets by the person hash's top bits (about 16
/// rows each, as the hashes are uniform; a person's rows share a bucket),
/// and each bucket is sorted into walk order on its own, in cache: by
/// person, then time; events at the same ms in step order (by the first
/// step an event matches, then by its whole mask, then by its breakdown
/// `values` as the stores sort text), events matching no step last. Events
/// equal in all of these are alike to the walk, so the answer does not
/// depend on the order the store returned them in. The two halves of the
/// buckets are sorted and walked at once (the statement is done, so both
/// cores are free). Ordering the rows in the statement took about 145 ms of
/// a 400 ms statement (2.4M rows on DuckDB).
fn chains(
    person: &[i64],
    ts: &[i64],
    mask: &[i64],
    values: Option<&Column>,
    steps: usize,
    window_ms: i64,
    order: Order,
) -> Vec<Chain> {
    let n = person.len().min(ts.len()).min(mask.len());
    let bits = (usize::BITS - (n / 16).max(1).leading_zeros()).min(24);
    let buckets = 1usize << bits;
    // Hashes are non-negative 63-bit values: bits 62 and down.
    let bucket = |p: i64| ((p as u64) >> (63 - bits)) as usize & (buckets - 1);
    let mut starts = vec![0usize; buckets + 1];
    for &p in &person[..n] {
        starts[bucket(p) + 1] += 1;
    }
    for b in 0..buckets {
        starts[b + 1] += starts[b];
    }
    let mut next = starts.clone();
    let mut all = vec![Candidate::default(); n];
    for i in 0..n {
        let b = bucket(person[i]);
        all[next[b]] = Candidate { person: person[i], ts: ts[i], mask: mask[i], row: i };
        next[b] += 1;
    }
    let first_step = |mask: i64| if mask == 0 { steps as u32 } else { mask.trailing_zeros() };
    let value = |row: usize| values.and_then(|v| v.cell(row).text());
    let walk_order = |a: &Candidate, b: &Candidate| {
        (a.person, a.ts, first_step(a.mask), a.mask).cmp(&(b.person, b.ts, first_step(b.mask), b.mask)).then_with(
            || match values {
                Some(_) => cmp_values(&value(a.row), &value(b.row)),
                None => Ordering::Equal,
            },
        )
    };
    let sort_and_walk = |part: &mut [Candidate], bounds: &[usize]| {
        for range in bounds.windows(2) {
            part[range[0] - bounds[0]..range[1] - bounds[0]].sort_unstable_by(walk_order);
        }
        walk(part, steps, window_ms, order)
    };
    let half = buckets / 2;
    let (first, second) = all.split_at_mut(starts[half]);
    std::thread::scope(|s| {
        let other = s.spawn(|| sort_and_walk(second, &starts[half..]));
        let mut chains = sort_and_walk(first, &starts[..=half]);
        chains.extend(other.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
        chains
    })
}

/// Each person's best chain, from `events` in walk order.
fn walk(events: &[Candidate], steps: usize, window_ms: i64, order: Order) -> Vec<Chain> {
    // At most one chain per person: sized once, as a million chains moved
    // on every doubling cost more than counting the people first.
    let people = 1 + events.windows(2).filter(|w| w[0].person != w[1].person).count();
    let mut out = Vec::with_capacity(people);
    for person in events.chunk_by(|a, b| a.person == b.person) {
        let events = person.iter().map(|e| (e.ts, e.mask, e.row));
        out.extend(match order {
            Order::Loose => walk_loose(events, steps, window_ms),
            Order::Strict => walk_strict(events, steps, window_ms),
        });
    }
    out
}

fn walk_loose(events: impl Iterator<Item = (i64, i64, usize)>, steps: usize, window_ms: i64) -> Option<Chain> {
    // reached[k]: of the chains that reached step k+1, the one that started
    // latest (it has the most window left).
    let mut reached: [Option<Chain>; MAX_STEPS] = [None; MAX_STEPS];
    let mut best: Option<Chain> = None;
    for (ts, mask, row) in events {
        for k in (1..steps).rev() {
            if mask & (1 << k) == 0 {
                continue;
            }
            let Some(prev) = &reached[k - 1] else { continue };
            if ts - prev.times[0] > window_ms {
                continue;
            }
            // A chain from the same start keeps its earlier step: later ones
            // only narrow what can follow.
            if reached[k].as_ref().is_some_and(|r| r.times[0] >= prev.times[0]) {
                continue;
            }
            let chain = prev.then(ts);
            keep_best(&mut best, chain);
            reached[k] = Some(chain);
        }
        if mask & 1 != 0 {
            let chain = Chain::start(ts, row);
            keep_best(&mut best, chain);
            reached[0] = Some(chain);
        }
    }
    best
}

fn walk_strict(events: impl Iterator<Item = (i64, i64, usize)>, steps: usize, window_ms: i64) -> Option<Chain> {
    let mut current: Option<Chain> = None;
    let mut best: Option<Chain> = None;
    for (ts, mask, row) in events {
        current = match current {
            Some(c) if c.len < steps && mask & (1 << c.len) != 0 && ts - c.times[0] <= window_ms => Some(c.then(ts)),
            _ if mask & 1 != 0 => Some(Chain::start(ts, row)),
            _ => None,
        };
        if let Some(c) = current {
            keep_best(&mut best, c);
        }
    }
    best
}

/// Keeps the first chain to reach the highest level.
fn keep_best(best: &mut Option<Chain>, chain: Chain) {
    if best.is_none_or(|b| chain.len > b.len) {
        *best = Some(chain);
    }
}

/// Nearest-rank median of `values` in ms, as seconds.
fn median_seconds(mut values: Vec<i64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    // The value at its rank, found without sorting the rest (a million
    // people's gaps per step).
    let rank = values.len().div_ceil(2).max(1);
    let (_, median, _) = values.select_nth_unstable(rank - 1);
    Some(*median as f64 / 1000.0)
}

fn summarise<'a>(q: &FunnelQuery, chains: impl Iterator<Item = &'a Chain>) -> FunnelGroup {
    let n = q.steps.len();
    let mut counts = vec![0u64; n];
    let mut gaps: Vec<Vec<i64>> = vec![Vec::new(); n];
    let mut totals = Vec::new();
    for c in chains {
        let times = c.times();
        for k in 0..times.len().min(n) {
            counts[k] += 1;
            if k > 0 {
                gaps[k].push(times[k] - times[k - 1]);
            }
        }
        if times.len() >= n {
            totals.push(times[n - 1] - times[0]);
        }
    }
    let rate = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let steps = (0..n)
        .map(|k| {
            let previous = if k == 0 { counts[0] } else { counts[k - 1] };
            StepResult {
                event: q.steps[k].event.clone(),
                count: counts[k],
                conversion_rate: rate(counts[k], counts[0]),
                step_conversion_rate: rate(counts[k], previous),
                drop_off: previous - counts[k],
                median_seconds_from_previous: median_seconds(std::mem::take(&mut gaps[k])),
            }
        })
        .collect();
    FunnelGroup { steps, median_seconds_to_convert: median_seconds(totals) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts: i64, mask: i64) -> (i64, i64, usize) {
        (ts, mask, 0)
    }

    #[test]
    fn loose_chains_restart_at_later_starts_to_fit_the_window() {
        // A(0) A(50) B(120) C(140), window 100: the chain from A(50) completes.
        let best = walk_loose([ev(0, 1), ev(50, 1), ev(120, 2), ev(140, 4)].into_iter(), 3, 100).unwrap();
        assert_eq!(best.times(), &[50, 120, 140]);
        // A repeated second step does not move the chain's second step later.
        let best = walk_loose([ev(0, 1), ev(10, 2), ev(20, 2), ev(30, 4)].into_iter(), 3, 100).unwrap();
        assert_eq!(best.times(), &[0, 10, 30]);
        // One event matching two steps advances one chain by one step only.
        let best = walk_loose([ev(0, 1), ev(10, 6)].into_iter(), 3, 100).unwrap();
        assert_eq!(best.times(), &[0, 10]);
    }

    #[test]
    fn strict_chains_break_on_any_other_event() {
        let best = walk_strict([ev(0, 1), ev(5, 0), ev(10, 2), ev(20, 1), ev(30, 2)].into_iter(), 2, 100).unwrap();
        assert_eq!(best.times(), &[20, 30]);
        assert!(walk_strict([ev(0, 2)].into_iter(), 2, 100).is_none());
    }

    #[test]
    fn medians_are_nearest_rank() {
        assert_eq!(median_seconds(vec![4000, 1000, 3000, 2000]), Some(2.0));
        assert_eq!(median_seconds(vec![]), None);
    }

    #[test]
    fn each_persons_events_are_put_in_time_then_step_order() {
        // Person 7's events arrive backwards; the step-2 event shares a ms
        // with a step-1 event and an event of no step (strict order).
        let walk = |order| chains(&[7, 7, 7, 7], &[20, 10, 10, 10], &[4, 0, 2, 1], None, 3, 100, order);
        let loose = walk(Order::Loose);
        assert_eq!(loose.len(), 1);
        assert_eq!((loose[0].times(), loose[0].first_row), (&[10, 10, 20][..], 3));
        // Strict: the event of no step follows both steps at its ms, so it
        // breaks the chain before the third.
        let strict = walk(Order::Strict);
        assert_eq!(strict[0].times(), &[10, 10]);
    }

    #[test]
    fn interleaved_people_are_walked_apart_and_keep_their_rows() {
        // Rows of people 9 and -3 alternate, as a store may return them.
        let mut found: Vec<(Vec<i64>, usize)> =
            chains(&[9, -3, 9, -3, 9], &[5, 1, 6, 2, 7], &[1, 1, 2, 2, 4], None, 3, 100, Order::Loose)
                .iter()
                .map(|c| (c.times().to_vec(), c.first_row))
                .collect();
        found.sort();
        assert_eq!(found, vec![(vec![1, 2], 1), (vec![5, 6, 7], 0)]);
    }
}
