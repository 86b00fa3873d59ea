//! `leanloop bench clickhouse`: events/s into ClickHouse through HTTP batch
//! ingest with the write-ahead log on and off, beside ClickHouse's own rate
//! for the same rows loaded by `clickhouse-client ... FORMAT JSONEachRow`,
//! all in one run.

use super::ceiling::JsonRows;
use super::load::{self, Shape};
use super::server::Child;
use anyhow::{ensure, Context, Result};
use leanloop_store::clickhouse::{ClickHouseOptions, ClickHouseStore};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const EVENTS_PER_SEC: f64 = 100_000.0;
const SHARE_OF_CEILING: f64 = 0.5;
const LOG_ON_SHARE_OF_OFF: f64 = 0.7;

pub struct Options {
    pub http: String,
    pub native_port: u16,
    pub client: String,
    pub duration: Duration,
    pub connections: usize,
    pub batch: usize,
}

struct Run {
    stored_rate: f64,
    acked_rate: f64,
    p50_ms: f64,
    p99_ms: f64,
}

pub async fn run(o: Options) -> Result<()> {
    println!(
        "leanloop bench clickhouse: {} connections, {}s per phase, {} events per batch, server {}",
        o.connections,
        o.duration.as_secs(),
        o.batch,
        o.http
    );
    let tag = uuid::Uuid::new_v4().simple().to_string();
    // ClickHouse's own load before and after both phases: the machine's pace
    // drifts, and the mean of both brackets the phases between them.
    let json = JsonRows::write(as_clickhouse_row)?;
    let before = ceiling(&o, &format!("bench_ceiling_before_{}", &tag[..8]), &json).await?;
    let on = ingest(&o, &format!("bench_log_on_{}", &tag[..8]), true).await?;
    let off = ingest(&o, &format!("bench_log_off_{}", &tag[..8]), false).await?;
    let after = ceiling(&o, &format!("bench_ceiling_after_{}", &tag[..8]), &json).await?;
    let ceiling = (before + after) / 2.0;

    let table: [(&str, f64); 12] = [
        ("log on: events/s acknowledged", on.acked_rate),
        ("log on: events/s stored in ClickHouse", on.stored_rate),
        ("log on: p50 latency (ms)", on.p50_ms),
        ("log on: p99 latency (ms)", on.p99_ms),
        ("log off: events/s stored in ClickHouse", off.stored_rate),
        ("log off: p50 latency (ms)", off.p50_ms),
        ("ceiling: clickhouse-client JSONEachRow, rows/s (mean)", ceiling),
        ("  before log on", before),
        ("  after log off", after),
        ("log on / ceiling (%)", on.stored_rate / ceiling * 100.0),
        ("log off / ceiling (%)", off.stored_rate / ceiling * 100.0),
        ("log on / log off (%)", on.stored_rate / off.stored_rate * 100.0),
    ];
    println!();
    for (label, value) in table {
        let precision = if value.abs() < 100.0 && value.fract() != 0.0 { 2 } else { 0 };
        println!("{label:<52} {value:>14.precision$}");
    }
    println!();
    for (what, ok) in [
        ("log on >= 100,000 events/s stored", on.stored_rate >= EVENTS_PER_SEC),
        ("log on >= 50% of clickhouse-client's load", on.stored_rate / ceiling >= SHARE_OF_CEILING),
        ("log on >= 70% of log off", on.stored_rate / off.stored_rate >= LOG_ON_SHARE_OF_OFF),
    ] {
        println!("{} {what}", if ok { "met    " } else { "MISSED " });
    }
    Ok(())
}

/// Runs the batch load against a fresh `leanloop serve` on ClickHouse and
/// waits until ClickHouse holds every acknowledged event.
async fn ingest(o: &Options, database: &str, log: bool) -> Result<Run> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("bench.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nclickhouse_url = \"{}/?database={database}\"\n[collector]\nlog = {log}\n",
            o.http.trim_end_matches('/')
        ),
    )?;
    let server = Child::spawn(
        Command::new(std::env::current_exe()?)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path())
            .env("RUST_LOG", std::env::var("LEANLOOP_BENCH_LOG").unwrap_or_else(|_| "warn".into())),
    )?;
    let outcome = load::run(&server, Shape::Batch(o.batch), o.connections, o.duration).await?;
    let drain = server.wait_stored(outcome.events, Duration::from_secs(300)).await?;
    drop(server);
    drop_database(&o.http, database).await;
    Ok(Run {
        stored_rate: outcome.events as f64 / (outcome.elapsed + drain).as_secs_f64(),
        acked_rate: outcome.events as f64 / outcome.elapsed.as_secs_f64(),
        p50_ms: outcome.p50_ms(),
        p99_ms: outcome.p99_ms(),
    })
}

/// ClickHouse's own rate into a fresh database, dropped afterwards.
async fn ceiling(o: &Options, database: &str, json: &JsonRows) -> Result<f64> {
    let rate = client_load(o, database, json);
    drop_database(&o.http, database).await;
    rate
}

/// A sample event as ClickHouse's `events` table holds it.
fn as_clickhouse_row(mut row: serde_json::Map<String, serde_json::Value>) -> serde_json::Value {
    let ms = row.remove("timestamp").and_then(|v| v.as_i64()).unwrap_or(0);
    let received = row.remove("received_at").unwrap_or_default();
    let props: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(row["properties"].as_str().unwrap_or("{}")).unwrap_or_default();
    row.insert("timestamp".into(), (ms / 1000).into());
    row.insert("timestamp_ms".into(), ms.into());
    row.insert("received_at_ms".into(), received);
    row.insert("timestamp_clamped".into(), 0.into());
    row.insert("prop_keys".into(), props.keys().cloned().collect::<Vec<_>>().into());
    // As the store keeps them: strings as themselves, the rest as JSON.
    let values: Vec<String> = props.values().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned)).collect();
    row.insert("prop_values".into(), values.into());
    serde_json::Value::Object(row)
}

/// ClickHouse's own rate: the same rows through `clickhouse-client`.
fn client_load(o: &Options, database: &str, json: &JsonRows) -> Result<f64> {
    let store_url = format!("{}/?database={database}", o.http.trim_end_matches('/'));
    drop(ClickHouseStore::open(&ClickHouseOptions::new(store_url))?);
    let rows = json.rows;
    let input = std::fs::File::open(&json.path)?;
    let started = Instant::now();
    let status = Command::new(&o.client)
        // Blocks of the size Leanloop's own inserts use (up to 50,000 rows),
        // not the default million, which needs gigabytes to parse.
        .args(["--host", "127.0.0.1", "--port", &o.native_port.to_string(), "--max_insert_block_size", "50000"])
        .arg("--query")
        .arg(format!("INSERT INTO {database}.events FORMAT JSONEachRow"))
        .stdin(input)
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("running {}", o.client))?;
    let elapsed = started.elapsed();
    ensure!(status.success(), "{} failed: {status}", o.client);
    Ok(rows as f64 / elapsed.as_secs_f64())
}

async fn drop_database(http: &str, database: &str) {
    let sql = format!("DROP DATABASE IF EXISTS {database}");
    if let Err(e) = reqwest::Client::new().post(http).body(sql).send().await {
        eprintln!("could not drop {database}: {e}");
    }
}
