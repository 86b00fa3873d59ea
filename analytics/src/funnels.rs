//! Funnels: how many people go through 2–10 steps in order within a
//! conversion window, counted per person (identify joins a visitor's
//! anonymous events to the user they became).
//!
//! The store returns the matching events in any order; grouping them by
//! person, their order (time, and events at the same ms in step order: see
//! [`walk_key`]) and the walk over them are here, so both stores share one
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
use std::collections::{HashMap, HashSet};

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
    #[schemars(length(max = crate::fields::MAX_FILTERS))]
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
    #[schemars(length(min = 2, max = MAX_STEPS))]
    pub steps: Vec<Step>,
    /// Seconds from the first step within which the last must happen.
    #[schemars(range(min = 1, max = MAX_WINDOW_SECONDS))]
    pub window_seconds: Option<i64>,
    #[serde(default)]
    pub order: Order,
    #[serde(default)]
    #[schemars(length(max = crate::fields::MAX_FILTERS))]
    pub filters: Vec<Filter>,
    pub breakdown: Option<String>,
    #[schemars(range(min = 1, max = 100))]
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
    /// Left out when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
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
    if window.to_ms - window.from_ms >= MAX_SPAN_MS {
        return Err(AnalyticsError::invalid("date_from", "a funnel must span less than 35,000 years"));
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
    let select = rows_query(ask, &window, q, &step_conditions, breakdown.as_ref())?;
    let walk = Walk { steps: q.steps.len(), window_ms: window_seconds * 1000, order: q.order, from_ms: window.from_ms };
    let started = std::time::Instant::now();
    let (groups, values, rows) = read_into_groups(ask, select, walk)?;
    let read = started.elapsed();
    let cores = std::thread::available_parallelism().map_or(1, |p| p.get()).min(8);
    // With a breakdown, two walks: how many people each value brings in
    // first, then tallies (each chain's gaps kept for the medians) for the
    // values shown and one for the rest. A tally for every value took a
    // gigabyte on a million distinct values.
    let shown = breakdown.as_ref().map(|_| {
        let counted = chains(&groups, values.as_ref(), walk, cores, |n: &mut HashMap<Option<&str>, u64>, c, v| {
            if !c.times().is_empty() {
                *n.entry(v).or_default() += 1;
            }
        });
        let counts = counted.into_iter().reduce(|mut all, part| {
            part.into_iter().for_each(|(v, n)| *all.entry(v).or_default() += n);
            all
        });
        let mut ranked: Vec<(Option<&str>, u64)> = counts.unwrap_or_default().into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| cmp_values(a.0, b.0)));
        ranked.into_iter().take(limit).map(|(v, _)| v).collect::<HashSet<_>>()
    });
    let parts =
        chains(&groups, values.as_ref(), walk, cores, |t: &mut Tallies, c, v| t.add(c, v, walk.steps, shown.as_ref()));
    let tallies = parts.into_iter().reduce(Tallies::merge).unwrap_or_default();
    tracing::debug!(
        rows,
        read_ms = read.as_millis() as u64,
        walk_ms = (started.elapsed() - read).as_millis() as u64,
        "funnel rows walked"
    );

    let total = summarise(q, tallies.total);
    let breakdown = breakdown.map(|_| {
        let mut values: Vec<(Option<&str>, Tally)> = tallies.by_value.into_iter().collect();
        values.sort_by(|a, b| b.1.counts[0].cmp(&a.1.counts[0]).then_with(|| cmp_values(a.0, b.0)));
        let mut groups: Vec<BreakdownGroup> = values
            .into_iter()
            .map(|(v, tally)| BreakdownGroup {
                breakdown_value: v.map(str::to_owned),
                other: false,
                funnel: summarise(q, tally),
            })
            .collect();
        if tallies.other.counts[0] > 0 {
            groups.push(BreakdownGroup { breakdown_value: None, other: true, funnel: summarise(q, tallies.other) });
        }
        groups
    });
    Ok(FunnelResult { order: q.order, window_seconds, total, breakdown })
}

/// Values sort as the stores sort them: NULL last.
fn cmp_values(a: Option<&str>, b: Option<&str>) -> Ordering {
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

/// Reads the candidate rows of `select` and spreads them into groups
/// ([`spread_into_groups`]) on a second thread as they are read: the
/// statement's own threads are done by then, and reading the rows out takes
/// one core. Returns the groups, the breakdown values (when asked for) and
/// how many rows there were.
fn read_into_groups(
    ask: &Ask,
    select: leanloop_store::Select,
    walk: Walk,
) -> Result<(Vec<Group>, Option<Column>, usize), AnalyticsError> {
    let mut values: Option<Column> = None;
    let mut rows = 0;
    std::thread::scope(|s| {
        let (batches, received) = std::sync::mpsc::sync_channel::<[Vec<Option<i64>>; 3]>(BATCHES_IN_FLIGHT);
        let spreading = s.spawn(move || spread_into_groups(received, walk));
        let read = ask.batches(select, &mut |columns| {
            let mut columns = columns.into_iter();
            let mut ints = || columns.next().map(Column::into_options).unwrap_or_default();
            let batch = [ints(), ints(), ints()];
            rows += batch[0].len();
            if let Some(more) = columns.next() {
                match &mut values {
                    Some(all) => all.append(more),
                    None => values = Some(more),
                }
            }
            // Fails only if the spreading thread is gone, which its join reports.
            let _ = batches.send(batch);
        });
        drop(batches);
        let groups = spreading.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        read.map(|()| (groups, values, rows))
    })
}

/// A candidate event as the walk sorts it: its person's hash, its packed
/// walk key ([`walk_key`]) and its row in the store's answer (where its
/// breakdown value is). Plain words, so a buffer of them is allocated
/// zeroed by the allocator rather than written twice.
type Candidate = [u64; 3];
const PERSON: usize = 0;
const KEY: usize = 1;
const ROW: usize = 2;

/// Bits of a walk key below its time: the first step the event matches
/// (4 bits; `steps` when none) over its step mask (10 bits).
const STEP_BITS: u32 = 14;
/// Times in a walk key are ms after the question's start, in 50 bits.
const MAX_SPAN_MS: i64 = 1 << (64 - STEP_BITS);

/// An event's place among its person's events: by time,
/// then by the first step it matches, then by its whole mask, so events at
/// the same ms are walked in step order and events of no step come last.
fn walk_key(ts_after_base: i64, mask: i64, steps: usize) -> u64 {
    let mask = (mask as u64) & ((1 << MAX_STEPS) - 1);
    let first_step = if mask == 0 { steps as u64 } else { u64::from(mask.trailing_zeros()) };
    (ts_after_base as u64) << STEP_BITS | first_step << MAX_STEPS | mask
}

/// What the walk needs to know of the question.
#[derive(Debug, Clone, Copy)]
struct Walk {
    steps: usize,
    window_ms: i64,
    order: Order,
    /// The question's start: candidates keep their times as ms after it.
    from_ms: i64,
}

/// Groups candidates are spread into by the top bits of their person's
/// hash as they are read: a few thousand rows each on the bench's 2.4M
/// (each group is spread and sorted again in cache), few enough that the
/// spreading writes to few places at once.
const GROUP_BITS: u32 = 10;
/// A group's candidates, in blocks of [`BLOCK`]: a group grows without
/// moving what it holds.
type Group = Vec<Vec<Candidate>>;
const BLOCK: usize = 256;
/// Batches read but not yet spread; the reading waits when this many are.
const BATCHES_IN_FLIGHT: usize = 16;

/// Spreads the candidate rows of `batches` (person hash, time, step mask;
/// NULL read as 0), numbered in the order read, into [`GROUP_BITS`] groups
/// by person hash, as [`chains`] takes them. The rows are within the
/// question's window, as the statement asks; a stray one would be walked
/// at the window's edge rather than corrupt its neighbours' keys.
fn spread_into_groups(batches: impl IntoIterator<Item = [Vec<Option<i64>>; 3]>, walk: Walk) -> Vec<Group> {
    let mut groups: Vec<Group> = vec![Vec::new(); 1 << GROUP_BITS];
    let mut row = 0u64;
    for [person, ts, mask] in batches {
        for ((person, ts), mask) in person.iter().zip(&ts).zip(&mask) {
            let after_base = (ts.unwrap_or(0) - walk.from_ms).clamp(0, MAX_SPAN_MS - 1);
            let c = [person.unwrap_or(0) as u64, walk_key(after_base, mask.unwrap_or(0), walk.steps), row];
            let group = &mut groups[(hash(&c) >> (64 - GROUP_BITS)) as usize];
            match group.last_mut() {
                Some(block) if block.len() < BLOCK => block.push(c),
                _ => {
                    let mut block = Vec::with_capacity(BLOCK);
                    block.push(c);
                    group.push(block);
                }
            }
            row += 1;
        }
    }
    groups
}

/// A candidate's 63-bit person hash at the top of a word: group and bucket
/// numbers are its leading bits.
fn hash(c: &Candidate) -> u64 {
    c[PERSON] << 1
}

/// Finds each person's best chain (people who matched no first step have
/// none) from `groups` of candidates ([`spread_into_groups`]), and folds
/// each into a `T` of its part with `add`, which also gets the chain's
/// breakdown value. Returns the `T`s of the `parts` (at least one).
///
/// Each group is spread into buckets of about 16 rows by the hash's next
/// bits, a counting sort that writes to few places at once, so its writes
/// stay in cache, and each bucket is sorted into walk order on its own: by
/// person, then [`walk_key`], then breakdown value as the stores sort
/// text. Events equal in all of these are alike to the walk, so the answer
/// does not depend on the order the store returned them in. Each part of
/// the groups is spread, sorted and walked by its own thread (one per core:
/// the statement is done, so the cores are free).
///
/// On 2.4M rows and two cores (DuckDB): ordering them in the statement made
/// it take 415 ms instead of 225 (without reading the rows out); spreading
/// them in one pass straight into 16-row buckets, each write to a new cache
/// line, after they were all read took 28–33 ms of a walk of 87–102 ms.
/// Spread into groups while they are read, the walk after the read takes
/// 40–55 ms.
fn chains<'v, T: Default + Send>(
    groups: &[Group],
    values: Option<&'v Column>,
    walk: Walk,
    parts: usize,
    add: impl Fn(&mut T, &Chain, Option<&'v str>) + Sync,
) -> Vec<T> {
    let Walk { steps, window_ms, order, from_ms: base } = walk;
    let group_bits = groups.len().max(1).ilog2();
    let bits_for = |rows: usize, per_bucket: usize| usize::BITS - (rows / per_bucket).max(1).leading_zeros();
    let text = |row: u64| values.and_then(|v| v.text_at(row as usize));
    let walk_order = |a: &Candidate, b: &Candidate| {
        (a[PERSON], a[KEY]).cmp(&(b[PERSON], b[KEY])).then_with(|| {
            if values.is_some() {
                cmp_values(text(a[ROW]), text(b[ROW]))
            } else {
                Ordering::Equal
            }
        })
    };
    let parts = parts.max(1);
    in_parallel(parts, |p| {
        let (mut bucketed, mut starts) = (Vec::new(), Vec::new());
        let mut out = T::default();
        for group in &groups[p * groups.len() / parts..(p + 1) * groups.len() / parts] {
            let len = group.iter().map(Vec::len).sum();
            let bucket_bits = bits_for(len, 16).min(63 - group_bits);
            let bucket_of = |c: &Candidate| ((hash(c) << group_bits) >> (64 - bucket_bits)) as usize;
            spread(|| group.iter().flatten().copied(), 1 << bucket_bits, bucket_of, &mut bucketed, &mut starts);
            for bucket in starts.windows(2) {
                let bucket = &mut bucketed[bucket[0]..bucket[1]];
                if values.is_some() {
                    bucket.sort_unstable_by(walk_order);
                } else {
                    // Rows alike but for their row number are alike to the walk.
                    bucket.sort_unstable();
                }
                for person in bucket.chunk_by(|a, b| a[PERSON] == b[PERSON]) {
                    let events = person.iter().map(|e| {
                        let ts = base + (e[KEY] >> STEP_BITS) as i64;
                        (ts, (e[KEY] & ((1 << MAX_STEPS) - 1)) as i64, e[ROW] as usize)
                    });
                    let best = match order {
                        Order::Loose => walk_loose(events, steps, window_ms),
                        Order::Strict => walk_strict(events, steps, window_ms),
                    };
                    if let Some(chain) = best {
                        add(&mut out, &chain, text(chain.first_row as u64));
                    }
                }
            }
        }
        out
    })
}

/// `work(p)` for each of `parts`, each on its own thread (the first on
/// this one), in part order.
fn in_parallel<R: Send>(parts: usize, work: impl Fn(usize) -> R + Sync) -> Vec<R> {
    std::thread::scope(|s| {
        let work = &work;
        let others: Vec<_> = (1..parts).map(|p| s.spawn(move || work(p))).collect();
        let mut done = vec![work(0)];
        done.extend(others.into_iter().map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))));
        done
    })
}

/// Counting sort of `items` (an iterator made twice) into `buckets` by
/// `bucket_of`: `out` gets the items bucket by bucket, and `starts` each
/// bucket's first index and then `out`'s length. Both are reused.
fn spread<I: Iterator<Item = Candidate>>(
    items: impl Fn() -> I,
    buckets: usize,
    bucket_of: impl Fn(&Candidate) -> usize,
    out: &mut Vec<Candidate>,
    starts: &mut Vec<usize>,
) {
    starts.clear();
    starts.resize(buckets + 1, 0);
    for item in items() {
        starts[bucket_of(&item) + 1] += 1;
    }
    for b in 0..buckets {
        starts[b + 1] += starts[b];
    }
    let len = starts[buckets];
    if out.capacity() < len {
        // Zeroed by the allocator (fresh pages already are), not written.
        *out = vec![[0; 3]; len];
    } else {
        out.clear();
        out.resize(len, [0; 3]);
    }
    let mut next = starts[..buckets].to_vec();
    for item in items() {
        let b = bucket_of(&item);
        out[next[b]] = item;
        next[b] += 1;
    }
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

/// What a group of people's best chains add up to.
#[derive(Debug, Default)]
struct Tally {
    /// People whose chain reached each step.
    counts: [u64; MAX_STEPS],
    /// Per step, each chain's ms from the step before.
    gaps: [Vec<i64>; MAX_STEPS],
    /// Per completed chain, ms from the first step to the last.
    totals: Vec<i64>,
}

impl Tally {
    fn add(&mut self, chain: &Chain, steps: usize) {
        let times = chain.times();
        for k in 0..times.len().min(steps) {
            self.counts[k] += 1;
            if k > 0 {
                self.gaps[k].push(times[k] - times[k - 1]);
            }
        }
        if times.len() >= steps {
            self.totals.push(times[steps - 1] - times[0]);
        }
    }

    fn merge(mut self, other: Tally) -> Tally {
        for (k, gaps) in other.gaps.into_iter().enumerate() {
            self.counts[k] += other.counts[k];
            self.gaps[k].extend(gaps);
        }
        self.totals.extend(other.totals);
        self
    }
}

/// Tallies of all people and, with a breakdown, of each breakdown value
/// shown and of the other values together.
#[derive(Debug, Default)]
struct Tallies<'v> {
    total: Tally,
    by_value: HashMap<Option<&'v str>, Tally>,
    other: Tally,
}

impl<'v> Tallies<'v> {
    fn add(&mut self, chain: &Chain, value: Option<&'v str>, steps: usize, shown: Option<&HashSet<Option<&'v str>>>) {
        self.total.add(chain, steps);
        match shown {
            Some(shown) if shown.contains(&value) => self.by_value.entry(value).or_default().add(chain, steps),
            Some(_) => self.other.add(chain, steps),
            None => {}
        }
    }

    fn merge(mut self, other: Tallies<'v>) -> Tallies<'v> {
        self.total = std::mem::take(&mut self.total).merge(other.total);
        self.other = std::mem::take(&mut self.other).merge(other.other);
        for (value, tally) in other.by_value {
            let mine = self.by_value.entry(value).or_default();
            *mine = std::mem::take(mine).merge(tally);
        }
        self
    }
}

fn summarise(q: &FunnelQuery, mut tally: Tally) -> FunnelGroup {
    let n = q.steps.len();
    let counts = tally.counts;
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
                median_seconds_from_previous: median_seconds(std::mem::take(&mut tally.gaps[k])),
            }
        })
        .collect();
    FunnelGroup { steps, median_seconds_to_convert: median_seconds(tally.totals) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts: i64, mask: i64) -> (i64, i64, usize) {
        (ts, mask, 0)
    }

    /// Every person's best chain of a 3-step funnel with a 100 ms window.
    fn best_chains(person: &[i64], ts: &[i64], mask: &[i64], order: Order) -> Vec<Chain> {
        // Read two rows a batch: rows are numbered across batches.
        let batches = (0..person.len()).step_by(2).map(|at| {
            let cut = |column: &[i64]| options(&column[at..(at + 2).min(column.len())]);
            [cut(person), cut(ts), cut(mask)]
        });
        let groups = spread_into_groups(batches, walk(order));
        chains(&groups, None, walk(order), 2, |found: &mut Vec<Chain>, c, _| found.push(*c)).concat()
    }

    fn walk(order: Order) -> Walk {
        Walk { steps: 3, window_ms: 100, order, from_ms: 0 }
    }

    fn options(values: &[i64]) -> Vec<Option<i64>> {
        values.iter().copied().map(Some).collect()
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
        let walk = |order| best_chains(&[7, 7, 7, 7], &[20, 10, 10, 10], &[4, 0, 2, 1], order);
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
            best_chains(&[9, -3, 9, -3, 9], &[5, 1, 6, 2, 7], &[1, 1, 2, 2, 4], Order::Loose)
                .iter()
                .map(|c| (c.times().to_vec(), c.first_row))
                .collect();
        found.sort();
        assert_eq!(found, vec![(vec![1, 2], 1), (vec![5, 6, 7], 0)]);
    }

    #[test]
    fn rows_in_any_order_and_batches_and_any_number_of_parts_walk_as_one_plain_sort() {
        // 3,000 rows of 200 people, shuffled, with repeated times and masks.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let people: Vec<i64> = (0..200).map(|_| (next() >> 1) as i64).collect();
        let rows: Vec<(i64, i64, i64)> =
            (0..3_000).map(|_| (people[next() as usize % 200], (next() % 400) as i64, (next() % 8) as i64)).collect();
        let (person, ts, mask): (Vec<_>, Vec<_>, Vec<_>) = (
            rows.iter().map(|r| Some(r.0)).collect(),
            rows.iter().map(|r| Some(r.1)).collect(),
            rows.iter().map(|r| Some(r.2)).collect(),
        );
        for order in [Order::Loose, Order::Strict] {
            // The plain way: each person's rows, sorted by time, first step, mask.
            let mut by_person: std::collections::BTreeMap<i64, Vec<(i64, i64)>> = Default::default();
            for &(p, t, m) in &rows {
                by_person.entry(p).or_default().push((t, m));
            }
            let first = |m: i64| if m == 0 { 3 } else { m.trailing_zeros() as i64 };
            let mut expected: Vec<Vec<i64>> = by_person
                .into_values()
                .filter_map(|mut events| {
                    events.sort_by_key(|&(t, m)| (t, first(m), m));
                    let events = events.into_iter().map(|(t, m)| (t, m, 0));
                    match order {
                        Order::Loose => walk_loose(events, 3, 100),
                        Order::Strict => walk_strict(events, 3, 100),
                    }
                })
                .map(|c| c.times().to_vec())
                .collect();
            expected.sort();
            assert!(expected.iter().any(|t| t.len() == 3), "the rows make some complete chains");
            for parts in [1, 2, 3, 8] {
                // Read in batches of 7 rows, walked in `parts`.
                let batches = (0..rows.len()).step_by(7).map(|at| {
                    let cut = |column: &Vec<Option<i64>>| column[at..(at + 7).min(rows.len())].to_vec();
                    [cut(&person), cut(&ts), cut(&mask)]
                });
                let groups = spread_into_groups(batches, walk(order));
                let mut found =
                    chains(&groups, None, walk(order), parts, |f: &mut Vec<Vec<i64>>, c, _| f.push(c.times().to_vec()))
                        .concat();
                found.sort();
                assert_eq!(found, expected, "{order:?} in {parts} parts");
            }
        }
    }
}
