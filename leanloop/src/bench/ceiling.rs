//! Ceilings measured in the same run as the figures they bound: DuckDB loading
//! the same events from newline-delimited JSON itself, and an HTTP endpoint
//! that does nothing but read the body and answer 200.

use super::server::Child;
use anyhow::Result;
use axum::routing::post;
use leanloop_store::duckdb::{DuckDbOptions, DuckDbStore};
use std::io::Write;
use std::process::Command;

/// Rows a store loads itself for a ceiling: about what a batch phase of
/// 8 seconds stores. Fixed, so the loads before and after a phase match.
pub const CEILING_ROWS: usize = 1_000_000;

/// Rows written once as newline-delimited JSON, for each load of a ceiling
/// to read; removed when dropped.
pub struct JsonRows {
    dir: tempfile::TempDir,
    pub path: std::path::PathBuf,
    pub rows: usize,
}

impl JsonRows {
    /// [`CEILING_ROWS`] rows, each shaped by `shape`.
    pub fn write(shape: impl Fn(serde_json::Map<String, serde_json::Value>) -> serde_json::Value) -> Result<JsonRows> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("events.ndjson");
        write_ndjson(&path, CEILING_ROWS, shape)?;
        Ok(JsonRows { dir, path, rows: CEILING_ROWS })
    }
}

/// One enriched event as a flat row, the shape `leanloop bench ingest`
/// sends, with the given key names for the times.
fn sample_row(n: usize, received_ms: i64) -> serde_json::Map<String, serde_json::Value> {
    let step = n % 4;
    let row = serde_json::json!({
        "project_id": 1, "uuid": uuid::Uuid::new_v4().to_string(), "kind": "track",
        "name": "checkout_step", "timestamp": 1_768_471_200_000i64, "received_at": received_ms,
        "timestamp_clamped": false, "anonymous_id": null, "user_id": format!("user-{}", n % 5000),
        "session_id": uuid::Uuid::now_v7().to_string(), "release": format!("1.4.{step}"),
        "url": "https://shop.example/checkout?utm_source=newsletter&utm_campaign=spring",
        "path": "/checkout", "page_name": null, "referrer": "https://www.google.com/",
        "referrer_domain": "google.com", "utm_source": "newsletter", "utm_medium": null,
        "utm_campaign": "spring", "utm_term": null, "utm_content": null, "browser": "Chrome",
        "browser_version": "120.0.0.0", "os": "Windows", "device_type": "desktop",
        "country": null, "ip": "127.0.0.0", "library": "bench",
        "properties": format!(r#"{{"step":{step},"plan":"pro","amount":12.5,"currency":"EUR"}}"#),
    });
    match row {
        serde_json::Value::Object(map) => map,
        _ => unreachable!("a JSON object literal"),
    }
}

/// Writes `rows` rows, each shaped by `shape`, as newline-delimited JSON.
fn write_ndjson(
    path: &std::path::Path,
    rows: usize,
    shape: impl Fn(serde_json::Map<String, serde_json::Value>) -> serde_json::Value,
) -> Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let received = chrono::Utc::now().timestamp_millis();
    for n in 0..rows {
        serde_json::to_writer(&mut file, &shape(sample_row(n, received)))?;
        file.write_all(b"\n")?;
    }
    file.flush()?;
    Ok(())
}

/// Times DuckDB's `read_json` load of `json` (enriched events) into a fresh
/// store with the same schema; rows/s.
pub fn duckdb_json_load(json: &JsonRows) -> Result<f64> {
    let dir = tempfile::tempdir_in(json.dir.path())?;
    // DuckDB's own load gets the whole memory limit and every thread, as
    // it had before the store ran ingest in a smaller mode: the ceiling is
    // not lowered by it.
    let full = DuckDbOptions::default();
    let options =
        DuckDbOptions { ingest_memory_limit: full.memory_limit.clone(), ingest_threads: full.threads, ..full };
    let store = DuckDbStore::open(&dir.path().join("ceiling.duckdb"), &options)?;
    let (stored, elapsed) = store.load_ndjson_unchecked(&json.path)?;
    anyhow::ensure!(stored == json.rows, "DuckDB stored {stored} of {} rows", json.rows);
    Ok(json.rows as f64 / elapsed.as_secs_f64())
}

/// Starts the bare endpoint in its own process, like the real server.
pub fn bare_child() -> Result<Child> {
    Child::spawn(Command::new(std::env::current_exe()?).args(["bare-server", "--listen", "127.0.0.1:0"]))
}

/// `leanloop bare-server`: reads the body and answers 200, nothing more.
pub async fn bare_server(listen: &str) -> Result<()> {
    let router =
        axum::Router::new().route("/v1/track", post(|_body: axum::body::Bytes| async { r#"{"success":true}"# }));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    println!("bare server ready");
    axum::serve(listener, router).await?;
    Ok(())
}
