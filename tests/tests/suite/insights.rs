//! Every insight on one deterministic corpus (over 100k events), asked of
//! DuckDB and of ClickHouse: both must give the same answer, and it must
//! equal the answer computed here straight from the generated events (not
//! through the code under test).

use chrono::{DateTime, NaiveDate, SecondsFormat, TimeZone, Utc};
use chrono_tz::Tz;
use leanloop::bench::corpus::{self, Corpus, DAYS, PROJECT, START_MS};
use leanloop_analytics::cohorts::{CohortDefinition, MemoryBook};
use leanloop_analytics::{funnels, paths, people, retention, trends, web, Analytics, AnalyticsError, Ask};
use leanloop_core::{Event, EventKind, UserUpdate};
use leanloop_store::clickhouse::{ClickHouseOptions, ClickHouseStore};
use leanloop_store::duckdb::{DuckDbOptions, DuckDbStore};
use leanloop_store::{Cell, ColumnKind, EventStore, Param, Select};
use leanloop_tests::clickhouse::{self as ch, fresh_database, store_url};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, LazyLock};

const DAY_MS: i64 = 86_400_000;
/// "Now" for every question: after the corpus ends.
const NOW_MS: i64 = START_MS + 33 * DAY_MS;

struct Fixture {
    corpus: Corpus,
    duck: Analytics,
    click: Analytics,
    duck_store: Arc<dyn EventStore>,
    click_store: Arc<dyn EventStore>,
    /// Cohort definitions both stores' analytics read.
    book: Arc<MemoryBook>,
    _dir: tempfile::TempDir,
}

/// Saved cohorts of the corpus project: people on the pro plan, and people
/// on the free plan or on an enterprise one (which nobody is).
const PRO: i64 = 1;
const FREE: i64 = 2;

fn cohort(json: Value) -> CohortDefinition {
    serde_json::from_value(json).unwrap()
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let corpus = corpus::generate(7, 4_000, corpus::BUSY);
    assert!(corpus.events.len() >= 100_000, "corpus has {} events", corpus.events.len());
    let dir = tempfile::tempdir().unwrap();
    let duck: Arc<dyn EventStore> =
        Arc::new(DuckDbStore::open(&dir.path().join("events.duckdb"), &DuckDbOptions::default()).unwrap());
    let url = store_url(&ch::shared(), &fresh_database());
    let click: Arc<dyn EventStore> = Arc::new(ClickHouseStore::open(&ClickHouseOptions::new(url)).unwrap());
    for store in [&duck, &click] {
        for chunk in corpus.events.chunks(20_000) {
            assert_eq!(store.write(chunk, &[]).unwrap().inserted, chunk.len());
        }
        store.write(&[], &corpus.users).unwrap();
    }
    let book = Arc::new(MemoryBook::default());
    let pro = json!({"name": "Pro", "filters": [{"field": "traits.plan", "op": "eq", "value": "pro"}]});
    book.save(PROJECT, PRO, cohort(pro)).unwrap();
    let free = json!({"name": "Free", "match": "any", "filters": [{"field": "traits.plan", "op": "eq", "value": "free"},
                                                                 {"field": "traits.plan", "op": "regex", "value": "^enterprise"}]});
    book.save(PROJECT, FREE, cohort(free)).unwrap();
    let (duck_store, click_store) = (duck.clone(), click.clone());
    let (duck, click) = (Analytics::new(duck, book.clone()), Analytics::new(click, book.clone()));
    Fixture { corpus, duck, click, duck_store, click_store, book, _dir: dir }
});

/// Asks both stores; they must agree. Returns the answer as JSON.
fn both<Q: DeserializeOwned, R: Serialize>(query: Value, ask: fn(&Ask, &Q) -> Result<R, AnalyticsError>) -> Value {
    let f = &*FIXTURE;
    let q: Q = serde_json::from_value(query).unwrap();
    let on_duck = serde_json::to_value(ask(&f.duck.ask(PROJECT, NOW_MS), &q).unwrap()).unwrap();
    let on_click = serde_json::to_value(ask(&f.click.ask(PROJECT, NOW_MS), &q).unwrap()).unwrap();
    assert_eq!(on_duck, on_click, "DuckDB and ClickHouse disagree");
    on_duck
}

/// Erases a person, waiting as long as it takes: the events deleted.
fn erase(store: &dyn EventStore, project: i64, user_id: &str) -> u64 {
    let wait_until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    store.delete_person(project, user_id, wait_until).unwrap()
}

fn ms(rfc3339: &str) -> i64 {
    DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp_millis()
}

fn in_range(e: &Event, from: i64, to: i64) -> bool {
    e.timestamp_ms >= from && e.timestamp_ms < to
}

/// Local midnight of `date` in `tz` as UTC ms.
fn midnight(tz: Tz, date: NaiveDate) -> i64 {
    tz.from_local_datetime(&date.and_hms_opt(0, 0, 0).unwrap()).earliest().unwrap().timestamp_millis()
}

fn local_date(tz: Tz, ms: i64) -> NaiveDate {
    tz.from_utc_datetime(&DateTime::<Utc>::from_timestamp_millis(ms).unwrap().naive_utc()).date_naive()
}

fn day_label(tz: Tz, date: NaiveDate) -> String {
    tz.from_local_datetime(&date.and_hms_opt(0, 0, 0).unwrap())
        .earliest()
        .unwrap()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Nearest-rank percentile.
fn percentile(mut values: Vec<f64>, q: f64) -> Value {
    if values.is_empty() {
        return Value::Null;
    }
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = ((q * values.len() as f64).ceil() as usize).max(1);
    json!(values[rank - 1])
}

fn prop(e: &Event, key: &str) -> Option<Value> {
    let props: Value = serde_json::from_str(&e.properties).unwrap();
    props.get(key).filter(|v| !v.is_null()).cloned()
}

/// Orders optional values as the stores do: present ones ascending, then none.
fn none_last(a: &Option<String>, b: &Option<String>) -> std::cmp::Ordering {
    match (a, b) {
        (Some(a), Some(b)) => a.cmp(b),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    }
}

#[test]
fn daily_pageviews_in_berlin_by_top_browsers_with_the_previous_period() {
    let tz: Tz = "Europe/Berlin".parse().unwrap();
    let got = both(
        json!({"date_from": "2024-03-18", "date_to": "2024-04-16", "timezone": "Europe/Berlin", "interval": "day",
               "series": [{"event": "$pageview"}], "breakdown": "browser", "breakdown_limit": 3, "compare": true}),
        trends::trend,
    );
    let first = NaiveDate::from_ymd_opt(2024, 3, 18).unwrap();
    let days: Vec<NaiveDate> = first.iter_days().take(30).collect();
    let (from, to) = (midnight(tz, first), midnight(tz, NaiveDate::from_ymd_opt(2024, 4, 17).unwrap()));
    let views: Vec<&Event> =
        FIXTURE.corpus.events.iter().filter(|e| e.name == "$pageview" && in_range(e, from, to)).collect();
    let mut by_browser: HashMap<Option<String>, usize> = HashMap::new();
    for e in &views {
        *by_browser.entry(e.browser.clone()).or_default() += 1;
    }
    let mut ranked: Vec<(Option<String>, usize)> = by_browser.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| none_last(&a.0, &b.0)));
    let top: Vec<Option<String>> = ranked.iter().take(3).map(|r| r.0.clone()).collect();
    let line = |shown: Option<&Option<String>>| -> (Vec<Value>, Value) {
        let hits: Vec<&&Event> = views
            .iter()
            .filter(|e| match shown {
                Some(v) => &e.browser == v,
                None => !top.contains(&e.browser),
            })
            .collect();
        let data =
            days.iter().map(|d| json!(hits.iter().filter(|e| local_date(tz, e.timestamp_ms) == *d).count())).collect();
        (data, json!(hits.len()))
    };
    let mut expected = Vec::new();
    for v in &top {
        let (data, aggregate) = line(Some(v));
        expected.push(
            json!({"event": "$pageview", "math": "total", "breakdown_value": v, "data": data, "aggregate": aggregate}),
        );
    }
    let (data, aggregate) = line(None);
    expected.push(json!({"event": "$pageview", "math": "total", "breakdown_value": null, "other": true, "data": data, "aggregate": aggregate}));
    assert_eq!(got["series"], json!(expected));
    let labels: Vec<String> = days.iter().map(|d| day_label(tz, *d)).collect();
    assert_eq!(got["buckets"], json!(labels));
    assert!(
        labels.contains(&"2024-03-31T00:00:00+01:00".to_owned())
            && labels.contains(&"2024-04-01T00:00:00+02:00".to_owned())
    );
    // Nothing happened in the 30 days before: the same browsers' lines, at
    // zero, to compare with (no "other": it held nothing), in 30 buckets.
    let zeros: Vec<Value> = top
        .iter()
        .map(|v| json!({"event": "$pageview", "math": "total", "breakdown_value": v, "data": vec![0; 30], "aggregate": 0}))
        .collect();
    assert_eq!(got["previous"]["series"], json!(zeros));
    assert_eq!(got["previous"]["buckets"].as_array().unwrap().len(), 30);
}

#[test]
fn weekly_unique_people_count_stitched_visitors_once() {
    let got = both(
        json!({"date_from": "2024-03-18T00:00:00Z", "date_to": "2024-04-15T00:00:00Z", "interval": "week",
               "series": [{"math": "unique_users"}, {"math": "sessions", "event": "$pageview"}]}),
        trends::trend,
    );
    let c = &FIXTURE.corpus;
    let weeks: Vec<(i64, i64)> = (0..4).map(|w| (START_MS + w * 7 * DAY_MS, START_MS + (w + 1) * 7 * DAY_MS)).collect();
    let distinct = |from: i64, to: i64, key: &dyn Fn(&Event) -> Option<String>, name: Option<&str>| {
        c.events
            .iter()
            .filter(|e| in_range(e, from, to) && name.is_none_or(|n| e.name == n))
            .filter_map(key)
            .collect::<HashSet<_>>()
            .len()
    };
    let person = |e: &Event| Some(c.person(e));
    let session = |e: &Event| e.session_id.clone();
    let people: Vec<usize> = weeks.iter().map(|&(f, t)| distinct(f, t, &person, None)).collect();
    let sessions: Vec<usize> = weeks.iter().map(|&(f, t)| distinct(f, t, &session, Some("$pageview"))).collect();
    assert_eq!(got["series"][0]["data"], json!(people));
    assert_eq!(got["series"][0]["aggregate"], json!(distinct(START_MS, START_MS + 28 * DAY_MS, &person, None)));
    assert_eq!(got["series"][1]["data"], json!(sessions));
    assert_eq!(got["buckets"][1], json!("2024-03-25T00:00:00Z"));
    // Identify stitching: fewer people than distinct raw ids.
    let raw_ids =
        c.events.iter().filter_map(|e| e.user_id.clone().or(e.anonymous_id.clone())).collect::<HashSet<_>>().len();
    assert!(got["series"][0]["aggregate"].as_u64().unwrap() < raw_ids as u64);
}

#[test]
fn purchase_amounts_of_pro_customers_sum_average_and_p90() {
    let got = both(
        json!({"date_from": "2024-03-18T00:00:00Z", "date_to": "2024-04-17T00:00:00Z", "interval": "day",
               "filters": [{"field": "properties.plan", "op": "eq", "value": "pro"}],
               "series": [{"event": "purchase", "math": "sum", "property": "amount"},
                          {"event": "purchase", "math": "avg", "property": "properties.amount"},
                          {"event": "purchase", "math": "p90", "property": "amount"},
                          {"event": "purchase", "math": "min", "property": "amount"},
                          {"event": "purchase", "math": "max", "property": "amount"}]}),
        trends::trend,
    );
    let buys: Vec<&Event> = FIXTURE
        .corpus
        .events
        .iter()
        .filter(|e| e.name == "purchase" && prop(e, "plan") == Some(json!("pro")))
        .collect();
    let amounts = |day: i64| -> Vec<f64> {
        buys.iter()
            .filter(|e| (e.timestamp_ms - START_MS).div_euclid(DAY_MS) == day)
            .map(|e| prop(e, "amount").unwrap().as_f64().unwrap())
            .collect()
    };
    for day in 0..DAYS {
        let a = amounts(day);
        let sum: f64 = a.iter().sum();
        assert_eq!(got["series"][0]["data"][day as usize], json!(sum), "sum on day {day}");
        let avg = if a.is_empty() { Value::Null } else { json!(sum / a.len() as f64) };
        assert_eq!(got["series"][1]["data"][day as usize], avg, "avg on day {day}");
        assert_eq!(got["series"][2]["data"][day as usize], percentile(a, 0.9), "p90 on day {day}");
    }
    // Over the whole range (sums, averages and extremes are merged from the
    // days; the percentile is asked of the store).
    let all: Vec<f64> = (0..DAYS).flat_map(amounts).collect();
    let sum: f64 = all.iter().sum();
    let aggregate = |i: usize| got["series"][i]["aggregate"].clone();
    assert_eq!(aggregate(0), json!(sum));
    assert_eq!(aggregate(1), json!(sum / all.len() as f64));
    assert_eq!(aggregate(2), percentile(all.clone(), 0.9));
    assert_eq!(aggregate(3), json!(all.iter().copied().fold(f64::INFINITY, f64::min)));
    assert_eq!(aggregate(4), json!(all.iter().copied().fold(f64::NEG_INFINITY, f64::max)));
}

#[test]
fn fifty_filters_of_long_lists_are_answered_within_the_memory_limit() {
    // DuckDB plans a list of five or more values as a join of its own: 50
    // of them ran out of the 256 MB limit before a statement was bounded
    // to a few joins.
    let absent = |f: usize| json!((0..10).map(|i| format!("absent-{f}-{i}")).collect::<Vec<_>>());
    let mut filters: Vec<Value> =
        (0..49).map(|f| json!({"field": "browser", "op": "neq", "value": absent(f)})).collect();
    filters.push(json!({"field": "properties.plan", "op": "neq", "value": ["pro", "absent-a", "absent-b", "absent-c", "absent-d"]}));
    let got = both(
        json!({"date_from": "2024-03-18T00:00:00Z", "date_to": "2024-04-17T00:00:00Z", "interval": "day",
               "filters": filters, "series": [{"event": "purchase"}]}),
        trends::trend,
    );
    let (from, to) = (ms("2024-03-18T00:00:00Z"), ms("2024-04-17T00:00:00Z"));
    let expected = FIXTURE
        .corpus
        .events
        .iter()
        .filter(|e| e.name == "purchase" && in_range(e, from, to) && prop(e, "plan") != Some(json!("pro")))
        .count();
    assert!(expected > 0);
    assert_eq!(got["series"][0]["aggregate"], json!(expected));
}

/// Each person's events in range in time order (then uuid: this corpus has
/// no two events of one person at one ms; funnels order such ties by step,
/// tested on their own).
fn timelines(c: &Corpus, from: i64, to: i64) -> BTreeMap<String, Vec<&Event>> {
    let mut people: BTreeMap<String, Vec<&Event>> = BTreeMap::new();
    for e in c.events.iter().filter(|e| in_range(e, from, to)) {
        people.entry(c.person(e)).or_default().push(e);
    }
    for events in people.values_mut() {
        events.sort_by_key(|e| (e.timestamp_ms, e.uuid.to_string()));
    }
    people
}

/// A person's way through a funnel: per step reached, its time (ms) and
/// the index of its event in the person's timeline.
type Chain = Vec<(i64, usize)>;

/// The best chain per person, found the slow way: from every first step,
/// take each next step at its first chance within the window; keep the
/// deepest chain, completed earliest, from the latest start.
fn loose_chain(events: &[&Event], steps: &[&dyn Fn(&Event) -> bool], window: i64) -> Option<Chain> {
    let mut best: Option<(usize, usize, usize, Chain)> = None; // (level, completed at, start, chain)
    for (start, e) in events.iter().enumerate() {
        if !steps[0](e) {
            continue;
        }
        let mut chain = vec![(e.timestamp_ms, start)];
        let mut at = start;
        for step in &steps[1..] {
            let next =
                (at + 1..events.len()).find(|&j| step(events[j]) && events[j].timestamp_ms - e.timestamp_ms <= window);
            match next {
                Some(j) => {
                    chain.push((events[j].timestamp_ms, j));
                    at = j;
                }
                None => break,
            }
        }
        let candidate = (chain.len(), at, start, chain);
        let better = match &best {
            None => true,
            Some(b) => {
                candidate.0 > b.0
                    || (candidate.0 == b.0 && (candidate.1 < b.1 || (candidate.1 == b.1 && candidate.2 > b.2)))
            }
        };
        if better {
            best = Some(candidate);
        }
    }
    best.map(|b| b.3)
}

fn median_seconds(mut v: Vec<i64>) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    v.sort_unstable();
    json!(v[v.len().div_ceil(2) - 1] as f64 / 1000.0)
}

fn funnel_steps(chains: &[Chain], names: &[&str]) -> Value {
    let n = names.len();
    let count = |k: usize| chains.iter().filter(|c| c.len() > k).count() as u64;
    let rate = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let steps: Vec<Value> = (0..n)
        .map(|k| {
            let prev = if k == 0 { count(0) } else { count(k - 1) };
            let gaps: Vec<i64> = if k == 0 {
                vec![]
            } else {
                chains.iter().filter(|c| c.len() > k).map(|c| c[k].0 - c[k - 1].0).collect()
            };
            json!({"event": names[k], "count": count(k), "conversion_rate": rate(count(k), count(0)),
                   "step_conversion_rate": rate(count(k), prev), "drop_off": prev - count(k),
                   "median_seconds_from_previous": median_seconds(gaps)})
        })
        .collect();
    let totals: Vec<i64> = chains.iter().filter(|c| c.len() >= n).map(|c| c[n - 1].0 - c[0].0).collect();
    json!({"steps": steps, "median_seconds_to_convert": median_seconds(totals)})
}

#[test]
fn a_pricing_to_signup_funnel_counts_each_person_once_in_loose_and_strict_order() {
    let query = json!({"date_from": "2024-03-18T00:00:00Z", "date_to": "2024-04-17T00:00:00Z", "window_seconds": 86_400,
        "steps": [{"event": "$pageview", "filters": [{"field": "path", "op": "eq", "value": "/pricing"}]},
                  {"event": "signup_started"}, {"event": "signup_completed"}],
        "breakdown": "release"});
    let got = both(query.clone(), funnels::funnel);
    let c = &FIXTURE.corpus;
    let pricing = |e: &Event| e.name == "$pageview" && e.path.as_deref() == Some("/pricing");
    let started = |e: &Event| e.name == "signup_started";
    let completed = |e: &Event| e.name == "signup_completed";
    let steps: [&dyn Fn(&Event) -> bool; 3] = [&pricing, &started, &completed];
    let names = ["$pageview", "signup_started", "signup_completed"];
    let people = timelines(c, START_MS, START_MS + DAYS * DAY_MS);
    let mut chains = Vec::new();
    let mut by_release: HashMap<Option<String>, Vec<Chain>> = HashMap::new();
    for events in people.values() {
        if let Some(chain) = loose_chain(events, &steps, DAY_MS) {
            by_release.entry(events[chain[0].1].release.clone()).or_default().push(chain.clone());
            chains.push(chain);
        }
    }
    let expected = funnel_steps(&chains, &names);
    assert_eq!(got["steps"], expected["steps"]);
    assert_eq!(got["median_seconds_to_convert"], expected["median_seconds_to_convert"]);
    assert!(got["steps"][2]["count"].as_u64().unwrap() > 50, "the corpus converts some people: {}", got["steps"]);
    let mut groups: Vec<(Option<String>, Vec<Chain>)> = by_release.into_iter().collect();
    groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| none_last(&a.0, &b.0)));
    let expected: Vec<Value> = groups
        .iter()
        .map(|(release, chains)| {
            let mut g = funnel_steps(chains, &names);
            g["breakdown_value"] = json!(release);
            g
        })
        .collect();
    assert_eq!(got["breakdown"], json!(expected));

    // Strict: the steps must follow each other with no other event between.
    let mut strict = query;
    strict["order"] = json!("strict");
    strict.as_object_mut().unwrap().remove("breakdown");
    let got = both(strict, funnels::funnel);
    let mut chains = Vec::new();
    for events in people.values() {
        let mut best: Option<Chain> = None;
        let mut current: Option<Chain> = None;
        for (i, e) in events.iter().enumerate() {
            let next = current.as_ref().map_or(0, |c| c.len());
            current = match current {
                Some(mut c) if next < 3 && steps[next](e) && e.timestamp_ms - c[0].0 <= DAY_MS => {
                    c.push((e.timestamp_ms, i));
                    Some(c)
                }
                _ if pricing(e) => Some(vec![(e.timestamp_ms, i)]),
                _ => None,
            };
            if let Some(c) = &current {
                if best.as_ref().is_none_or(|b| c.len() > b.len()) {
                    best = Some(c.clone());
                }
            }
        }
        chains.extend(best);
    }
    assert_eq!(got["steps"], funnel_steps(&chains, &names)["steps"]);
}

#[test]
fn weekly_retention_of_first_time_signups() {
    let got = both(
        json!({"date_from": "2024-03-18", "cohort_event": {"event": "signup_completed"}, "cohort_type": "first_time",
               "return_event": {"event": "$pageview"}, "period": "week", "periods": 4}),
        retention::retention,
    );
    let c = &FIXTURE.corpus;
    let week = |ms: i64| (ms - START_MS).div_euclid(7 * DAY_MS);
    let mut first: HashMap<String, i64> = HashMap::new();
    let mut back: HashSet<(String, i64)> = HashSet::new();
    for e in &c.events {
        if e.name == "signup_completed" {
            let w = first.entry(c.person(e)).or_insert(i64::MAX);
            *w = (*w).min(week(e.timestamp_ms));
        }
        if e.name == "$pageview" {
            back.insert((c.person(e), week(e.timestamp_ms)));
        }
    }
    let now_week = week(NOW_MS);
    let expected: Vec<Value> = (0..4)
        .map(|cohort| {
            let members: Vec<&String> = first.iter().filter(|(_, w)| **w == cohort).map(|(p, _)| p).collect();
            let values: Vec<usize> = (0..4)
                .take_while(|k| cohort + k <= now_week)
                .map(|k| if k == 0 { members.len() } else { members.iter().filter(|p| back.contains(&((**p).clone(), cohort + k))).count() })
                .collect();
            let start = DateTime::<Utc>::from_timestamp_millis(START_MS + cohort * 7 * DAY_MS).unwrap();
            json!({"period_start": start.to_rfc3339_opts(SecondsFormat::Secs, true), "size": members.len(), "values": values})
        })
        .collect();
    assert_eq!(got["cohorts"], json!(expected));
}

/// What follows `start` within sessions, by count (then item, none last).
fn next_items(items_by_session: &BTreeMap<String, Vec<(i64, String, String)>>, start: &str) -> (u64, Vec<Value>) {
    let mut counts: HashMap<Option<String>, u64> = HashMap::new();
    for items in items_by_session.values() {
        for (i, item) in items.iter().enumerate() {
            if item.2 == start {
                *counts.entry(items.get(i + 1).map(|n| n.2.clone())).or_default() += 1;
            }
        }
    }
    let total = counts.values().sum();
    let mut ranked: Vec<(Option<String>, u64)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| none_last(&a.0, &b.0)));
    (total, ranked.into_iter().take(10).map(|(item, count)| json!({"item": item, "count": count})).collect())
}

#[test]
fn paths_after_an_event_and_after_a_page() {
    let c = &FIXTURE.corpus;
    let sessions = |pages: bool| {
        let mut by: BTreeMap<String, Vec<(i64, String, String)>> = BTreeMap::new();
        for e in c.events.iter().filter(|e| !pages || e.name == "$pageview") {
            let item = if pages { e.path.clone().unwrap_or_default() } else { e.name.clone() };
            by.entry(e.session_id.clone().unwrap()).or_default().push((e.timestamp_ms, e.uuid.to_string(), item));
        }
        for items in by.values_mut() {
            items.sort();
        }
        by
    };
    let range = json!({"date_from": "2024-03-18T00:00:00Z", "date_to": "2024-04-17T00:00:00Z"});
    let mut q = range.clone();
    q["start"] = json!("signup_started");
    let got = both(q, paths::paths);
    let (occurrences, steps) = next_items(&sessions(false), "signup_started");
    assert_eq!((got["occurrences"].as_u64().unwrap(), &got["steps"]), (occurrences, &json!(steps)));

    let mut q = range;
    q["start"] = json!("/it's \"quoted\"");
    q["kind"] = json!("pages");
    let got = both(q, paths::paths);
    let (occurrences, steps) = next_items(&sessions(true), "/it's \"quoted\"");
    assert!(occurrences > 0);
    assert_eq!((got["occurrences"].as_u64().unwrap(), &got["steps"]), (occurrences, &json!(steps)));
}

#[test]
fn paths_through_a_session_of_twenty_thousand_events() {
    // A project of its own in the shared stores: one session of "a", "b",
    // "a", ... a second apart. Read by position, ClickHouse needed
    // gigabytes for it (each row carried the session's whole array).
    let project = PROJECT + 100;
    let events: Vec<Event> = (0..20_000u128)
        .map(|i| {
            let name = if i % 2 == 0 { "a" } else { "b" };
            let mut e = Event::new(
                uuid::Uuid::from_u128(0xa11 << 64 | i),
                project,
                EventKind::Track,
                name,
                START_MS + i as i64 * 1000,
            );
            e.user_id = Some("heavy".into());
            e.session_id = Some("long".into());
            e
        })
        .collect();
    for store in [&FIXTURE.duck_store, &FIXTURE.click_store] {
        assert_eq!(store.write(&events, &[]).unwrap().inserted, events.len());
    }
    let range = json!({"start": "a", "date_from": "2024-03-18T00:00:00Z", "date_to": "2024-04-17T00:00:00Z"});
    let ask = |q: Value| {
        let q: paths::PathsQuery = serde_json::from_value(q).unwrap();
        let on = |a: &Analytics| serde_json::to_value(paths::paths(&a.ask(project, NOW_MS), &q).unwrap()).unwrap();
        let (duck, click) = (on(&FIXTURE.duck), on(&FIXTURE.click));
        assert_eq!(duck, click, "DuckDB and ClickHouse disagree");
        duck
    };
    let next = ask(range.clone());
    assert_eq!((&next["occurrences"], &next["steps"]), (&json!(10_000), &json!([{"item": "b", "count": 10_000}])));
    let mut q = range;
    q["direction"] = json!("previous");
    let previous = ask(q);
    assert_eq!(previous["steps"], json!([{"item": "b", "count": 9_999}, {"item": null, "count": 1}]));
}

#[test]
fn web_overview_pages_entries_and_browsers() {
    let got =
        both(json!({"date_from": "2024-03-18T00:00:00Z", "date_to": "2024-04-17T00:00:00Z", "limit": 5}), web::web);
    let c = &FIXTURE.corpus;
    let views: Vec<&Event> = c.events.iter().filter(|e| e.name == "$pageview").collect();
    let mut sessions: HashMap<&str, Vec<&Event>> = HashMap::new();
    for e in &views {
        sessions.entry(e.session_id.as_deref().unwrap()).or_default().push(e);
    }
    let n = sessions.len() as i64;
    let bounces = sessions.values().filter(|v| v.len() == 1).count() as i64;
    let length: i64 = sessions
        .values()
        .map(|v| v.iter().map(|e| e.timestamp_ms).max().unwrap() - v.iter().map(|e| e.timestamp_ms).min().unwrap())
        .sum();
    let people: HashSet<String> = views.iter().map(|e| c.person(e)).collect();
    assert_eq!(
        got["overview"],
        json!({"visitors": people.len(), "pageviews": views.len(), "sessions": n,
               "bounce_rate": bounces as f64 / n as f64, "avg_session_seconds": length as f64 / n as f64 / 1000.0})
    );
    // (value, visitors, count), ranked by `by_count` first or visitors first.
    let rank = |rows: Vec<(Option<String>, String)>, by_count: bool| -> Value {
        let mut groups: HashMap<Option<String>, (HashSet<String>, u64)> = HashMap::new();
        for (value, person) in rows {
            let g = groups.entry(value.filter(|v| !v.is_empty())).or_default();
            g.0.insert(person);
            g.1 += 1;
        }
        let mut list: Vec<(Option<String>, u64, u64)> =
            groups.into_iter().map(|(v, (p, n))| (v, p.len() as u64, n)).collect();
        list.sort_by(|a, b| {
            let (ka, kb) = if by_count { ((a.2, a.1), (b.2, b.1)) } else { ((a.1, a.2), (b.1, b.2)) };
            kb.cmp(&ka).then_with(|| none_last(&a.0, &b.0))
        });
        json!(list
            .into_iter()
            .take(5)
            .map(|(v, p, n)| json!({"value": v, "visitors": p, "count": n}))
            .collect::<Vec<_>>())
    };
    assert_eq!(got["pages"], rank(views.iter().map(|e| (e.path.clone(), c.person(e))).collect(), true));
    // Every source list, ranked by visitors.
    let column = |value: fn(&Event) -> &Option<String>| -> Value {
        rank(views.iter().map(|e| (value(e).clone(), c.person(e))).collect(), false)
    };
    assert_eq!(got["browsers"], column(|e| &e.browser));
    assert_eq!(got["os"], column(|e| &e.os));
    assert_eq!(got["devices"], column(|e| &e.device_type));
    assert_eq!(got["countries"], column(|e| &e.country));
    // A session's first and last page views; equal times go to the smallest
    // and the largest path.
    let ends = |last: bool| -> Value {
        let rows = sessions
            .values()
            .map(|v| {
                let key = |e: &&&Event| (e.timestamp_ms, e.path.clone().unwrap_or_default());
                let end = if last { v.iter().max_by_key(key) } else { v.iter().min_by_key(key) }.unwrap();
                (end.path.clone(), c.person(end))
            })
            .collect();
        rank(rows, false)
    };
    assert_eq!(got["entry_pages"], ends(false));
    assert_eq!(got["exit_pages"], ends(true));
    // Sources are sessions', from their entry page views; a referrer on
    // the entry page's own domain is none.
    let source = |value: &dyn Fn(&Event) -> Option<String>| -> Value {
        rank(sessions.values().map(|v| (value(entry_view(v)), c.person(entry_view(v)))).collect(), false)
    };
    assert_eq!(got["referrers"], source(&|e| e.referrer_domain.clone().filter(|r| Some(r) != own_domain(e).as_ref())));
    assert_eq!(got["utm_sources"], source(&|e| e.utm_source.clone()));
    assert_eq!(got["utm_mediums"], source(&|e| e.utm_medium.clone()));
    assert_eq!(got["utm_campaigns"], source(&|e| e.utm_campaign.clone()));
}

/// A session's entry page view: its first, on equal times the smallest path.
fn entry_view<'a>(views: &[&'a Event]) -> &'a Event {
    views.iter().min_by_key(|e| (e.timestamp_ms, e.path.clone().unwrap_or_default())).unwrap()
}

/// The host of a page view's URL as referrer domains are stored: lower
/// case, without `www.`.
fn own_domain(e: &Event) -> Option<String> {
    let host = url::Url::parse(e.url.as_deref()?).ok()?.host_str()?.to_lowercase();
    Some(host.strip_prefix("www.").map(str::to_owned).unwrap_or(host))
}

#[test]
fn web_sources_are_each_sessions_from_its_entry_page_not_from_inside_the_site() {
    // A project of its own in the shared stores.
    let project = PROJECT + 101;
    let view = |i: u128, session: &str, at_s: i64, url: &str, referrer: Option<&str>, utm: Option<&str>| {
        let mut e = Event::new(
            uuid::Uuid::from_u128(0x5e55 << 64 | i),
            project,
            EventKind::Page,
            "$pageview",
            START_MS + at_s * 1000,
        );
        e.anonymous_id = Some(format!("visitor-{session}"));
        e.session_id = Some(session.into());
        e.url = Some(url.into());
        e.path = url::Url::parse(url).ok().map(|u| u.path().to_owned());
        e.referrer_domain = referrer.map(str::to_owned);
        e.utm_source = utm.map(str::to_owned);
        e
    };
    let events = vec![
        // Landed from a search, then two views inside the site.
        view(1, "a", 0, "https://Shop.example/?utm_source=google", Some("google.com"), Some("google")),
        view(2, "a", 60, "https://shop.example/pricing", Some("shop.example"), None),
        view(3, "a", 120, "https://shop.example/checkout", Some("shop.example"), None),
        // A session started again inside the site (`www.` and a port on the page).
        view(4, "b", 0, "https://www.shop.example:8443/pricing", Some("shop.example"), None),
        view(5, "b", 30, "https://shop.example/signup", Some("news.example"), Some("late")),
        // A direct visit.
        view(6, "c", 0, "https://shop.example/", None, None),
    ];
    for store in [&FIXTURE.duck_store, &FIXTURE.click_store] {
        assert_eq!(store.write(&events, &[]).unwrap().inserted, events.len());
    }
    let q: web::WebQuery = serde_json::from_value(json!({
        "date_from": "2024-03-18T00:00:00Z", "date_to": "2024-04-17T00:00:00Z",
        "sections": ["referrers", "utm_sources", "entry_pages"]
    }))
    .unwrap();
    let on = |a: &Analytics| serde_json::to_value(web::web(&a.ask(project, NOW_MS), &q).unwrap()).unwrap();
    let (duck, click) = (on(&FIXTURE.duck), on(&FIXTURE.click));
    assert_eq!(duck, click, "DuckDB and ClickHouse disagree");
    assert_eq!(
        duck["referrers"],
        json!([{"value": null, "visitors": 2, "count": 2}, {"value": "google.com", "visitors": 1, "count": 1}])
    );
    assert_eq!(
        duck["utm_sources"],
        json!([{"value": null, "visitors": 2, "count": 2}, {"value": "google", "visitors": 1, "count": 1}])
    );
}

#[test]
fn web_sections_answer_what_was_asked_as_the_whole_report_does() {
    let range = json!({"date_from": "2024-03-18T00:00:00Z", "date_to": "2024-04-17T00:00:00Z", "limit": 5});
    let whole = both(range.clone(), web::web);
    for sections in [vec!["overview"], vec!["exit_pages", "browsers"], vec!["countries", "entry_pages", "pages"]] {
        let mut q = range.clone();
        q["sections"] = json!(sections);
        let got = both(q, web::web);
        let mut expected = serde_json::Map::new();
        for s in &sections {
            assert!(whole[s].is_object() || whole[s].is_array(), "the whole report has {s}");
            expected.insert(s.to_string(), whole[s].clone());
        }
        assert_eq!(got, Value::Object(expected), "sections {sections:?}");
    }
}

#[test]
fn feedback_nps_by_release_and_newest_messages() {
    let got = both(
        json!({"date_from": "2024-03-18T00:00:00Z", "date_to": "2024-04-17T00:00:00Z", "messages_limit": 7}),
        leanloop_analytics::feedback::feedback,
    );
    let c = &FIXTURE.corpus;
    let notes: Vec<&Event> = c.events.iter().filter(|e| e.name == "$feedback").collect();
    let nps = |scores: &[i64]| {
        let p = scores.iter().filter(|&&s| s >= 9).count() as u64;
        let d = scores.iter().filter(|&&s| s <= 6).count() as u64;
        let n = scores.len() as u64;
        json!({"nps": (p as f64 - d as f64) * 100.0 / n as f64, "responses": n, "promoters": p, "passives": n - p - d, "detractors": d})
    };
    let score = |e: &Event| prop(e, "score").map(|s| s.as_i64().unwrap());
    let all: Vec<i64> = notes.iter().filter_map(|e| score(e)).collect();
    let expected = nps(&all);
    for key in ["nps", "responses", "promoters", "passives", "detractors"] {
        assert_eq!(got[key], expected[key], "{key}");
    }
    let distribution: Vec<usize> = (0..=10).map(|s| all.iter().filter(|&&x| x == s).count()).collect();
    assert_eq!(got["distribution"], json!(distribution));
    let mut by_release: BTreeMap<Option<String>, Vec<i64>> = BTreeMap::new();
    for e in &notes {
        if let Some(s) = score(e) {
            by_release.entry(e.release.clone()).or_default().push(s);
        }
    }
    let expected: Vec<Value> = by_release
        .iter()
        .map(|(r, s)| {
            let mut v = nps(s);
            v["release"] = json!(r);
            v
        })
        .collect();
    assert_eq!(got["by_release"], json!(expected));
    let mut with_message: Vec<&&Event> = notes.iter().filter(|e| prop(e, "message").is_some()).collect();
    with_message.sort_by_key(|e| (std::cmp::Reverse(e.timestamp_ms), e.uuid.to_string()));
    let messages: Vec<Value> = with_message
        .iter()
        .take(7)
        .map(|e| {
            let at = DateTime::<Utc>::from_timestamp_millis(e.timestamp_ms)
                .unwrap()
                .to_rfc3339_opts(SecondsFormat::Millis, true);
            json!({"timestamp": at, "message": prop(e, "message"), "score": score(e), "category": null,
                   "release": e.release, "user": c.person(e)})
        })
        .collect();
    assert_eq!(got["messages"], json!(messages));
}

/// A release's first and last event (ms), its events and its people.
type ReleaseSeen = (i64, i64, u64, HashSet<String>);

#[test]
fn releases_with_first_and_last_seen_and_their_impact() {
    let got = both(json!({}), leanloop_analytics::releases::releases);
    let c = &FIXTURE.corpus;
    let mut by: BTreeMap<String, ReleaseSeen> = BTreeMap::new();
    for e in &c.events {
        if let Some(r) = &e.release {
            let s = by.entry(r.clone()).or_insert((i64::MAX, i64::MIN, 0, HashSet::new()));
            s.0 = s.0.min(e.timestamp_ms);
            s.1 = s.1.max(e.timestamp_ms);
            s.2 += 1;
            s.3.insert(c.person(e));
        }
    }
    let mut list: Vec<(&String, &ReleaseSeen)> = by.iter().collect();
    list.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then_with(|| a.0.cmp(b.0)));
    let at = |ms: i64| DateTime::<Utc>::from_timestamp_millis(ms).unwrap().to_rfc3339_opts(SecondsFormat::Millis, true);
    let expected: Vec<Value> = list
        .iter()
        .map(|(r, s)| json!({"release": r, "first_seen": at(s.0), "last_seen": at(s.1), "events": s.2, "users": s.3.len(), "deployed_at": null}))
        .collect();
    assert_eq!(got, json!(expected));

    // Purchases in the week before 1.2.0 first appeared vs the week after.
    let got = both(
        json!({"release": "1.2.0", "series": {"event": "purchase"}, "window_seconds": 7 * 86_400}),
        leanloop_analytics::releases::impact,
    );
    let t = by["1.2.0"].0;
    let count = |from: i64, to: i64| c.events.iter().filter(|e| e.name == "purchase" && in_range(e, from, to)).count();
    let (before, after) = (count(t - 7 * DAY_MS, t), count(t, t + 7 * DAY_MS));
    assert_eq!(
        (got["baseline"]["value"].as_u64(), got["candidate"]["value"].as_u64()),
        (Some(before as u64), Some(after as u64))
    );
    assert_eq!(got["change"], json!((after as f64 - before as f64) / before as f64));
    assert_eq!(ms(got["release_time"].as_str().unwrap()), t);
    assert_eq!(got["release_time_source"], "events");

    // A release time given (as the pipeline's deploy record does) moves the split.
    let given = t + DAY_MS;
    let got = both(
        json!({"release": "1.2.0", "series": {"event": "purchase"}, "window_seconds": 7 * 86_400, "release_time": at(given)}),
        leanloop_analytics::releases::impact,
    );
    let (before, after) = (count(given - 7 * DAY_MS, given), count(given, given + 7 * DAY_MS));
    assert_eq!(
        (got["baseline"]["value"].as_u64(), got["candidate"]["value"].as_u64()),
        (Some(before as u64), Some(after as u64))
    );
    assert_eq!(
        (ms(got["release_time"].as_str().unwrap()), got["release_time_source"].as_str()),
        (given, Some("query"))
    );

    // A release out for less than the window is set against as long a time
    // before it, not a week against what has happened so far.
    let recent = NOW_MS - 2 * DAY_MS;
    let got = both(
        json!({"release": "1.2.0", "series": {"event": "purchase"}, "window_seconds": 7 * 86_400, "release_time": at(recent)}),
        leanloop_analytics::releases::impact,
    );
    let (before, after) = (count(recent - 2 * DAY_MS, recent), count(recent, NOW_MS));
    assert_eq!(
        (got["baseline"]["value"].as_u64(), got["candidate"]["value"].as_u64()),
        (Some(before as u64), Some(after as u64))
    );
    assert_eq!(
        (ms(got["baseline"]["from"].as_str().unwrap()), ms(got["candidate"]["to"].as_str().unwrap())),
        (recent - 2 * DAY_MS, NOW_MS)
    );
    let future = json!({"release": "1.2.0", "series": {"event": "purchase"}, "release_time": at(NOW_MS + 1)});
    let field =
        both_refuse::<leanloop_analytics::releases::ImpactQuery, _>(future, leanloop_analytics::releases::impact);
    assert_eq!(field, "release_time");
    // ClickHouse's times start at 1970: a before window reaching past it
    // is refused on both stores.
    let ancient = json!({"release": "1.2.0", "series": {"event": "purchase"}, "release_time": "0001-01-01T00:00:00Z"});
    let field =
        both_refuse::<leanloop_analytics::releases::ImpactQuery, _>(ancient, leanloop_analytics::releases::impact);
    assert_eq!(field, "release_time");
}

/// The people whose stored traits have `plan` = `plan`, from the generated
/// identify calls (later traits win).
fn on_plan(c: &Corpus, plan: &str) -> HashSet<String> {
    let mut traits: HashMap<&str, Value> = HashMap::new();
    for u in &c.users {
        let update: Value = serde_json::from_str(&u.traits).unwrap();
        if let Some(p) = update.get("plan") {
            traits.insert(&u.user_id, p.clone());
        }
    }
    traits.into_iter().filter(|(_, p)| p == plan).map(|(u, _)| u.to_owned()).collect()
}

#[test]
fn cohorts_keep_the_events_of_their_members_in_every_insight() {
    let c = &FIXTURE.corpus;
    let pro = on_plan(c, "pro");
    assert!(pro.len() > 100 && pro.len() < on_plan(c, "free").len(), "{} pro people", pro.len());
    let (from, to) = (START_MS, START_MS + DAYS * DAY_MS);
    let trend = |filter: Value| {
        both::<trends::TrendQuery, _>(
            json!({"date_from": "2024-03-18T00:00:00Z", "date_to": "2024-04-17T00:00:00Z", "interval": "week",
                   "filters": [filter], "series": [{"math": "unique_users"}, {"math": "total"}]}),
            trends::trend,
        )
    };
    // Members' events are their own and those of anonymous ids identified as them.
    let expect = |member: &dyn Fn(&str) -> bool| {
        let events: Vec<&Event> = c.events.iter().filter(|e| in_range(e, from, to) && member(&c.person(e))).collect();
        (events.iter().map(|e| c.person(e)).collect::<HashSet<_>>().len(), events.len())
    };
    let got = trend(json!({"field": "cohort", "op": "eq", "value": PRO}));
    let (people, events) = expect(&|p| pro.contains(p));
    assert_eq!(
        (got["series"][0]["aggregate"].clone(), got["series"][1]["aggregate"].clone()),
        (json!(people), json!(events))
    );
    let got = trend(json!({"field": "cohort", "op": "neq", "value": PRO}));
    let (people, events) = expect(&|p| !pro.contains(p));
    assert_eq!(
        (got["series"][0]["aggregate"].clone(), got["series"][1]["aggregate"].clone()),
        (json!(people), json!(events))
    );
    // A list is any of them: pro or free is every identified person.
    let got = trend(json!({"field": "cohort", "op": "eq", "value": [PRO, FREE]}));
    let identified = on_plan(c, "free").union(&pro).cloned().collect::<HashSet<_>>();
    let (people, _) = expect(&|p| identified.contains(p));
    assert_eq!(got["series"][0]["aggregate"], json!(people));

    // A funnel step filtered to the cohort: only members' chains count.
    let got = both::<funnels::FunnelQuery, _>(
        json!({"date_from": "2024-03-18T00:00:00Z", "date_to": "2024-04-17T00:00:00Z", "window_seconds": 86_400,
               "steps": [{"event": "signup_started", "filters": [{"field": "cohort", "op": "eq", "value": PRO}]},
                         {"event": "signup_completed"}]}),
        funnels::funnel,
    );
    let started = |e: &Event| e.name == "signup_started" && pro.contains(&c.person(e));
    let completed = |e: &Event| e.name == "signup_completed";
    let steps: [&dyn Fn(&Event) -> bool; 2] = [&started, &completed];
    let chains: Vec<_> =
        timelines(c, from, to).values().filter_map(|events| loose_chain(events, &steps, DAY_MS)).collect();
    assert!(!chains.is_empty());
    assert_eq!(got["steps"], funnel_steps(&chains, &["signup_started", "signup_completed"])["steps"]);

    // Every other insight takes the filter and the stores agree on it.
    let cohort_filter = json!([{"field": "cohort", "op": "eq", "value": PRO}]);
    let range =
        json!({"date_from": "2024-03-18T00:00:00Z", "date_to": "2024-04-17T00:00:00Z", "filters": cohort_filter});
    let with = |extra: Value| {
        let mut q = range.clone();
        q.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        q
    };
    let web = both::<web::WebQuery, _>(range.clone(), web::web);
    let views: Vec<&Event> = c
        .events
        .iter()
        .filter(|e| e.name == "$pageview" && in_range(e, from, to) && pro.contains(&c.person(e)))
        .collect();
    let visitors = views.iter().map(|e| c.person(e)).collect::<HashSet<_>>().len();
    assert_eq!(
        (web["overview"]["visitors"].clone(), web["overview"]["pageviews"].clone()),
        (json!(visitors), json!(views.len()))
    );
    // Members and everyone else split retention's cohorts between them.
    let retention = |filters: Value| {
        let got = both::<retention::RetentionQuery, _>(
            json!({"date_from": "2024-03-18", "cohort_event": {"event": "signup_completed"}, "cohort_type": "first_time",
                   "return_event": {"event": "$pageview"}, "period": "week", "periods": 4, "filters": filters}),
            retention::retention,
        );
        got["cohorts"].as_array().unwrap().iter().map(|c| c["size"].as_u64().unwrap()).collect::<Vec<u64>>()
    };
    let (all, members, others) = (
        retention(json!([])),
        retention(cohort_filter.clone()),
        retention(json!([{"field": "cohort", "op": "neq", "value": PRO}])),
    );
    assert!(members.iter().sum::<u64>() > 0);
    assert_eq!(all, members.iter().zip(&others).map(|(a, b)| a + b).collect::<Vec<_>>());
    let paths = both::<paths::PathsQuery, _>(with(json!({"start": "signup_started"})), paths::paths);
    let started =
        c.events.iter().filter(|e| e.name == "signup_started" && in_range(e, from, to) && pro.contains(&c.person(e)));
    assert_eq!(paths["occurrences"], json!(started.count()));

    // The people list takes cohorts too.
    let listed = both::<people::PeopleQuery, _>(json!({"filters": cohort_filter, "limit": 1}), people::people);
    assert_eq!(listed["total"], json!(pro.len()));
    let listed = both::<people::PeopleQuery, _>(
        json!({"filters": [{"field": "cohort", "op": "neq", "value": PRO}], "limit": 1}),
        people::people,
    );
    assert_eq!(listed["total"], json!(identified.len() - pro.len()));
}

/// Asks one question of both stores and returns the field an error names.
fn both_refuse<Q: DeserializeOwned, R: std::fmt::Debug>(
    query: Value,
    ask: fn(&Ask, &Q) -> Result<R, AnalyticsError>,
) -> String {
    let f = &*FIXTURE;
    let q: Q = serde_json::from_value(query).unwrap();
    let fields: Vec<String> = [&f.duck, &f.click]
        .iter()
        .map(|a| match ask(&a.ask(PROJECT, NOW_MS), &q) {
            Err(AnalyticsError::InvalidQuery { field, .. }) => field,
            other => panic!("expected a refusal, got {other:?}"),
        })
        .collect();
    assert_eq!(fields[0], fields[1]);
    fields[0].clone()
}

#[test]
fn unknown_cohorts_and_misused_cohort_filters_are_refused() {
    let trend = |filter: Value| {
        both_refuse::<trends::TrendQuery, _>(
            json!({"series": [{"event": "$pageview"}], "filters": [filter]}),
            trends::trend,
        )
    };
    assert_eq!(trend(json!({"field": "cohort", "op": "eq", "value": 99})), "filters[0].value");
    assert_eq!(trend(json!({"field": "cohort", "op": "eq", "value": [PRO, 99]})), "filters[0].value");
    assert_eq!(trend(json!({"field": "cohort", "op": "gt", "value": PRO})), "filters[0].op");
    assert_eq!(trend(json!({"field": "cohort", "op": "eq", "value": "1; DROP TABLE events"})), "filters[0].value");
    // Another project's cohort is not this project's.
    let f = &*FIXTURE;
    let q: trends::TrendQuery = serde_json::from_value(
        json!({"series": [{"event": "$pageview"}], "filters": [{"field": "cohort", "op": "eq", "value": PRO}]}),
    )
    .unwrap();
    assert!(matches!(trends::trend(&f.duck.ask(PROJECT + 1, NOW_MS), &q), Err(AnalyticsError::InvalidQuery { .. })));
}

/// An `opened` track of `project`, `n` ms into the corpus's second day,
/// with uuid `n`.
fn opened(project: i64, n: u128, anonymous: Option<&str>, user: Option<&str>) -> Event {
    let at = START_MS + DAY_MS + (n & 0xFFFF) as i64;
    let mut e = Event::new(uuid::Uuid::from_u128(n), project, EventKind::Track, "opened", at);
    e.anonymous_id = anonymous.map(str::to_owned);
    e.user_id = user.map(str::to_owned);
    e
}

/// An identify of `user` (linking `anonymous`, if any) with `traits`.
fn person_update(project: i64, user: &str, anonymous: Option<&str>, traits: Value, at: i64) -> UserUpdate {
    UserUpdate {
        project_id: project,
        user_id: user.into(),
        anonymous_id: anonymous.map(str::to_owned),
        traits: traits.to_string(),
        traits_once: "{}".into(),
        seen_at_ms: at,
    }
}

#[test]
fn a_cohort_follows_its_people_and_its_definition() {
    let f = &*FIXTURE;
    // A project of its own, so the corpus stays as it is.
    let project = PROJECT + 7;
    let t0 = START_MS + DAY_MS;
    let event = |n: u128, anonymous: Option<&str>, user: Option<&str>| opened(project, 0xC0_0000 + n, anonymous, user);
    let identify =
        |user: &str, anonymous: Option<&str>, traits: Value| person_update(project, user, anonymous, traits, t0);
    let events =
        [event(1, Some("anon-a"), None), event(2, Some("anon-a"), Some("ann")), event(3, Some("anon-b"), None)];
    let stores = [f.duck.clone(), f.click.clone()];
    let writers: Vec<Arc<dyn EventStore>> = vec![f.duck_store.clone(), f.click_store.clone()];
    for store in &writers {
        store.write(&events, &[identify("ann", Some("anon-a"), json!({"plan": "pro", "seats": 12}))]).unwrap();
    }
    let id = 5;
    f.book
        .save(
            project,
            id,
            cohort(json!({"name": "Big", "filters": [{"field": "traits.seats", "op": "gte", "value": 10}]})),
        )
        .unwrap();
    let opened = |a: &Analytics| -> (u64, Value) {
        let q: trends::TrendQuery = serde_json::from_value(json!({
            "date_from": "2024-03-18T00:00:00Z", "date_to": "2024-04-17T00:00:00Z",
            "series": [{"event": "opened"}], "filters": [{"field": "cohort", "op": "eq", "value": id}]}))
        .unwrap();
        let got = serde_json::to_value(trends::trend(&a.ask(project, NOW_MS), &q).unwrap()).unwrap();
        (a.cohort_size(project, id).unwrap(), got["series"][0]["aggregate"].clone())
    };
    for a in &stores {
        // Ann's own event and the one she made before identifying.
        assert_eq!(opened(a), (1, json!(2)));
    }
    // Bob identifies anon-b with enough seats: he joins at the next question.
    for store in &writers {
        store.write(&[], &[identify("bob", Some("anon-b"), json!({"seats": 40}))]).unwrap();
    }
    for a in &stores {
        assert_eq!(opened(a), (2, json!(3)));
    }
    // Ann shrinks: she leaves.
    for store in &writers {
        store.write(&[], &[identify("ann", None, json!({"seats": 2}))]).unwrap();
    }
    for a in &stores {
        assert_eq!(opened(a), (1, json!(1)));
    }
    // An edited definition applies at once.
    f.book
        .save(
            project,
            id,
            cohort(json!({"name": "Pro", "filters": [{"field": "traits.plan", "op": "eq", "value": "pro"}]})),
        )
        .unwrap();
    for a in &stores {
        assert_eq!(opened(a), (1, json!(2)));
    }
    // Her device is given, after the link, a trait she does not have: it
    // is hers, as PostHog applies it to the person; she stays the member.
    for store in &writers {
        store.write(&[], &[identify("anon-a", None, json!({"plan": "pro", "screen": "tablet"}))]).unwrap();
        assert_eq!(store.user(project, "ann").unwrap().unwrap().traits["screen"], "tablet");
    }
    for a in &stores {
        assert_eq!(opened(a), (1, json!(2)));
    }
    // Erasing a person takes them out of the cohort, with the people
    // linked to them, from the stored members too.
    for store in &writers {
        erase(store.as_ref(), project, "ann");
    }
    let members = Select {
        sql: "SELECT count() FROM cohort_members WHERE project_id = ? AND user_id IN ('ann', 'anon-a')".into(),
        params: vec![Param::Int(project)],
        columns: vec![ColumnKind::Int],
    };
    for (a, store) in stores.iter().zip(&writers) {
        assert_eq!(opened(a), (0, json!(0)));
        assert_eq!(store.select(&members).unwrap(), vec![vec![Cell::Int(0)]], "{:?}", store.dialect());
        a.forget_cohort(project, id).unwrap();
    }
}

#[test]
fn a_cohort_holds_the_events_whose_person_is_a_member() {
    let f = &*FIXTURE;
    let project = PROJECT + 10;
    let t0 = START_MS + DAY_MS;
    let event = |n: u128, anonymous: Option<&str>, user: Option<&str>| opened(project, 0xC0_4000 + n, anonymous, user);
    let update =
        |user: &str, anonymous: Option<&str>, traits: Value| person_update(project, user, anonymous, traits, t0);
    // vic, then an alias of u-old to vic; u-old later gets a trait, which
    // is vic's (as are its events): vic is a member. A visitor given the
    // trait and never identified is a member by its anonymous id.
    let events = [
        event(1, None, Some("vic")),
        event(2, None, Some("u-old")),
        event(3, Some("visitor"), None),
        event(4, Some("visitor"), None),
    ];
    let updates = [
        update("vic", None, json!({"plan": "free"})),
        update("vic", Some("u-old"), json!({})),
        update("u-old", None, json!({"beta": true})),
        update("visitor", None, json!({"beta": true})),
    ];
    for store in [&f.duck_store, &f.click_store] {
        store.write(&events, &[]).unwrap();
        for u in &updates {
            store.write(&[], std::slice::from_ref(u)).unwrap();
        }
    }
    let id = 11;
    f.book
        .save(
            project,
            id,
            cohort(json!({"name": "Beta", "filters": [{"field": "traits.beta", "op": "eq", "value": true}]})),
        )
        .unwrap();
    for a in [&f.duck, &f.click] {
        assert_eq!(a.cohort_size(project, id).unwrap(), 2);
        for (op, people, events) in [("eq", 2, 4), ("neq", 0, 0)] {
            let q: trends::TrendQuery = serde_json::from_value(json!({
                "date_from": "2024-03-18T00:00:00Z", "date_to": "2024-04-17T00:00:00Z",
                "series": [{"event": "opened", "math": "unique_users"}, {"event": "opened"}],
                "filters": [{"field": "cohort", "op": op, "value": id}]}))
            .unwrap();
            let got = serde_json::to_value(trends::trend(&a.ask(project, NOW_MS), &q).unwrap()).unwrap();
            let totals = (&got["series"][0]["aggregate"], &got["series"][1]["aggregate"]);
            // In: the visitor's two events and vic's, u-old's among them.
            assert_eq!(totals, (&json!(people), &json!(events)), "cohort {op}: {got}");
        }
        a.forget_cohort(project, id).unwrap();
    }
}

#[test]
fn a_funnel_takes_events_at_the_same_ms_in_step_order() {
    let f = &*FIXTURE;
    // A project of its own, so the corpus stays as it is.
    let project = PROJECT + 8;
    let t0 = START_MS + DAY_MS;
    // Each person's events share one ms; uuids sort against step order.
    let event = |n: u128, person: &str, name: &str, plan: &str| {
        let mut e = Event::new(uuid::Uuid::from_u128(0xF0_0000 - n), project, EventKind::Track, name, t0);
        e.user_id = Some(person.to_owned());
        e.properties = json!({"plan": plan}).to_string();
        e
    };
    let events = [
        event(1, "ann", "started", "free"),
        event(2, "ann", "completed", "free"),
        event(3, "bob", "started", "pro"),
        event(4, "bob", "opened", "pro"),
        event(5, "bob", "completed", "pro"),
        // Two first steps at one ms, ordered by value: the chain goes on
        // from the later one, the larger value.
        event(6, "cat", "started", "pro"),
        event(7, "cat", "started", "free"),
        event(8, "cat", "completed", "free"),
    ];
    for store in [&f.duck_store, &f.click_store] {
        store.write(&events, &[]).unwrap();
    }
    let ask = |order: &str| {
        let q: funnels::FunnelQuery = serde_json::from_value(json!({
            "date_from": "2024-03-18T00:00:00Z", "date_to": "2024-04-17T00:00:00Z", "order": order,
            "steps": [{"event": "started"}, {"event": "completed"}], "breakdown": "properties.plan"}))
        .unwrap();
        let answers: Vec<Value> = [&f.duck, &f.click]
            .iter()
            .map(|a| serde_json::to_value(funnels::funnel(&a.ask(project, NOW_MS), &q).unwrap()).unwrap())
            .collect();
        assert_eq!(answers[0], answers[1], "DuckDB and ClickHouse disagree");
        answers[0].clone()
    };
    let counts = |got: &Value| -> Vec<(Value, u64, u64)> {
        got["breakdown"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                (
                    g["breakdown_value"].clone(),
                    g["steps"][0]["count"].as_u64().unwrap(),
                    g["steps"][1]["count"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    // Loose: everyone converts; Cat's chain starts at her "pro" event.
    let loose = ask("loose");
    assert_eq!((loose["steps"][0]["count"].clone(), loose["steps"][1]["count"].clone()), (json!(3), json!(3)));
    assert_eq!(counts(&loose), vec![(json!("pro"), 2, 2), (json!("free"), 1, 1)]);
    // Strict: Bob's other event at the same ms comes after his steps.
    let strict = ask("strict");
    assert_eq!(strict["steps"][1]["count"], json!(3));
}

#[test]
fn folded_sessions_answer_as_the_page_views_they_fold() {
    // Unfiltered, DuckDB reads the overview and the entry and exit pages from
    // session parts folded at write time and compacted later; a filter every
    // page view passes makes it read the views one by one. Both must agree
    // with each other, with ClickHouse and with the events: for windows cut
    // mid-hour, before and after compaction, after retried writes, links
    // made after compaction, views added to compacted sessions and a person
    // erased.
    let f = &*FIXTURE;
    let project = PROJECT + 9;
    let mut c = corpus::generate(11, 300, corpus::BUSY);
    c.events.iter_mut().for_each(|e| e.project_id = project);
    c.users.iter_mut().for_each(|u| u.project_id = project);
    // A DuckDB store of its own, to compact at chosen points.
    let dir = tempfile::tempdir().unwrap();
    let duck_store: Arc<dyn EventStore> =
        Arc::new(DuckDbStore::open(&dir.path().join("events.duckdb"), &DuckDbOptions::default()).unwrap());
    let duck = Analytics::new(duck_store.clone(), f.book.clone());
    let writers = [duck_store.clone(), f.click_store.clone()];
    let (early, late) = c.users.split_at(c.users.len() / 2);
    for store in &writers {
        for chunk in c.events.chunks(700) {
            store.write(chunk, &[]).unwrap();
        }
        // A retried chunk is stored once and folded once.
        assert_eq!(store.write(&c.events[1_000..1_700], &[]).unwrap().inserted, 0);
        store.write(&[], early).unwrap();
    }
    let windows = [
        json!({"date_from": "2024-03-18T00:00:00Z", "date_to": "2024-04-17T00:00:00Z"}),
        json!({"date_from": "2024-03-20T05:17:00Z", "date_to": "2024-04-02T13:45:30.250Z"}),
        json!({"date_from": "2024-03-19", "date_to": "2024-03-29", "timezone": "Asia/Kolkata"}),
        json!({"date_from": "2024-03-21T05:10:00Z", "date_to": "2024-03-21T05:50:00Z"}),
    ];
    let ask = |a: &Analytics, window: &Value, filtered: bool| -> Value {
        let mut q = window.clone();
        q["sections"] = json!(["overview", "entry_pages", "exit_pages"]);
        q["limit"] = json!(100);
        if filtered {
            q["filters"] = json!([{"field": "name", "op": "is_set"}]);
        }
        let q: web::WebQuery = serde_json::from_value(q).unwrap();
        serde_json::to_value(web::web(&a.ask(project, NOW_MS), &q).unwrap()).unwrap()
    };
    // `links`: the identify links written so far (the first one wins).
    let check = |views: &[Event], links: &[UserUpdate], erased: Option<&str>, stage: &str| {
        let mut linked: HashMap<&str, &str> = HashMap::new();
        for u in links {
            if let Some(anonymous) = u.anonymous_id.as_deref() {
                linked.entry(anonymous).or_insert(&u.user_id);
            }
        }
        let person = |e: &Event| -> String {
            let id = e.user_id.as_deref().or(e.anonymous_id.as_deref()).unwrap();
            linked.get(id).copied().unwrap_or(id).to_owned()
        };
        let views: Vec<&Event> =
            views.iter().filter(|e| e.name == "$pageview" && erased.is_none_or(|p| c.person(e) != p)).collect();
        for window in &windows {
            let folded = ask(&duck, window, false);
            assert_eq!(folded, ask(&duck, window, true), "DuckDB folded and by view, {stage}, {window}");
            assert_eq!(folded, ask(&f.click, window, false), "DuckDB and ClickHouse, {stage}, {window}");
            let tz: Tz = window.get("timezone").and_then(Value::as_str).unwrap_or("UTC").parse().unwrap();
            let bound = |k: &str| {
                let text = window[k].as_str().unwrap();
                DateTime::parse_from_rfc3339(text)
                    .map(|t| t.timestamp_millis())
                    .unwrap_or_else(|_| midnight(tz, NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()))
            };
            let (from, to) = (bound("date_from"), bound("date_to"));
            let to = if window["date_to"].as_str().unwrap().len() == 10 { to + DAY_MS } else { to };
            let inside = views.iter().filter(|e| in_range(e, from, to));
            let sessions: HashSet<&str> = inside.clone().filter_map(|e| e.session_id.as_deref()).collect();
            let people: HashSet<String> = inside.clone().map(|e| person(e)).collect();
            assert_eq!(
                (&folded["overview"]["pageviews"], &folded["overview"]["sessions"], &folded["overview"]["visitors"]),
                (&json!(inside.count()), &json!(sessions.len()), &json!(people.len())),
                "{stage}, {window}"
            );
        }
    };
    check(&c.events, early, None, "as written");
    duck_store.settle().unwrap();
    check(&c.events, early, None, "compacted");
    // Links made after compaction stitch the parts compacted before them.
    for store in &writers {
        store.write(&[], late).unwrap();
    }
    check(&c.events, &c.users, None, "links after compaction");
    // A view added to a session that was compacted whole.
    let mut more = c.events.iter().find(|e| e.name == "$pageview" && e.session_id.is_some()).unwrap().clone();
    more.uuid = uuid::Uuid::from_u128(0xF0_1DED);
    more.timestamp_ms += 61_000;
    more.path = Some("/later".into());
    for store in &writers {
        store.write(std::slice::from_ref(&more), &[]).unwrap();
    }
    let mut events = c.events.clone();
    events.push(more);
    check(&events, &c.users, None, "a view after compaction");
    duck_store.settle().unwrap();
    check(&events, &c.users, None, "compacted again");
    let erased = c.events.iter().find(|e| e.user_id.is_some() && e.anonymous_id.is_some()).unwrap();
    let erased = erased.user_id.clone().unwrap();
    for store in &writers {
        assert!(erase(store.as_ref(), project, &erased) > 0);
    }
    check(&events, &c.users, Some(&erased), "a person erased");
    duck_store.settle().unwrap();
    check(&events, &c.users, Some(&erased), "erased and compacted");
}

#[test]
fn an_alias_of_an_identified_user_and_an_erasure_agree_in_folded_sessions() {
    // Three visitors' page views, compacted while anonymous; then x and y
    // are identified as ann, whose id an alias links on to cat, and z as
    // bea, who is erased before the links reach the parts. x and y are cat:
    // one person, until cat is erased too.
    let f = &*FIXTURE;
    let project = PROJECT + 11;
    let dir = tempfile::tempdir().unwrap();
    let duck_store: Arc<dyn EventStore> =
        Arc::new(DuckDbStore::open(&dir.path().join("events.duckdb"), &DuckDbOptions::default()).unwrap());
    let duck = Analytics::new(duck_store.clone(), f.book.clone());
    let at = ms("2024-03-20T10:00:00Z");
    let view = |n: u128, anonymous: &str| {
        let mut e =
            Event::new(uuid::Uuid::from_u128(0xE2_0000 + n), project, EventKind::Page, "$pageview", at + n as i64);
        e.anonymous_id = Some(anonymous.into());
        e.session_id = Some(format!("s-{anonymous}"));
        e.path = Some("/".into());
        e
    };
    let link = |user: &str, from: &str| person_update(project, user, Some(from), json!({}), at + 10);
    let writers = [duck_store.clone(), f.click_store.clone()];
    for store in &writers {
        store.write(&[view(1, "x"), view(2, "y"), view(3, "z"), view(4, "w")], &[]).unwrap();
    }
    duck_store.settle().unwrap();
    let visitors = |a: &Analytics, filtered: bool| {
        let mut q = json!({"date_from": "2024-03-20T00:00:00Z", "date_to": "2024-03-21T00:00:00Z",
                           "sections": ["overview"]});
        if filtered {
            q["filters"] = json!([{"field": "name", "op": "is_set"}]);
        }
        let q: web::WebQuery = serde_json::from_value(q).unwrap();
        serde_json::to_value(web::web(&a.ask(project, NOW_MS), &q).unwrap()).unwrap()["overview"]["visitors"].clone()
    };
    let all = |stage: &str| {
        let got = [visitors(&duck, false), visitors(&duck, true), visitors(&f.click, false)];
        assert!(got.iter().all(|v| *v == got[0]), "{stage}: folded, by view, ClickHouse: {got:?}");
        got[0].as_u64().unwrap()
    };
    // The alias in a batch of its own, after the identifies: stored links
    // to ann move to cat. w is identified as dan, aliased to cat in the
    // same batch. A link of cat back to x would make a loop: not made.
    for store in &writers {
        store.write(&[], &[link("ann", "x"), link("ann", "y"), link("bea", "z")]).unwrap();
        store.write(&[], &[link("cat", "ann"), link("dan", "w"), link("cat", "dan")]).unwrap();
        store.write(&[], &[link("x", "cat")]).unwrap();
        erase(store.as_ref(), project, "bea");
    }
    assert_eq!(all("links waiting"), 1);
    duck_store.settle().unwrap();
    assert_eq!(all("links applied"), 1);
    for store in &writers {
        assert_eq!(store.identity(project, "w").unwrap().as_deref(), Some("cat"));
        assert_eq!(store.identity(project, "cat").unwrap(), None);
        assert_eq!(erase(store.as_ref(), project, "cat"), 3);
    }
    assert_eq!(all("cat erased"), 0);
    duck_store.settle().unwrap();
    assert_eq!(all("cat erased, compacted"), 0);
    // x is no one's any more, on either store: a new view is its own.
    for store in &writers {
        store.write(&[view(5, "x")], &[]).unwrap();
        assert_eq!(store.identity(project, "x").unwrap(), None);
    }
    assert_eq!(all("x again"), 1);
}
