//! `leanloop bench insights`: loads a generated corpus (default 10M events,
//! 1M people, 30 days) into DuckDB and, when given, ClickHouse, then times
//! each insight through the HTTP API beside the same SQL run raw on the
//! store in the same run. The raw figure is the time the store spends on the
//! exact statements the insight issued (recorded on a first run), so the
//! ratio is what the API, the query compiler and the in-process steps add.

use super::corpus::{Generator, LIGHT, START_MS};
use crate::{App, Config, Role};
use anyhow::{Context, Result};
use leanloop_analytics::cohorts::MemoryBook;
use leanloop_analytics::{funnels, paths, retention, trends, web, Analytics, AnalyticsError};
use leanloop_core::{Event, UserUpdate};
use leanloop_store::clickhouse::ClickHouseOptions;
use leanloop_store::{EventFilter, EventStore, Rows, Select, StoreError, UserRecord, WriteOutcome};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Options {
    pub events: u64,
    pub people: usize,
    pub runs: usize,
    pub clickhouse: Option<String>,
    pub duckdb_memory: String,
    pub keep: Option<std::path::PathBuf>,
    pub show_sql: bool,
    /// Time only these queries (all when empty).
    pub only: Vec<String>,
}

/// p50 targets on DuckDB (ms) and the API's allowed overhead.
const TARGETS_MS: &[(&str, f64)] =
    &[("trend", 150.0), ("funnel", 600.0), ("retention", 600.0), ("web-overview", 300.0)];
const API_OVERHEAD: f64 = 0.15;

/// The questions timed, as the API takes them.
fn questions() -> Vec<(&'static str, Value)> {
    let from = START_MS;
    let to = START_MS + 30 * 86_400_000;
    let at = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().to_rfc3339();
    let range = |mut q: Value| {
        q["date_from"] = json!(at(from));
        q["date_to"] = json!(at(to));
        q
    };
    vec![
        ("trend", range(json!({"interval": "day", "series": [{"event": "$pageview"}]}))),
        (
            "funnel",
            range(json!({"window_seconds": 86_400, "steps": [
                {"event": "$pageview", "filters": [{"field": "path", "op": "eq", "value": "/pricing"}]},
                {"event": "signup_started"}, {"event": "signup_completed"}]})),
        ),
        (
            "retention",
            json!({"date_from": at(from), "cohort_event": {"event": "signup_completed"}, "return_event": {"event": "$pageview"},
                   "period": "week", "periods": 8}),
        ),
        ("web-overview", range(json!({"sections": ["overview"]}))),
        ("web-every-section", range(json!({}))),
        ("paths", range(json!({"start": "/pricing", "kind": "pages"}))),
        (
            "trend-breakdown",
            range(json!({"interval": "day", "series": [{"math": "unique_users"}], "breakdown": "browser"})),
        ),
    ]
}

/// Answers `kind` with `analytics` (the same dispatch the routes make).
fn answer(analytics: &Analytics, project: i64, kind: &str, q: &Value) -> Result<(), AnalyticsError> {
    let q = q.clone();
    let parse = |e: serde_json::Error| AnalyticsError::InvalidQuery { field: "query".into(), message: e.to_string() };
    match kind {
        "trend" | "trend-breakdown" => {
            analytics.trend(project, &serde_json::from_value::<trends::TrendQuery>(q).map_err(parse)?).map(drop)
        }
        "funnel" => {
            analytics.funnel(project, &serde_json::from_value::<funnels::FunnelQuery>(q).map_err(parse)?).map(drop)
        }
        "retention" => analytics
            .retention(project, &serde_json::from_value::<retention::RetentionQuery>(q).map_err(parse)?)
            .map(drop),
        "web-overview" | "web-every-section" => {
            analytics.web(project, &serde_json::from_value::<web::WebQuery>(q).map_err(parse)?).map(drop)
        }
        "paths" => analytics.paths(project, &serde_json::from_value::<paths::PathsQuery>(q).map_err(parse)?).map(drop),
        _ => Ok(()),
    }
}

/// The route an insight is asked on.
fn route(kind: &str) -> &str {
    kind.split('-').next().unwrap_or(kind)
}

pub async fn run(o: Options) -> Result<()> {
    println!(
        "leanloop bench insights: {} people, about {} events over 30 days, {} runs per query (p50 shown)",
        o.people, o.events, o.runs
    );
    let known: Vec<&str> = questions().iter().map(|(k, _)| *k).collect();
    if let Some(unknown) = o.only.iter().find(|k| !known.contains(&k.as_str())) {
        anyhow::bail!("--only {unknown}: not a query of this bench (one of {})", known.join(", "));
    }
    let temporary = tempfile::tempdir()?;
    let dir = o.keep.as_deref().unwrap_or(temporary.path());
    let mut stores = vec![("duckdb", None)];
    if let Some(url) = &o.clickhouse {
        stores.push(("clickhouse", Some(url.clone())));
    }
    let mut missed = Vec::new();
    for (label, url) in stores {
        // A kept DuckDB store from an earlier run is asked again, not reloaded.
        let reuse = o.keep.is_some() && url.is_none() && dir.join(label).exists();
        let mut config = Config::for_tests(&dir.join(label));
        config.clickhouse = url.map(ClickHouseOptions::new);
        // Loading and asking both get the limit asked for: the figures are
        // the questions', and loads stay comparable between runs.
        config.duckdb.memory_limit = o.duckdb_memory.clone();
        config.duckdb.ingest_memory_limit = o.duckdb_memory.clone();
        let app = App::build(config, Role::Server).await?;
        let project = app.default_project().context("the server has a project")?.clone();
        let store = app.store().clone();
        let (people, events) = (o.people, o.events);
        let project_id = project.id;
        let started = Instant::now();
        if reuse {
            println!("\n{label}: asking the store kept in {}", dir.display());
        } else {
            let loaded =
                tokio::task::spawn_blocking(move || load(store.as_ref(), project_id, people, events)).await??;
            println!("\n{label}: loaded {loaded} events in {:.1}s", started.elapsed().as_secs_f64());
        }
        // Asked as the store stands minutes after writes stop (DuckDB has
        // compacted its session parts by then), not in the seconds between.
        let started = Instant::now();
        let settling = app.store().clone();
        tokio::task::spawn_blocking(move || settling.settle()).await??;
        println!("{label}: settled in {:.1}s", started.elapsed().as_secs_f64());

        let base = format!("http://{}", app.address());
        let store = app.store().clone();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let serving = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        let client = reqwest::Client::new();
        println!("{:<18} {:>12} {:>12} {:>10}", "query", "API p50 ms", "raw p50 ms", "overhead");
        for (kind, q) in questions().into_iter().filter(|(k, _)| o.only.is_empty() || o.only.iter().any(|o| o == k)) {
            // Record the statements this insight issues, then time them raw.
            let recorder = Arc::new(Recorder { inner: store.clone(), log: Mutex::new(Vec::new()) });
            let analytics = Analytics::new(recorder.clone(), Arc::new(MemoryBook::default()));
            let q2 = q.clone();
            tokio::task::spawn_blocking(move || answer(&analytics, project_id, kind, &q2)).await??;
            let statements = std::mem::take(&mut *recorder.log.lock().unwrap_or_else(|p| p.into_inner()));
            if o.show_sql {
                for (s, _) in &statements {
                    println!("-- {kind} on {label}, parameters {:?}\n{};", s.params, s.sql);
                }
            }
            let mut api = Vec::new();
            let mut raw = Vec::new();
            let mut failed = None;
            for _ in 0..o.runs.max(1) {
                let url = format!("{base}/api/v1/projects/{project_id}/insights/{}", route(kind));
                let started = Instant::now();
                let response = client.post(&url).bearer_auth(&project.read_key).json(&q).send().await?;
                let status = response.status();
                let body = response.bytes().await?;
                if !status.is_success() {
                    // A 503 is the server's request timeout (no body) or a
                    // query refused for want of memory (the body says so).
                    let said = String::from_utf8_lossy(&body);
                    failed = Some(format!("{status} after {:.1}s {said}", started.elapsed().as_secs_f64()));
                    break;
                }
                api.push(started.elapsed());
                let (store, statements) = (store.clone(), statements.clone());
                raw.push(
                    tokio::task::spawn_blocking(move || -> Result<Duration, StoreError> {
                        let started = Instant::now();
                        for (s, by_column) in &statements {
                            match by_column {
                                true => drop(store.select_columns(s)?),
                                false => drop(store.select(s)?),
                            }
                        }
                        Ok(started.elapsed())
                    })
                    .await??,
                );
            }
            if let Some(why) = failed {
                println!("{kind:<18} failed: {why}");
                missed.push(format!("{kind} on {label}: {why}"));
                continue;
            }
            let (api_ms, raw_ms) = (p50_ms(api), p50_ms(raw));
            let overhead = api_ms / raw_ms - 1.0;
            println!("{kind:<18} {api_ms:>12.1} {raw_ms:>12.1} {:>9.1}%", overhead * 100.0);
            if label == "duckdb" {
                if let Some((_, target)) = TARGETS_MS.iter().find(|(k, _)| *k == kind) {
                    if api_ms > *target {
                        missed.push(format!("{kind} on DuckDB: {api_ms:.0} ms > {target:.0} ms"));
                    }
                }
            }
            if overhead > API_OVERHEAD {
                missed.push(format!(
                    "{kind} on {label}: API overhead {:.0}% > {:.0}%",
                    overhead * 100.0,
                    API_OVERHEAD * 100.0
                ));
            }
        }
        shutdown.cancel();
        serving.await??;
    }
    println!();
    if missed.is_empty() {
        println!("met     every target (DuckDB p50: trend <= 150 ms, funnel <= 600 ms, retention <= 600 ms, web overview <= 300 ms; API overhead <= 15%)");
    }
    for m in missed {
        println!("MISSED  {m}");
    }
    Ok(())
}

fn p50_ms(mut times: Vec<Duration>) -> f64 {
    times.sort();
    times.get(times.len().div_ceil(2).saturating_sub(1)).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Generates people until about `events` events, writing in batches.
fn load(store: &dyn EventStore, project_id: i64, people: usize, events: u64) -> Result<u64> {
    let mut generator = Generator::new(11, LIGHT);
    let (mut batch, mut users): (Vec<Event>, Vec<UserUpdate>) = (Vec::new(), Vec::new());
    let mut written = 0u64;
    for _ in 0..people {
        if written + batch.len() as u64 >= events {
            break;
        }
        let traffic = generator.person();
        batch.extend(traffic.events.into_iter().map(|mut e| {
            e.project_id = project_id;
            e
        }));
        users.extend(traffic.user.map(|mut u| {
            u.project_id = project_id;
            u
        }));
        if batch.len() >= 50_000 {
            written += store.write(&batch, &users)?.inserted as u64;
            batch.clear();
            users.clear();
        }
    }
    written += store.write(&batch, &users)?.inserted as u64;
    Ok(written)
}

/// Passes everything to the real store and keeps the statements it ran,
/// each with whether it was read a column at a time.
struct Recorder {
    inner: Arc<dyn EventStore>,
    log: Mutex<Vec<(Select, bool)>>,
}

impl EventStore for Recorder {
    fn write(&self, events: &[Event], users: &[UserUpdate]) -> Result<WriteOutcome, StoreError> {
        self.inner.write(events, users)
    }
    fn count(&self, filter: &EventFilter) -> Result<u64, StoreError> {
        self.inner.count(filter)
    }
    fn recent(&self, filter: &EventFilter, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.inner.recent(filter, limit)
    }
    fn user(&self, project_id: i64, user_id: &str) -> Result<Option<UserRecord>, StoreError> {
        self.inner.user(project_id, user_id)
    }
    fn identity(&self, project_id: i64, anonymous_id: &str) -> Result<Option<String>, StoreError> {
        self.inner.identity(project_id, anonymous_id)
    }
    fn settle(&self) -> Result<(), StoreError> {
        self.inner.settle()
    }
    fn delete_person(&self, project_id: i64, user_id: &str, wait_until: std::time::Instant) -> Result<u64, StoreError> {
        self.inner.delete_person(project_id, user_id, wait_until)
    }
    fn dialect(&self) -> leanloop_store::Dialect {
        self.inner.dialect()
    }
    fn select(&self, query: &Select) -> Result<Rows, StoreError> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).push((query.clone(), false));
        self.inner.select(query)
    }
    fn select_columns(&self, query: &Select) -> Result<Vec<leanloop_store::Column>, StoreError> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).push((query.clone(), true));
        self.inner.select_columns(query)
    }
    fn write_cohort(
        &self,
        project_id: i64,
        cohort_id: i64,
        version: i64,
        user_ids: &[String],
    ) -> Result<(), StoreError> {
        self.inner.write_cohort(project_id, cohort_id, version, user_ids)
    }
    fn drop_cohort_versions(&self, project_id: i64, cohort_id: i64, below: i64) -> Result<(), StoreError> {
        self.inner.drop_cohort_versions(project_id, cohort_id, below)
    }
    fn people_revision(&self, project_id: i64) -> Result<u64, StoreError> {
        self.inner.people_revision(project_id)
    }
}
