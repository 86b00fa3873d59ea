//! `leanloop bench ...`: benchmarks that drive a real server over loopback and
//! print figures beside ceilings measured in the same run, as ratios, since
//! absolute numbers on a shared machine are noisy.

mod ceiling;
mod clickhouse;
pub mod corpus;
mod insights;
mod load;
mod pipeline;
mod server;

pub use ceiling::bare_server;

use anyhow::Result;
use clap::Subcommand;
use std::time::Duration;

/// The shape of the HTTP load every ingest benchmark drives.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Seconds each load phase runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Events per `/v1/batch` request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
}

impl LoadArgs {
    fn duration(&self) -> Duration {
        Duration::from_secs(self.seconds.max(1))
    }
    fn connections(&self) -> usize {
        self.connections.max(1)
    }
    fn batch(&self) -> usize {
        self.batch.clamp(1, 1000)
    }
}

#[derive(Subcommand, Debug, Clone)]
pub enum BenchCommand {
    /// Ingest throughput and latency through HTTP, with DuckDB's own JSON load
    /// and a bare HTTP endpoint as ceilings.
    Ingest {
        #[command(flatten)]
        load: LoadArgs,
        /// Concurrent keep-alive connections of the single-event phase (and
        /// of the bare endpoint it is compared with): many clients, each
        /// with one event in flight, as browsers send them.
        #[arg(long, default_value_t = 64)]
        single_connections: usize,
    },
    /// Events/s into ClickHouse through HTTP batch ingest, write-ahead log on
    /// and off, with `clickhouse-client`'s JSONEachRow load as the ceiling.
    Clickhouse {
        /// The server's HTTP address, e.g. http://127.0.0.1:8123
        #[arg(long)]
        clickhouse: String,
        /// The same server's native port, for clickhouse-client.
        #[arg(long, default_value_t = 9000)]
        native_port: u16,
        /// The clickhouse-client program.
        #[arg(long, default_value = "clickhouse-client")]
        client: String,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// p50 latency of each insight through the API on a generated corpus,
    /// on DuckDB and (with --clickhouse) ClickHouse, beside the same SQL run
    /// raw on the store.
    Insights {
        /// Stop generating people after about this many events.
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
        #[arg(long, default_value_t = 1_000_000)]
        people: usize,
        /// Timed runs per query (after one recording run).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// A ClickHouse URL such as http://127.0.0.1:8123/?database=bench
        #[arg(long)]
        clickhouse: Option<String>,
        /// DuckDB's memory limit while answering.
        #[arg(long, default_value = "1GB")]
        duckdb_memory: String,
        /// Keep the stores' data directory here instead of a temporary one; a
        /// DuckDB store already kept there is asked again without reloading.
        #[arg(long)]
        keep: Option<std::path::PathBuf>,
        /// Print the statements each insight issues (with their bound
        /// parameters), to run or explain them on the store directly.
        #[arg(long)]
        show_sql: bool,
        /// Time only this query (trend, funnel, retention, web-overview,
        /// web-every-section, paths, trend-breakdown); repeat for several.
        #[arg(long)]
        only: Vec<String>,
    },
    /// Pipeline overhead of a 3-step run and deploy-to-serving time on the
    /// local Docker Engine, beside bare container lifecycles.
    Pipeline {
        /// A local image with busybox's sh, true and httpd.
        #[arg(long, default_value = "leanloop/busybox:latest")]
        base_image: String,
        /// Push built images here (optional; the deploy uses the local image).
        #[arg(long)]
        registry: Option<String>,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
}

pub async fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Ingest { load, single_connections } => {
            ingest(load.duration(), load.connections(), single_connections.max(1), load.batch()).await
        }
        BenchCommand::Clickhouse { clickhouse, native_port, client, load } => {
            clickhouse::run(clickhouse::Options {
                http: clickhouse,
                native_port,
                client,
                duration: load.duration(),
                connections: load.connections(),
                batch: load.batch(),
            })
            .await
        }
        BenchCommand::Insights { events, people, runs, clickhouse, duckdb_memory, keep, show_sql, only } => {
            insights::run(insights::Options { events, people, runs, clickhouse, duckdb_memory, keep, show_sql, only })
                .await
        }
        BenchCommand::Pipeline { base_image, registry, runs } => {
            pipeline::run(pipeline::Options { base_image, registry, runs }).await
        }
    }
}

/// Targets from the ingest issue, checked and printed beside the figures.
const BATCH_EVENTS_PER_SEC: f64 = 150_000.0;
const BATCH_SHARE_OF_DUCKDB: f64 = 0.5;
const SINGLE_SHARE_OF_BARE: f64 = 0.5;
const PEAK_RSS_MB: f64 = 300.0;

async fn ingest(duration: Duration, connections: usize, single_connections: usize, batch: usize) -> Result<()> {
    println!(
        "leanloop bench ingest: {}s per phase; batches of {batch} events from {connections} connections, \
         single events from {single_connections}",
        duration.as_secs()
    );
    let dir = tempfile::tempdir()?;
    let server = server::Child::start(dir.path()).await?;
    let bare_server = ceiling::bare_child()?;
    // DuckDB's own load, before and after the batch phase: the machine's
    // pace drifts, and the mean of both brackets the phase between them.
    let json = ceiling::JsonRows::write(serde_json::Value::Object)?;
    let duckdb_before = ceiling::duckdb_json_load(&json)?;

    // CPU per event, server and load generator apart: wall time alone
    // hides who is busy when both share two cores.
    let me = std::process::id();
    let (server_cpu, client_cpu) = (server.cpu_seconds()?, server::cpu_seconds(me)?);
    let batches = load::run(&server, load::Shape::Batch(batch), connections, duration).await?;
    let stored_after = server.wait_stored(batches.events, Duration::from_secs(120)).await?;
    // The store's work after the events became visible (a checkpoint)
    // counts in the CPU per event, and is over before DuckDB's own load.
    let settled = server.wait_idle("the last batch was stored", Duration::from_secs(120)).await?;
    let per_event = |seconds: f64| seconds * 1e6 / batches.events.max(1) as f64;
    let batch_server_us = per_event(server.cpu_seconds()? - server_cpu);
    let batch_client_us = per_event(server::cpu_seconds(me)? - client_cpu);
    let duckdb_after = ceiling::duckdb_json_load(&json)?;

    // The bare endpoint half before the single events and half after them
    // (once they are stored), bracketing them as DuckDB's load brackets the
    // batches.
    let mut bare = load::run(&bare_server, load::Shape::Single, single_connections, duration / 2).await?;
    let single_cpu = server.cpu_seconds()?;
    let singles = load::run(&server, load::Shape::Single, single_connections, duration).await?;
    server.wait_stored(batches.events + singles.events, Duration::from_secs(120)).await?;
    server.wait_idle("the last single event was stored", Duration::from_secs(120)).await?;
    let single_server_us = (server.cpu_seconds()? - single_cpu) * 1e6 / singles.events.max(1) as f64;
    bare.absorb(load::run(&bare_server, load::Shape::Single, single_connections, duration / 2).await?);
    let peak_rss_mb = server.peak_rss_mb()?;
    drop(server);
    drop(bare_server);
    let duckdb_rate = (duckdb_before + duckdb_after) / 2.0;

    let batch_rate = batches.events as f64 / batches.elapsed.as_secs_f64();
    let stored_rate = batches.events as f64 / (batches.elapsed + stored_after).as_secs_f64();
    let single_rate = singles.requests as f64 / singles.elapsed.as_secs_f64();
    let bare_rate = bare.requests as f64 / bare.elapsed.as_secs_f64();
    let share_duckdb = stored_rate / duckdb_rate;
    let share_bare = single_rate / bare_rate;

    let rows: [(&str, f64); 20] = [
        ("batch: events/s acknowledged", batch_rate),
        ("batch: events/s stored (incl. queue drain)", stored_rate),
        ("batch: server busy after the last was stored (s)", settled.map_or(f64::NAN, |d| d.as_secs_f64())),
        ("batch: p50 latency (ms)", batches.p50_ms()),
        ("batch: p99 latency (ms)", batches.p99_ms()),
        ("batch: server CPU per event (us)", batch_server_us),
        ("batch: load generator CPU per event (us)", batch_client_us),
        ("single /v1/track: requests/s", single_rate),
        ("single: p50 latency (ms)", singles.p50_ms()),
        ("single: p99 latency (ms)", singles.p99_ms()),
        ("single: server CPU per request (us)", single_server_us),
        ("server peak RSS (MB)", peak_rss_mb),
        ("ceiling: DuckDB read_json load, rows/s (mean)", duckdb_rate),
        ("  before the batch phase", duckdb_before),
        ("  after the batch phase", duckdb_after),
        ("ceiling: bare axum 200 endpoint, requests/s", bare_rate),
        ("ceiling: bare endpoint p50 latency (ms)", bare.p50_ms()),
        ("batch stored rate / DuckDB JSON load (%)", share_duckdb * 100.0),
        ("single req/s / bare endpoint req/s (%)", share_bare * 100.0),
        ("batch requests refused with 503 (queue full)", batches.unavailable as f64),
    ];
    println!();
    for (label, value) in rows {
        let precision = if value.abs() < 100.0 && value.fract() != 0.0 { 2 } else { 0 };
        println!("{label:<52} {value:>14.precision$}");
    }
    println!();
    let checks = [
        ("batch >= 150,000 events/s (stored)", stored_rate >= BATCH_EVENTS_PER_SEC),
        ("batch >= 50% of DuckDB's JSON load", share_duckdb >= BATCH_SHARE_OF_DUCKDB),
        ("single >= 50% of bare endpoint", share_bare >= SINGLE_SHARE_OF_BARE),
        ("peak RSS <= 300 MB", peak_rss_mb <= PEAK_RSS_MB),
    ];
    for (what, ok) in checks {
        println!("{} {what}", if ok { "met    " } else { "MISSED " });
    }
    println!("other errors: batch {}, single {} (503s {})", batches.errors, singles.errors, singles.unavailable);
    Ok(())
}
